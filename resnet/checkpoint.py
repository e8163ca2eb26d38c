"""Checkpoints: what a run must keep to continue bit for bit, written atomically (temporary file + rename) and
loaded with weights_only=True (no code runs). A checkpoint also records what it is a checkpoint OF (the resolved
recipe, the world size, the data set): a resume with anything different is refused, naming the difference."""
import dataclasses
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from resnet import errors
from resnet.errors import CheckpointError


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


def snapshot(parts: dict, progress: RunProgress) -> dict:
    """The state of every part (model, ema, optimizer, scheduler, scaler: anything with state_dict(); None is
    kept as None), the RNGs, and the run's progress."""
    return {**{name: None if part is None else part.state_dict() for name, part in parts.items()},
            "rng": rng_state(), "progress": dataclasses.asdict(progress)}


def progress_of(state: dict) -> RunProgress:
    """The RunProgress a checkpoint holds (CheckpointError for one written by an older version)."""
    try:
        return RunProgress(**state["progress"])
    except (KeyError, TypeError):
        raise CheckpointError("--resume: the checkpoint does not say which run it belongs to (written by an older "
                              "version); move it away and start a new run") from None


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


def check_resumable(progress: RunProgress, identity: dict, seed, mode: str) -> None:
    """Refuse to continue a checkpoint of another run: another seed (with --resume 1) or any difference in the
    identity (recipe field by field, world size, data set). With RESUME=auto an unfinished checkpoint is either
    this run's, and continued, or another's, and refused: a fresh run must not overwrite it."""
    fix = ("resume with the settings of the interrupted run, or move its checkpoint away (or set another "
           "CHECKPOINT_DIR) to start a new run")
    if mode == "1" and seed is not None and seed != progress.seed:
        raise CheckpointError(f"--seed: the checkpoint's run used seed {progress.seed}, not {seed}; a resumed "
                              "run keeps its seed: leave --seed out or give the same one")
    for key, now in identity.items():
        then = progress.identity.get(key)
        if isinstance(now, dict) and isinstance(then, dict):
            for field in now:
                if now[field] != then.get(field):
                    raise CheckpointError(f"--resume: {key} {field} is {now[field]!r} here but "
                                          f"{then.get(field)!r} in the checkpoint of an unfinished run; {fix}")
        elif now != then:
            raise CheckpointError(f"--resume: {key} is {now!r} here but {then!r} in the checkpoint of an unfinished "
                                  f"run; {fix}")


def find_resumable(path: Path | None, mode: str) -> dict | None:
    """The checkpoint state to continue, or None for a fresh run, by RESUME `mode`: "1" must continue the run in
    `path`; "auto" continues an unfinished one and starts fresh otherwise; "0" starts fresh and refuses to
    overwrite an unfinished run's checkpoint. The caller checks the identity (`check_resumable`)."""
    if path is None:
        return None
    if mode == "1":
        state = load(path)
        progress = progress_of(state)
        if progress.finished:
            raise CheckpointError(f"--resume: the checkpoint is of a run that already ended (after epoch "
                                  f"{progress.epoch}); start a new run without --resume")
        return state
    if not path.exists():
        return None
    state = load(path)
    progress = progress_of(state)
    if progress.finished:
        return None
    if mode == "0":
        raise CheckpointError(f"--resume 0 (RESUME): {path} holds an unfinished run (seed {progress.seed}, epoch "
                              f"{progress.epoch + 1}) that a new run would overwrite; continue it with RESUME=auto, "
                              "or move it away (or set another CHECKPOINT_DIR)")
    return state


class Saver:
    """Checkpoints of this run (rank 0 writes): after every epoch, every N minutes, and on a stop signal. It owns
    the run's progress, its start time included."""

    def __init__(self, path: Path | None, every_minutes, is_main: bool, progress: RunProgress):
        self.path, self.every_s, self.is_main, self.progress = path, 60 * (every_minutes or 0), is_main, progress
        self.last = time.time()
        self.last_ok = True   # whether the latest save succeeded (what a stop message may claim)

    def due(self) -> bool:
        return bool(self.path and self.every_s and time.time() - self.last > self.every_s)

    def save(self, parts: dict, *, step: int, epoch: int, batches_done: int, epoch_rng, finished=False) -> bool:
        self.last = time.time()
        if not (self.path and self.is_main):
            return False
        self.progress = dataclasses.replace(self.progress, step=step, epoch=epoch, batches_done=batches_done,
                                            epoch_rng=epoch_rng if batches_done else None, finished=finished)
        self.last_ok = save(self.path, snapshot(parts, self.progress))
        return self.last_ok


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
        errors.warn(f"checkpoint {path} not written ({why}); the previous one is kept and training goes on")
        return False
    finally:
        tmp.unlink(missing_ok=True)


def load(path: Path) -> dict:
    if not path.is_file():
        raise CheckpointError(f"--resume: no checkpoint at {path}; start without --resume or set "
                              "--checkpoint-dir to the interrupted run's folder")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated file or a pickle that wants to run code
        raise CheckpointError(f"checkpoint {path} cannot be loaded safely ({e.__class__.__name__}); "
                              "delete it or point --checkpoint-dir elsewhere") from None
