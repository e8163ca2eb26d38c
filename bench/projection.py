"""The projection `gpu_check.py --project` prints: minutes per epoch and the time to train of a config, from rates
measured on this machine, next to MosaicML's per-epoch times read from their submitted logs.

An epoch of side px costs (images per rank) / min(model rate at px, loader rate) per rank: the loader runs ahead
of the model in its own threads, so the slower of the two bounds the epoch, and the bound is named per epoch. An
evaluation costs (validation images per rank) / (fp32 evaluation rate). The first batch of each loader pays
FFCV's pipeline compilation inside the timed region (the loaders are built before run_start, but compile on
their first iteration): counted once as start-up. The trainer's own per-step extras beyond `train_step` (its
checks, the progress line) are not: bench/trainer_overhead.py measures those.
"""
import json
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MOSAICML_LOGS = REPO / "tests" / "data" / "peer_logs" / "v2.0" / "MosaicML" / "8xA100_80GB-methods"


def _events(path: Path) -> list:
    return [json.loads(line.split(":::MLLOG", 1)[1]) for line in path.read_text().splitlines()
            if ":::MLLOG" in line]


def log_times(path: Path) -> dict:
    """One MLPerf log's epoch seconds {completed epoch: s} (epoch_start N -> epoch_stop N+1, as both MosaicML
    and we number them), evaluation seconds {epoch: s} and the epoch at which run_stop said success (or None)."""
    started, epochs, evals, eval_started, success = {}, {}, {}, {}, None
    for e in _events(path):
        key, meta = e["key"], e.get("metadata") or {}
        if key == "epoch_start":
            started[meta["epoch_num"]] = e["time_ms"]
        elif key == "epoch_stop" and meta["epoch_num"] - 1 in started:
            epochs[meta["epoch_num"]] = (e["time_ms"] - started[meta["epoch_num"] - 1]) / 1000
        elif key == "eval_start":
            eval_started[meta["epoch_num"]] = e["time_ms"]
        elif key == "eval_stop" and meta["epoch_num"] in eval_started:
            evals[meta["epoch_num"]] = (e["time_ms"] - eval_started[meta["epoch_num"]]) / 1000
        elif key == "run_stop" and meta.get("status") == "success":
            success = max(evals) if evals else max(epochs, default=None)
    return dict(epochs=epochs, evals=evals, success_epoch=success)


def peer_times(folder: Path = MOSAICML_LOGS) -> dict:
    """Median over a folder's result logs of each epoch's seconds and of the evaluation seconds, and the epoch
    at which the runs passed (the most common one)."""
    logs = [log_times(p) for p in sorted(folder.glob("result_*.txt"))]
    if not logs:
        raise FileNotFoundError(f"{folder}: no result_*.txt logs")
    numbers = sorted({n for log in logs for n in log["epochs"]})
    passed = [log["success_epoch"] for log in logs if log["success_epoch"]]
    return dict(epoch_s={n: statistics.median(log["epochs"][n] for log in logs if n in log["epochs"])
                         for n in numbers},
                eval_s={n: statistics.median(log["evals"][n] for log in logs if n in log["evals"])
                        for n in sorted({n for log in logs for n in log["evals"]})},
                success_epoch=statistics.mode(passed) if passed else None, logs=len(logs))


@dataclass
class EpochRow:
    epoch: int                 # completed epochs after it (1-based, as the MLPerf log)
    px: int
    model_img_s: float         # per rank
    loader_img_s: float        # per rank
    bound: str                 # "model" or "loader"
    eval_s: float
    minutes: float
    peer_minutes: float | None


def project(recipe, images_per_rank: int, eval_images_per_rank: int, model_rate: dict, loader_rate: float,
            eval_rate: float, through_epoch: int, startup_s: float, peer: dict | None = None) -> dict:
    """Rows per epoch 1..through_epoch and the total minutes. model_rate: {px: images/s per rank} for every
    side the schedule uses; loader_rate and eval_rate: images/s per rank."""
    rows = []
    for e in range(through_epoch):
        px = recipe.resolution_px(e)
        rate = min(model_rate[px], loader_rate)
        eval_s = eval_images_per_rank / eval_rate if recipe.evaluates_after(e) else 0.0
        peer_s = (peer or {}).get("epoch_s", {}).get(e + 1)
        if peer_s is not None and recipe.evaluates_after(e):
            peer_s += peer["eval_s"].get(e + 1, 0.0)
        rows.append(EpochRow(e + 1, px, round(model_rate[px], 1), round(loader_rate, 1),
                             "model" if model_rate[px] <= loader_rate else "loader", round(eval_s, 2),
                             round((images_per_rank / rate + eval_s) / 60, 4),
                             None if peer_s is None else round(peer_s / 60, 4)))
    total = startup_s / 60 + sum(r.minutes for r in rows)
    peer_total = sum(r.peer_minutes for r in rows) if peer and all(r.peer_minutes is not None for r in rows) \
        else None
    return dict(rows=[asdict(r) for r in rows], startup_s=round(startup_s, 2), through_epoch=through_epoch,
                total_minutes=round(total, 3), peer_total_minutes=None if peer_total is None else round(peer_total, 3))


