"""The training loop: `python -m resnet.train` (also `mlperf-resnet train`), one process per device under torchrun.

set-up, untimed: settings, checkpoint, data, model, all checked before result_N.txt is claimed; on a GPU or with
COMPILE=1, a warm-up of every training side and both evaluation batch shapes in the dtypes training uses (compiles
graphs, tunes cuDNN)
-> run_start -> epochs: progressive resize, channels-last, autocast, LR per batch, EMA every k steps
-> after every `eval_every_epochs` completed epochs (and after the last): evaluation of the EMA weights in fp32
-> run_stop `success` at the first evaluation above the target, else `aborted`: the epochs ran out, a signal
   (SIGTERM/SIGINT/SIGHUP: checkpoint, then stop), a non-finite loss, or any error (its reason is logged).

A stop signal during set-up (loading, compiling, warming up) is a stop too: the run ends before run_start, with
its console line, no log and exit 4, also when the signal killed the warm-up's compiler processes.

Exit status: 0 success, 1 error, 2 target not reached, 3 non-finite loss, 4 stopped by a signal (errors.EXIT_MEANINGS).
"""
import argparse
import contextlib
import copy
import dataclasses
import functools
import inspect
import itertools
import os
import random
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from resnet import checkpoint, distributed, errors, methods
from resnet.algorithms import DecoupledSGDW, ema_model, label_smoothed_bce, resize_batch
from resnet.checkpoint import RunProgress, Saver
from resnet.errors import ERROR, NON_FINITE, NOT_REACHED, STOPPED, SUCCESS   # the exit statuses
from resnet.mlperf import C, RunLog, claim_result_file, log_hyperparameters, log_init
from resnet.model import build_model
from resnet.recipe import Plan, amp_dtype, lr_factor, needs_grad_scaler
from resnet.settings import add_train_arguments, check_resumed_batch, recipe_from_args, validate_train_args
from resnet.stopping import SetUpStopped, StopRequest, stop_line

NAME = "train"
HELP = "run one timed training run (under torchrun for several devices)"
# The loss and the stop flag cross to the host once every this many steps (and at every epoch's end), not every
# step: a step on a GPU then never waits for the host. A signal is answered within this many steps (seconds).
CHECK_EVERY_STEPS = 8


def progress(msg: str) -> None:
    """A console line. A console that went away (its pipe closed) must not end a run that is still training."""
    with contextlib.suppress(OSError, ValueError):
        print(msg, file=sys.stderr, flush=True)


def autocast(device: torch.device, dtype: torch.dtype | None):
    """The one autocast context of training, warm-up and evaluation; dtype None: plain fp32."""
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def loss_function(recipe):
    """The recipe's loss (RECIPE section 4): label-smoothed BCE summed / per-device batch, or cross-entropy."""
    if recipe.loss == "bce":
        return functools.partial(label_smoothed_bce, smoothing=recipe.label_smoothing)
    return nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing)


