"""BlurPool (Zhang 2019, "Making convolutional networks shift-invariant again"), by module surgery.

A strided conv becomes blur (stride 1) -> the original conv; a max-pool becomes max-pool (stride 1) -> blur at
the original stride. The blur is the [1 2 1] x [1 2 1] / 16 filter applied per channel with zero padding 1.
As in Composer (which ran the submission), an input passes through unblurred only when it is smaller than the
filter after padding (height or width + 2 < 3), i.e. never for a real feature map: a 1x1 or 2x2 map is blurred
too, its border mixing in the zero padding.
"""
import torch
import torch.nn.functional as F
from torch import nn


def blur_filter() -> torch.Tensor:
    row = torch.tensor([1.0, 2.0, 1.0])
    return (torch.outer(row, row) / 16.0).view(1, 1, 3, 3)


class Blur2d(nn.Module):
    """Depthwise low-pass filter; an input smaller than the filter after padding passes through unchanged."""

    def __init__(self, stride: int = 1):
        super().__init__()
        self.stride = stride
        self.register_buffer("filter", blur_filter(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2] + 2 < 3 or x.shape[-1] + 2 < 3:   # Composer's rule; only an empty map meets it
            return x
        channels = x.shape[1]
        weight = self.filter.to(dtype=x.dtype).expand(channels, 1, 3, 3)
        return F.conv2d(x, weight, stride=self.stride, padding=1, groups=channels)


class BlurConv2d(nn.Sequential):
    def __init__(self, conv: nn.Conv2d):
        super().__init__(Blur2d(stride=1), conv)


class BlurMaxPool2d(nn.Sequential):
    def __init__(self, pool: nn.MaxPool2d):
        stride = pool.stride if isinstance(pool.stride, int) else pool.stride[0]
        super().__init__(nn.MaxPool2d(pool.kernel_size, stride=1, padding=pool.padding, dilation=pool.dilation,
                                      ceil_mode=pool.ceil_mode), Blur2d(stride=stride))


def _wants_blur(module: nn.Module, min_channels: int) -> bool:
    if isinstance(module, nn.Conv2d):
        return max(module.stride) > 1 and module.in_channels >= min_channels
    if isinstance(module, nn.MaxPool2d):
        return module.stride not in (1, (1, 1))
    return False


def apply_blurpool(model: nn.Module, min_channels: int = 16) -> nn.Module:
    """Replace, in place, every strided conv with >= `min_channels` inputs and every strided max-pool by its
    blurred version (the conv keeps its weights). Returns the model."""
    targets = [(name, m) for name, m in model.named_modules() if _wants_blur(m, min_channels)]
    for name, module in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        blurred = BlurConv2d(module) if isinstance(module, nn.Conv2d) else BlurMaxPool2d(module)
        setattr(parent, child, blurred)
    return model
