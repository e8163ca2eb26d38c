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


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
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
