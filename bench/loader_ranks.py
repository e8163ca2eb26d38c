"""Per-rank training-loader throughput with every rank of a node loading at once, on the real data.

    torchrun --nproc_per_node=8 bench/loader_ranks.py --data /data/imagenet-ffcv --workers 12 --crop 88 --batches 300

Also the seconds to each loader's first batch (FFCV compiles its pipeline on the first iteration, inside a run's
timed region). --out writes the numbers, with bench.common.run_metadata, as JSON.
"""
import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import run_metadata  # noqa: E402
from resnet.data.loaders import LOADERS, LoaderSpec, make_loaders  # noqa: E402


def forever(loader):
    epoch = 0
    while True:
        loader.set_epoch(epoch)
        yield from loader
        epoch += 1


def first_batch_s(batches) -> float:
    started = time.perf_counter()
    next(batches)
    return time.perf_counter() - started


def val_first_batch_s(loader) -> float:
    """Seconds to the validation loader's first batch; the epoch is read to its end (FFCV's buffers belong to one
    epoch at a time)."""
    started, first = time.perf_counter(), None
    for _ in loader:
        first = first or time.perf_counter() - started
    return first


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--loader", choices=LOADERS, default="ffcv", help="LOADER")
    p.add_argument("--workers", type=int, default=12, help="decoding threads per rank (NUM_WORKERS)")
    p.add_argument("--batch-size", type=int, default=256, help="per rank (BATCHSIZE)")
    p.add_argument("--crop", type=int, default=176, help="training crop side (TRAIN_CROP_PX)")
    p.add_argument("--eval-crop", type=int, default=224, help="EVAL_CROP_PX")
    p.add_argument("--eval-resize", type=int, default=232, help="EVAL_RESIZE_PX")
    p.add_argument("--precision", default=None, help="dtype of the training images (default fp16 on CUDA, else fp32)")
    p.add_argument("--batches", type=int, default=300, help="timed batches per rank")
    p.add_argument("--warmup", type=int, default=20, help="untimed batches first")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", type=Path, help="write the numbers here as JSON (rank 0)")
    args = p.parse_args(argv)

    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    local = int(os.environ.get("LOCAL_RANK", 0))
    device = torch.device("cuda", local) if args.device == "cuda" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("gloo")  # only to line the ranks up and gather the numbers
    precision = args.precision or ("fp16" if device.type == "cuda" else "fp32")
    spec = LoaderSpec(batch_size=args.batch_size, train_crop_px=args.crop, crop_scale_min=0.08,
                      eval_crop_px=args.eval_crop, eval_resize_px=args.eval_resize, workers=args.workers,
                      device=str(device), rank=rank, world_size=world, train_precision=precision)
    train, val, _ = make_loaders(args.data, spec, loader=args.loader)
    try:
        batches = forever(train)
        starts = [first_batch_s(batches), 0.0]
        for _ in range(args.warmup):   # the queue fills
            next(batches)
        dist.barrier()
        start, images = time.perf_counter(), 0
        for _ in range(args.batches):
            x, _y = next(batches)
            images += x.shape[0]
        if device.type == "cuda":
            torch.cuda.synchronize()
        rate = images / (time.perf_counter() - start)
        for _ in range(-(args.warmup + args.batches + 1) % len(train)):
            next(batches)  # to the end of the epoch, so that the validation epoch runs alone
        starts[1] = val_first_batch_s(val)
        numbers = torch.tensor([rate, *starts], dtype=torch.float64)
    finally:
        batches = None
        train.close()
        val.close()
    gathered = [torch.zeros(3, dtype=torch.float64) for _ in range(world)]
    dist.all_gather(gathered, numbers)
    if rank == 0:
        per_rank = [g[0].item() for g in gathered]
        print(f"crop {args.crop} px, {args.workers} workers/rank, {world} ranks: per rank "
              + " ".join(f"{r:.0f}" for r in per_rank) + f" img/s; node {sum(per_rank):.0f} img/s")
        if args.out:
            args.out.write_text(json.dumps(dict(
                metadata=run_metadata(), loader=args.loader, ranks=world, workers=args.workers, crop_px=args.crop,
                batch_size=args.batch_size, per_rank_img_s=per_rank, slowest_rank_img_s=min(per_rank),
                train_first_batch_s=max(g[1].item() for g in gathered),
                val_first_batch_s=max(g[2].item() for g in gathered)), indent=1) + "\n")
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
