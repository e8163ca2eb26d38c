"""Time to the target on the synthetic set: the CPU-sized Mild recipe against the Baseline recipe (section 11:
cross-entropy with smoothing 0.1, no BlurPool, no log-bias init, no EMA, full-size crops throughout, eval
resize 256/224), same machine, same seeds, same data, same model size, optimiser and peak LR.

    python bench/time_to_target.py [--cache DIR] [--seeds 1 2] [--json]

Each run is a real `resnet.train` process; minutes are run_start -> run_stop read from its MLPerf log, like the
official score. The Baseline gets twice Mild's epochs as its budget (on ImageNet it is 90 vs 28). Published
ImageNet speed-up on 8x A100: 110.5 / 23.8 = 4.6x.
"""
import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import DEFAULT_CACHE, REPO, synthetic_ffcv, train_cmd  # noqa: E402

COMMON = ["--arch", "resnet18", "--batch-size", 64, "--workers", 2, "--lr", 0.3, "--warmup-epochs", 2,
          "--precision", "fp32", "--target-accuracy", 0.759, "--eval-every-epochs", 2]
RECIPES = {  # the config_CPU.sh shape for Mild; Baseline as section 11 at the same final crop
    "mild": ["--recipe", "mild", "--epochs", 18, "--train-crop-px", 40, "--eval-crop-px", 48, "--eval-resize-px", 52],
    "baseline": ["--recipe", "baseline", "--epochs", 36, "--train-crop-px", 40, "--eval-crop-px", 48,
                 "--eval-resize-px", 55],
}


def one_run(recipe: str, seed: int, data: Path, logs: Path) -> dict:
    from compliance.summarize import parse_run

    log = logs / f"{recipe}-{seed}-{time.time_ns()}.txt"
    subprocess.run(train_cmd("--data", data, *COMMON, *RECIPES[recipe], "--seed", seed, "--log-file", log),
                   cwd=REPO, capture_output=True, text=True)
    run = parse_run(log)
    return dict(recipe=recipe, seed=seed, status=run["status"], epoch=run["epoch_at_success"],
                accuracy=run["accuracy_at_success"],
                minutes=run["raw_minutes"] if run["status"] == "success" else None)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    data = synthetic_ffcv(args.cache)
    logs = args.cache / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    runs = [one_run(recipe, seed, data, logs) for seed in args.seeds for recipe in RECIPES]
    for r in runs:
        if not args.json:
            print(f"{r['recipe']:>8} seed {r['seed']}: {r['status']:>8} "
                  f"{'-' if r['minutes'] is None else format(r['minutes'], '.2f')} min, epoch {r['epoch']}, "
                  f"top-1 {r['accuracy']}")
    mean = {name: statistics.mean(r["minutes"] for r in runs if r["recipe"] == name and r["minutes"] is not None)
            if all(r["minutes"] is not None for r in runs if r["recipe"] == name) else None for name in RECIPES}
    speedup = mean["baseline"] / mean["mild"] if None not in mean.values() else None
    if args.json:
        print(json.dumps(dict(runs=runs, mean_minutes=mean, speedup=speedup)))
    else:
        print(f"mean minutes to target: mild {mean['mild']}, baseline {mean['baseline']}; speed-up "
              + (f"{speedup:.2f}x" if speedup else "n/a (a recipe missed the target)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
