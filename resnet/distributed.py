"""Scale-out with torch.distributed, launched by torchrun: NCCL on GPUs, gloo on the CPU."""
import hashlib
import json
import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from resnet.errors import SettingError


@dataclass(frozen=True)
class Dist:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init(device: str = "auto", timeout_s: float = 300.0) -> Dist:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, LOCAL_RANK), or run alone.

    The collective timeout bounds how long a rank waits for a peer that died or hangs."""
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if device == "cuda" and not torch.cuda.is_available():
        # A GPU config must never fall back to gloo on the CPU and run for hours: say so at once.
        raise SettingError("--device cuda (DEVICE): no CUDA device is visible to this process; check the driver "
                           "against the container's CUDA, ask the scheduler for GPUs (--gpus-per-node), or set "
                           "DEVICE=cpu on purpose")
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if use_cuda:
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", timeout=timedelta(seconds=timeout_s),
                                **({"device_id": dev} if use_cuda else {}))
    return Dist(rank, world, local_rank, dev)


def check_same(identity: dict, name=str) -> None:
    """Every rank must train the same run: at set-up, compare the run identity (resolved recipe, world size, data
    set) across ranks, a digest first and the dicts only when the digests differ. Nodes launched with different
    settings (EPOCHS) fail here, naming the first setting that differs (`name` turns its key path into the
    setting's name), instead of training apart until the replicas diverge."""
    if not dist.is_initialized():
        return
    from resnet.checkpoint import first_difference

    digest = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()
    digests = [None] * dist.get_world_size()
    dist.all_gather_object(digests, digest)
    if len(set(digests)) == 1:
        return
    identities = [None] * dist.get_world_size()
    dist.all_gather_object(identities, identity)
    rank = next(r for r, d in enumerate(digests) if d != digests[0])
    path, here, there = first_difference(identities[0], identities[rank])
    raise SettingError(f"{name(path)}: {repr(here)[:80]} on rank 0 but {repr(there)[:80]} on rank {rank}; every "
                       "node must be launched with the same settings (the same config and environment)")


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized():
        dist.all_reduce(t)
    return t


def all_reduce_max(t: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t


def broadcast_int(value: int) -> int:
    """Rank 0's value on every rank (seeds must agree across replicas)."""
    if not dist.is_initialized():
        return value
    t = torch.tensor([value], dtype=torch.int64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.broadcast(t, 0)
    return int(t.item())


@torch.no_grad()
def average_buffers(module: torch.nn.Module) -> None:
    """Replace every floating-point buffer (BatchNorm running statistics) by its mean over the ranks.

    DDP keeps the parameters identical but each rank's BatchNorm statistics come from its own shard, so without
    this an evaluation would score a mixture of slightly different models. Integer buffers (batch counters)
    are the same on every rank and are left alone."""
    if not dist.is_initialized():
        return
    buffers = [b for b in module.buffers() if b.is_floating_point()]
    if buffers:
        flat = torch.cat([b.reshape(-1) for b in buffers])
        dist.all_reduce(flat)
        flat /= dist.get_world_size()
        torch._foreach_copy_(buffers, [v.view_as(b) for v, b in zip(flat.split([b.numel() for b in buffers]),
                                                                       buffers)])


def shutdown() -> None:
    """Leave the process group after a normal end only: on an error a rank exits at once instead (destroying an
    NCCL group flushes communicators while the peers wait inside a collective, which hangs the job until the
    timeout); torchrun then ends the peers."""
    if dist.is_initialized():
        # All ranks leave together, and the objects that hold the group (a DDP reducer kept alive by a reference
        # cycle) are freed first: a gloo rank that tore its group down while a peer was still using it, or whose
        # group outlived destroy_process_group into interpreter exit, aborted with "terminate called without an
        # active exception" (2 of ~10 two-rank runs under load).
        import gc

        dist.barrier()
        gc.collect()
        dist.destroy_process_group()


def check_replicas(model) -> float:
    """DDP must keep every replica's weights identical: a float64 fingerprint compared across ranks (returned)."""
    fingerprint = torch.stack([p.detach().double().sum() for p in model.parameters()]).sum()
    spread = all_reduce_max(torch.stack([fingerprint, -fingerprint]))
    high, low = spread[0].item(), -spread[1].item()
    if high != low:
        raise RuntimeError(f"replicas diverged: weight fingerprints range from {low!r} to {high!r}")
    return high
