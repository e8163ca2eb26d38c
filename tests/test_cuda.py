"""The CUDA path's correctness: each check runs on the CPU where only the device differs (bf16, the CPU's fast
path) and on CUDA under the `cuda` marker, which skips without a GPU (the first GPU session runs
`pytest -m cuda tests/test_cuda.py`)."""
import math
import os
import subprocess
import sys

import pytest
import torch

from bench import steps
from tests.conftest import REPO

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
DEVICES = [pytest.param("cpu", "bf16", id="cpu-bf16"),
           pytest.param("cuda", "fp16", marks=[pytest.mark.cuda, CUDA], id="cuda-fp16"),
           pytest.param("cuda", "bf16", marks=[pytest.mark.cuda, CUDA], id="cuda-bf16")]


def _is_channels_last(t) -> bool:
    return t.dim() != 4 or t.is_contiguous(memory_format=torch.channels_last)


def _mild(device, precision, batch, side_px, arch="resnet50"):
    if device == "cpu":    # ResNet-50 steps are slow on this CPU: the same code on a smaller network
        arch = "resnet18"
    t, plan = steps.ours(torch.device(device), precision, batch, arch, train_crop_px=side_px)
    logits = []
    t.model.fc.register_forward_hook(lambda m, i, out: logits.append(out))
    return t, logits, steps.loaded_batch(torch.device(device), precision, batch, side_px)


@pytest.mark.parametrize("device, precision", DEVICES)
def test_the_trainers_step_under_autocast(device, precision):
    """Logits in the autocast dtype, finite losses, finite gradients at the last step, weights that move. With
    fp16 the scaler may skip the first steps (its initial scale 2^16 overflows): that is its job."""
    from resnet import train

    t, logits, (images, labels) = _mild(device, precision, 8, 64)
    before = t.model.fc.weight.detach().clone()
    finite = []
    for p in t.model.parameters():
        p.register_hook(lambda g: finite.append(bool(torch.isfinite(g).all())))
    for _ in range(6):
        finite.clear()
        loss = train.train_step(t, images, labels, 64)
        assert logits[-1].dtype == steps.dtype(precision) and math.isfinite(loss.item())
    assert finite and all(finite), f"gradients still not finite after 6 steps (scale {t.scaler.get_scale():g})"
    assert not torch.equal(before, t.model.fc.weight), "the optimiser did not change the weights"


@pytest.mark.parametrize("device, precision", DEVICES)
def test_channels_last_through_every_layer_and_conv_gradient(device, precision):
    from resnet import train

    t, _, (images, labels) = _mild(device, precision, 2, 64)
    leaves = [(name, m) for name, m in t.model.named_modules() if not list(m.children())]
    broken, grads = [], []
    for name, m in leaves:
        m.register_forward_hook(lambda m, i, out, name=name: None if _is_channels_last(out) else broken.append(name))
    for name, p in t.model.named_parameters():
        if p.dim() == 4:
            p.register_hook(lambda g, name=name: grads.append((name, _is_channels_last(g))))
    train.train_step(t, images, labels, 64)
    assert grads and not broken, f"{len(broken)} activations lost channels-last, first: {broken[:5]}"
    assert all(ok for _, ok in grads), f"conv weight gradients not channels-last: {[n for n, ok in grads if not ok]}"


@pytest.mark.cuda
@CUDA
def test_the_fp16_step_never_waits_for_the_host_whatever_the_scale():
    """train_step over one EMA period and a step with an inf gradient, under set_sync_debug_mode('error'). The
    scale is read outside: the inf step halves whatever scale the steps before it left."""
    from resnet import train

    t, _, (images, labels) = _mild("cuda", "fp16", 8, 64, arch="resnet18")
    train.train_step(t, images, labels, 64)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(t.ema_every_steps):
            train.train_step(t, images, labels, 64)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    before = t.scaler.get_scale()
    t.model.fc.weight.register_hook(lambda g: torch.full_like(g, float("inf")))
    torch.cuda.set_sync_debug_mode("error")
    try:
        train.train_step(t, images, labels, 64)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert t.scaler.get_scale() == before / 2


def gpu0_contexts(rank_pids: list) -> tuple[str, str]:
    """(PASS/FAIL/SKIP, detail): which ranks hold a context on the GPU that is cuda:0 for rank 0. SKIP with one
    rank (nothing can stray). It FAILs when it cannot tell: without pynvml, or when NVML does not list rank 0
    (inside a container NVML reports the host's PIDs) - a check that cannot see must not pass."""
    if len(rank_pids) < 2:
        return "SKIP", "one rank: no other rank to hold a context on GPU 0"
    try:
        import pynvml
    except ImportError:
        return "FAIL", "cannot check: pynvml is not installed (pip install nvidia-ml-py)"
    props = torch.cuda.get_device_properties(0)
    pynvml.nvmlInit()
    try:
        handle = pynvml.nvmlDeviceGetHandleByPciBusId(
            f"{props.pci_domain_id:08x}:{props.pci_bus_id:02x}:{props.pci_device_id:02x}.0")
        listed = {p.pid for p in pynvml.nvmlDeviceGetComputeRunningProcesses(handle)}
    finally:
        pynvml.nvmlShutdown()
    if rank_pids[0] not in listed:
        return "FAIL", (f"cannot check: NVML lists PIDs {sorted(listed)} on GPU 0 but not rank 0's {rank_pids[0]} "
                        "(a container's PID namespace?); run on the host or with --pid=host")
    stray = [rank for rank, pid in enumerate(rank_pids) if rank and pid in listed]
    return ("FAIL", f"ranks {stray} hold a context on GPU 0") if stray else \
        ("PASS", f"only rank 0 of {len(rank_pids)} holds a context on GPU 0")


def test_gpu0_check_skips_at_one_gpu_and_fails_when_it_cannot_see(monkeypatch):
    assert gpu0_contexts([101])[0] == "SKIP"
    monkeypatch.setitem(sys.modules, "pynvml", None)     # as on a machine without nvidia-ml-py
    status, detail = gpu0_contexts([101, 102])
    assert status == "FAIL" and detail.startswith("cannot check: pynvml is not installed")


GPU0_WORKER = """
import os, sys, torch, torch.distributed as dist
sys.path.insert(0, sys.argv[1])
from tests.test_cuda import gpu0_contexts
from resnet import distributed, train
from bench import steps
dev = distributed.init("cuda")
t, plan = steps.ours(dev.device, "fp16", 8, "resnet18", world_size=dev.world_size, train_crop_px=64)
train.train_step(t, *steps.loaded_batch(dev.device, "fp16", 8, 64), 64)
pids = [None] * dev.world_size
dist.all_gather_object(pids, os.getpid())
if dev.is_main:
    print(*gpu0_contexts(pids))
distributed.shutdown()
"""


@pytest.mark.cuda
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2+ GPUs (at one GPU no rank can stray)")
def test_no_rank_but_0_holds_a_context_on_gpu0(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(GPU0_WORKER)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           f"--nproc_per_node={torch.cuda.device_count()}", str(script), str(REPO)],
                          capture_output=True, text=True, timeout=600, cwd=REPO, env=dict(os.environ))
    assert proc.returncode == 0 and "PASS" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-2000:]
