"""Decode throughput per CPU core of the three loaders at ImageNet's geometry (BENCHMARKS.md, "DALI").

    python bench/decode.py OUT.json [--images 300] [--rounds 3] [--batch 32]

Images: `--images` JPEGs of ImageNet's typical size (500x375, quality 90) with synth-like content (a gradient,
shapes, pixel noise), the same files in train/ and val/ of an ImageNet-layout folder; FFCV reads them from .beton
files `prepare` writes with the submitted settings (max side 500, half the images stored raw: `ffcv`) and with
every image a JPEG (`ffcv-jpeg`, the like-for-like decode).
Settings: train RandomResizedCrop to 176 (the final side) and to 88 (the first side: DALI and FFCV decode
straight to it), validation the centre 224 of the image resized to 232. Each loader gets one decoding thread
(DALI num_threads=1, FFCV num_workers=1, torchvision in the main process), torch one thread, fp32 batches on
the CPU.
Measure: one epoch to warm up (JIT, pipeline), then `--rounds` epochs per (setting, loader), loaders interleaved
in each round so that the machine's load falls on all alike. CPU time is the process's (every thread, user +
system), so img/s per core = images / CPU seconds holds on a shared machine; wall img/s is printed beside it.
Cores per GPU = the GPU's img/s x CPU seconds per image (A100 ~4,000, H100 ~7,000 img/s for ResNet-50 training).
"""
import argparse
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench.common import run_metadata  # noqa: E402

GPU_RATES = {"A100": 4000, "H100": 7000}  # img/s one GPU trains ResNet-50 at
SETTINGS = {  # name: (train?, LoaderSpec fields)
    "train-176": (True, dict(train_crop_px=176)),
    "train-88": (True, dict(train_crop_px=88)),
    "val-224of232": (False, dict(train_crop_px=176)),
}
LOADERS = ("dali", "ffcv", "ffcv-jpeg", "torchvision")


def make_images(root: Path, count: int, seed: int = 0) -> None:
    """`count` 500x375 quality-90 JPEGs into root/train/c<k>/ and the same files into root/val/c<k>/."""
    import numpy as np
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    for i in range(count):
        w, h = (500, 375) if i % 4 else (375, 500)   # a quarter portrait, as in ImageNet
        ramp = np.linspace(0, 1, w)[None, :, None] * rng.uniform(0, 255, 3) + rng.uniform(0, 128, 3)
        image = Image.fromarray(np.clip(np.broadcast_to(ramp, (h, w, 3)), 0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(image)
        for _ in range(rng.integers(3, 9)):
            x, y, r = rng.integers(0, w), rng.integers(0, h), rng.integers(10, 120)
            shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
            shape((x - r, y - r, x + r, y + r), fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
        pixels = np.asarray(image, dtype=np.int16) + rng.normal(0, 12, (h, w, 3)).astype(np.int16)
        for split in ("train", "val"):
            folder = root / split / f"c{i % 4}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(folder / f"{i:05d}.JPEG", quality=90)


def prepare_all(root: Path) -> dict:
    """The data folder each loader reads: the image folders, and the two .beton sets."""
    from resnet.data.prepare import prepare

    data = {"dali": root / "folders", "torchvision": root / "folders"}
    for name, compress in (("ffcv", 0.5), ("ffcv-jpeg", 1.0)):
        data[name] = root / name
        if not (data[name] / "manifest.json").is_file():
            prepare(root / "folders", data[name], compress_prob=compress, workers=2, log=open(os.devnull, "w"))
    return data


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def build(loader: str, data: Path, setting: str, batch: int):
    from resnet.data.loaders import LoaderSpec, make_loaders

    train, fields = SETTINGS[setting]
    spec = LoaderSpec(batch_size=batch, crop_scale_min=0.08, eval_crop_px=224, eval_resize_px=232,
                      workers=0 if loader == "torchvision" else 1, **fields)
    kind = "ffcv" if loader.startswith("ffcv") else loader
    train_batches, val_batches, _ = make_loaders(data, spec, loader=kind)
    return (train_batches, val_batches) if train else (val_batches, train_batches)


def one_epoch(batches) -> tuple[int, float, float]:
    """(images, CPU seconds, wall seconds) of one pass."""
    images, cpu, wall = 0, cpu_seconds(), time.perf_counter()
    for x, _ in batches:
        images += len(x)
    return images, cpu_seconds() - cpu, time.perf_counter() - wall


def measure(data: dict, rounds: int, batch: int) -> dict:
    results = {}
    for setting in SETTINGS:
        built = {name: build(name, data[name], setting, batch) for name in LOADERS}
        for name in LOADERS:
            one_epoch(built[name][0])                 # warm-up: JIT compilation, first pipeline
        samples = {name: [] for name in LOADERS}
        for _ in range(rounds):
            for name in LOADERS:
                samples[name].append(one_epoch(built[name][0]))
        for name in LOADERS:
            for batches in built[name]:
                batches.close()
            images = samples[name][0][0]
            cpu_per_image = statistics.median(s[1] for s in samples[name]) / images
            wall = statistics.median(s[2] for s in samples[name])
            results[f"{setting}/{name}"] = dict(
                images=images, cpu_s_per_image=cpu_per_image, img_per_s_per_core=1 / cpu_per_image,
                wall_img_per_s=images / wall, rounds=[dict(cpu_s=s[1], wall_s=s[2]) for s in samples[name]],
                cores_per_gpu={gpu: rate * cpu_per_image for gpu, rate in GPU_RATES.items()})
            r = results[f"{setting}/{name}"]
            print(f"{setting:<13} {name:<12} {r['img_per_s_per_core']:7.0f} img/s per core "
                  f"({r['wall_img_per_s']:6.0f} wall)  cores per GPU: A100 {r['cores_per_gpu']['A100']:5.1f}, "
                  f"H100 {r['cores_per_gpu']['H100']:5.1f}", flush=True)
    return results


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path, help="the JSON file to write (must not exist)")
    p.add_argument("--images", type=int, default=300)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--cache", type=Path, default=REPO / "data" / "bench" / "decode",
                   help="where the images and .beton files are made (kept for the next run)")
    args = p.parse_args(argv)
    if args.out.exists():
        p.error(f"{args.out} already exists; choose a new file (results are never overwritten)")
    import torch

    torch.set_num_threads(1)
    root = args.cache / f"n{args.images}"
    if not (root / "folders" / "val").is_dir():
        make_images(root / "folders", args.images)
    data = prepare_all(root)
    meta = run_metadata()
    meta["machine"]["load_average_start"] = os.getloadavg()
    results = measure(data, args.rounds, args.batch)
    meta["machine"]["load_average_end"] = os.getloadavg()
    for setting in SETTINGS:
        dali = results[f"{setting}/dali"]["img_per_s_per_core"]
        for name in LOADERS:
            results[f"{setting}/{name}"]["per_core_vs_dali"] = results[f"{setting}/{name}"]["img_per_s_per_core"] / dali
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(dict(meta, settings={k: v[1] for k, v in SETTINGS.items()}, images=args.images,
                                        batch=args.batch, results=results), indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
