"""What the benchmarks share: synthetic data, `run_metadata`, the one plain step, the step timer, the JSON writer."""
import argparse
import contextlib
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CACHE = REPO / "data" / "bench"
#: ImageNet's counts: a Plan made for them has the trainer's real steps per epoch and EMA cadence.
IMAGENET = dict(classes=1000, train_images=1_281_167, val_images=50_000)


def synthetic_dataset(cache: Path, ffcv: bool = True, **settings):
    """(image folders, FFCV folder or None) of synthetic data (default: `make benchmark`'s) under `cache`, made once."""
    from resnet.data.synth import DEFAULTS, make_synthetic
    s = {**DEFAULTS, **settings}
    name = f"c{s['classes']}-t{s['train_per_class']}-v{s['val_per_class']}-{s['size_px']}px"
    folders, betons = cache / f"synth-{name}", cache / f"ffcv-{name}"
    if not (folders / "synth.json").is_file():
        make_synthetic(folders, seed=0, progress=False, **s)
    if ffcv and not (betons / "manifest.json").is_file():
        from resnet.data.prepare import prepare
        prepare(folders, betons, workers=2, log=open(os.devnull, "w"))
    return folders, betons if ffcv else None


def mllog_events(path: Path) -> list[dict]:
    """The MLPerf log's events, in order."""
    return [json.loads(line.split(":::MLLOG", 1)[1]) for line in Path(path).read_text().splitlines()
            if ":::MLLOG" in line]


def parser(doc: str, out_help: str | None = "the JSON file to write (must not exist)", **ints: int):
    """A command's parser: its module's docstring as the help, the output path (unless None), --NAME N for `ints`."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    if out_help:
        p.add_argument("out", type=Path, help=out_help)
    for name, default in ints.items():
        p.add_argument(f"--{name.replace('_', '-')}", type=int, default=default)
    return p


def _git(*args):
    try:
        out = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=30)
        return out.stdout.strip() if out.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired):
        return None


def _version(name):
    """The installed version of a distribution, None when absent (DALI's name carries its CUDA major)."""
    if name == "dali":
        name = next((d.metadata["Name"] for d in metadata.distributions()
                     if (d.metadata["Name"] or "").lower().startswith("nvidia-dali")), None)
    try:
        return metadata.version(name) if name else None
    except metadata.PackageNotFoundError:
        return None


def run_metadata() -> dict:
    """What a number needs to be compared later: the commit (dirty?), library versions, the machine, the date (UTC)."""
    status, torch = _git("status", "--porcelain", "--untracked-files=no"), sys.modules.get("torch")
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] \
        if torch is not None and torch.cuda.is_available() else []   # GPUs only when the caller imported torch
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), None)
    return dict(git_commit=_git("rev-parse", "HEAD"), git_dirty=None if status is None else bool(status),
                versions=dict(python=platform.python_version(), **{n: _version(n) for n in (
                    "torch", "torchvision", "ffcv", "numpy", "mlperf-logging", "dali")}),
                machine=dict(cpu=cpu, cores=os.cpu_count(), cores_usable=len(os.sched_getaffinity(0)), gpus=gpus,
                             system=platform.platform(), load_average=[round(x, 2) for x in os.getloadavg()]),
                date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))


def write_json(path: Path, result: dict) -> None:
    """`result` and run_metadata() as JSON at `path`, written whole, never over an existing file."""
    path = Path(path)
    if path.exists():
        raise SystemExit(f"error: {path} already exists; choose a new file (results are never overwritten)")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(dict(metadata=run_metadata(), **result), indent=1) + "\n")
    os.replace(tmp, path)


def device():   # the GPU when there is one
    import torch
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def plain_step(arch: str, device, precision: str, compile_model: bool = False):
    """step(images, labels) -> loss: torchvision's `arch`, cross-entropy, SGD; no LR schedule, EMA, resize or checks."""
    import torch
    import torchvision

    from resnet.recipe import torch_dtype
    model = torchvision.models.get_model(arch, num_classes=IMAGENET["classes"])
    model = model.to(device, memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.875, weight_decay=5e-4)
    scaler = torch.amp.GradScaler(torch.device(device).type, enabled=precision == "fp16")
    net = torch.compile(model, dynamic=False) if compile_model else model

    def step(images, labels):
        with torch.autocast(images.device.type, dtype=torch_dtype(precision), enabled=precision != "fp32"):
            loss = torch.nn.functional.cross_entropy(net(images), labels)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        return loss.detach()
    return step


@contextlib.contextmanager
def figure(path: Path, title: str, xlabel: str, ylabel: str):
    """with figure(path, ...) as ax: a PNG at `path` of the block's plot, titled, gridded, with a legend (Agg)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(9, 5.5))
    yield ax
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def sync(device) -> None:   # waits for a CUDA device's queue; nothing to wait for elsewhere (or None)
    import torch
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(step, device, warmup: int, steps: int) -> dict:
    """Seconds a call of `step()` over `steps` after `warmup`, synced at the ends only (the trainer never waits)."""
    marks = [time.perf_counter()]
    for n in (warmup, steps):
        for _ in range(n):
            step()
        sync(device)
        marks.append(time.perf_counter())
    return dict(step_s=(marks[2] - marks[1]) / steps, warmup_s=round(marks[1] - marks[0], 2), timed_steps=steps)
