"""Training and validation loaders: FFCV (.beton files from `prepare`) or torchvision (the image folders).

Both return the same thing (see `make_loaders`): batches of (images, labels) on the device, images float
NCHW in channels_last memory format normalised with the ImageNet mean/std (x255, from uint8), labels int64
of shape [B]. Train: RandomResizedCrop(train_crop, scale 0.08-1, ratio 3/4-4/3) + horizontal flip, a new
random order every epoch, drop_last, sharded over ranks. Val: center crop of eval_crop out of a square
of side min_side * eval_crop / eval_resize (FFCV) or Resize(eval_resize) + CenterCrop(eval_crop)
(torchvision), in file order, every image exactly once over all ranks.

Normalisation happens on the device (a uint8 batch travels to the GPU, not a float one) as one torch op
(`normalize_nhwc`), except in FFCV on CPU for float32/float16, where FFCV's NormalizeImage (a JIT-compiled
lookup table, fused into the decoding stage) is used: it made the CPU loader ~40% faster. NormalizeImage
is not used on CUDA (it needs cupy there) nor for bfloat16 (numpy has no such type).

Heavy imports (torch, torchvision, ffcv) happen inside the functions: importing this module is cheap.
"""
import functools
from pathlib import Path

from resnet.data.folders import DataError, load_rgb, scan_dataset

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MANIFEST = "manifest.json"
BATCHES_AHEAD = 2  # FFCV batches prepared ahead (the submitted system's setting)
_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def _fail(msg):
    raise SystemExit(f"mlperf-resnet train: error: {msg}")


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


def _check_train_size(n, batch_size, world_size):
    if n // (batch_size * world_size) == 0:
        _fail(f"train: {n} images give no full batch of {batch_size} per device on {world_size} devices; "
              f"lower the per-device batch size (BATCHSIZE) or use a larger data set")


def _ffcv_loaders(data_dir, batch_size, train_crop_px, eval_crop_px, eval_resize_px, workers, device, rank,
                  world_size, seed, dtype_train, dtype_eval):
    import json
    from dataclasses import replace

    import numpy as np
    import torch
    from ffcv.fields.basics import IntDecoder
    from ffcv.fields.rgb_image import CenterCropRGBImageDecoder, RandomResizedCropRGBImageDecoder
    from ffcv.loader import Loader
    from ffcv.pipeline.allocation_query import AllocationQuery
    from ffcv.pipeline.operation import Operation
    from ffcv.transforms import NormalizeImage, RandomHorizontalFlip, Squeeze, ToDevice, ToTensor, ToTorchImage
    from ffcv.traversal_order.base import TraversalOrder

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

    data_dir = Path(data_dir)
    try:
        manifest = json.loads((data_dir / MANIFEST).read_text())
    except (OSError, ValueError) as e:
        _fail(f"{data_dir / MANIFEST}: cannot read ({e}); run `mlperf-resnet prepare SRC {data_dir}` first, "
              f"or use the torchvision loader (LOADER=torchvision) on image folders")
    on_device = [ToDevice(device, non_blocking=True)] if device.type != "cpu" else []

    def loader(split, decoder, dtype, shuffle):  # train: shuffle and flip; val: neither
        path = data_dir / manifest.get("files", {}).get(split, f"{split}.beton")
        expected = manifest["train_samples" if split == "train" else "eval_samples"]
        if not path.is_file():
            _fail(f"{path}: missing; run `mlperf-resnet prepare SRC {data_dir}` again")
        if shuffle:
            _check_train_size(expected, batch_size, world_size)
        image = [decoder, *([RandomHorizontalFlip()] if shuffle else [])]
        if device.type == "cpu" and dtype in (torch.float32, torch.float16):  # FFCV's JIT op: faster here
            image += [NormalizeImage(np.array(IMAGENET_MEAN) * 255, np.array(IMAGENET_STD) * 255,
                                     np.dtype(str(dtype).split(".")[1])), ToTensor()]
        else:
            image += [ToTensor(), *on_device, Normalize(dtype)]
        image.append(ToTorchImage(channels_last=True))
        label = [IntDecoder(), ToTensor(), Squeeze(1), *on_device]
        ffcv = Loader(str(path), batch_size=batch_size, num_workers=workers, os_cache=True,
                      order=ShardOrder(shuffle), seed=seed, drop_last=shuffle, batches_ahead=BATCHES_AHEAD,
                      pipelines={"image": image, "label": label})
        if ffcv.reader.num_samples != expected:
            _fail(f"{path}: holds {ffcv.reader.num_samples} images, {data_dir / MANIFEST} says {expected}; "
                  f"run `mlperf-resnet prepare` again")

        def iterate(epoch):
            ffcv.next_epoch = epoch
            return iter(ffcv)

        return Batches(iterate, len(ffcv), batch_size, len(ffcv.first_traversal_order))

    train = loader("train", RandomResizedCropRGBImageDecoder((train_crop_px, train_crop_px)),
                   _as_dtype(dtype_train), shuffle=True)
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


def _torchvision_loaders(data_dir, batch_size, train_crop_px, eval_crop_px, eval_resize_px, workers, device,
                         rank, world_size, seed, dtype_train, dtype_eval):
    import torch
    from torch.utils.data import DataLoader
    from torchvision import transforms as T

    try:
        classes, train_samples, val_samples, _ = scan_dataset(data_dir)
    except DataError as e:
        _fail(str(e))
    train_tf = T.Compose([T.RandomResizedCrop(train_crop_px, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)),
                          T.RandomHorizontalFlip(), T.PILToTensor()])
    val_tf = T.Compose([T.Resize(eval_resize_px), T.CenterCrop(eval_crop_px), T.PILToTensor()])

    def loader(split, samples, transform, dtype, shuffle):
        if shuffle:
            _check_train_size(len(samples), batch_size, world_size)
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

    train = loader("train", train_samples, train_tf, _as_dtype(dtype_train), shuffle=True)
    val = loader("val", val_samples, val_tf, _as_dtype(dtype_eval), shuffle=False)
    info = {"num_classes": len(classes), "train_samples": len(train_samples), "eval_samples": len(val_samples),
            "classes": classes}
    return train, val, info


def make_loaders(data_dir, *, loader="ffcv", batch_size, train_crop_px=176, eval_crop_px=224,
                 eval_resize_px=232, workers=8, device=None, rank=0, world_size=1, seed=0,
                 dtype_train="fp32", dtype_eval="fp32"):
    """Build (train_loader, val_loader, info); see the module docstring for what the loaders yield.

    data_dir: for loader="ffcv", the folder `prepare` wrote (train.beton, val.beton, manifest.json); for
    loader="torchvision", an ImageNet-layout folder (train/<class>/, val/<class>/). batch_size is per
    device; workers: FFCV threads or DataLoader processes per rank; device: torch.device (default CPU);
    dtype_*: torch dtype or "fp32"/"fp16"/"bf16". info = {"num_classes", "train_samples", "eval_samples",
    "classes"} (totals over all ranks). Each loader is a `Batches` (len, iteration, set_epoch).
    """
    import torch

    device = torch.device("cpu") if device is None else torch.device(device)
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside world_size {world_size}")
    build = {"ffcv": _ffcv_loaders, "torchvision": _torchvision_loaders}.get(loader)
    if build is None:
        _fail(f"LOADER={loader}: unknown loader; use ffcv or torchvision")
    return build(data_dir, batch_size, train_crop_px, eval_crop_px, eval_resize_px, workers, device, rank,
                 world_size, seed, dtype_train, dtype_eval)
