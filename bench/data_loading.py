"""Training-loader throughput: FFCV against torchvision's ImageFolder-style DataLoader, on the same images.

Writes (once, then reuses) a synthetic ImageNet-layout JPEG set of ~300-500 px images with
`mlperf-resnet synth`, converts it with `mlperf-resnet prepare` (the recipe's settings: max side 500, half
the images JPEG at quality 90), then times one training epoch of each loader after a warm-up epoch (FFCV
compiles its pipeline on the first one; torchvision starts its worker processes), alternating the two
loaders for --repeats rounds and reporting medians (the machine may be shared). Both loaders do the
same work per image: RandomResizedCrop to --crop (scale --crop-scale-min to 1), horizontal flip, normalisation to
float32 NCHW channels_last, batches of --batch-size, with --workers (FFCV: threads, torchvision: worker
processes). Nothing consumes the batches: this measures the loaders alone.

    python bench/data_loading.py [--cache DIR] [--workers 2] [--repeats 5] [--json]
"""
import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

from resnet.data.loaders import LoaderSpec, make_loaders

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import run_metadata, synthetic_dataset  # noqa: E402


def _images_per_s(loader, epochs):
    images, start = 0, time.perf_counter()
    for _ in range(epochs):
        for x, _y in loader:
            images += x.shape[0]
    return images / (time.perf_counter() - start)


def _versions():
    from importlib.metadata import version  # ffcv 1.0.2's own __version__ says 0.0.3rc1

    return {name: version(name) for name in ("torch", "torchvision", "ffcv", "numba", "pillow", "opencv-python")}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mlperf-resnet" / "bench-data"
    parser.add_argument("--cache", type=Path, default=cache, help="where the generated data sets are kept")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--train-per-class", type=int, default=220, help="default 220 (2,200 training images)")
    parser.add_argument("--size", type=int, default=450, help="long image side, px (short: 75-100%% of it)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--crop", type=int, default=176)
    parser.add_argument("--crop-scale-min", type=float, default=0.08, help="RandomResizedCrop scale range start "
                        "(default 0.08, the recipe's ImageNet value)")
    parser.add_argument("--epochs", type=int, default=1, help="timed epochs per round (after a warm-up epoch)")
    parser.add_argument("--repeats", type=int, default=5, help="rounds, each timing both loaders")
    parser.add_argument("--json", action="store_true", help="also print the result as one JSON line")
    args = parser.parse_args(argv)

    folders, betons = synthetic_dataset(args.cache, args.classes, args.train_per_class, val_per_class=2,
                                        size_px=args.size)
    result = {"cpus": len(os.sched_getaffinity(0)), "cpu": platform.processor() or platform.machine(),
              "versions": _versions(), "train_images": args.classes * args.train_per_class,
              "image_long_side_px": args.size, "workers": args.workers, "batch_size": args.batch_size,
              "crop_px": args.crop, "crop_scale_min": args.crop_scale_min, "timed_epochs": args.epochs, "repeats": args.repeats,
              "load_average_1min_before": os.getloadavg()[0]}
    loaders = {}
    for kind, data_dir in (("torchvision", folders), ("ffcv", betons)):
        spec = LoaderSpec(batch_size=args.batch_size, train_crop_px=args.crop, crop_scale_min=args.crop_scale_min,
                          eval_crop_px=args.crop, eval_resize_px=args.crop, workers=args.workers, seed=0)
        loaders[kind] = make_loaders(data_dir, spec, loader=kind)[0]  # val: unused
        for _ in loaders[kind]:  # warm-up epoch: FFCV compiles, torchvision starts its workers
            pass
    rates = {kind: [] for kind in loaders}
    for _ in range(args.repeats):  # alternate, so that a busy moment of the machine hits both
        for kind, loader in loaders.items():
            rates[kind].append(_images_per_s(loader, args.epochs))
    result["load_average_1min"] = os.getloadavg()[0]
    for kind, values in rates.items():
        result[f"{kind}_images_per_s"] = round(statistics.median(values), 1)
        print(f"{kind:>11}: {statistics.median(values):8.1f} images/s (median of {args.repeats} x {args.epochs} "
              f"epochs; all: {', '.join(f'{v:.0f}' for v in values)})", flush=True)
    ratios = [f / t for f, t in zip(rates["ffcv"], rates["torchvision"])]
    result["ratio"] = round(statistics.median(ratios), 2)
    paired = ", ".join(f"{r:.2f}" for r in ratios)
    print(f"      ratio: {result['ratio']:.2f}x (median of the paired rounds: {paired}), "
          f"{args.workers} workers, crop {args.crop}, batch {args.batch_size}, {result['train_images']} images of "
          f"{args.size} px long side, load average {result['load_average_1min']:.2f}")
    if args.json:
        print(json.dumps(dict(metadata=run_metadata(), **result)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
