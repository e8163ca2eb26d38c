"""A set of experiments as a unit that can be continued: run_and_time.sh's record of it, its logs, its verdict.

The record, $LOGDIR/$DGXSYSTEM/resnet/set.json (written whole: temporary file + rename), holds the set's size,
its seeds, the settings that make it the same set, and per experiment its state (pending, running, stopped,
ended), its exit status and the logs it wrote. The same command after a stop continues it: the stopped (or
running, when the launcher itself died) experiment again with its recorded seed (so that RESUME=auto continues
its checkpoint), then the ones not started. An experiment that wrote more than one log (stopped, then resumed)
counts by its last; the earlier ones are listed in `not_counted` (a summary of the folder must skip them).
A record whose experiments all ended is moved to set_K.json when a new set starts in the same folder.
A launcher that loops over the experiments itself (run_with_docker.sh, run.sub) calls run_and_time.sh once per
experiment with the set's NEXP and SEED and EXPERIMENT_INDEX=i: the call runs experiment i of the recorded set (or
skips it when it ended), the call of index 0 is the one that starts or continues the set (and says so), and the
last one gives the set's verdict; so the same command after a stop runs only what is left there too.

    begin --record R [--shared S] [--dry-run] -- FLAGS...   the plan: NUL-separated "run I SEED" records
    claim --record R --index I RESULTS [--dry-run]          the next free result_N.txt, claimed for experiment I
    record --record R --index I --status X --seconds T      its end ("none": it never started)
    stopped --record R --index I --signal NAME              the stop sentence (what the checkpoint allows)
    verdict --record R RESULTS                              checker + summary + the set's exit status

Exit statuses are resnet.train's (in words: resnet.errors.EXIT_MEANINGS); the target is resnet.recipe's
SUBMISSION_TARGET_ACCURACY.
"""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

from resnet import errors

VERBS = ("begin", "claim", "record", "stopped", "verdict")
FORMAT = 1
# Settings that make two launches the same set (the rest, e.g. RESUME or NUM_WORKERS, may change on a re-run).
RUN_FLAGS = {"--resume", "--checkpoint-every-minutes", "--workers", "--compile", "--dali-hw-decoder-load",
             "--results-dir", "--cache-cleared", "--org", "--status", "--dist-timeout-s"}


def load(path: Path) -> dict | None:
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text())
        record["experiments"][0]["seed"]   # noqa: B018 (the shape is checked here, once)
        return record
    except (OSError, ValueError, KeyError, IndexError, TypeError) as e:
        raise errors.SettingError(f"{path}: not a readable set record ({type(e).__name__}); move it away to start "
                                  "a new set in this LOGDIR") from None


def save(path: Path, record: dict) -> None:
    """Written whole: a reader sees the old record or the new one, never a part."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    try:
        tmp.write_text(json.dumps(record, indent=1) + "\n")
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise errors.SettingError(f"{path}: cannot write the set record ({e.strerror}); check LOGDIR") from None


def identity(flags: list[str]) -> dict:
    pairs = dict(zip(flags[::2], flags[1::2]))
    return {k: v for k, v in pairs.items() if k not in RUN_FLAGS}


def fresh(nexp: int, seed: str, flags: list[str]) -> dict:
    seeds = ([int(seed) + i for i in range(nexp)] if seed else
             [random.SystemRandom().randrange(2**31) for _ in range(nexp)])
    return {"format": FORMAT, "nexp": nexp, "seed": seed or None, "settings": identity(flags),
            "experiments": [{"seed": s, "state": "pending", "exit": None, "logs": []} for s in seeds],
            "not_counted": []}


def unfinished(record: dict | None) -> bool:
    return record is not None and any(e["state"] != "ended" for e in record["experiments"])


def differs(record: dict, nexp: int, seed: str, flags: list[str]) -> str | None:
    """The first thing that makes this launch another set than the recorded one, or None."""
    if record["nexp"] != nexp:
        return f"NEXP is {nexp} here but {record['nexp']} there"
    if seed and record["seed"] != seed:
        return f"SEED is {seed} here but {record['seed']} there"
    now, then = identity(flags), record["settings"]
    for flag in sorted(set(now) | set(then)):
        if now.get(flag) != then.get(flag):
            return f"{flag} is {now.get(flag, 'unset')} here but {then.get(flag, 'unset')} there"
    return None


def archive(path: Path) -> Path:
    """Move an ended set's record aside (set_K.json, the next free K); nothing is overwritten."""
    k = 0
    while True:
        target = path.with_name(f"set_{k}.json")
        try:
            os.link(path, target)
            path.unlink()
            return target
        except FileExistsError:
            k += 1


