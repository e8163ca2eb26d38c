"""`mlperf-resnet prepare SRC OUT`: ImageNet-layout folders -> OUT/train.beton, OUT/val.beton, OUT/manifest.json.

SRC holds train/<class>/* and val/<class>/* images (any number of classes; class index = position in the
sorted train/ folder names, as in torchvision's ImageFolder). Images are written with FFCV's DatasetWriter
as the recipe's submission did: RGBImageField(write_mode="proportion", max_resolution=max_side,
compress_probability, jpeg_quality) and an IntField label. Images are opened one at a time by the writer's
worker processes, so memory stays flat however large SRC is.

Images: grayscale, CMYK, palette and alpha images are converted to RGB; 16-bit images are scaled from
0-65535 and float images from 0-1 to 8 bits; float or 32-bit images outside those ranges are refused.
Files with other extensions than ImageFolder's are skipped. A file that cannot be decoded, a broken or
looping symbolic link, or an unreadable folder stops the run with its name and no output.

Output: the three files are written under hidden temporary names and renamed into place only when all
three are complete, so an earlier set in OUT stays as it was until then. OUT may already hold a set made
from the same SRC (it is rebuilt and replaced); a set made from another source is refused unless --force
is given. Free space is checked up front against an estimate from a sample of the images; a full disk
during the run stops it within seconds. SIGTERM/SIGINT remove the temporary files; the writer processes
end with their parent, even after SIGKILL, and the next run into OUT removes what a killed run left.
"""
import contextlib
import errno
import fcntl
import gc
import json
import os
import re
import shutil
import signal
import sys
import threading
import time
from pathlib import Path

from resnet import errors
from resnet.data.beton import MANIFEST, OUTPUTS, beton_digest, estimated_bytes, page_size
from resnet.data.beton import manifest as make_manifest
from resnet.data.folders import DataError, read_image, scan_dataset
from resnet.data.workers import die_with_parent

NAME = "prepare"
HELP = "write FFCV train/val files from ImageNet-layout folders"
LOCK = ".prepare.lock"
_TEMP = re.compile(r"^\.(train\.beton|val\.beton|manifest\.json)\.tmp-\d+(\.errors)?$")
_PROGRESS_EVERY_S = 60
_DATA = -1  # the "errno" of a writer failure caused by an image, whose message is already the one to print


class Stopped(errors.Error):
    """prepare stopped by SIGTERM/SIGINT (exit code 128 + the signal, as a shell reports it)."""

    def __init__(self, message, signum):
        super().__init__(message)
        self.exit_code = 128 + signum


def _temp_name(final: Path) -> Path:
    return final.with_name(f".{final.name}.tmp-{os.getpid()}")


# ---- writer processes: they report their failure, and die with their parent -----------------------------------

def _describe(e: BaseException):
    """(errno, or 0, or _DATA for a bad image; one line) for an exception raised in a writer process."""
    if isinstance(e, DataError):
        return _DATA, str(e)
    if isinstance(e, OSError):
        return e.errno or 0, e.strerror or str(e)
    return 0, f"{type(e).__name__}: {e}".replace("\n", " ")


def _worker(parent_pid, failures, work_fn, *args):
    """A DatasetWriter worker under our watch: a failure is sent to the parent (which stops everything at once)
    instead of FFCV's default of a traceback and a parent waiting forever for the dead worker's images."""
    # A forked child has only this thread: an object it inherited whose finaliser joins its owner's threads (a
    # DALI pipeline the parent left to the garbage collector) would wait forever. Never collect what came
    # from the parent.
    gc.freeze()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the parent, which ends the workers
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    die_with_parent(parent_pid)
    try:
        work_fn(*args)
    except BaseException as e:  # noqa: BLE001 - every failure must reach the parent
        failures.put(_describe(e))
        os._exit(1)


