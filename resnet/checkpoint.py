"""Checkpoints: what a run must keep to continue bit for bit, written atomically (temporary file + rename) and
loaded with weights_only=True (no code runs). A checkpoint also records what it is a checkpoint OF (the resolved
recipe, the world size, the data set): a resume with anything different is refused, naming the difference.

A checkpoint folder has one owner: the live run that holds its `owner.lock` (an flock that dies with the process,
`claim`/`holder`). A checkpoint carries its format version and a SHA-256 of its tensors' bytes (checked at load);
`finished.json` marks the run that ended, even when its final save failed. Saves are asynchronous: the training
thread pays a copy of the state to (pinned) host memory; a thread writes the file, one write at a time."""
import dataclasses
import fcntl
import hashlib
import json
import os
import random
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from resnet import errors
from resnet.errors import CheckpointError

# 1: before the format version, the checksum and the owner lock (PR history); 2: with them
FORMAT_VERSION = 2
OWNER, FINISHED = "owner.lock", "finished.json"
MOVE = "move it away (or set another CHECKPOINT_DIR) to start a new run"
_held = {}   # checkpoint folder -> the descriptor holding its lock, for the life of this process


@dataclass
class RunProgress:
    """What a checkpoint holds besides the parts: which run it is and how far it got."""
    seed: int
    identity: dict                   # what the run is: resolved recipe, world size, data set (with its digest)
    run_start_ms: int | None = None  # the first attempt's run_start: a resumed run keeps it, so lost time counts
    epoch: int = 0                   # 0-based epoch in progress (or the next one, when batches_done is 0)
    batches_done: int = 0            # of that epoch
    step: int = 0                    # optimiser steps so far
    epoch_rng: dict | None = None    # RNG state at the start of the epoch in progress (its data order replays)
    finished: bool = False           # the run ended (target reached or epochs exhausted): nothing to resume

    def start_clock(self) -> int:
        if self.run_start_ms is None:
            self.run_start_ms = int(time.time() * 1000)
        return self.run_start_ms


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def claim(folder: Path) -> None:
    """Hold `folder` (CHECKPOINT_DIR) for the life of this process: an exclusive flock on folder/owner.lock, with
    "pid N on host H since T" written in it. Another live holder: CheckpointError naming it."""
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / OWNER, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        who = os.pread(fd, 300, 0).decode(errors="replace").strip() or "a live process"
        os.close(fd)
        raise CheckpointError(held_line(folder, who)) from None
    since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} on host {socket.gethostname()} since {since}\n".encode(), 0)
    _held[str(folder)] = fd


def held_line(folder, who: str) -> str:
    """The one line refusing a checkpoint folder that the live run `who` holds (the trainer's and the launcher's)."""
    return (f"--checkpoint-dir (CHECKPOINT_DIR) {folder}: held by a live run ({who}); a checkpoint has one owner: "
            "wait for that run to end, or set another CHECKPOINT_DIR")


