"""Training and validation loaders: FFCV (.beton files from `prepare`) or torchvision (the image folders).

Both return the same thing (see `make_loaders`): batches of (images, labels) on the device, images float
NCHW in channels_last memory format normalised with the ImageNet mean/std (x255, from uint8), labels int64
of shape [B]. Train: RandomResizedCrop(train_crop, scale crop_scale_min-1, ratio 3/4-4/3) + horizontal flip,
a new random order every epoch, drop_last, sharded over ranks. Val: center crop of eval_crop out of a square
of side min_side * eval_crop / eval_resize (FFCV) or Resize(eval_resize) + CenterCrop(eval_crop)
(torchvision), in file order, every image exactly once over all ranks.

Normalisation happens on the device (a uint8 batch travels to the GPU, not a float one) as one torch op
(`normalize_nhwc`), except in FFCV on CPU for float32/float16, where FFCV's NormalizeImage (a JIT-compiled
lookup table, fused into the decoding stage) is used: it made the CPU loader ~40% faster. NormalizeImage
is not used on CUDA (it needs cupy there) nor for bfloat16 (numpy has no such type).

Every data problem that can be found before training is found by `make_loaders`, which raises DataError
('<file>: <problem>; <fix>'): a missing or broken manifest, an empty, truncated or damaged .beton (header,
field layout, allocation table and per-image records checked against the file size and the manifest; a few
JPEG images decoded), image folders that cannot be scanned, a batch larger than the data set. So a trainer
that builds its loaders before it claims a result log never leaves a stub log for bad data. What breaks
later (a file changed under a running job) reaches the consumer's `for` loop as a DataError, from FFCV's
loader thread as well (FFCV 1.0.2 would leave the consumer waiting forever).

Heavy imports (torch, torchvision, ffcv) happen inside the functions: importing this module is cheap.
"""
import functools
import json
import queue
from pathlib import Path

from resnet.errors import DataError, SettingError
from resnet.data import import_ffcv
from resnet.data.folders import load_rgb, scan_dataset

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MANIFEST = "manifest.json"
BATCHES_AHEAD = 2  # FFCV batches prepared ahead (the submitted system's setting)
_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def shard_order(n, rank, world_size, seed, epoch, shuffle):
    """The sample indices (numpy int64) that `rank` reads in `epoch`, in order.

    shuffle=True (train): one permutation of range(n) per (seed, epoch), the same on every rank, cut to a
    multiple of world_size, then every world_size-th entry from `rank`: equal, disjoint shards.
    shuffle=False (val): range(rank, n, world_size), so the ranks together read every index exactly once.
    """
    import numpy as np

    if not shuffle:
        return np.arange(rank, n, world_size)
    order = np.random.default_rng([seed, epoch]).permutation(n)
    return order[: n - n % world_size][rank::world_size]


@functools.lru_cache(maxsize=None)
def _scale_bias(device):
    """1/std and -mean/std (x255 scale), float32 on `device`: normalised = uint8 * scale + bias."""
    import torch

    std = torch.tensor(IMAGENET_STD, dtype=torch.float64) * 255
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float64) * 255
    return (1 / std).float().to(device), (-mean / std).float().to(device)


def normalize_nhwc(images, out):
    """Write (images - mean) / std into `out`: images uint8 [B, H, W, 3], out float [B, H, W, 3] of any
    float dtype on the same device (computed in float32, rounded once). Returns `out`."""
    import torch

    scale, bias = _scale_bias(images.device)
    return torch.addcmul(bias, images, scale, out=out)


def _as_dtype(dtype):
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    return getattr(torch, _DTYPES.get(dtype, dtype))


class Batches:
    """One loader of `make_loaders`: iterating yields one epoch of (images, labels) batches; len() is the
    number of batches per epoch. Epoch e's sample order depends only on (seed, e): each iteration advances
    the epoch by one, and `set_epoch(e)` chooses the next one (e.g. when resuming). FFCV hands out views of
    its reusable buffers: a batch stays valid while the next few are produced; clone what you keep."""

    def __init__(self, iterate, num_batches, batch_size, num_samples):
        self._iterate = iterate
        self.num_batches = num_batches
        self.batch_size = batch_size
        self.num_samples = num_samples  # samples this rank reads per epoch
        self.epoch = 0

    def set_epoch(self, epoch):
        self.epoch = int(epoch)

    def __len__(self):
        return self.num_batches

    def __iter__(self):
        epoch, self.epoch = self.epoch, self.epoch + 1
        return self._iterate(epoch)


