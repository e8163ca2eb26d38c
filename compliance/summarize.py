"""`mlperf-resnet summarize PATH...`: time to train per run and the MLPerf score of each set of result logs.

PATH is a folder of result_*.txt or a submission tree (every folder under it that holds result_*.txt is a set,
e.g. ORG/results/<system>/resnet/). Per run: minutes from run_start to the first run_stop, counted only when the
run reached the quality target: run_stop says success, the last eval_accuracy before it is above the target
(ResNet: top-1 > 0.759; --target for other uses), and the log passes the official compliance checker. A run
that does not count is named with the reason. Also per run: the epochs completed at success (counted the way
MosaicML and NVIDIA log them) and the top-1 there, and the seed. Per set: the score, the olympic mean (drop the
fastest and the slowest of the 5 runs, average the other 3; a run that does not count is infinitely slow: one
is tolerated, two make the set invalid). The score is the raw one of the rules; where the review left a
scaling.json (closed division RCP scaling) the scaled score is reported beside it. Exit status 0 when every
set is valid, 1 otherwise.
"""
import json
import math
import os
import sys
from pathlib import Path

from compliance import ComplianceError
from compliance.check import DEFAULT_RULESET, add_scoring_arguments, judge_logs, scoring_arguments
from compliance.logs import SET_RECORD, TARGET_TOP1, is_number, not_counted, result_logs

NAME = "summarize"
HELP = "time to train and MLPerf score of sets of result logs"
RUNS_PER_SET = 5


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


def read_scaling(path) -> tuple[float | None, str | None]:
    """(scaling_factor, None) from the scaling.json that the review's RCP check leaves beside closed-division
    logs; (None, None) when there is none; (None, one line saying what is wrong) when it cannot be used."""
    path = Path(path)
    if not path.exists():
        return None, None
    try:
        factor = json.loads(path.read_text(encoding="utf-8")).get("scaling_factor")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError) as e:
        why = e.strerror if isinstance(e, OSError) else "not a JSON object" if isinstance(e, AttributeError) \
            else "not JSON text"
        return None, f"{path.name}: {why}; the scaled score is not shown (remove it, or restore the review's file)"
    if not (is_number(factor) and factor > 0):
        return None, (f"{path.name}: no positive number scaling_factor (found {factor!r}); the scaled score is "
                      "not shown (remove it, or restore the review's file)")
    return float(factor), None


def _summarize(folder: Path, runs: list[dict], unreadable: list[str], ruleset: str, usd_per_hour: float | None,
               target: float) -> dict:
    runs_minutes = [r["minutes"] for r in runs]
    score, reason = olympic_score(runs_minutes)
    in_tree = folder.parent.parent.name == "results"
    summary = {
        "path": str(folder),
        "system": folder.parent.name if in_tree else None,
        "benchmark": folder.name if in_tree else None,
        "ruleset": ruleset,
        "target": target,
        "runs_minutes": runs_minutes,
        "score_minutes": score,
        "valid": score is not None,
        "reason": reason,
        "epochs_at_success": [r["epoch_at_success"] for r in runs],
        "accuracy_at_success": [r["accuracy_at_success"] for r in runs],
        "seeds": [r["seed"] for r in runs],
        "runs": runs,
        "unreadable": unreadable,  # result_*.txt that are dangling links: named, not followed, not runs
    }
    notes = []
    if target != TARGET_TOP1:
        notes.append(f"target {target:g} is not the ResNet quality target {TARGET_TOP1}: not a submission score")
    if target >= 1:
        notes.append(f"no top-1 can be above the target {target:g}: no run can reach it")
    seeds = [s for s in summary["seeds"] if s is not None and not isinstance(s, (dict, list))]
    if len(set(seeds)) < len(seeds):
        notes.append("runs share a seed; MLPerf wants a different seed per run")
    for run in runs:
        notes += [f"{run['file']}: checker warning: {w}" for w in run["warnings"]]
        if run["unparsable_lines"]:
            notes.append(f"{run['file']}: {run['unparsable_lines']} unparsable log lines")
    skipped = [name for name in not_counted(folder) if (folder / name).exists()]
    if skipped:
        notes.append(f"not runs (interrupted, then continued in a later log; {SET_RECORD}): {', '.join(skipped)}")
    factor, problem = read_scaling(folder / "scaling.json")
    if problem:
        notes.append(problem)
    elif factor is not None:
        summary["scaling_factor"] = factor
        summary["scaled_score_minutes"] = None if score is None else score * factor
    if notes:
        summary["notes"] = notes
    if usd_per_hour is not None:
        summary["usd_per_hour"] = usd_per_hour
        summary["runs_cost_usd"] = [None if m is None else m / 60 * usd_per_hour for m in runs_minutes]
        summary["cost_usd"] = None if score is None else score / 60 * usd_per_hour
    return summary


def summarize_dirs(folders, ruleset: str = DEFAULT_RULESET, usd_per_hour: float | None = None,
                   target: float = TARGET_TOP1) -> list[dict]:
    """One summary per folder of result_*.txt (the compliance checks of all their logs run together)."""
    folders = [Path(f) for f in folders]
    listed = {f: result_logs(f) for f in folders}
    runs = iter(judge_logs([p for f in folders for p in listed[f][0]], ruleset, target))
    return [_summarize(f, [next(runs) for _ in listed[f][0]], listed[f][1], ruleset, usd_per_hour, target)
            for f in folders]


