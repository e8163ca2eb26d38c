"""Progressive resizing (docs/RECIPE.md): the resize of a batch and the resolution schedule."""
import torch

from resnet.algorithms import progressive_resize_px, resize_batch
from resnet.recipe import BASELINE, MILD


def test_progressive_resize_is_a_noop_at_full_size():
    x = torch.randn(2, 3, 16, 16).contiguous(memory_format=torch.channels_last)
    assert resize_batch(x, 16) is x
    small = resize_batch(x, 8)
    assert small.shape == (2, 3, 8, 8) and small.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(small, x[:, :, ::2, ::2])  # nearest with an exact factor of 2 picks every other pixel
    assert progressive_resize_px(0, 10, 64, 0.5, 0.4, 0.2, 4) == 32
    assert progressive_resize_px(9, 10, 64, 0.5, 0.4, 0.2, 4) == 64


def test_an_initial_scale_of_one_turns_progressive_resizing_off():
    assert {MILD.replace(resize_initial_scale=1.0).resolution_px(e) for e in range(MILD.epochs)} == {176}
    assert {BASELINE.resolution_px(e) for e in range(BASELINE.epochs)} == {224}


def test_resizing_follows_the_epoch_budget():
    """The ramp is laid out in fractions of training: it leaves half size after 40% of the epochs and reaches full
    size with 20% left (progress = completed epochs / epochs, sides in steps of 4 px)."""
    short = MILD.replace(epochs=10, train_crop_px=64)
    assert [short.resolution_px(e) for e in range(10)] == [32, 32, 32, 32, 32, 40, 48, 56, 64, 64]
