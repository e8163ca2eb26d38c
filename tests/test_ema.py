"""EMA of the weights and buffers (docs/RECIPE.md)."""
import pytest
import torch
from torch import nn

from resnet.algorithms import ema_model
from resnet.recipe import MILD, Plan


def test_ema_averages_the_same_images_at_any_global_batch():
    """At 2048: every 20 steps, k = 2^(-20/100) = 0.870551. At 256 (a 1-GPU dev config) the same number of images
    per update (160 steps) and the same half-life in images, so the same k per update."""
    at_2048 = Plan(MILD, 1000, 1_281_167, 50_000, 8)
    assert (at_2048.ema_every_steps, at_2048.ema_decay) == (20, pytest.approx(0.870551, abs=1e-6))
    at_256 = Plan(MILD.replace(global_batch_size=256), 1000, 1_281_167, 50_000, 1)
    assert at_256.ema_every_steps == 160 and at_256.ema_decay == pytest.approx(0.870551, abs=1e-6)


def test_ema_factor_and_buffers_are_averaged():
    k = Plan(MILD, 1000, 1_281_167, 50_000, 8).ema_decay
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    ema = ema_model(model, k)
    ema.update_parameters(model)                       # first update: a copy
    bn = model[1]
    start_mean = bn.running_mean.clone()
    with torch.no_grad():
        model[0].weight.add_(1.0)
        bn.running_mean.add_(10.0)
    ema.update_parameters(model)
    assert torch.allclose(ema.module[1].running_mean, k * start_mean + (1 - k) * bn.running_mean)
    assert torch.allclose(ema.module[0].weight, model[0].weight - k * 1.0)