HEADER = f"{'epoch':>5} {'px':>4} {'model img/s':>12} {'loader img/s':>13} {'bound':>6} {'eval s':>7} " \
         f"{'minutes':>8} {'MosaicML min':>13}"


def table(projection: dict, title: str) -> str:
    """The projection as text: one line per epoch, then the total (parse_table reads it back)."""
    out = [f"projection: {title}", HEADER]
    for r in projection["rows"]:
        peer = "-" if r["peer_minutes"] is None else f"{r['peer_minutes']:.3f}"
        out.append(f"{r['epoch']:5d} {r['px']:4d} {r['model_img_s']:12.1f} {r['loader_img_s']:13.1f} "
                   f"{r['bound']:>6} {r['eval_s']:7.2f} {r['minutes']:8.3f} {peer:>13}")
    peer_total = projection["peer_total_minutes"]
    out.append(f"projected time to train through epoch {projection['through_epoch']}: "
               f"{projection['total_minutes']:.2f} min (start-up {projection['startup_s']:.1f} s)"
               + ("" if peer_total is None else f"; MosaicML's epochs and evaluations: {peer_total:.2f} min"))
    return "\n".join(out)


def parse_table(text: str) -> dict:
    """The rows and the total back from `table`'s text (what a test or a later session reads)."""
    import re

    rows = []
    for line in text.splitlines():
        m = re.fullmatch(r"\s*(\d+)\s+(\d+)\s+([\d.]+)\s+([\d.]+)\s+(model|loader)\s+([\d.]+)\s+([\d.]+)\s+(\S+)",
                         line)
        if m:
            rows.append(dict(epoch=int(m[1]), px=int(m[2]), model_img_s=float(m[3]), loader_img_s=float(m[4]),
                             bound=m[5], eval_s=float(m[6]), minutes=float(m[7]),
                             peer_minutes=None if m[8] == "-" else float(m[8])))
    total = re.search(r"projected time to train through epoch (\d+): ([\d.]+) min", text)
    return dict(rows=rows, through_epoch=int(total[1]) if total else None,
                total_minutes=float(total[2]) if total else None)


# ------------------------------------------------------------------------------------------------- measuring


def config_environ(config: Path, overrides: dict | None = None) -> dict:
    """The environment a config_<SYSTEM>.sh exports, as run_and_time.sh sees it after sourcing it."""
    import os
    import subprocess

    env = {**os.environ, **(overrides or {})}
    out = subprocess.run(["bash", "-c", 'set -a; source "$1" >/dev/null; env -0', "_", str(config)], env=env,
                         capture_output=True, text=True, check=True, cwd=REPO)
    return dict(item.split("=", 1) for item in out.stdout.split("\0") if "=" in item)


def config_run(environ: dict):
    """(train args, recipe, ranks per node, world size) exactly as the trainer would read this environment."""
    import argparse

    from resnet.launch import env_to_flags, world_size_from_env
    from resnet.settings import add_train_arguments, read, recipe_from_args

    world = world_size_from_env(environ)
    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    args = parser.parse_args(env_to_flags(environ))
    read(args)
    return args, recipe_from_args(args, world), int(environ.get("DGXNGPU") or 1), world


def model_rates(recipe, batch: int, num_classes: int, device, sides, warmup: int, steps: int,
                most: int | None = None) -> dict:
    """{px: images/s} of the trainer's own train_step at each side, on inputs as the loader yields them (the
    full crop in the training dtype, channels-last), pipelined: synchronised only at the two ends. With `most`,
    only that many sides are timed and the others interpolated."""
    import time

    import torch

    from resnet import train
    from resnet.recipe import Plan, torch_dtype

    plan = Plan(recipe, num_classes, train_samples=batch * 64, eval_samples=batch, world_size=1)
    t = train.build_training(plan, device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    images = torch.randn(batch, 3, recipe.train_crop_px, recipe.train_crop_px, device=device)
    images = images.to(torch_dtype(recipe.precision)).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, num_classes, (batch,), device=device)
    rates, sides = {}, sorted(set(sides))
    for px in measured_sides(sides, most):
        for _ in range(warmup):
            train.train_step(t, images, labels, px)
        sync()
        t0 = time.perf_counter()
        for _ in range(steps):
            train.train_step(t, images, labels, px)
        sync()
        rates[px] = batch * steps / (time.perf_counter() - t0)
    return interpolate(rates, sides)


def measured_sides(sides: list, most: int | None) -> list:
    """At most `most` of the sorted sides, spread evenly and always the first and last (None: all)."""
    if not most or len(sides) <= most:
        return sides
    return sorted({sides[round(i * (len(sides) - 1) / (most - 1))] for i in range(most)})


