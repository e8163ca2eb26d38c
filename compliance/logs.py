"""One result log: what it says about its run, and whether it counts for a score.

`parse_run` reads a log with mlperf_logging's own parser and applies the rules of `compliance.rules` (one table,
shared by `check`, `summarize` and `package`); `why_not_counted` lists what keeps its run from counting.
"""
import json
import math
import os
from pathlib import Path

from compliance import ComplianceError
from compliance.rules import BENCHMARK, RULES, TARGET_TOP1, RunLog, is_number, meta, value  # noqa: F401 (re-exported)

MINUTE_MS = 60_000
# The launcher's record of the set in a results folder (resnet/launchset.py). A run that was stopped and then
# continued wrote two logs: the earlier (aborted) one is listed in its "not_counted", and is no run of the set.
SET_RECORD = "set.json"
OURS = {rule.name for rule in RULES if rule.ours}  # the integrity rules: a log that breaks one is refused


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


def not_counted(folder) -> list[str]:
    """The names of the logs that `folder`'s set record says are no runs (interrupted, continued in a later log);
    none without a readable record."""
    try:
        names = json.loads((Path(folder) / SET_RECORD).read_text(encoding="utf-8")).get("not_counted", [])
    except (OSError, UnicodeDecodeError, ValueError, AttributeError):
        return []
    return sorted(n for n in names if isinstance(n, str)) if isinstance(names, list) else []


def result_logs(folder) -> tuple[list[Path], list[str]]:
    """(the result_*.txt files in `folder` that are runs, one problem line per result_*.txt there that is a
    dangling link). Logs the folder's set record lists as not counted are left out."""
    skipped = set(not_counted(folder))
    found = sorted(p for p in Path(folder).glob("result_*.txt") if p.name not in skipped)
    dangling = [f"{p.name}: {missing_file(p)}" for p in found if p.is_symlink() and not p.exists()]
    return [p for p in found if p.is_file()], dangling


def completed_epochs_offset(loglines) -> int:
    """What to add to a log's epoch_num to get the number of completed epochs. MosaicML (epoch_start 0,
    epoch_stop 1), NVIDIA and tinycorp (epochs numbered from 1) and our logs since issue 10 put the completed
    count on epoch_stop and eval_accuracy: 0. Our older logs numbered epochs from 0 on epoch_stop too (the first
    epoch both started and stopped as epoch 0): 1."""
    start = next((ll for ll in loglines if ll.key == "epoch_start"), None)
    stop = next((ll for ll in loglines if ll.key == "epoch_stop"), None)
    if start and stop and meta(start).get("epoch_num") == 0 and meta(stop).get("epoch_num") == 0:
        return 1
    return 0


def parse_run(path, ruleset: str, target: float = TARGET_TOP1) -> dict:
    """What one log says about its run, read with mlperf_logging's own parser, and what each rule of
    compliance.rules finds in it (`rules`: {name: problems}; the official verdict is not included: see
    check.judge_logs). Like the official summarizer, the run is timed from the first run_start to the first
    run_stop, whether they are point events or interval start/end; whatever is logged after run_stop, or
    belongs to a second run, is not part of it."""
    from mlperf_logging.compliance_checker.mlp_parser import parse_file

    path = Path(path)
    try:
        loglines, errors = parse_file(str(path), ruleset=ruleset)
    except OSError as e:
        loglines, errors = [], [(str(path), f"cannot read it: {e.strerror or e}")]
    log = RunLog(loglines, target)
    at_success = log.evals[-1] if log.evals and log.status == "success" else None
    offset = completed_epochs_offset(log.lines)

    def completed(ll):
        epoch = meta(ll).get("epoch_num")
        return epoch + offset if isinstance(epoch, int) and not isinstance(epoch, bool) else None

    start = log.start
    rules = {rule.name: rule.check(log) for rule in RULES}
    return {
        "file": path.name,
        "seed": value(next((ll for ll in log.lines if ll.key == "seed"), None)),
        "status": log.status,
        "raw_minutes": (log.stop.timestamp - start.timestamp) / MINUTE_MS if start and log.stop else None,
        "started": start is not None,
        "epoch_at_success": completed(at_success) if at_success else None,
        "accuracy_at_success": value(at_success),
        # (minutes since run_start, completed epochs, top-1) of each evaluation up to run_stop, for the plot
        "evals": [[(ll.timestamp - start.timestamp) / MINUTE_MS if start else None, completed(ll), value(ll)]
                  for ll in log.evals],
        "unparsable_lines": len(errors),
        "target": target,
        "rules": rules,
        # what makes the log unfit to count whatever the run reached: the problems of our integrity rules
        "log_problems": [p for name, found in rules.items() if name in OURS for p in found],
        "problems": [],
    }


def why_not_counted(run: dict) -> list[str]:
    """Why a run's time does not count, official checker aside (empty: it counts): every problem of every rule,
    in the table's order. Only a run that reached the quality target (the one parse_run was given) counts: a log
    that says success at an accuracy at or below it (a mistyped target, an edited log) does not; neither does a
    log that breaks one of our integrity rules."""
    return [p for found in run["rules"].values() for p in found]


def is_honest_miss(run: dict, compliant: bool) -> bool:
    """A run that ended without reaching the target (e.g. aborted) in a log that is otherwise fit: it does not
    count, and one such run of five is tolerated."""
    return compliant and not run["log_problems"] and run["status"] not in (None, "success") and run["started"]
