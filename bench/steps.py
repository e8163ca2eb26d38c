"""The step benchmark: the trainer's own `resnet.train.train_step` ("ours") against the one plain step
(bench.common.plain_step) on random device tensors as the loader yields them, pipelined images/s of one device.

    python -m bench.steps OUT.json [--precisions fp16 bf16] [--sides 88 176] [--batch 256] [--compile]
    torchrun --nproc_per_node=N -m bench.steps OUT.json --ddp   # ours under DDP on every rank (CPU: gloo)
    python -m bench.steps OUT.json --checkpoint [--steps 3] [--dir DIR]   # what a checkpoint costs the clock

--checkpoint: a synchronous save (snapshot, checksum, torch.save on the training thread) against the asynchronous
`checkpoint.Saver.save` (the training thread copies the state to host memory; a thread checksums and writes it),
for the CPU proxy (`resnet_cpu`) and ResNet-50, 1,000 classes each: medians over --steps saves of the seconds a
sync save takes, the seconds the training thread is held by an async one (host buffers from a first, untimed
save, as in a run), and the seconds until it is on disk. DIR: on the disk checkpoints go to (default: a temp dir).
"""
import argparse
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

from bench.common import NUM_CLASSES, dtype, plain_step, sync, time_steps, write_json
from resnet import checkpoint, distributed, train
from resnet.data.loaders import LoaderSpec
from resnet.recipe import Plan, amp_dtype, get_recipe

IMAGENET = dict(train_samples=1_281_167, eval_samples=50_000)


def ours(device, precision: str, batch: int, arch: str = "resnet50", world_size: int = 1, compile_backend=None,
         **fields):
    """(Training, Plan) of the Mild recipe with these settings and `fields`, on ImageNet's counts (so the EMA
    runs every 20 steps as it will)."""
    recipe = get_recipe("mild").replace(precision=precision, arch=arch, global_batch_size=batch * world_size,
                                        **fields)
    plan = Plan(recipe, NUM_CLASSES, world_size=world_size, **IMAGENET)
    t = train.build_training(plan, device, compile_backend is not None, compile_backend or "inductor")
    return t, plan


def loaded_batch(device, precision: str, batch: int, px: int, classes: int = NUM_CLASSES):
    """Random images as a loader yields them (this dtype, channels-last) and labels."""
    images = torch.randn(batch, 3, px, px, device=device).to(dtype(precision))
    return images.contiguous(memory_format=torch.channels_last), torch.randint(0, classes, (batch,), device=device)


def _row(loop, precision, compiled, px, batch, timing) -> dict:
    return dict(loop=loop, precision=precision, compiled=compiled, px=px,
                img_s=round(batch / timing["step_s"], 1), **timing)


def both(t, plan, step, sides, precision, compiled: bool, batch, warmup, steps, emit,
         between=lambda: None) -> None:
    """emit() a row per loop and side: ours from the full crop, between(), then the plain step at the side."""
    device = next(t.model.parameters()).device
    images, labels = loaded_batch(device, precision, batch, plan.recipe.train_crop_px)
    for px in sides:
        emit(_row("ours", precision, compiled, px, batch,
                  time_steps(lambda: train.train_step(t, images, labels, px), device, warmup, steps)))
    between()
    for px in sides:
        x, y = loaded_batch(device, precision, batch, px)
        emit(_row("plain", precision, compiled, px, batch, time_steps(lambda: step(x, y), device, warmup, steps)))


def eager_rates(device, precision: str, batch: int, warmup: int, steps: int, arch: str, emit, sides=None,
                **fields) -> None:
    """Both loops eager at `sides` (default: every side of the schedule)."""
    t, plan = ours(device, precision, batch, arch, **fields)
    sides = sides or sorted({plan.recipe.resolution_px(e) for e in range(plan.recipe.epochs)})
    both(t, plan, plain_step(arch, device, precision), sides, precision, False, batch, warmup, steps,
         emit)


def counting_backend(name: str):
    """A torch.compile backend that counts the graphs it compiles (.frames) and hands them to `name`."""
    def backend(gm, example_inputs):
        backend.frames += 1
        return torch._dynamo.lookup_backend(name)(gm, example_inputs)
    backend.frames = 0
    return backend


def compiled_rates(device, precision: str, batch: int, warmup: int, steps: int, arch: str, emit,
                   backend: str = "inductor", sides=None, **fields) -> None:
    """The trainer's warm_up of a 2-epoch schedule (seconds, graphs), both compiled at its 2 sides (`sides`
    unused), and the graphs compiled after the warm-up (the trainer needs 0)."""
    torch._dynamo.reset()
    counter = counting_backend(backend)
    t, plan = ours(device, precision, batch, arch, compile_backend=counter, **{"epochs": 2, "warmup_epochs": 1,
                                                                             **fields})
    spec = LoaderSpec.from_recipe(plan.recipe, batch_size=batch, device=str(device))
    started = time.perf_counter()
    sides = train.warm_up(t, plan, spec, (batch,))
    sync(device)
    emit(dict(part="warm_up", sides=sides, seconds=round(time.perf_counter() - started, 2), graphs=counter.frames))
    before = counter.frames
    step = plain_step(arch, device, precision, compile_model=backend == "inductor")
    both(t, plan, step, sides, precision, True, batch, warmup, steps, emit,
         lambda: emit(dict(part="recompiles_after_warm_up", graphs=counter.frames - before)))


