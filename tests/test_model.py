"""Model construction and initialisation (docs/RECIPE.md)."""
import math

import pytest
import torch
from torch import nn

from resnet.algorithms.blurpool import BlurConv2d
from resnet.model import build_model
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
    assert torch.allclose(build_model(BASELINE.replace(arch="resnet18"), 10).fc.bias, torch.zeros(10))
    resnet50 = build_model(MILD, num_classes=1000)
    assert resnet50.fc.bias[0].item() == pytest.approx(-6.9078, abs=1e-4)