def _check_train_size(where, n, batch_size, world_size):
    if n // (batch_size * world_size) == 0:
        raise DataError(f"{where}: {n} training images give no full batch of {batch_size} per device on "
                        f"{world_size} devices; lower the per-device batch size (BATCHSIZE) or use a larger data set")


def read_manifest(data_dir):
    """The manifest `prepare` wrote into data_dir, checked: a dict with classes, num_classes, train_samples,
    eval_samples (and optionally files). Raises DataError naming the file and the missing or bad entry."""
    path = Path(data_dir) / MANIFEST
    redo = f"run `mlperf-resnet prepare SRC {data_dir}` again"
    if not path.is_file():
        raise DataError(f"{path}: missing; run `mlperf-resnet prepare SRC {data_dir}` first, or use the "
                        f"torchvision loader (LOADER=torchvision) on image folders")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: cannot read ({e}); {redo}") from None
    if not isinstance(manifest, dict):
        raise DataError(f"{path}: not a JSON object; {redo}")
    for key, kind in (("classes", list), ("num_classes", int), ("train_samples", int), ("eval_samples", int)):
        if not isinstance(manifest.get(key), kind) or isinstance(manifest.get(key), bool):
            raise DataError(f"{path}: '{key}' is missing or not a{'n integer' if kind is int else ' list'}; {redo}")
    if manifest["num_classes"] != len(manifest["classes"]) or manifest["num_classes"] < 1:
        raise DataError(f"{path}: num_classes {manifest['num_classes']} does not match its {len(manifest['classes'])} "
                        f"classes; {redo}")
    if min(manifest["train_samples"], manifest["eval_samples"]) < 1:
        raise DataError(f"{path}: no training or no validation images; {redo}")
    files = manifest.get("files", {})
    if not isinstance(files, dict) or not all(isinstance(files.get(k, ""), str) for k in ("train", "val")):
        raise DataError(f"{path}: 'files' must map train/val to file names; {redo}")
    return manifest


