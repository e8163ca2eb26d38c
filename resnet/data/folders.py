"""ImageNet-layout folders (SPLIT/<class>/<image>): the one scanner that `prepare` and the torchvision
loader share, so both give every image the same label. Class index = position in the sorted list of
train/ class folder names (as torchvision's ImageFolder does); val/ labels use train/'s classes.

Every problem is a DataError naming the path: a folder that cannot be listed, a symbolic link that
points nowhere or loops, an image that cannot be decoded or has no meaningful 8-bit rendering."""
import os
from pathlib import Path

from resnet.errors import DataError  # the one DataError class; still importable from here

#: The extensions torchvision's ImageFolder accepts (compared case-insensitively); other files are skipped.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def _list(folder):
    """The visible entries of `folder`, sorted by name. Listing is attempted, not predicted with
    os.access: root passes os.access but can still be refused (network file systems, capabilities)."""
    try:
        with os.scandir(folder) as it:
            return sorted((e for e in it if not e.name.startswith(".")), key=lambda e: e.name)
    except OSError as e:
        raise DataError(f"{folder}: cannot list the folder ({e.strerror}); make it readable "
                        f"(chmod a+rx) or remove it") from None


def _kind(entry):
    """'dir', 'file', or 'other' (sockets, devices, ...); a link that points nowhere or loops is a DataError:
    dropping it silently would leave a class short of images without a word."""
    try:
        if entry.is_dir():
            return "dir"
        if entry.is_file():
            return "file"
        if entry.is_symlink():
            os.stat(entry.path)  # a link that is neither: find out why
    except FileNotFoundError:
        raise DataError(f"{entry.path}: broken symbolic link (its target {os.readlink(entry.path)} does not "
                        f"exist); fix or delete the link") from None
    except OSError as e:  # ELOOP (a link loop), EACCES, ...
        raise DataError(f"{entry.path}: cannot follow ({e.strerror}); fix or delete the link") from None
    return "other"


def scan_split(root, split, classes=None):
    """List the images of root/split as (samples, classes, skipped).

    samples: list of (path str, label int) in (class, file name) order; classes: the class folder names
    (those of this split when `classes` is None, else `classes`, which fixes the label numbering and
    must include every class folder found here); skipped: how many other entries of the class folders
    (files with other extensions, sub-folders) were ignored.
    Raises DataError for a missing or unreadable split, a split without class folders, images lying
    directly in the split folder, an empty or unreadable class folder, a class folder that `classes` does
    not have, or a broken or looping symbolic link.
    """
    base = Path(root) / split
    if not base.is_dir():
        raise DataError(f"{base}: missing split folder; {root} needs train/ and val/ folders, "
                        f"each with one sub-folder of images per class")
    entries = [(e, _kind(e)) for e in _list(base)]
    dirs = [e.name for e, kind in entries if kind == "dir"]
    loose = [e.name for e, kind in entries if kind == "file" and e.name.lower().endswith(IMAGE_EXTENSIONS)]
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
        found = [(e.name, _kind(e)) for e in _list(base / name)]
        images = [f for f, kind in found if kind == "file" and f.lower().endswith(IMAGE_EXTENSIONS)]
        skipped += len(found) - len(images)
        if not images:
            raise DataError(f"{base / name}: class folder without images; add images "
                            f"({', '.join(IMAGE_EXTENSIONS)}) or remove the folder")
        label = index[name]
        samples += [(str(base / name / f), label) for f in images]
    return samples, list(classes), skipped


def scan_dataset(root):
    """Scan root/train and root/val: returns (classes, train_samples, val_samples, skipped entries)."""
    train, classes, skipped_train = scan_split(root, "train")
    val, _, skipped_val = scan_split(root, "val", classes)
    return classes, train, val, skipped_train + skipped_val


def read_dataset(root, spec, check_image):
    """The folder backends' preamble: scan root/train and root/val (rank 0 alone: shared_scan), check that the
    training set gives every rank a full batch, open the first image of each split with `check_image(path)` (the
    backend's own decoder, raising DataError: unreadable files show up before training), digest. Returns (train
    samples, val samples, DataInfo)."""
    from resnet.data.loaders import DataInfo, check_train_size

    classes, train, val, _, digest = shared_scan(root)
    check_train_size(Path(root) / "train", len(train), spec)
    for path, _ in (train[0], val[0]):
        check_image(path)
    return train, val, DataInfo(tuple(classes), len(train), len(val), digest)


