"""Model construction and initialisation (docs/RECIPE.md sections 1-3), and the CPU stand-in's geometry."""
import math

import pytest
import torch
import torchvision
from torch import nn

from resnet.algorithms.blurpool import BlurConv2d, BlurMaxPool2d
from resnet.errors import SettingError
from resnet.model import ARCHS, build_model
from resnet.recipe import BASELINE, MILD


def test_model_initialisation():
    model = build_model(MILD.replace(arch="resnet18"), num_classes=10)
    assert torch.allclose(model.fc.bias, torch.full((10,), -math.log(10)))
    bn_weights = torch.cat([m.weight for m in model.modules() if isinstance(m, nn.BatchNorm2d)])
    assert 0 <= bn_weights.min() and bn_weights.max() < 1 and bn_weights.std() > 0.2  # U[0,1), not ones
    assert all(m.bias.abs().sum() == 0 for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    conv = model.layer3[0].conv2[1] if isinstance(model.layer3[0].conv2, BlurConv2d) else model.layer3[0].conv2
    fan_in = conv.weight[0].numel()
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / fan_in), rel=0.1)
    assert model.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    resnet50 = build_model(MILD, num_classes=1000)
    assert resnet50.fc.bias[0].item() == pytest.approx(-6.9078, abs=1e-4)


@pytest.mark.parametrize("arch", ["resnet18", "resnet_cpu"])
def test_without_log_bias_init_the_fc_bias_is_torchvisions_default(arch):
    """The Baseline keeps nn.Linear's default bias, U(-1/sqrt(fan_in), 1/sqrt(fan_in)), as the submission's did."""
    torch.manual_seed(0)
    fc = build_model(BASELINE.replace(arch=arch), num_classes=100).fc
    bound = 1 / math.sqrt(fc.in_features)
    assert fc.bias.abs().max() <= bound and fc.bias.std() > bound / 3   # spread over the range, not a constant
    assert abs(fc.bias.mean()) < bound / 3                               # and not -ln(100) = -4.6


def _final_map_px(model, px):
    seen = {}
    model.layer4.register_forward_hook(lambda m, i, o: seen.__setitem__("layer4", o.shape[-2:]))
    model.eval()
    with torch.no_grad():
        model(torch.randn(1, 3, px, px).contiguous(memory_format=torch.channels_last))
    assert seen["layer4"][0] == seen["layer4"][1]
    return seen["layer4"][0]


def test_resnet_cpu_sees_resnet50s_feature_maps_at_a_quarter_of_the_side():
    """Progressive resizing's first side (88 px on ImageNet, 22 here), the training crop (176 | 44) and the
    evaluation crop (224 | 56) give the same final feature maps: 3x3, 6x6, 7x7."""
    cpu = build_model(MILD.replace(arch="resnet_cpu"), num_classes=20)
    resnet50 = build_model(MILD, num_classes=1000)
    for imagenet_px, side in ((88, 3), (176, 6), (224, 7)):
        assert _final_map_px(resnet50, imagenet_px) == side
        assert _final_map_px(cpu, imagenet_px // 4) == side


def test_resnet_cpu_blurs_the_strided_convs_resnet50_blurs():
    cpu = build_model(MILD.replace(arch="resnet_cpu"), num_classes=20)
    blurred = sorted(n for n, m in cpu.named_modules() if isinstance(m, BlurConv2d))
    # BasicBlock strides its first 3x3 conv (conv1), ResNet-50's Bottleneck its second (conv2): same role.
    assert blurred == sorted(f"layer{i}.0.{c}" for i in (2, 3, 4) for c in ("conv1", "downsample.0"))
    assert not any(isinstance(m, (nn.MaxPool2d, BlurMaxPool2d)) for m in cpu.modules())   # no max-pool
    assert isinstance(cpu.conv1, nn.Conv2d) and cpu.conv1.stride == (1, 1) and cpu.conv1.kernel_size == (3, 3)
    assert isinstance(cpu, torchvision.models.ResNet)
    plain = build_model(BASELINE.replace(arch="resnet_cpu"), num_classes=20)
    assert not any(isinstance(m, BlurConv2d) for m in plain.modules())
    assert sum(p.numel() for p in plain.parameters()) < 1_000_000


def test_unknown_arch_is_a_setting_error():
    with pytest.raises(SettingError, match=r"^ARCH=resnet51: not a network this project builds; choose one of"):
        build_model(MILD.replace(arch="resnet51"), num_classes=10)
    assert "resnet50" in ARCHS and "resnet_cpu" in ARCHS
