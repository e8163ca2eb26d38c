"""The loader benchmark: one timer for every backend, per core and per rank, on synthetic 500 px JPEGs or --data.

    python -m bench.loaders backends|cores OUT.json [--loaders ...] [--workers 2] [--crop 176] [--batches 20]
    torchrun --nproc_per_node=8 -m bench.loaders ranks OUT.json --data /data/imagenet --loader dali --workers 6
    python -m bench.loaders sweep OUT.json --data /data/imagenet --ranks 8 --hw-loads 0.65 0.99 --threads 4 6 8 \
        --prefetch 2 5                 # DALI: hardware-decoder share x threads x prefetch, one torchrun each
A backend not installed says so; `--spec FIELD=VALUE` sets any other LoaderSpec field (train_precision: fp16 on CUDA).
"""
import dataclasses
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist

from bench.common import DEFAULT_CACHE, parser, sync, synthetic_dataset, write_json
from resnet.data.loaders import BACKENDS, LoaderSpec, declared, make_loaders

#: the options `sweep` hands on to each `ranks` run as they are
FORWARDED = ("loader", "device", "batch_size", "crop", "eval_crop", "eval_resize", "batches", "warmup", "data", "cache",
             "images")


def forever(loader):   # (first of an epoch?, batch) ...
    for epoch in itertools.count():
        loader.set_epoch(epoch)
        yield from ((i == 0, batch) for i, batch in enumerate(loader))


def timed(loader, warmup: int, batches: int, device=None) -> dict:
    """The first batch's seconds; images, wall and CPU seconds of `batches` after `warmup`; the slowest epoch start."""
    it, t0 = forever(loader), time.perf_counter()
    next(it)
    first = time.perf_counter() - t0
    for _ in range(warmup):
        next(it)
    images, cpu, wall, restarts = 0, time.process_time(), time.perf_counter(), [0.0]
    for _ in range(batches):
        t, (new, (x, _y)) = time.perf_counter(), next(it)
        images += len(x)
        restarts += [time.perf_counter() - t] if new else []
    sync(device)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return dict(first_batch_s=round(first, 3), epoch_start_s=round(max(restarts), 3), images=images,
                wall_s=round(wall, 3), cpu_s=round(cpu, 3), img_s=round(images / wall, 1),
                cpu_s_per_image=cpu / images if images else None)


def spec_for(args, device: str = "cpu", **run) -> LoaderSpec:
    """The LoaderSpec of these options; --spec NAME=VALUE sets any other field (a clear error for a wrong name)."""
    fields, extra = {f.name: f.default for f in dataclasses.fields(LoaderSpec)}, {}
    for name, _, value in (item.partition("=") for item in args.spec):
        if name not in fields:
            raise SystemExit(f"error: --spec {name}={value}: LoaderSpec has no field {name!r} in this checkout; "
                             "fields: " + ", ".join(fields))
        extra[name] = value if fields[name] is None else type(fields[name])(value)
    given = dict(batch_size=args.batch_size, train_crop_px=args.crop, crop_scale_min=0.08, workers=args.workers,
                 eval_crop_px=args.eval_crop, eval_resize_px=args.eval_resize, device=device,
                 train_precision="fp16" if device.startswith("cuda") else "fp32")
    return LoaderSpec(**{**given, **run, **extra})


def data_for(args, loader: str) -> Path | None:
    """--data, or the synthetic set `loader` reads, made once (None where the backend is not installed)."""
    if args.data or declared(loader).missing():
        return args.data and Path(args.data)
    beton = declared(loader).reads == "beton"
    return synthetic_dataset(args.cache, beton, classes=4, train_per_class=args.images // 4, val_per_class=8,
                             size_px=500)[beton]


def measure(loader: str, data: Path, spec: LoaderSpec, warmup: int, batches: int) -> dict:
    """One backend's training loader timed, its validation loader's first batch (or 'not installed here')."""
    if declared(loader).missing():
        return dict(loader=loader, status="not installed here")
    train, val, _ = make_loaders(data, spec, loader=loader)
    try:
        result = timed(train, warmup, batches, spec.torch_device)
        train.close()    # FFCV's buffers belong to one epoch at a time: the validation epoch runs alone
        result["val_first_batch_s"] = timed(val, 0, 0)["first_batch_s"]
    finally:
        train.close()
        val.close()
    return dict(loader=loader, status="measured", workers=spec.workers, crop_px=spec.train_crop_px,
                batch_size=spec.batch_size, **result)


