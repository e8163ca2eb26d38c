"""Progressive resizing (docs/RECIPE.md): the resize of a batch and the resolution schedule."""
import torch

from resnet.algorithms import progressive_resize_px, resize_batch


def test_progressive_resize_is_a_noop_at_full_size():
    x = torch.randn(2, 3, 16, 16).contiguous(memory_format=torch.channels_last)
    assert resize_batch(x, 16) is x
    small = resize_batch(x, 8)
    assert small.shape == (2, 3, 8, 8) and small.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(small, x[:, :, ::2, ::2])  # nearest with an exact factor of 2 picks every other pixel
    assert progressive_resize_px(0, 10, 64, 0.5, 0.4, 0.2, 4) == 32
    assert progressive_resize_px(9, 10, 64, 0.5, 0.4, 0.2, 4) == 64
