"""The recipe's speed-up methods, each a small function or module usable on any torchvision CNN.

They import only torch, so a user can take one into their own training code in one line.
"""
from resnet.algorithms.blurpool import apply_blurpool
from resnet.algorithms.colout import colout_batch
from resnet.algorithms.ema import ema_model
from resnet.algorithms.loss import label_smoothed_bce, smoothed_targets
from resnet.algorithms.mixup import mixup_batch
from resnet.algorithms.progressive_resize import progressive_resize_px, resize_batch
from resnet.algorithms.sam import sam_step
from resnet.algorithms.sgdw import DecoupledSGDW

__all__ = ["apply_blurpool", "ema_model", "label_smoothed_bce", "smoothed_targets", "progressive_resize_px",
           "resize_batch", "DecoupledSGDW", "colout_batch", "mixup_batch", "sam_step"]
