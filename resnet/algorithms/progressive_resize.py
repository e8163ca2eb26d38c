"""Progressive resizing (RECIPE.md section 7): train on smaller images early, full size at the end."""
from __future__ import annotations


def progressive_resize_px(epoch: int, total_epochs: int, full_px: int, initial_scale: float, delay: float,
                          finetune: float, increment_px: int) -> int:
    """Training side for `epoch` (0-based; progress is the fraction of completed epochs)."""
    progress = epoch / total_epochs
    if progress < delay or finetune + delay >= 1.0:
        frac = 0.0 if progress < delay else 1.0
    else:
        frac = min((progress - delay) / (1.0 - finetune - delay), 1.0)
    scale = initial_scale + (1.0 - initial_scale) * frac
    return min(full_px, round(full_px * scale / increment_px) * increment_px)


def resize_batch(images: torch.Tensor, side_px: int) -> torch.Tensor:
    """Nearest-neighbour shrink of a batch to side_px x side_px (explicit size, not a scale factor)."""
    import torch    # here: the schedule above is plain arithmetic, which the launcher uses without torch
    import torch.nn.functional as F

    if side_px >= images.shape[-1] and side_px >= images.shape[-2]:
        return images
    out = F.interpolate(images, size=(side_px, side_px), mode="nearest")
    return out.contiguous(memory_format=torch.channels_last) if images.is_contiguous(
        memory_format=torch.channels_last) else out
