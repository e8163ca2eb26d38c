"""`mlperf-resnet synth`: write a learnable synthetic image set in ImageNet layout.

OUT/train/<class>/*.JPEG and OUT/val/<class>/*.JPEG, plus OUT/synth.json (the settings). Each class is a
motif that a horizontal flip maps onto itself (circle, square, triangle, ring, ...) with a hue of its own;
every image draws its class motif 1-3 times at random places, sizes, aspect ratios, slight rotations and
colours (the class hue with probability --colour-cue, else any colour), over a random gradient
background with soft distractor blobs of any colour and pixel noise, and is saved at a random JPEG
quality. Random-resized crops (scale 0.08-1) and flips mostly keep the evidence: hue alone is not enough
(distractors and uncued motifs share it), shape alone is slow to learn. The defaults (DEFAULTS) are the CPU
proxy's data set (`make benchmark`): with config_CPU.sh's Mild recipe, top-1 climbs from the first epochs
(~0.2 after 3 of 28, ~0.5 after 12 at 22 px crops) and passes 0.759 after 18-21 epochs. Each image depends
only on (seed, split, class, index): the same seed gives byte-identical files, whatever the number of worker
processes.
"""
import argparse
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

from resnet import errors
from resnet.errors import DataError, SettingError

CMD = "synth"
#: Class motifs, in class-index order. All are symmetric under a horizontal flip (no chiral pairs).
MOTIFS = (
    "circle", "square", "triangle", "ring", "cross", "plus", "diamond", "star", "hexagon", "bars",
    "hbars", "frame", "wedge", "tee", "chevron", "hourglass", "ellipse", "dots", "bowl", "eich",
)
SPLITS = ("train", "val")
_SUPERSAMPLE = 4  # motifs are drawn at 4x and box-filtered down (anti-aliased edges)


def _rect(x0, y0, x1, y1):
    return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]


def _ngon(n, radius, phase_deg, inner=None):
    """Regular polygon (or star, with an inner radius) centred at 0, first vertex at phase_deg."""
    pts = []
    steps = 2 * n if inner else n
    for k in range(steps):
        r = inner if inner and k % 2 else radius
        a = math.radians(phase_deg + 360.0 * k / steps)
        pts.append((r * math.cos(a), r * math.sin(a)))
    return pts


def _rotated(pts, deg):
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    return [(x * c - y * s, x * s + y * c) for x, y in pts]


def _ellipse(rx, ry, cx=0.0, cy=0.0):
    return ("ellipse", (cx - rx, cy - ry, cx + rx, cy + ry))


_PLUS = [_rect(-0.22, -0.95, 0.22, 0.95), _rect(-0.95, -0.22, 0.95, 0.22)]
# Each motif: a list of (fill, shape) drawn in order into a mask over the unit box [-1, 1]^2 (y down);
# fill 0 cuts holes. shape is a polygon (list of points) or ("ellipse", bbox).
_SHAPES = {
    "circle": [(255, _ellipse(0.9, 0.9))],
    "square": [(255, _rect(-0.78, -0.78, 0.78, 0.78))],
    "triangle": [(255, [(0, -0.95), (0.95, 0.8), (-0.95, 0.8)])],
    "ring": [(255, _ellipse(0.95, 0.95)), (0, _ellipse(0.55, 0.55))],
    "cross": [(255, _rotated(p, 45)) for p in _PLUS],
    "plus": [(255, p) for p in _PLUS],
    "diamond": [(255, [(0, -1), (0.85, 0), (0, 1), (-0.85, 0)])],
    "star": [(255, _ngon(5, 1.0, -90, inner=0.42))],
    "hexagon": [(255, _ngon(6, 0.95, -90))],
    "bars": [(255, _rect(-0.8, -0.9, -0.3, 0.9)), (255, _rect(0.3, -0.9, 0.8, 0.9))],
    "hbars": [(255, _rect(-0.9, -0.8, 0.9, -0.3)), (255, _rect(-0.9, 0.3, 0.9, 0.8))],
    "frame": [(255, _rect(-0.85, -0.85, 0.85, 0.85)), (0, _rect(-0.45, -0.45, 0.45, 0.45))],
    "wedge": [(255, [(0, 0.95), (0.95, -0.8), (-0.95, -0.8)])],
    "tee": [(255, _rect(-0.9, -0.9, 0.9, -0.45)), (255, _rect(-0.22, -0.45, 0.22, 0.9))],
    "chevron": [(255, [(0, -0.9), (0.95, 0.1), (0.95, 0.65), (0, -0.35), (-0.95, 0.65), (-0.95, 0.1)])],
    "hourglass": [(255, [(-0.85, -0.9), (0.85, -0.9), (0.1, 0), (0.85, 0.9), (-0.85, 0.9), (-0.1, 0)])],
    "ellipse": [(255, _ellipse(0.95, 0.45))],
    "dots": [(255, _ellipse(0.32, 0.32, 0, -0.55)), (255, _ellipse(0.32, 0.32, -0.58, 0.45)),
             (255, _ellipse(0.32, 0.32, 0.58, 0.45))],
    "bowl": [(255, _ellipse(0.95, 0.95)), (0, _ellipse(0.95, 0.8, 0, -0.45))],
    "eich": [(255, _rect(-0.85, -0.9, -0.45, 0.9)), (255, _rect(0.45, -0.9, 0.85, 0.9)),
             (255, _rect(-0.45, -0.18, 0.45, 0.18))],
}


