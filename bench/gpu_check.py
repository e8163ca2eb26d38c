"""GPU check: does this package's CUDA path work on this machine, and how fast is one training step?

    python bench/gpu_check.py --out gpu_check.json   # a machine with an NVIDIA GPU (~10 min, most of it compiling)
    python bench/gpu_check.py --cpu-smoke            # anywhere, a few min: the CUDA parts SKIP, a tiny CPU table,
                                                     # the projection of config_CPU.sh
    python bench/gpu_check.py --config config_DGXA100.sh --datadir /data/imagenet-ffcv   # + the projection
    python bench/gpu_check.py --ddp --out ddp.json   # every visible GPU under torchrun (--cpu-smoke: 2 gloo ranks)

--config: minutes per epoch and the time to train of that config from the rates measured here, each epoch
model- or loader-bound, beside MosaicML's per-epoch times (bench/projection.py).

Correctness parts, each printed as `PASS: <part>: ...`, `FAIL: <part>: ...` or `SKIP: <part>: <why>`:
  amp_fp16          the Mild ResNet-50, forward/backward/step under fp16 autocast with a GradScaler: logits in
                    fp16, finite loss, finite unscaled gradients, the weights move
  amp_bf16          the same under bf16 autocast, no scaler
  channels_last     every 4-D activation of the Mild model and every conv weight gradient stays channels-last
  ffcv_pipeline     synthetic JPEGs -> `prepare` -> FFCV files -> `make_loaders(device=cuda)`: batches on the GPU,
                    channels-last, the asked dtype, normalised; every validation image exactly once
  train_compliance  `torchrun --nproc_per_node=1 -m resnet.train` for 2 epochs of that tiny data set in fp16 (a
                    target any model clears, so it ends in success); its log passes the official compliance
                    checker (compliance.check.check_log, ruleset 4.0.0)
Throughput: images/s of one full training step at 88, 128 and 176 px (the sides of the Mild recipe's
progressive-resizing ramp), median over the timed steps after warm-up, for
  mild      the trainer's own `train_step` (resnet/train.py): a 176 px batch shrunk on the device to the side,
            ResNet-50 + BlurPool in channels-last, label-smoothed BCE, decoupled SGDW, the EMA every 20 steps;
  plain     a plain torchvision ResNet-50 loop: NCHW, cross-entropy (under autocast, as the trainer), SGD;
  plain-cl  the same in channels-last: the fair baseline for the recipe's overhead on a GPU;
each eager and under torch.compile (one compilation per side; its seconds are reported too). The inputs are
random tensors already on the device, so the loader is not measured (bench/data_loading.py does that).
--ddp: the trainer's step with DDP on all GPUs at once (img/s with cudnn.benchmark off and on), the FFCV loader on
each rank's device, a check that no other rank holds a context on GPU 0, and one compile of the step.
A table goes to stdout and everything to --out as JSON. Exit status 1 if a part FAILs, else 0.
"""
import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

BENCH = Path(__file__).resolve().parent
for _path in (str(BENCH), str(BENCH.parent)):   # gpu_ddp and projection beside it, bench.common and resnet above
    if _path not in sys.path:
        sys.path.insert(0, _path)

from train_steps import TrainStep, _dtype, _is_channels_last, measure  # noqa: E402, F401

#: The loops timed: name -> (TrainStep kind, channels-last). plain-cl is the fair baseline on a GPU.
LOOPS = {"plain": ("plain", False), "plain-cl": ("plain", True), "mild": ("mild", True)}
PARTS = ("amp_fp16", "amp_bf16", "channels_last", "ffcv_pipeline", "train_compliance")


# ---------------------------------------------------------------------------------------------- correctness


def _watch_gradients(model, check):
    """Call check(name, grad) for every parameter's gradient as backward produces it (train_step clears .grad)."""
    return [p.register_hook(lambda g, name=name: check(name, g)) for name, p in model.named_parameters()]


def check_amp(device, precision: str, batch_size: int = 16, side_px: int = 128, steps: int = 6) -> str:
    """The trainer's step under autocast: logits in the autocast dtype, finite losses, finite gradients at the
    last step, weights that move. With fp16 the scaler may skip the first steps (its initial scale 2^16
    overflows) and lower its scale: that is its job, not a failure."""
    import torch

    step = TrainStep("mild", device, precision)
    images, labels = step.batch(batch_size, side_px)
    before = step.model.fc.weight.detach().clone()
    losses, skipped, finite = [], 0, []
    handles = _watch_gradients(step.model, lambda name, g: finite.append(bool(torch.isfinite(g).all())))
    for _ in range(steps):
        finite.clear()
        loss, logits = step(images, labels, side_px)
        assert logits.dtype == _dtype(precision), f"logits are {logits.dtype} under {precision} autocast"
        assert math.isfinite(loss.item()), f"loss {loss.item()}"
        skipped += not all(finite)
        losses.append(loss.item())
    for h in handles:
        h.remove()
    assert finite and all(finite), f"gradients still not finite after {steps} steps (scale {step.scaler.get_scale():g})"
    assert not torch.equal(before, step.model.fc.weight), "the optimiser did not change the weights"
    scale = f", loss scale {step.scaler.get_scale():g}, {skipped} steps skipped" if step.scaler.is_enabled() else ""
    return f"{steps} steps at {side_px} px, loss {losses[0]:.3f} -> {losses[-1]:.3f}{scale}"


