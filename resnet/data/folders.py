"""ImageNet-layout folders (SPLIT/<class>/<image>): the one scanner that `prepare` and the torchvision
loader share, so both give every image the same label. Class index = position in the sorted list of
train/ class folder names (as torchvision's ImageFolder does); val/ labels use train/'s classes."""
import os
from pathlib import Path

#: The extensions torchvision's ImageFolder accepts (compared case-insensitively); other files are skipped.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


class DataError(ValueError):
    """A problem with the input data; str() is '<file>: <what is wrong>; <what to do>'."""


def _visible(entries):
    return [e for e in entries if not e.name.startswith(".")]


def scan_split(root, split, classes=None):
    """List the images of root/split as (samples, classes, skipped).

    samples: list of (path str, label int) in (class, file name) order; classes: the class folder names
    (those of this split when `classes` is None, else `classes`, which fixes the label numbering and
    must include every class folder found here); skipped: how many non-image files were ignored.
    Raises DataError for a missing split, a split without class folders, images lying directly in the
    split folder, an empty class folder, or a class folder that `classes` does not have.
    """
    base = Path(root) / split
    if not base.is_dir():
        raise DataError(f"{base}: missing split folder; {root} needs train/ and val/ folders, "
                        f"each with one sub-folder of images per class")
    with os.scandir(base) as it:
        entries = sorted(_visible(it), key=lambda e: e.name)
    dirs = [e.name for e in entries if e.is_dir()]
    loose = [e.name for e in entries if e.is_file() and e.name.lower().endswith(IMAGE_EXTENSIONS)]
    if loose:
        raise DataError(f"{base / loose[0]}: image directly in the split folder ({len(loose)} such files); "
                        f"put each image into {base}/<class>/ (ImageNet's flat val/ needs the usual "
                        f"re-layout into class folders)")
    if not dirs:
        raise DataError(f"{base}: no class folders; put the images into {base}/<class>/ folders")
    if classes is None:
        classes = dirs
    index = {name: i for i, name in enumerate(classes)}
    samples, skipped = [], 0
    for name in dirs:
        if name not in index:
            raise DataError(f"{base / name}: class folder that train/ does not have; every {split}/ class "
                            f"needs a train/ folder of the same name (labels come from train/'s classes)")
        with os.scandir(base / name) as it:
            files = sorted(e.name for e in _visible(it) if e.is_file())
        images = [f for f in files if f.lower().endswith(IMAGE_EXTENSIONS)]
        skipped += len(files) - len(images)
        if not images:
            raise DataError(f"{base / name}: class folder without images; add images "
                            f"({', '.join(IMAGE_EXTENSIONS)}) or remove the folder")
        label = index[name]
        samples += [(str(base / name / f), label) for f in images]
    return samples, list(classes), skipped


def scan_dataset(root):
    """Scan root/train and root/val: returns (classes, train_samples, val_samples, skipped files)."""
    train, classes, skipped_train = scan_split(root, "train")
    val, _, skipped_val = scan_split(root, "val", classes)
    return classes, train, val, skipped_train + skipped_val


def load_rgb(path):
    """Open an image file as a fully decoded RGB PIL image (grayscale, CMYK, palette, alpha: converted)."""
    from PIL import Image

    with Image.open(path) as im:
        im.load()  # decode now: a truncated or corrupt file fails here, not later
        return im if im.mode == "RGB" else im.convert("RGB")
