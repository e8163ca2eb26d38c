"""What a checkpoint costs the timed region on the CPU: a synchronous save (state -> checksum -> torch.save,
all on the training thread, as before issue 27) against the asynchronous `Saver.save` (the training thread
copies the state to host memory; a thread checksums and writes it), for the CPU proxy (`resnet_cpu`, 1,000
classes: the state of `config_CPU.sh` on ImageNet's class count) and ResNet-50 (1,000 classes: model, EMA and
SGD momentum, ~310 MB).

    python bench/checkpoint_cost.py [--repeats 3] [--dir DIR] [--json]

Per model (medians): seconds per sync save, seconds the training thread is held by an async save (its host
buffers allocated by a first, untimed save, as in a run), and seconds until the async write is on disk. The
folder should be on the disk checkpoints go to (default: a temporary folder).
"""
import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import run_metadata  # noqa: E402
from resnet import checkpoint, train  # noqa: E402
from resnet.recipe import MILD, Plan  # noqa: E402


def parts(arch: str) -> dict:
    """A Training's checkpointed parts after one step (momentum buffers exist, the EMA holds a copy)."""
    recipe = MILD.replace(arch=arch, global_batch_size=2, train_crop_px=32, eval_crop_px=32, eval_resize_px=36)
    plan = Plan(recipe, num_classes=1000, train_samples=1000, eval_samples=100, world_size=1)
    t = train.build_training(plan, torch.device("cpu"))
    train.train_step(t, torch.randn(2, 3, 32, 32), torch.tensor([0, 1]), 32)
    return t.parts()


def measure(arch: str, folder: Path, repeats: int) -> dict:
    p, progress = parts(arch), checkpoint.RunProgress(1, {}, run_start_ms=1)
    size = sum(v.numel() * v.element_size() for v in checkpoint.host_copy(checkpoint.snapshot(p, progress), {})
               ["model"].values())
    sync, held, written = [], [], []
    saver = checkpoint.Saver(folder / f"async-{arch}.pt", None, True, progress)
    saver.save(p, step=1, epoch=1, batches_done=0, epoch_rng=None, wait=True)   # allocates the host buffers once
    for _ in range(repeats):
        tic = time.perf_counter()
        state = checkpoint.snapshot(p, progress)
        state["checksum"] = checkpoint.tensor_digest(state)
        checkpoint.save(folder / f"sync-{arch}.pt", state)
        sync.append(time.perf_counter() - tic)
        tic = time.perf_counter()
        saver.save(p, step=1, epoch=1, batches_done=0, epoch_rng=None)
        held.append(time.perf_counter() - tic)
        assert saver.wait(), "the async write failed"
        written.append(time.perf_counter() - tic)
    file_mb = (folder / f"async-{arch}.pt").stat().st_size / 1e6
    return {"arch": arch, "model_mb": round(size / 1e6, 1), "file_mb": round(file_mb, 1),
            "sync_s": round(statistics.median(sync), 3), "async_held_s": round(statistics.median(held), 3),
            "async_written_s": round(statistics.median(written), 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dir", type=Path, default=None)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        rows = [measure(arch, Path(tmp), args.repeats) for arch in ("resnet_cpu", "resnet50")]
    if args.json:
        print(json.dumps({"rows": rows, **run_metadata()}, indent=1))
    for r in rows:
        print(f"{r['arch']}: {r['file_mb']} MB a checkpoint; sync save {r['sync_s']} s; async: the training "
              f"thread held {r['async_held_s']} s, on disk after {r['async_written_s']} s")


if __name__ == "__main__":
    main()
