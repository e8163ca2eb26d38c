"""Checkpoints: what a run must keep to continue bit for bit, written atomically (temporary file + rename) and
loaded with weights_only=True (no code runs). A checkpoint also records what it is a checkpoint OF (the resolved
recipe, the world size, the data set): a resume with anything different is refused, naming the difference."""
import os
import random
import sys
from pathlib import Path

import torch

from resnet.errors import CheckpointError


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


def snapshot(parts: dict, **progress) -> dict:
    """The state of every part (model, ema, optimizer, scheduler, scaler: anything with state_dict(); None is
    kept as None), the RNGs, and `progress` (epoch, batches done, seed, identity, ...)."""
    return {**{name: None if part is None else part.state_dict() for name, part in parts.items()},
            "rng": rng_state(), **progress}


def restore(parts: dict, state: dict) -> None:
    """Load `state` (from `snapshot`) into `parts`, RNGs included."""
    for name, part in parts.items():
        if part is not None:
            try:
                part.load_state_dict(state[name])
            except (KeyError, RuntimeError, ValueError) as e:
                first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
                raise CheckpointError(f"checkpoint: its {name} does not fit this run ({first}); start without "
                                      "--resume or point --checkpoint-dir at this run's own folder") from None
    set_rng_state(state["rng"])


def check_resumable(state: dict, identity: dict, seed) -> None:
    """Refuse to continue a checkpoint of another run: a finished one, another seed, or any difference in the
    identity (recipe field by field, world size, data set)."""
    fix = "resume with the settings of the interrupted run, or start a new run without --resume"
    if state.get("finished"):
        raise CheckpointError(f"--resume: the checkpoint is of a run that already ended (after epoch "
                              f"{state.get('epoch')}); start a new run without --resume")
    if seed is not None and seed != state.get("seed"):
        raise CheckpointError(f"--seed: the checkpoint's run used seed {state.get('seed')}, not {seed}; a resumed "
                              "run keeps its seed: leave --seed out or give the same one")
    saved = state.get("identity")
    if not isinstance(saved, dict):
        raise CheckpointError("--resume: the checkpoint does not say which run it belongs to (written by an older "
                              "version); start a new run without --resume")
    for key, now in identity.items():
        then = saved.get(key)
        if isinstance(now, dict) and isinstance(then, dict):
            for field in now:
                if now[field] != then.get(field):
                    raise CheckpointError(f"--resume: {key} {field} is {now[field]!r} here but "
                                          f"{then.get(field)!r} in the checkpoint; {fix}")
        elif now != then:
            raise CheckpointError(f"--resume: {key} is {now!r} here but {then!r} in the checkpoint; {fix}")


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
        print(f"mlperf-resnet: warning: checkpoint {path} not written ({why}); the previous one is "
              "kept and training goes on", file=sys.stderr, flush=True)
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
