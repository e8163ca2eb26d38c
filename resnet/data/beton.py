"""The on-disk format `prepare` writes and the FFCV loader reads: OUT/train.beton, OUT/val.beton (FFCV 1.0.2 files
with the fields image and label) and OUT/manifest.json, which says what the set is (classes, counts, how it was
written, from where) and carries a digest of each .beton.

A digest identifies the images, not only the set's shape: it hashes every image's stored size, storage mode,
width, height and label (the .beton's per-image records and allocation table, a few MB for ImageNet, read without
touching the image data). Another set with the same classes and counts has other JPEG sizes, so a resume or a
manifest check tells the two apart without reading 140 GB.

Checks raise DataError ('<file>: <problem>; <fix>'); nothing here imports FFCV's loader.
"""
import hashlib
import json
from pathlib import Path

from resnet.errors import DataError

MANIFEST = "manifest.json"
SPLIT_FILES = {"train": "train.beton", "val": "val.beton"}
OUTPUTS = (SPLIT_FILES["train"], SPLIT_FILES["val"], MANIFEST)
FORMAT = "ffcv-1.0"


def _redo(data_dir) -> str:
    return f"run `mlperf-resnet prepare SRC {data_dir}` again"


def manifest(classes, train_samples, eval_samples, settings, source, digests) -> dict:
    """The manifest of a set `prepare` wrote; digests: {"train": ..., "val": ...} from `beton_digest`."""
    return {"classes": list(classes), "num_classes": len(classes), "train_samples": train_samples,
            "eval_samples": eval_samples, "settings": settings, "source": str(source), "files": dict(SPLIT_FILES),
            "format": FORMAT, "digest": dict(digests)}


def read_manifest(data_dir) -> dict:
    """The manifest in data_dir, checked: a dict with classes, num_classes, train_samples, eval_samples (files and
    digest optional: sets written before them still load). Raises DataError naming the file and the entry."""
    path = Path(data_dir) / MANIFEST
    redo = _redo(data_dir)
    if not path.is_file():
        raise DataError(f"{path}: missing; run `mlperf-resnet prepare SRC {data_dir}` first, or use a loader that "
                        f"reads image folders (LOADER=dali or LOADER=torchvision)")
    try:
        found = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: cannot read ({e}); {redo}") from None
    if not isinstance(found, dict):
        raise DataError(f"{path}: not a JSON object; {redo}")
    for key, kind in (("classes", list), ("num_classes", int), ("train_samples", int), ("eval_samples", int)):
        if not isinstance(found.get(key), kind) or isinstance(found.get(key), bool):
            raise DataError(f"{path}: '{key}' is missing or not a{'n integer' if kind is int else ' list'}; {redo}")
    if found["num_classes"] != len(found["classes"]) or found["num_classes"] < 1:
        raise DataError(f"{path}: num_classes {found['num_classes']} does not match its {len(found['classes'])} "
                        f"classes; {redo}")
    if min(found["train_samples"], found["eval_samples"]) < 1:
        raise DataError(f"{path}: no training or no validation images; {redo}")
    for key in ("files", "digest"):
        value = found.get(key, {})
        if not isinstance(value, dict) or not all(isinstance(value.get(k, ""), str) for k in SPLIT_FILES):
            raise DataError(f"{path}: '{key}' must map train/val to text; {redo}")
    return found


def split_path(data_dir, found: dict, split: str) -> Path:
    return Path(data_dir) / found.get("files", {}).get(split, SPLIT_FILES[split])


def _tables(path: Path):
    """(header, image records, labels, allocation table sorted by sample, end of the records) of an FFCV file of
    `prepare`'s layout, each checked against the file's size. Raises DataError."""
    import numpy as np

    from resnet.data.ffcv_patches import import_ffcv

    import_ffcv()
    from ffcv.fields import IntField, RGBImageField
    from ffcv.types import ALLOC_TABLE_TYPE, CURRENT_VERSION, FieldDescType, HeaderType, get_metadata_type

    redo = _redo(path.parent)
    if not path.is_file():
        raise DataError(f"{path}: missing; {redo}")
    size = path.stat().st_size
    fields_end = HeaderType.itemsize + 2 * FieldDescType.itemsize
    if size < fields_end:
        raise DataError(f"{path}: {'empty' if size == 0 else f'only {size} bytes, truncated'}; {redo}")
    try:
        header = np.fromfile(path, HeaderType, count=1)[0]
        fields = np.fromfile(path, FieldDescType, count=2, offset=HeaderType.itemsize)
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror}); check the file's permissions") from None
    names = [bytes(f["name"]).rstrip(b"\0").decode("ascii", "replace") for f in fields]
    if header["version"] != CURRENT_VERSION or header["num_fields"] != 2 or names != ["image", "label"] or \
            [int(f["type_id"]) for f in fields] != [2, 1]:
        raise DataError(f"{path}: not an FFCV file of `prepare`'s layout (format {CURRENT_VERSION}, fields image and "
                        f"label); {redo}")
    n = int(header["num_samples"])
    meta_type = get_metadata_type([RGBImageField(), IntField()])
    meta_end = fields_end + n * meta_type.itemsize
    table_at = int(header["alloc_table_ptr"])
    if not meta_end <= table_at <= size or (size - table_at) % ALLOC_TABLE_TYPE.itemsize \
            or (size - table_at) // ALLOC_TABLE_TYPE.itemsize != n:
        raise DataError(f"{path}: truncated or damaged (its allocation table at byte {table_at} does not fit the "
                        f"file's {size} bytes and {n} images); {redo}")
    meta = np.fromfile(path, meta_type, count=n, offset=fields_end)
    table = np.sort(np.fromfile(path, ALLOC_TABLE_TYPE, count=n, offset=table_at), order="sample_id")
    return n, meta["f0"], meta["f1"], table, meta_end, table_at


