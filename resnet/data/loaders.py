"""The loader seam: one spec in, (train, val, info) out, whichever backend reads the data.

    spec = LoaderSpec.from_recipe(recipe, batch_size=256, workers=8, device="cuda:0", rank=0, world_size=8, seed=1)
    train, val, info = make_loaders("/data/imagenet", spec, loader="dali")

Backends (`BACKENDS`: name -> module, one module each, picked by name):
- ffcv:        the .beton files `prepare` wrote (the submitted loader; CPU JPEG decoding in FFCV's threads);
- dali:        the ImageNet folders directly, NVIDIA DALI decoding on the GPU (CPU operators without one);
- torchvision: the ImageNet folders directly, PIL in DataLoader processes (no extra dependency; slow).

Every backend yields the same thing: batches of (images, labels) on `spec.device`, images of the precision's dtype,
NCHW in channels_last memory format, normalised with the ImageNet mean/std (x255, from uint8), labels int64 [B].
Train: RandomResizedCrop(train side, scale crop_scale_min-1, ratio 3/4-4/3) + horizontal flip, a new order every
epoch from (seed, epoch) alone, drop_last, equal disjoint shards per rank (`shard_order`). Val: the centre
eval_crop_px of the image resized to eval_resize_px on its short side (FFCV: the equivalent crop ratio), fp32 as
the spec says, in file order, every image exactly once over all ranks for any world size, no padding.

A backend module declares at its top `BACKEND = Backend(...)`: what it reads (a key of `LAYOUTS`), the library it
needs (import name, and one line saying how to install it) and its constraints (whether it decodes to each epoch's
side, what `workers` means for it). Importing a backend module imports no heavy library, so the seam answers for it
(`declared(name)`) without FFCV, DALI or torch; a fourth backend is one module plus one line in `BACKENDS`.
It has `build(data_dir, spec) -> (Batches, Batches, DataInfo)`, and raises DataError for every data problem it can
find before training (so a trainer that builds its loaders before it claims a result log never leaves a stub log
for bad data) and, mid-run, one DataError naming the file. Heavy imports happen inside `build`.
"""
import dataclasses
import functools
import importlib
from dataclasses import dataclass

from resnet.errors import DataError, SettingError
from resnet.recipe import PRECISIONS

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
BACKENDS = {"ffcv": "resnet.data.ffcv_loader", "dali": "resnet.data.dali_loader",
            "torchvision": "resnet.data.torchvision_loader"}
LOADERS = tuple(BACKENDS)


@dataclass(frozen=True)
class Layout:
    """A form of the data set on disk: the paths DATADIR must hold, and how to get them."""
    paths: tuple
    what: str
    how: str


LAYOUTS = {"beton": Layout(("train.beton", "val.beton"), "the .beton files of `mlperf-resnet prepare`",
                           "run mlperf-resnet prepare SRC OUT and point DATADIR at OUT"),
           "folders": Layout(("train", "val"), "ImageNet-layout folders",
                             "point DATADIR at a folder with train/<class>/ and val/<class>/")}


@dataclass(frozen=True)
class Backend:
    """What a backend module declares about itself (its `BACKEND`)."""
    reads: str                       # a key of LAYOUTS
    needs: str                       # the import name of the library it reads with
    library: str                     # that library's name for people
    install: str                     # one line: how to install it
    workers: str                     # what LoaderSpec.workers counts for this backend
    min_workers: int = 1
    decode_to_side: bool = False     # can decode straight to each epoch's side (LoaderSpec.train_sides)
    randaugment: bool = False        # applies RandAugment to decoded training images (LoaderSpec.randaugment)

    @property
    def layout(self) -> Layout:
        return LAYOUTS[self.reads]

    def missing(self) -> str | None:
        """One line saying that the library is not installed and how to install it; None when it is."""
        return missing_module(self.needs, self.install)


def missing_module(module: str, install: str = "") -> str | None:
    """"no module named 'M'" (and how to install it) when this python cannot import `module`, else None: its
    presence only, nothing is imported (the backends' libraries, and what `python -m resnet.launch deps` needs)."""
    import importlib.util

    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):   # a parent package that is not there, or not a package
        found = False
    return None if found else f"no module named {module!r}" + (f"; {install}" if install else "")


def declared(loader: str) -> Backend:
    """The declaration of the backend `loader` (its module is imported; its library is not)."""
    if loader not in BACKENDS:
        raise SettingError(f"LOADER={loader}: unknown loader; use one of {', '.join(BACKENDS)}")
    return importlib.import_module(BACKENDS[loader]).BACKEND


def data_hint(loader: str) -> str:
    """How to give `loader` its data, and which loaders read the other layouts (the fix for a missing path)."""
    reads = {name: declared(name).reads for name in BACKENDS}
    others = [f"LOADER={'/'.join(n for n in BACKENDS if reads[n] == key)} reads {LAYOUTS[key].what}"
              for key in dict.fromkeys(reads.values()) if key != reads[loader]]
    return "; ".join([f"LOADER={loader} reads {LAYOUTS[reads[loader]].what}: {LAYOUTS[reads[loader]].how}", *others])