def holder(folder) -> str | None:
    """Who holds the checkpoint folder `folder` ("pid N on host H since T"), or None when no live run does."""
    try:
        fd = os.open(Path(folder) / OWNER, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return None
    except OSError:
        return os.pread(fd, 300, 0).decode(errors="replace").strip() or "a live process"
    finally:
        os.close(fd)      # also releases the shared lock taken to test it


def snapshot(parts: dict, progress: RunProgress) -> dict:
    """The state of every part (model, ema, optimizer, scheduler, scaler: anything with state_dict(); None is
    kept as None), the RNGs, the run's progress and the format version."""
    return {**{name: None if part is None else part.state_dict() for name, part in parts.items()},
            "rng": rng_state(), "progress": dataclasses.asdict(progress), "format_version": FORMAT_VERSION}


def host_copy(obj, buffers: dict, key=()):
    """`obj` with every tensor copied to host memory (pinned for a CUDA tensor), into `buffers` reused from the
    previous save: training may go on changing the originals while a thread writes the copy."""
    if isinstance(obj, torch.Tensor):
        buf = buffers.get(key)
        if buf is None or buf.shape != obj.shape or buf.dtype != obj.dtype:
            buf = buffers[key] = torch.empty(obj.shape, dtype=obj.dtype, pin_memory=obj.is_cuda)
        return buf.copy_(obj.detach(), non_blocking=obj.is_cuda)
    if isinstance(obj, dict):
        return {k: host_copy(v, buffers, (*key, k)) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(host_copy(v, buffers, (*key, i)) for i, v in enumerate(obj))
    return obj


def tensor_digest(state: dict) -> str:
    """SHA-256 over every tensor's dtype, shape and bytes, in the state's order (its "checksum" left out)."""
    h = hashlib.sha256()

    def walk(o):
        if isinstance(o, torch.Tensor):
            h.update(f"{o.dtype}{tuple(o.shape)}".encode())
            h.update(o.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
        elif isinstance(o, dict):
            for k, v in o.items():
                h.update(repr(k).encode())
                walk(v)
        elif isinstance(o, (list, tuple)):
            for v in o:
                walk(v)
    walk({k: v for k, v in state.items() if k != "checksum"})
    return h.hexdigest()


def progress_of(state: dict) -> RunProgress:
    """The RunProgress a checkpoint holds (`load` has checked its format version)."""
    try:
        return RunProgress(**state["progress"])
    except (KeyError, TypeError):
        raise CheckpointError(f"checkpoint: its progress record does not fit this version of mlperf-resnet; "
                              f"{MOVE}") from None


def restore(parts: dict, state: dict) -> RunProgress:
    """Load `state` (from `snapshot`) into `parts`, RNGs included; returns its progress."""
    progress = progress_of(state)
    for name, part in parts.items():
        if part is not None:
            try:
                part.load_state_dict(state[name])
            except (KeyError, RuntimeError, ValueError) as e:
                first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
                raise CheckpointError(f"checkpoint: its {name} does not fit this run ({first}); start without "
                                      "--resume or point --checkpoint-dir at this run's own folder") from None
    set_rng_state(state["rng"])
    return progress


def check_seed(progress: RunProgress, seed, mode: str, path: Path) -> None:
    """A given --seed must be the checkpoint's: RESUME=1 says so; RESUME=auto never adopts another seed's run
    (it belongs to another experiment, or another launch)."""
    if seed is None or seed == progress.seed:
        return
    if mode == "1":
        raise CheckpointError(f"--seed: the checkpoint's run used seed {progress.seed}, not {seed}; a resumed "
                              "run keeps its seed: leave --seed out or give the same one")
    raise CheckpointError(f"--resume auto (RESUME): {path} holds the unfinished run of seed {progress.seed} (epoch "
                          f"{progress.epoch + 1}), not this run's seed {seed}; to continue it run with "
                          f"SEED={progress.seed} (--seed {progress.seed}); for seed {seed} set another "
                          f"CHECKPOINT_DIR (or move {path.name} away)")


def first_difference(a: dict, b: dict, path=()) -> tuple | None:
    """(key path, value in a, value in b) of the first entry where two identities differ (a's order), else None;
    a key that only one has counts, with the value None for the other."""
    for key in [*a, *(k for k in b if k not in a)]:
        x, y = a.get(key), b.get(key)
        if isinstance(x, dict) and isinstance(y, dict):
            found = first_difference(x, y, (*path, key))
            if found:
                return found
        elif x != y or (key in a) != (key in b):
            return (*path, key), x, y
    return None


def setting_name(path: tuple) -> str:
    """How an error names an entry of the run identity (a key path): the setting that sets it."""
    from resnet.settings import BY_FIELD     # the settings table: only when an error is being worded

    if path[0] == "recipe" and len(path) > 1 and path[1] in BY_FIELD:
        return BY_FIELD[path[1]].name
    if path[0] == "world_size":
        return "the world size (DGXNGPU x DGXNNODES)"
    if path[0] == "data":
        return f"the data set's {' '.join(map(str, path[1:]))} (DATADIR)"
    return " ".join(map(str, path))


def check_resumable(progress: RunProgress, identity: dict) -> None:
    """Refuse to continue a checkpoint of another run: any difference in the identity (recipe field by field,
    world size, data set). With RESUME=auto an unfinished checkpoint is either this run's, and continued, or
    another's, and refused: a fresh run must not overwrite it."""
    fix = ("resume with the settings of the interrupted run, or move its checkpoint away (or set another "
           "CHECKPOINT_DIR) to start a new run")
    for key, now in identity.items():
        then = progress.identity.get(key)
        if isinstance(now, dict) and isinstance(then, dict):
            unknown = [field for field in then if field not in now]
            if unknown:
                raise CheckpointError(f"--resume: the checkpoint's {key} has a field {unknown[0]!r} that this "
                                      f"version does not know (written by another version); continue it with "
                                      f"that version, or {MOVE}")
            for field in now:
                if field not in then:
                    raise CheckpointError(f"--resume: the checkpoint's {key} has no field {field!r} (written by "
                                          f"an earlier version); continue it with that version, or {MOVE}")
                if now[field] != then.get(field):
                    raise CheckpointError(f"--resume: {key} {field} is {now[field]!r} here but "
                                          f"{then.get(field)!r} in the checkpoint of an unfinished run; {fix}")
        elif now != then:
            raise CheckpointError(f"--resume: {key} is {now!r} here but {then!r} in the checkpoint of an unfinished "
                                  f"run; {fix}")


def find_resumable(path: Path | None, mode: str, seed=None) -> dict | None:
    """The checkpoint state to continue, or None for a fresh run, by RESUME `mode`: "1" must continue the run in
    `path`; "auto" continues an unfinished one (of `seed`, when given) and starts fresh otherwise; "0" starts
    fresh and refuses to overwrite an unfinished run's checkpoint. The caller checks the identity
    (`check_resumable`)."""
    if path is None:
        return None
    if path.is_symlink() or (path.exists() and not path.is_file()):
        raise CheckpointError(f"--checkpoint-dir (CHECKPOINT_DIR): {path} is not a checkpoint file (a folder or "
                              f"another kind of file, or a link); move it away or set another CHECKPOINT_DIR")
    if mode == "1":
        state = load(path)
        progress = progress_of(state)
        if progress.finished or ended(path.parent, progress):
            raise CheckpointError(f"--resume: the checkpoint is of a run that already ended (after epoch "
                                  f"{progress.epoch}); start a new run without --resume")
        check_seed(progress, seed, mode, path)
        return state
    if not path.exists():
        return None
    state = load(path)
    progress = progress_of(state)
    if progress.finished or ended(path.parent, progress):
        return None
    if mode == "0":
        raise CheckpointError(f"--resume 0 (RESUME): {path} holds an unfinished run (seed {progress.seed}, epoch "
                              f"{progress.epoch + 1}) that a new run would overwrite; continue it with RESUME=auto, "
                              "or move it away (or set another CHECKPOINT_DIR)")
    check_seed(progress, seed, mode, path)
    return state


def ended(folder: Path, progress: RunProgress) -> bool:
    """Whether finished.json marks the run of `progress` (its seed and first start) as ended."""
    try:
        marker = json.loads((folder / FINISHED).read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(marker, dict) or progress.run_start_ms is None:
        return False
    return (marker.get("seed"), marker.get("run_start_ms")) == (progress.seed, progress.run_start_ms)


class Saver:
    """Checkpoints of this run (rank 0 writes): after every epoch, every N minutes, and on a stop signal. It owns
    the run's progress, its start time included. `save` returns once the state is copied to host memory; a thread
    writes it (the next save, `wait` and `finish` wait for that write first)."""

    def __init__(self, path: Path | None, every_minutes, is_main: bool, progress: RunProgress):
        self.path, self.every_s, self.is_main, self.progress = path, 60 * (every_minutes or 0), is_main, progress
        self.last = time.time()
        self.last_ok = True   # whether the latest write succeeded (what a stop message may claim): see `wait`
        self._writer, self._buffers = None, {}

    def due(self) -> bool:
        return bool(self.path and self.every_s and time.time() - self.last > self.every_s)

    def save(self, parts: dict, *, step: int, epoch: int, batches_done: int, epoch_rng, finished=False,
             wait=False) -> None:
        """Checkpoint `parts` at this point; `wait`: return only once it is written (then `last_ok` says how)."""
        self.last = time.time()
        if not (self.path and self.is_main):
            return
        self.wait()
        self.progress = dataclasses.replace(self.progress, step=step, epoch=epoch, batches_done=batches_done,
                                            epoch_rng=epoch_rng if batches_done else None, finished=finished)
        state = host_copy(snapshot(parts, self.progress), self._buffers)
        if torch.cuda.is_available():
            torch.cuda.synchronize()      # the pinned copies are complete before the writer reads them
        self._writer = threading.Thread(target=self._write, args=(state,), name="checkpoint-writer")
        self._writer.start()
        if wait:
            self.wait()

    def _write(self, state: dict) -> None:
        ok = False
        try:
            state["checksum"] = tensor_digest(state)
            ok = save(self.path, state)
        finally:
            self.last_ok = ok

    def wait(self) -> bool:
        """Wait for the write in flight; whether the latest write succeeded."""
        if self._writer is not None:
            self._writer.join()
            self._writer = None
        return self.last_ok

    def finish(self) -> None:
        """The run ended (run_stop success, or its epochs ran out): after its last write, finished.json marks it,
        so that a re-run never continues it, even from an earlier checkpoint when that last write failed."""
        if not (self.path and self.is_main):
            return
        self.wait()
        marker = json.dumps({"seed": self.progress.seed, "run_start_ms": self.progress.run_start_ms,
                             "epochs_done": self.progress.epoch, "checkpoint_written": self.last_ok})
        tmp = self.path.with_name(f".{FINISHED}.tmp{os.getpid()}")
        try:
            tmp.write_text(marker + "\n")
            os.replace(tmp, self.path.parent / FINISHED)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            errors.warn(f"{self.path.parent / FINISHED} not written ({e.strerror}); a re-run with RESUME=auto may "
                        "continue this ended run from its last checkpoint")


def save(path: Path, state: dict) -> bool:
    """Write `state` to `path` atomically. A failed write (a full disk) keeps the last good checkpoint, warns in
    one line and returns False: losing one checkpoint must not end a run that is still training."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(state, tmp)
        os.replace(tmp, path)
        return True
    except (OSError, RuntimeError) as e:   # torch's zip writer reports a short write as a RuntimeError
        why = getattr(e, "strerror", None) or str(e).strip().splitlines()[0][:120]
        kept = "the previous one is kept" if path.is_file() else "there is no earlier one"
        errors.warn(f"checkpoint {path} not written ({why}); {kept} and training goes on")
        return False
    finally:
        tmp.unlink(missing_ok=True)


def load(path: Path) -> dict:
    """A checkpoint of this format whose tensors match their checksum (else CheckpointError, one line)."""
    if not path.is_file():
        raise CheckpointError(f"--resume: no checkpoint at {path}; start without --resume or set "
                              "--checkpoint-dir to the interrupted run's folder")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated file or a pickle that wants to run code
        raise CheckpointError(f"checkpoint {path} cannot be loaded safely ({e.__class__.__name__}); "
                              "delete it or point --checkpoint-dir elsewhere") from None
    version = state.get("format_version", 1) if isinstance(state, dict) else 1
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {path}: written by a newer mlperf-resnet (format {version!r}; this "
                              f"version reads format {FORMAT_VERSION}); continue it with that version, or {MOVE}")
    if version < FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {path}: written by an earlier mlperf-resnet (format {version}; this "
                              f"version reads format {FORMAT_VERSION}) and cannot be continued here; {MOVE}")
    if state.get("checksum") != tensor_digest(state):
        raise CheckpointError(f"checkpoint {path}: its tensors do not match the checksum written with them (the "
                              f"file is corrupted); it cannot be continued: {MOVE}")
    return state
