"""`mlperf-resnet prepare`: manifest, FFCV file contents, 16-bit and float images, every bad input (one line, exit
code, nothing written or overwritten), full disks, signals, dead runs' leftovers, flat memory."""
import contextlib
import ctypes
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from resnet.data.folders import DataError, scan_dataset
from resnet.data.prepare import estimated_bytes, prepare
from resnet.data.synth import make_synthetic
from tests.conftest import REPO

pytest.importorskip("ffcv")

OUTPUTS = ("train.beton", "val.beton", "manifest.json")


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("data") / "synth"
    make_synthetic(root, classes=3, train_per_class=6, val_per_class=2, size_px=40, seed=3, progress=False)
    return root


@pytest.fixture(scope="module")
def made(tree, tmp_path_factory):
    """A complete set made from `tree`, to copy into output folders."""
    out = tmp_path_factory.mktemp("made") / "set"
    prepare(tree, out, workers=1, log=open(os.devnull, "w"))
    return out


def _copy(tree, tmp_path):
    return Path(shutil.copytree(tree, tmp_path / "src", symlinks=True))


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


def _prepare_cli(*args, timeout=300, preexec_fn=None, **kw):
    """`python -m resnet.data.prepare ARGS`: the command module run on its own, as a user can."""
    return subprocess.run([sys.executable, "-m", "resnet.data.prepare", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, cwd=REPO, preexec_fn=preexec_fn, **kw)


def test_manifest_and_contents(tree, tmp_path):
    import cv2

    out = tmp_path / "out"
    manifest = prepare(tree, out, max_side=32, compress_prob=0.0, workers=2)
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUTS)  # no temp or lock files left
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
    (folder / "extra").mkdir()  # a sub-folder: skipped, and counted
    (folder / ".DS_Store").write_bytes(b"\0\1")  # hidden: ignored
    log = tmp_path / "log.txt"
    with open(log, "w") as f:
        manifest = prepare(src, tmp_path / "out", compress_prob=0.5, workers=2, log=f)
    assert manifest["train_samples"] == 18 + 5
    assert "(2 other files and folders skipped)" in log.read_text()
    _, labels = _read_beton(tmp_path / "out" / "train.beton")
    assert labels == [0] * 11 + [1] * 6 + [2] * 6


def test_16_bit_and_float_images_are_scaled_by_their_range_not_clipped(tree, tmp_path):
    """PIL's own convert("RGB") turns a 16-bit gradient white and a 0-1 float image black."""
    import cv2

    src = _copy(tree, tmp_path)
    folder = src / "train" / "02_triangle"
    gray16 = (np.arange(30 * 40).reshape(30, 40) * 54).astype(np.uint16)  # 0 .. 64746
    rgb16 = np.random.default_rng(0).integers(0, 65536, (30, 40, 3)).astype(np.uint16)
    unit = np.linspace(0, 1, 30 * 40, dtype=np.float32).reshape(30, 40)
    Image.fromarray(gray16).save(folder / "zz_a_gray16.png")  # PIL mode I;16
    Image.fromarray(gray16).save(folder / "zz_b_gray16.tif")
    Image.fromarray(gray16.astype(np.int32)).save(folder / "zz_c_int32.tif")  # mode I, values within 16 bits
    Image.fromarray(unit).save(folder / "zz_d_float.tif")  # mode F, 0-1
    cv2.imwrite(str(folder / "zz_e_rgb16.png"), rgb16[..., ::-1])  # 16-bit RGB (OpenCV writes BGR)
    cv2.imwrite(str(folder / "zz_f_rgb16.tif"), rgb16[..., ::-1])
    assert Image.open(folder / "zz_a_gray16.png").mode == "I;16"
    assert Image.open(folder / "zz_d_float.tif").mode == "F"
    prepare(src, tmp_path / "out", compress_prob=0.0, workers=1)  # raw: stored pixels are exact
    images, labels = _read_beton(tmp_path / "out" / "train.beton")
    assert labels[-6:] == [2] * 6
    gray8 = np.round(gray16 / 257)
    for image, expected in zip(images[-6:], [gray8, gray8, gray8, np.round(unit * 255)]):
        assert image.shape == (30, 40, 3) and np.abs(image - expected[..., None]).max() <= 1
    for image in images[-2:]:
        assert np.abs(image.astype(int) - (rgb16 >> 8)).max() <= 1
    assert images[-6].max() == 252 and images[-3].max() == 255  # not clipped to white nor black


