"""The step benchmark: pipelined images/s of our `train_step` against the one plain step, on loader-like tensors.

    python -m bench.steps OUT.json [--precisions fp16 bf16] [--sides 88 176] [--batch 256]
    torchrun --nproc_per_node=N -m bench.steps OUT.json --ddp   # ours under DDP on every rank (CPU: gloo)
    python -m bench.steps OUT.json --checkpoint [--steps 3] [--dir DIR]   # sync vs async save (BENCHMARKS.md)
"""
import tempfile
import time
from pathlib import Path
from statistics import median

import torch

from bench.common import IMAGENET, device, parser, plain_step, time_steps, write_json
from resnet import checkpoint, distributed, train
from resnet.data.loaders import LoaderSpec
from resnet.recipe import Plan, amp_dtype, get_recipe, torch_dtype as dtype   # steps.dtype: tests/test_cuda.py


def ours(device, precision: str, batch: int, arch="resnet50", world_size=1, compile_backend=None, **fields):
    """(Training, Plan) of Mild with these settings and `fields`, on ImageNet's counts (the EMA every 20 steps)."""
    recipe = get_recipe("mild").replace(precision=precision, arch=arch, global_batch_size=batch * world_size, **fields)
    plan = Plan(recipe, IMAGENET["classes"], IMAGENET["train_images"], IMAGENET["val_images"], world_size)
    return train.build_training(plan, device, compile_backend is not None, compile_backend or "inductor"), plan


def loaded_batch(device, precision: str, batch: int, px: int, classes: int = IMAGENET["classes"]):
    """Random images as a loader yields them (this dtype, channels-last) and labels."""
    images = torch.randn(batch, 3, px, px, device=device).to(dtype(precision))
    return images.contiguous(memory_format=torch.channels_last), torch.randint(0, classes, (batch,), device=device)


def ours_at(t, plan, device):
    """step(px): our train_step on one loaded batch of the recipe's full crop, resized to px as in training."""
    r = plan.recipe
    images, labels = loaded_batch(device, r.precision, plan.per_device_batch, r.train_crop_px, plan.num_classes)
    return lambda px: train.train_step(t, images, labels, px)


def timed_sides(step, sides, device, images: int, warmup: int, steps: int, emit, **row) -> None:
    """emit() a row per side: `row`, the side, and step(px)'s timing with its rate (`images` a call)."""
    for px in sides:
        timing = time_steps(lambda: step(px), device, warmup, steps)
        emit(dict(row, px=px, img_s=round(images / timing["step_s"], 1), **timing))


def both(s, t, plan, plain, sides, compiled: bool, emit) -> None:
    """emit() a row per loop and side: ours from the full crop, then the plain step at the side."""
    precision, batch = plan.recipe.precision, plan.per_device_batch
    n = (s.device, batch, s.warmup, s.steps, emit)
    timed_sides(ours_at(t, plan, s.device), sides, *n, loop="ours", precision=precision, compiled=compiled)
    batches = {px: loaded_batch(s.device, precision, batch, px) for px in sides}
    timed_sides(lambda px: plain(*batches[px]), sides, *n, loop="plain", precision=precision, compiled=compiled)


def eager(s, emit) -> None:
    """Both loops eager in each of s.precisions at s.sides (None: every side of the schedule)."""
    for precision in s.precisions:
        t, plan = ours(s.device, precision, s.batch, s.arch, **s.fields)
        sides = s.sides or sorted({plan.recipe.resolution_px(e) for e in range(plan.recipe.epochs)})
        both(s, t, plan, plain_step(s.arch, s.device, precision), sides, False, emit)


def compiled(s, emit) -> None:
    """The trainer's warm_up of 2 epochs (seconds, graphs), both loops compiled at its sides, recompiles after (0)."""
    def counting(gm, example_inputs):   # s.backend, counting the graphs it compiles
        counting.graphs += 1
        return torch._dynamo.lookup_backend(s.backend)(gm, example_inputs)
    counting.graphs = 0
    torch._dynamo.reset()
    t, plan = ours(s.device, s.precisions[0], s.batch, s.arch, compile_backend=counting,
                   **{"epochs": 2, "warmup_epochs": 1, **s.fields})
    spec, sides = LoaderSpec.from_recipe(plan.recipe, batch_size=s.batch, device=str(s.device)), []
    took = time_steps(lambda: sides.extend(train.warm_up(t, plan, spec, (s.batch,))), s.device, 0, 1)
    emit(dict(part="warm_up", sides=sides, seconds=round(took["step_s"], 2), graphs=counting.graphs))
    before = counting.graphs
    plain = plain_step(s.arch, s.device, s.precisions[0], compile_model=s.backend == "inductor")
    both(s, t, plan, plain, sides, True, emit)
    emit(dict(part="recompiles_after_warm_up", graphs=counting.graphs - before))   # ours: plain compiles on its own


