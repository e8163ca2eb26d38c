"""BlurPool surgery and the blur filter (docs/RECIPE.md)."""
import pytest
import torch
import torchvision
from torch import nn

from resnet.algorithms import apply_blurpool
from resnet.algorithms.blurpool import Blur2d, BlurConv2d, BlurMaxPool2d, blur_filter


def test_blurpool_surgery_on_resnet50():
    model = torchvision.models.resnet50()
    x = torch.randn(1, 3, 64, 64)
    model.eval()
    before_shapes = {}
    hooks = [m.register_forward_hook(lambda m, i, o, n=n: before_shapes.__setitem__(n, o.shape))
             for n, m in model.named_children()]
    model(x)
    for h in hooks:
        h.remove()
    convs = {n: m.weight.clone() for n, m in model.named_modules()
             if isinstance(m, nn.Conv2d) and max(m.stride) > 1 and m.in_channels >= 16}
    apply_blurpool(model)
    blurred = [n for n, m in model.named_modules() if isinstance(m, BlurConv2d)]
    pools = [n for n, m in model.named_modules() if isinstance(m, BlurMaxPool2d)]
    assert len(blurred) == 6 and len(pools) == 1 and sorted(blurred) == sorted(convs)
    assert sorted(blurred) == sorted(f"layer{i}.0.{c}" for i in (2, 3, 4) for c in ("conv2", "downsample.0"))
    assert isinstance(model.conv1, nn.Conv2d)  # the stem (3 input channels) is left alone
    for name in blurred:
        assert torch.equal(model.get_submodule(name)[1].weight, convs[name])
    after_shapes = {}
    hooks = [m.register_forward_hook(lambda m, i, o, n=n: after_shapes.__setitem__(n, o.shape))
             for n, m in model.named_children()]
    model(x)
    assert after_shapes == before_shapes
    assert blur_filter().sum().item() == pytest.approx(1.0)
    assert list(blur_filter().flatten()) == [v / 16 for v in (1, 2, 1, 2, 4, 2, 1, 2, 1)]


def test_blur_filters_even_tiny_maps_as_composer_does():
    """Composer passes an input through only when it is smaller than the filter after padding (H + 2 < 3): a 1x1
    or 2x2 map is blurred too, its border mixing in the zero padding."""
    blur = Blur2d(stride=1)
    one = torch.randn(1, 4, 1, 1)
    assert torch.allclose(blur(one), one * 4 / 16)              # only the centre tap sees the pixel
    two = torch.randn(1, 4, 2, 2)
    expected = (4 * two + 2 * two.flip(-1) + 2 * two.flip(-2) + two.flip(-1, -2)) / 16
    assert torch.allclose(blur(two), expected, atol=1e-6)
    empty = torch.randn(1, 4, 0, 5)
    assert blur(empty) is empty
    flat = torch.ones(1, 4, 8, 8)
    assert torch.allclose(blur(flat)[..., 1:-1, 1:-1], flat[..., 1:-1, 1:-1])  # interior of a constant is kept
    assert Blur2d(stride=2)(torch.randn(2, 4, 11, 11)).shape[-2:] == (6, 6)   # like a 3x3 stride-2 conv
