"""The methods of Medium and Hot (docs/RECIPE.md section 12) wired into a `train.Training`: the per-batch methods
`prepare` runs (ColOut, MixUp), the step the recipe trains with (SAM's, or the plain one), each step's random draws
seeded from (run seed, rank, step), and the tail every step shares (`finish_step`). `train.build_training` asks
for them once; the functions here take the Training as their first argument and never import `train`."""
import contextlib
import functools
from collections.abc import Callable

import numpy as np
import torch

from resnet.algorithms import colout_batch, mixup_batch, sam_step


def batch_methods(recipe, num_classes: int) -> tuple:
    """The recipe's per-batch methods, in the order of mosaicml/examples' Hot (after the resize): ColOut, MixUp."""
    methods = []
    if recipe.colout_fraction:
        p = recipe.colout_fraction
        methods.append(lambda images, targets: (colout_batch(images, p, p), targets))
    if recipe.mixup_alpha:
        methods.append(functools.partial(mixup_batch, num_classes=num_classes, alpha=recipe.mixup_alpha))
    return tuple(methods)


def choose_step(recipe, plain_step: Callable) -> Callable:
    """The recipe's step, chosen once: SAM's (every k-th step two passes) or the plain one; with random per-batch
    methods (MixUp, ColOut, stochastic depth), each step draws from its own seed (`seeded_step`)."""
    step = (functools.partial(sam_train_step, plain_step=plain_step, rho=recipe.sam_rho,
                              every=recipe.sam_every_steps, epsilon=recipe.sam_epsilon) if recipe.sam_rho
            else plain_step)
    random = recipe.mixup_alpha or recipe.colout_fraction or recipe.stochastic_depth_rate
    return functools.partial(seeded_step, step, torch.initial_seed(), _rank()) if random else step


def _rank() -> int:
    return torch.distributed.get_rank() if torch.distributed.is_initialized() else 0


def seeded_step(step_fn: Callable, seed: int, rank: int, t, images, labels, side_px):
    """`step_fn` with torch's RNGs (CPU and this device) seeded from (run seed, rank, step) alone and put back
    after: MixUp's, ColOut's and stochastic depth's draws differ between ranks (as Composer's per-rank seeds) and a
    resumed run, wherever it stopped, draws what the uninterrupted run drew. Seeding is host-side: no sync."""
    devices = [images.device.index or 0] if images.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices, device_type="cuda"):
        torch.manual_seed(int(np.random.SeedSequence([seed, rank, t.step]).generate_state(1, np.uint64)[0] >> 1))
        return step_fn(t, images, labels, side_px)


def sam_train_step(t, images, labels, side_px: int, *, plain_step: Callable, rho: float, every: int,
                   epsilon: float):
    """SAM's step (RECIPE section 12): at every `every`-th step (Composer: global step + 1 a multiple of it), the
    two passes of `sam_step` on one prepared batch, the first without DDP's all-reduce; the plain step otherwise.
    Returns the loss at w, detached on the device."""
    if (t.step + 1) % every:
        return plain_step(t, images, labels, side_px)
    images, targets = t.prepare(images, labels, side_px)

    def closure():
        loss = t.forward_loss(images, targets)
        t.scaler.scale(loss).backward()
        return loss

    scale = t.scaler._get_scale_async if t.scaler.is_enabled() else None   # the scale the first pass used
    loss = sam_step(t.model.parameters(), closure, rho, epsilon, grad_scale=scale,
                    first_pass=getattr(t.net, "no_sync", contextlib.nullcontext))
    finish_step(t)
    return loss.detach()


def finish_step(t) -> None:
    """After the backward pass(es): SGDW step through the gradient scaler, LR step, EMA every k steps."""
    t.scaler.step(t.optimizer)
    t.scaler.update()
    t.optimizer.zero_grad(set_to_none=True)
    t.scheduler.step()
    t.step += 1
    if t.ema is not None and t.step % t.ema_every_steps == 0:
        t.ema.update_parameters(t.model)
