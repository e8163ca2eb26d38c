"""`mlperf-resnet summarize PATH...`: time to train per run and the MLPerf score of each set of result logs.

PATH is a folder of result_*.txt or a submission tree (every folder under it that holds result_*.txt is a set,
e.g. ORG/results/<system>/resnet/). Per run: minutes from run_start to the first run_stop, counted only when the
run succeeded (run_stop status success, and the log passes the official compliance checker); the epoch and
top-1 at success; the seed. Per set: the score, the olympic mean (drop the fastest and the slowest of the 5
runs, average the other 3; a run without success counts as infinitely slow: one is tolerated, two make the set
invalid). The score is the raw one of the rules; where the review left a scaling.json (closed division RCP
scaling) the scaled score is reported beside it. Exit status 0 when every set is valid, 1 otherwise.
"""
import argparse
import json
import math
import os
import sys
from pathlib import Path

from compliance.check import DEFAULT_RULESET, check_logs, resnet_rulesets

RUNS_PER_SET = 5
TARGET_TOP1 = 0.759  # the ResNet quality target: top-1 > 75.90%
MINUTE_MS = 60_000


def _first(loglines, key):
    return next((ll for ll in loglines if ll.key == key), None)


def parse_run(path, ruleset: str = DEFAULT_RULESET) -> dict:
    """What one log says about its run, read with mlperf_logging's own parser (compliance not included).
    Like the official summarizer, the run is timed from the first run_start to the first run_stop, whether
    they are point events or interval start/end, and whatever is logged after run_stop is not part of it."""
    from mlperf_logging.compliance_checker.mlp_parser import parse_file

    path = Path(path)
    loglines, errors = parse_file(str(path), ruleset=ruleset)
    start, stop = _first(loglines, "run_start"), _first(loglines, "run_stop")
    seed = _first(loglines, "seed")
    status = stop.value["metadata"].get("status") if stop else None
    evals = [ll for ll in loglines if ll.key == "eval_accuracy" and (stop is None or ll.lineno < stop.lineno)]
    at_success = evals[-1] if evals and status == "success" else None
    problems = []
    if start is None:
        problems.append("no run_start")
    if stop is None:
        problems.append("no run_stop")
    elif status != "success":
        problems.append(f"run_stop status {status}")
    if errors:
        problems.append(f"{len(errors)} unparsable log lines")
    return {
        "file": path.name,
        "seed": seed.value["value"] if seed else None,
        "status": status,
        "raw_minutes": (stop.timestamp - start.timestamp) / MINUTE_MS if start and stop else None,
        "epoch_at_success": at_success.value["metadata"].get("epoch_num") if at_success else None,
        "accuracy_at_success": at_success.value["value"] if at_success else None,
        # (minutes since run_start, epoch, top-1) of each evaluation up to run_stop, for the plot
        "evals": [[(ll.timestamp - start.timestamp) / MINUTE_MS if start else None,
                   ll.value["metadata"].get("epoch_num"), ll.value["value"]] for ll in evals],
        "problems": problems,
    }


def olympic_score(runs_minutes) -> tuple[float | None, str | None]:
    """(score, None) or (None, why the set has no score). None in runs_minutes is a run without success."""
    runs = list(runs_minutes)
    failed = sum(m is None for m in runs)
    if len(runs) < RUNS_PER_SET:
        return None, f"fewer than {RUNS_PER_SET} runs (found {len(runs)})"
    if len(runs) > RUNS_PER_SET:
        return None, f"more than {RUNS_PER_SET} runs (found {len(runs)}); ResNet takes exactly {RUNS_PER_SET}"
    if failed >= 2:
        return None, f"{failed} of {len(runs)} runs did not converge (one is tolerated)"
    middle = sorted(math.inf if m is None else m for m in runs)[1:-1]
    return sum(middle) / len(middle), None


def find_result_dirs(path) -> list[Path]:
    """`path` itself when it holds result_*.txt, else every folder below it that does (hidden ones skipped)."""
    path = Path(path)
    if any(path.glob("result_*.txt")):
        return [path]
    found = []
    for root, dirs, files in os.walk(path):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        if any(f.startswith("result_") and f.endswith(".txt") for f in files):
            found.append(Path(root))
    return found


