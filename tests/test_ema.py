"""EMA of the weights and buffers (docs/RECIPE.md)."""
import pytest
import torch
from torch import nn

from resnet.algorithms import ema_model
from resnet.recipe import MILD


def test_ema_factor_and_buffers_are_averaged():
    assert MILD.ema_decay == pytest.approx(0.870551, abs=1e-6)
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    ema = ema_model(model, MILD.ema_decay)
    ema.update_parameters(model)                       # first update: a copy
    bn = model[1]
    start_mean = bn.running_mean.clone()
    with torch.no_grad():
        model[0].weight.add_(1.0)
        bn.running_mean.add_(10.0)
    ema.update_parameters(model)
    k = MILD.ema_decay
    assert torch.allclose(ema.module[1].running_mean, k * start_mean + (1 - k) * bn.running_mean)
    assert torch.allclose(ema.module[0].weight, model[0].weight - k * 1.0)
