"""The recipe's speed-up methods, each a small function or module usable on any torchvision CNN.

They import only torch, so a user can take one into their own training code in one line. Each is imported when
first asked for (`from resnet.algorithms import mixup_batch`), so that the schedule's arithmetic
(`progressive_resize_px`, which the launcher's checks use) costs no torch import.
"""
import importlib

_MODULES = {"apply_blurpool": "blurpool", "colout_batch": "colout", "ema_model": "ema", "label_smoothed_bce": "loss",
            "smoothed_targets": "loss", "mixup_batch": "mixup", "progressive_resize_px": "progressive_resize",
            "resize_batch": "progressive_resize", "sam_step": "sam", "DecoupledSGDW": "sgdw"}
__all__ = list(_MODULES)


def __getattr__(name: str):
    if name not in _MODULES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_MODULES[name]}"), name)