def _summarize(folder: Path, runs: list[dict], ruleset: str, usd_per_hour: float | None) -> dict:
    runs_minutes = [r["minutes"] for r in runs]
    score, reason = olympic_score(runs_minutes)
    in_tree = folder.parent.parent.name == "results"
    summary = {
        "path": str(folder),
        "system": folder.parent.name if in_tree else None,
        "benchmark": folder.name if in_tree else None,
        "ruleset": ruleset,
        "runs_minutes": runs_minutes,
        "score_minutes": score,
        "valid": score is not None,
        "reason": reason,
        "epochs_at_success": [r["epoch_at_success"] for r in runs],
        "accuracy_at_success": [r["accuracy_at_success"] for r in runs],
        "seeds": [r["seed"] for r in runs],
        "runs": runs,
    }
    seeds = [s for s in summary["seeds"] if s is not None]
    if len(set(seeds)) < len(seeds):
        summary["notes"] = ["runs share a seed; MLPerf wants a different seed per run"]
    scaling = folder / "scaling.json"
    if scaling.is_file():
        summary["scaling_factor"] = json.loads(scaling.read_text())["scaling_factor"]
        summary["scaled_score_minutes"] = None if score is None else score * summary["scaling_factor"]
    if usd_per_hour is not None:
        summary["usd_per_hour"] = usd_per_hour
        summary["runs_cost_usd"] = [None if m is None else m / 60 * usd_per_hour for m in runs_minutes]
        summary["cost_usd"] = None if score is None else score / 60 * usd_per_hour
    return summary


def summarize_dirs(folders, ruleset: str = DEFAULT_RULESET, usd_per_hour: float | None = None) -> list[dict]:
    """One summary per folder of result_*.txt (the compliance checks of all their logs run together)."""
    folders = [Path(f) for f in folders]
    logs = {f: sorted(f.glob("result_*.txt")) for f in folders}
    verdicts = iter(check_logs([p for f in folders for p in logs[f]], ruleset))
    summaries = []
    for folder in folders:
        runs = []
        for log in logs[folder]:
            run = parse_run(log, ruleset)
            run["compliant"], compliance_problems = next(verdicts)
            if not run["compliant"]:
                run["problems"].append(f"fails compliance {ruleset}: " + "; ".join(compliance_problems))
            run["minutes"] = run["raw_minutes"] if run["compliant"] and run["status"] == "success" else None
            runs.append(run)
        summaries.append(_summarize(folder, runs, ruleset, usd_per_hour))
    return summaries


def summarize_dir(path, ruleset: str = DEFAULT_RULESET, usd_per_hour: float | None = None) -> dict:
    """The summary of one folder of result_*.txt (e.g. $LOGDIR/$DGXSYSTEM/resnet), or of the one such folder
    below `path` (e.g. $LOGDIR). A folder without logs gives an invalid summary with no runs."""
    found = find_result_dirs(path)
    if len(found) > 1:
        raise ValueError(f"{path} holds {len(found)} sets of result logs; use summarize_dirs(find_result_dirs(path))")
    return summarize_dirs(found or [path], ruleset, usd_per_hour)[0]


def _label(summary: dict) -> str:
    path = Path(summary["path"])
    return summary["system"] or (path.parent.name if path.name == "resnet" else path.name)


def _fmt(value, spec: str, none: str = "-") -> str:
    return none if value is None else format(value, spec)


def format_table(summaries: list[dict]) -> str:
    """The human output: a header line per set, then one row per run."""
    cost = any("usd_per_hour" in s for s in summaries)
    out = []
    for s in summaries:
        verdict = "valid" if s["valid"] else f"INVALID: {s['reason']}"
        score = f"score {_fmt(s['score_minutes'], '.3f')} min"
        if "scaled_score_minutes" in s:
            score += f" (x{s['scaling_factor']:.4f} scaling.json = {_fmt(s['scaled_score_minutes'], '.3f')})"
        if cost:
            score += f", ${_fmt(s['cost_usd'], '.2f')} at ${s['usd_per_hour']:g}/h"
        out.append(f"{s['path']}: {score}, {verdict}")
        out.append(f"  {'run':<12} {'seed':>10} {'status':<8} {'minutes':>8} {'epoch':>5} {'top-1':>7}"
                   + (f" {'usd':>8}" if cost else ""))
        for i, run in enumerate(s["runs"]):
            row = (f"  {run['file']:<12} {_fmt(run['seed'], '>10', ' ' * 9 + '-')} {str(run['status']):<8} "
                   f"{_fmt(run['minutes'], '8.3f', '       x')} {_fmt(run['epoch_at_success'], '>5', '    -')} "
                   f"{_fmt(run['accuracy_at_success'], '7.4f', '      -')}")
            if cost:
                row += f" {_fmt(s['runs_cost_usd'][i], '8.2f', '       -')}"
            if run["minutes"] is None:
                row += f"  no success: {'; '.join(run['problems'])}"
            out.append(row)
        for note in s.get("notes", []):
            out.append(f"  note: {note}")
    return "\n".join(out)


