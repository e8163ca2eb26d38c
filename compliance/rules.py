"""The rules a result log must follow for its run to count, as one table (`RULES`) that `check`, `summarize` and
`package` all apply, through `logs.parse_run`.

Each rule is a small function of a `RunLog` (one log's lines, split into its run) that returns its problems, one
line each, empty when the log follows it. One rule is MLPerf's own scoring rule (`reached_target`); the others
are ours (`Rule.ours`): integrity rules beyond the official compliance checker, which never refuse what that
checker passes except where the score itself would be wrong (time going back, two runs in one log, training
before run_start, a log of another benchmark, an accuracy that is no fraction). Every published ResNet result
we have passes all of them (tests/data/peer_logs). README's "Compliance, packaging, scores" has them as a table.
Line numbers in the messages count from 1, as an editor shows them (the official checker counts from 0).
"""
import math
from dataclasses import dataclass
from typing import Callable

BENCHMARK = "resnet"
TARGET_TOP1 = 0.759  # the ResNet quality target: top-1 strictly above 75.90%
SUBMISSION_KEYS = ("submission_benchmark", "submission_org", "submission_division", "submission_platform",
                   "submission_status")
RUN_EVENTS = ("block_start", "epoch_start", "epoch_stop", "eval_start", "eval_stop", "eval_accuracy", "block_stop")
# The order the timer needs, as phases: a key never follows one of a later phase. The events of the run may
# interleave (MosaicML logs epoch_start before block_start). Every other key (cache_clear, the seed, the
# submission_* keys, hyper-parameters) is free, as it is to the official checker: tinycorp's published v4.0 logs
# put the seed and global_batch_size after run_start, NVIDIA's put train_samples there.
PHASES = (("init_start",), ("init_stop",), ("run_start",), RUN_EVENTS, ("run_stop",))
PHASE = {key: i for i, keys in enumerate(PHASES) for key in keys}
TIMING = ("init_stop", "run_start", "run_stop")
ONCE = (*TIMING, "seed", *SUBMISSION_KEYS)  # a log holds one run: these once (the last ones with one value)
# Ranks' clocks differ by milliseconds (NVIDIA's logs have init_start lines 1 ms apart, out of order); more
# than this backwards is an edit, and can shorten the run by at most this much.
CLOCK_SKEW_MS = 1000


def meta(ll) -> dict:
    """A log line's metadata (an edited log may carry something other than an object there)."""
    found = ll.value.get("metadata") if isinstance(ll.value, dict) else None
    return found if isinstance(found, dict) else {}


def value(ll):
    return ll.value.get("value") if ll and isinstance(ll.value, dict) else None


def is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def at(ll) -> str:
    return f"{ll.key} (line {ll.lineno + 1})"


def first(loglines, key):
    return next((ll for ll in loglines if ll.key == key), None)


def second_run_at(loglines) -> int | None:
    """Index of the first line of a second run: a cache_clear or init_start after run_start, or an init_stop
    or run_start after run_stop (a relaunch appending to the same file). None: one run."""
    started = stopped = False
    for i, ll in enumerate(loglines):
        if (started and ll.key in ("cache_clear", "init_start")) or \
                (stopped and ll.key in ("init_stop", "run_start")):
            return i
        started, stopped = started or ll.key == "run_start", stopped or ll.key == "run_stop"
    return None


@dataclass
class RunLog:
    """One log's lines (`all`), those of its first run (`lines`: up to a second run's first line) and those
    of the run proper (`run_lines`: up to run_stop; what is logged after run_stop is not part of the run)."""
    all: list
    target: float = TARGET_TOP1

    def __post_init__(self):
        cut = second_run_at(self.all)
        self.second_run = self.all[cut] if cut is not None else None
        self.lines = self.all[:cut] if cut is not None else self.all
        self.start, self.stop = first(self.lines, "run_start"), first(self.lines, "run_stop")
        self.run_lines = self.lines[:self.lines.index(self.stop)] if self.stop else self.lines
        self.status = meta(self.stop).get("status") if self.stop else None
        self.evals = [ll for ll in self.run_lines if ll.key == "eval_accuracy"]


@dataclass(frozen=True)
class Rule:
    name: str
    description: str  # one line: what a log must do
    ours: bool  # True: an integrity rule of ours, beyond the official checker; False: MLPerf's scoring rule
    check: Callable[[RunLog], list[str]]  # the problems, one line each; [] when the log follows the rule


def reached_target(log: RunLog) -> list[str]:
    problems = [] if log.start else ["no run_start"]
    if log.status is None:
        return problems + ["no run_stop"]
    if log.status != "success":
        return problems + [f"run_stop status {log.status}"]
    accuracy = value(log.evals[-1]) if log.evals else None
    if not log.evals:
        problems.append("success without an eval_accuracy before run_stop")
    elif not is_number(accuracy):
        problems.append(f"success at top-1 {accuracy!r}, which is not a number")
    elif not accuracy > log.target:
        problems.append(f"success at top-1 {accuracy:.4f} is not above the target {log.target:g}")
    return problems