def class_names(classes):
    """Folder names of the first `classes` motifs; sorted order == class index (like ImageFolder)."""
    return [f"{i:02d}_{m}" for i, m in enumerate(MOTIFS[:classes])]


def _motif_mask(name, diameter, angle_deg, aspect):
    """An anti-aliased L-mode mask of the motif, `diameter` px across (before the aspect stretch)."""
    from PIL import Image, ImageDraw

    s = _SUPERSAMPLE
    half = diameter / 2.0
    w = max(1, math.ceil(diameter * max(aspect, 1.0) * 1.5))  # room for the stretch and the rotation
    h = max(1, math.ceil(diameter / min(aspect, 1.0) * 1.5))
    mask = Image.new("L", (w * s, h * s), 0)
    draw = ImageDraw.Draw(mask)

    def place(x, y):  # unit box -> stretched, rotated, supersampled pixel coordinates
        x, y = x * half * aspect, y * half / aspect
        (x, y), = _rotated([(x, y)], angle_deg)
        return ((x + w / 2.0) * s, (y + h / 2.0) * s)

    for fill, shape in _SHAPES[name]:
        if shape[0] == "ellipse":  # rotate the ellipse as a 48-gon, so that rotation applies to it too
            x0, y0, x1, y1 = shape[1]
            cx, cy, rx, ry = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2, (y1 - y0) / 2
            shape = [(cx + rx * math.cos(2 * math.pi * k / 48), cy + ry * math.sin(2 * math.pi * k / 48))
                     for k in range(48)]
        draw.polygon([place(x, y) for x, y in shape], fill=fill)
    return mask.reduce(s)


def _hsv(hue, saturation, value):
    """RGB (0-255 floats) of a colour given as hue (turns), saturation and value (0-1)."""
    import numpy as np

    k = (np.array([5.0, 3.0, 1.0]) + (hue % 1.0) * 6) % 6
    return 255 * value * (1 - saturation * np.clip(np.minimum(k, 4 - k), 0, 1))