def say(line: str) -> None:
    print(f"run_and_time.sh: {line}", file=sys.stderr, flush=True)


def continuing(record: dict, path: Path) -> str:
    """One line: what this re-run of a stopped set does."""
    ended = sum(e["state"] == "ended" for e in record["experiments"])
    left = [(i, e) for i, e in enumerate(record["experiments"]) if e["state"] != "ended"]
    first, rest = left[0], left[1:]
    i, e = first
    if e["state"] == "pending":
        what = f"experiment {i + 1} (seed {e['seed']}) starts"
    else:
        what = (f"experiment {i + 1} (seed {e['seed']}), interrupted, goes on from its checkpoint when "
                "CHECKPOINT_DIR holds one of it (RESUME=auto; else it starts over)")
    more = f", then {len(rest)} not started (seeds {', '.join(str(e['seed']) for _, e in rest)})" if rest else ""
    earlier = f"; its earlier log {', '.join(e['logs'])} will not count" if e["logs"] else ""
    return (f"continuing the set recorded in {path}: {ended} of {record['nexp']} experiments ended; "
            f"{what}{more}{earlier}")


def experiment_index() -> int | None:
    """EXPERIMENT_INDEX: the one experiment of the set this call runs (checked by resnet.launch.resolve)."""
    value = os.environ.get("EXPERIMENT_INDEX", "")
    return int(value) if value else None


def node_zeros_set(shared: Path) -> dict:
    """A node > 0 of a set with random seeds: node 0's record of it, once node 0 has written it (the seeds are
    node 0's draw), within RDZV_TIMEOUT_S."""
    deadline = time.monotonic() + int(os.environ.get("RDZV_TIMEOUT_S") or 300)
    while True:
        record = load(shared)
        if unfinished(record):
            return record
        if time.monotonic() > deadline:
            raise errors.SettingError(f"{shared}: node 0 recorded no set within RDZV_TIMEOUT_S; see node 0's "
                                      "console for why (or set SEED, so that every node knows the seeds)")
        time.sleep(0.2)


def earlier_logs(folder: Path) -> None:
    """A new set in a folder that holds logs already: said once, by the call that starts the set."""
    count = len(list(folder.glob("result_*.txt")))
    if count:
        errors.warn(f"{folder} already holds {count} result logs: this set's are numbered after them and the "
                    "summary of that folder counts them all (use a fresh LOGDIR per set)")


def begin(args) -> int:
    """The experiments still to run, recorded; prints `run I SEED` records (NUL-separated). With EXPERIMENT_INDEX
    only that experiment's (none when it ended); the call of index 0 starts or continues the set."""
    path, nexp, seed = Path(args.record), int(os.environ.get("NEXP") or 5), os.environ.get("SEED", "")
    index = experiment_index()
    starts = index in (None, 0)
    record = load(Path(args.shared)) if args.shared else load(path)
    if args.shared and not seed and starts and not unfinished(record):    # node 0 draws this set's seeds
        record = node_zeros_set(Path(args.shared))
    if record is not None and not unfinished(record) and starts:     # a new set (node 0 moves the old record)
        if not args.dry_run and not args.shared:
            say(f"the set recorded in {path} has ended; a new set starts (that record is now "
                f"{archive(path).name}; its logs stay and the summary of this folder counts them too)")
        record = None
    if unfinished(record):
        why = differs(record, nexp, seed, args.flags)
        if why and args.shared:
            record = None           # node 0 starts a new set: this node follows with the same plan
        elif why:
            raise errors.SettingError(f"{path}: records an unfinished set with other settings ({why}); run it "
                                      "with its settings to finish it, or choose a fresh LOGDIR for a new set")
        elif not args.shared and starts:
            say(continuing(record, path))
    if record is None:
        record = fresh(nexp, seed, args.flags)
        if starts and not args.shared:
            earlier_logs(path.parent)
    if not args.dry_run:
        save(path, record)
    from resnet.launch import nul_words

    todo = [(i, e) for i, e in enumerate(record["experiments"]) if index in (None, i)]
    if index is not None and todo and todo[0][1]["state"] == "ended" and not args.shared:
        say(f"experiment {index + 1}/{nexp} (seed {todo[0][1]['seed']}) ended in an earlier launch "
            f"({', '.join(todo[0][1]['logs'])}): skipped")
    nul_words([f"run {i} {e['seed']}" for i, e in todo if e["state"] != "ended"])
    return 0