def check_channels_last(device, precision: str = "fp16", batch_size: int = 8, side_px: int = 176) -> str:
    """Every 4-D output of every leaf module of the Mild model, and every conv weight gradient, is channels-last."""
    step = TrainStep("mild", device, precision)
    leaves = [(name, m) for name, m in step.model.named_modules() if not list(m.children())]
    broken, grads, seen = [], [], []

    def hook(name):
        def check(module, inputs, output):
            if hasattr(output, "dim") and not _is_channels_last(output):
                broken.append(name)
        return check

    def check_grad(name, g):
        if g.dim() == 4:
            seen.append(name)
            if not _is_channels_last(g):
                grads.append(name)

    handles = [m.register_forward_hook(hook(name)) for name, m in leaves] + _watch_gradients(step.model, check_grad)
    try:
        images, labels = step.batch(batch_size, side_px)
        step(images, labels, side_px)
    finally:
        for h in handles:
            h.remove()
    assert seen, "no conv weight gradient was produced"
    assert not broken, f"{len(broken)} activations lost channels-last, first: {', '.join(broken[:5])}"
    assert not grads, f"{len(grads)} conv weight gradients are not channels-last, first: {', '.join(grads[:5])}"
    return f"{len(leaves)} modules and their conv weight gradients stay channels-last at {side_px} px ({precision})"


def make_tiny_ffcv(workdir: Path) -> Path:
    """4 classes x (64 train + 16 val) synthetic 64 px JPEGs, written as FFCV files by `prepare`."""
    from resnet.data.prepare import prepare
    from resnet.data.synth import make_synthetic

    make_synthetic(workdir / "tree", classes=4, train_per_class=64, val_per_class=16, size_px=64, seed=0,
                   progress=False)
    with open(os.devnull, "w") as quiet:
        prepare(workdir / "tree", workdir / "ffcv", workers=2, log=quiet)
    return workdir / "ffcv"


def check_ffcv_pipeline(data_dir: Path, device, precision: str = "fp16", batch_size: int = 16,
                        crop_px: int = 56) -> str:
    """FFCV batches arrive on `device` in the asked dtype, channels-last, normalised; val covers every image once."""
    import torch

    from resnet.data.loaders import LoaderSpec, make_loaders

    spec = LoaderSpec(batch_size=batch_size, train_crop_px=crop_px, crop_scale_min=0.08, eval_crop_px=crop_px,
                      eval_resize_px=crop_px + 8, workers=2, device=str(device), train_precision=precision)
    train, val, info = make_loaders(data_dir, spec, loader="ffcv")
    train.set_epoch(0)
    batches = 0
    for images, labels in train:
        assert images.device.type == device.type, f"images on {images.device}, wanted {device}"
        assert labels.device.type == device.type, f"labels on {labels.device}, wanted {device}"
        assert images.dtype == _dtype(precision), f"images are {images.dtype}, wanted {precision}"
        assert tuple(images.shape) == (batch_size, 3, crop_px, crop_px), f"images of shape {tuple(images.shape)}"
        assert _is_channels_last(images), "images are not channels-last"
        assert labels.dtype == torch.int64 and int(labels.min()) >= 0 and int(labels.max()) < info.num_classes
        mean, std = images.float().mean().item(), images.float().std().item()
        assert abs(mean) < 1.5 and 0.2 < std < 3, f"not normalised: mean {mean:.2f}, std {std:.2f}"
        batches += 1
    assert batches == len(train) == info.train_samples // batch_size, \
        f"{batches} training batches, len() {len(train)}, {info.train_samples} images"
    seen = sum(len(labels) for _, labels in val)
    assert seen == info.eval_samples, f"validation saw {seen} of {info.eval_samples} images"
    return f"{batches} training batches of {batch_size} ({precision}, {device.type}), {seen} validation images"