def render(motif, rng, size, noise=12.0, distractors=3, colour_cue=0.8):
    """One image (PIL RGB) of `motif`, all randomness drawn from the numpy Generator `rng`."""
    import numpy as np
    from PIL import Image

    long_side, short_side = size, max(8, round(size * rng.uniform(0.75, 1.0)))
    w, h = (long_side, short_side) if rng.random() < 0.5 else (short_side, long_side)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)

    # Background: a linear gradient from a random muted colour to a nearby one, in a random direction.
    c0 = rng.uniform(0, 255) + (rng.uniform(0, 255, 3) - 128) * rng.uniform(0, 0.6)
    c1 = c0 + rng.normal(0, 40, 3)
    a = rng.uniform(0, 2 * math.pi)
    t = (xx * math.cos(a) + yy * math.sin(a)) / (abs(w * math.cos(a)) + abs(h * math.sin(a)))
    t -= t.min()
    img = c0 + (c1 - c0) * t[..., None]
    # Distractors: soft Gaussian blobs (no edges, so no shape evidence).
    for _ in range(int(rng.integers(0, distractors + 1))):
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        sx, sy = rng.uniform(0.05, 0.2, 2) * size
        alpha = np.exp(-(((xx - cx) / sx) ** 2 + ((yy - cy) / sy) ** 2))[..., None] * rng.uniform(0.3, 0.7)
        img = img * (1 - alpha) + rng.uniform(0, 255, 3) * alpha
    canvas = Image.fromarray(img.clip(0, 255).astype(np.uint8), "RGB")
    class_hue = (MOTIFS.index(motif) * 0.618034) % 1.0  # golden-ratio steps: hues well spread for any count

    # The class evidence: 1-3 instances of the motif, each with its own nuisances.
    for _ in range(int(rng.integers(1, 4))):
        diameter = rng.uniform(0.3, 0.55) * min(w, h)
        mask = _motif_mask(motif, diameter, rng.uniform(-12, 12), math.exp(rng.uniform(-0.15, 0.15)))
        cx, cy = rng.uniform(0.1, 0.9) * w, rng.uniform(0.1, 0.9) * h
        local = img[min(h - 1, int(cy)), min(w - 1, int(cx))]
        for _ in range(8):  # a colour that stands out from the background under it
            if rng.random() < colour_cue:  # near the class's own hue, random saturation and brightness
                colour = _hsv(class_hue + rng.normal(0, 0.03), rng.uniform(0.6, 1), rng.uniform(0.55, 1))
            else:
                colour = rng.uniform(0, 255, 3)
            if np.linalg.norm(colour - local) > 100:
                break
        else:
            colour = 255.0 - local
        canvas.paste(tuple(int(c) for c in colour), (int(cx - mask.width / 2), int(cy - mask.height / 2)), mask)

    out = np.asarray(canvas, dtype=np.float32)
    out = out + rng.normal(0.0, rng.uniform(0.0, noise) if noise > 0 else 0.0, out.shape)
    return Image.fromarray(out.clip(0, 255).round().astype(np.uint8), "RGB")


def _write_class(job):
    """Worker: write images [start, stop) of one class of one split. Returns the count written."""
    import numpy as np

    root, split_id, cls, start, stop, settings = job
    name = class_names(settings["classes"])[cls]
    folder = Path(root) / SPLITS[split_id] / name
    for idx in range(start, stop):
        rng = np.random.default_rng([settings["seed"], split_id, cls, idx])
        image = render(MOTIFS[cls], rng, settings["size_px"], settings["noise"], settings["distractors"],
                       settings["colour_cue"])
        quality = int(rng.integers(75, 96))
        image.save(folder / f"{name}_{idx:05d}.JPEG", "JPEG", quality=quality)
    return stop - start


#: The `make benchmark` set (the CPU proxy's data): 16 classes of 80 training and 60 validation images whose long
#: side is 112 px, about a quarter of ImageNet's typical image (~400 x 350, long side <= 500), as the proxy's
#: crops are a quarter of ImageNet's (44 | 176 px training, 56 | 224 evaluation).
DEFAULTS = dict(classes=16, train_per_class=80, val_per_class=60, size_px=112)
#: (lowest, highest) of each setting: beyond them a run would take hours or fill the disk, or draw nothing.
BOUNDS = {"classes": (1, len(MOTIFS)), "train_per_class": (1, 100_000), "val_per_class": (1, 100_000),
          "size_px": (16, 1024), "seed": (0, 2**32 - 1), "noise": (0.0, 255.0), "distractors": (0, 100),
          "colour_cue": (0.0, 1.0), "workers": (1, 1024)}
FLAGS = {"size_px": "--size"}


def check_settings(classes, train_per_class, val_per_class, size_px, seed, noise, distractors, colour_cue,
                   workers=None) -> None:
    """Raise SettingError naming the first setting outside its BOUNDS."""
    given = dict(classes=classes, train_per_class=train_per_class, val_per_class=val_per_class, size_px=size_px,
                 seed=seed, noise=noise, distractors=distractors, colour_cue=colour_cue, workers=workers)
    for name, value in given.items():
        low, high = BOUNDS[name]
        if value is not None and not low <= value <= high:
            flag = FLAGS.get(name, "--" + name.replace("_", "-"))
            raise SettingError(f"synth {flag} {value}: outside {low}..{high}; choose a value in that range")


