"""Decoupled SGDW against a hand computation and the per-tensor formula (docs/RECIPE.md), and its GradScaler
protocol: unscaling and skipping a step with an inf/NaN gradient on the device, with nothing read back."""
import copy

import pytest
import torch
import torchvision
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


def twin_resnets():
    torch.manual_seed(0)
    ours = torchvision.models.resnet18(num_classes=10)
    ref = copy.deepcopy(ours)
    return ours, ref


def backward(model, x, y, scaler=None):
    model.zero_grad(set_to_none=True)
    loss = nn.functional.cross_entropy(model(x), y)
    (scaler.scale(loss) if scaler else loss).backward()


def test_multi_tensor_update_is_bitwise_the_per_tensor_loop():
    ours, ref = twin_resnets()
    opt = DecoupledSGDW(ours.parameters(), lr=0.7, momentum=0.875, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0 / (step + 1))
    state = {}
    for step in range(4):
        x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
        lr = opt.param_groups[0]["lr"]
        for model in (ours, ref):
            backward(model, x, y)
        if step == 2:       # a parameter without a gradient this step keeps its buffer and its value
            ours.fc.bias.grad = ref.fc.bias.grad = None
        opt.step()
        sched.step()
        with torch.no_grad():
            per_tensor_reference([p for p in ref.parameters() if p.grad is not None], state, lr, 0.875, 5e-4, 0.7)
        for (name, a), b in zip(ours.named_parameters(), ref.parameters()):
            assert torch.equal(a, b), (step, name)


def test_under_a_grad_scaler_the_step_is_the_unscaled_one():
    """scaler.step hands the scale and the inf flag to the optimiser, which unscales on the device: the weights
    are those of the per-tensor formula on gradients unscaled as GradScaler.unscale_ does (float32(1 / scale))."""
    ours, ref = twin_resnets()
    opt = DecoupledSGDW(ours.parameters(), lr=0.7, momentum=0.875, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0 / (step + 1))
    scaler = torch.amp.GradScaler("cpu", init_scale=3000.0)     # not a power of two: unscaling rounds
    inv_scale = torch.tensor(3000.0).double().reciprocal().float()
    steps = []
    opt.register_step_post_hook(lambda *_: steps.append(1))
    state, moved = {}, {}
    for step in range(4):
        x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
        lr = opt.param_groups[0]["lr"]
        backward(ours, x, y, scaler)
        for a, b in zip(ours.parameters(), ref.parameters()):
            b.grad = a.grad * inv_scale
        scaler.step(opt)
        scaler.update()
        sched.step()
        with torch.no_grad():
            per_tensor_reference(list(ref.parameters()), state, lr, 0.875, 5e-4, 0.7)
        for (name, a), b in zip(ours.named_parameters(), ref.parameters()):
            # The device-side step subtracts lr * buf rounded, the reference fuses it (add with alpha): a weight
            # that an update brought near zero differs by float32 roundings of the updates, not of the weight.
            moved[name] = moved.get(name, 0.0) + lr * state[b].abs().max().item()
            atol = 1e-7 + 4 * torch.finfo(torch.float32).eps * moved[name]
            torch.testing.assert_close(a, b, rtol=1.3e-6, atol=atol, msg=f"step {step} {name}")
    assert len(steps) == 4 and scaler.get_scale() == 3000.0


@pytest.mark.parametrize("bad", [float("inf"), float("nan")])
def test_a_step_with_a_non_finite_gradient_changes_nothing_and_the_scaler_backs_off(bad):
    ours, _ = twin_resnets()
    opt = DecoupledSGDW(ours.parameters(), lr=0.7, momentum=0.875, weight_decay=5e-4)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    called = []
    opt.register_step_post_hook(lambda *_: called.append(1))
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    for _ in range(2):                      # momentum buffers exist and are non-zero
        backward(ours, x, y, scaler)
        scaler.step(opt)
        scaler.update()
    weights = {name: p.detach().clone() for name, p in ours.named_parameters()}   # (the forward moves BN stats)
    opt_state = copy.deepcopy(opt.state_dict())
    backward(ours, x, y, scaler)
    ours.layer2[0].conv1.weight.grad[0, 0, 0, 0] = bad
    scaler.step(opt)
    scaler.update()
    assert len(called) == 3              # step() ran: the skip was decided inside it, on the device
    for name, value in ours.named_parameters():
        assert torch.equal(value, weights[name]), name
    after = opt.state_dict()
    assert after["state"].keys() == opt_state["state"].keys() and after["param_groups"] == opt_state["param_groups"]
    for i, entry in opt_state["state"].items():
        assert entry.keys() == after["state"][i].keys()
        assert torch.equal(entry["momentum_buffer"], after["state"][i]["momentum_buffer"]), i
    assert scaler.get_scale() == 512.0   # backed off
    backward(ours, x, y, scaler)         # and the next finite step trains again
    scaler.step(opt)
    assert not torch.equal(ours.fc.weight, weights["fc.weight"])


def test_the_step_reads_no_tensor_value_back_to_the_host():
    """On the meta device tensors have no values: any .item(), bool(), `if tensor`, .tolist() or
    data-dependent shape raises. So the whole step, the scaler's skip included, runs without a host sync."""
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3)).to("meta")
    for p in model.parameters():
        p.grad = torch.empty_like(p)
    opt = DecoupledSGDW(model.parameters(), lr=0.5, momentum=0.875, weight_decay=5e-4)
    opt.grad_scale, opt.found_inf = torch.ones((), device="meta"), torch.zeros((), device="meta")
    with pytest.raises((RuntimeError, NotImplementedError)):     # the check can fail
        bool(opt.found_inf > 0)
    for _ in range(2):
        opt.step()
    del opt.grad_scale
    opt.step()                           # after scaler.unscale_: the flag only
    assert all(s["momentum_buffer"].is_meta for s in opt.state.values())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the CUDA sync check needs a GPU")
def test_an_fp16_step_does_not_sync_on_cuda():
    model = torchvision.models.resnet18(num_classes=10).cuda()
    opt = DecoupledSGDW(model.parameters(), lr=0.5, momentum=0.875, weight_decay=5e-4)
    scaler = torch.amp.GradScaler("cuda")
    x, y = torch.randn(8, 3, 32, 32, device="cuda"), torch.randint(0, 10, (8,), device="cuda")
    scales = []
    for bad in (None, float("inf")):
        with torch.autocast("cuda", dtype=torch.float16):
            loss = nn.functional.cross_entropy(model(x), y)
        scaler.scale(loss).backward()
        if bad is not None:
            model.fc.weight.grad[0, 0] = bad
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            scaler.step(opt)
            scaler.update()
        finally:
            torch.cuda.set_sync_debug_mode("default")
        opt.zero_grad(set_to_none=True)
        scales.append(scaler.get_scale())    # read outside the checked region: it syncs
    assert scales[1] == scales[0] / 2       # the inf step halves whatever scale the first step left