def summarize_dir(path, ruleset: str = DEFAULT_RULESET, usd_per_hour: float | None = None,
                  target: float = TARGET_TOP1) -> dict:
    """The summary of one folder of result_*.txt (e.g. $LOGDIR/$DGXSYSTEM/resnet), or of the one such folder
    below `path` (e.g. $LOGDIR). A folder without logs gives an invalid summary with no runs."""
    found = find_result_dirs(path)
    if len(found) > 1:
        raise ComplianceError(f"{path}: holds {len(found)} sets of result logs; summarize each, or use "
                              "summarize_dirs(find_result_dirs(path))")
    return summarize_dirs(found or [path], ruleset, usd_per_hour, target)[0]


def _label(summary: dict) -> str:
    path = Path(summary["path"])
    return summary["system"] or (path.parent.name if path.name == "resnet" else path.name)


def _fmt(value, spec: str, none: str = "-") -> str:
    if value is None:
        return none
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return format(value, spec)
    width = "".join(c for c in spec if c.isdigit())[:2] or "0"
    return format(str(value)[:12], f">{width}")  # whatever an edited log put there, without failing


def format_table(summaries: list[dict]) -> str:
    """The human output: a header line per set, one row per run, then why each run that does not count does
    not, and notes."""
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
        out.append(f"  {'run':<12} {'seed':>10} {'status':<8} {'minutes':>8} {'epochs':>6} {'top-1':>7}"
                   + (f" {'usd':>8}" if cost else ""))
        for i, run in enumerate(s["runs"]):
            row = (f"  {run['file']:<12} {_fmt(run['seed'], '>10', ' ' * 9 + '-')} {str(run['status']):<8} "
                   f"{_fmt(run['minutes'], '8.3f', '       x')} {_fmt(run['epoch_at_success'], '>6', '     -')} "
                   f"{_fmt(run['accuracy_at_success'], '7.4f', '      -')}")
            if cost:
                row += f" {_fmt(s['runs_cost_usd'][i], '8.2f', '       -')}"
            out.append(row)
        for run in s["runs"]:
            if run["problems"]:
                out.append(f"  {run['file']}: {'; '.join(run['problems'])}")
        out += [f"  {line}" for line in s["unreadable"]]
        for note in s.get("notes", []):
            out.append(f"  note: {note}")
    return "\n".join(out)


def plot(summaries: list[dict], out, target: float = TARGET_TOP1) -> Path:
    """accuracy against minutes for every run (dotted: does not count) with the target line, and the time to
    train of every run (hatched at the set's slowest counted run: does not count) with each set's score. The
    PNG is written under a temporary name and renamed, so `out` is never left half-written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    fig, (acc_ax, ttt_ax) = plt.subplots(1, 2, figsize=(13, 5))
    bars = []  # (label, minutes or None, the set's slowest counted run, color)
    for i, s in enumerate(summaries):
        color, label = colors[i % len(colors)], _label(s)
        slowest = max([m for m in s["runs_minutes"] if m is not None], default=1.0)
        for j, run in enumerate(s["runs"]):
            points = [(m, acc) for m, _, acc in run["evals"] if m is not None and is_number(acc)]
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
            ttt_ax.text(0, y, " does not count", va="center", fontsize="small")
    ttt_ax.set_yticks(range(len(bars)), [bar[0] for bar in bars], fontsize="small")
    ttt_ax.invert_yaxis()
    ttt_ax.set(xlabel="minutes (run_start to run_stop); dashed: score", title="time to train per run")
    fig.tight_layout()
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        fig.savefig(tmp, format="png", dpi=100)
        os.replace(tmp, out)
    except OSError as e:
        raise ComplianceError(f"--plot {out}: cannot write it ({e.strerror or e}); choose a writable place")
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
    return out


def check_plot_path(path) -> Path:
    """The --plot file, refused before any work when it cannot be written there."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ComplianceError(f"--plot {path}: not a .png name; name the PNG file to write, e.g. ttt.png")
    if path.is_dir():
        raise ComplianceError(f"--plot {path}: is a folder; name the PNG file to write inside it, e.g. {path}/ttt.png")
    folder = path.parent
    if not folder.is_dir():
        raise ComplianceError(f"--plot {path}: the folder {folder} does not exist; create it first or write the "
                              "plot elsewhere")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ComplianceError(f"--plot {path}: the folder {folder} is not writable; write the plot elsewhere")
    return path


def add_arguments(parser) -> None:
    parser.add_argument("paths", nargs="+", metavar="PATH", help="a folder of result_*.txt, or a submission tree")
    parser.add_argument("--json", action="store_true", help="one JSON object per set instead of the table")
    parser.add_argument("--plot", metavar="FILE.png", help="draw accuracy against minutes and time to train per run")
    parser.add_argument("--usd-per-hour", type=float, metavar="X", help="add the cost of each run and of the score")
    add_scoring_arguments(parser)


def run(args) -> int:
    ruleset, target = scoring_arguments(args)
    if args.usd_per_hour is not None and not (math.isfinite(args.usd_per_hour) and args.usd_per_hour >= 0):
        raise ComplianceError(f"--usd-per-hour {args.usd_per_hour}: must be a price of 0 or more; give the "
                              "machine's price per hour in US dollars")
    plot_path = check_plot_path(args.plot) if args.plot else None
    folders = []
    for path in map(Path, args.paths):
        found = find_result_dirs(path) if path.is_dir() else []
        if not found:
            raise ComplianceError(f"{path}: no result_*.txt in it or below it; pass a folder of result logs or "
                                  "a submission tree")
        folders.extend(found)
    summaries = summarize_dirs(folders, ruleset, args.usd_per_hour, target)
    if args.json:
        for s in summaries:
            print(json.dumps(s))
    else:
        print(format_table(summaries))
    if plot_path:
        print(f"plot: {plot(summaries, plot_path, target)}", file=sys.stderr if args.json else sys.stdout)
    return 0 if all(s["valid"] for s in summaries) else 1


if __name__ == "__main__":
    import compliance

    sys.exit(compliance.main(sys.modules[__name__]))
