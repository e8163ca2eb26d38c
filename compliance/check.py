"""`mlperf-resnet check LOG...`: the official MLPerf compliance checker on each result log, and our own rules
next to it, so that one command gives the verdict `package` will give.

The official part runs `python -m mlperf_logging.compliance_checker --usage training --ruleset 4.0.0 LOG` (the
newest ruleset that still has ResNet rules; the tool's own default has none) from a scratch directory, because
the tool writes `compliance_checker.log` into its working directory. Ours is what `summarize` and `package` apply
(compliance/rules.py, one table): the run reached the target (--target, as in summarize), and the log is a ResNet
log with one run, no training before run_start, time that does not go back, and top-1 fractions. One line per log:

    PASS result_0.txt: official 4.0.0: passed; counts for a score: yes
    FAIL result_1.txt: official 4.0.0: passed; counts for a score: no — success at top-1 0.4100 is not above ...

PASS: `package` takes the log; that includes a run that ended without reaching the target in an otherwise fit
log (one of five is tolerated). Exit status 1 when any log FAILs, on either verdict.
"""
import importlib.util
import os
import re
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from compliance import ComplianceError
from compliance.logs import TARGET_TOP1, check_target, is_honest_miss, missing_file, parse_run, why_not_counted

NAME = "check"
HELP = "run the official MLPerf compliance checker on result logs"
DEFAULT_RULESET = "4.0.0"
_RECORD = re.compile(r"^(INFO|WARNING|ERROR) - ")
_SEPARATOR = "-" * 30  # what the checker puts between two messages


def resnet_rulesets() -> list[str]:
    """The training rulesets of the installed mlperf_logging that have ResNet rules (1.0.0 ... 4.0.0 in 4.1.x)."""
    spec = importlib.util.find_spec("mlperf_logging.compliance_checker")
    root = Path(next(iter(spec.submodule_search_locations)))
    versions = [d.name.split("_", 1)[1] for d in root.glob("training_*.*.*")
                if (d / "open_resnet.yaml").exists() or (d / "closed_resnet.yaml").exists()]
    return sorted(versions, key=lambda v: tuple(int(x) for x in v.split(".")))


def run_official_tool(module: str, *args, timeout: float = 600) -> subprocess.CompletedProcess:
    """`python -m mlperf_logging.<module> ARGS` in a scratch directory that is thrown away afterwards (the tools
    drop logs, JSON and CSV files into their working directory). Path arguments are made absolute first."""
    argv = [str(Path(a).resolve()) if isinstance(a, Path) else str(a) for a in args]
    with tempfile.TemporaryDirectory(prefix="mlperf-tool-") as scratch:
        return subprocess.run([sys.executable, "-m", f"mlperf_logging.{module}", *argv], cwd=scratch,
                              capture_output=True, text=True, timeout=timeout)


def _condense(message: str) -> str:
    """One line out of one checker message: its head, plus the failed test where it names one."""
    lines = [" ".join(line.split()) for line in message.strip().splitlines() if line.strip()]
    if not lines:
        return ""
    test = next((line for line in lines[1:] if line.startswith("failed test:")), None)
    if test:
        return f"{lines[0]} {test}"
    if lines[0].endswith(":") and len(lines) > 1:  # "Failed executing CHECK code:" + the code
        return f"{lines[0]} {lines[1]}"
    return lines[0]


def parse_checker_output(text: str) -> list[str]:
    """The checker's messages (failed rules, and warnings such as a repeated EXACTLY_ONE key), one line each."""
    records: list[list[str]] = []
    for line in text.splitlines():
        if _RECORD.match(line):
            records.append([line])
        elif records:
            records[-1].append(line)
    problems = []
    for record in records:
        level, _, first = record[0].partition(" - ")
        if level != "WARNING" or first.strip() == "Found parsing errors:":
            continue
        if first.strip().startswith("^^"):  # the error under an unparsable line
            problems.append("parse error: " + first.strip()[2:].strip())
            continue
        if not first.startswith("  "):  # "WARNING -  <messages>" (the raw line of a parse error has more indent)
            for message in "\n".join([first, *record[1:]]).split(_SEPARATOR):
                if _condense(message):
                    problems.append(_condense(message))
    return problems


def check_log(path, ruleset: str = DEFAULT_RULESET) -> tuple[bool, list[str]]:
    """Run the official compliance checker on one log. Returns (passed, problems); problems may list warnings
    even when the log passes."""
    if ruleset not in resnet_rulesets():
        raise ComplianceError(f"--ruleset {ruleset}: has no ResNet rules in the installed mlperf-logging; "
                              f"use one of {', '.join(resnet_rulesets())}")
    path = Path(path)
    if missing_file(path):
        return False, [f"{path}: {missing_file(path)}"]
    proc = run_official_tool("compliance_checker", "--usage", "training", "--ruleset", ruleset, path)
    output = proc.stdout + proc.stderr
    problems = parse_checker_output(output)
    passed = proc.returncode == 0 and "SUCCESS" in output
    if not passed and not problems:  # a crash: keep its last line (e.g. the exception)
        tail = [line for line in output.splitlines() if line.strip()]
        problems = [tail[-1] if tail else f"checker exited with status {proc.returncode}"]
    return passed, problems