def interpolate(rates: dict, sides: list) -> dict:
    """{px: images/s} at every side from those measured: seconds per image linear in px^2 (the work of a
    convolutional network grows with the area) between the two nearest measured sides."""
    known = sorted(rates)
    out = {}
    for px in sides:
        lo = max([k for k in known if k <= px], default=known[0])
        hi = min([k for k in known if k >= px], default=known[-1])
        if lo == hi:
            out[px] = rates[lo]
            continue
        w = (px * px - lo * lo) / (hi * hi - lo * lo)
        out[px] = 1 / ((1 - w) / rates[lo] + w / rates[hi])
    return out


def eval_rate(recipe, batch: int, num_classes: int, device, warmup: int, steps: int) -> float:
    """images/s of the evaluation forward pass (EVAL_PRECISION, no grad) at the evaluation crop."""
    import time

    import torch

    from resnet.model import build_model
    from resnet.recipe import amp_dtype

    model = build_model(recipe, num_classes).to(device).eval()
    dtype = amp_dtype(recipe.eval_precision)
    images = torch.randn(batch, 3, recipe.eval_crop_px, recipe.eval_crop_px, device=device)
    images = images.contiguous(memory_format=torch.channels_last)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
        for i in range(warmup + steps):
            if i == warmup:
                sync()
                t0 = time.perf_counter()
            model(images)
        sync()
    return batch * steps / (time.perf_counter() - t0)


def loader_rates(data: str, loader: str, ranks: int, device: str, args, batches: int, warmup: int) -> dict:
    """bench/loader_ranks.py under torchrun with `ranks` processes loading at once: the slowest rank's images/s
    and each loader's first-batch seconds (FFCV compiles its pipeline then)."""
    import subprocess
    import sys
    import tempfile

    with tempfile.TemporaryDirectory(prefix="projection-") as tmp:
        out = Path(tmp) / "loader.json"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}",
               str(REPO / "bench" / "loader_ranks.py"), "--data", data, "--loader", loader,
               "--workers", str(args.workers), "--batch-size", str(args.batch_size), "--crop", str(args.train_crop_px),
               "--eval-crop", str(args.eval_crop_px), "--eval-resize", str(args.eval_resize_px),
               "--precision", args.precision, "--batches", str(batches), "--warmup", str(warmup),
               "--device", device, "--out", str(out)]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
        if proc.returncode:
            raise RuntimeError(f"loader_ranks.py exited {proc.returncode}: {proc.stderr.strip()[-1500:]}")
        return json.loads(out.read_text())


def project_config(config: Path, device, smoke: bool, through_epoch: int | None, datadir: str | None = None) -> dict:
    """Measure this machine's rates for `config` and project its time to train (see the module docstring).
    smoke: few steps and batches (a test's budget); the numbers are then rough."""
    import torch

    environ = config_environ(config, {"DATADIR": datadir} if datadir else None)
    args, recipe, ranks, world = config_run(environ)
    peer = peer_times()
    through = through_epoch or peer["success_epoch"]
    data = args.data
    if not (Path(data) / "manifest.json").is_file() and args.loader == "ffcv":
        if not smoke:
            raise FileNotFoundError(f"DATADIR={data}: no FFCV data set there; run `mlperf-resnet prepare` (or "
                                    "`make data` for the CPU proxy) first")
        from bench.common import DEFAULT_CACHE, synthetic_ffcv

        data = str(synthetic_ffcv(DEFAULT_CACHE))   # make benchmark's set: the CPU proxy's data
    manifest = json.loads((Path(data) / "manifest.json").read_text()) if args.loader == "ffcv" else None
    ranks_here = min(ranks, torch.cuda.device_count()) if device.type == "cuda" else ranks
    warmup, steps, batches = (2, 4, 10) if smoke else (10, 30, 200)
    loader = loader_rates(data, args.loader, ranks_here, device.type, args, batches, warmup)
    classes = manifest["num_classes"] if manifest else 1000
    train_n = manifest["train_samples"] if manifest else 1_281_167
    eval_n = manifest["eval_samples"] if manifest else 50_000
    sides = [recipe.resolution_px(e) for e in range(through)]
    model = model_rates(recipe, args.batch_size, classes, device, sides, warmup, steps, 3 if smoke else None)
    evals = eval_rate(recipe, args.batch_size, classes, device, warmup, steps)
    result = project(recipe, train_n // world // args.batch_size * args.batch_size, -(-eval_n // world),
                     model, loader["slowest_rank_img_s"], evals, through,
                     loader["train_first_batch_s"] + loader["val_first_batch_s"], peer)
    title = (f"{config.name}, {world} rank(s) x batch {args.batch_size} ({ranks_here} loading at once here), "
             f"{args.loader} loader with {args.workers} workers, {recipe.precision} on {device.type}, "
             f"{train_n} training images")
    return dict(config=config.name, title=title, loader=loader, eval_img_s=round(evals, 1),
                model_img_s={px: round(r, 1) for px, r in model.items()}, **result)