def _digest(image, label, table) -> str:
    """What identifies the images: each one's storage mode, width, height, label and stored size, in sample order
    (not where they lie in the file: FFCV's writers place pages in whatever order they finish)."""
    import numpy as np

    h = hashlib.sha256()
    for column in (image["mode"], image["width"], image["height"], label, table["size"]):
        h.update(np.ascontiguousarray(column).astype("<u8").tobytes())
    return h.hexdigest()[:32]


def beton_digest(path) -> str:
    """The digest of an FFCV file (see the module docstring)."""
    _, image, label, table, _, _ = _tables(Path(path))
    return _digest(image, label, table)


def check_beton(path, num_samples, num_classes, digest=None, decode=4) -> str:
    """Check the FFCV file `path` without reading its images: the header, the field layout (image, label), the
    per-image records and the allocation table against each other, the file size and the manifest (num_samples,
    num_classes, `digest` when the manifest has one); then decode up to `decode` evenly spaced JPEG-stored images
    (corruption inside image data shows only when decoding). Returns the file's digest; raises DataError."""
    import cv2
    import numpy as np

    path = Path(path)
    redo = _redo(path.parent)
    n, image, label, table, meta_end, table_at = _tables(path)
    if n != num_samples:
        raise DataError(f"{path}: holds {n} images, {MANIFEST} says {num_samples}; {redo}")
    problems = [
        ("allocation table does not list every image once", (table["sample_id"] != np.arange(n)).any()),
        ("image data outside the data region", ((table["ptr"] < meta_end) | (table["size"] == 0)
                                                 | (table["ptr"] + table["size"] > table_at)).any()),
        ("image records that do not match the allocation table", (image["data_ptr"] != table["ptr"]).any()),
        ("images of unknown storage mode or size", ((image["mode"] > 1) | (image["width"] == 0)
                                                     | (image["height"] == 0)).any()),
        ("raw images of the wrong byte size", ((image["mode"] == 1) & (table["size"] != image["width"].astype(
            np.uint64) * image["height"] * 3)).any()),
        (f"labels outside 0-{num_classes - 1}", ((label < 0) | (label >= num_classes)).any()),
    ]
    for problem, found in problems:
        if found:
            raise DataError(f"{path}: damaged ({problem}); {redo}")
    found_digest = _digest(image, label, table)
    if digest and digest != found_digest:
        raise DataError(f"{path}: holds other images than {MANIFEST} says (digest {found_digest}, manifest "
                        f"{digest}): the file was replaced or belongs to another set; {redo}")
    jpegs = np.flatnonzero(image["mode"] == 0)
    data = np.memmap(path, np.uint8, mode="r")
    for i in jpegs[:: max(1, len(jpegs) // decode)][:decode]:
        blob = np.asarray(data[table["ptr"][i]: table["ptr"][i] + table["size"][i]])
        decoded = cv2.imdecode(blob, cv2.IMREAD_COLOR)
        if decoded is None or decoded.shape[:2] != (image["height"][i], image["width"][i]):
            raise DataError(f"{path}: damaged (image {i} does not decode as the stored JPEG); {redo}")
    return found_digest


def page_size(max_side):
    """A page must hold one raw (uncompressed) image of max_side x max_side; FFCV's default is 8 MiB."""
    return 1 << max(23, (3 * max_side * max_side).bit_length())


def whole_pages(size, page):
    return -(-int(size) // page) * page


def estimated_bytes(samples, max_side, compress_prob, sample_images=64):
    """A low estimate of the bytes one FFCV file of `samples` takes: the page-aligned header, then whole pages of
    images: raw images at their stored size (from the headers of up to `sample_images` evenly spaced files, less
    10%), JPEG images at 1/25 of raw (photographs take 1/8-1/10 at quality 90, flat images less). Low on purpose:
    the up-front check refuses only a disk that is clearly too small; a disk that fills anyway stops the run
    within seconds."""
    from PIL import Image

    page = page_size(max_side)
    raw = []
    for path, _ in samples[:: max(1, len(samples) // sample_images)][:sample_images]:
        try:
            with Image.open(path) as im:
                width, height = im.size
        except Exception:  # noqa: BLE001 - a bad file is reported when it is written
            continue
        shrink = min(1.0, max_side / max(width, height, 1))
        raw.append(int(width * shrink) * int(height * shrink) * 3)
    per_image = (sum(raw) / len(raw) if raw else 0) * (0.9 * (1 - compress_prob) + compress_prob / 25)
    header = 64 + 2 * 1040 + 16 * len(samples)  # header, 2 field descriptors, per-image records
    return whole_pages(header, page) + whole_pages(max(1, len(samples) * per_image), page)
