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


def per_tensor_reference(params, state, lr, momentum, weight_decay, peak_lr):
    """The update written one tensor at a time, as the formula reads (the optimiser used to be this loop)."""
    for p in params:
        if p not in state:
            state[p] = p.grad.detach().clone()
        else:
            state[p].mul_(momentum).add_(p.grad)
        p.detach().mul_(1.0 - weight_decay * lr / peak_lr).add_(state[p], alpha=-lr)


def test_multi_tensor_update_is_bitwise_the_per_tensor_loop():
    import torchvision

    torch.manual_seed(0)
    ours = torchvision.models.resnet18(num_classes=10)
    ref = torchvision.models.resnet18(num_classes=10)
    ref.load_state_dict(ours.state_dict())
    opt = DecoupledSGDW(ours.parameters(), lr=0.7, momentum=0.875, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0 / (step + 1))
    state = {}
    for step in range(4):
        x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
        lr = opt.param_groups[0]["lr"]
        for model in (ours, ref):
            model.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(model(x), y).backward()
        if step == 2:       # a parameter without a gradient this step keeps its buffer and its value
            ours.fc.bias.grad = ref.fc.bias.grad = None
        opt.step()
        sched.step()
        with torch.no_grad():
            per_tensor_reference([p for p in ref.parameters() if p.grad is not None], state, lr, 0.875, 5e-4, 0.7)
        for (name, a), b in zip(ours.named_parameters(), ref.parameters()):
            assert torch.equal(a, b), (step, name)