class _LazyImages:
    """The indexed data set the writer's workers read: item i = (RGB uint8 HxWx3 array, label), decoded on
    demand. A file that fails is reported to the parent straight away (the worker may then wait inside FFCV
    for its turn to write a page, which never comes once the parent stops the write)."""

    def __init__(self, samples, failures):
        self.samples, self.failures = samples, failures

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        import numpy as np

        path, label = self.samples[i]
        try:
            return np.asarray(read_image(path, fix="replace or delete the file, then run prepare again")), label
        except DataError as e:
            self.failures.put((_DATA, str(e)))
            raise


def _write_beton(path, samples, settings, workers, tick):
    """Write `samples` to the FFCV file `path`. Raises DataError for a bad image, OSError for the rest."""
    from multiprocessing import SimpleQueue

    from resnet.data.ffcv_patches import WorkerFailed, Writer
    from ffcv.fields import IntField, RGBImageField

    failures = SimpleQueue()  # put() writes straight into a pipe: nothing is lost when the worker exits
    fields = {
        "image": RGBImageField(write_mode=settings["write_mode"], max_resolution=settings["max_side"],
                               jpeg_quality=settings["jpeg_quality"],
                               compress_probability=settings["compress_prob"]),
        "label": IntField(),
    }
    writer = Writer(str(path), fields, page_size(settings["max_side"]), workers, failures, tick, _worker)
    try:
        writer.from_indexed_dataset(_LazyImages(samples, failures))
    except WorkerFailed as e:
        if e.errno == _DATA:
            raise DataError(e.text) from None  # a bad image, already '<file>: <problem>; <fix>'
        raise OSError(e.errno, e.text) from None


# ---- checks before anything is written ----------------------------------------------------------------------

def _validate(max_side, jpeg_quality, compress_prob, workers):
    if not 16 <= max_side <= 16384:
        raise DataError(f"--max-side {max_side}: must be between 16 and 16384 px; the recipe's is 500")
    if not 1 <= jpeg_quality <= 100:
        raise DataError(f"--jpeg-quality {jpeg_quality}: must be between 1 and 100; the recipe's is 90")
    if not 0.0 <= compress_prob <= 1.0:
        raise DataError(f"--compress-prob {compress_prob}: must be between 0 and 1; the recipe's is 0.5")
    if workers < 1:
        raise DataError(f"--workers {workers}: must be >= 1; leave it out to use every usable core")


def _existing_ancestor(path: Path) -> Path:
    while not os.path.lexists(path) and path != path.parent:
        path = path.parent
    return path


def _check_output(src: Path, out: Path, force: bool):
    """Refuse an output path that cannot work, or that holds a data set made from another source."""
    if os.path.lexists(out) and not out.is_dir():
        raise DataError(f"{out}: exists and is not a folder; choose another output folder")
    ancestor = _existing_ancestor(out.absolute())
    if not ancestor.is_dir():
        raise DataError(f"{out}: cannot be created, {ancestor} is not a folder; choose another output folder")
    for split in ("train", "val"):
        if (src / split).is_dir() and out.resolve().is_relative_to((src / split).resolve()):
            raise DataError(f"{out}: inside {src / split}, where it would become a class folder of the next "
                            f"scan; choose an output folder outside {src}")
    for name in OUTPUTS:
        path = out / name
        if os.path.lexists(path) and not path.is_file():
            raise DataError(f"{path}: exists and is not a file, so the finished {name} could not replace it; "
                            f"move it away or choose another output folder")
    if force or not any(os.path.lexists(out / name) for name in OUTPUTS):
        return
    try:
        source = json.loads((out / MANIFEST).read_text())["source"]
    except (OSError, ValueError, KeyError, TypeError):
        source = None
    if source == str(src.resolve()):
        return  # a rebuild from the same folder: replaced once the new set is complete
    held = f"a data set made from {source}" if source else "FFCV files without a readable manifest.json"
    raise DataError(f"{out}: already holds {held}; choose another output folder, or add --force to replace it")


