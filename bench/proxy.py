"""The CPU proxy benchmark (BENCHMARKS.md): time to target of Mild against the Baseline (RECIPE.md section 11, at
the proxy's geometry) and against Mild without each of its methods, each a real `python -m resnet.train` run
with config_CPU.sh's flags plus its variant's (VARIANTS), every variant of a seed before the next seed.

    python -m bench.proxy OUT [--seeds 1 2 3] [--variants mild baseline ...] [--data DIR] [--folders DIR]
                          [--add-runs JSON ...]     # OUT (new): proxy.json, proxy.png, logs/
    python -m bench.proxy OUT --frontier 0.5 1 2 4 [--variants baseline mild medium hot] [--seeds 1 2 3]

--frontier: the time-accuracy frontier of MosaicML's recipes (RECIPE.md section 12): each recipe at each budget (a
multiple of the proxy's 28 Mild epochs; each recipe keeps its epoch ratio to Mild from mosaicml/examples: Baseline
90, Mild 36, Medium 135, Hot 270 ImageNet epochs), the whole budget trained (target 1.0), one evaluation at the end,
all on the torchvision loader (Hot's RandAugment needs decoded images; one loader keeps the minutes comparable);
final top-1 against minutes, the envelope drawn. Not part of `make test`: the default grid is hours on 2 cores.
"""
import argparse
import dataclasses
import functools
import json
import os
import statistics
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

from bench.common import DEFAULT_CACHE, REPO, figure, mllog_events, run_metadata, synthetic_dataset
from resnet.data.loaders import declared

CONFIG = REPO / "config_CPU.sh"
BASELINE_EPOCHS = 20
BASELINE = ["--recipe", "baseline", "--epochs", BASELINE_EPOCHS, "--eval-every-epochs", 4, "--train-crop-px", 56,
            "--eval-crop-px", 56, "--eval-resize-px", 64, "--resize-initial-scale", 1, "--loss", "ce",
            "--label-smoothing", 0.1, "--blurpool", 0, "--ema", 0, "--log-bias-init", 0]
# Each variant: the flags added to config_CPU.sh's. Later flags win, so these override the config.
VARIANTS = {
    "mild": [],
    "baseline": BASELINE,
    "no-blurpool": ["--blurpool", 0],
    "no-ema": ["--ema", 0],
    "ce-loss": ["--loss", "ce", "--label-smoothing", 0.1],          # the Baseline's loss instead of smoothed BCE
    "no-progressive-resizing": ["--resize-initial-scale", 1],       # 44 px crops from the first epoch
    "no-log-bias-init": ["--log-bias-init", 0],
    "baseline-44": [*BASELINE, "--train-crop-px", 44],     # not by default (nor below): the Baseline at crop 44
    "dali": ["--loader", "dali"],                            # the same Mild run on DALI's CPU pipeline
    "dali-side": ["--loader", "dali", "--decode-to-side", 1],   # crops decoded straight to each epoch's side
    "mild-torchvision": ["--loader", "torchvision"],         # --composer: ours on the loader both trainers use,
    "composer-mild": ["--loader", "torchvision"],            # and Composer's Trainer (composer_train)
}
DEFAULT_VARIANTS = [v for v in VARIANTS if v not in ("baseline-44", "dali", "dali-side", "mild-torchvision",
                                                     "composer-mild")]
EPOCH_RATIO = {"baseline": 90 / 36, "mild": 1.0, "medium": 135 / 36, "hot": 270 / 36}   # --frontier's recipes
PROXY_MILD_EPOCHS = 28
COMPOSER_VENV = REPO / ".venv-composer"
COMPOSER_PINS = ("mosaicml==0.32.1", "torch==2.7.0", "torchvision==0.22.0")   # mosaicml 0.32.1 takes torch 2.6-2.7.0


