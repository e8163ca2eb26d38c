"""The projection: minutes to train for N devices of the model measured, from rates measured on one of them,
saying what it measured and what it assumed.

    python -m bench.projection --session OUT/session.json [--gpus 8] [--bus-gb-s 400] [--overlap 0.8]
    python -m bench.projection --config config_CPU.sh --train-images 1280 --val-images 960 --classes 16 --gpus 1
                                                    # measure here (the CPU proxy's validation)

Counts are flags (default ImageNet's: 1,281,167 / 50,000 / 1,000), never a subset's, and give the trainer's real
steps per epoch (train images // global batch) and EMA cadence (`Plan.ema_every_steps`). Per epoch at side px:
  model s  = steps x (per-device batch / model img/s at px + exposed all-reduce) + EMA updates x EMA s
  loader s = images per rank / loader img/s per rank
  epoch s  = max(model s, loader s) + the loader's start (paid every epoch: a new epoch's first batch)
The loader and the model overlap fully (the loader runs ahead in its own workers), so the slower bounds the epoch.
An evaluation adds validation images per rank / evaluation img/s + the validation loader's start. The all-reduce
of DDP's fp32 gradients each step: 2 (N-1)/N x gradient bytes / bus bandwidth (nccl-tests' busbw), of which
(1 - overlap) is exposed (the rest hides behind the backward pass); both assumed, printed.
"""
import argparse
import json
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MOSAICML_LOGS = REPO / "tests" / "data" / "peer_logs" / "v2.0" / "MosaicML" / "8xA100_80GB-methods"
IMAGENET = dict(train_images=1_281_167, val_images=50_000, classes=1000)


def _events(path: Path) -> list:
    return [json.loads(line.split(":::MLLOG", 1)[1]) for line in path.read_text().splitlines()
            if ":::MLLOG" in line]


def log_times(path: Path) -> dict:
    """One MLPerf log's epoch seconds {completed epoch: s} (epoch_start N -> epoch_stop N+1, as both MosaicML
    and we number them), evaluation seconds {epoch: s} and the epoch at which run_stop said success (or None)."""
    started, epochs, evals, eval_started, success = {}, {}, {}, {}, None
    for e in _events(path):
        key, n = e["key"], (e.get("metadata") or {}).get("epoch_num")
        if key == "epoch_start":
            started[n] = e["time_ms"]
        elif key == "epoch_stop" and n - 1 in started:
            epochs[n] = (e["time_ms"] - started[n - 1]) / 1000
        elif key == "eval_start":
            eval_started[n] = e["time_ms"]
        elif key == "eval_stop" and n in eval_started:
            evals[n] = (e["time_ms"] - eval_started[n]) / 1000
        elif key == "run_stop" and e["metadata"].get("status") == "success":
            success = max(evals) if evals else max(epochs, default=None)
    return dict(epochs=epochs, evals=evals, success_epoch=success)


def peer_times(folder: Path = MOSAICML_LOGS) -> dict:
    """Median over a folder's result logs of each epoch's seconds and of the evaluation seconds, and the epoch
    at which the runs passed (the most common one)."""
    logs = [log_times(p) for p in sorted(folder.glob("result_*.txt"))]
    if not logs:
        raise FileNotFoundError(f"{folder}: no result_*.txt logs")
    passed = [log["success_epoch"] for log in logs if log["success_epoch"]]

    def median(key):
        return {n: statistics.median(log[key][n] for log in logs if n in log[key])
                for n in sorted({n for log in logs for n in log[key]})}
    return dict(epoch_s=median("epochs"), eval_s=median("evals"),
                success_epoch=statistics.mode(passed) if passed else None, logs=len(logs))


def allreduce_s(params: int, gpus: int, bus_gb_s: float) -> float:
    """One ring all-reduce of the fp32 gradients: 2 (N-1)/N x bytes / bus bandwidth (0 on one device)."""
    return 2 * (gpus - 1) / gpus * params * 4 / (bus_gb_s * 1e9)


