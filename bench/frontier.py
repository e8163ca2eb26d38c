"""The time-accuracy frontier of MosaicML's ResNet blog on the CPU proxy: Baseline, Mild, Medium and Hot (RECIPE.md
sections 11-12) at several budgets each, final top-1 against training minutes, each recipe a segment of the frontier.

    python bench/frontier.py OUT [--budgets 0.5 1 2 4] [--seeds 1 2 3] [--recipes baseline mild medium hot]
                                 [--folders DIR]

Budgets are multiples of the proxy's Mild (config_CPU.sh: 28 epochs); each recipe keeps its own epoch ratio to
Mild from mosaicml/examples (Baseline 90, Mild 36, Medium 135, Hot 270), so budget 1 trains Baseline 70, Mild 28,
Medium 105 and Hot 210 epochs. Every run is a real `python -m resnet.train` with config_CPU.sh's settings, the
torchvision loader on the image folders for every recipe (Hot's RandAugment needs decoded images; one loader keeps
the minutes comparable), TARGET_ACCURACY=1 (the whole budget is trained), one evaluation, after the last epoch,
and the recipes' 8 warm-up epochs (at most half of a run shorter than 16 epochs).
Minutes are run_start -> run_stop of the run's MLPerf log. Runs go seed by seed, budget by budget, so that a
change in the machine's load falls on all recipes alike. Writes OUT/frontier.json (every run, the table, the
frontier), OUT/frontier.png and OUT/logs/; OUT must not exist yet. Not part of `make test`: the default grid is
hours on a 2-core machine; `--budgets 0.1 --seeds 1` is a smoke run.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CONFIG = REPO / "config_CPU.sh"
PROXY_MILD_EPOCHS = 28
WARMUP_EPOCHS = 8      # every recipe's, not scaled with the budget (as Composer); capped at half of a short run
# Epochs relative to Mild's, from mosaicml/examples' recipe budgets (Mild 36 epochs on ImageNet).
EPOCH_RATIO = {"baseline": 90 / 36, "mild": 1.0, "medium": 135 / 36, "hot": 270 / 36}
# The Baseline at the proxy's geometry, as bench/proxy.py runs it (ImageNet's sides / 4: crops 56, eval 56 of 64).
RECIPE_FLAGS = {
    "baseline": ["--recipe", "baseline", "--train-crop-px", 56, "--eval-crop-px", 56, "--eval-resize-px", 64,
                 "--resize-initial-scale", 1, "--loss", "ce", "--label-smoothing", 0.1, "--blurpool", 0, "--ema", 0,
                 "--log-bias-init", 0],
    "mild": ["--recipe", "mild"],
    "medium": ["--recipe", "medium"],
    "hot": ["--recipe", "hot"],
}


def config_flags(config: Path = CONFIG) -> list[str]:
    """The train flags config_CPU.sh gives (as run_and_time.sh passes them), without its recipe, loader, epochs,
    evaluation cadence, target and results folder (the frontier sets those per run)."""
    from resnet.launch import env_to_flags

    clean = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "TMPDIR")}
    out = subprocess.run(["bash", "-c", 'source "$0" >/dev/null && env -0', str(config)], env=clean,
                         capture_output=True, text=True, check=True, cwd=REPO).stdout
    environ = dict(item.split("=", 1) for item in out.split("\0") if "=" in item)
    for name in ("RECIPE", "LOADER", "EPOCHS", "EVAL_EVERY_EPOCHS", "TARGET_ACCURACY", "LABEL_SMOOTHING"):
        environ.pop(name, None)
    words = env_to_flags(environ)
    i = words.index("--results-dir") if "--results-dir" in words else None
    return words if i is None else words[:i] + words[i + 2:]


def epochs_for(recipe: str, budget: float) -> int:
    return max(1, round(PROXY_MILD_EPOCHS * budget * EPOCH_RATIO[recipe]))


def read_log(path: Path) -> dict:
    """Minutes run_start -> run_stop, the last evaluation's top-1 and the run's status."""
    events = [json.loads(line.split(":::MLLOG", 1)[1]) for line in path.read_text().splitlines()
              if line.startswith(":::MLLOG")]
    start = next(e["time_ms"] for e in events if e["key"] == "run_start")
    stop = next((e for e in events if e["key"] == "run_stop"), None)
    evals = [e["value"] for e in events if e["key"] == "eval_accuracy"]
    return dict(status=stop["metadata"]["status"] if stop else "unfinished",
                minutes=(stop["time_ms"] - start) / 60000 if stop else None, top1=evals[-1] if evals else None)


def one_run(recipe: str, budget: float, seed: int, base: list[str], folders: Path, logs: Path) -> dict:
    epochs = epochs_for(recipe, budget)
    log = logs / f"{recipe}-x{budget:g}-seed{seed}.txt"
    cmd = [sys.executable, "-m", "resnet.train", *base, *map(str, RECIPE_FLAGS[recipe]), "--loader", "torchvision",
           "--data", str(folders), "--epochs", str(epochs), "--eval-every-epochs", str(epochs),
           "--warmup-epochs", str(min(WARMUP_EPOCHS, epochs / 2)),
           "--target-accuracy", "1.0", "--seed", str(seed), "--log-file", str(log)]
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    run = dict(recipe=recipe, budget=budget, epochs=epochs, seed=seed, exit_code=proc.returncode,
               wall_s=round(time.time() - t0, 1), log=str(log.relative_to(logs.parent)))
    if not log.is_file() or ":::MLLOG" not in log.read_text():
        tail = proc.stderr.strip().splitlines()[-1:] or ["no output"]
        return dict(run, status="failed", minutes=None, top1=None, error=tail[0])
    return dict(run, **read_log(log))


def spread(values: list[float]) -> dict:
    if not values:
        return dict(mean=None, sd=None, min=None, max=None, n=0)
    return dict(mean=statistics.mean(values), sd=statistics.stdev(values) if len(values) > 1 else 0.0,
                min=min(values), max=max(values), n=len(values))


def summarise(runs: list[dict]) -> list[dict]:
    """One row per (recipe, budget): minutes and final top-1 over its seeds."""
    keys = sorted({(r["recipe"], r["budget"]) for r in runs}, key=lambda k: (list(EPOCH_RATIO).index(k[0]), k[1]))
    rows = []
    for recipe, budget in keys:
        mine = [r for r in runs if (r["recipe"], r["budget"]) == (recipe, budget) and r["top1"] is not None]
        rows.append(dict(recipe=recipe, budget=budget, epochs=epochs_for(recipe, budget),
                         minutes=spread([r["minutes"] for r in mine]), top1=spread([r["top1"] for r in mine])))
    return rows


def frontier(rows: list[dict]) -> list[dict]:
    """The upper envelope: the rows that no row of fewer mean minutes beats in mean top-1, in order of minutes."""
    done = sorted((r for r in rows if r["top1"]["mean"] is not None), key=lambda r: r["minutes"]["mean"])
    best, out = -1.0, []
    for r in done:
        if r["top1"]["mean"] > best:
            best = r["top1"]["mean"]
            out.append(dict(recipe=r["recipe"], budget=r["budget"], minutes=r["minutes"]["mean"], top1=best))
    return out


def plot(rows: list[dict], front: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for recipe in EPOCH_RATIO:
        mine = [r for r in rows if r["recipe"] == recipe and r["top1"]["mean"] is not None]
        if mine:
            ax.errorbar([r["minutes"]["mean"] for r in mine], [r["top1"]["mean"] for r in mine],
                        yerr=[r["top1"]["sd"] for r in mine], marker="o", capsize=3, label=recipe)
    ax.plot([f["minutes"] for f in front], [f["top1"] for f in front], "k--", lw=1, label="frontier")
    ax.set_xlabel("training minutes (run_start -> run_stop, CPU proxy)")
    ax.set_ylabel("final top-1")
    ax.set_xscale("log")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path)
    p.add_argument("--budgets", type=float, nargs="+", default=[0.5, 1, 2, 4])
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--recipes", nargs="+", default=list(EPOCH_RATIO), choices=list(EPOCH_RATIO))
    p.add_argument("--folders", type=Path, help="image folders (default: make benchmark's synthetic set, made once)")
    args = p.parse_args(argv)
    if args.out.exists():
        print(f"frontier: {args.out} exists; give a new folder (results are never overwritten)", file=sys.stderr)
        return 1
    if any(b <= 0 for b in args.budgets):
        print("frontier: --budgets must be positive multiples of Mild's 28 proxy epochs", file=sys.stderr)
        return 1
    folders = args.folders or synthetic_folders(REPO / "data" / "bench")
    base, logs = config_flags(), args.out / "logs"
    logs.mkdir(parents=True)
    runs = []
    for seed in args.seeds:
        for budget in args.budgets:
            for recipe in args.recipes:
                run = one_run(recipe, budget, seed, base, folders, logs)
                runs.append(run)
                print(f"{recipe:>8} x{budget:g} ({run['epochs']} epochs) seed {seed}: top-1 {run['top1']} in "
                      f"{run['minutes'] if run['minutes'] is None else round(run['minutes'], 2)} min "
                      f"[{run['status']}]", flush=True)
    rows = summarise(runs)
    front = frontier(rows)
    (args.out / "frontier.json").write_text(json.dumps(dict(runs=runs, table=rows, frontier=front,
                                                            base_flags=base), indent=1))
    plot(rows, front, args.out / "frontier.png")
    print("frontier: " + " -> ".join(f"{f['recipe']} x{f['budget']:g} ({f['top1']:.3f} in {f['minutes']:.1f} min)"
                                     for f in front))
    return 0 if all(r["status"] != "failed" for r in runs) else 1


def synthetic_folders(cache: Path) -> Path:
    """`make benchmark`'s synthetic image folders under `cache`, made once (resnet.data.synth's defaults)."""
    from resnet.data.synth import DEFAULTS, make_synthetic

    d = DEFAULTS
    folders = cache / f"synth-c{d['classes']}-t{d['train_per_class']}-v{d['val_per_class']}-{d['size_px']}px"
    if not (folders / "synth.json").is_file():
        make_synthetic(folders, d["classes"], d["train_per_class"], d["val_per_class"], d["size_px"], seed=0)
    return folders


if __name__ == "__main__":
    sys.exit(main())
