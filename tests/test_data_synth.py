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

from resnet import errors
from resnet.data import synth


def _digests(root):
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(root).rglob("*")) if p.is_file()}


def test_layout_and_settings(tmp_path):
    out = tmp_path / "synth"
    assert errors.main(synth, [str(out), "--classes", "4", "--train-per-class", "3", "--val-per-class", "2",
                               "--size", "40"]) == 0
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


def _one_line_error(capsys, argv):
    assert errors.main(synth, argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("mlperf-resnet: error: synth ")
    return err.strip()


def test_refuses_existing_output_and_bad_settings_in_one_line(tmp_path, capsys):
    (tmp_path / "taken").mkdir()
    assert _one_line_error(capsys, [str(tmp_path / "taken")]).endswith(
        "taken: already exists; remove it or choose another output folder")
    for argv, message in ((["--classes", "99"], "synth --classes 99: outside 1..20; choose a value in that range"),
                          (["--size", "100000"], "synth --size 100000: outside 16..1024"),
                          (["--train-per-class", "0"], "synth --train-per-class 0: outside 1..100000"),
                          (["--seed", "-1"], "synth --seed -1: outside 0.."),
                          (["--colour-cue", "1.5"], "synth --colour-cue 1.5: outside 0.0..1.0")):
        assert message in _one_line_error(capsys, [str(tmp_path / "new"), *argv])
    (tmp_path / "a-file").write_text("")
    assert "cannot write there" in _one_line_error(capsys, [str(tmp_path / "a-file" / "synth")])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "taken"]   # nothing written, no temp dir


def test_defaults_are_the_benchmark_set():
    """`make benchmark` and bench/ scripts take the CPU proxy's data from these defaults."""
    assert synth.DEFAULTS == dict(classes=16, train_per_class=80, val_per_class=60, size_px=112)
    parser = __import__("argparse").ArgumentParser()
    synth.add_arguments(parser)
    args = parser.parse_args(["out"])
    assert {k: getattr(args, k) for k in synth.DEFAULTS} == synth.DEFAULTS


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
