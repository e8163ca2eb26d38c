"""One result log: what it says about its run, and the rules it must follow to count for a score.

The official checker passes logs that would still give a wrong score: a repeated `run_start` is only a warning
to it (the first one in the file times the run), it reads no timestamps, and the open ResNet rules accept any
benchmark name and an accuracy above 1 after the first evaluation. `log_problems` closes those holes with one
rule set, which `check`, `summarize` and `package` all apply through `parse_run`.
Line numbers in our messages count from 1, as an editor shows them (the official checker counts from 0).
"""
import math
import os
from pathlib import Path

from compliance import ComplianceError

BENCHMARK = "resnet"
TARGET_TOP1 = 0.759  # the ResNet quality target: top-1 strictly above 75.90%
MINUTE_MS = 60_000
SUBMISSION_KEYS = ("submission_benchmark", "submission_org", "submission_division", "submission_platform",
                   "submission_status")
RUN_EVENTS = ("block_start", "epoch_start", "epoch_stop", "eval_start", "eval_stop", "eval_accuracy", "block_stop")
# MLPerf's order of a training log, as phases: a key never follows one of a later phase. The events of the run
# may interleave (MosaicML logs epoch_start before block_start). Other hyper-parameters are free: NVIDIA's
# published logs put some after init_stop and train_samples after run_start.
PHASES = (("cache_clear",), ("init_start",), ("init_stop",), ("run_start",), RUN_EVENTS, ("run_stop",))
PHASE = {key: i for i, keys in enumerate(PHASES) for key in keys}
RUN_START_PHASE = PHASE["run_start"]
# Anywhere before init_stop: NVIDIA logs the submission keys before cache_clear, MosaicML after init_start.
BEFORE_INIT_STOP = (*SUBMISSION_KEYS, "seed")
ONCE = ("init_stop", "run_start", "run_stop", *BEFORE_INIT_STOP)  # a log holds one run
# Ranks' clocks differ by milliseconds (NVIDIA's logs have init_start lines 1 ms apart, out of order); more
# than this backwards is an edit, and can shorten the run by at most this much.
CLOCK_SKEW_MS = 1000


def check_target(target: float, flag: str = "--target") -> float:
    """A top-1 target in (0, 1]; 1.0 is allowed (the trainer accepts it) though no run can be above it."""
    if not (math.isfinite(target) and 0 < target <= 1):
        raise ComplianceError(f"{flag} {target}: not a top-1 fraction in (0, 1]; ResNet's quality target is "
                              f"{TARGET_TOP1}")
    return target


def missing_file(path) -> str | None:
    """Why `path` cannot be read as a log (None: it is a file). A dangling symlink is named, never followed."""
    path = Path(path)
    if path.is_symlink() and not path.exists():
        return f"a symlink to {os.readlink(path)}, which does not exist; restore the log or remove the link"
    if not path.is_file():
        return "not a file" if path.exists() else "no such file"
    return None


def result_logs(folder) -> tuple[list[Path], list[str]]:
    """(the result_*.txt files in `folder`, one problem line per result_*.txt there that is a dangling link)."""
    found = sorted(Path(folder).glob("result_*.txt"))
    dangling = [f"{p.name}: {missing_file(p)}" for p in found if p.is_symlink() and not p.exists()]
    return [p for p in found if p.is_file()], dangling


def _meta(ll) -> dict:
    """A log line's metadata (an edited log may carry something other than an object there)."""
    meta = ll.value.get("metadata") if isinstance(ll.value, dict) else None
    return meta if isinstance(meta, dict) else {}


def _value(ll):
    return ll.value.get("value") if ll and isinstance(ll.value, dict) else None


def is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _at(ll) -> str:
    return f"{ll.key} (line {ll.lineno + 1})"