def claim(args) -> int:
    from resnet.mlperf import claim_result_file

    results = Path(args.results)
    if args.dry_run:
        print(claim_result_file(results, create=False))
        return 0
    try:
        log = claim_result_file(results)
    except OSError as e:
        raise errors.SettingError(f"LOGDIR: cannot create a log in {results} ({e.strerror}); check LOGDIR") from None
    path = Path(args.record)
    record = load(path)
    exp = record["experiments"][args.index]
    record["not_counted"] += [name for name in exp["logs"] if name not in record["not_counted"]]
    exp["logs"].append(log.name)
    exp["state"] = "running"
    save(path, record)
    print(log)
    return 0


def run_stop_status(log: Path) -> str | None:
    """What the log's last run_stop says (success, aborted), or None."""
    found = None
    try:
        for line in log.read_text(errors="replace").splitlines():
            if '"key": "run_stop"' in line:
                found = json.loads(line.split(":::MLLOG ", 1)[1]).get("metadata", {}).get("status")
    except (OSError, ValueError, IndexError):
        return None
    return found


def meaning(status: str) -> str:
    if status.lstrip("-").isdigit() and int(status) < 0:
        return f"killed by signal {status[1:]}"
    return errors.EXIT_MEANINGS.get(int(status) if status.isdigit() else None, "unexpected exit status")


def record_end(args) -> int:
    """After an experiment: its line, its state; a claimed log it never wrote to is removed (no stub left)."""
    path = Path(args.record)
    record = load(path)
    exp = record["experiments"][args.index]
    log = Path(args.log) if args.log else None
    if log is not None and log.is_file() and not log.is_symlink() and log.stat().st_size == 0:
        log.unlink()
        exp["logs"] = [name for name in exp["logs"] if name != log.name]
    if args.status == "none":              # a stop came before it started
        exp["state"] = "stopped" if exp["logs"] else "pending"
        save(path, record)
        return 0
    exp["state"] = "stopped" if args.status == "4" else "ended"
    exp["exit"] = int(args.status) if args.status.lstrip("-").isdigit() else None
    save(path, record)
    print(f"=== experiment {args.index + 1}/{record['nexp']}: seed {exp['seed']} exit {args.status} "
          f"({meaning(args.status)}) after {args.seconds} s", file=sys.stderr)
    return 0


def checkpoint_state(seed: int) -> str:
    """What CHECKPOINT_DIR holds for the experiment of `seed`, and so what the same command again does."""
    folder = os.environ.get("CHECKPOINT_DIR", "")
    if not folder:
        return "no checkpoint (CHECKPOINT_DIR is not set): the same command again starts it over"
    ckpt = Path(folder) / "last.pt"
    if not ckpt.is_file():
        return (f"no checkpoint of it was written in {folder} (stopped before its first one, or every write failed): "
                "the same command again starts it over")
    from resnet import checkpoint

    try:
        progress = checkpoint.progress_of(checkpoint.load(ckpt))
    except errors.Error as e:
        return f"{ckpt} cannot be continued ({str(e)[:160]}): the same command again starts it over"
    if progress.seed != seed or progress.finished:
        return (f"{ckpt} is no checkpoint of it (seed {progress.seed}"
                f"{', ended' if progress.finished else ''}): the same command again starts it over")
    return (f"its checkpoint (epoch {progress.epoch + 1}, step {progress.step}) is in {folder}: run the same command "
            "again to continue it (RESUME=auto, the default; RESUME=1 insists on it; RESUME=0 refuses while it is "
            "unfinished)")