def _to_8bit(im, path):
    """Grayscale 8-bit ("L") version of a 16-bit, 32-bit integer or float image, scaled by the range its
    type defines: PIL's own convert() clips these to 0-255, which stores 16-bit photographs as white and
    0-1 float images as black. 16-bit (PIL modes I;16*, and I holding 0-65535, as older PIL reads 16-bit
    PNG): 0-65535 -> 0-255. Float (F): 0-1 -> 0-255. Other ranges have no agreed meaning: refused."""
    import numpy as np
    from PIL import Image

    a = np.asarray(im)
    if im.mode.startswith("I;16") or (im.mode == "I" and a.size and 0 <= a.min() and a.max() <= 65535):
        return Image.fromarray(np.round(a.astype(np.float64) / 257).astype(np.uint8), "L")
    if im.mode == "F" and a.size and np.isfinite(a).all() and 0 <= a.min() and a.max() <= 1:
        return Image.fromarray(np.round(a.astype(np.float64) * 255).astype(np.uint8), "L")
    kind, expected = ("float", "0-1") if im.mode == "F" else ("32-bit integer", "0-65535")
    if not a.size or not np.isfinite(a).all():
        found = "no pixels" if not a.size else "NaN or infinite values"
    else:
        found = f"values from {a.min():g} to {a.max():g}, outside {expected}"
    raise DataError(f"{path}: {kind} image with {found}, so its 8-bit rendering is ambiguous; convert it to "
                    f"8-bit RGB (or rescale it to {expected}) first")


def load_rgb(path):
    """Open an image file as a fully decoded 8-bit RGB PIL image. Grayscale, CMYK, palette and alpha images
    are converted; 16-bit and float images are scaled to 8 bits by their type's range (see _to_8bit)."""
    from PIL import Image

    with Image.open(path) as im:
        im.load()  # decode now: a truncated or corrupt file fails here, not later
        if im.mode in ("I", "F") or im.mode.startswith("I;16"):
            im = _to_8bit(im, path)
        return im if im.mode == "RGB" else im.convert("RGB")


def read_image(path, fix="replace or delete the file"):
    """load_rgb, with any failure a DataError naming the file (PIL raises OSError, SyntaxError, ValueError, ...
    for a bad file); `fix` ends the message."""
    try:
        return load_rgb(path)
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 - PIL raises many kinds for a bad file
        raise DataError(f"{path}: cannot read image ({type(e).__name__}: {e})".replace("\n", " ") + f"; {fix}") \
            from None

CONTENT_SAMPLE = 64   # images per split whose bytes go into the digest (evenly spaced; all of a smaller split)


def dataset_digest(root, classes, train, val) -> str:
    """What identifies a folder data set's images: the class names; for every image in order, its path under
    `root`, its size in bytes and its label; and the bytes of CONTENT_SAMPLE evenly spaced images per split, so that
    another set with the same names and sizes (other images, resized to the same bytes) differs too. On ImageNet
    that reads ~14 MB once, on rank 0 (shared_scan)."""
    import hashlib

    h = hashlib.sha256("\0".join(classes).encode())
    root = os.path.abspath(root)
    for split, samples in (("train", train), ("val", val)):
        h.update(split.encode())
        every = max(1, -(-len(samples) // CONTENT_SAMPLE))
        for i, (path, label) in enumerate(samples):
            try:
                size = os.stat(path).st_size
                content = Path(path).read_bytes() if i % every == 0 else b""
            except OSError as e:
                raise DataError(f"{path}: cannot read ({e.strerror}); make it readable or remove it") from None
            h.update(f"\0{os.path.relpath(path, root)}\0{size}\0{label}\0".encode(errors="surrogateescape"))
            h.update(hashlib.sha256(content).digest())
    return h.hexdigest()[:32]


def _scan_and_digest(root):
    classes, train, val, skipped = scan_dataset(root)
    return classes, train, val, skipped, dataset_digest(root, classes, train, val)


def shared_scan(root):
    """scan_dataset(root) and its dataset_digest, as (classes, train, val, skipped, digest): made by rank 0 alone
    and sent to the other ranks when torch.distributed runs with several (1.33 M stats once, not once a rank);
    a DataError on rank 0 is raised on every rank, so none waits for a result that never comes."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return _scan_and_digest(root)
    box = [None]
    if dist.get_rank() == 0:
        try:
            box[0] = ("ok", _scan_and_digest(root))
        except DataError as e:
            box[0] = ("error", str(e))
    dist.broadcast_object_list(box, src=0)   # NCCL: through the current device, which distributed.init set
    kind, value = box[0]
    if kind == "error":
        raise DataError(value)
    return value