# ---- bad inputs: one line, exit code 1, nothing written or overwritten ----------------------------------------


def _snapshot(path: Path):
    """Every entry under `path` (hidden ones too) with its bytes, or None if `path` does not exist."""
    if not os.path.lexists(path):
        return None
    if not path.is_dir():
        return path.read_bytes()
    return {str(p.relative_to(path)): (p.read_bytes() if p.is_file() and not p.is_symlink() else os.readlink(p)
                                       if p.is_symlink() else "dir") for p in sorted(path.rglob("*"))}


def _drop_root_file_access():
    """In the child: without CAP_DAC_OVERRIDE/CAP_DAC_READ_SEARCH (dropped from the bounding set, so that exec
    does not give them back) root obeys file permissions like any user; other users do already."""
    if os.geteuid() == 0:
        libc = ctypes.CDLL(None, use_errno=True)
        for capability in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
            if libc.prctl(24, capability, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
                raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def _can_drop_root_file_access():
    probe = subprocess.run([sys.executable, "-c", ""], preexec_fn=_drop_root_file_access)
    return probe.returncode == 0


def _link(path, target):
    path.symlink_to(target)
    return path


def _first(folder: Path):
    return sorted(folder.iterdir())[0]


def _image(path, array, **kw):
    Image.fromarray(array).save(path, **kw)
    return path


def _other_source(out, made, source="/elsewhere/imagenet"):
    """A copy of the set `made` in `out`, as if made from `source`."""
    shutil.copytree(made, out)
    manifest = json.loads((out / "manifest.json").read_text())
    (out / "manifest.json").write_text(json.dumps({**manifest, "source": str(source)}))


def _holding_the_lock(out, made, src):
    import fcntl

    _other_source(out, made, src.resolve())
    fd = os.open(out / ".prepare.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd  # kept open (and locked) by the test while prepare runs


BAD = {}  # case name -> setup(src, out, made) returning (extra CLI args, culprit, part of the message)


def bad(setup):
    """Register a bad-input case. Its extra args may start with "root" (the case needs a root that obeys file
    permissions), "lock" and an fd (held while prepare runs), or a Path (the output path to give instead of out)."""
    BAD[setup.__name__] = setup
    return setup


@bad
def max_side_8(src, out, made):
    return ["--max-side", 8], "--max-side 8", "must be between 16 and 16384 px"


@bad
def jpeg_quality_0(src, out, made):
    return ["--jpeg-quality", 0], "--jpeg-quality 0", "must be between 1 and 100"


@bad
def compress_prob_1_5(src, out, made):
    return ["--compress-prob", 1.5], "--compress-prob 1.5", "must be between 0 and 1"


@bad
def compress_prob_nan(src, out, made):
    return ["--compress-prob", "nan"], "--compress-prob nan", "must be between 0 and 1"


@bad
def workers_0(src, out, made):
    return ["--workers", 0], "--workers 0", "must be >= 1"


@bad
def src_missing(src, out, made):
    shutil.rmtree(src)
    return [], src, "not a folder; give the ImageNet-layout folder that holds train/ and val/"


@bad
def truncated_jpeg(src, out, made):
    path = _first(src / "train" / "01_square")
    os.truncate(path, 300)
    return [], path, "cannot read image (OSError: "


@bad
def not_an_image(src, out, made):
    path = src / "val" / "02_triangle" / "fake.JPEG"
    path.write_text("<html>404 not found</html>")
    return [], path, "cannot read image (UnidentifiedImageError"


@bad
def empty_class(src, out, made):
    (src / "train" / "03_empty").mkdir()
    return [], src / "train" / "03_empty", "class folder without images; add images"


@bad
def missing_split(src, out, made):
    shutil.rmtree(src / "val")
    return [], src / "val", "missing split folder;"


@bad
def val_class_not_in_train(src, out, made):
    shutil.copytree(src / "val" / "00_circle", src / "val" / "99_extra")
    return [], src / "val" / "99_extra", "class folder that train/ does not have;"


@bad
def flat_val(src, out, made):
    shutil.copy(_first(src / "val" / "00_circle"), src / "val" / "x.JPEG")
    return [], src / "val" / "x.JPEG", "image directly in the split folder"


@bad
def int32_image_beyond_16_bits(src, out, made):
    path = _image(src / "val" / "00_circle" / "i.tif", np.full((20, 20), -5, np.int32))
    return [], path, "32-bit integer image with values from -5 to -5, outside 0-65535"


@bad
def float_image_beyond_0_1(src, out, made):
    path = _image(src / "val" / "00_circle" / "f.tif", np.linspace(0, 10, 400, dtype=np.float32).reshape(20, 20))
    return [], path, "float image with values from 0 to 10, outside 0-1, so its 8-bit rendering is ambiguous"


@bad
def float_image_with_nan(src, out, made):
    path = _image(src / "val" / "00_circle" / "n.tif", np.full((20, 20), np.nan, np.float32))
    return [], path, "float image with NaN or infinite values"


@bad
def dangling_image_symlink(src, out, made):
    path = _link(src / "train" / "00_circle" / "gone.JPEG", "/nowhere/x.JPEG")
    return [], path, "broken symbolic link (its target /nowhere/x.JPEG does not exist); fix or delete the link"


@bad
def image_symlink_loop(src, out, made):
    path = _link(src / "train" / "00_circle" / "loop.JPEG", "loop.JPEG")
    return [], path, "cannot follow (Too many levels of symbolic links); fix or delete the link"


@bad
def class_folder_symlink_loop(src, out, made):
    path = _link(src / "train" / "zz_loop", "zz_loop")
    return [], path, "cannot follow (Too many levels of symbolic links)"


@bad
def unreadable_class_folder(src, out, made):
    os.chmod(src / "train" / "01_square", 0)
    return ["root"], src / "train" / "01_square", "cannot list the folder (Permission denied); make it readable"


@bad
def unreadable_image(src, out, made):
    path = _first(src / "val" / "01_square")
    os.chmod(path, 0)
    return ["root"], path, "cannot read image (PermissionError: "


@bad
def out_is_a_file(src, out, made):
    out.write_text("my notes")
    return [], out, "exists and is not a folder; choose another output folder"


@bad
def out_parent_is_a_file(src, out, made):
    out.write_text("my notes")
    return [out / "sub"], out / "sub", f"cannot be created, {out} is not a folder"


@bad
def out_parent_not_writable(src, out, made):
    out.mkdir()
    os.chmod(out, 0o555)
    return ["root", out / "sub"], out / "sub", "cannot create the folder (Permission denied); choose a folder you " \
                                               "can write to"


@bad
def out_not_writable(src, out, made):
    out.mkdir()
    os.chmod(out, 0o555)
    return ["root"], out, "cannot write there (Permission denied); choose a folder you can write to"


@bad
def train_beton_is_a_folder(src, out, made):
    (out / "train.beton").mkdir(parents=True)
    return [], out / "train.beton", "exists and is not a file, so the finished train.beton could not replace it"


@bad
def manifest_is_a_folder(src, out, made):
    (out / "manifest.json").mkdir(parents=True)
    return [], out / "manifest.json", "exists and is not a file"


@bad
def out_inside_src_train(src, out, made):
    return [src / "train" / "ffcv"], src / "train" / "ffcv", "where it would become a class folder of the next scan"


@bad
def set_from_another_source(src, out, made):
    _other_source(out, made)
    return [], out, ("already holds a data set made from /elsewhere/imagenet; choose another output folder, or add "
                     "--force to replace it")


@bad
def betons_without_manifest(src, out, made):
    shutil.copytree(made, out)
    (out / "manifest.json").unlink()
    return [], out, "already holds FFCV files without a readable manifest.json"


@bad
def another_prepare_running(src, out, made):
    return ["lock", _holding_the_lock(out, made, src)], out, "another prepare is writing into this folder; wait for it"


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_one_line_exit_1_nothing_written(tree, made, tmp_path, case):
    src, out = _copy(tree, tmp_path), tmp_path / "out"
    args, culprit, message = BAD[case](src, out, made)
    preexec, lock = None, None
    if args[:1] == ["root"]:
        if not _can_drop_root_file_access():
            pytest.skip("root here cannot give up its file-access bypass (no CAP_SETPCAP), so permissions "
                        "cannot deny it anything")
        args, preexec = args[1:], _drop_root_file_access
    if args[:1] == ["lock"]:
        args, lock = [], args[1]
    target = args.pop(0) if args and isinstance(args[0], Path) else out
    watched = out if target == out else target
    before, source_before = _snapshot(watched), _snapshot(src)
    try:
        run = _prepare_cli(src, target, "--workers", 2, *args, preexec_fn=preexec)
    finally:
        for path in (src / "train" / "01_square", out):
            if path.is_dir():
                os.chmod(path, 0o755)
        if lock is not None:
            os.close(lock)
    lines = run.stderr.strip().splitlines()
    assert run.returncode == 1, run.stderr
    assert "Traceback" not in run.stderr, run.stderr
    assert lines[-1].startswith(f"mlperf-resnet: error: {culprit}: ") and message in lines[-1], lines[-1]
    assert "; " in lines[-1]
    assert _snapshot(watched) == before  # nothing written, nothing overwritten, no temp files
    if case not in ("out_inside_src_train",):
        assert _snapshot(src) == source_before


# ---- output folders that already hold a set --------------------------------------------------------------------


def test_force_replaces_a_set_from_another_source_and_the_same_source_is_rebuilt(tree, made, tmp_path):
    out = tmp_path / "out"
    _other_source(out, made)
    run = _prepare_cli(tree, out, "--workers", 1, "--force")
    assert run.returncode == 0, run.stderr
    assert json.loads((out / "manifest.json").read_text())["source"] == str(tree.resolve())
    run = _prepare_cli(tree, out, "--workers", 1)  # same source: rebuilt without --force
    assert run.returncode == 0, run.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUTS)


def test_a_failed_rebuild_keeps_the_earlier_set(tree, tmp_path):
    src = _copy(tree, tmp_path)
    out = tmp_path / "out"
    assert _prepare_cli(src, out, "--workers", 1).returncode == 0
    before = _snapshot(out)
    culprit = _first(src / "train" / "01_square")
    os.truncate(culprit, 300)
    run = _prepare_cli(src, out, "--workers", 1)
    assert run.returncode == 1
    assert run.stderr.strip().splitlines()[-1] == (
        f"mlperf-resnet: error: {culprit}: cannot read image (OSError: Truncated File Read); "
        f"replace or delete the file, then run prepare again")
    assert _snapshot(out) == before  # old complete set untouched


def test_through_the_mlperf_resnet_command(tree, tmp_path):
    run = subprocess.run([sys.executable, "-m", "resnet.cli", "prepare", tree, tmp_path / "out", "--max-side", "8"],
                         capture_output=True, text=True, timeout=300, cwd=REPO)
    assert (run.returncode, run.stderr.strip()) == (
        1, "mlperf-resnet: error: --max-side 8: must be between 16 and 16384 px; the recipe's is 500")


def test_bad_settings_in_process(tree, tmp_path):
    for kwargs, message in (({"max_side": 8}, "--max-side 8"), ({"jpeg_quality": 0}, "--jpeg-quality 0"),
                            ({"compress_prob": 1.5}, "--compress-prob 1.5")):
        with pytest.raises(DataError, match=message):
            prepare(tree, tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()


# ---- full disks ----------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _tmpfs(path: Path, size_bytes: int):
    """A real small file system: tmpfs of `size_bytes` at `path` (needs root and mount permission)."""
    path.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_bytes}", "tmpfs", str(path)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip()}); the RLIMIT_FSIZE test covers a worker "
                    f"that cannot write")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