@dataclass(frozen=True)
class LoaderSpec:
    """What every backend is asked for (crops from the Recipe; the rest from the run)."""
    batch_size: int                  # per device
    train_crop_px: int               # RandomResizedCrop's output side
    crop_scale_min: float            # its smallest area fraction (ImageNet: 0.08)
    eval_crop_px: int                # validation centre crop ...
    eval_resize_px: int              # ... of the image resized to this short side
    workers: int = 1                 # per rank, as the backend declares (Backend.workers)
    device: str = "cpu"              # where batches land: "cpu", "cuda:3"
    rank: int = 0
    world_size: int = 1
    seed: int = 0                    # with the epoch, the only source of the order (and of DALI's crops)
    train_precision: str = "fp32"    # a name in resnet.recipe.PRECISIONS: the dtype of training images
    eval_precision: str = "fp32"
    train_sides: tuple = ()          # decode straight to epoch e's side train_sides[e] (DALI); (): train_crop_px
    hw_decoder_load: float = 0.65    # DALI on a GPU: share of the JPEGs sent to the hardware decoder (A100, H100)
    dali_prefetch: int = 2           # DALI: batches each pipeline prepares ahead (prefetch_queue_depth)
    nvjpeg_padding_mb: int | None = None  # DALI on a GPU: nvJPEG host and device memory padding, MB; None: DALI's
    preallocate_px: tuple = (0, 0)   # DALI on a GPU: (width, height) to preallocate the hardware decoder for
    randaugment: tuple = ()          # (depth, severity) of RandAugment on training images (Hot); (): none

    @classmethod
    def from_recipe(cls, recipe, *, decode_to_side: bool = False, **run) -> "LoaderSpec":
        sides = tuple(recipe.resolution_px(e) for e in range(recipe.epochs)) if decode_to_side else ()
        return cls(train_crop_px=recipe.train_crop_px, crop_scale_min=recipe.crop_scale_min,
                   eval_crop_px=recipe.eval_crop_px, eval_resize_px=recipe.eval_resize_px,
                   train_precision=recipe.precision, eval_precision=recipe.eval_precision, train_sides=sides,
                   randaugment=(recipe.randaugment_depth, recipe.randaugment_severity) if recipe.randaugment_depth
                   else (), **run)

    def eval_batch_sizes(self, eval_samples: int) -> tuple[int, ...]:
        """The batch sizes this rank's evaluation sees: full batches and the last one."""
        shard = len(shard_order(eval_samples, self.rank, self.world_size, 0, 0, False))
        return tuple(sorted({min(shard, self.batch_size), shard % self.batch_size} - {0}))

    def train_side(self, epoch: int) -> int:
        """The side training images of `epoch` (0-based) come out at."""
        return self.train_sides[min(epoch, len(self.train_sides) - 1)] if self.train_sides else self.train_crop_px

    @property
    def torch_device(self):
        import torch

        return torch.device(self.device)

    def dtype(self, train: bool):
        from resnet.recipe import torch_dtype

        return torch_dtype(self.train_precision if train else self.eval_precision)

    def check(self, loader: str) -> None:
        """Raise SettingError for a value the backend `loader` cannot use."""
        backend = declared(loader)
        if not 0 <= self.rank < self.world_size:
            raise SettingError(f"rank {self.rank}: outside world_size {self.world_size}; give 0 <= rank < world_size")
        for name in ("batch_size", "train_crop_px", "eval_crop_px", "eval_resize_px", "workers"):
            value, low = getattr(self, name), backend.min_workers if name == "workers" else 1
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise SettingError(f"{name} {value}: must be an integer >= {low}")
        if self.eval_resize_px < self.eval_crop_px:
            raise SettingError(f"eval_resize_px {self.eval_resize_px}: must be >= eval_crop_px {self.eval_crop_px}")
        if not 0 < self.crop_scale_min <= 1:  # also refuses nan
            raise SettingError(f"crop_scale_min {self.crop_scale_min}: must be in (0, 1] (the recipe's "
                               f"RandomResizedCrop takes 0.08-1 of the image area)")
        for name in ("train_precision", "eval_precision"):
            if getattr(self, name) not in PRECISIONS:
                raise SettingError(f"{name} {getattr(self, name)!r}: use one of {', '.join(PRECISIONS)}")
        if self.train_sides and (not backend.decode_to_side or min(self.train_sides) < 1):
            able = [name for name in BACKENDS if declared(name).decode_to_side]
            raise SettingError(f"DECODE_TO_SIDE=1: only the {'/'.join(n.upper() for n in able)} loader decodes to "
                               f"each epoch's side; set LOADER={'/'.join(able)} or DECODE_TO_SIDE=0")
        if self.randaugment and not backend.randaugment:
            able = [name for name in BACKENDS if declared(name).randaugment]
            raise SettingError(f"LOADER={loader}: the recipe's RandAugment needs a loader that augments the decoded "
                               f"images; set LOADER={' or LOADER='.join(able)}")
        if self.randaugment and self.train_sides:
            raise SettingError("DECODE_TO_SIDE=1: RandAugment is applied at the crop's side; set DECODE_TO_SIDE=0")
        if not 0 <= self.hw_decoder_load <= 1:
            raise SettingError(f"DALI_HW_DECODER_LOAD {self.hw_decoder_load}: must be in [0, 1]")


