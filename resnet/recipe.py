"""The recipes as data. Field names and comments follow docs/RECIPE.md section by section.

A `Recipe` holds only what the recipe says. Everything that depends on the data set or the machine
(steps per epoch, number of classes, world size, per-device batch, EMA steps) is derived in `Plan`, so the
same recipe runs on ImageNet on 8 GPUs and on a tiny synthetic set on 2 CPU cores.

Epochs are counted from 0 in code (`epoch` = index of the epoch being trained); the MLPerf log and the
schedule command number them as completed epochs (epoch index + 1).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from resnet.errors import SettingError

SUBMISSION_TARGET_ACCURACY = 0.759   # MLPerf's ResNet-50 quality target: top-1 strictly above this
LOSSES = ("bce", "ce")


@dataclass(frozen=True)
class Precision:
    """One way to run the arithmetic: the package's one precision-name -> dtype table. Names only (no torch
    import), so that settings checks stay fast."""
    dtype: str                # torch dtype name: what the loaders yield and what autocast computes in
    grad_scaler: bool         # fp16's narrow exponent needs loss scaling; bf16 keeps fp32's range
    needs_cuda: bool          # CPU autocast has no fp16

    @property
    def autocast(self) -> str | None:
        """The autocast dtype name; None for fp32 (run without autocast)."""
        return None if self.dtype == "float32" else self.dtype


PRECISIONS = {
    "fp16": Precision("float16", grad_scaler=True, needs_cuda=True),
    "bf16": Precision("bfloat16", grad_scaler=False, needs_cuda=False),
    "fp32": Precision("float32", grad_scaler=False, needs_cuda=False),
}


def torch_dtype(precision: str):
    """The torch dtype of a precision name (float32 for fp32): the dtype of the images a loader yields."""
    import torch

    return getattr(torch, PRECISIONS[precision].dtype)


def amp_dtype(precision: str):
    """The autocast dtype of a precision name (None for fp32: run without autocast)."""
    return None if PRECISIONS[precision].autocast is None else torch_dtype(precision)


def needs_grad_scaler(precision: str) -> bool:
    return PRECISIONS[precision].grad_scaler


#: Network names an ARCH setting may take: torchvision's ResNets, and the CPU stand-in (resnet.model builds them).
ARCHS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnet_cpu")


@dataclass(frozen=True)
class Recipe:
    name: str
    # 1. model and initialisation
    arch: str = "resnet50"                 # a name in ARCHS; resnet50 is v1.5 (stride on the 3x3 conv)
    log_bias_init: bool = True             # fc bias = -ln(num_classes): initial sigmoid outputs ~ 1/num_classes
    # 2. BlurPool surgery (strided convs with >= 16 input channels, and max-pools)
    blurpool: bool = True
    # 3. memory format
    channels_last: bool = True
    # 4. loss
    loss: str = "bce"                      # "bce": label-smoothed BCE, summed / per-device batch; "ce": cross-entropy
    label_smoothing: float = 0.08
    # 5. optimiser: decoupled SGDW
    lr_per_sample: float = 0.001           # peak lr = lr_per_sample x global batch (2.048 at 2048)
    momentum: float = 0.875
    weight_decay: float = 5e-4             # decoupled: p *= 1 - (lr_now / lr_peak) * weight_decay
    # 6. schedule, stepped every batch
    epochs: int = 28
    warmup_epochs: float = 8.0             # linear from 0, not scaled with the epoch budget; then cosine to 0
    # 7. progressive resizing (train) and FixRes (eval)
    train_crop_px: int = 176               # the loader's RandomResizedCrop size
    crop_scale_min: float = 0.08           # RandomResizedCrop keeps 8%..100% of the image area (ImageNet's range)
    resize_initial_scale: float = 0.5      # first training side = train_crop_px x initial scale (1: no resizing)
    resize_delay: float = 0.4              # fraction of training at the initial scale
    resize_finetune: float = 0.2           # fraction of training at full scale
    resize_increment_px: int = 4           # sides are multiples of this
    eval_crop_px: int = 224
    eval_resize_px: int = 232              # centre-crop ratio = eval_crop_px / eval_resize_px
    # 8. EMA of the weights (parameters and buffers); every evaluation uses it. Counted in epochs, so that any
    # data set and any global batch average over the same part of the run (ImageNet at 2048, 625 steps an epoch:
    # Composer's half-life of 100 steps and an update every 20).
    ema: bool = True
    ema_half_life_epochs: float = 0.16
    ema_every_epochs: float = 0.032        # rounded to whole steps, at least 1
    # 10. precision, batch, evaluation, stopping
    precision: str = "fp16"                # training: a name in PRECISIONS (fp16 with a gradient scaler)
    eval_precision: str = "fp32"           # evaluation: Composer v0.7 put no autocast around validation
    global_batch_size: int = 2048
    eval_every_epochs: int = 3             # after every k completed epochs, and after the last
    target_accuracy: float = SUBMISSION_TARGET_ACCURACY   # top-1 strictly above this stops the run
    # 12. the methods Medium and Hot add (all off in Mild and the Baseline)
    mixup_alpha: float = 0.0               # MixUp: lambda = min(b, 1 - b), b ~ Beta(alpha, alpha); 0: off
    sam_rho: float = 0.0                   # SAM: ascent radius; 0: off
    sam_every_steps: int = 1               # SAM's two passes at every k-th step, the plain step otherwise
    sam_epsilon: float = 1e-12             # added to the gradient norm
    colout_fraction: float = 0.0           # ColOut: fraction of the rows and of the columns dropped; 0: off
    randaugment_depth: int = 0             # RandAugment: operations per training image; 0: off
    randaugment_severity: int = 10         # the largest magnitude, of 10; each image draws one in [0, severity]
    stochastic_depth_rate: float = 0.0     # drop rate of the last residual block (linear over depth); 0: off

    def replace(self, **changes) -> "Recipe":
        return dataclasses.replace(self, **changes)

    @property
    def peak_lr(self) -> float:
        return self.lr_per_sample * self.global_batch_size

    def evaluates_after(self, epoch: int) -> bool:
        """Whether 0-based `epoch` ends with an evaluation. As Composer: when the number of completed epochs is a
        multiple of `eval_every_epochs` (Mild: after 3, 6, ..., 27), and after the last epoch as a safety net."""
        completed = epoch + 1
        return completed % self.eval_every_epochs == 0 or completed == self.epochs

    def block_epochs(self, first_epoch: int) -> int:
        """Epochs from 0-based `first_epoch` through the next evaluated one: an MLPerf block's epoch_count."""
        last = first_epoch
        while not self.evaluates_after(last):
            last += 1
        return last - first_epoch + 1

    def resolution_px(self, epoch: int) -> int:
        from resnet.algorithms.progressive_resize import progressive_resize_px

        return progressive_resize_px(epoch, self.epochs, self.train_crop_px, self.resize_initial_scale,
                                     self.resize_delay, self.resize_finetune, self.resize_increment_px)


