"""Trainer overhead: images/s of `resnet.train` against a minimal hand-written PyTorch loop doing the same
work (same FFCV loader, model, batch, progressive resize, loss and optimiser) on the CPU.

    python bench/trainer_overhead.py [--cache DIR] [--epochs 4] [--repeats 2] [--json]

Our loop adds the LR scheduler, the EMA update every epoch (20 steps), autocast/grad-scaler wrappers, the
non-finite-loss/stop check (every 8 steps and at each epoch's end) and the progress line. Both are timed over
epochs 2..E (the first compiles FFCV's pipeline), alternating runs; the ratio is minimal / ours in images/s
(goal: <= 1.05).
"""
import argparse
import json
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import DEFAULT_CACHE, REPO, run_metadata, synthetic_ffcv, train_cmd  # noqa: E402

SHAPE = dict(arch="resnet18", batch=64, crop=40, lr=0.3)


def ours(data: Path, epochs: int, tmp: Path) -> float:
    out = subprocess.run(train_cmd("--data", data, "--arch", SHAPE["arch"], "--batch-size", SHAPE["batch"],
                                   "--train-crop-px", SHAPE["crop"], "--eval-crop-px", 48, "--eval-resize-px", 52,
                                   "--epochs", epochs, "--eval-every-epochs", epochs, "--warmup-epochs", 1,
                                   "--lr", SHAPE["lr"], "--workers", 2, "--precision", "fp32",
                                   "--target-accuracy", 1.0, "--ema-every-epochs", 1,
                                   "--ema-half-life-epochs", 5, "--log-file", tmp / f"ours-{time.time_ns()}.txt"),
                         cwd=REPO, capture_output=True, text=True)
    rates = [float(m.replace(",", "")) for m in re.findall(r"\| ([\d,]+) img/s", out.stderr)]
    if len(rates) != epochs:
        raise SystemExit(f"trainer_overhead: resnet.train failed:\n{out.stderr[-2000:]}")
    return statistics.mean(rates[1:])


def minimal(data: Path, epochs: int) -> float:
    """The plainest loop that does the same arithmetic: no scheduler, EMA, checks or logging."""
    from resnet.algorithms import DecoupledSGDW, label_smoothed_bce, resize_batch
    from resnet.data.loaders import LoaderSpec, make_loaders
    from resnet.model import build_model
    from resnet.recipe import MILD

    recipe = MILD.replace(arch=SHAPE["arch"], epochs=epochs, train_crop_px=SHAPE["crop"])
    spec = LoaderSpec(batch_size=SHAPE["batch"], train_crop_px=SHAPE["crop"], workers=2,
                      crop_scale_min=recipe.crop_scale_min, eval_crop_px=48, eval_resize_px=52)
    train, _, info = make_loaders(data, spec)
    model = build_model(recipe, info.num_classes)
    opt = DecoupledSGDW(model.parameters(), lr=SHAPE["lr"], momentum=recipe.momentum,
                        weight_decay=recipe.weight_decay)
    rates = []
    for epoch in range(epochs):
        px, seen, tic = recipe.resolution_px(epoch), 0, time.time()
        for images, labels in train:
            loss = label_smoothed_bce(model(resize_batch(images, px)), labels, recipe.label_smoothing)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            seen += images.shape[0]
        rates.append(seen / (time.time() - tic))
    return statistics.mean(rates[1:])


def steps_only(rounds: int, block: int = 10) -> dict:
    """The two steps alone, in this one process, on one fixed batch: `resnet.train.train_step` (scheduler, EMA,
    autocast/scaler wrappers) against the minimal step body, in alternating blocks of `block` steps. A ratio near
    1 puts the end-to-end gap outside the step (process, loader, the loop's checks); a ratio near the end-to-end
    one puts it inside. Also checks that the two run with the same torch thread count."""
    import torch

    from resnet import train
    from resnet.algorithms import DecoupledSGDW, label_smoothed_bce, resize_batch
    from resnet.model import build_model
    from resnet.recipe import MILD, Plan

    recipe = MILD.replace(arch=SHAPE["arch"], epochs=4, train_crop_px=SHAPE["crop"], global_batch_size=SHAPE["batch"],
                          ema_every_epochs=1.0, ema_half_life_epochs=5.0,   # the EMA every 20 steps, as `ours`
                          precision="fp32")     # as config_CPU.sh and the minimal step: MILD's fp16 is the GPU's
    plan = Plan(recipe, 16, train_samples=1280, eval_samples=64, world_size=1)
    ours_t = train.build_training(plan, torch.device("cpu"))
    model = build_model(recipe, 16)
    opt = DecoupledSGDW(model.parameters(), lr=SHAPE["lr"], momentum=recipe.momentum, weight_decay=recipe.weight_decay)
    images = torch.randn(SHAPE["batch"], 3, SHAPE["crop"], SHAPE["crop"]).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 16, (SHAPE["batch"],))
    px = recipe.resolution_px(2)

    def minimal_step():
        loss = label_smoothed_bce(model(resize_batch(images, px)), labels, recipe.label_smoothing)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def block_s(fn):
        t0 = time.perf_counter()
        for _ in range(block):
            fn()
        return (time.perf_counter() - t0) / block

    ratios = []
    for _ in range(rounds):
        o = block_s(lambda: train.train_step(ours_t, images, labels, px))
        m = block_s(minimal_step)
        ratios.append(o / m)
    return dict(step_ratio=statistics.median(ratios), step_ratios=[round(r, 3) for r in ratios], px=px,
                threads=torch.get_num_threads())


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--json", action="store_true")
    p.add_argument("--steps-only", action="store_true", help="time the two step bodies in one process instead")
    args = p.parse_args()
    if args.steps_only:
        result = dict(metadata=run_metadata(), **steps_only(args.repeats))
        print(json.dumps(result) if args.json else f"train_step / minimal step: {result['step_ratio']:.3f} "
              f"(rounds: {', '.join(map(str, result['step_ratios']))}; {result['threads']} torch threads)")
        return 0
    data = synthetic_ffcv(args.cache)
    tmp = args.cache / "logs"
    tmp.mkdir(parents=True, exist_ok=True)
    pairs = []
    for _ in range(args.repeats):
        pairs.append((ours(data, args.epochs, tmp), minimal(data, args.epochs)))
    ratios = [m / o for o, m in pairs]
    result = dict(ours_img_s=statistics.median(o for o, _ in pairs), minimal_img_s=statistics.median(m for _, m in pairs),
                  ratio=statistics.median(ratios), ratios=ratios, shape=SHAPE, epochs=args.epochs)
    if args.json:
        print(json.dumps(dict(metadata=run_metadata(), **result)))
    else:
        print(f"ours {result['ours_img_s']:.0f} img/s, minimal loop {result['minimal_img_s']:.0f} img/s, "
              f"overhead ratio (minimal / ours) {result['ratio']:.3f} (rounds: "
              + ", ".join(f"{r:.3f}" for r in ratios) + ")")
    return 0


if __name__ == "__main__":
    sys.exit(main())
