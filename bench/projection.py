"""The projection: minutes to train on N devices from rates measured on one, saying what it assumed (BENCHMARKS.md).

    python -m bench.projection --session OUT/session.json [--gpus 8] [--bus-gb-s 400] [--overlap 0.8]
    python -m bench.projection --config config_CPU.sh --train-images 1280 --val-images 960 --classes 16   # measure here
Counts are flags (default ImageNet's), never a subset's: they give the trainer's steps per epoch and EMA cadence.
"""
import argparse
import json
import os
import statistics
from pathlib import Path
from types import SimpleNamespace

from bench import loaders, steps
from bench.common import IMAGENET, REPO, device, mllog_events, parser
from resnet import train
from resnet.data.loaders import LoaderSpec
from resnet.launch import config_environ, env_to_flags, world_size_from_env
from resnet.model import build_model
from resnet.recipe import Plan, get_recipe
from resnet.settings import add_train_arguments, read, recipe_from_args

MOSAICML_LOGS = REPO / "tests" / "data" / "peer_logs" / "v2.0" / "MosaicML" / "8xA100_80GB-methods"


def log_times(path: Path) -> dict:
    """One MLPerf log's seconds of each epoch and evaluation {epoch: s}, and the epoch of success (or None)."""
    events = mllog_events(path)
    ms = {(e["key"], (e.get("metadata") or {}).get("epoch_num")): e["time_ms"] for e in events}

    def seconds(stop, start, back):   # {N: s} from `start` at N - back to `stop` at N
        return {n: (t - ms[start, n - back]) / 1000 for (key, n), t in ms.items()
                if key == stop and (start, n - back) in ms}
    epochs, evals = seconds("epoch_stop", "epoch_start", 1), seconds("eval_stop", "eval_start", 0)
    passed = any(e["key"] == "run_stop" and e["metadata"].get("status") == "success" for e in events)
    return dict(epochs=epochs, evals=evals, success_epoch=max(evals or epochs, default=None) if passed else None)


def peer_times(folder: Path = MOSAICML_LOGS) -> dict:
    """Median epoch and evaluation seconds over a folder's result logs, and their most common epoch of success."""
    logs = [log_times(p) for p in sorted(folder.glob("result_*.txt"))]
    if not logs:
        raise FileNotFoundError(f"{folder}: no result_*.txt logs")
    passed = [log["success_epoch"] for log in logs if log["success_epoch"]]

    def median(key):
        return {n: statistics.median(log[key][n] for log in logs if n in log[key])
                for n in sorted({n for log in logs for n in log[key]})}
    return dict(epoch_s=median("epochs"), eval_s=median("evals"),
                success_epoch=statistics.mode(passed) if passed else None, logs=len(logs))