# Sections 1-10: the recipe of MosaicML's MLPerf Training v2.0 open submission (result 2.0-2127).
MILD = Recipe(name="mild")

# Section 11: same optimiser and schedule; plain cross-entropy with smoothing 0.1, no log-bias init, channels-last
# only, 224 crops throughout, eval 256 -> 224, 90 epochs, eval every 4 epochs.
BASELINE = Recipe(
    name="baseline",
    log_bias_init=False,
    blurpool=False,
    loss="ce",
    label_smoothing=0.1,
    epochs=90,
    train_crop_px=224,
    resize_initial_scale=1.0,
    resize_delay=0.0,
    resize_finetune=0.0,
    eval_crop_px=224,
    eval_resize_px=256,
    ema=False,
    eval_every_epochs=4,
)

# Section 12: MosaicML's longer recipes on Mild's base (Composer v0.11 recipe YAMLs; epochs of mosaicml/examples).
MEDIUM = MILD.replace(
    name="medium",
    epochs=135,
    label_smoothing=0.1,
    mixup_alpha=0.2,
    sam_rho=0.5,
    sam_every_steps=10,
)

HOT = MILD.replace(
    name="hot",
    epochs=270,
    weight_decay=3e-4,
    label_smoothing=0.13,
    resize_initial_scale=0.6,
    resize_delay=0.2,
    mixup_alpha=0.25,
    sam_rho=0.5,
    sam_every_steps=5,
    colout_fraction=0.05,
    randaugment_depth=1,
    randaugment_severity=10,
    stochastic_depth_rate=0.1,
)