def frontier_variants(recipes: list[str], budgets: list[float]) -> list[str]:
    """Registers (in VARIANTS) and names each recipe's run at each budget, cheapest budget first."""
    names = []
    for budget in budgets:
        for recipe in recipes:
            epochs = max(1, round(PROXY_MILD_EPOCHS * budget * EPOCH_RATIO[recipe]))
            names.append(f"{recipe}-x{budget:g}")
            VARIANTS[names[-1]] = [*(BASELINE if recipe == "baseline" else ["--recipe", recipe]), "--loader",
                                   "torchvision", "--epochs", epochs, "--eval-every-epochs", epochs,
                                   "--warmup-epochs", min(8, epochs / 2), "--target-accuracy", 1.0]
    return names


def envelope(table: dict) -> list[dict]:
    """The frontier: the runs no cheaper one beats in mean final top-1, in order of mean minutes."""
    rows = sorted(((row["minutes_all"]["mean"], row["final_top1"]["mean"], v) for v, row in table.items()
                   if row["final_top1"]["mean"] is not None))
    best, out = -1.0, []
    for minutes, top1, v in rows:
        if top1 > best:
            best = top1
            out.append(dict(variant=v, minutes=minutes, top1=top1))
    return out


def reads_folders(variant: str) -> bool:
    """Whether the variant's loader reads image folders (DALI, torchvision) rather than the FFCV files."""
    flags = list(map(str, VARIANTS[variant]))
    return declared(flags[flags.index("--loader") + 1] if "--loader" in flags else "ffcv").reads == "folders"


def config_flags(config: Path = CONFIG) -> list[str]:
    """The train flags config_CPU.sh gives (as run_and_time.sh would pass them), without the results folder."""
    from resnet.launch import config_environ, env_to_flags
    environ = config_environ(config, preset={k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "TMPDIR")})
    words = env_to_flags(environ)
    i = words.index("--results-dir") if "--results-dir" in words else None
    return words if i is None else words[:i] + words[i + 2:]


def read_log(path: Path) -> dict:
    """run_start -> run_stop minutes, status, and every evaluation (minutes since run_start, epoch, top-1)."""
    events = mllog_events(path)
    start = next(e["time_ms"] for e in events if e["key"] == "run_start")
    stop = next((e for e in events if e["key"] == "run_stop"), None)
    evals = [dict(minutes=(e["time_ms"] - start) / 60000, epoch=e["metadata"]["epoch_num"], top1=e["value"])
             for e in events if e["key"] == "eval_accuracy"]
    status = stop["metadata"]["status"] if stop else "unfinished"
    return dict(status=status, minutes=(stop["time_ms"] - start) / 60000 if stop else None, evals=evals,
                final_top1=evals[-1]["top1"] if evals else None,
                epoch_at_stop=evals[-1]["epoch"] if evals else None)


def one_run(variant: str, seed: int, base: list[str], data: dict, logs: Path) -> dict:
    """data: {"ffcv": FFCV folder, "folders": image folders}, the one its loader reads."""
    log = logs / f"{variant}-seed{seed}.txt"
    cmd = [sys.executable, "-m", "resnet.train", *base, *map(str, VARIANTS[variant]),
           "--data", str(data["folders" if reads_folders(variant) else "ffcv"]), "--seed", str(seed),
           "--log-file", str(log)]
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    run = dict(variant=variant, seed=seed, exit_code=proc.returncode, wall_s=round(time.time() - t0, 1),
               command=cmd[1:], log=str(log.relative_to(logs.parent)))
    if not log.is_file() or ":::MLLOG" not in log.read_text():
        tail = proc.stderr.strip().splitlines()[-1:] or ["no output"]
        return dict(run, status="failed", minutes=None, evals=[], final_top1=None, epoch_at_stop=None,
                    error=tail[0])
    return dict(run, **read_log(log))


def spread(values: list[float]) -> dict:
    return dict(mean=statistics.mean(values), sd=statistics.stdev(values) if len(values) > 1 else 0.0,
                min=min(values), max=max(values)) if values else dict(mean=None, sd=None, min=None, max=None)


