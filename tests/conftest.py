"""Shared fixtures: a small synthetic data set in ImageNet layout and its FFCV files, made once per session."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def cli(*args, check=True, env=None, timeout=600, **kw):
    """Run `mlperf-resnet ARGS` as a user would, in a fresh process."""
    return subprocess.run([sys.executable, "-m", "resnet.cli", *map(str, args)], capture_output=True, text=True,
                          check=check, env={**os.environ, **(env or {})}, timeout=timeout, cwd=kw.get("cwd", REPO))


@pytest.fixture(scope="session")
def synth_tree(tmp_path_factory) -> Path:
    """4 classes x (48 train + 12 val) images of 48 px."""
    out = tmp_path_factory.mktemp("synth") / "tree"
    from resnet.data.synth import make_synthetic

    make_synthetic(out, classes=4, train_per_class=48, val_per_class=12, size_px=48, seed=1, progress=False)
    return out


@pytest.fixture(scope="session")
def ffcv_data(synth_tree, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ffcv") / "data"
    from resnet.data.prepare import prepare

    prepare(synth_tree, out, workers=2, log=open(os.devnull, "w"))
    return out