@dataclass
class Training:
    """Everything one optimiser step touches (built by `build_training`): the step chosen for the recipe, what
    happens to a batch before the forward pass, the forward pass with its loss, and the model evaluation scores."""
    model: nn.Module              # the raw model: checkpoints and the EMA read it
    net: nn.Module                # what runs forward: the model, DDP-wrapped and/or compiled
    ema: nn.Module | None
    optimizer: torch.optim.Optimizer
    optimizer_name: str           # as the MLPerf log names it (opt_name)
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    loss_fn: object
    amp_dtype: torch.dtype | None
    ema_every_steps: int
    step_fn: Callable             # (t, images, labels, side_px) -> loss, detached on the device: one step
    step: int = 0
    batch_methods: tuple = ()     # (images, targets) -> (images, targets) after the resize (section 12: ColOut, MixUp)

    def prepare(self, images: torch.Tensor, labels: torch.Tensor, side_px: int):
        """A batch as the forward pass takes it: (images shrunk to this epoch's side, targets), then the recipe's
        per-batch methods (the targets become MixUp's soft ones)."""
        images, targets = resize_batch(images, side_px), labels
        for method in self.batch_methods:
            images, targets = method(images, targets)
        return images, targets

    def forward_loss(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The forward pass under the training autocast, and the recipe's loss."""
        with autocast(images.device, self.amp_dtype):
            return self.loss_fn(self.net(images), targets)

    @property
    def evaluated(self) -> nn.Module:
        """The model evaluation scores: the EMA's weights once it has averaged, else the model."""
        return self.ema.module if self.ema is not None and int(self.ema.n_averaged) else self.model

    def parts(self) -> dict:
        """What a checkpoint holds."""
        return dict(model=self.model, ema=self.ema, optimizer=self.optimizer, scheduler=self.scheduler,
                    scaler=self.scaler)


def _ddp(model: nn.Module, device: torch.device) -> nn.Module:
    """DDP without a buffer broadcast before every forward (each rank keeps its own BatchNorm statistics while
    training; they are averaged before each evaluation). gradient_as_bucket_view=True makes each .grad a view of its
    all-reduce bucket: what that saves here is the copy of the reduced bucket back into .grad, and only that. With
    zero_grad(set_to_none=True) every step starts without gradients, so backward still makes a fresh .grad that
    DDP copies into the bucket before replacing it by the view: the copy in and the transient gradient remain.
    PyTorch 2.12+ names the switch forward_sync_buffers (broadcast_buffers is deprecated there); 2.10 has only
    broadcast_buffers. Both sync the buffers once at construction."""
    ddp = nn.parallel.DistributedDataParallel
    no_sync = ({"forward_sync_buffers": False} if "forward_sync_buffers" in inspect.signature(ddp).parameters
               else {"broadcast_buffers": False})
    return ddp(model, device_ids=[device] if device.type == "cuda" else None, gradient_as_bucket_view=True,
               **no_sync)


def build_training(plan: Plan, device: torch.device, compile_model: bool = False,
                   compile_backend: str = "inductor") -> Training:
    recipe = plan.recipe
    model = build_model(recipe, plan.num_classes).to(device)
    ema = ema_model(model, plan.ema_decay) if recipe.ema else None
    optimizer = DecoupledSGDW(model.parameters(), lr=recipe.peak_lr, momentum=recipe.momentum,
                              weight_decay=recipe.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, plan.warmup_steps, plan.total_steps))
    net = _ddp(model, device) if plan.world_size > 1 else model
    if compile_model:
        limits = torch._dynamo.config   # PyTorch >= 2.7 calls it recompile_limit, older ones cache_size_limit
        name = "recompile_limit" if hasattr(limits, "recompile_limit") else "cache_size_limit"
        setattr(limits, name, max(getattr(limits, name), 64))   # one graph per progressive-resizing side
        net = torch.compile(net, dynamic=False, backend=compile_backend)
    return Training(model=model, net=net, ema=ema, optimizer=optimizer, optimizer_name="decoupled_sgdw",
                    scheduler=scheduler,
                    scaler=torch.amp.GradScaler(device.type, enabled=needs_grad_scaler(recipe.precision)),
                    loss_fn=loss_function(recipe), amp_dtype=amp_dtype(recipe.precision),
                    ema_every_steps=plan.ema_every_steps, step_fn=methods.choose_step(recipe, train_step),
                    batch_methods=methods.batch_methods(recipe, plan.num_classes))


def train_step(t: Training, images: torch.Tensor, labels: torch.Tensor, side_px: int) -> torch.Tensor:
    """One step of the recipe: `prepare` the batch, forward under autocast, loss, scaled backward, then SGDW step,
    LR step, EMA every k steps (`methods.finish_step`). Returns the loss, detached and left on the device."""
    loss = t.forward_loss(*t.prepare(images, labels, side_px))
    t.scaler.scale(loss).backward()
    methods.finish_step(t)
    return loss.detach()


def warm_up(t: Training, plan: Plan, spec, eval_batches: tuple) -> list[int]:
    """Before run_start, do once what training will do, so that the timed region neither compiles nor tunes:
    forward and backward at every training side, from inputs of the loader's side, dtype and memory format
    (torch.compile guards on all three; cuDNN's autotuner picks kernels per shape and dtype), and evaluation at
    each of `eval_batches` (the full and the last batch size) in eval mode under the evaluation dtype. No optimiser
    step; the weights, BatchNorm statistics, gradients and RNGs are put back exactly as they were."""
    recipe, device = plan.recipe, torch.device(spec.device)
    weights, rngs = copy.deepcopy(t.model.state_dict()), checkpoint.rng_state()
    sides = sorted({recipe.resolution_px(e) for e in range(recipe.epochs)})
    labels = torch.zeros(plan.per_device_batch, dtype=torch.long, device=device)
    for px in sides:
        loader_px = spec.train_side(next(e for e in range(recipe.epochs) if recipe.resolution_px(e) == px))
        images = torch.randn(plan.per_device_batch, 3, loader_px, loader_px, device=device, dtype=spec.dtype(True))
        images = images.contiguous(memory_format=torch.channels_last)
        t.forward_loss(*t.prepare(images, labels, px)).backward()
        t.optimizer.zero_grad(set_to_none=True)
    evaluated = t.evaluated
    evaluated.eval()
    with torch.no_grad(), autocast(device, amp_dtype(recipe.eval_precision)):
        for n in eval_batches:
            images = torch.randn(n, 3, recipe.eval_crop_px, recipe.eval_crop_px, device=device,
                                 dtype=spec.dtype(False)).contiguous(memory_format=torch.channels_last)
            evaluated(images)
    evaluated.train()
    t.model.load_state_dict(weights)
    checkpoint.set_rng_state(rngs)
    return sides