def summarise(runs: list[dict], variants: list[str], ref: str = "mild") -> dict:
    table = {}
    for v in variants:
        mine = [r for r in runs if r["variant"] == v]
        reached = [r for r in mine if r["status"] == "success"]
        table[v] = dict(runs=len(mine), reached=len(reached),
                        minutes=spread([r["minutes"] for r in reached]),
                        epochs=spread([r["epoch_at_stop"] for r in reached]),
                        final_top1=spread([r["final_top1"] for r in mine if r["final_top1"] is not None]),
                        minutes_all=spread([r["minutes"] for r in mine if r["minutes"] is not None]))
    mild = table.get(ref, {}).get("minutes", {}).get("mean")
    for v, row in table.items():
        mean = row["minutes"]["mean"]
        row["time_vs_mild"] = mean / mild if mild and mean and row["reached"] == row["runs"] else None
    return table


def print_table(table: dict, target: float) -> None:
    def fmt(s, digits=2):
        return "-" if s["mean"] is None else f"{s['mean']:.{digits}f} ± {s['sd']:.{digits}f}"
    print(f"\n{'variant':<24} {'reached':>7} {'minutes to ' + str(target):>18} {'epochs':>12} "
          f"{'final top-1':>16} {'time vs Mild':>12}")
    for v, row in table.items():
        ratio = "-" if row["time_vs_mild"] is None else f"{row['time_vs_mild']:.2f}x"
        print(f"{v:<24} {row['reached']:>3}/{row['runs']:<3} {fmt(row['minutes']):>18} {fmt(row['epochs'], 1):>12} "
              f"{fmt(row['final_top1'], 3):>16} {ratio:>12}")
    if table.get("baseline", {}).get("time_vs_mild"):
        print(f"Mild is {table['baseline']['time_vs_mild']:.2f}x faster than the Baseline to top-1 > {target}")


def throughput(table: dict, runs: list[dict]) -> None:
    """--composer: each variant's training images per second, run_start -> run_stop (evaluations included)."""
    per_epoch = next((r["images_per_epoch"] for r in runs if r.get("images_per_epoch")), None)
    for v, row in table.items():
        done = [r for r in runs if r["variant"] == v and r["minutes"] and per_epoch]
        for r in done:
            r["img_per_s"] = r["epoch_at_stop"] * per_epoch / (60 * r["minutes"])
        row["img_per_s"] = spread([r["img_per_s"] for r in done])


def plot_frontier(table: dict, front: list[dict], path: Path) -> None:
    def draw(ax):
        for i, recipe in enumerate(EPOCH_RATIO):
            mine = [row for v, row in table.items() if v.startswith(f"{recipe}-x") and row["final_top1"]["mean"]]
            if mine:
                    ax.errorbar([r["minutes_all"]["mean"] for r in mine], [r["final_top1"]["mean"] for r in mine],
                            yerr=[r["final_top1"]["sd"] for r in mine], marker="o", capsize=3, color=f"C{i}",
                            label=recipe)
        ax.plot([f["minutes"] for f in front], [f["top1"] for f in front], "k--", lw=1, label="frontier")
        ax.set_xscale("log")
    figure(path, "CPU proxy: final top-1 against training time, each recipe at several budgets (bench.proxy "
           "--frontier)", "minutes (run_start -> run_stop)", "final top-1", draw)