def check_beton(path, num_samples, num_classes, decode=4):
    """Check the FFCV file `path` (as `prepare` writes it) without reading its images: the header, the field
    layout (image, label), the per-image records and the allocation table against each other, the file size
    and the manifest (num_samples, num_classes); then decode up to `decode` evenly spaced JPEG-stored images
    (corruption inside image data shows only when decoding). Raises DataError; returns nothing."""
    import cv2
    import numpy as np

    import_ffcv()
    from ffcv.fields import IntField, RGBImageField
    from ffcv.types import ALLOC_TABLE_TYPE, CURRENT_VERSION, FieldDescType, HeaderType, get_metadata_type

    path = Path(path)
    redo = f"run `mlperf-resnet prepare SRC {path.parent}` again"
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
    if n != num_samples:
        raise DataError(f"{path}: holds {n} images, {MANIFEST} says {num_samples}; {redo}")
    meta_type = get_metadata_type([RGBImageField(), IntField()])
    meta_end = fields_end + n * meta_type.itemsize
    table_at = int(header["alloc_table_ptr"])
    if not meta_end <= table_at <= size or (size - table_at) % ALLOC_TABLE_TYPE.itemsize \
            or (size - table_at) // ALLOC_TABLE_TYPE.itemsize != n:
        raise DataError(f"{path}: truncated or damaged (its allocation table at byte {table_at} does not fit the "
                        f"file's {size} bytes and {n} images); {redo}")
    meta = np.fromfile(path, meta_type, count=n, offset=fields_end)
    table = np.sort(np.fromfile(path, ALLOC_TABLE_TYPE, count=n, offset=table_at), order="sample_id")
    image, label = meta["f0"], meta["f1"]
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
    jpegs = np.flatnonzero(image["mode"] == 0)
    data = np.memmap(path, np.uint8, mode="r")
    for i in jpegs[:: max(1, len(jpegs) // decode)][:decode]:
        blob = np.asarray(data[table["ptr"][i]: table["ptr"][i] + table["size"][i]])
        decoded = cv2.imdecode(blob, cv2.IMREAD_COLOR)
        if decoded is None or decoded.shape[:2] != (image["height"][i], image["width"][i]):
            raise DataError(f"{path}: damaged (image {i} does not decode as the stored JPEG); {redo}")


def _ffcv_loaders(data_dir, batch_size, train_crop_px, crop_scale_min, eval_crop_px, eval_resize_px, workers,
                  device, rank, world_size, seed, dtype_train, dtype_eval):
    from dataclasses import replace

    import numpy as np
    import torch

    import_ffcv()
    from ffcv.fields.basics import IntDecoder
    from ffcv.fields.rgb_image import CenterCropRGBImageDecoder, RandomResizedCropRGBImageDecoder
    from ffcv.loader import Loader
    from ffcv.loader.epoch_iterator import EpochIterator
    from ffcv.pipeline.allocation_query import AllocationQuery
    from ffcv.pipeline.compiler import Compiler
    from ffcv.pipeline.operation import Operation
    from ffcv.transforms import NormalizeImage, RandomHorizontalFlip, Squeeze, ToDevice, ToTensor, ToTorchImage
    from ffcv.traversal_order.base import TraversalOrder

    threads = torch.get_num_threads()  # FFCV 1.0.2 sets torch's to num_workers in Loader() and each iter()

    class Normalize(Operation):
        """uint8 NHWC -> normalised `dtype`, into a buffer FFCV preallocates per batch slot (its CUDA
        streams reuse slots only once the consumer is done, so no allocation races)."""

        def __init__(self, dtype):
            super().__init__()
            self.dtype = dtype

        def declare_state_and_memory(self, previous_state):
            self.device = previous_state.device
            return (replace(previous_state, dtype=self.dtype),
                    AllocationQuery(previous_state.shape, self.dtype, self.device))

        def generate_code(self):
            return lambda images, dst: normalize_nhwc(images, dst[: images.shape[0]])

    class ShardOrder(TraversalOrder):
        """`shard_order` as an FFCV traversal order (FFCV's own distributed mode pads the val set)."""

        def __init__(self, shuffle):  # FFCV calls the instance with the loader, see __call__
            self.shuffle = shuffle

        def __call__(self, loader):
            TraversalOrder.__init__(self, loader)
            return self

        def sample_order(self, epoch):
            return shard_order(len(self.indices), rank, world_size, seed, epoch, self.shuffle)

    cuda_device = device if device.type == "cuda" else None

    class EpochThread(EpochIterator):
        """FFCV's per-epoch loader thread, (1) on this rank's CUDA device: FFCV 1.0.2 never sets it, so every
        rank's thread would work on GPU 0 (a context per rank there; an error on exclusive-process GPUs);
        (2) handing an exception to the consumer: FFCV's thread dies with it and the consumer's next() waits
        forever for a batch that never comes."""

        def __init__(self, loader, order, path):
            self.path, self.error = path, None
            super().__init__(loader, order)  # starts the thread

        def run(self):
            try:
                if cuda_device is not None:
                    torch.cuda.set_device(cuda_device)
                super().run()
            except BaseException as e:  # noqa: BLE001 - whatever it is, the consumer must hear of it
                self.error = e
                while not self.terminate_event.is_set():  # FFCV's end-of-epoch mark wakes the consumer up
                    try:
                        self.output_queue.put(None, timeout=0.5)
                        return
                    except queue.Full:
                        pass

        def __next__(self):
            try:
                return super().__next__()
            except StopIteration:
                if self.error is None:
                    raise
            e = self.error
            raise DataError(f"{self.path}: reading a batch failed in FFCV's loader thread ({type(e).__name__}: "
                            f"{e}); if the file changed or was damaged since the run started, run `mlperf-resnet "
                            f"prepare` again".replace("\n", " ")) from e

    class RankLoader(Loader):
        """FFCV's Loader whose epochs run in EpochThread (1.0.2's __iter__, with that one class changed and
        torch's thread count left as it was)."""

        def __iter__(self):
            Compiler.set_num_threads(self.num_workers)
            torch.set_num_threads(threads)
            order = self.next_traversal_order()[: len(self) * self.batch_size]
            self.next_epoch += 1
            if self.code is None or self.recompile:
                self.generate_code()  # compiled at the first epoch
            return EpochThread(self, order, self.reader.file_name)

    data_dir = Path(data_dir)
    manifest = read_manifest(data_dir)
    on_device = [ToDevice(device, non_blocking=True)] if device.type != "cpu" else []
    train_path = data_dir / manifest.get("files", {}).get("train", "train.beton")
    _check_train_size(train_path, manifest["train_samples"], batch_size, world_size)

    def loader(split, decoder, dtype, shuffle):  # train: shuffle and flip; val: neither
        path = data_dir / manifest.get("files", {}).get(split, f"{split}.beton")
        check_beton(path, manifest["train_samples" if split == "train" else "eval_samples"], manifest["num_classes"])
        image = [decoder, *([RandomHorizontalFlip()] if shuffle else [])]
        if device.type == "cpu" and dtype in (torch.float32, torch.float16):  # FFCV's JIT op: faster here
            image += [NormalizeImage(np.array(IMAGENET_MEAN) * 255, np.array(IMAGENET_STD) * 255,
                                     np.dtype(str(dtype).split(".")[1])), ToTensor()]
        else:
            image += [ToTensor(), *on_device, Normalize(dtype)]
        image.append(ToTorchImage(channels_last=True))
        label = [IntDecoder(), ToTensor(), Squeeze(1), *on_device]
        try:
            ffcv = RankLoader(str(path), batch_size=batch_size, num_workers=workers, os_cache=True,
                              order=ShardOrder(shuffle), seed=seed, drop_last=shuffle, batches_ahead=BATCHES_AHEAD,
                              pipelines={"image": image, "label": label})
        except (OSError, ValueError, AssertionError) as e:  # what check_beton did not foresee
            raise DataError(f"{path}: FFCV cannot open it ({type(e).__name__}: {e}); run `mlperf-resnet prepare` "
                            f"again".replace("\n", " ")) from None
        finally:
            torch.set_num_threads(threads)

        def iterate(epoch):
            ffcv.next_epoch = epoch
            return iter(ffcv)

        return Batches(iterate, len(ffcv), batch_size, len(ffcv.first_traversal_order))

    decoder = RandomResizedCropRGBImageDecoder((train_crop_px, train_crop_px), scale=(crop_scale_min, 1.0),
                                               ratio=(3 / 4, 4 / 3))
    train = loader("train", decoder, _as_dtype(dtype_train), shuffle=True)
    center = CenterCropRGBImageDecoder((eval_crop_px, eval_crop_px), ratio=eval_crop_px / eval_resize_px)
    val = loader("val", center, _as_dtype(dtype_eval), shuffle=False)
    info = {"num_classes": manifest["num_classes"], "train_samples": manifest["train_samples"],
            "eval_samples": manifest["eval_samples"], "classes": manifest["classes"]}
    return train, val, info


class _Files:
    """Map-style data set over (path, label) samples: item = (transform(RGB PIL image), label)."""

    def __init__(self, samples, transform):
        self.samples, self.transform = samples, transform

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        path, label = self.samples[i]
        return self.transform(load_rgb(path)), label


class _ShardSampler:
    """`shard_order` as a torch Sampler (the epoch is set before each pass)."""

    def __init__(self, n, rank, world_size, seed, shuffle):
        self.args = (n, rank, world_size, seed)
        self.shuffle = shuffle
        self.epoch = 0
        self.length = len(shard_order(n, rank, world_size, seed, 0, shuffle))

    def __iter__(self):
        return iter(shard_order(*self.args, self.epoch, self.shuffle).tolist())

    def __len__(self):
        return self.length


def _torchvision_loaders(data_dir, batch_size, train_crop_px, crop_scale_min, eval_crop_px, eval_resize_px, workers,
                         device, rank, world_size, seed, dtype_train, dtype_eval):
    import torch
    from torch.utils.data import DataLoader
    from torchvision import transforms as T

    classes, train_samples, val_samples, _ = scan_dataset(data_dir)
    _check_train_size(Path(data_dir) / "train", len(train_samples), batch_size, world_size)
    for path, _ in (train_samples[0], val_samples[0]):  # one image per split: unreadable files show up now
        _first_image(path)
    train_tf = T.Compose([T.RandomResizedCrop(train_crop_px, scale=(crop_scale_min, 1.0), ratio=(3 / 4, 4 / 3)),
                          T.RandomHorizontalFlip(), T.PILToTensor()])
    val_tf = T.Compose([T.Resize(eval_resize_px), T.CenterCrop(eval_crop_px), T.PILToTensor()])

    def loader(samples, transform, dtype, shuffle):
        sampler = _ShardSampler(len(samples), rank, world_size, seed, shuffle)
        torch_loader = DataLoader(_Files(samples, transform), batch_size=batch_size, sampler=sampler,
                                  num_workers=workers, pin_memory=device.type == "cuda", drop_last=shuffle,
                                  persistent_workers=workers > 0)

        def iterate(epoch):
            sampler.epoch = epoch
            for images, labels in torch_loader:
                images = images.to(device, non_blocking=True).permute(0, 2, 3, 1)  # NHWC view, uint8
                out = torch.empty(images.shape, dtype=dtype, device=device)
                yield normalize_nhwc(images, out).permute(0, 3, 1, 2), labels.to(device, non_blocking=True)

        return Batches(iterate, len(torch_loader), batch_size, len(sampler))

    train = loader(train_samples, train_tf, _as_dtype(dtype_train), shuffle=True)
    val = loader(val_samples, val_tf, _as_dtype(dtype_eval), shuffle=False)
    info = {"num_classes": len(classes), "train_samples": len(train_samples), "eval_samples": len(val_samples),
            "classes": classes}
    return train, val, info


def _first_image(path):
    try:
        load_rgb(path)
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 - PIL raises many kinds for a bad file
        raise DataError(f"{path}: cannot read image ({type(e).__name__}: {e}); replace or delete the file"
                        .replace("\n", " ")) from None


def make_loaders(data_dir, *, loader="ffcv", batch_size, train_crop_px, crop_scale_min, eval_crop_px,
                 eval_resize_px, workers, device=None, rank=0, world_size=1, seed=0, dtype_train="fp32",
                 dtype_eval="fp32"):
    """Build (train_loader, val_loader, info); see the module docstring for what the loaders yield.

    data_dir: for loader="ffcv", the folder `prepare` wrote (train.beton, val.beton, manifest.json); for
    loader="torchvision", an ImageNet-layout folder (train/<class>/, val/<class>/). batch_size is per
    device; train_crop_px: the side of the training crops, taken at RandomResizedCrop scale
    (crop_scale_min, 1) of the image area; eval_crop_px out of eval_resize_px: the validation centre crop;
    workers: FFCV threads or DataLoader processes per rank; device: torch.device (default CPU);
    dtype_*: torch dtype or "fp32"/"fp16"/"bf16". info = {"num_classes", "train_samples", "eval_samples",
    "classes"} (totals over all ranks). Each loader is a `Batches` (len, iteration, set_epoch).
    Raises SettingError for bad arguments and DataError for every data problem found up front (module
    docstring); nothing is left running when it raises.
    """
    import torch

    device = torch.device("cpu") if device is None else torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())  # what FFCV's thread must be set to
    build = {"ffcv": _ffcv_loaders, "torchvision": _torchvision_loaders}.get(loader)
    if build is None:
        raise SettingError(f"LOADER={loader}: unknown loader; use ffcv or torchvision")
    if not 0 <= rank < world_size:
        raise SettingError(f"rank {rank}: outside world_size {world_size}; give 0 <= rank < world_size")
    for name, value, low in (("batch_size", batch_size, 1), ("train_crop_px", train_crop_px, 1),
                             ("eval_crop_px", eval_crop_px, 1), ("eval_resize_px", eval_resize_px, eval_crop_px),
                             ("workers", workers, 0 if loader == "torchvision" else 1)):
        if not isinstance(value, int) or value < low:
            raise SettingError(f"{name} {value}: must be an integer >= {low}")
    if not 0 < crop_scale_min <= 1:  # also refuses nan
        raise SettingError(f"crop_scale_min {crop_scale_min}: must be in (0, 1] (the recipe's RandomResizedCrop "
                           f"takes 0.08-1 of the image area)")
    return build(data_dir, batch_size, train_crop_px, crop_scale_min, eval_crop_px, eval_resize_px, workers, device,
                 rank, world_size, seed, dtype_train, dtype_eval)
