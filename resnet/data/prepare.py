"""`mlperf-resnet prepare SRC OUT`: ImageNet-layout folders -> OUT/train.beton, OUT/val.beton, OUT/manifest.json.

SRC holds train/<class>/* and val/<class>/* images (any number of classes; class index = position in the
sorted train/ folder names, as in torchvision's ImageFolder). Images are written with FFCV's DatasetWriter
as the recipe's submission did: RGBImageField(write_mode="proportion", max_resolution=max_side,
compress_probability, jpeg_quality) and an IntField label. Images are opened one at a time by the writer's
worker processes, so memory stays flat however large SRC is. Grayscale, CMYK, palette and alpha images
are converted to RGB; files with other extensions than ImageFolder's are skipped. A file that cannot be
decoded stops the run with its name and no output. Files are written under temporary names and renamed
into place only when all three are complete.
"""
import argparse
import json
import multiprocessing
import os
import sys
from pathlib import Path

from resnet.data.folders import DataError, load_rgb, scan_dataset

CMD = "prepare"
SPLIT_FILES = {"train": "train.beton", "val": "val.beton"}
MANIFEST = "manifest.json"


class _LazyImages:
    """The indexed data set DatasetWriter's workers read: item i = (RGB uint8 HxWx3 array, label), decoded
    on demand. A file that fails to decode is recorded (in `errors_path`, and in the shared `failed` flag
    the forked workers inherit) and replaced by a 1-pixel placeholder: DatasetWriter would wait forever for
    a worker that raised. Once anything failed, the rest is skipped, so the run ends quickly."""

    def __init__(self, samples, errors_path):
        self.samples = samples
        self.errors_path = str(errors_path)
        self.failed = multiprocessing.Value("b", 0)

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        import numpy as np

        path, label = self.samples[i]
        if not self.failed.value:
            try:
                return np.asarray(load_rgb(path)), label
            except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, ... for bad files
                self.failed.value = 1
                with open(self.errors_path, "a") as f:
                    f.write(f"{path}: cannot read image ({type(e).__name__}: {e})".replace("\n", " ") + "\n")
        return np.zeros((1, 1, 3), np.uint8), label


def _write_beton(path, samples, settings, workers):
    """Write `samples` to the FFCV file `path`; raise DataError (naming the file) if an image is bad."""
    from ffcv.fields import IntField, RGBImageField
    from ffcv.writer import DatasetWriter

    errors = Path(f"{path}.errors")
    errors.unlink(missing_ok=True)
    images = _LazyImages(samples, errors)
    max_side = settings["max_side"]
    fields = {
        "image": RGBImageField(write_mode=settings["write_mode"], max_resolution=max_side,
                               jpeg_quality=settings["jpeg_quality"],
                               compress_probability=settings["compress_prob"]),
        "label": IntField(),
    }
    # A page must hold one raw (uncompressed) image of max_side x max_side; FFCV's default is 8 MiB.
    page_size = 1 << max(23, (3 * max_side * max_side).bit_length())
    DatasetWriter(str(path), fields, page_size=page_size, num_workers=workers).from_indexed_dataset(images)
    if images.failed.value:
        lines = errors.read_text().splitlines()
        errors.unlink()
        more = f" (and {len(lines) - 1} more)" if len(lines) > 1 else ""
        raise DataError(f"{lines[0]}{more}; replace or delete the file, then run prepare again")


def _validate(max_side, jpeg_quality, compress_prob, workers):
    if not 16 <= max_side <= 16384:
        raise DataError(f"--max-side {max_side}: must be between 16 and 16384 px")
    if not 1 <= jpeg_quality <= 100:
        raise DataError(f"--jpeg-quality {jpeg_quality}: must be between 1 and 100")
    if not 0.0 <= compress_prob <= 1.0:
        raise DataError(f"--compress-prob {compress_prob}: must be between 0 and 1")
    if workers < 1:
        raise DataError(f"--workers {workers}: must be >= 1")


def prepare(src, out, max_side=500, jpeg_quality=90, compress_prob=0.5, workers=None, log=sys.stderr):
    """Write out/train.beton, out/val.beton and out/manifest.json from the folders under `src`.

    Returns the manifest dict. Raises DataError ('<file>: <problem>; <fix>') on bad input, leaving no
    output file behind (an earlier complete set under `out` stays as it was).
    """
    src, out = Path(src), Path(out)
    workers = workers or len(os.sched_getaffinity(0))
    _validate(max_side, jpeg_quality, compress_prob, workers)
    if not src.is_dir():
        raise DataError(f"{src}: not a folder; give the ImageNet-layout folder that holds train/ and val/")
    classes, train, val, skipped = scan_dataset(src)
    print(f"{CMD}: {src}: {len(classes)} classes, {len(train)} train and {len(val)} val images"
          + (f" ({skipped} non-image files skipped)" if skipped else ""), file=log)
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: exists and is not a folder; choose another output folder")
    out.mkdir(parents=True, exist_ok=True)
    settings = {"write_mode": "proportion", "max_side": max_side, "jpeg_quality": jpeg_quality,
                "compress_prob": compress_prob}
    manifest = {"classes": classes, "num_classes": len(classes), "train_samples": len(train),
                "eval_samples": len(val), "settings": settings, "source": str(src.resolve()),
                "files": dict(SPLIT_FILES), "format": "ffcv-1.0"}
    final = [out / SPLIT_FILES["train"], out / SPLIT_FILES["val"], out / MANIFEST]
    tmp = [p.with_name(f".{p.name}.tmp-{os.getpid()}") for p in final]
    try:
        for samples, t, f in zip((train, val), tmp, final):
            print(f"{CMD}: writing {f} ({len(samples)} images, {workers} workers)", file=log, flush=True)
            _write_beton(t, samples, settings, workers)
        tmp[2].write_text(json.dumps(manifest, indent=1) + "\n")
        for t, f in zip(tmp, final):
            os.replace(t, f)
    finally:
        for t in tmp:
            t.unlink(missing_ok=True)
    print(f"{CMD}: wrote {', '.join(str(f) for f in final)}", file=log)
    return manifest


def register(subparsers):
    p = subparsers.add_parser(CMD, help="write FFCV train/val files from ImageNet-layout folders",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", type=Path, help="folder with train/<class>/ and val/<class>/ images")
    p.add_argument("out", type=Path, help="output folder for train.beton, val.beton, manifest.json")
    p.add_argument("--max-side", type=int, default=500, help="longest side stored, px (default 500)")
    p.add_argument("--jpeg-quality", type=int, default=90, help="quality of the JPEG-stored images (default 90)")
    p.add_argument("--compress-prob", type=float, default=0.5,
                   help="fraction of images stored as JPEG, the rest raw (default 0.5)")
    p.add_argument("--workers", type=int, default=None, help="writer processes (default: all usable cores)")
    p.set_defaults(func=run)


def run(args) -> int:
    try:
        prepare(args.src, args.out, args.max_side, args.jpeg_quality, args.compress_prob, args.workers)
    except DataError as e:
        raise SystemExit(f"mlperf-resnet {CMD}: error: {e}") from None
    return 0


if __name__ == "__main__":
    from resnet.cli import standalone

    sys.exit(standalone(register))
