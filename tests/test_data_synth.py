"""`mlperf-resnet synth`: layout, determinism, flip-symmetric class evidence, no partial tree."""
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from resnet.cli import standalone
from resnet.data import synth


def _digests(root):
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(root).rglob("*")) if p.is_file()}


def test_layout_and_settings(tmp_path):
    out = tmp_path / "synth"
    assert standalone(synth.register, [str(out), "--classes", "4", "--train-per-class", "3",
                                       "--val-per-class", "2", "--size", "40"]) == 0
    names = synth.class_names(4)
    assert names == sorted(names) == ["00_circle", "01_square", "02_triangle", "03_ring"]
    for split, count in (("train", 3), ("val", 2)):
        assert sorted(p.name for p in (out / split).iterdir()) == names
        for name in names:
            files = sorted((out / split / name).iterdir())
            assert len(files) == count and all(f.suffix == ".JPEG" for f in files)
            with Image.open(files[0]) as im:
                assert im.format == "JPEG" and im.mode == "RGB" and max(im.size) == 40
                assert 30 <= min(im.size) <= 40
    settings = json.loads((out / "synth.json").read_text())
    assert settings["classes"] == 4 and settings["size_px"] == 40 and settings["seed"] == 0
    assert not [p for p in tmp_path.iterdir() if p.name != "synth"]  # no temp dir left behind


def test_same_seed_byte_identical_other_seed_differs(tmp_path):
    kw = dict(classes=3, train_per_class=5, val_per_class=2, size_px=48, progress=False)
    synth.make_synthetic(tmp_path / "a", seed=7, workers=1, **kw)
    synth.make_synthetic(tmp_path / "b", seed=7, workers=2, **kw)
    synth.make_synthetic(tmp_path / "c", seed=8, workers=2, **kw)
    a, b, c = (_digests(tmp_path / x) for x in "abc")
    assert len(a) == 3 * 7 + 1 and a == b
    differ = [k for k in a if k != "synth.json" and a[k] != c[k]]
    assert len(differ) == 3 * 7


@pytest.mark.parametrize("motif", synth.MOTIFS)
def test_motifs_survive_horizontal_flip_and_differ(motif):
    mask = np.asarray(synth._motif_mask(motif, 64, 0.0, 1.0), np.float32) / 255
    mirrored = np.asarray(ImageOps.mirror(synth._motif_mask(motif, 64, 0.0, 1.0)), np.float32) / 255
    assert 0.1 < mask.mean() < 0.9
    assert np.abs(mask - mirrored).mean() < 0.02, f"{motif} changes under a horizontal flip"
    for other in synth.MOTIFS:
        if other != motif:
            other_mask = np.asarray(synth._motif_mask(other, 64, 0.0, 1.0), np.float32) / 255
            assert np.abs(mask - other_mask).mean() > 0.02, f"{motif} looks like {other}"


def test_refuses_existing_output_and_bad_settings(tmp_path):
    (tmp_path / "taken").mkdir()
    with pytest.raises(SystemExit, match=r"^mlperf-resnet synth: error: .*taken: already exists; remove it"):
        standalone(synth.register, [str(tmp_path / "taken")])
    with pytest.raises(SystemExit, match=r"--classes 99: must be between 1 and 20"):
        standalone(synth.register, [str(tmp_path / "new"), "--classes", "99"])
    assert not (tmp_path / "new").exists()


def test_killed_run_leaves_no_tree(tmp_path):
    out = tmp_path / "big"
    proc = subprocess.Popen([sys.executable, "-m", "resnet.data.synth", str(out), "--classes", "10",
                             "--train-per-class", "5000", "--val-per-class", "1"],
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 30
    while not list(tmp_path.glob(".big.tmp-*/train/00_circle/*.JPEG")) and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the CLI and its pool workers
    proc.wait()
    assert list(tmp_path.glob(".big.tmp-*")), "the run should have been writing when killed"
    assert not out.exists()