def _order_problem(loglines) -> tuple[str | None, int | None]:
    """(the first break of MLPerf's order, None when there is none; the index of run_stop in loglines).
    Events of the run logged after run_stop are no break: they are not part of the run."""
    latest, stop_at = None, None
    for i, ll in enumerate(loglines):
        phase = PHASE.get(ll.key)
        if ll.key in BEFORE_INIT_STOP:
            phase = PHASE["init_start"]
        elif phase is None:
            continue
        if latest is not None and PHASE[latest.key] > phase:
            if latest.key == "run_stop" and ll.key in RUN_EVENTS:
                continue
            second_init = ll.key in ("cache_clear", "init_start") and PHASE[latest.key] >= RUN_START_PHASE
            if second_init or latest.key == "run_stop":
                return f"lines of two runs: {_at(ll)} after {_at(latest)}", stop_at
            return f"out of order: {_at(ll)} after {_at(latest)}", stop_at
        if ll.key in PHASE and (latest is None or phase > PHASE[latest.key]):
            latest = ll
            stop_at = i if ll.key == "run_stop" else stop_at
    return None, stop_at


def _epoch_problem(run_lines) -> str | None:
    """The first evaluation, epoch or block whose number does not follow the one before it of its key."""
    last = {}  # key: (number, line) of its latest event
    for ll in run_lines:
        meta = _meta(ll)
        number = meta.get("epoch_num", meta.get("first_epoch_num"))
        if ll.key not in RUN_EVENTS or not is_number(number):
            continue
        if ll.key in last and number <= last[ll.key][0]:
            return f"epochs out of order: {_at(ll)} says epoch {number} after {_at(last[ll.key][1])}"
        last[ll.key] = (number, ll)
    return None


def _time_problem(loglines) -> str | None:
    """The first event from init_stop on logged more than CLOCK_SKEW_MS before an earlier line's time (a run_stop
    before its run_start is named as such). Before init_stop time is free: that part is untimed, and our earlier
    trainer logged init_start with the process's start time after a cache_clear timed later. A resumed
    run's run_start (metadata resumed_from_epoch) keeps the first attempt's start on purpose: the lost time
    counts."""
    latest = start = None
    timed = False
    for ll in loglines:
        timed = timed or ll.key == "init_stop"
        if ll.key == "run_start":
            start = start or ll
            if "resumed_from_epoch" in _meta(ll):
                continue
        if timed and latest is not None and ll.timestamp < latest.timestamp - CLOCK_SKEW_MS:
            before = start if ll.key == "run_stop" and start and ll.timestamp < start.timestamp else latest
            return f"time goes back: {_at(ll)} is timed {(before.timestamp - ll.timestamp) / 1000:.1f} s before " \
                   f"{_at(before)}"
        if latest is None or ll.timestamp > latest.timestamp:
            latest = ll
    return None


def log_problems(loglines, benchmark: str = BENCHMARK) -> list[str]:
    """What makes a log unfit to count, beyond the official checker: one line per problem (empty: none).
    Lines of two runs are one problem (the rest would follow from it)."""
    order, stop_at = _order_problem(loglines)
    if order and order.startswith("lines of two runs"):
        return [f"{order}; a result log holds one run"]
    problems = [order] if order else []
    repeated = {key: [ll.lineno + 1 for ll in loglines if ll.key == key] for key in ONCE}
    repeated = {key: lines for key, lines in repeated.items() if len(lines) > 1}
    if repeated:
        problems.append("more than one " + ", ".join(f"{key} (lines {', '.join(map(str, lines))})"
                                                     for key, lines in repeated.items()))
    run_lines = loglines[:stop_at] if stop_at is not None else loglines
    problems += [p for p in (_epoch_problem(run_lines), _time_problem(loglines)) if p]
    for ll in run_lines:
        accuracy = _value(ll)
        if ll.key == "eval_accuracy" and is_number(accuracy) and not 0 <= accuracy <= 1:
            problems.append(f"eval_accuracy {accuracy:g} in line {ll.lineno + 1} is not a top-1 fraction in [0, 1]")
            break
    named = [_value(ll) for ll in loglines if ll.key == "submission_benchmark"]
    if named and named[0] != benchmark:
        problems.append(f"submission_benchmark {named[0]!r}, not {benchmark!r}: not a ResNet log")
    return problems