def test_a_disk_that_is_clearly_too_small_is_refused_up_front(tree, tmp_path):
    with _tmpfs(tmp_path / "disk", 4 << 20) as disk:
        run = _prepare_cli(tree, disk / "out", "--workers", 1, timeout=120)
        assert run.returncode == 1 and "Traceback" not in run.stderr
        last = run.stderr.strip().splitlines()[-1]
        assert last.startswith(f"mlperf-resnet: error: {disk / 'out'}: 0.00 GB free on its file system, this set "
                               f"needs at least 0.03 GB; free space there or choose another output folder"), last
        assert list(disk.iterdir()) == []


@pytest.fixture(scope="module")
def noise_tree(tmp_path_factory):
    """Random-noise images: JPEG cannot compress them, so they take far more than prepare's low estimate."""
    root = tmp_path_factory.mktemp("noise") / "tree"
    rng = np.random.default_rng(0)
    for split, count in (("train", 200), ("val", 4)):
        for cls in ("a", "b"):
            (root / split / cls).mkdir(parents=True)
            for i in range(count // 2):
                Image.fromarray(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)).save(root / split / cls / f"{i}.png")
    return root


def test_a_disk_that_fills_during_the_run_stops_it_within_seconds(noise_tree, tmp_path):
    _, train, val, _ = scan_dataset(noise_tree)
    estimate = sum(estimated_bytes(samples, 500, 1.0) for samples in (train, val))
    prepare(noise_tree, tmp_path / "full", compress_prob=1.0, workers=1, log=open(os.devnull, "w"))
    disk_size = estimate + (2 << 20)  # passes the up-front check, cannot hold the set
    assert sum(p.stat().st_size for p in (tmp_path / "full").iterdir()) > disk_size
    with _tmpfs(tmp_path / "disk", disk_size) as disk:
        run = _prepare_cli(noise_tree, disk / "out", "--workers", 1, "--compress-prob", 1, timeout=120)
        assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr
        last = run.stderr.strip().splitlines()[-1]
        assert last.startswith(f"mlperf-resnet: error: {disk / 'out'}: writing "), last
        assert "failed (No space left on device); free space there (this set needs about" in last, last
        assert last.endswith("no output was written")
        assert list(disk.iterdir()) == []  # the temporary file (and the created folder) are gone
        assert shutil.disk_usage(disk).used < (1 << 20)


