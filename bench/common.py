"""What the benchmarks share: the synthetic data sets (made once into a cache folder), the facts every result
records about where and with what it ran (`run_metadata`), the one plain training step the trainer's own
`resnet.train.train_step` is compared with, the pipelined timer of a step, and the JSON writer that never
overwrites a result."""
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
NUM_CLASSES = 1000
#: Distributions whose versions every benchmark records; DALI's name carries its CUDA major (nvidia-dali-cuda120).
VERSIONED = ("torch", "torchvision", "ffcv", "numpy", "mlperf-logging")


def synthetic_dataset(cache: Path, classes=None, train_per_class=None, val_per_class=None, size_px=None,
                      ffcv: bool = True):
    """(image folders, FFCV folder or None) of `mlperf-resnet synth` data with these settings (each by default
    the `make benchmark` set's, resnet.data.synth.DEFAULTS; size_px=500 gives ImageNet's geometry) under
    `cache`, named by the settings and made unless complete already. ffcv=False: the folders only."""
    from resnet.data.synth import DEFAULTS, make_synthetic

    given = dict(classes=classes, train_per_class=train_per_class, val_per_class=val_per_class, size_px=size_px)
    s = {k: v or DEFAULTS[k] for k, v in given.items()}
    name = f"c{s['classes']}-t{s['train_per_class']}-v{s['val_per_class']}-{s['size_px']}px"
    folders, betons = cache / f"synth-{name}", cache / f"ffcv-{name}"
    if not (folders / "synth.json").is_file():
        make_synthetic(folders, seed=0, progress=False, **s)
    if ffcv and not (betons / "manifest.json").is_file():
        from resnet.data.prepare import prepare

        prepare(folders, betons, workers=2, log=open(os.devnull, "w"))
    return folders, betons if ffcv else None


def installed(module: str) -> bool:
    """Whether `module` can be imported here, without importing it."""
    import importlib.util

    return importlib.util.find_spec(module) is not None


def _git(*args):
    try:
        out = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _version(name):
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _dali_version():
    names = sorted({d.metadata["Name"] for d in metadata.distributions()
                    if (d.metadata["Name"] or "").lower().startswith("nvidia-dali")})
    return _version(names[0]) if names else None


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), None)
    except OSError:
        return platform.processor() or None


def _gpu_names():
    """Names of the visible GPUs, [] without CUDA. Asks torch only when the caller imported it already (a bench
    that runs on the CPU need not pay for the import), and creates no CUDA context."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available():
        return []
    return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]


def run_metadata() -> dict:
    """What a benchmark number needs beside it to be compared later: the commit (and whether the tree had
    uncommitted changes), the library versions (None when absent), the machine and the date (UTC)."""
    status = _git("status", "--porcelain", "--untracked-files=no")
    versions = {name: _version(name) for name in VERSIONED}
    versions["dali"] = _dali_version()
    return dict(git_commit=_git("rev-parse", "HEAD"), git_dirty=None if status is None else bool(status),
                versions=dict(python=platform.python_version(), **versions),
                machine=dict(cpu=_cpu_model(), cores=os.cpu_count(), cores_usable=len(os.sched_getaffinity(0)),
                             gpus=_gpu_names(), system=platform.platform(),
                             load_average=[round(x, 2) for x in os.getloadavg()]),
                date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))


def write_json(path: Path, result: dict) -> None:
    """`result` with run_metadata() as JSON at `path`, which must not exist (results are never overwritten);
    written whole or not at all."""
    path = Path(path)
    if path.exists():
        raise SystemExit(f"error: {path} already exists; choose a new file (results are never overwritten)")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(dict(metadata=run_metadata(), **result), indent=1) + "\n")
    os.replace(tmp, path)


def dtype(precision: str):
    import torch

    return {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[precision]


class PlainStep:
    """The one plain training step: forward and loss under autocast, scaled backward, the optimiser's step,
    zero_grad - nothing else (no LR schedule, EMA, resize or checks). Called as step(images, labels) -> loss.

    PlainStep.resnet50: torchvision's ResNet-50 with cross-entropy and torch.optim.SGD, NCHW or channels-last
    (the fair baseline on a GPU). Any other model, loss and optimiser (the trainer's own arithmetic without its
    loop, bench.steps --overhead) go through the constructor."""

    def __init__(self, model, loss_fn, optimizer, precision: str, compile_model: bool = False):
        import torch

        self.model, self.loss_fn, self.optimizer, self.precision = model, loss_fn, optimizer, precision
        self.device = next(model.parameters()).device
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=precision == "fp16")
        self.net = torch.compile(model, dynamic=False) if compile_model else model

    @classmethod
    def resnet50(cls, device, precision: str, channels_last: bool = True, compile_model: bool = False):
        import torch
        import torchvision

        fmt = torch.channels_last if channels_last else torch.contiguous_format
        model = torchvision.models.resnet50(num_classes=NUM_CLASSES).to(device, memory_format=fmt)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.875, weight_decay=5e-4)
        return cls(model, torch.nn.functional.cross_entropy, opt, precision, compile_model)

    def __call__(self, images, labels):
        import torch

        with torch.autocast(self.device.type, dtype=dtype(self.precision), enabled=self.precision != "fp32"):
            loss = self.loss_fn(self.net(images), labels)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.detach()


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(step, device, warmup: int, steps: int) -> dict:
    """Seconds per call of `step()` over `steps` calls after `warmup` untimed ones, pipelined: the device is
    synchronised at the two ends only, as the trainer never waits for a step."""
    started = time.perf_counter()
    for _ in range(warmup):
        step()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return dict(step_s=(time.perf_counter() - t0) / steps, warmup_s=round(t0 - started, 2), timed_steps=steps)
