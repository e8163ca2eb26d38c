"""The training loop: `python -m resnet.train` (also `mlperf-resnet train`), one process per device under torchrun.

init -> run_start -> epochs (progressive resize, channels-last, autocast, LR per batch, EMA every k steps)
-> evaluation of the EMA weights every `eval_every_epochs` -> run_stop `success` at the first evaluation above
the target, or `aborted` when the epochs run out, on SIGTERM/SIGINT, or when the loss is not finite.
"""
import argparse
import contextlib
import math
import random
import signal
import sys
import time
from pathlib import Path

import torch

from resnet import checkpoint, distributed
from resnet.algorithms import DecoupledSGDW, ema_model, label_smoothed_bce, resize_batch
from resnet.mlperf import RunLog, claim_result_file, constants as C
from resnet.model import build_model
from resnet.recipe import Plan, lr_factor
from resnet.settings import add_train_arguments, recipe_from_args, validate_train_args

AMP_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": None}


class StopRequest:
    """SIGTERM/SIGINT set a flag; the loop stops at the end of the current step."""

    def __init__(self):
        self.signal = None
        for s in (signal.SIGTERM, signal.SIGINT):
            signal.signal(s, self._handle)

    def _handle(self, signum, frame):
        self.signal = signal.Signals(signum).name


def progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@torch.no_grad()
def evaluate(model, loader, dev, amp_dtype) -> float:
    """Top-1 over the whole validation set; each rank takes its shard, the counts are summed."""
    model.eval()
    counts = torch.zeros(2, dtype=torch.float64, device=dev.device)
    for images, labels in loader:
        with torch.autocast(dev.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = model(images)
        counts[0] += (logits.argmax(1) == labels).sum()
        counts[1] += labels.numel()
    model.train()
    correct, total = distributed.all_reduce_sum(counts).tolist()
    return correct / total


def check_replicas(model, dev) -> None:
    """DDP must keep every replica's weights identical; compare a float64 fingerprint across ranks."""
    fingerprint = torch.stack([p.detach().double().sum() for p in model.parameters()]).sum()
    spread = distributed.all_reduce_max(torch.stack([fingerprint, -fingerprint]))
    high, low = spread[0].item(), -spread[1].item()
    if high != low:
        raise RuntimeError(f"replicas diverged: weight fingerprints range from {low!r} to {high!r}")
    if dev.is_main:
        progress(f"replicas: identical across {dev.world_size} ranks (fingerprint {high:.10g})")


def train(args: argparse.Namespace) -> int:
    started, stop = time.time(), StopRequest()
    dev = distributed.init(args.device, args.dist_timeout_s)
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(distributed.shutdown)
        recipe = recipe_from_args(args, dev.world_size)
        ckpt_path = Path(args.checkpoint_dir) / "last.pt" if args.checkpoint_dir else None
        state = None
        if args.resume:
            if not ckpt_path.exists():
                raise SystemExit(f"mlperf-resnet train: error: --resume: no checkpoint at {ckpt_path}; "
                                 "start without --resume or set --checkpoint-dir to the killed run's folder")
            state = checkpoint.load(ckpt_path)
        log_path = None
        if dev.is_main:
            log_path = Path(args.log_file) if args.log_file else claim_result_file(Path(args.results_dir))
        log = RunLog(log_path)
        cleanup.callback(log.close)
        return run_loop(args, dev, stop, recipe, log, state, ckpt_path, started)


def run_loop(args, dev, stop, recipe, log, state, ckpt_path, started) -> int:
    # ---- init (untimed) ------------------------------------------------------------------------------------
    log.event(C.CACHE_CLEAR, value=bool(args.cache_cleared))
    log.start(C.INIT_START)
    for key, value in ((C.SUBMISSION_BENCHMARK, "resnet"), (C.SUBMISSION_DIVISION, "open"),
                       (C.SUBMISSION_ORG, args.org), (C.SUBMISSION_PLATFORM, args.platform),
                       (C.SUBMISSION_STATUS, args.status)):
        log.event(key, value)
    seed = state["seed"] if state else args.seed       # a resumed run keeps its seed (and data order)
    seed = distributed.broadcast_int(seed if seed is not None else random.SystemRandom().randrange(2**31))
    torch.manual_seed(seed)
    random.seed(seed)

    from resnet.data.loaders import make_loaders   # data pulls in FFCV/numba: only when training
    amp_dtype = AMP_DTYPES[recipe.precision]
    train_loader, val_loader, info = make_loaders(
        args.data, loader=args.loader, batch_size=recipe.global_batch_size // dev.world_size,
        train_crop_px=recipe.train_crop_px, eval_crop_px=recipe.eval_crop_px, eval_resize_px=recipe.eval_resize_px,
        workers=args.workers, device=dev.device, rank=dev.rank, world_size=dev.world_size, seed=seed,
        dtype_train=amp_dtype or torch.float32, dtype_eval=torch.float32)
    plan = Plan(recipe, info["num_classes"], info["train_samples"], info["eval_samples"], dev.world_size)
    plan.check()

    model = build_model(recipe, plan.num_classes).to(dev.device)
    ema = ema_model(model, recipe.ema_decay) if recipe.ema else None
    optimizer = DecoupledSGDW(model.parameters(), lr=recipe.peak_lr, momentum=recipe.momentum,
                              weight_decay=recipe.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, plan.warmup_steps, plan.total_steps))
    scaler = torch.amp.GradScaler(dev.device.type, enabled=recipe.precision == "fp16")
    step, first_epoch, skip_batches, run_start_ms = 0, 0, 0, None
    if state:
        model.load_state_dict(state["model"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        checkpoint.set_rng_state(state["rng"])
        step, first_epoch, skip_batches = state["step"], state["epoch"], state["batches_done"]
        run_start_ms = state["run_start_ms"]
    net = model
    if dev.world_size > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[dev.local_rank] if dev.device.type == "cuda" else None)
    if args.compile:
        # Progressive resizing feeds ~13 distinct sizes: allow a graph per size rather than falling back to eager.
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 32)
        net = torch.compile(net, dynamic=False)
    loss_fn = ((lambda logits, y: label_smoothed_bce(logits, y, recipe.label_smoothing)) if recipe.loss == "bce"
               else torch.nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing))

    log.event(C.SEED, seed)
    for key, value in ((C.GLOBAL_BATCH_SIZE, recipe.global_batch_size), (C.GRADIENT_ACCUMULATION_STEPS, 1),
                       (C.TRAIN_SAMPLES, plan.train_samples), (C.EVAL_SAMPLES, plan.eval_samples),
                       (C.OPT_NAME, "decoupled_sgdw"), (C.OPT_BASE_LR, recipe.peak_lr),
                       (C.OPT_LR_WARMUP_EPOCHS, recipe.warmup_epochs), (C.OPT_WEIGHT_DECAY, recipe.weight_decay),
                       ("opt_momentum", recipe.momentum), (C.OPT_LR_DECAY_SCHEDULE, "cosine"),
                       ("label_smoothing", recipe.label_smoothing), ("model_arch", recipe.arch),
                       ("recipe", recipe.name)):
        log.event(key, value)
    log.end(C.INIT_STOP)

    # ---- the timed run -------------------------------------------------------------------------------------
    if run_start_ms is None:
        run_start_ms = int(time.time() * 1000)
    # A resumed run keeps the first attempt's start: the time lost to the interruption counts.
    log.start(C.RUN_START, time_ms=run_start_ms, **({"resumed_from_epoch": first_epoch} if state else {}))
    status, accuracy, block_first = C.ABORTED, None, first_epoch
    steps_per_epoch = plan.steps_per_epoch

    def save(epoch, batches_done):
        if ckpt_path and dev.is_main:
            checkpoint.save(ckpt_path, dict(
                model=model.state_dict(), ema=ema.state_dict() if ema is not None else None,
                optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(), scaler=scaler.state_dict(),
                rng=checkpoint.rng_state(), epoch_rng=epoch_rng if batches_done else checkpoint.rng_state(),
                step=step, epoch=epoch, batches_done=batches_done, seed=seed,
                run_start_ms=run_start_ms, recipe=recipe.name))

    last_save = time.time()
    for epoch in range(first_epoch, recipe.epochs):
        px = recipe.resolution_px(epoch)
        if epoch == block_first:
            count = next(e for e in range(epoch, recipe.epochs) if recipe.evaluates_after(e)) - epoch + 1
            log.start(C.BLOCK_START, first_epoch_num=epoch, epoch_count=count)
        log.start(C.EPOCH_START, epoch_num=epoch)
        train_loader.set_epoch(epoch)
        if skip_batches:              # resuming inside an epoch: replay its data order from the epoch's start
            checkpoint.set_rng_state(state["epoch_rng"])
        epoch_rng = checkpoint.rng_state()
        tic, seen, loss_sum = time.time(), 0, torch.zeros((), device=dev.device)
        batches_done = 0
        for batches_done, (images, labels) in enumerate(train_loader, start=1):
            if batches_done > steps_per_epoch:
                break
            if batches_done <= skip_batches:     # resuming inside an epoch: replay the loader's order
                continue
            images = resize_batch(images, px)
            with torch.autocast(dev.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                loss = loss_fn(net(images), labels)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            step += 1
            if ema is not None and step % recipe.ema_every_steps == 0:
                ema.update_parameters(model)
            # One small collective per step: every rank learns about a non-finite loss or a stop signal at once.
            stop_flag = torch.tensor(float(stop.signal is not None), device=dev.device)
            flags = distributed.all_reduce_max(torch.stack([(~torch.isfinite(loss.detach())).float(), stop_flag]))
            bad_loss, stopping = flags.tolist()
            if bad_loss:
                progress(f"error: the loss became {loss.item()} at step {step} (epoch {epoch}); run aborted. "
                         "Lower the learning rate or use bf16/fp32 (PRECISION)")
                log.end(C.RUN_STOP, status=C.ABORTED, reason="non-finite loss")
                return 3
            loss_sum += loss.detach()
            seen += images.shape[0] * dev.world_size
            due = args.checkpoint_every_minutes and time.time() - last_save > 60 * args.checkpoint_every_minutes
            if stopping or due:
                save(epoch, batches_done)
                last_save = time.time()
            if stopping:
                progress(f"{stop.signal or 'stop'}: checkpoint written at epoch {epoch} step {step}; "
                         "run logged as aborted; continue with --resume")
                log.end(C.RUN_STOP, status=C.ABORTED, reason=f"signal {stop.signal}")
                return 4
        skip_batches = 0
        log.end(C.EPOCH_STOP, epoch_num=epoch)
        if dev.world_size > 1:
            check_replicas(model, dev)
        elapsed = time.time() - tic
        line = (f"epoch {epoch + 1}/{recipe.epochs} | {px}px | lr {scheduler.get_last_lr()[0]:.4f} | "
                f"loss {loss_sum.item() / max(1, steps_per_epoch):.4f} | {seen / elapsed:,.0f} img/s")
        if recipe.evaluates_after(epoch):
            log.start(C.EVAL_START, epoch_num=epoch)
            weights = ema.module if ema is not None and ema.n_averaged > 0 else model   # EMA once it has started
            accuracy = evaluate(weights, val_loader, dev, amp_dtype)
            log.end(C.EVAL_STOP, epoch_num=epoch)
            log.event(C.EVAL_ACCURACY, accuracy, epoch_num=epoch)
            log.end(C.BLOCK_STOP, first_epoch_num=block_first)
            block_first = epoch + 1
            line += f" | top-1 {accuracy:.4f}"
        done = time.time() - started
        line += f" | ETA {done / (epoch + 1 - first_epoch) * (recipe.epochs - epoch - 1) / 60:.1f} min"
        if dev.is_main:
            progress(line)
        save(epoch + 1, 0)
        if accuracy is not None and accuracy > recipe.target_accuracy:
            status = C.SUCCESS
            break
    log.end(C.RUN_STOP, status=status, **({"reason": "epochs exhausted"} if status == C.ABORTED else {}))
    if dev.is_main:
        progress(f"run_stop {status}: top-1 {accuracy} after {(time.time() - run_start_ms / 1000) / 60:.2f} min"
                 + (f" -> {log.path}" if log.path else ""))
    return 0 if status == C.SUCCESS else 2


def register(subparsers) -> None:
    p = subparsers.add_parser("train", help="run one timed training run (under torchrun for several devices)")
    add_train_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    validate_train_args(args)
    return train(args)


if __name__ == "__main__":
    from resnet.cli import standalone

    sys.exit(standalone(register))