def backends(args) -> dict:
    """Each backend in this process; `cores`: one decoding thread each (torchvision: in this process), torch one."""
    rows = []
    if args.mode == "cores":
        torch.set_num_threads(1)
    for loader in args.loaders:
        workers = args.workers if args.mode == "backends" else 0 if loader == "torchvision" else 1
        rows.append(measure(loader, data_for(args, loader), spec_for(args, workers=workers), args.warmup, args.batches))
        print(rows[-1], flush=True)
    return dict(mode=args.mode, rows=rows)


def ranks(args) -> dict | None:
    """Under torchrun: every rank measures at once (lined up by a barrier); rank 0 gets every rank's numbers."""
    rank, world, local = (int(os.environ.get(k, d)) for k, d in (("RANK", 0), ("WORLD_SIZE", 1), ("LOCAL_RANK", 0)))
    device = f"cuda:{local}" if args.device == "cuda" else "cpu"
    if args.device == "cuda":
        torch.cuda.set_device(local)
    dist.init_process_group("gloo")   # only to line the ranks up and gather the numbers
    dist.barrier()
    mine = measure(args.loader, data_for(args, args.loader), spec_for(args, device, rank=rank, world_size=world),
                   args.warmup, args.batches)
    every = [None] * world
    dist.all_gather_object(every, mine)
    dist.destroy_process_group()
    if rank or mine["status"] != "measured":
        return None if rank else mine
    rates = [r["img_s"] for r in every]
    return dict(mine, ranks=world, per_rank_img_s=rates, slowest_rank_img_s=min(rates),
                train_first_batch_s=max(r["first_batch_s"] for r in every),
                val_first_batch_s=max(r["val_first_batch_s"] for r in every), spec=args.spec)


def sweep(args) -> dict:
    """`ranks` under torchrun for every (hardware-decoder share, threads, prefetch depth) in turn."""
    rows = []
    for load, threads, prefetch in itertools.product(args.hw_loads, args.threads, args.prefetch or [None]):
        fields = [*args.spec, f"hw_decoder_load={load}", *([f"dali_prefetch={prefetch}"] if prefetch else [])]
        with tempfile.TemporaryDirectory(prefix="sweep-") as tmp:
            out = Path(tmp) / "r.json"
            forwarded = [x for k in FORWARDED if getattr(args, k) is not None
                         for x in (f"--{k.replace('_', '-')}", str(getattr(args, k)))]
            proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                                   f"--nproc_per_node={args.ranks}", "-m", "bench.loaders", "ranks", str(out),
                                   "--workers", str(threads), *(x for f in fields for x in ("--spec", f)), *forwarded],
                                  capture_output=True, text=True)
            r = json.loads(out.read_text()) if out.is_file() else dict(status=f"failed: {proc.stderr[-300:]}")
        rows.append(dict(hw_decoder_load=load, threads=threads, prefetch=prefetch, status=r["status"],
                         slowest_rank_img_s=r.get("slowest_rank_img_s"), first_batch_s=r.get("train_first_batch_s")))
        print(rows[-1], flush=True)
    done = [r for r in rows if r["slowest_rank_img_s"]]
    return dict(loader=args.loader, ranks=args.ranks, rows=rows,
                best=max(done, key=lambda r: r["slowest_rank_img_s"]) if done else None)


def parse_args(argv=None):
    p = parser(__doc__, None, workers=2, batch_size=64, crop=176, eval_crop=224, eval_resize=232, batches=20,
               warmup=3)   # workers: per rank
    p.add_argument("mode", choices=("backends", "cores", "ranks", "sweep"))
    p.add_argument("out", type=Path, help="the JSON file to write (must not exist)")
    p.add_argument("--data", help="image folders (FFCV: its .beton folder); default: synthetic, made once")
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="where the synthetic set is made")
    p.add_argument("--images", type=int, default=400, help="synthetic training images (4 classes)")
    p.add_argument("--loader", choices=tuple(BACKENDS), default="dali", help="ranks, sweep: the backend")
    p.add_argument("--loaders", nargs="+", choices=tuple(BACKENDS), default=list(BACKENDS), help="backends, cores")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--spec", action="append", default=[], metavar="FIELD=VALUE", help="any other LoaderSpec field")
    p.add_argument("--ranks", type=int, default=1, help="sweep: ranks loading at once")
    p.add_argument("--hw-loads", type=float, nargs="+", default=[0.65, 0.99], help="sweep: DALI_HW_DECODER_LOAD")
    p.add_argument("--threads", type=int, nargs="+", default=[4, 6, 8], help="sweep: NUM_WORKERS (DALI threads)")
    p.add_argument("--prefetch", type=int, nargs="+", help="sweep: prefetch depths (LoaderSpec.dali_prefetch)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    result = {"ranks": ranks, "sweep": sweep}.get(args.mode, backends)(args)
    if result is not None:
        write_json(args.out, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