def plot(summaries: list[dict], out, target: float = TARGET_TOP1) -> Path:
    """accuracy against minutes for every run (dotted: no success) with the target line, and the time to train of
    every run (hatched at the set's slowest success: did not converge) with each set's score."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    fig, (acc_ax, ttt_ax) = plt.subplots(1, 2, figsize=(13, 5))
    bars = []  # (label, minutes or None, the set's slowest success, color)
    for i, s in enumerate(summaries):
        color, label = colors[i % len(colors)], _label(s)
        slowest = max([m for m in s["runs_minutes"] if m is not None], default=1.0)
        for j, run in enumerate(s["runs"]):
            points = [(m, acc) for m, _, acc in run["evals"] if m is not None]
            if points:
                style = "-" if run["minutes"] is not None else ":"
                acc_ax.plot(*zip(*points), marker=".", color=color, linestyle=style, alpha=0.8,
                            label=label if j == 0 else None)
            bars.append((f"{label} {run['file']}", run["minutes"], slowest, color))
        if s["score_minutes"] is not None:
            ttt_ax.axvline(s["score_minutes"], color=color, linestyle="--", linewidth=1)
    acc_ax.axhline(target, color="black", linestyle="--", linewidth=1, label=f"target {target:.2%}")
    acc_ax.set(xlabel="minutes since run_start", ylabel="top-1 accuracy", title="accuracy against time")
    acc_ax.legend(fontsize="small")
    for y, (label, minutes, slowest, color) in enumerate(bars):
        ttt_ax.barh(y, minutes if minutes is not None else slowest, color=color,
                    alpha=1.0 if minutes is not None else 0.25, hatch=None if minutes is not None else "//")
        if minutes is None:
            ttt_ax.text(0, y, " did not converge", va="center", fontsize="small")
    ttt_ax.set_yticks(range(len(bars)), [bar[0] for bar in bars], fontsize="small")
    ttt_ax.invert_yaxis()
    ttt_ax.set(xlabel="minutes (run_start to run_stop); dashed: score", title="time to train per run")
    fig.tight_layout()
    tmp = out.with_name(f".{out.name}.tmp")
    fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    os.replace(tmp, out)
    return out


def run(args) -> int:
    folders = []
    for path in map(Path, args.paths):
        found = find_result_dirs(path) if path.is_dir() else []
        if not found:
            raise SystemExit(f"mlperf-resnet summarize: error: {path}: no result_*.txt in it or below it; "
                             "pass a folder of result logs or a submission tree")
        folders.extend(found)
    if args.usd_per_hour is not None and args.usd_per_hour < 0:
        raise SystemExit("mlperf-resnet summarize: error: --usd-per-hour: must not be negative; "
                         "give the machine's price per hour in US dollars")
    summaries = summarize_dirs(folders, args.ruleset, args.usd_per_hour)
    if args.json:
        for s in summaries:
            print(json.dumps(s))
    else:
        print(format_table(summaries))
    if args.plot:
        print(f"plot: {plot(summaries, args.plot, args.target)}", file=sys.stderr if args.json else sys.stdout)
    return 0 if all(s["valid"] for s in summaries) else 1


def register(subparsers) -> None:
    p = subparsers.add_parser("summarize", help="time to train and MLPerf score of sets of result logs",
                              description=__doc__.split("\n\n")[1],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="+", metavar="PATH", help="a folder of result_*.txt, or a submission tree")
    p.add_argument("--json", action="store_true", help="one JSON object per set instead of the table")
    p.add_argument("--plot", metavar="FILE.png", help="draw accuracy against minutes and time to train per run")
    p.add_argument("--usd-per-hour", type=float, metavar="X", help="add the cost of each run and of the score")
    p.add_argument("--ruleset", default=DEFAULT_RULESET, choices=resnet_rulesets(),
                   help="ruleset of the compliance check (default %(default)s)")
    p.add_argument("--target", type=float, default=TARGET_TOP1,
                   help="top-1 line drawn in the plot (default %(default)s)")
    p.set_defaults(func=run)


if __name__ == "__main__":
    from resnet.cli import standalone

    sys.exit(standalone(register))