@dataclass(frozen=True)
class DataInfo:
    """What a data set is (totals over all ranks). `digest` identifies its images, not only its shape: a resume
    or a manifest check tells two sets with the same classes and counts apart."""
    classes: tuple
    train_samples: int
    eval_samples: int
    digest: str

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def identity(self) -> dict:
        """What a checkpoint records of its data set."""
        return dict(classes=list(self.classes), train_samples=self.train_samples, eval_samples=self.eval_samples,
                    digest=self.digest)


class Batches:
    """One loader: iterating yields one epoch of (images, labels) batches; len() is the number of batches per
    epoch. Epoch e's sample order depends only on (seed, e): each iteration advances the epoch by one, and
    `set_epoch(e)` chooses the next one (e.g. when resuming). Batches may be views of reusable buffers: a batch
    stays valid while the next few are produced; clone what you keep. `close()` ends the backend's threads."""

    def __init__(self, iterate, num_batches, batch_size, num_samples, close=None):
        self._iterate, self._close = iterate, close
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

    def close(self):
        if self._close is not None:
            self._close()
            self._close = None


def shard_order(n, rank, world_size, seed, epoch, shuffle):
    """The sample indices (numpy int64) that `rank` reads in `epoch`, in order.

    shuffle=True (train): one permutation of range(n) per (seed, epoch), the same on every rank, cut to a multiple
    of world_size, then every world_size-th entry from `rank`: equal, disjoint shards.
    shuffle=False (val): range(rank, n, world_size), so the ranks together read every index exactly once.
    """
    import numpy as np

    if not shuffle:
        return np.arange(rank, n, world_size)
    order = np.random.default_rng([seed, epoch]).permutation(n)
    return order[: n - n % world_size][rank::world_size]


def check_train_size(where, n, spec: LoaderSpec):
    if n // (spec.batch_size * spec.world_size) == 0:
        raise DataError(f"{where}: {n} training images give no full batch of {spec.batch_size} per device on "
                        f"{spec.world_size} devices; lower the per-device batch size (BATCHSIZE) or use a larger "
                        "data set")


@functools.lru_cache(maxsize=None)
def _scale_bias(device):
    """1/std and -mean/std (x255 scale), float32 on `device`: normalised = uint8 * scale + bias."""
    import torch

    std = torch.tensor(IMAGENET_STD, dtype=torch.float64) * 255
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float64) * 255
    return (1 / std).float().to(device), (-mean / std).float().to(device)


def normalize_nhwc(images, out):
    """Write (images - mean) / std into `out`: images uint8 [B, H, W, 3], out float [B, H, W, 3] of any float dtype
    on the same device (computed in float32, rounded once). Returns `out`."""
    import torch

    scale, bias = _scale_bias(images.device)
    return torch.addcmul(bias, images, scale, out=out)


def backend(loader: str):
    """The backend module of a loader name; SettingError for an unknown name or a library that is not installed
    (its presence only: the backend imports it in `build`, its own way). A module's own `ensure_installed()`, if
    it has one, checks more (a version)."""
    declaration = declared(loader)
    if declaration.missing():
        raise SettingError(f"LOADER={loader}: {declaration.library} is not installed; {declaration.install}")
    module = importlib.import_module(BACKENDS[loader])
    if hasattr(module, "ensure_installed"):
        module.ensure_installed()
    return module


def make_loaders(data_dir, spec: LoaderSpec, loader: str = "ffcv"):
    """(train Batches, val Batches, DataInfo) from the backend `loader` (see the module docstring).

    data_dir: for ffcv, the folder `prepare` wrote (train.beton, val.beton, manifest.json); for dali and
    torchvision, an ImageNet-layout folder (train/<class>/, val/<class>/). Raises SettingError for a bad spec and
    DataError for every data problem found up front; nothing is left running when it raises."""
    import torch

    spec.check(loader)
    device = spec.torch_device
    if device.type == "cuda" and device.index is None:   # what a loader thread must be set to
        spec = dataclasses.replace(spec, device=str(torch.device("cuda", torch.cuda.current_device())))
    return backend(loader).build(data_dir, spec)
