"""`gpu_check.py --ddp`: the trainer's step with DDP on every visible GPU under torchrun (2 gloo processes on the
CPU with --cpu-smoke), and the check that no rank other than 0 holds a CUDA context on GPU 0, asked of NVML."""
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from gpu_check import make_tiny_ffcv  # bench/ is on sys.path: gpu_check.py runs this
from train_steps import TrainStep, measure


def gpu0_contexts(rank_pids: list) -> tuple[str, str]:
    """(PASS/FAIL, detail): which ranks hold a context on the GPU that is cuda:0 for rank 0. It FAILs when it
    cannot tell: without pynvml, or when NVML does not list rank 0 itself (inside a container NVML reports the
    host's PIDs, which match none of ours) - a check that cannot see must not pass."""
    try:
        import pynvml
    except ImportError:
        return "FAIL", "cannot check: pynvml is not installed (pip install nvidia-ml-py)"
    import torch

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


def ddp_worker(args) -> int:
    """One rank of `--ddp` (under torchrun): the trainer's step with DDP across all ranks, img/s with cudnn.benchmark
    off and on, the FFCV loader on this rank's device, which processes hold a context on GPU 0, one compile."""
    import torch
    import torch.distributed as dist

    from resnet import distributed

    dev = distributed.init("cuda" if torch.cuda.is_available() else "cpu")
    world, pid = dev.world_size, os.getpid()
    report = dict(world_size=world, device=str(dev.device), rows=[])
    for bench in (False, True):
        torch.backends.cudnn.benchmark = bench
        step = TrainStep("mild", dev.device, args.precision, full_px=max(args.sizes), world_size=world)
        for px in args.sizes:
            row = measure(step, args.batch_size, px, args.warmup, args.steps)
            row["images_per_s"] = round(row["images_per_s"] * world, 1)     # all ranks step together
            report["rows"].append(dict(cudnn_benchmark=bench, **row))
        del step
    if args.data:
        from resnet.data.loaders import LoaderSpec, make_loaders

        spec = LoaderSpec(batch_size=8, train_crop_px=64, crop_scale_min=0.08, eval_crop_px=56, eval_resize_px=64,
                          workers=2, device=str(dev.device), rank=dev.rank, world_size=world,
                          train_precision=args.precision)
        train, val, _ = make_loaders(args.data, spec, loader="ffcv")
        train.set_epoch(0)
        # The whole epoch, never part of one: an FFCV epoch thread left running inside numba's TBB pool when the
        # process exits makes TBB's exit-time destructors call std::terminate (SIGABRT, "terminate called without
        # an active exception"). close() ends it too where the backend supports it.
        report["ffcv_batches"], report["ffcv_batches_per_epoch"] = sum(1 for _ in train), len(train)
        report["ffcv_device"] = str(dev.device)
        train.close()
        val.close()
    pids = [None] * world
    dist.all_gather_object(pids, pid)
    if dev.is_main:
        report["gpu0"] = dict(zip(("status", "detail"), gpu0_contexts(pids) if dev.device.type == "cuda" else
                                  ("SKIP", "no CUDA device")))
    if args.compile_seconds and dev.device.type == "cuda":
        started = time.perf_counter()
        step = TrainStep("mild", dev.device, args.precision, compile_model=True, full_px=max(args.sizes),
                         world_size=world)
        report["compile"] = measure(step, args.batch_size, min(args.sizes), args.warmup, args.steps)
        report["compile"]["first_steps_s"] = round(time.perf_counter() - started, 1)
    if dev.is_main and args.out:
        from bench.common import run_metadata

        args.out.write_text(json.dumps(dict(metadata=run_metadata(), **report), indent=1) + "\n")
    distributed.shutdown()
    return 0


def ddp_check(args) -> int:
    """`--ddp`: run ddp_worker on every visible GPU (2 CPU processes with gloo for --cpu-smoke)."""
    import torch

    n = torch.cuda.device_count() if torch.cuda.is_available() else 2
    out = args.out or Path(tempfile.mkdtemp(prefix="gpu-check-ddp-")) / "ddp.json"
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        data = make_tiny_ffcv(Path(tmp))
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}", str(Path(__file__).with_name("gpu_check.py")),
               "--ddp-worker", "--out", str(out), "--data", str(data), "--precision", args.precision,
               "--batch-size", str(args.batch_size), "--warmup", str(args.warmup), "--steps", str(args.steps),
               "--sizes", *map(str, args.sizes), *([] if args.no_compile else ["--compile-seconds"])]
        proc = subprocess.run(cmd, timeout=3600)
    if proc.returncode:
        print(f"FAIL: ddp: torchrun exited {proc.returncode}", flush=True)
        return 1
    report = json.loads(out.read_text())
    for row in report["rows"]:
        print(f"ddp x{report['world_size']} cudnn.benchmark={row['cudnn_benchmark']!s:5} {row['px']:4} px: "
              f"{row['images_per_s']:10.1f} images/s (all ranks)", flush=True)
    print(f"PASS: ddp: {report['world_size']} ranks stepped together; FFCV batches on {report.get('ffcv_device')}"
          + (f"; compile: {report['compile']['first_steps_s']} s to the first timed step" if "compile" in report
             else ""), flush=True)
    print(f"{report['gpu0']['status']}: gpu0_contexts: {report['gpu0']['detail']}", flush=True)
    print(f"ddp report: {out}", flush=True)
    return 1 if report["gpu0"]["status"] == "FAIL" else 0


