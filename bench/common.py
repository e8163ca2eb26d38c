"""Helpers the benchmarks share: the synthetic data set they run on, made once into a cache folder."""
import os
import sys
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