def _limit_file_size():
    """In the child: files may not grow past 4 MiB (writes then fail with EFBIG instead of killing the process)."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (4 << 20, 4 << 20))


def test_a_writer_process_that_cannot_write_ends_the_run(tree, tmp_path):
    """No root needed: RLIMIT_FSIZE lets the parent write the header but stops the writer process at its first page
    (FFCV 1.0.2's parent would wait forever for that process's images)."""
    out = tmp_path / "out"
    run = _prepare_cli(tree, out, "--workers", 2, timeout=120, preexec_fn=_limit_file_size)
    assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr
    assert run.stderr.strip().splitlines()[-1] == (
        f"mlperf-resnet: error: {out}: writing train.beton failed (File too large); a size limit (file system, or "
        f"`ulimit -f`) caps the file; raise it or choose another output folder; no output was written")
    assert not out.exists()


# ---- signals and dead runs -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def big_tree(tmp_path_factory):
    """Enough images that writing them takes seconds."""
    root = tmp_path_factory.mktemp("big") / "tree"
    make_synthetic(root, classes=2, train_per_class=1000, val_per_class=20, size_px=160, seed=4, progress=False)
    return root


def _children(pid):
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                stat = Path(f"/proc/{entry}/stat").read_text()
                if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry))
    return found


def _alive(pid):
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    return False


def _cpu_s(pid):
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def _start_and_wait_for_writers(src, out, workers=2):
    """Start prepare; return (process, its writer processes) once `workers` writers each have used 0.2 s of CPU
    (so they are past their start-up, with most of their work still ahead)."""
    command = [sys.executable, "-m", "resnet.data.prepare", str(src), str(out), "--workers", str(workers)]
    proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    own = "".join(f"{arg}\0" for arg in command).encode()
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None:
        with contextlib.suppress(OSError):
            writers = [c for c in _children(proc.pid) if _alive(c) and
                       Path(f"/proc/{c}/cmdline").read_bytes() == own]  # forked: same command line
            if len(writers) == workers and min(_cpu_s(w) for w in writers) >= 0.2:
                return proc, writers
        time.sleep(0.01)
    proc.kill()
    pytest.fail(f"prepare never ran {workers} writers: {proc.communicate()[1][-2000:]}")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_and_sigint_remove_the_temporary_files(big_tree, made, tmp_path, signum):
    out = tmp_path / "out"
    shutil.copytree(made, out)
    manifest = json.loads((out / "manifest.json").read_text())
    (out / "manifest.json").write_text(json.dumps({**manifest, "source": str(big_tree.resolve())}))
    before = _snapshot(out)
    proc, writers = _start_and_wait_for_writers(big_tree, out)
    assert any(p.name.startswith(".train.beton.tmp-") for p in out.iterdir())
    proc.send_signal(signum)
    try:
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()  # if it hangs: the test fails, and leaves nothing running
    assert proc.returncode == 128 + signum and "Traceback" not in stderr, stderr
    name = signal.Signals(signum).name
    assert stderr.strip().splitlines()[-1] == (
        f"mlperf-resnet: error: {out}: prepare stopped by {name}; its temporary files were removed and {out} "
        f"holds what it held before; run prepare again")
    assert _snapshot(out) == before
    assert not any(_alive(w) for w in writers)


def test_after_sigkill_no_writer_survives_and_the_next_run_cleans_up(big_tree, tmp_path):
    out = tmp_path / "out"
    proc, writers = _start_and_wait_for_writers(big_tree, out)
    for w in writers:  # stopped: they cannot finish on their own before their parent dies
        os.kill(w, signal.SIGSTOP)
    proc.kill()
    proc.wait(timeout=30)
    deadline = time.monotonic() + 30
    while any(_alive(w) for w in writers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_alive(w) for w in writers), "a writer outlived its parent"
    left = [p.name for p in out.iterdir() if p.name.startswith(".train.beton.tmp-")]
    assert left  # what SIGKILL leaves behind: the next run removes it
    run = _prepare_cli(big_tree, out, "--workers", 2)
    assert run.returncode == 0, run.stderr
    assert "prepare: removed 1 temporary file(s) (" in run.stderr and f"left in {out} by an interrupted prepare" \
        in run.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUTS)


def test_a_bad_image_early_in_a_large_set_ends_the_run_at_once(big_tree, tmp_path):
    """The writers stop while most of the work is still queued: the parent must not wait for that queue at exit."""
    src = Path(shutil.copytree(big_tree, tmp_path / "src"))
    culprit = _first(src / "train" / "00_circle")
    os.truncate(culprit, 300)
    out = tmp_path / "out"
    run = _prepare_cli(src, out, "--workers", 2, timeout=120)
    assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr
    assert run.stderr.strip().splitlines()[-1].startswith(f"mlperf-resnet: error: {culprit}: cannot read image")
    assert not out.exists()


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


def test_one_cpu_prepare_exits(tree, tmp_path):
    """On one CPU (a pinned process, a container's cpuset) numba's TBB layer, used from FFCV's threads, hung the
    process at exit after it had written everything (numba#10556): the command must end, and the set be whole."""
    one_cpu = min(os.sched_getaffinity(0))
    run = _prepare_cli(tree, tmp_path / "out", "--workers", 2, timeout=600,
                       preexec_fn=lambda: os.sched_setaffinity(0, {one_cpu}))
    assert run.returncode == 0, run.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(OUTPUTS)