def host_syncs(device, precision: str, batch: int, arch: str, **fields) -> dict:
    """Host syncs per step of ours (torch.cuda.set_sync_debug_mode) over one EMA period, its update included."""
    t, plan = ours(device, precision, batch, arch, **fields)
    px = plan.recipe.train_crop_px
    images, labels = loaded_batch(device, precision, batch, px)
    train.train_step(t, images, labels, px)
    sync(device)
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            for _ in range(t.ema_every_steps):
                train.train_step(t, images, labels, px)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    syncs = [str(w.message) for w in seen if "synchroniz" in str(w.message)]
    return dict(px=px, steps=t.ema_every_steps, syncs_per_step=len(syncs) / t.ema_every_steps, first=syncs[:3])


def ema_and_eval(t, plan, device, batch: int, warmup: int, steps: int) -> dict:
    """One EMA update's seconds, and images/s of the evaluation forward at the recipe's crop and precision."""
    r = plan.recipe
    ema = time_steps(lambda: t.ema.update_parameters(t.model), device, warmup, steps)
    images = torch.randn(batch, 3, r.eval_crop_px, r.eval_crop_px, device=device)
    images = images.contiguous(memory_format=torch.channels_last)
    model = t.ema.module.eval()
    with torch.no_grad(), train.autocast(device, amp_dtype(r.eval_precision)):
        ev = time_steps(lambda: model(images), device, warmup, steps)
    model.train()
    return dict(ema_update_s=ema["step_s"], eval_px=r.eval_crop_px, eval_precision=r.eval_precision,
                eval_img_s=round(batch / ev["step_s"], 1))


def ddp(args) -> dict:
    """One rank under torchrun: ours with DDP at each side, cudnn.benchmark off and on; img/s of all ranks."""
    dev = distributed.init("cuda" if torch.cuda.is_available() else "cpu")
    rows = []
    for bench in (False, True):
        torch.backends.cudnn.benchmark = bench
        t, plan = ours(dev.device, args.precisions[0], args.batch, args.arch, world_size=dev.world_size)
        images, labels = loaded_batch(dev.device, args.precisions[0], args.batch, plan.recipe.train_crop_px)
        for px in args.sides:
            timing = time_steps(lambda: train.train_step(t, images, labels, px), dev.device, args.warmup, args.steps)
            rows.append(dict(cudnn_benchmark=bench, **_row("ours-ddp", args.precisions[0], False, px,
                                                           args.batch * dev.world_size, timing)))
    distributed.shutdown()
    return dict(world_size=dev.world_size, device=str(dev.device), rows=rows) if dev.is_main else None


def checkpoint_cost(arch: str, folder: Path, repeats: int) -> dict:
    recipe = get_recipe("mild").replace(arch=arch, global_batch_size=2, train_crop_px=32, eval_crop_px=32,
                                        eval_resize_px=36)
    t = train.build_training(Plan(recipe, 1000, 1000, 100, 1), torch.device("cpu"))
    train.train_step(t, torch.randn(2, 3, 32, 32), torch.tensor([0, 1]), 32)   # momentum buffers, EMA
    parts, progress = t.parts(), checkpoint.RunProgress(1, {}, run_start_ms=1)
    saver, sync_s, held_s, written_s = checkpoint.Saver(folder / "async.pt", None, True, progress), [], [], []
    saver.save(parts, step=1, epoch=1, batches_done=0, epoch_rng=None, wait=True)   # host buffers, once
    for _ in range(repeats):
        tic = time.perf_counter()
        state = checkpoint.snapshot(parts, progress)
        state["checksum"] = checkpoint.tensor_digest(state)
        checkpoint.save(folder / "sync.pt", state)
        sync_s.append(time.perf_counter() - tic)
        tic = time.perf_counter()
        saver.save(parts, step=1, epoch=1, batches_done=0, epoch_rng=None)
        held_s.append(time.perf_counter() - tic)
        assert saver.wait(), "the async write failed"
        written_s.append(time.perf_counter() - tic)
    return dict(arch=arch, file_mb=round((folder / "async.pt").stat().st_size / 1e6, 1),
                sync_s=statistics.median(sync_s), async_held_s=statistics.median(held_s),
                async_written_s=statistics.median(written_s))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", help="the JSON file to write (must not exist)")
    p.add_argument("--precisions", nargs="+", default=["fp16", "bf16"], choices=("fp16", "bf16", "fp32"))
    p.add_argument("--sides", type=int, nargs="+", default=[88, 128, 176])
    p.add_argument("--batch", type=int, default=256, help="per device")
    p.add_argument("--arch", default="resnet50", help="the network of both loops (torchvision's name)")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--compile", action="store_true", help="also compiled (a 2-epoch schedule's sides)")
    p.add_argument("--ddp", action="store_true", help="under torchrun: ours with DDP on every rank, no more")
    p.add_argument("--checkpoint", action="store_true", help="what a checkpoint save costs (sync vs async)")
    p.add_argument("--dir", type=Path, help="--checkpoint: the folder saves go to (default: a temporary one)")
    args = p.parse_args(argv)
    if args.ddp:
        result = ddp(args)
    elif args.checkpoint:
        with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
            result = dict(rows=[checkpoint_cost(arch, Path(tmp), args.steps) for arch in ("resnet_cpu", "resnet50")])
        print(*result["rows"], sep="\n")
    else:
        device, rows = torch.device("cuda" if torch.cuda.is_available() else "cpu"), []
        for precision in args.precisions:
            for rates in (eager_rates, compiled_rates) if args.compile else (eager_rates,):
                rates(device, precision, args.batch, args.warmup, args.steps, args.arch,
                      lambda row: rows.append(row) or print(row, flush=True), sides=args.sides)
        result = dict(device=torch.cuda.get_device_name() if device.type == "cuda" else "cpu", rows=rows)
    if result:
        write_json(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
