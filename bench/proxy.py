"""The CPU proxy benchmark (BENCHMARKS.md): time to target of Mild, the Baseline, Mild without each method (VARIANTS).

    python -m bench.proxy OUT [--seeds 1 2 3] [--variants mild baseline ...] [--data DIR] [--folders DIR]
                          [--add-runs JSON ...]     # OUT (new): proxy.json, proxy.png, logs/
    python -m bench.proxy OUT --frontier 0.1 0.2 0.4 [--variants baseline mild medium hot]   # + frontier.png
    python -m bench.proxy OUT --composer [--seeds 1 2 3] [--composer-venv DIR]   # Mild on Composer's Trainer too
"""
import functools
import json
import os
import statistics
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

from bench.common import DEFAULT_CACHE, REPO, figure, mllog_events, parser, synthetic_dataset, write_json
from resnet.data.loaders import declared

CONFIG = REPO / "config_CPU.sh"
BASELINE = ["--recipe", "baseline", "--epochs", 20, "--eval-every-epochs", 4, "--train-crop-px", 56,
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
DEFAULT_VARIANTS = [*VARIANTS][:[*VARIANTS].index("baseline-44")]   # baseline-44 and the ones below: by name
EPOCH_RATIO = {"baseline": 90 / 36, "mild": 1.0, "medium": 135 / 36, "hot": 270 / 36}   # --frontier's recipes
PROXY_MILD_EPOCHS = 28
FAILED = dict(status="failed", minutes=None, evals=[], final_top1=None, epoch_at_stop=None)
COMPOSER_VENV = REPO / ".venv-composer"
COMPOSER_PINS = ("mosaicml==0.32.1", "torch==2.7.0", "torchvision==0.22.0")   # mosaicml 0.32.1 takes torch 2.6-2.7.0


def config_flags(config: Path = CONFIG) -> list[str]:
    """The train flags config_CPU.sh gives (as run_and_time.sh would pass them), without the results folder."""
    from resnet.launch import config_environ, env_to_flags
    environ = config_environ(config, preset={k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "TMPDIR")})
    words = env_to_flags(environ)
    i = words.index("--results-dir") if "--results-dir" in words else len(words)
    return words[:i] + words[i + 2:]