def make_synthetic(out, classes=DEFAULTS["classes"], train_per_class=DEFAULTS["train_per_class"],
                   val_per_class=DEFAULTS["val_per_class"], size_px=DEFAULTS["size_px"], seed=0,
                   noise=12.0, distractors=3, colour_cue=0.8, workers=None, progress=True):
    """Write the synthetic data set to `out` (which must not exist yet) and return its settings dict.

    The tree is built in a temporary sibling directory and renamed into place at the end, so an
    interrupted run never leaves a partial tree under `out`.
    """
    from multiprocessing import get_context

    out = Path(out)
    check_settings(classes, train_per_class, val_per_class, size_px, seed, noise, distractors, colour_cue,
                   workers)
    if out.exists():
        raise DataError(f"synth {out}: already exists; remove it or choose another output folder")
    settings = {"generator": "mlperf-resnet synth", "version": 1, "classes": classes,
                "train_per_class": train_per_class, "val_per_class": val_per_class, "size_px": size_px,
                "seed": seed, "noise": noise, "distractors": distractors, "colour_cue": colour_cue}
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    except OSError as e:
        raise DataError(f"synth {out}: cannot write there ({e.strerror}); choose a folder you can write to") from None
    try:
        jobs = []
        chunk = 50
        for split_id, per_class in enumerate((train_per_class, val_per_class)):
            for cls, name in enumerate(class_names(classes)):
                (tmp / SPLITS[split_id] / name).mkdir(parents=True)
                jobs += [(str(tmp), split_id, cls, s, min(s + chunk, per_class), settings)
                         for s in range(0, per_class, chunk)]
        total, done, t0, shown = classes * (train_per_class + val_per_class), 0, time.time(), time.time()
        workers = workers or len(os.sched_getaffinity(0))
        with get_context("fork").Pool(min(workers, len(jobs))) as pool:
            for n in pool.imap_unordered(_write_class, jobs):
                done += n
                if progress and time.time() - shown > 2:
                    shown = time.time()
                    print(f"synth: {done}/{total} images", file=sys.stderr, flush=True)
        if progress:
            print(f"synth: {total} images in {time.time() - t0:.1f} s -> {out}", file=sys.stderr)
        (tmp / "synth.json").write_text(json.dumps(settings, indent=1, sort_keys=True) + "\n")
        os.replace(tmp, out)
    except OSError as e:          # a full disk, a folder that became unwritable: nothing half-written stays
        shutil.rmtree(tmp, ignore_errors=True)
        raise DataError(f"synth {out}: writing failed ({e.strerror or e}); free some space or choose another "
                        "folder") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return settings


NAME = CMD
HELP = "write a learnable synthetic ImageNet-layout JPEG data set"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("out", type=Path, help="output folder (must not exist)")
    d = DEFAULTS
    p.add_argument("--classes", type=int, default=d["classes"],
                   help=f"number of classes, 1-{len(MOTIFS)} (default {d['classes']})")
    p.add_argument("--train-per-class", type=int, default=d["train_per_class"],
                   help=f"training images per class (default {d['train_per_class']})")
    p.add_argument("--val-per-class", type=int, default=d["val_per_class"],
                   help=f"validation images per class (default {d['val_per_class']})")
    p.add_argument("--size", type=int, default=d["size_px"], dest="size_px",
                   help=f"long side of each image, px; the short side is 75-100%% of it (default {d['size_px']})")
    p.add_argument("--seed", type=int, default=0, help="the same seed writes byte-identical files (default 0)")
    p.add_argument("--noise", type=float, default=12.0,
                   help="max std of per-pixel Gaussian noise, 0-255 scale (default 12)")
    p.add_argument("--distractors", type=int, default=3, help="max soft distractor blobs per image (default 3)")
    p.add_argument("--colour-cue", type=float, default=0.8,
                   help="probability that a motif takes its class's hue, not a random colour (default 0.8)")
    p.add_argument("--workers", type=int, default=None, help="processes (default: all usable cores)")


def run(args) -> int:
    make_synthetic(args.out, args.classes, args.train_per_class, args.val_per_class, args.size_px, args.seed,
                   noise=args.noise, distractors=args.distractors, colour_cue=args.colour_cue, workers=args.workers)
    return 0


if __name__ == "__main__":
    sys.exit(errors.main(sys.modules[__name__]))
