"""ColOut (Composer's batch-wise ColOut, RECIPE.md section 12): drop random rows and columns, the same ones for the
whole batch, on the device."""
import torch


def colout_batch(images: torch.Tensor, p_row: float, p_col: float) -> torch.Tensor:
    """Keep int((1 - p_row) * H) random rows and int((1 - p_col) * W) random columns of an NCHW batch, in their
    original order, the same ones for every image. Drawn on the images' device from torch's RNG (no host sync)."""
    if not (0 <= p_row < 1 and 0 <= p_col < 1):
        raise ValueError(f"ColOut fractions must be in [0, 1), got p_row={p_row}, p_col={p_col}")
    h, w = images.shape[-2:]
    rows = torch.randperm(h, device=images.device)[: int((1 - p_row) * h)].sort().values
    cols = torch.randperm(w, device=images.device)[: int((1 - p_col) * w)].sort().values
    out = images.index_select(-2, rows).index_select(-1, cols)
    if images.is_contiguous(memory_format=torch.channels_last):
        out = out.contiguous(memory_format=torch.channels_last)
    return out