@torch.no_grad()
def evaluate(model: nn.Module, loader, device: torch.device, dtype) -> float:
    """Top-1 over the whole validation set; every rank scores the same model (BatchNorm statistics averaged
    across ranks first) on its shard, and the counts are summed."""
    distributed.average_buffers(model)
    model.eval()
    counts = torch.zeros(2, dtype=torch.float64, device=device)
    for images, labels in loader:
        with autocast(device, dtype):
            logits = model(images)
        counts[0] += (logits.float().argmax(1) == labels).sum()
        counts[1] += labels.numel()
    model.train()
    correct, total = distributed.all_reduce_sum(counts).tolist()
    return correct / total


def check_flags(bad_loss: torch.Tensor, stop: StopRequest, device) -> tuple[bool, bool]:
    """(a loss was not finite, a stop was asked) on any rank: one small collective, one host copy."""
    asked = torch.tensor(float(stop.signal is not None)).to(device, non_blocking=True)
    flags = distributed.all_reduce_max(torch.stack([bad_loss.float(), asked]))
    bad, stopping = flags.tolist()
    return bool(bad), bool(stopping)


def set_up(args: argparse.Namespace, dev, started: float):
    """Everything before the log is claimed: the run's seed and progress (a resumed one's from its checkpoint),
    the loaders, the plan, the Training (restored and warmed up). Raises typed errors for every problem found."""
    from resnet.data.loaders import LoaderSpec, make_loaders   # data pulls in FFCV/DALI: only when training

    recipe = recipe_from_args(args, dev.world_size)
    ckpt_path = Path(args.checkpoint_dir) / "last.pt" if args.checkpoint_dir else None
    if ckpt_path and dev.is_main:
        checkpoint.claim(ckpt_path.parent)              # one owner: this process, for its life
    state = checkpoint.find_resumable(ckpt_path, args.resume, args.seed)
    saved = checkpoint.progress_of(state) if state else None
    seed = saved.seed if saved else args.seed          # a resumed run keeps its seed and data order
    seed = distributed.broadcast_int(seed if seed is not None else random.SystemRandom().randrange(2**31))
    torch.manual_seed(seed)
    random.seed(seed)
    identity = dict(recipe=dataclasses.asdict(recipe), world_size=dev.world_size)
    if saved:    # another run's checkpoint is refused before the loaders are built (on ImageNet: a minute or more)
        check_resumed_batch(saved.identity, recipe)
        checkpoint.check_resumable(saved, identity)
    spec = LoaderSpec.from_recipe(recipe, decode_to_side=args.decode_to_side, batch_size=recipe.global_batch_size //
                                  dev.world_size, workers=args.workers, device=str(dev.device), rank=dev.rank,
                                  world_size=dev.world_size, seed=seed, hw_decoder_load=args.dali_hw_decoder_load,
                                  dali_prefetch=args.dali_prefetch_queue, nvjpeg_padding_mb=args.dali_nvjpeg_mempadding,
                                  preallocate_px=(args.dali_preallocate_width, args.dali_preallocate_height))
    train_loader, val_loader, info = make_loaders(args.data, spec, loader=args.loader)
    if info.num_classes < 2:
        raise errors.DataError(f"--data (DATADIR) {args.data}: has {info.num_classes} class; top-1 over one class "
                               "is 1.0 whatever the model learns; use a data set of at least 2 classes")
    plan = Plan(recipe, info.num_classes, info.train_samples, info.eval_samples, dev.world_size)
    plan.check()
    run = RunProgress(seed, dict(identity, data=info.identity()))
    distributed.check_same(run.identity, checkpoint.setting_name)    # every node launched with the same settings
    t = build_training(plan, dev.device, args.compile)
    if state:
        checkpoint.check_resumable(saved, dict(data=run.identity["data"]))   # the rest was checked before the loaders
        run = checkpoint.restore(t.parts(), state)
        t.step = run.step
        if dev.is_main:
            progress(f"resuming the interrupted run in {ckpt_path}: seed {seed}, epoch {run.epoch + 1}, step "
                     f"{run.step} (RESUME={args.resume}; its first start still counts)")
    if args.compile or dev.device.type == "cuda":   # eager on a CPU has no kernels to pick: nothing to warm
        sides = warm_up(t, plan, spec, spec.eval_batch_sizes(info.eval_samples))
        if dev.is_main:
            progress(f"warmed up {len(sides)} training sides and the evaluation before run_start "
                     f"({time.time() - started:.0f} s)")
    return t, plan, (train_loader, val_loader), Saver(ckpt_path, args.checkpoint_every_minutes, dev.is_main, run)