def check_logs(paths, ruleset: str = DEFAULT_RULESET) -> list[tuple[bool, list[str]]]:
    """check_log on each path, a few at a time (each is its own process); results in the order given."""
    paths = list(paths)
    with ThreadPoolExecutor(max_workers=max(1, min(len(paths), os.cpu_count() or 1))) as pool:
        return list(pool.map(lambda p: check_log(p, ruleset), paths))


def judge_logs(paths, ruleset: str = DEFAULT_RULESET, target: float = TARGET_TOP1) -> list[dict]:
    """parse_run of each log with both verdicts: `compliant` and the checker's messages, `problems` (why the run
    does not count: ours, then the checker's failure), `minutes` (None unless it counts) and `refused` (a log
    `package` refuses: anything but an honest miss)."""
    runs = []
    for path, (compliant, messages) in zip(paths, check_logs(paths, ruleset)):
        run = parse_run(path, ruleset, target)
        run["compliant"], run["checker_messages"] = compliant, messages
        run["ours"] = why_not_counted(run)
        run["problems"] = list(run["ours"])
        if not compliant:
            run["problems"].append(f"fails compliance {ruleset}: " + "; ".join(messages))
        run["warnings"] = messages if compliant else []
        run["minutes"] = None if run["problems"] else run["raw_minutes"]
        run["refused"] = bool(run["problems"]) and not is_honest_miss(run, compliant)
        runs.append(run)
    return runs


def expand_logs(args) -> list[Path]:
    """Files as given; a folder stands for its result_*.txt files, dangling links included (to be named)."""
    paths = []
    for arg in map(Path, args):
        found = sorted(p for p in arg.glob("result_*.txt") if p.is_file() or (p.is_symlink() and not p.exists()))
        paths.extend(found if arg.is_dir() else [arg])
    return paths


def verdict_line(path, run: dict, ruleset: str, target: float) -> str:
    """One log's line: PASS or FAIL, the official verdict (its messages visible), ours."""
    official = "passed" if run["compliant"] else "failed"
    if run["checker_messages"]:
        official += f": {'; '.join(run['checker_messages'])}" if not run["compliant"] else \
            f" (warnings: {'; '.join(run['checker_messages'])})"
    ours = list(run["ours"])
    if not run["compliant"]:
        ours.append("the official checker fails it")
    if not ours:
        counts = "yes" if target == TARGET_TOP1 else \
            f"yes, at target {target:g} (not the ResNet quality target {TARGET_TOP1}: not a submission score)"
    else:
        counts = "no \N{EM DASH} " + "; ".join(ours)
        if not run["refused"]:
            counts += " (one such run of five is tolerated)"
    return f"{'FAIL' if run['refused'] else 'PASS'} {path}: official {ruleset}: {official}; counts for a score: {counts}"


def add_scoring_arguments(parser, checks: str = "the compliance check") -> None:
    """--ruleset and --target, as check, summarize and package take them; `scoring_arguments` reads them."""
    parser.add_argument("--ruleset", default=DEFAULT_RULESET, choices=resnet_rulesets(),
                        help=f"MLPerf Training ruleset for {checks} (default %(default)s; 2.0.0 is "
                             "MosaicML's round)")
    parser.add_argument("--target", type=float, default=TARGET_TOP1,
                        help="a run counts only when its top-1 at success is above this (default %(default)s, "
                             "the ResNet quality target; another value is not a submission score)")


def scoring_arguments(args) -> tuple[str, float]:
    """(ruleset, target) of the parsed arguments; a target that is no top-1 fraction is a ComplianceError."""
    return args.ruleset, check_target(args.target)


def add_arguments(parser) -> None:
    parser.add_argument("logs", nargs="+", metavar="LOG", help="result_N.txt files, or folders holding them")
    add_scoring_arguments(parser)


def run(args) -> int:
    ruleset, target = scoring_arguments(args)
    paths = expand_logs(args.logs)
    if not paths:
        raise ComplianceError(f"{' '.join(args.logs)}: no result_*.txt in these folders; "
                              "pass log files or folders that hold result_*.txt")
    readable = [p for p in paths if not missing_file(p)]  # a dangling link is named, never followed
    judged = dict(zip(readable, judge_logs(readable, ruleset, target)))
    for path in paths:
        print(verdict_line(path, judged[path], ruleset, target) if path in judged else
              f"FAIL {path}: {missing_file(path)}")
    return 1 if len(judged) < len(paths) or any(r["refused"] for r in judged.values()) else 0


if __name__ == "__main__":
    import compliance

    sys.exit(compliance.main(sys.modules[__name__]))