def run_order(log: RunLog) -> list[str]:
    """The first line that comes before a line of an earlier phase. Run events after run_stop are no break:
    they are not part of the run."""
    latest = None
    for ll in log.lines:
        phase = PHASE.get(ll.key)
        if phase is None:
            continue
        if latest is not None and PHASE[latest.key] > phase:
            if latest.key == "run_stop" and ll.key in RUN_EVENTS:
                continue
            return [f"out of order: {at(ll)} after {at(latest)}"]
        if latest is None or phase > PHASE[latest.key]:
            latest = ll
    return []


def one_run(log: RunLog) -> list[str]:
    """The seed and submission_* keys may repeat with one value (Dell's published multi-node logs state the
    submission_* keys once per node; the official checker warns only); the timing keys may not repeat at all."""
    if log.second_run is not None:
        before = max((ll for ll in log.lines if ll.key in ("run_start", "run_stop")), key=lambda ll: ll.lineno)
        return [f"lines of two runs: {at(log.second_run)} after {at(before)}; a result log holds one run"]
    repeated = {}
    for key in ONCE:
        found = [ll for ll in log.lines if ll.key == key]
        if len(found) > 1 and (key in TIMING or len({repr(value(ll)) for ll in found}) > 1):
            repeated[key] = [ll.lineno + 1 for ll in found]
    if not repeated:
        return []
    return ["more than one " + ", ".join(f"{key} (lines {', '.join(map(str, lines))})"
                                         for key, lines in repeated.items())]


def epochs_never_go_back(log: RunLog) -> list[str]:
    """Repeats are allowed: Intel's published v3.1 logs put first_epoch_num 1 on every block_stop."""
    last = {}  # key: (number, line) of its latest event
    for ll in log.run_lines:
        number = meta(ll).get("epoch_num", meta(ll).get("first_epoch_num"))
        if ll.key not in RUN_EVENTS or not is_number(number):
            continue
        if ll.key in last and number < last[ll.key][0]:
            return [f"epochs out of order: {at(ll)} says epoch {number} after {at(last[ll.key][1])}"]
        last[ll.key] = (number, ll)
    return []


def time_goes_forward(log: RunLog) -> list[str]:
    """Before init_stop time is free: that part is untimed, and our earlier trainer logged init_start with the
    process's start time after a cache_clear timed later. A resumed run's run_start (metadata
    resumed_from_epoch) may keep the first attempt's earlier start (the lost time counts), but nothing after it
    may be timed before it."""
    latest = None
    timed = False
    for ll in log.lines:
        timed = timed or ll.key == "init_stop"
        resumed = ll.key == "run_start" and "resumed_from_epoch" in meta(ll)
        if timed and not resumed and latest is not None and ll.timestamp < latest.timestamp - CLOCK_SKEW_MS:
            start = log.start
            before = start if ll.key == "run_stop" and start and ll.timestamp < start.timestamp else latest
            return [f"time goes back: {at(ll)} is timed {(before.timestamp - ll.timestamp) / 1000:.1f} s before "
                    f"{at(before)}"]
        if latest is None or ll.timestamp > latest.timestamp:
            latest = ll
    return []


def top1_fraction(log: RunLog) -> list[str]:
    for ll in log.evals:
        accuracy = value(ll)
        if is_number(accuracy) and not 0 <= accuracy <= 1:
            return [f"eval_accuracy {accuracy:g} in line {ll.lineno + 1} is not a top-1 fraction in [0, 1]"]
    return []


def resnet_log(log: RunLog) -> list[str]:
    named = [value(ll) for ll in log.lines if ll.key == "submission_benchmark"]
    if named and named[0] != BENCHMARK:
        return [f"submission_benchmark {named[0]!r}, not {BENCHMARK!r}: not a ResNet log"]
    return []


RULES = (
    Rule("reached_target", "run_start, then run_stop with status success, and the last eval_accuracy before it "
         "strictly above the target (ResNet: 0.759)", False, reached_target),
    Rule("run_order", "init_start, init_stop, run_start, the run's epochs/blocks/evaluations, run_stop in this "
         "order: no training before the timer starts", True, run_order),
    Rule("one_run", "one init_stop, run_start and run_stop, one value of the seed and of each submission_* key, "
         "and no line of a second run (cache_clear or init_start after run_start)", True, one_run),
    Rule("epochs_never_go_back", "each kind of epoch, block and evaluation event never goes back in epoch "
         "number", True, epochs_never_go_back),
    Rule("time_goes_forward", "from init_stop on, no line timed more than 1 s before an earlier one; a resumed "
         "run_start may keep the first attempt's start, but nothing after it is timed before it", True,
         time_goes_forward),
    Rule("top1_fraction", "every eval_accuracy of the run is a top-1 fraction in [0, 1]", True, top1_fraction),
    Rule("resnet_log", "submission_benchmark is resnet", True, resnet_log),
)


def apply_rules(loglines, target: float = TARGET_TOP1) -> dict[str, list[str]]:
    """{rule name: its problems} for every rule of RULES, in the table's order."""
    log = RunLog(list(loglines), target)
    return {rule.name: rule.check(log) for rule in RULES}