def ema_eval(s, emit, built=None) -> None:
    """emit(): one EMA update's seconds, the evaluation forward's images/s; of `built` (Training, Plan) or of Mild."""
    t, plan = built or ours(s.device, s.precisions[0], s.batch, s.arch, **s.fields)
    r, batch, device = plan.recipe, plan.per_device_batch, s.device
    ema = time_steps(lambda: t.ema.update_parameters(t.model), device, s.warmup, s.steps)
    images = torch.randn(batch, 3, r.eval_crop_px, r.eval_crop_px, device=device).to(memory_format=torch.channels_last)
    model = t.ema.module.eval()
    with torch.no_grad(), train.autocast(device, amp_dtype(r.eval_precision)):
        ev = time_steps(lambda: model(images), device, s.warmup, s.steps)
    model.train()
    emit(dict(ema_update_s=ema["step_s"], eval_px=r.eval_crop_px, eval_precision=r.eval_precision,
              eval_img_s=round(batch / ev["step_s"], 1)))


def ddp(s) -> dict | None:
    """One rank under torchrun: ours with DDP at each side, cudnn.benchmark off and on; img/s of all ranks."""
    dev, rows = distributed.init(), []
    for bench in (False, True):
        torch.backends.cudnn.benchmark = bench
        t, plan = ours(dev.device, s.precisions[0], s.batch, s.arch, world_size=dev.world_size)
        timed_sides(ours_at(t, plan, dev.device), s.sides, dev.device, s.batch * dev.world_size, s.warmup, s.steps,
                    rows.append, cudnn_benchmark=bench, loop="ours-ddp", precision=s.precisions[0], compiled=False)
    distributed.shutdown()
    return dict(world_size=dev.world_size, device=str(dev.device), rows=rows) if dev.is_main else None


def checkpoint_cost(arch: str, folder: Path, repeats: int) -> dict:
    t, _ = ours(torch.device("cpu"), "fp16", 2, arch, train_crop_px=32, eval_crop_px=32, eval_resize_px=36)
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
    return dict(arch=arch, file_mb=round((folder / "async.pt").stat().st_size / 1e6, 1), sync_s=median(sync_s),
                async_held_s=median(held_s), async_written_s=median(written_s))


def main(argv=None) -> int:
    p = parser(__doc__, batch=256, warmup=5, steps=20)   # --batch: per device
    p.add_argument("--precisions", nargs="+", default=["fp16", "bf16"], choices=("fp16", "bf16", "fp32"))
    p.add_argument("--sides", type=int, nargs="+", default=[88, 128, 176])
    p.add_argument("--arch", default="resnet50", help="the network of both loops (torchvision's name)")
    p.add_argument("--ddp", action="store_true", help="under torchrun: ours with DDP on every rank, no more")
    p.add_argument("--checkpoint", action="store_true", help="what a checkpoint save costs (sync vs async)")
    p.add_argument("--dir", type=Path, help="--checkpoint: the folder saves go to (default: a temporary one)")
    args = p.parse_args(argv)
    args.device, args.fields, rows = device(), {}, []   # what eager() takes beside the options
    if args.ddp:
        result = ddp(args)
    elif args.checkpoint:
        with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
            result = dict(rows=[checkpoint_cost(arch, Path(tmp), args.steps) for arch in ("resnet_cpu", "resnet50")])
        print(*result["rows"], sep="\n")
    else:
        eager(args, lambda row: rows.append(row) or print(row, flush=True))
        result = dict(device=torch.cuda.get_device_name() if args.device.type == "cuda" else "cpu", rows=rows)
    if result:
        write_json(args.out, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