RECIPES = {r.name: r for r in (MILD, BASELINE, MEDIUM, HOT)}


def get_recipe(name: str) -> Recipe:
    try:
        return RECIPES[name]
    except KeyError:
        raise SettingError(f"RECIPE: unknown recipe {name!r}; use one of {', '.join(RECIPES)}") from None


@dataclass(frozen=True)
class Plan:
    """What a recipe becomes on one data set and one machine."""
    recipe: Recipe
    num_classes: int
    train_samples: int
    eval_samples: int
    world_size: int

    @property
    def per_device_batch(self) -> int:
        return self.recipe.global_batch_size // self.world_size

    @property
    def steps_per_epoch(self) -> int:
        return self.train_samples // self.recipe.global_batch_size   # drop_last

    @property
    def warmup_steps(self) -> int:
        return round(self.recipe.warmup_epochs * self.steps_per_epoch)

    @property
    def total_steps(self) -> int:
        return self.recipe.epochs * self.steps_per_epoch

    @property
    def ema_every_steps(self) -> int:
        """Optimiser steps between EMA updates: the recipe's fraction of an epoch in whole steps, at least 1."""
        return max(1, round(self.recipe.ema_every_epochs * self.steps_per_epoch))

    @property
    def ema_half_life_steps(self) -> float:
        return self.recipe.ema_half_life_epochs * self.steps_per_epoch

    @property
    def ema_decay(self) -> float:
        """Decay per EMA update, k = 2^(-steps per update / half-life in steps): 0.870551 at 625 steps an epoch."""
        return 2.0 ** (-self.ema_every_steps / self.ema_half_life_steps)

    def check(self) -> None:
        r = self.recipe
        if r.global_batch_size % self.world_size:
            raise SettingError(f"BATCHSIZE: global batch {r.global_batch_size} is not divisible by the world size "
                               f"{self.world_size}; change BATCHSIZE or the number of processes")
        if self.steps_per_epoch < 1:
            raise SettingError(f"BATCHSIZE: {self.train_samples} training images make no full batch of "
                               f"{r.global_batch_size}; lower BATCHSIZE or use more data")
        if r.ema and self.ema_every_steps > self.total_steps:
            # Every evaluation would silently score the raw weights.
            raise SettingError(f"EMA_EVERY_EPOCHS: an EMA update every {self.ema_every_steps} steps is more than "
                               f"the whole run trains ({self.total_steps} steps); lower EMA_EVERY_EPOCHS (the "
                               f"recipe's: {Recipe.ema_every_epochs}) or set EMA=0")


def lr_factor(step: int, warmup_steps: int, total_steps: int) -> float:
    """Learning rate at `step` as a fraction of the peak: linear warm-up from 0, then cosine decay to 0."""
    if step < warmup_steps:
        return step / warmup_steps
    if total_steps <= warmup_steps:
        return 1.0
    progress = min((step - warmup_steps) / (total_steps - warmup_steps), 1.0)
    return 0.5 * (1.0 + math.cos(math.pi * progress))