def train(args: argparse.Namespace) -> int:
    started, stop, loaders = time.time(), StopRequest(), ()
    try:
        dev = distributed.init(args.device, args.dist_timeout_s)
        if dev.device.type == "cuda":
            torch.backends.cudnn.benchmark = True     # each progressive-resizing side gets its fastest kernels
        t, plan, loaders, saver = set_up(args, dev, started)
        stop.setting_up = False             # from here on a stop is answered at the loop's next check
        stopping = dev.world_size > 1 and check_flags(torch.zeros((), device=dev.device), stop, dev.device)[1]
    except (SetUpStopped, Exception):
        if stop.signal is None:             # an error, not a stop (also when it killed the compiler's workers)
            raise
        stopping = True
    if stopping:                            # before run_start: a stop like any other, with nothing to log
        for loader in loaders:
            loader.close()
        progress(stop_line(stop, None, "during set-up, before run_start"))
        return STOPPED
    log = RunLog((Path(args.log_file) if args.log_file else claim_result_file(Path(args.results_dir)))
                 if dev.is_main else None)
    try:
        log_init(log, org=args.org, platform=args.platform, status=args.status, cache_cleared=args.cache_cleared,
                 init_start_ms=int(started * 1000))
        log_hyperparameters(log, plan.recipe, plan, saver.progress.seed, t.optimizer_name)
        log.end(C.INIT_STOP)
        code = run_loop(t, plan=plan, dev=dev, log=log, loaders=loaders, stop=stop, saver=saver)
    except Exception as e:
        # Whatever went wrong after the log was claimed, the log ends with run_stop aborted and its reason.
        reason = str(e) if isinstance(e, errors.Error) else f"{type(e).__name__}: {e}"
        with contextlib.suppress(Exception):    # a log on a full disk cannot take run_stop either
            log.end(C.RUN_STOP, status=C.ABORTED, reason=reason.splitlines()[0][:300] if reason else "error")
        log.close()
        if os.environ.get("MLPERF_RESNET_DEBUG") == "1":
            raise
        logged = (f"run logged as aborted in {log.path}" if log.stopped else
                  f"the run could not be logged as aborted: {log.path} ends at its last whole line")
        errors.report(f"{reason.splitlines()[0] if reason else type(e).__name__}"
                      + (f" (rank {dev.rank}; {logged})" if log.path else f" (rank {dev.rank})"))
        return ERROR
    finally:
        for loader in loaders:
            loader.close()
    log.close()
    distributed.shutdown()     # only after a normal end: see distributed.shutdown
    return code