def read_log(path: Path) -> dict:
    """run_start -> run_stop minutes, status, and every evaluation (minutes since run_start, epoch, top-1)."""
    events = mllog_events(path)
    start = next(e["time_ms"] for e in events if e["key"] == "run_start")
    stop = next((e for e in events if e["key"] == "run_stop"), None)
    evals = [dict(minutes=(e["time_ms"] - start) / 60000, epoch=e["metadata"]["epoch_num"], top1=e["value"])
             for e in events if e["key"] == "eval_accuracy"]
    status, value = stop["metadata"]["status"] if stop else "unfinished", {e["key"]: e["value"] for e in events}
    return dict(status=status, minutes=(stop["time_ms"] - start) / 60000 if stop else None, evals=evals,
                final_top1=evals[-1]["top1"] if evals else None, epoch_at_stop=evals[-1]["epoch"] if evals else None,
                images_per_epoch=value["train_samples"] // value["global_batch_size"] * value["global_batch_size"])


def one_run(variant: str, seed: int, base: list[str], data: dict, logs: Path) -> dict:
    """The run's fields (data: {"beton": FFCV folder, "folders": image folders}: its loader gets what it reads)."""
    log, flags = logs / f"{variant}-seed{seed}.txt", list(map(str, VARIANTS[variant]))
    loader = flags[flags.index("--loader") + 1] if "--loader" in flags else "ffcv"
    cmd = [sys.executable, "-m", "resnet.train", *base, *flags, "--data", str(data[declared(loader).reads]),
           "--seed", str(seed), "--log-file", str(log)]
    t0, proc = time.time(), subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    logged = read_log(log) if log.is_file() and ":::MLLOG" in log.read_text() else None
    return dict(exit_code=proc.returncode, wall_s=round(time.time() - t0, 1), command=cmd[1:],
                log=str(log.relative_to(logs.parent)), **(logged or dict(FAILED, error=last_line(proc))))


def last_line(proc: subprocess.CompletedProcess) -> str:
    return (proc.stderr.strip().splitlines() or ["no output"])[-1]


def spread(values: list[float]) -> dict:
    return dict(mean=statistics.mean(values), sd=statistics.stdev(values) if len(values) > 1 else 0.0,
                min=min(values), max=max(values)) if values else dict(mean=None, sd=None, min=None, max=None)


def summarise(runs: list[dict], variants: list[str], ref: str = "mild") -> dict:
    table = {}
    for v in variants:
        mine = [r for r in runs if r["variant"] == v]
        reached = [r for r in mine if r["status"] == "success"]
        table[v] = dict(runs=len(mine), reached=len(reached), minutes=spread([r["minutes"] for r in reached]),
                        epochs=spread([r["epoch_at_stop"] for r in reached]),
                        final_top1=spread([r["final_top1"] for r in mine if r["final_top1"] is not None]),
                        minutes_all=spread([r["minutes"] for r in mine if r["minutes"] is not None]),
                        img_per_s=spread([r["epoch_at_stop"] * r["images_per_epoch"] / 60 / r["minutes"]
                                          for r in reached if r.get("images_per_epoch")]))
    mild = table.get(ref, {}).get("minutes", {}).get("mean")
    for v, row in table.items():
        mean = row["minutes"]["mean"]
        row["time_vs_mild"] = mean / mild if mild and mean and row["reached"] == row["runs"] else None
    return table


def print_table(table: dict, target: float) -> None:
    def fmt(s, digits=2):
        return "-" if s["mean"] is None else f"{s['mean']:.{digits}f} ± {s['sd']:.{digits}f}"
    print(f"\n{'variant':<24} {'reached':>7} {'minutes to ' + str(target):>18} {'epochs':>12} "
          f"{'final top-1':>16} {'time vs Mild':>12} {'img/s':>12}")
    for v, row in table.items():
        ratio = "-" if row["time_vs_mild"] is None else f"{row['time_vs_mild']:.2f}x"
        print(f"{v:<24} {row['reached']:>3}/{row['runs']:<3} {fmt(row['minutes']):>18} {fmt(row['epochs'], 1):>12} "
              f"{fmt(row['final_top1'], 3):>16} {ratio:>12} {fmt(row['img_per_s'], 0):>12}")
    if table.get("baseline", {}).get("time_vs_mild"):
        print(f"Mild is {table['baseline']['time_vs_mild']:.2f}x faster than the Baseline to top-1 > {target}")


def plot_frontier(table: dict, front: list[dict], path: Path) -> None:
    with figure(path, "CPU proxy: final top-1 against training time, each recipe at several budgets (bench.proxy "
                "--frontier)", "minutes (run_start -> run_stop)", "final top-1") as ax:
        for i, recipe in enumerate(EPOCH_RATIO):
            mine = [row for v, row in table.items() if v.startswith(f"{recipe}-x") and row["final_top1"]["mean"]]
            if mine:
                ax.errorbar([r["minutes_all"]["mean"] for r in mine], [r["final_top1"]["mean"] for r in mine],
                            yerr=[r["final_top1"]["sd"] for r in mine], marker="o", capsize=3, color=f"C{i}",
                            label=recipe)
        ax.plot([f["minutes"] for f in front], [f["top1"] for f in front], "k--", lw=1, label="frontier")
        ax.set_xscale("log")


def plot(runs: list[dict], variants: list[str], target: float, path: Path) -> None:
    with figure(path, "CPU proxy: top-1 against time, every seed (bench.proxy)", "minutes since run_start",
                "top-1 (validation)") as ax:
        for i, v in enumerate(variants):
            for j, r in enumerate(x for x in runs if x["variant"] == v):
                ax.plot([e["minutes"] for e in r["evals"]], [e["top1"] for e in r["evals"]], marker=".",
                        color=f"C{i % 10}", lw=2.2 if v in ("mild", "baseline") else 1.0, alpha=0.85,
                        label=v if j == 0 else None)
        ax.axhline(target, color="grey", ls="--", lw=1, label=f"target {target}")


def arguments(argv) -> tuple:
    """(parser, the command line checked); args.variants: what runs (--frontier and --composer name theirs)."""
    p = parser(__doc__, "output folder (must not exist)")
    p.add_argument("--seeds", type=int, nargs="*", default=[1, 2, 3])
    p.add_argument("--variants", nargs="+", default=None, choices=[*VARIANTS, *EPOCH_RATIO], metavar="VARIANT",
                   help=f"any of {', '.join(VARIANTS)} (default: {', '.join(DEFAULT_VARIANTS)})")
    p.add_argument("--data", type=Path, help=f"FFCV folder (default: make benchmark's, made in {DEFAULT_CACHE})")
    p.add_argument("--folders", type=Path, help="its image folders, for the dali variants (default: the default's)")
    p.add_argument("--frontier", type=float, nargs="+", metavar="BUDGET", help="the recipes' frontier at these "
                   f"budgets (--variants then names recipes: {', '.join(EPOCH_RATIO)}, all by default)")
    p.add_argument("--add-runs", type=Path, nargs="+", default=[], metavar="JSON",
                   help="proxy.json files of earlier runs with the same config_CPU.sh flags and other seeds")
    p.add_argument("--composer", action="store_true", help="Mild on Composer's Trainer beside ours (torchvision "
                   "loader both), our methods against composer.functional's")
    p.add_argument("--composer-venv", type=Path, default=COMPOSER_VENV, help=f"made once (default: {COMPOSER_VENV})")
    args = p.parse_args(argv)
    if args.out.exists():
        p.error(f"{args.out} already exists; choose a new folder (results are never overwritten)")
    if args.composer and (args.frontier or args.variants or args.add_runs):
        p.error("--composer runs Mild on both trainers: it takes no --frontier, --variants or --add-runs")
    args.variants = ["mild-torchvision", "composer-mild"] if args.composer else args.variants
    if args.frontier:
        if min(args.frontier) <= 0 or not set(args.variants or EPOCH_RATIO) <= set(EPOCH_RATIO):
            p.error(f"--frontier takes positive budgets and, as --variants, recipes among {', '.join(EPOCH_RATIO)}")
        recipes, args.variants = args.variants or list(EPOCH_RATIO), []
        for budget in args.frontier:   # each recipe's run at each budget, cheapest first, registered in VARIANTS
            for recipe in recipes:
                epochs = max(1, round(PROXY_MILD_EPOCHS * budget * EPOCH_RATIO[recipe]))
                args.variants.append(f"{recipe}-x{budget:g}")
                VARIANTS[args.variants[-1]] = [*(BASELINE if recipe == "baseline" else ["--recipe", recipe]),
                                               "--loader", "torchvision", "--epochs", epochs, "--eval-every-epochs",
                                               epochs, "--warmup-epochs", min(8, epochs / 2), "--target-accuracy", 1.0]
    args.variants = args.variants or DEFAULT_VARIANTS
    return p, args


def main(argv=None) -> int:
    p, args = arguments(argv)
    base, earlier = config_flags(), []
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
    if twice := sorted(pair for pair in set(pairs) if pairs.count(pair) > 1):
        p.error(f"--add-runs: {twice[0][0]} seed {twice[0][1]} would be counted twice; give other seeds")
    if not pairs:
        p.error("nothing to do: give --seeds, or --add-runs to tabulate earlier runs")
    python = args.composer and composer_python(args.composer_venv)     # made before OUT: a refusal leaves none
    folders, ffcv = (None, None) if not args.seeds or (args.data and args.folders) else synthetic_dataset(DEFAULT_CACHE)
    data = dict(beton=args.data or ffcv, folders=args.folders or folders)
    target = float(base[base.index("--target-accuracy") + 1]) if "--target-accuracy" in base else 0.759
    logs = args.out / "logs"
    logs.mkdir(parents=True)
    print("config_CPU.sh flags:", " ".join(base), flush=True)
    for v in args.variants:
        print(f"  {v}: {' '.join(map(str, VARIANTS[v])) or '(config_CPU.sh as is)'}", flush=True)
    runs, t0 = list(earlier), time.time()
    if functional := args.composer and peer(python, dict(kind="functional"), logs / "functional.json"):
        print("composer.functional:", json.dumps(functional), flush=True)
    for seed in args.seeds:
        for v in args.variants:
            run = functools.partial(composer_run, python) if v == "composer-mild" else one_run
            runs.append(r := dict(variant=v, seed=seed, **run(v, seed, base, data, logs)))
            minutes, error = "-" if r["minutes"] is None else f"{r['minutes']:.2f} min", r.get("error")
            print(f"{v:<24} seed {seed}: {r['status']:<8} {minutes:>9}, epoch {r['epoch_at_stop']}, final top-1 "
                  f"{r['final_top1']}, wall {r['wall_s']} s" + (f" ({error})" if error else ""), flush=True)
    table = summarise(runs, args.variants, ref=args.variants[0] if args.composer else "mild")
    print_table(table, target)
    result = dict(config=str(CONFIG.relative_to(REPO)), config_flags=base, data=str(data["beton"]),
                  folders=str(data["folders"]), seeds=sorted({r["seed"] for r in runs}), target=target,
                  added_from=[str(path) for path in args.add_runs], total_minutes=(time.time() - t0) / 60,
                  variants={v: list(map(str, VARIANTS[v])) for v in args.variants}, table=table, runs=runs,
                  **({"functional": functional} if functional else {}))
    if args.frontier:   # the envelope: the runs no cheaper one beats in mean final top-1, in order of mean minutes
        rows = sorted((row["minutes_all"]["mean"], row["final_top1"]["mean"], v) for v, row in table.items()
                      if row["final_top1"]["mean"] is not None)
        result["frontier"] = [dict(variant=v, minutes=minutes, top1=top1) for i, (minutes, top1, v) in enumerate(rows)
                              if all(top1 > cheaper for _, cheaper, _ in rows[:i])]
        plot_frontier(table, result["frontier"], args.out / "frontier.png")
        print("frontier: " + " -> ".join(f"{f['variant']} ({f['top1']:.3f} in {f['minutes']:.2f} min)"
                                         for f in result["frontier"]))
    write_json(args.out / "proxy.json", result)
    plot(runs, args.variants, target, args.out / "proxy.png")
    print(f"wrote {args.out / 'proxy.json'} and {args.out / 'proxy.png'}")
    return 0 if all(r["status"] != "failed" for r in runs) else 1


def composer_python(venv: Path) -> Path:
    """The Python of Composer's venv, made once (COMPOSER_PINS, recorded in it); SystemExit in one line if it cannot."""
    python, made = venv / "bin" / "python", venv / "composer-pins.txt"
    if made.is_file() and made.read_text().split() == list(COMPOSER_PINS):
        return python
    print(f"making {venv} ({', '.join(COMPOSER_PINS)}; ~3 GB the first time)", flush=True)
    for cmd in ([getattr(sys, "_base_executable", sys.executable), "-m", "venv", str(venv)],
                [str(python), "-m", "pip", "install", "--progress-bar", "off", *COMPOSER_PINS]):
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode:
            raise SystemExit(f"error: --composer: could not make {venv} ({' '.join(cmd[1:3])} exit {proc.returncode}: "
                             f"{last_line(proc)}); free the path or give --composer-venv another folder")
    made.write_text("\n".join(COMPOSER_PINS) + "\n")
    return python


def peer(python: Path, job: dict, path: Path) -> dict:
    """The result `job` writes at `path` run in Composer's venv (output in .log beside), or a failed run's fields."""
    job_file, log, t0 = path.with_suffix(".job"), path.with_suffix(".log"), time.time()
    job_file.write_text(json.dumps(dict(job, result=str(path))))
    proc = subprocess.run([str(python), "-m", "bench.proxy", "--composer-peer", str(job_file)], cwd=REPO,
                          env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, text=True)
    log.write_text(proc.stdout + proc.stderr)
    done = path.is_file() and not proc.returncode
    result = json.loads(path.read_text()) if done else dict(FAILED, error=last_line(proc))
    return dict(result, exit_code=proc.returncode, wall_s=round(time.time() - t0, 1), log=str(log))


def composer_run(python: Path, variant: str, seed: int, base: list[str], data: dict, logs: Path) -> dict:
    """The seed's run on Composer's Trainer of the recipe our run of it logged (recipe_fields), as one_run's."""
    log = logs / f"mild-torchvision-seed{seed}.txt"
    events = mllog_events(log) if log.is_file() else []
    recipe = next((e["value"] for e in events if e["key"] == "recipe_fields"), None)
    if recipe is None:
        return dict(wall_s=0.0, **FAILED, error=f"{log.name} logged no recipe to run")
    job = dict(kind="train", recipe=recipe, seed=seed, workers=int(base[base.index("--workers") + 1]),
               folders=str(data["folders"]))
    return peer(python, job, logs / f"{variant}-seed{seed}.json")


def composer_peer(job_path: str) -> int:
    """In Composer's venv: the job (a run on Composer's Trainer, or the functional checks) and its result JSON."""
    from tests.composer_functional import functional_checks   # our methods against Composer's: kept with the tests
    job = json.loads(Path(job_path).read_text())
    result = functional_checks() if job["kind"] == "functional" else composer_train(job)
    versions = {name: metadata.version(name) for name in ("mosaicml", "torch", "torchvision")}
    Path(job["result"]).write_text(json.dumps(dict(result, versions=versions), indent=1) + "\n")
    return 0


def peer_run(evals: list[dict], target: float, images_per_epoch: int) -> dict:
    """A Composer run's evaluations as one_run's fields, up to the first above `target` (success) or all (aborted)."""
    hit = next((i for i, e in enumerate(evals) if e["top1"] > target), None)
    evals = evals if hit is None else evals[:hit + 1]
    return dict(status="aborted" if hit is None else "success", minutes=evals[-1]["minutes"], evals=evals,
                final_top1=evals[-1]["top1"], epoch_at_stop=evals[-1]["epoch"], images_per_epoch=images_per_epoch)


def composer_train(job: dict) -> dict:
    """In Composer's venv: the recipe's run on Composer's Trainer (our model and loader), FIT_START to the target."""
    import torch
    from composer import Callback, Trainer, algorithms as ca
    from composer.loss import binary_cross_entropy_with_logits
    from composer.models import ComposerClassifier
    from composer.optim import CosineAnnealingWithWarmupScheduler, DecoupledSGDW

    from resnet.data.loaders import LoaderSpec, make_loaders
    from resnet.model import initialise, resnet_cpu
    from resnet.recipe import Plan, Recipe
    r, seed, evals = Recipe(**job["recipe"]), job["seed"], []
    spec = LoaderSpec.from_recipe(r, batch_size=r.global_batch_size, workers=job["workers"], seed=seed)
    train, val, info = make_loaders(job["folders"], spec, "torchvision")
    plan = Plan(r, info.num_classes, info.train_samples, info.eval_samples, world_size=1)
    torch.manual_seed(seed)
    net = resnet_cpu(info.num_classes)
    initialise(net, info.num_classes, r.log_bias_init)

    class Clock(Callback):
        def fit_start(self, state, logger):
            self.t0 = time.time()

        def eval_end(self, state, logger):
            top1 = float(state.eval_metrics["eval"]["MulticlassAccuracy"].compute())
            evals.append(dict(minutes=(time.time() - self.t0) / 60, epoch=int(state.timestamp.epoch), top1=top1))
            if top1 > r.target_accuracy:
                state.stop_training()
    model = ComposerClassifier(net, num_classes=info.num_classes, loss_fn=binary_cross_entropy_with_logits)
    methods = [ca.BlurPool(min_channels=16), ca.ChannelsLast(), ca.LabelSmoothing(r.label_smoothing),
               ca.ProgressiveResizing(initial_scale=r.resize_initial_scale, delay_fraction=r.resize_delay,
                                      finetune_fraction=r.resize_finetune, size_increment=r.resize_increment_px),
               ca.EMA(half_life=None, smoothing=plan.ema_decay, update_interval=f"{plan.ema_every_steps}ba")]
    Trainer(model=model, train_dataloader=train, eval_dataloader=val, max_duration=f"{r.epochs}ep",
            optimizers=DecoupledSGDW(model.parameters(), r.peak_lr, momentum=r.momentum, weight_decay=r.weight_decay),
            schedulers=CosineAnnealingWithWarmupScheduler(t_warmup=f"{plan.warmup_steps}ba", alpha_f=0.0),
            step_schedulers_every_batch=True, algorithms=methods, eval_interval=f"{r.eval_every_epochs}ep", seed=seed,
            device="cpu", precision="fp32", callbacks=[Clock()], loggers=[], progress_bar=False).fit()
    return peer_run(evals, r.target_accuracy, plan.steps_per_epoch * r.global_batch_size)


if __name__ == "__main__":
    raise SystemExit(composer_peer(sys.argv[2]) if sys.argv[1:2] == ["--composer-peer"] else main())