def _check_space(out, train, val, settings, reclaimable):
    needed = sum(estimated_bytes(s, settings["max_side"], settings["compress_prob"]) for s in (train, val))
    where = _existing_ancestor(out.absolute())
    free = shutil.disk_usage(where).free + reclaimable
    if free < needed:
        raise DataError(f"{out}: {free / 1e9:.2f} GB free on its file system, this set needs at least "
                        f"{needed / 1e9:.2f} GB; free space there or choose another output folder "
                        f"(or lower --max-side, raise --compress-prob)")
    return needed


# ---- the output folder: created, locked, cleaned ---------------------------------------------------------------

def _create(out: Path):
    """mkdir -p `out`; returns the folders created (deepest first), to be removed again if the run fails."""
    created, path = [], out.absolute()
    while not os.path.lexists(path):
        created.append(path)
        path = path.parent
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"{out}: cannot create the folder ({e.strerror}); choose a folder you can write to") from None
    return created


def _lock(out: Path):
    """Hold OUT/.prepare.lock for this run (flock: released by the kernel however the process ends).
    Returns (fd, locked); a file system without locks (some network mounts) gives locked=False."""
    try:
        fd = os.open(out / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise DataError(f"{out}: cannot write there ({e.strerror}); choose a folder you can write to") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise DataError(f"{out}: another prepare is writing into this folder; wait for it to end, or stop it "
                        f"and run prepare again") from None
    except OSError:
        return fd, False
    return fd, True


def _stale_temps(out: Path):
    if not out.is_dir():
        return []
    return [p for p in out.iterdir() if _TEMP.match(p.name)]


class _Signals:
    """SIGTERM/SIGINT, noted by the handler and acted on by the parent's loop (`check`, every 0.1 s while writing),
    so that the `finally` blocks remove the temporary files and end the writer processes. (Python's defaults:
    SIGTERM kills at once, SIGINT prints a traceback from every worker; an exception raised in the handler itself
    can land anywhere, e.g. in a fork hook that swallows it.)"""

    def __init__(self, out: Path):
        self.out, self.signum = out, None

    def note(self, signum, _frame):
        self.signum = signum

    def check(self):
        if self.signum is not None:
            raise Stopped(f"{self.out}: prepare stopped by {signal.Signals(self.signum).name}; its temporary files "
                          f"were removed and {self.out} holds what it held before; run prepare again", self.signum)

    @contextlib.contextmanager
    def noted(self):
        if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
            yield self
            return
        previous = {s: signal.signal(s, self.note) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield self
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)


def _write_error(e: OSError, out: Path, file: Path, needed: int) -> DataError:
    code = e.errno or 0
    problem = e.strerror or str(e)
    if code in (errno.ENOSPC, errno.EDQUOT):
        fix = f"free space there (this set needs about {needed / 1e9:.2f} GB or more) or choose another output folder"
    elif code == errno.EFBIG:
        fix = "a size limit (file system, or `ulimit -f`) caps the file; raise it or choose another output folder"
    elif code:
        fix = "check the output folder and its file system"
    else:
        fix = "see the message, then run prepare again"
    return DataError(f"{out}: writing {file.name} failed ({problem}); {fix}; no output was written")


def prepare(src, out, max_side=500, jpeg_quality=90, compress_prob=0.5, workers=None, force=False, log=sys.stderr):
    """Write out/train.beton, out/val.beton and out/manifest.json from the folders under `src`.

    Returns the manifest dict. Raises DataError ('<file>: <problem>; <fix>') on bad input, a full disk or an
    unwritable output, and Stopped on SIGTERM/SIGINT, leaving no output file behind (an earlier complete set
    under `out` stays as it was). `force` replaces a set in `out` made from another source.
    """
    src, out = Path(src), Path(out)
    workers = len(os.sched_getaffinity(0)) if workers is None else workers
    _validate(max_side, jpeg_quality, compress_prob, workers)
    if not src.is_dir():
        raise DataError(f"{src}: not a folder; give the ImageNet-layout folder that holds train/ and val/")
    _check_output(src, out, force)
    classes, train, val, skipped = scan_dataset(src)
    print(f"{NAME}: {src}: {len(classes)} classes, {len(train)} train and {len(val)} val images"
          + (f" ({skipped} other files and folders skipped)" if skipped else ""), file=log, flush=True)
    settings = {"write_mode": "proportion", "max_side": max_side, "jpeg_quality": jpeg_quality,
                "compress_prob": compress_prob}
    stale = _stale_temps(out)
    needed = _check_space(out, train, val, settings, sum(p.stat().st_size for p in stale))
    final = [out / name for name in OUTPUTS]
    tmp = [_temp_name(p) for p in final]
    created, lock, done = _create(out), None, False
    try:
        with _Signals(out).noted() as signals:
            lock, locked = _lock(out)
            stale = _stale_temps(out) if locked else []  # the lock is ours: these are left by a killed run
            if stale:
                size = sum(p.stat().st_size for p in stale)
                for p in stale:
                    p.unlink(missing_ok=True)
                print(f"{NAME}: removed {len(stale)} temporary file(s) ({size / 1e9:.2f} GB) left in {out} by an "
                      f"interrupted prepare", file=log, flush=True)
            for samples, t, f in zip((train, val), tmp, final):
                signals.check()
                print(f"{NAME}: writing {f} ({len(samples)} images, {workers} workers)", file=log, flush=True)
                last = [time.monotonic()]

                def tick(count, total, name=f.name):  # called every 0.1 s while the writers work
                    signals.check()
                    if time.monotonic() - last[0] >= _PROGRESS_EVERY_S:
                        last[0] = time.monotonic()
                        print(f"{NAME}: {name}: {count}/{total} images", file=log, flush=True)

                try:
                    _write_beton(t, samples, settings, workers, tick)
                except OSError as e:
                    raise _write_error(e, out, f, needed) from None
            signals.check()  # the last moment to stop: from here on the set is complete
            manifest = make_manifest(classes, len(train), len(val), settings, src.resolve(),
                                     {"train": beton_digest(tmp[0]), "val": beton_digest(tmp[1])})
            try:
                tmp[2].write_text(json.dumps(manifest, indent=1) + "\n")
                for t, f in zip(tmp, final):
                    os.replace(t, f)
            except OSError as e:
                raise _write_error(e, out, final[2], needed) from None
            done = True
    finally:
        for t in tmp:
            t.unlink(missing_ok=True)
        if lock is not None:
            (out / LOCK).unlink(missing_ok=True)
            os.close(lock)
        if not done:
            for folder in created:  # deepest first; only what this run created, and only if empty
                with contextlib.suppress(OSError):
                    folder.rmdir()
    print(f"{NAME}: wrote {', '.join(str(f) for f in final)}", file=log)
    return manifest


def add_arguments(parser):
    parser.add_argument("src", type=Path, help="folder with train/<class>/ and val/<class>/ images")
    parser.add_argument("out", type=Path, help="output folder for train.beton, val.beton, manifest.json")
    parser.add_argument("--max-side", type=int, default=500, help="longest side stored, px (default 500)")
    parser.add_argument("--jpeg-quality", type=int, default=90, help="quality of the JPEG-stored images (default 90)")
    parser.add_argument("--compress-prob", type=float, default=0.5,
                        help="fraction of images stored as JPEG, the rest raw (default 0.5)")
    parser.add_argument("--workers", type=int, default=None, help="writer processes (default: all usable cores)")
    parser.add_argument("--force", action="store_true",
                        help="replace a data set in OUT that was made from another source")


def run(args) -> int:
    prepare(args.src, args.out, args.max_side, args.jpeg_quality, args.compress_prob, args.workers, args.force)
    return 0


if __name__ == "__main__":
    sys.exit(errors.main(sys.modules[__name__]))