def plot(runs: list[dict], variants: list[str], target: float, path: Path) -> None:
    def draw(ax):
        for i, v in enumerate(variants):
            for j, r in enumerate(x for x in runs if x["variant"] == v):
                ax.plot([e["minutes"] for e in r["evals"]], [e["top1"] for e in r["evals"]], marker=".",
                        color=f"C{i % 10}", lw=2.2 if v in ("mild", "baseline") else 1.0, alpha=0.85,
                        label=v if j == 0 else None)
        ax.axhline(target, color="grey", ls="--", lw=1, label=f"target {target}")
    figure(path, "CPU proxy: top-1 against time, every seed (bench.proxy)", "minutes since run_start",
           "top-1 (validation)", draw)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path, help="output folder (must not exist)")
    p.add_argument("--seeds", type=int, nargs="*", default=[1, 2, 3])
    p.add_argument("--variants", nargs="+", default=None, choices=[*VARIANTS, *EPOCH_RATIO], metavar="VARIANT",
                   help=f"any of {', '.join(VARIANTS)} (default: all but baseline-44 and the dali ones)")
    p.add_argument("--data", type=Path, help="FFCV folder (default: make benchmark's data set, made under "
                   f"{DEFAULT_CACHE.relative_to(REPO)} if missing)")
    p.add_argument("--folders", type=Path, help="its image folders, for the dali variants (default: the folders "
                   "the default data set was made from)")
    p.add_argument("--frontier", type=float, nargs="+", metavar="BUDGET",
                   help="the recipes' frontier at these budgets (--variants then names recipes: "
                   f"{', '.join(EPOCH_RATIO)}, all by default)")
    p.add_argument("--add-runs", type=Path, nargs="+", default=[], metavar="JSON",
                   help="proxy.json files of earlier runs with the same config_CPU.sh flags and other seeds")
    p.add_argument("--composer", action="store_true", help="Mild on Composer's Trainer beside ours, both on the "
                   "torchvision loader, and Medium/Hot's methods against composer.functional (in Composer's venv)")
    p.add_argument("--composer-venv", type=Path, default=COMPOSER_VENV, help="Composer's venv, made there once "
                   f"(default: {COMPOSER_VENV.relative_to(REPO)})")
    args = p.parse_args(argv)
    if args.out.exists():
        p.error(f"{args.out} already exists; choose a new folder (results are never overwritten)")
    if args.composer and (args.frontier or args.variants or args.add_runs):
        p.error("--composer runs Mild on both trainers: it takes no --frontier, --variants or --add-runs")
    python = composer_python(args.composer_venv) if args.composer else None
    if args.composer:
        args.variants = ["mild-torchvision", "composer-mild"]
    if args.frontier:
        if min(args.frontier) <= 0 or not set(args.variants or EPOCH_RATIO) <= set(EPOCH_RATIO):
            p.error(f"--frontier takes positive budgets and, as --variants, recipes among {', '.join(EPOCH_RATIO)}")
        args.variants = frontier_variants(args.variants or list(EPOCH_RATIO), args.frontier)
    args.variants = args.variants or DEFAULT_VARIANTS
    base = config_flags()
    earlier = []
    for path in args.add_runs:
        try:
            old = json.loads(path.read_text())
            flags, old_runs = old["config_flags"], old["runs"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            p.error(f"--add-runs {path}: not a proxy.json this script wrote ({type(e).__name__}: {e})")
        if flags != base:
            p.error(f"--add-runs {path}: its runs used other config_CPU.sh flags than today's; run them again")
        earlier += [dict(r, source=str(path)) for r in old_runs if r["variant"] in args.variants]
    pairs = [(r["variant"], r["seed"]) for r in earlier] + [(v, s) for s in args.seeds for v in args.variants]
    twice = sorted(pair for pair in set(pairs) if pairs.count(pair) > 1)
    if twice:
        p.error(f"--add-runs: {twice[0][0]} seed {twice[0][1]} would be counted twice; give other seeds")
    if not pairs:
        p.error("nothing to do: give --seeds, or --add-runs to tabulate earlier runs")
    made = args.seeds and not (args.data and args.folders)
    folders, ffcv = synthetic_dataset(DEFAULT_CACHE) if made else (None, None)
    data = dict(ffcv=args.data or ffcv, folders=args.folders or folders)
    target = float(base[base.index("--target-accuracy") + 1]) if "--target-accuracy" in base else 0.759
    logs = args.out / "logs"
    logs.mkdir(parents=True)
    print("config_CPU.sh flags:", " ".join(base), flush=True)
    for v in args.variants:
        print(f"  {v}: {' '.join(map(str, VARIANTS[v])) or '(config_CPU.sh as is)'}", flush=True)
    runs, t0 = list(earlier), time.time()
    functional = peer(python, dict(kind="functional"), logs / "functional.json") if args.composer else None
    if functional:
        print("composer.functional:", json.dumps(functional), flush=True)
    for seed in args.seeds:
        for v in args.variants:
            run = functools.partial(composer_run, python) if v == "composer-mild" else one_run
            r = run(v, seed, base, data, logs)
            runs.append(r)
            minutes = "-" if r["minutes"] is None else f"{r['minutes']:.2f} min"
            print(f"{v:<24} seed {seed}: {r['status']:<8} {minutes:>9}, epoch {r['epoch_at_stop']}, "
                  f"final top-1 {r['final_top1']}, wall {r['wall_s']} s" + (f" ({r['error']})" if "error" in r
                                                                              else ""), flush=True)
    table = summarise(runs, args.variants, ref=args.variants[0] if args.composer else "mild")
    if args.composer:
        throughput(table, runs)
    print_table(table, target)
    seeds = sorted({r["seed"] for r in runs})
    result = dict(config=str(CONFIG.relative_to(REPO)), config_flags=base, data=str(data["ffcv"]),
                  folders=str(data["folders"]), seeds=seeds, added_from=[str(path) for path in args.add_runs],
                  target=target, variants={v: list(map(str, VARIANTS[v])) for v in args.variants},
                  total_minutes=(time.time() - t0) / 60, table=table, runs=runs)
    if functional:
        result["functional"] = functional
    if args.frontier:
        result["frontier"] = envelope(table)
        plot_frontier(table, result["frontier"], args.out / "frontier.png")
        print("frontier: " + " -> ".join(f"{f['variant']} ({f['top1']:.3f} in {f['minutes']:.2f} min)"
                                         for f in result["frontier"]))
    (args.out / "proxy.json").write_text(json.dumps(dict(metadata=run_metadata(), **result), indent=1) + "\n")
    plot(runs, args.variants, target, args.out / "proxy.png")
    print(f"wrote {args.out / 'proxy.json'} and {args.out / 'proxy.png'}")
    return 0 if all(r["status"] != "failed" for r in runs) else 1




def composer_python(venv: Path) -> Path:
    """The Python of Composer's venv at `venv`, made on first use (pip, COMPOSER_PINS) and reused after: a file in it
    records the pins it was made with. SystemExit in one line when it cannot be made."""
    python, made = venv / "bin" / "python", venv / "composer-pins.txt"
    if made.is_file() and made.read_text().split() == list(COMPOSER_PINS):
        return python
    print(f"making {venv} ({', '.join(COMPOSER_PINS)}; ~3 GB the first time)", flush=True)
    for cmd in ([getattr(sys, "_base_executable", sys.executable), "-m", "venv", str(venv)],
                [str(python), "-m", "pip", "install", "--progress-bar", "off", *COMPOSER_PINS]):
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode:
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise SystemExit(f"error: --composer: could not make {venv} ({' '.join(cmd[1:3])} exit "
                             f"{proc.returncode}: {last}); free the path or give --composer-venv another folder")
    made.write_text("\n".join(COMPOSER_PINS) + "\n")
    return python


def peer(python: Path, job: dict, path: Path) -> dict:
    """`job` run by `python -m bench.proxy --composer-peer` in Composer's venv (this repo on its path): its result
    JSON at `path`, or a failed run naming the peer's last line of error."""
    path.with_suffix(".job.json").write_text(json.dumps(dict(job, result=str(path))))
    t0, env = time.time(), dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run([str(python), "-m", "bench.proxy", "--composer-peer", str(path.with_suffix(".job.json"))],
                          cwd=REPO, env=env, capture_output=True, text=True)
    path.with_suffix(".log").write_text(proc.stdout + proc.stderr)
    if proc.returncode or not path.is_file():
        tail = proc.stderr.strip().splitlines()[-1:] or ["no output"]
        result = dict(status="failed", minutes=None, evals=[], final_top1=None, epoch_at_stop=None, error=tail[0])
    else:
        result = json.loads(path.read_text())
    return dict(result, exit_code=proc.returncode, wall_s=round(time.time() - t0, 1), log=str(path.with_suffix(".log")))


def composer_run(python: Path, variant: str, seed: int, base: list[str], data: dict, logs: Path) -> dict:
    """One Composer run of the recipe config_CPU.sh's flags give (`composer_train`), as one_run's result."""
    from resnet import settings
    parser = argparse.ArgumentParser()
    settings.add_arguments(parser)
    flags = parser.parse_known_args(base)[0]
    settings.read(flags)
    recipe = dataclasses.asdict(settings.recipe_from_args(flags, world_size=1))
    job = dict(kind="train", recipe=recipe, seed=seed, workers=flags.workers, folders=str(data["folders"]))
    return dict(variant=variant, seed=seed, **peer(python, job, logs / f"{variant}-seed{seed}.json"))


def composer_peer(job_path: str) -> int:
    job = json.loads(Path(job_path).read_text())
    result = functional_checks() if job["kind"] == "functional" else composer_train(job)
    result["versions"] = {name: metadata.version(name) for name in ("mosaicml", "torch", "torchvision")}
    Path(job["result"]).write_text(json.dumps(result, indent=1) + "\n")
    return 0


def peer_run(evals: list[dict], target: float, images_per_epoch: int) -> dict:
    """A Composer run's evaluations (minutes since FIT_START, completed epochs, top-1) as one_run's fields: it stops
    at the first top-1 above `target` (then success) or at the last evaluation."""
    hit = next((i for i, e in enumerate(evals) if e["top1"] > target), None)
    evals = evals if hit is None else evals[:hit + 1]
    last = evals[-1] if evals else dict(minutes=None, epoch=None, top1=None)
    return dict(status="aborted" if hit is None else "success", minutes=last["minutes"], evals=evals,
                final_top1=last["top1"], epoch_at_stop=last["epoch"], images_per_epoch=images_per_epoch)


def composer_train(spec: dict) -> dict:
    """In Composer's venv: the recipe (config_CPU.sh's Mild) on Composer's Trainer and its algorithms, with our model
    builder (resnet_cpu and its init, before any method) and our torchvision loader. Minutes: FIT_START (model,
    loaders and surgery done, as our run_start) to the EVAL_END that passes the target (as our run_stop)."""
    import torch
    from composer import Callback, Trainer, algorithms as ca
    from composer.loss import binary_cross_entropy_with_logits
    from composer.models import ComposerClassifier
    from composer.optim import CosineAnnealingWithWarmupScheduler, DecoupledSGDW

    from resnet.data.loaders import LoaderSpec, make_loaders
    from resnet.model import initialise, resnet_cpu
    from resnet.recipe import Plan, Recipe

    r, seed = Recipe(**spec["recipe"]), spec["seed"]
    loaders = LoaderSpec.from_recipe(r, batch_size=r.global_batch_size, workers=spec["workers"], seed=seed)
    train, val, info = make_loaders(spec["folders"], loaders, "torchvision")
    plan = Plan(r, info.num_classes, info.train_samples, info.eval_samples, world_size=1)
    torch.manual_seed(seed)
    net = resnet_cpu(info.num_classes)
    initialise(net, info.num_classes, r.log_bias_init)
    model = ComposerClassifier(net, num_classes=info.num_classes, loss_fn=binary_cross_entropy_with_logits)

    class Clock(Callback):
        def __init__(self):
            self.t0, self.evals = None, []

        def fit_start(self, state, logger):
            self.t0 = time.time()

        def eval_end(self, state, logger):
            top1 = float(state.eval_metrics["eval"]["MulticlassAccuracy"].compute())
            self.evals.append(dict(minutes=(time.time() - self.t0) / 60, epoch=int(state.timestamp.epoch), top1=top1))
            if top1 > r.target_accuracy:
                state.stop_training()

    algorithms = [ca.BlurPool(min_channels=16), ca.ChannelsLast(), ca.LabelSmoothing(r.label_smoothing),
                  ca.ProgressiveResizing(mode="resize", initial_scale=r.resize_initial_scale,
                                         delay_fraction=r.resize_delay, finetune_fraction=r.resize_finetune,
                                         size_increment=r.resize_increment_px),
                  ca.EMA(half_life=None, smoothing=plan.ema_decay, update_interval=f"{plan.ema_every_steps}ba")]
    clock = Clock()
    Trainer(model=model, train_dataloader=train, eval_dataloader=val, max_duration=f"{r.epochs}ep",
            optimizers=DecoupledSGDW(model.parameters(), lr=r.peak_lr, momentum=r.momentum,
                                     weight_decay=r.weight_decay),
            schedulers=CosineAnnealingWithWarmupScheduler(t_warmup=f"{plan.warmup_steps}ba", alpha_f=0.0),
            step_schedulers_every_batch=True, algorithms=algorithms, eval_interval=f"{r.eval_every_epochs}ep",
            device="cpu", precision="fp32", seed=seed, callbacks=[clock], loggers=[], progress_bar=False,
            log_to_console=False).fit()
    return peer_run(clock.evals, r.target_accuracy, plan.steps_per_epoch * r.global_batch_size)



def functional_checks() -> dict:
    """In Composer's venv: our methods against Composer's functional forms (SAM: its SAMOptimizer) on the same
    tensors and seeds: per method the largest difference relative to Composer's largest value (0: equal; RECIPE.md
    section 12 explains the others). RandAugment's suites differ by design: the pixels' mean change is compared."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    from composer import functional as cf
    from composer.loss import binary_cross_entropy_with_logits as composer_bce
    from PIL import Image
    from torchvision.models.resnet import Bottleneck

    from resnet.algorithms import apply_blurpool, colout_batch, label_smoothed_bce, mixup_batch, resize_batch
    from resnet.data.torchvision_loader import RandAugment
    from resnet.model import SmallInputResNet, apply_stochastic_depth

    def gap(a, b):
        return float((a - b).abs().max() / b.abs().max()) if a.shape == b.shape else f"shapes {a.shape} {b.shape}"

    def seeded(seed, f, *args, **kwargs):
        torch.manual_seed(seed), np.random.seed(seed)
        return f(*args, **kwargs)
    x, y, hot = torch.randn(8, 3, 44, 44, generator=torch.Generator().manual_seed(0)), torch.arange(8) % 4, F.one_hot
    nets = [seeded(3, SmallInputResNet, 4, block=Bottleneck) for _ in range(4)]
    apply_blurpool(nets[2]), cf.apply_blurpool(nets[3])
    apply_stochastic_depth(nets[0], 0.1)
    cf.apply_stochastic_depth(nets[1], "ResNetBottleneck", "sample", drop_rate=0.1, drop_distribution="linear")
    nets = [net.eval() for net in nets]     # after the surgery: the modules it adds are made in training mode
    out = dict(apply_blurpool=gap(nets[2](x), nets[3](x)), label_smoothed_bce=gap(
        label_smoothed_bce(x[:, 0, 0], y, 0.08), composer_bce(x[:, 0, 0], cf.smooth_labels(x[:, 0, 0], y, 0.08))))
    out["resize_batch: sides that differ"] = [  # Composer: floor(44 x side / 44) px
        side for side in range(22, 45) if resize_batch(x, side).shape != cf.resize_batch(x, y, side / 44)[0].shape]
    out["colout_batch"] = gap(seeded(1, colout_batch, x, 0.2, 0.2), seeded(1, cf.colout_batch, x, 0.2, 0.2))
    mixed, targets = seeded(2, mixup_batch, x, y, 4, 0.25)
    b = seeded(2, torch.distributions.Beta(torch.tensor(0.25), torch.tensor(0.25)).sample)   # our draws, replayed
    lam, perm = float(torch.minimum(b, 1 - b)), torch.randperm(8)
    theirs, y_perm, _ = cf.mixup_batch(x, y, mixing=lam, indices=perm)    # and MixUp's target at BEFORE_LOSS:
    out["mixup_batch"] = max(gap(mixed, theirs), gap(targets, (1 - lam) * hot(y, 4) + lam * hot(y_perm, 4)))
    blocks = [[m for m in net.modules() if isinstance(m, Bottleneck)] for net in nets[:2]]
    rates = torch.tensor([[a.bn3[1].p, float(b.drop_rate)] for a, b in zip(*blocks)])
    with torch.no_grad():
        out["stochastic_depth: rates, eval"] = [gap(rates[:, 0], rates[:, 1]), gap(nets[0](x), nets[1](x))]
        for m in blocks[0]:     # Composer's evaluation scales the branch by its keep probability: so do we
            m.bn3[0].weight.mul_(1 - m.bn3[1].p), m.bn3[0].bias.mul_(1 - m.bn3[1].p)
        out["stochastic_depth: rates, eval"].append(gap(nets[0](x), nets[1](x)))
    image = Image.fromarray((x[0].permute(1, 2, 0).clamp(-2, 2) * 60 + 128).byte().numpy())

    def change(f):   # over 400 draws: the pixels' mean absolute change, and the share of images left unchanged
        d = [np.abs(np.asarray(f(image), float) - np.asarray(image, float)).mean() for _ in seeded(4, range, 400)]
        return dict(mean_abs_change=float(np.mean(d)), unchanged=float(np.mean(np.equal(d, 0))))
    out["randaugment (ours, composer)"] = [change(RandAugment(1, 10)),
                                           change(lambda im: cf.randaugment_image(im, severity=10, depth=1))]
    return dict(out, sam_step=sam_check())


def sam_check(steps: int = 6, every: int = 2) -> float:
    """Weights after `steps` steps of SAM (rho 0.5, every 2nd step) then SGDW on a tiny model: ours (`sam_step`, our
    DecoupledSGDW) against Composer's SAMOptimizer around its DecoupledSGDW; relative difference."""
    import torch
    import torch.nn.functional as F
    from composer.algorithms.sam import SAMOptimizer
    from composer.optim import DecoupledSGDW as ComposerSGDW

    from resnet.algorithms import DecoupledSGDW, sam_step
    torch.manual_seed(5)
    data, labels, nets = torch.randn(16, 5), torch.arange(16) % 3, [torch.nn.Linear(5, 3) for _ in range(2)]
    nets[1].load_state_dict(nets[0].state_dict())
    opts = [DecoupledSGDW(nets[0].parameters(), lr=0.5, momentum=0.875, weight_decay=5e-4), SAMOptimizer(
        ComposerSGDW(nets[1].parameters(), lr=0.5, momentum=0.875, weight_decay=5e-4), rho=0.5, interval=every)]

    def closure(i, **_):
        opts[i].zero_grad()
        loss = F.cross_entropy(nets[i](data), labels)
        loss.backward()
        return loss
    for step in range(steps):
        closure(0) if (step + 1) % every else sam_step(nets[0].parameters(), lambda: closure(0), rho=0.5)
        opts[0].step(), opts[1].step(functools.partial(closure, 1))
    return max(float((a - b).abs().max() / b.abs().max()) for a, b in zip(nets[0].parameters(), nets[1].parameters()))

if __name__ == "__main__":
    sys.exit(composer_peer(sys.argv[2]) if sys.argv[1:2] == ["--composer-peer"] else main())
