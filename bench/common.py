"""Helpers the benchmarks share: the synthetic data set they run on (made once into a cache folder) and the facts
every benchmark's JSON records about where and with what it ran (`run_metadata`)."""
import datetime
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CACHE = REPO / "data" / "bench"


def synthetic_dataset(cache: Path, classes=None, train_per_class=None, val_per_class=None, size_px=None):
    """(image folders, FFCV folder) of `mlperf-resnet synth` data with these settings (each by default the
    `make benchmark` set's, resnet.data.synth.DEFAULTS) under `cache`, named by the settings and made unless
    complete already."""
    from resnet.data.prepare import prepare
    from resnet.data.synth import DEFAULTS, make_synthetic

    classes = classes or DEFAULTS["classes"]
    train_per_class = train_per_class or DEFAULTS["train_per_class"]
    val_per_class = val_per_class or DEFAULTS["val_per_class"]
    size_px = size_px or DEFAULTS["size_px"]

    name = f"c{classes}-t{train_per_class}-v{val_per_class}-{size_px}px"
    folders, betons = cache / f"synth-{name}", cache / f"ffcv-{name}"
    if not (folders / "synth.json").is_file():
        make_synthetic(folders, classes, train_per_class, val_per_class, size_px, seed=0)
    if not (betons / "manifest.json").is_file():
        prepare(folders, betons, workers=2, log=open(os.devnull, "w"))
    return folders, betons


def synthetic_ffcv(cache: Path, **settings) -> Path:
    return synthetic_dataset(cache, **settings)[1]


def train_cmd(*args) -> list[str]:
    return [sys.executable, "-m", "resnet.train", *map(str, args)]


#: Distributions whose versions every benchmark records; DALI's name carries its CUDA major (nvidia-dali-cuda120).
VERSIONED = ("torch", "torchvision", "ffcv", "numpy")


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
                             gpus=_gpu_names(), system=platform.platform()),
                date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