def project(plan, rates: dict, through_epoch: int, overlap: float, bus_gb_s: float, params: int,
            peer: dict | None = None) -> dict:
    """Rows per epoch 1..through_epoch and the total minutes. rates: model_img_s {px: per device} for every side
    the schedule uses; loader_img_s (per rank), loader_start_s, val_start_s, eval_img_s, ema_update_s."""
    recipe, steps, batch = plan.recipe, plan.steps_per_epoch, plan.per_device_batch
    exposed = (1 - overlap) * allreduce_s(params, plan.world_size, bus_gb_s)
    eval_images = -(-plan.eval_samples // plan.world_size)
    rows = []
    for e in range(through_epoch):
        px = recipe.resolution_px(e)
        ema_s = (steps // plan.ema_every_steps if recipe.ema else 0) * rates["ema_update_s"]
        model_s = steps * (batch / rates["model_img_s"][px] + exposed) + ema_s
        loader_s = steps * batch / rates["loader_img_s"]
        evaluates = recipe.evaluates_after(e)
        eval_s = eval_images / rates["eval_img_s"] + rates["val_start_s"] if evaluates else 0.0
        peer_s = (peer or {}).get("epoch_s", {}).get(e + 1)
        if peer_s is not None and evaluates:
            peer_s += peer["eval_s"].get(e + 1, 0.0)
        rows.append(dict(epoch=e + 1, px=px, model_s=round(model_s, 2), loader_s=round(loader_s, 2),
                         bound="model" if model_s >= loader_s else "loader", ema_s=round(ema_s, 2),
                         eval_s=round(eval_s, 2),
                         minutes=round((max(model_s, loader_s) + rates["loader_start_s"] + eval_s) / 60, 4),
                         peer_minutes=None if peer_s is None else round(peer_s / 60, 4)))
    peer_total = sum(r["peer_minutes"] for r in rows) if peer and all(r["peer_minutes"] for r in rows) else None
    return dict(rows=rows, through_epoch=through_epoch, steps_per_epoch=steps, ema_every_steps=plan.ema_every_steps,
                allreduce_exposed_ms=round(exposed * 1e3, 3), total_minutes=round(sum(r["minutes"] for r in rows), 3),
                peer_total_minutes=None if peer_total is None else round(peer_total, 3))


HEADER = (f"{'epoch':>5} {'px':>4} {'model s':>8} {'loader s':>9} {'bound':>6} {'EMA s':>6} {'eval s':>7} "
          f"{'minutes':>8} {'MosaicML 8xA100 min':>20}")


def table(p: dict, title: str, assumed: list[str]) -> str:
    """The projection as text: its title, what it assumed, one line per epoch, the total (parse_table reads it)."""
    out = [f"projection: {title}", *(f"  assumed: {a}" for a in assumed), HEADER]
    for r in p["rows"]:
        peer = "-" if r["peer_minutes"] is None else f"{r['peer_minutes']:.3f}"
        out.append(f"{r['epoch']:5d} {r['px']:4d} {r['model_s']:8.2f} {r['loader_s']:9.2f} {r['bound']:>6} "
                   f"{r['ema_s']:6.2f} {r['eval_s']:7.2f} {r['minutes']:8.3f} {peer:>20}")
    peer = p["peer_total_minutes"]
    out.append(f"projected time to train through epoch {p['through_epoch']}: {p['total_minutes']:.2f} min"
               + ("" if peer is None else f" (MosaicML's published 8x A100 epochs and evaluations, another GPU "
                                          f"model: {peer:.2f} min)"))
    return "\n".join(out)


def parse_table(text: str) -> dict:
    """The rows and the total back from `table`'s text (what a test or a later session reads)."""
    import re

    rows = []
    for line in text.splitlines():
        m = re.fullmatch(r"\s*(\d+)\s+(\d+)\s+([\d.]+)\s+([\d.]+)\s+(model|loader)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)"
                         r"\s+(\S+)", line)
        if m:
            rows.append(dict(epoch=int(m[1]), px=int(m[2]), model_s=float(m[3]), loader_s=float(m[4]), bound=m[5],
                             ema_s=float(m[6]), eval_s=float(m[7]), minutes=float(m[8]),
                             peer_minutes=None if m[9] == "-" else float(m[9])))
    total = re.search(r"projected time to train through epoch (\d+): ([\d.]+) min", text)
    return dict(rows=rows, through_epoch=int(total[1]) if total else None,
                total_minutes=float(total[2]) if total else None)


def interpolate(rates: dict, sides: list) -> dict:
    """{px: images/s} at every side from those measured: seconds per image linear in px^2 (the work of a
    convolutional network grows with the area) between the two nearest measured sides."""
    known = sorted(rates)
    out = {}
    for px in sides:
        lo = max([k for k in known if k <= px], default=known[0])
        hi = min([k for k in known if k >= px], default=known[-1])
        w = 0 if lo == hi else (px * px - lo * lo) / (hi * hi - lo * lo)
        out[px] = 1 / ((1 - w) / rates[lo] + w / rates[hi])
    return out


def config_plan(config: Path, counts: dict, gpus: int | None):
    """(train args, Plan) of a config_<SYSTEM>.sh as the trainer reads it, for these image and class counts and
    `gpus` devices (default: the config's world size)."""
    import os
    import subprocess

    from resnet.launch import env_to_flags, world_size_from_env
    from resnet.recipe import Plan
    from resnet.settings import add_train_arguments, read, recipe_from_args

    out = subprocess.run(["bash", "-c", 'set -a; source "$1" >/dev/null; env -0', "_", str(config)],
                         env=dict(os.environ), capture_output=True, text=True, check=True, cwd=REPO)
    environ = dict(item.split("=", 1) for item in out.stdout.split("\0") if "=" in item)
    world = gpus or world_size_from_env(environ)
    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    args = parser.parse_args(env_to_flags(environ))
    read(args)
    recipe = recipe_from_args(args, world)
    return args, Plan(recipe, counts["classes"], counts["train_images"], counts["val_images"], world)


def measure_here(args, plan, sides, smoke: bool) -> dict:
    """The rates of the config on this machine (the CPU proxy's validation): ours at 3 sides (the others
    interpolated), the config's loader, the evaluation forward and one EMA update."""
    import torch

    from bench import loaders, steps
    from bench.common import time_steps
    from resnet import train

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    t = train.build_training(plan, device)
    batch, r = plan.per_device_batch, plan.recipe
    images, labels = steps.loaded_batch(device, r.precision, batch, r.train_crop_px)
    n = (2, 4) if smoke else (5, 20)
    model = {px: batch / time_steps(lambda: train.train_step(t, images, labels, px), device, *n)["step_s"]
             for px in sorted({sides[0], sides[len(sides) // 2], sides[-1]})}
    ns = argparse.Namespace(data=args.data, batch_size=batch, crop=r.train_crop_px, eval_crop=r.eval_crop_px,
                            eval_resize=r.eval_resize_px, workers=args.workers, spec=[], precision=r.precision,
                            warmup=2, batches=10 if smoke else 40)
    loader = loaders.measure(ns, args.loader, str(device))
    return dict(device=str(device), model_img_s=interpolate(model, sides), loader_img_s=loader["img_s"],
                loader_start_s=loader["first_batch_s"], val_start_s=loader["val_first_batch_s"],
                **steps.ema_and_eval(t, plan, device, batch, *n))


def session_rates(session: dict, precision: str, sides: list, cores_per_gpu: int | None) -> tuple[dict, list]:
    """(rates, assumptions) from a first-session JSON: ours eager in `precision` (sides not reached are
    interpolated), the torchvision loader on that machine's cores scaled to `cores_per_gpu`, EMA and evaluation."""
    parts = session["parts"]
    eager = [r for r in parts["eager"]["rows"] if r.get("loop") == "ours" and not r["compiled"]]
    if not eager:
        raise ValueError("the session measured no eager step of ours: nothing to project")
    precision = precision if any(r["precision"] == precision for r in eager) else eager[0]["precision"]
    model = {r["px"]: r["img_s"] for r in eager if r["precision"] == precision}
    loader = next(r for r in parts["loader"]["rows"] if r["loader"] == "torchvision")
    ema = parts["ema_eval"]["rows"][0]
    cores = session["cores"]
    scale = (cores_per_gpu or cores) / cores
    rates = dict(model_img_s=interpolate(model, sides), loader_img_s=loader["img_s"] * scale,
                 loader_start_s=loader["first_batch_s"], val_start_s=loader["val_first_batch_s"],
                 eval_img_s=ema["eval_img_s"], ema_update_s=ema["ema_update_s"])
    return rates, [f"model: ours eager {precision}, measured at {len(model)} of {len(sides)} sides "
                   "(the rest interpolated in px^2)",
                   f"loader: torchvision with {loader['workers']} workers on {cores} cores, "
                   f"x {scale:.2f} for {cores_per_gpu or cores} cores per GPU"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--session", type=Path, help="a first session's session.json: project its GPU")
    src.add_argument("--config", type=Path, help="measure this config_<SYSTEM>.sh here and project it")
    p.add_argument("--gpus", type=int, help="devices of the model measured (default 8; --config: the config's)")
    p.add_argument("--cores-per-gpu", type=int, help="--session: CPU cores per GPU there (default: as measured)")
    p.add_argument("--bus-gb-s", type=float, default=400.0, help="all-reduce bus bandwidth, GB/s (assumed; "
                   "default 400: NVLink 4 nccl-tests busbw order)")
    p.add_argument("--overlap", type=float, default=0.8, help="share of the all-reduce hidden by backward")
    p.add_argument("--train-images", type=int, default=IMAGENET["train_images"])
    p.add_argument("--val-images", type=int, default=IMAGENET["val_images"])
    p.add_argument("--classes", type=int, default=IMAGENET["classes"])
    p.add_argument("--through-epoch", type=int, help="default: MosaicML's runs' epoch of success (27)")
    p.add_argument("--smoke", action="store_true", help="--config: few steps (a test's budget)")
    p.add_argument("--out", type=Path, help="also write the projection as JSON (must not exist)")
    args = p.parse_args(argv)
    print(report(args)["text"], flush=True)
    return 0


def report(args) -> dict:
    """The projection `main` prints (and writes with --out): rates measured or read, the plan, the table."""
    from bench.common import write_json
    from resnet.recipe import Plan, get_recipe

    counts = dict(train_images=args.train_images, val_images=args.val_images, classes=args.classes)
    peer = peer_times()
    through = args.through_epoch or peer["success_epoch"]
    if args.session:
        session = json.loads(args.session.read_text())
        recipe = get_recipe("mild")
        plan = Plan(recipe, args.classes, args.train_images, args.val_images, args.gpus or 8)
        sides = [recipe.resolution_px(e) for e in range(through)]
        rates, assumed = session_rates(session, recipe.precision, sides, args.cores_per_gpu)
        name = session["device"]
    else:
        train_args, plan = config_plan(args.config, counts, args.gpus)
        sides = [plan.recipe.resolution_px(e) for e in range(through)]
        rates = measure_here(train_args, plan, sides, args.smoke)
        assumed, name = [f"model: ours at 3 sides here (the rest interpolated), {args.config.name}"], rates["device"]
    from resnet.model import build_model

    params = sum(p.numel() for p in build_model(plan.recipe, plan.num_classes).parameters())
    assumed += [f"all-reduce: {params * 4 / 1e6:.0f} MB of fp32 gradients a step at {args.bus_gb_s:g} GB/s bus "
                f"bandwidth, {args.overlap:.0%} hidden by backward", "loader and model overlap fully "
                "(the slower bounds each epoch); loader start paid every epoch and every evaluation",
                f"{args.train_images} training / {args.val_images} validation images, {args.classes} classes: "
                f"{plan.steps_per_epoch} steps an epoch, the EMA every {plan.ema_every_steps}"]
    result = project(plan, rates, through, args.overlap, args.bus_gb_s, params,
                     peer if plan.recipe.arch == "resnet50" else None)
    title = f"{plan.world_size}x {name}, batch {plan.per_device_batch} each, {plan.recipe.precision}"
    result.update(title=title, assumed=assumed, rates={k: v for k, v in rates.items() if k != "model_img_s"},
                  text=table(result, title, assumed))
    if getattr(args, "out", None):
        write_json(args.out, result)
    return result


if __name__ == "__main__":
    sys.exit(main())