def train_command(data_dir: Path, log: Path, precision: str, device: str) -> list:
    """torchrun, one process, resnet.train for 2 epochs of the tiny data set and one evaluation against a target
    any model clears (so the run ends in success)."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1",
            "-m", "resnet.train", "--recipe", "mild", "--arch", "resnet18", "--epochs", "2", "--warmup-epochs", "1",
            "--eval-every-epochs", "2", "--target-accuracy", "0.05",
            "--batch-size", "32", "--precision", precision,
            "--train-crop-px", "64", "--eval-crop-px", "56", "--eval-resize-px", "64", "--workers", "2",
            "--data", str(data_dir), "--loader", "ffcv", "--platform", "gpu_check", "--seed", "1",
            "--log-file", str(log), "--device", device]


def check_train_compliance(data_dir: Path, workdir: Path, precision: str = "fp16", device: str = "cuda") -> str:
    """The train_command run; the official checker passes its log."""
    from compliance.check import check_log

    log = workdir / "result_0.txt"
    proc = subprocess.run(train_command(data_dir, log, precision, device), capture_output=True, text=True,
                          timeout=900, cwd=workdir)
    tail = (proc.stdout + proc.stderr).strip().splitlines()[-3:]
    assert proc.returncode == 0, f"resnet.train exited {proc.returncode}: {' | '.join(tail)}"
    passed, problems = check_log(log)
    assert passed, f"the compliance checker failed {log}: {'; '.join(problems)}"
    return f"2 epochs on one {device} process in {precision}, run_stop success; the checker passes {log.name}"


def run_part(name: str, fn, results: dict) -> None:
    started = time.perf_counter()
    try:
        detail, status = fn(), "PASS"
    except Exception as exc:  # a part's failure is reported, and the other parts still run
        detail, status = f"{type(exc).__name__}: {exc}".strip(), "FAIL"
        traceback.print_exc(file=sys.stderr)
    results[name] = dict(status=status, detail=detail, seconds=round(time.perf_counter() - started, 1))
    print(f"{status}: {name}: {detail}", flush=True)


def skip_part(name: str, why: str, results: dict) -> None:
    results[name] = dict(status="SKIP", detail=why)
    print(f"SKIP: {name}: {why}", flush=True)


# ------------------------------------------------------------------------------------------------ throughput


def throughput(device, precision: str, batch_size: int, sizes, warmup: int, steps: int, compile_modes) -> list:
    import torch

    rows = []
    for kind in LOOPS:
        for compiled in compile_modes:
            for px in sizes:
                torch._dynamo.reset()
                step = TrainStep(LOOPS[kind][0], device, precision, compile_model=compiled, full_px=max(sizes),
                                 channels_last=LOOPS[kind][1])
                row = dict(model=kind, compiled=compiled, **measure(step, batch_size, px, warmup, steps))
                rows.append(row)
                print(f"  {kind:8} {'compiled' if compiled else 'eager':8} {px:4} px: "
                      f"{row['images_per_s']:9.1f} images/s", file=sys.stderr, flush=True)
                del step
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    return rows


def table(rows: list, sizes, batch_size: int, precision: str, device_name: str) -> str:
    rate = {(r["model"], r["compiled"], r["px"]): r["images_per_s"] for r in rows}
    modes = sorted({r["compiled"] for r in rows})
    out = [f"throughput on {device_name}: images/s of a training step, batch {batch_size}, {precision}",
           f"{'loop':24}" + "".join(f"{px:>10} px" for px in sizes)]
    for kind in LOOPS:
        for compiled in modes:
            label = f"{kind} resnet50{' compiled' if compiled else ''}"
            out.append(f"{label:24}" + "".join(f"{rate[kind, compiled, px]:13.1f}" for px in sizes))
    for base in ("plain", "plain-cl"):
        for compiled in modes:
            label = f"mild / {base}{' compiled' if compiled else ''}"
            out.append(f"{label:24}" + "".join(f"{rate['mild', compiled, px] / rate[base, compiled, px]:12.2f}x"
                                               for px in sizes))
    if len(modes) == 2:
        for kind in LOOPS:
            out.append(f"{kind + ' compiled / eager':24}" +
                       "".join(f"{rate[kind, True, px] / rate[kind, False, px]:12.2f}x" for px in sizes))
    return "\n".join(out)


# ------------------------------------------------------------------------------------------------------ main
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cpu-smoke", action="store_true",
                   help="no CUDA needed: the CUDA parts SKIP, a tiny eager throughput table on the CPU")
    p.add_argument("--out", type=Path, help="write the results here as JSON")
    p.add_argument("--precision", choices=("fp16", "bf16", "fp32"), default="fp16",
                   help="throughput precision on the GPU (default fp16, as submitted on A100)")
    p.add_argument("--batch-size", type=int, default=256, help="per-GPU batch for the throughput (default 256)")
    p.add_argument("--sizes", type=int, nargs="+", default=[88, 128, 176], help="training sides in px")
    p.add_argument("--warmup", type=int, default=10, help="untimed steps per measurement (default 10)")
    p.add_argument("--steps", type=int, default=30, help="timed steps per measurement (default 30)")
    p.add_argument("--no-compile", action="store_true", help="eager only (skips the torch.compile rows)")
    p.add_argument("--ddp", action="store_true",
                   help="several GPUs: the trainer's step with DDP on every visible GPU under torchrun (with "
                        "--cpu-smoke: 2 gloo processes on the CPU)")
    p.add_argument("--config", type=Path, help="project this config_<SYSTEM>.sh's time to train from rates measured "
                   "here (--cpu-smoke: config_CPU.sh)")
    p.add_argument("--datadir", help="the projection's data set (default: the config's DATADIR)")
    p.add_argument("--through-epoch", type=int, help="project through this epoch (default: the one at which "
                   "MosaicML's submitted runs passed, read from their logs: 27)")
    p.add_argument("--ddp-worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--compile-seconds", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.cpu_smoke:  # tiny enough for a test on 2 cores
        args.precision, args.batch_size, args.sizes, args.warmup, args.steps = "fp32", 4, [32], 1, 2
        args.config = args.config or BENCH.parent / "config_CPU.sh"
    return args


def run_projection(args, device, report: dict) -> None:
    """The `projection` part: minutes per epoch and the time to train of args.config, measured here."""
    import projection

    def part():
        result = projection.project_config(args.config, device, args.cpu_smoke, args.through_epoch, args.datadir)
        report["projection"] = result
        print(projection.table(result, result["title"]), flush=True)
        return f"{result['total_minutes']:.2f} min through epoch {result['through_epoch']} for {args.config.name}"

    run_part("projection", part, report["parts"])


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.ddp_worker or args.ddp:
        import gpu_ddp

        return gpu_ddp.ddp_worker(args) if args.ddp_worker else gpu_ddp.ddp_check(args)
    import torch

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    device_name = torch.cuda.get_device_name(0) if cuda else f"CPU ({os.cpu_count()} cores)"
    report = dict(torch=torch.__version__, cuda=torch.version.cuda, device=device_name, cpu_smoke=args.cpu_smoke,
                  parts={}, throughput=None)
    print(f"gpu_check: torch {torch.__version__}, CUDA {torch.version.cuda}, device {device_name}", flush=True)

    parts = report["parts"]
    if cuda:
        torch.backends.cudnn.benchmark = True     # as the trainer sets it on CUDA
        run_part("amp_fp16", lambda: check_amp(device, "fp16"), parts)
        run_part("amp_bf16", lambda: check_amp(device, "bf16"), parts)
        run_part("channels_last", lambda: check_channels_last(device), parts)
        with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
            workdir = Path(tmp)
            data_dir = workdir / "ffcv"

            def ffcv_pipeline():
                make_tiny_ffcv(workdir)
                return check_ffcv_pipeline(data_dir, device)

            run_part("ffcv_pipeline", ffcv_pipeline, parts)
            if (data_dir / "manifest.json").exists():
                run_part("train_compliance", lambda: check_train_compliance(data_dir, workdir), parts)
            else:
                skip_part("train_compliance", "no tiny FFCV data set (ffcv_pipeline could not make it)", parts)
    else:
        for name in PARTS:
            skip_part(name, "no CUDA device", parts)

    if cuda or args.cpu_smoke:
        compile_modes = [False] if args.no_compile or not cuda else [False, True]
        if not cuda:
            skip_part("throughput_compiled", "--cpu-smoke keeps to eager (compiling ResNet-50 on a CPU takes "
                      "minutes)", parts)
        rows = throughput(device, args.precision, args.batch_size, args.sizes, args.warmup, args.steps,
                          compile_modes)
        print(table(rows, args.sizes, args.batch_size, args.precision, device_name), flush=True)
        report["throughput"] = dict(precision=args.precision, batch_size=args.batch_size, sizes=args.sizes,
                                    warmup=args.warmup, steps=args.steps, rows=rows)
    else:
        skip_part("throughput", "no CUDA device (--cpu-smoke gives a tiny CPU table)", parts)
    if args.config:
        run_projection(args, device, report)

    if args.out:
        from bench.common import run_metadata

        report["metadata"] = run_metadata()
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.out.with_name(f".{args.out.name}.tmp")
        tmp.write_text(json.dumps(report, indent=1) + "\n")
        os.replace(tmp, args.out)
    failed = [name for name, part in parts.items() if part["status"] == "FAIL"]
    print(f"gpu_check: {len(parts) - len(failed)} of {len(parts)} parts passed or skipped"
          + (f"; FAILED: {', '.join(failed)}" if failed else ""), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
