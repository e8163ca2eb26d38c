"""The recipe core against the formulas and tables of ../shared/RECIPE.md."""
import json
import math
import subprocess
import sys

import pytest
import torch
import torchvision
from torch import nn

from resnet.algorithms import (DecoupledSGDW, apply_blurpool, ema_model, label_smoothed_bce, progressive_resize_px,
                               resize_batch, smoothed_targets)
from resnet.algorithms.blurpool import Blur2d, BlurConv2d, BlurMaxPool2d, blur_filter
from resnet.model import build_model
from resnet.recipe import BASELINE, MILD, Plan, lr_factor

LR_AT_EVEN_EPOCHS = [0, .512, 1.024, 1.536, 2.048, 1.998, 1.852, 1.626, 1.340, 1.024, .708, .422, .196, .050, 0]
RESOLUTIONS = [88] * 12 + [96, 104, 112, 116, 124, 132, 140, 148, 156, 164, 172] + [176] * 5


def schedule_json(*args):
    out = subprocess.run([sys.executable, "-m", "resnet.cli", "schedule", *args, "--json"],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def test_schedule_command_reproduces_recipe_tables():
    plan = schedule_json("--recipe", "mild", "--epochs", "28", "--steps-per-epoch", "625")
    epochs = plan["epochs"]
    assert [e["epoch"] for e in epochs] == list(range(28))
    for even, lr in zip(range(0, 28, 2), LR_AT_EVEN_EPOCHS):
        assert round(epochs[even]["lr"], 3) == pytest.approx(lr, abs=1e-9), even
    assert [e["resolution"] for e in epochs] == RESOLUTIONS
    assert [e["epoch"] for e in epochs if e["eval"]] == [0, 3, 6, 9, 12, 15, 18, 21, 24, 27]


def test_schedule_defaults_to_imagenet_steps_and_text_output():
    assert schedule_json("--recipe", "mild")["steps_per_epoch"] == 625
    text = subprocess.run([sys.executable, "-m", "resnet.cli", "schedule"], check=True, capture_output=True,
                          text=True).stdout
    assert "2.048" in text and " 176" in text


def test_lr_is_zero_at_the_last_step_and_peak_after_warmup():
    assert lr_factor(5000, 5000, 17500) == 1.0
    assert lr_factor(17500, 5000, 17500) == pytest.approx(0.0, abs=1e-12)
    assert lr_factor(2500, 5000, 17500) == 0.5


def test_plan_derives_from_data_and_machine():
    imagenet = Plan(MILD, num_classes=1000, train_samples=1_281_167, eval_samples=50_000, world_size=8)
    assert (imagenet.steps_per_epoch, imagenet.per_device_batch, imagenet.warmup_steps) == (625, 256, 5000)
    tiny = Plan(MILD.replace(global_batch_size=64, epochs=10), num_classes=10, train_samples=3200,
                eval_samples=1000, world_size=2)
    assert (tiny.steps_per_epoch, tiny.per_device_batch, tiny.total_steps) == (50, 32, 500)
    with pytest.raises(SystemExit, match="not divisible"):
        Plan(MILD, 10, 10_000, 100, world_size=3).check()


def test_progressive_resize_is_a_noop_at_full_size():
    x = torch.randn(2, 3, 16, 16).contiguous(memory_format=torch.channels_last)
    assert resize_batch(x, 16) is x
    small = resize_batch(x, 8)
    assert small.shape == (2, 3, 8, 8) and small.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(small, x[:, :, ::2, ::2])  # nearest with an exact factor of 2 picks every other pixel
    assert progressive_resize_px(0, 10, 64, 0.5, 0.4, 0.2, 4) == 32
    assert progressive_resize_px(9, 10, 64, 0.5, 0.4, 0.2, 4) == 64


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


def test_blur_passes_small_inputs_and_keeps_constants():
    blur = Blur2d(stride=1)
    tiny = torch.randn(1, 4, 2, 2)
    assert torch.equal(blur(tiny), tiny)
    flat = torch.ones(1, 4, 8, 8)
    assert torch.allclose(blur(flat)[..., 1:-1, 1:-1], flat[..., 1:-1, 1:-1])  # interior of a constant is kept


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


def test_smoothed_targets_and_loss_against_hand_computation():
    t = smoothed_targets(torch.tensor([1]), 4, 0.08)
    assert torch.allclose(t, torch.tensor([[0.02, 0.94, 0.02, 0.02]]))
    logits = torch.tensor([[0.0, 2.0, -1.0], [1.0, 0.0, 0.0]])
    labels = torch.tensor([1, 0])
    a, c = 0.08, 3
    total = 0.0
    for row, label in zip(logits.tolist(), labels.tolist()):
        for j, z in enumerate(row):
            y = (1 - a) * (j == label) + a / c
            p = 1 / (1 + math.exp(-z))
            total += -(y * math.log(p) + (1 - y) * math.log(1 - p))
    assert label_smoothed_bce(logits, labels, a).item() == pytest.approx(total / 2, rel=1e-6)


def test_decoupled_sgdw_step_against_hand_computation():
    p = nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = DecoupledSGDW([p], lr=2.0, momentum=0.875, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.25)   # lr_now = 0.5 = peak / 4
    for g, expected_buf in (([0.1, 0.2], [0.1, 0.2]), ([0.3, -0.1], [0.875 * 0.1 + 0.3, 0.875 * 0.2 - 0.1])):
        before = p.detach().clone()
        p.grad = torch.tensor(g)
        opt.step()
        lr = 0.5
        want = before * (1 - (lr / 2.0) * 5e-4) - lr * torch.tensor(expected_buf)
        assert torch.allclose(p.detach(), want, atol=1e-7)
    assert sched.get_last_lr() == [0.5]
