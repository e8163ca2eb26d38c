"""Decoupled SGDW against a hand computation (docs/RECIPE.md)."""
import torch
from torch import nn

from resnet.algorithms import DecoupledSGDW


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