def _first(loglines, key):
    return next((ll for ll in loglines if ll.key == key), None)


def completed_epochs_offset(loglines) -> int:
    """What to add to a log's epoch_num to get the number of completed epochs. MosaicML (epoch_start 0,
    epoch_stop 1), NVIDIA (epochs numbered from 1) and our logs since issue 10 put the completed count on
    epoch_stop and eval_accuracy: 0. Our older logs numbered epochs from 0 on epoch_stop too (the first epoch
    both started and stopped as epoch 0): 1."""
    start, stop = _first(loglines, "epoch_start"), _first(loglines, "epoch_stop")
    if start and stop and _meta(start).get("epoch_num") == 0 and _meta(stop).get("epoch_num") == 0:
        return 1
    return 0


def parse_run(path, ruleset: str) -> dict:
    """What one log says about its run, read with mlperf_logging's own parser (the official verdict and the
    target not included: see why_not_counted). Like the official summarizer, the run is timed from the first
    run_start to the first run_stop, whether they are point events or interval start/end, and whatever is
    logged after run_stop is not part of it. `log_problems` lists what makes the log unfit to count."""
    from mlperf_logging.compliance_checker.mlp_parser import parse_file

    path = Path(path)
    try:
        loglines, errors = parse_file(str(path), ruleset=ruleset)
    except OSError as e:
        loglines, errors = [], [(str(path), f"cannot read it: {e.strerror or e}")]
    start, stop = _first(loglines, "run_start"), _first(loglines, "run_stop")
    status = _meta(stop).get("status") if stop else None
    evals = [ll for ll in loglines if ll.key == "eval_accuracy" and (stop is None or ll.lineno < stop.lineno)]
    at_success = evals[-1] if evals and status == "success" else None
    offset = completed_epochs_offset(loglines)

    def completed(ll):
        epoch = _meta(ll).get("epoch_num")
        return epoch + offset if isinstance(epoch, int) and not isinstance(epoch, bool) else None

    return {
        "file": path.name,
        "seed": _value(_first(loglines, "seed")),
        "status": status,
        "raw_minutes": (stop.timestamp - start.timestamp) / MINUTE_MS if start and stop else None,
        "started": start is not None,
        "epoch_at_success": completed(at_success) if at_success else None,
        "accuracy_at_success": _value(at_success),
        # (minutes since run_start, completed epochs, top-1) of each evaluation up to run_stop, for the plot
        "evals": [[(ll.timestamp - start.timestamp) / MINUTE_MS if start else None, completed(ll), _value(ll)]
                  for ll in evals],
        "unparsable_lines": len(errors),
        "log_problems": log_problems(loglines),
        "problems": [],
    }


def why_not_counted(run: dict, target: float = TARGET_TOP1) -> list[str]:
    """Why a run's time does not count, official checker aside (empty: it counts). Only a run that reached the
    quality target counts: a log that says success at an accuracy at or below the target (a mistyped target, an
    edited log) does not; neither does a log that breaks `log_problems`."""
    problems = []
    if not run["started"]:
        problems.append("no run_start")
    if run["status"] is None:
        problems.append("no run_stop")
    elif run["status"] != "success":
        problems.append(f"run_stop status {run['status']}")
    else:
        accuracy = run["accuracy_at_success"]
        if accuracy is None:
            problems.append("success without an eval_accuracy before run_stop")
        elif not is_number(accuracy):
            problems.append(f"success at top-1 {accuracy!r}, which is not a number")
        elif not accuracy > target:
            problems.append(f"success at top-1 {accuracy:.4f} is not above the target {target:g}")
    return problems + run["log_problems"]


def is_honest_miss(run: dict, compliant: bool) -> bool:
    """A run that ended without reaching the target (e.g. aborted) in a log that is otherwise fit: it does not
    count, and one such run of five is tolerated."""
    return compliant and not run["log_problems"] and run["status"] not in (None, "success") and run["started"]
