"""`mlperf-resnet prepare`: manifest, FFCV file contents, bad input (one-line error, no output), flat memory."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from resnet.data.folders import DataError, scan_dataset
from resnet.data.prepare import prepare
from resnet.data.synth import make_synthetic

pytest.importorskip("ffcv")

OUTPUTS = ("train.beton", "val.beton", "manifest.json")


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("data") / "synth"
    make_synthetic(root, classes=3, train_per_class=6, val_per_class=2, size_px=40, seed=3, progress=False)
    return root


def _copy(tree, tmp_path):
    return Path(shutil.copytree(tree, tmp_path / "src"))


def _read_beton(path):
    """Every (image HxWx3 uint8, label) stored in an FFCV file, in file order (raw or JPEG-decoded)."""
    import cv2
    from ffcv.reader import Reader

    reader = Reader(str(path))
    data = np.memmap(path, np.uint8, mode="r")
    sizes = {int(ptr): int(size) for _, ptr, size in reader.alloc_table}
    images, labels = [], []
    for (mode, width, height, ptr), label in reader.metadata:
        blob = np.asarray(data[ptr: ptr + sizes[int(ptr)]])
        if mode == 1:  # raw
            images.append(blob.reshape(height, width, 3))
        else:  # JPEG (FFCV encodes with OpenCV, channels in BGR order)
            images.append(cv2.cvtColor(cv2.imdecode(blob, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB))
        labels.append(int(label))
    return images, labels


def test_manifest_and_contents(tree, tmp_path):
    import cv2

    out = tmp_path / "out"
    manifest = prepare(tree, out, max_side=32, compress_prob=0.0, workers=2)
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUTS)  # no temp files left
    assert json.loads((out / "manifest.json").read_text()) == manifest
    assert manifest["classes"] == ["00_circle", "01_square", "02_triangle"]
    assert (manifest["num_classes"], manifest["train_samples"], manifest["eval_samples"]) == (3, 18, 6)
    assert manifest["settings"] == {"write_mode": "proportion", "max_side": 32, "jpeg_quality": 90,
                                    "compress_prob": 0.0}
    assert manifest["source"] == str(tree.resolve())

    # Val, stored raw (compress_prob 0): FFCV returns the source pixels, resized to max side 32, in order.
    images, labels = _read_beton(out / "val.beton")
    _, _, val, _ = scan_dataset(tree)
    assert labels == [label for _, label in val] == [0, 0, 1, 1, 2, 2]
    for image, (path, _) in zip(images, val):
        src = np.asarray(Image.open(path).convert("RGB"))
        assert max(image.shape[:2]) == 32 and image.shape[2] == 3
        assert abs(image.shape[0] / image.shape[1] - src.shape[0] / src.shape[1]) < 0.05
        expected = cv2.resize(src, image.shape[1::-1], interpolation=cv2.INTER_AREA)
        assert np.abs(image.astype(int) - expected).max() <= 1


def test_mode_conversion_and_skipped_files(tree, tmp_path):
    src = _copy(tree, tmp_path)
    folder = src / "train" / "00_circle"
    rgb = Image.open(next(folder.iterdir())).convert("RGB")
    rgb.convert("L").save(folder / "gray.JPEG")
    rgb.convert("CMYK").save(folder / "cmyk.jpg")
    rgb.convert("RGBA").save(folder / "alpha.png")
    rgb.convert("P").save(folder / "palette.PNG")
    rgb.save(folder / "png_named_jpeg.JPEG", format="PNG")  # as ImageNet's n02105855_2933.JPEG
    (folder / "notes.txt").write_text("not an image")
    (folder / ".DS_Store").write_bytes(b"\0\1")
    manifest = prepare(src, tmp_path / "out", compress_prob=0.5, workers=2)
    assert manifest["train_samples"] == 18 + 5
    _, labels = _read_beton(tmp_path / "out" / "train.beton")
    assert labels == [0] * 11 + [1] * 6 + [2] * 6


def _mangle_truncated(src):
    path = next((src / "train" / "01_square").iterdir())
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path


def _mangle_not_an_image(src):
    path = src / "val" / "02_triangle" / "fake.JPEG"
    path.write_text("<html>404 not found</html>")
    return path


def _mangle_empty_class(src):
    path = src / "train" / "03_empty"
    path.mkdir()
    return path


def _mangle_missing_split(src):
    shutil.rmtree(src / "val")
    return src / "val"


def _mangle_val_class_not_in_train(src):
    path = src / "val" / "99_extra"
    shutil.copytree(src / "val" / "00_circle", path)
    return path


def _mangle_flat_val(src):
    path = src / "val" / "ILSVRC2012_val_00000001.JPEG"
    shutil.copy(next((src / "val" / "00_circle").iterdir()), path)
    return path


BAD = {
    "truncated_jpeg": (_mangle_truncated, "cannot read image (OSError: "),
    "not_an_image": (_mangle_not_an_image, "cannot read image (UnidentifiedImageError"),
    "empty_class": (_mangle_empty_class, "class folder without images; add images"),
    "missing_split": (_mangle_missing_split, "missing split folder;"),
    "val_class_not_in_train": (_mangle_val_class_not_in_train, "class folder that train/ does not have;"),
    "flat_val": (_mangle_flat_val, "image directly in the split folder"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_names_the_file_and_writes_nothing(tree, tmp_path, case):
    src = _copy(tree, tmp_path)
    mangle, message = BAD[case]
    culprit = mangle(src)
    out = tmp_path / "out"
    with pytest.raises(DataError) as err:
        prepare(src, out, workers=2)
    text = str(err.value)
    assert text.startswith(f"{culprit}: ") and message in text and "; " in text and "\n" not in text
    assert not out.exists() or list(out.iterdir()) == []


def test_cli_error_is_one_line_nonzero_and_keeps_earlier_output(tree, tmp_path):
    src = _copy(tree, tmp_path)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "resnet.data.prepare", str(src), str(out), "--workers", "1"]
    assert subprocess.run(cmd, capture_output=True).returncode == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    culprit = _mangle_truncated(src)
    run = subprocess.run(cmd, capture_output=True, text=True)
    assert run.returncode != 0
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith(f"mlperf-resnet prepare: error: {culprit}: cannot read image")
    assert last.endswith("replace or delete the file, then run prepare again")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # old complete set untouched


def test_bad_settings(tree, tmp_path):
    for kwargs, message in (({"max_side": 8}, "--max-side 8"), ({"jpeg_quality": 0}, "--jpeg-quality 0"),
                            ({"compress_prob": 1.5}, "--compress-prob 1.5")):
        with pytest.raises(DataError, match=message):
            prepare(tree, tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()


_MEASURE = """
import resource, sys
from resnet.data.prepare import prepare
prepare(sys.argv[1], sys.argv[2], max_side=256, compress_prob=0.5, workers=1, log=open("/dev/null", "w"))
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


def test_peak_memory_does_not_grow_with_the_data_set(tmp_path):
    """Peak RSS of the prepare process and of its writer worker (which decodes), for 8 vs 48 images per
    class and split: holding the 80 extra decoded images of a split (~190 KiB each) would add ~15 MiB."""
    peaks = {}
    for per_class in (8, 48):
        src = tmp_path / f"src{per_class}"
        make_synthetic(src, classes=2, train_per_class=per_class, val_per_class=per_class, size_px=256,
                       progress=False)
        run = subprocess.run([sys.executable, "-c", _MEASURE, str(src), str(tmp_path / f"out{per_class}")],
                             capture_output=True, text=True, check=True)
        peaks[per_class] = [int(kb) / 1024 for kb in run.stdout.split()[-2:]]
    for small, large in zip(peaks[8], peaks[48]):
        assert large - small < 6, peaks
