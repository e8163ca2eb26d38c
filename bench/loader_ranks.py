"""Per-rank training-loader throughput with every rank of a node loading at once, on the real data.

    torchrun --nproc_per_node=8 bench/loader_ranks.py --data /data/imagenet-ffcv --workers 12 --crop 88 --batches 300
"""
import argparse
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from resnet.data.loaders import make_loaders  # noqa: E402


def forever(loader):
    epoch = 0
    while True:
        loader.set_epoch(epoch)
        yield from loader
        epoch += 1


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--workers", type=int, default=12, help="FFCV decoding threads per rank (NUM_WORKERS)")
    p.add_argument("--batch-size", type=int, default=256, help="per rank (BATCHSIZE)")
    p.add_argument("--crop", type=int, default=176, help="training crop side: 88 = the first epochs, 176 = the last")
    p.add_argument("--batches", type=int, default=300, help="timed batches per rank")
    p.add_argument("--warmup", type=int, default=20, help="untimed batches first")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)

    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    local = int(os.environ.get("LOCAL_RANK", 0))
    device = torch.device("cuda", local) if args.device == "cuda" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("gloo")  # only to line the ranks up and gather the numbers
    train, _, _ = make_loaders(args.data, batch_size=args.batch_size, train_crop_px=args.crop, crop_scale_min=0.08,
                               eval_crop_px=224, eval_resize_px=232, workers=args.workers, device=device, rank=rank,
                               world_size=world, dtype_train="fp16" if device.type == "cuda" else "fp32")


    batches = forever(train)
    for _ in range(args.warmup):   # FFCV compiles its pipeline and fills its queue
        next(batches)
    dist.barrier()
    start, images = time.perf_counter(), 0
    for _ in range(args.batches):
        x, _y = next(batches)
        images += x.shape[0]
    if device.type == "cuda":
        torch.cuda.synchronize()
    rate = torch.tensor([images / (time.perf_counter() - start)])
    rates = [torch.zeros(1) for _ in range(world)]
    dist.all_gather(rates, rate)
    if rank == 0:
        per_rank = [r.item() for r in rates]
        print(f"crop {args.crop} px, {args.workers} workers/rank, {world} ranks: per rank "
              + " ".join(f"{r:.0f}" for r in per_rank) + f" img/s; node {sum(per_rank):.0f} img/s")
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