def project(plan, rates: dict, through_epoch: int, overlap: float, bus_gb_s: float, params: int, peer=None) -> dict:
    """Rows per epoch 1..through_epoch and the total minutes, from `rates` (session_rates'; img/s a device or rank)."""
    recipe, n, batch = plan.recipe, plan.steps_per_epoch, plan.per_device_batch
    world = plan.world_size   # one ring all-reduce of the fp32 gradients a step: 2 (N-1)/N x bytes / bus bandwidth
    exposed = (1 - overlap) * 2 * (world - 1) / world * params * 4 / (bus_gb_s * 1e9)
    eval_images, rows = -(-plan.eval_samples // world), []
    ema_s = (n // plan.ema_every_steps if recipe.ema else 0) * rates["ema_update_s"]   # every epoch the same
    loader_s = n * batch / rates["loader_img_s"]
    for e in range(through_epoch):
        px, evaluates = recipe.resolution_px(e), recipe.evaluates_after(e)
        model_s = n * (batch / rates["model_img_s"][px] + exposed) + ema_s
        eval_s = eval_images / rates["eval_img_s"] + rates["val_start_s"] if evaluates else 0.0
        peer_s = (peer or {}).get("epoch_s", {}).get(e + 1)
        if peer_s is not None and evaluates:
            peer_s += peer["eval_s"].get(e + 1, 0.0)
        start_s = rates["first_start_s" if e == 0 else "loader_start_s"]
        rows.append(dict(epoch=e + 1, px=px, model_s=round(model_s, 2), loader_s=round(loader_s, 2),
                         bound="model" if model_s >= loader_s else "loader", ema_s=round(ema_s, 2),
                         eval_s=round(eval_s, 2), minutes=round((max(model_s, loader_s) + start_s + eval_s) / 60, 4),
                         peer_minutes=None if peer_s is None else round(peer_s / 60, 4)))
    peer_total = round(sum(r["peer_minutes"] for r in rows), 3) if all(r["peer_minutes"] for r in rows) else None
    return dict(rows=rows, through_epoch=through_epoch, steps_per_epoch=n, ema_every_steps=plan.ema_every_steps,
                allreduce_exposed_ms=round(exposed * 1e3, 3), total_minutes=round(sum(r["minutes"] for r in rows), 3),
                peer_total_minutes=peer_total)


def table(p: dict, title: str, assumed: list[str]) -> str:
    """The projection as text: its title, what it assumed, one line per epoch, the total."""
    out = [f"projection: {title}", *(f"  assumed: {a}" for a in assumed), f"{'epoch':>5} {'px':>4} {'model s':>8} "
           f"{'loader s':>9} {'bound':>6} {'EMA s':>6} {'eval s':>7} {'minutes':>8} {'MosaicML 8xA100 min':>20}"]
    for r in p["rows"]:
        peer = "-" if r["peer_minutes"] is None else f"{r['peer_minutes']:.3f}"
        out.append(f"{r['epoch']:5d} {r['px']:4d} {r['model_s']:8.2f} {r['loader_s']:9.2f} {r['bound']:>6} "
                   f"{r['ema_s']:6.2f} {r['eval_s']:7.2f} {r['minutes']:8.3f} {peer:>20}")
    peer = p["peer_total_minutes"]
    out.append(f"projected time to train through epoch {p['through_epoch']}: {p['total_minutes']:.2f} min"
               + ("" if peer is None else f" (MosaicML's published 8x A100 epochs and evaluations, another GPU "
                                          f"model: {peer:.2f} min)"))
    return "\n".join(out)


def interpolate(rates: dict, sides: list) -> dict:
    """{px: images/s} at every side: s/image linear in px^2 (work grows with area) between measured ones, flat past."""
    import numpy as np
    known = sorted(rates)
    s = np.interp([px * px for px in sides], [k * k for k in known], [1 / rates[k] for k in known])
    return {px: float(1 / v) for px, v in zip(sides, s)}


def measure_here(args, plan, sides: list) -> dict:
    """The config's rates measured here as a first session records them: ours at 3 sides, loader, EMA, evaluation."""
    dev, batch, rows, ema = device(), plan.per_device_batch, [], []
    t, s = train.build_training(plan, dev), SimpleNamespace(device=dev, warmup=5, steps=20)
    steps.timed_sides(steps.ours_at(t, plan, dev), sorted({sides[0], sides[len(sides) // 2], sides[-1]}), dev,
                      batch, 5, 20, rows.append, loop="ours", precision=plan.recipe.precision, compiled=False)
    spec = LoaderSpec.from_recipe(plan.recipe, batch_size=batch, workers=args.workers, device=str(dev))
    loader = loaders.measure(args.loader, Path(args.data), spec, 2, 40)
    steps.ema_eval(s, ema.append, (t, plan))
    return dict(device=str(dev), cores=len(os.sched_getaffinity(0)),
                parts=dict(eager=dict(rows=rows), loader=dict(rows=[loader]), ema_eval=dict(rows=ema)))


def session_rates(session: dict, precision: str, sides: list, cores_per_gpu: int | None) -> tuple[dict, list]:
    """(rates, assumptions) of a session: ours eager, interpolated; its first loader scaled to `cores_per_gpu`."""
    parts = session["parts"]
    eager = [r for r in parts["eager"]["rows"] if r.get("loop") == "ours" and not r["compiled"]]
    if not eager:
        raise SystemExit("projection: error: the session measured no eager step of ours: nothing to project")
    precision = precision if any(r["precision"] == precision for r in eager) else eager[0]["precision"]
    model = {r["px"]: r["img_s"] for r in eager if r["precision"] == precision}
    loader, ema, cores = parts["loader"]["rows"][0], parts["ema_eval"]["rows"][0], session["cores"]
    scale = (cores_per_gpu or cores) / cores
    rates = dict(precision=precision, model_img_s=interpolate(model, sides), loader_img_s=loader["img_s"] * scale,
                 first_start_s=loader["first_batch_s"], loader_start_s=loader["epoch_start_s"],
                 val_start_s=loader["val_first_batch_s"], eval_img_s=ema["eval_img_s"],
                 ema_update_s=ema["ema_update_s"])
    return rates, [f"model: ours eager {precision}, measured at {len(model)} of {len(sides)} sides (the rest "
                   "interpolated in px^2)", f"loader: {loader['loader']} with {loader['workers']} workers on {cores} "
                   f"cores, x {scale:.2f} for {cores_per_gpu or cores} cores per GPU"]


def parse_args(argv=None):
    p = parser(__doc__, None, **IMAGENET)   # the counts: --classes, --train-images, --val-images
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--session", type=Path, help="a first session's session.json: project its GPU")
    src.add_argument("--config", type=Path, help="measure this config_<SYSTEM>.sh here and project it")
    p.add_argument("--gpus", type=int, help="devices of the model measured (default 8; --config: the config's)")
    p.add_argument("--cores-per-gpu", type=int, help="--session: CPU cores per GPU there (default: as measured)")
    p.add_argument("--bus-gb-s", type=float, default=400.0, help="all-reduce bus GB/s, assumed (NVLink 4's busbw)")
    p.add_argument("--overlap", type=float, default=0.8, help="share of the all-reduce hidden by backward")
    p.add_argument("--through-epoch", type=int, help="default: MosaicML's runs' epoch of success (27)")
    return p.parse_args(argv)


def report(args, session: dict | None = None) -> dict:
    """The projection (its `text`: the table printed): rates measured or read, the plan, the rows."""
    peer = peer_times()
    through = args.through_epoch or peer["success_epoch"]
    train_args, recipe, world = None, get_recipe("mild"), args.gpus or 8
    if args.config:   # the config as the trainer reads it (a setting exported here overrides the config's)
        environ, train_parser = config_environ(args.config, preset=dict(os.environ)), argparse.ArgumentParser()
        add_train_arguments(train_parser)
        train_args = train_parser.parse_args(env_to_flags(environ))
        read(train_args)
        world = args.gpus or world_size_from_env(environ)
        recipe = recipe_from_args(train_args, world)
    plan = Plan(recipe, args.classes, args.train_images, args.val_images, world)
    sides = [plan.recipe.resolution_px(e) for e in range(through)]
    if not session:
        session = measure_here(train_args, plan, sides) if args.config else json.loads(args.session.read_text())
    rates, assumed = session_rates(session, plan.recipe.precision, sides, args.cores_per_gpu)
    params = sum(p.numel() for p in build_model(plan.recipe, plan.num_classes).parameters())
    assumed += [f"all-reduce: {params * 4 / 1e6:.0f} MB of fp32 gradients a step at {args.bus_gb_s:g} GB/s bus "
                f"bandwidth, {args.overlap:.0%} hidden by backward", "loader and model overlap fully "
                "(the slower bounds each epoch); loader start paid every epoch (the first's once) and every evaluation",
                f"{args.train_images} training / {args.val_images} validation images, {args.classes} classes: "
                f"{plan.steps_per_epoch} steps an epoch, the EMA every {plan.ema_every_steps}"]
    result = project(plan, rates, through, args.overlap, args.bus_gb_s, params,
                     peer if plan.recipe.arch == "resnet50" else None)
    title = f"{plan.world_size}x {session['device']}, batch {plan.per_device_batch} each, {rates['precision']}"
    result.update(title=title, assumed=assumed, rates={k: v for k, v in rates.items() if k != "model_img_s"},
                  text=table(result, title, assumed))
    return result


if __name__ == "__main__":
    print(report(parse_args())["text"])