def run_loop(t: Training, *, plan: Plan, dev, log: RunLog, loaders, stop: StopRequest, saver: Saver) -> int:
    """The timed region, from run_start to run_stop; returns the exit status."""
    recipe, (train_loader, val_loader), run = plan.recipe, loaders, saver.progress
    resumed, first_epoch, skip = run.step > 0, run.epoch, run.batches_done
    log.start(C.RUN_START, time_ms=run.start_clock(), **({"resumed_from_epoch": first_epoch} if resumed else {}))
    accuracy, success, block_first, wall_start = None, False, first_epoch, time.time()
    bad_loss = torch.zeros((), dtype=torch.bool, device=dev.device)
    for epoch in range(first_epoch, recipe.epochs):        # `epoch` is 0-based; the log counts completed epochs
        px = recipe.resolution_px(epoch)
        if epoch == block_first:
            log.start(C.BLOCK_START, first_epoch_num=epoch, epoch_count=recipe.block_epochs(epoch))
        log.start(C.EPOCH_START, epoch_num=epoch)
        train_loader.set_epoch(epoch)
        if skip:                    # resuming inside an epoch: replay its data order from the epoch's start
            checkpoint.set_rng_state(run.epoch_rng)
        epoch_rng = checkpoint.rng_state()
        tic, loss_sum = time.time(), torch.zeros((), device=dev.device)
        for batch, (images, labels) in enumerate(itertools.islice(train_loader, plan.steps_per_epoch), start=1):
            if batch <= skip:
                continue
            loss = t.step_fn(t, images, labels, px)
            loss_sum += loss
            bad_loss |= ~torch.isfinite(loss)
            if t.step % CHECK_EVERY_STEPS and batch < plan.steps_per_epoch:
                continue
            bad, stopping = check_flags(bad_loss, stop, dev.device)
            if bad:                 # found before any checkpoint could keep it
                progress(f"error: the loss became non-finite by step {t.step} (epoch {epoch + 1}); run aborted. "
                         "Lower the learning rate or use bf16/fp32 (PRECISION)")
                log.end(C.RUN_STOP, status=C.ABORTED, reason="non-finite loss")
                return NON_FINITE
            if stopping or saver.due():     # a stop waits for its write: the stop line tells how it went
                saver.save(t.parts(), step=t.step, epoch=epoch, batches_done=batch, epoch_rng=epoch_rng,
                           wait=stopping)
            if stopping:
                progress(stop_line(stop, saver, f"at epoch {epoch + 1} step {t.step}"))
                log.end(C.RUN_STOP, status=C.ABORTED, reason=f"signal {stop.signal or 'on another rank'}")
                return STOPPED
        skip, done = 0, epoch + 1
        log.end(C.EPOCH_STOP, epoch_num=done)
        if dev.world_size > 1:
            fingerprint = distributed.check_replicas(t.model)
            if dev.is_main:
                progress(f"replicas: identical across {dev.world_size} ranks (fingerprint {fingerprint:.10g})")
        line = (f"epoch {done}/{recipe.epochs} | {px}px | lr {t.scheduler.get_last_lr()[0]:.4f} | "
                f"loss {loss_sum.item() / plan.steps_per_epoch:.4f} | "
                f"{plan.steps_per_epoch * recipe.global_batch_size / (time.time() - tic):,.0f} img/s")
        if recipe.evaluates_after(epoch):
            log.start(C.EVAL_START, epoch_num=done)
            accuracy = evaluate(t.evaluated, val_loader, dev.device, amp_dtype(recipe.eval_precision))
            log.end(C.EVAL_STOP, epoch_num=done)
            log.event(C.EVAL_ACCURACY, accuracy, epoch_num=done)
            log.end(C.BLOCK_STOP, first_epoch_num=block_first)
            block_first, success = done, accuracy > recipe.target_accuracy
            line += f" | top-1 {accuracy:.4f}"
        minutes_left = (time.time() - wall_start) / (done - first_epoch) * (recipe.epochs - done) / 60
        if dev.is_main:
            progress(line + f" | ETA {minutes_left:.1f} min")
        saver.save(t.parts(), step=t.step, epoch=done, batches_done=0, epoch_rng=None,
                   finished=success or done == recipe.epochs)
        if success:
            break
    status = C.SUCCESS if success else C.ABORTED
    log.end(C.RUN_STOP, status=status, **({"reason": "epochs exhausted"} if status == C.ABORTED else {}))
    saver.finish()      # after the last write (outside the clock): finished.json marks this run as ended
    if dev.is_main:
        progress(f"run_stop {status}: top-1 {accuracy} after {(time.time() - run.run_start_ms / 1000) / 60:.2f} min"
                 + (f" -> {log.path}" if log.path else ""))
    return SUCCESS if status == C.SUCCESS else NOT_REACHED


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_train_arguments(p)


def run(args: argparse.Namespace) -> int:
    for warning in validate_train_args(args) or []:
        if os.environ.get("RANK", "0") == "0":
            errors.warn(warning)
    return train(args)


if __name__ == "__main__":
    sys.exit(errors.main(sys.modules[__name__]))