def stopped(args) -> int:
    record = load(Path(args.record))
    started = sum(e["state"] in ("ended", "stopped") for e in record["experiments"])
    said = f"stopped by SIG{args.signal} after {started} of {record['nexp']} experiments"
    exp = record["experiments"][args.index] if args.index is not None else None
    if exp is not None and exp["state"] == "stopped":
        log = Path(args.results) / exp["logs"][-1] if exp["logs"] else None
        if log is not None and run_stop_status(log) == "aborted":
            said += f"; the interrupted run is logged as aborted in {log}"
        elif log is not None:
            said += f"; {log} has no run_stop aborted (the trainer did not finish its stop)"
        said += "; " + checkpoint_state(exp["seed"])
    left = sum(e["state"] == "pending" for e in record["experiments"])
    if left:
        said += f"; {left} not started (the same command runs them)"
    say(said)
    return 0


def add_verbs(sub) -> None:
    for verb in VERBS:
        p = sub.add_parser(verb)
        p.add_argument("--record", required=True)
        if verb in ("claim", "record", "stopped"):
            p.add_argument("--index", type=int, required=verb != "stopped")
        if verb in ("claim", "verdict", "stopped"):
            p.add_argument("results")
    parsers = sub.choices
    parsers["begin"].add_argument("--shared")
    parsers["begin"].add_argument("--dry-run", action="store_true")
    parsers["begin"].add_argument("flags", nargs="*")
    parsers["claim"].add_argument("--dry-run", action="store_true")
    parsers["record"].add_argument("--status", required=True)
    parsers["record"].add_argument("--seconds", default="0")
    parsers["record"].add_argument("--log", default="")
    parsers["stopped"].add_argument("--signal", required=True)


EXIT_NOT_MLPERF = 5   # a set of NEXP >= 5 that passed every check at a TARGET_ACCURACY below MLPerf's


def verdict(args) -> int:
    """The set's exit status: with NEXP >= 5 (a submission set), 0 when at most one of five missed, every log
    passed the checker and the summary is valid, EXIT_NOT_MLPERF when so at a TARGET_ACCURACY below MLPerf's
    (no log of it can count), else 1; with fewer (a smoke run, at any target), 0 when every experiment reached the
    target and every log passed the checker, else 1. The call of one experiment (EXPERIMENT_INDEX) before the
    last: 0 when it reached the target, else 1 (the set's verdict comes with the last)."""
    from resnet.recipe import SUBMISSION_TARGET_ACCURACY as MLPERF

    record = load(Path(args.record))
    exps, nexp = record["experiments"], record["nexp"]
    index = experiment_index()
    if index is not None and index < nexp - 1:
        return 0 if exps[index]["exit"] == 0 else 1
    failed = sum(e["exit"] != 0 for e in exps)
    logs = [str(Path(args.results) / e["logs"][-1]) for e in exps if e["logs"]]
    target = os.environ.get("TARGET_ACCURACY", "")
    other = bool(target) and float(target) != MLPERF
    below = bool(target) and float(target) < MLPERF
    print(f"=== {nexp} experiments, {failed} did not reach the target or failed (MLPerf tolerates one of five)",
          file=sys.stderr, flush=True)
    checked = 0
    if logs:
        checked = subprocess.run([sys.executable, "-m", "compliance.check", *(["--target", target] if target else []),
                                  *logs]).returncode
    summary = 1
    if any(Path(args.results).glob("result_*.txt")):
        # At the runs' own target when it is not MLPerf's (then "not a submission score"), else summarize's default.
        summary = subprocess.run([sys.executable, "-m", "compliance.summarize",
                                  *(["--target", target] if other else []), args.results]).returncode
    if record["not_counted"]:
        say(f"not runs of this set (interrupted, then continued in a later log): {', '.join(record['not_counted'])}")
    if nexp < 5:
        if failed == 0 and checked == 0:
            say(f"smoke run passed: {nexp} of {nexp} reached the target and passed the checker (a submission "
                "needs 5)")
            return 0
        return 1
    ok = failed <= 1 and checked == 0 and summary == 0
    if ok and below:
        say(f"the set completed at TARGET_ACCURACY={target}, below MLPerf's {MLPERF}: not a valid submission "
            f"(no log of it can count; exit {EXIT_NOT_MLPERF})")
        return EXIT_NOT_MLPERF
    return 0 if ok else 1


def run(args) -> int:
    return {"begin": begin, "claim": claim, "record": record_end, "stopped": stopped, "verdict": verdict}[args.cmd](
        args)
