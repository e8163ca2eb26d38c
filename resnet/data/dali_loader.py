"""The DALI backend (LOADER=dali): the ImageNet folders read directly by NVIDIA DALI, decoded on the GPU (nvJPEG,
`device="mixed"`, with `spec.hw_decoder_load` of the JPEGs sent to the A100/H100 hardware decoder) or, without
one, by the same pipeline with CPU operators. See resnet/data/loaders.py for the contract.

Ready for the clock: `build` (before run_start) scans the folders (rank 0 alone, see folders.shared_scan), encodes
every path once, and builds both pipelines, train and val, once for the run. Each pipeline is fed by its
external_source (`_Feed`), batch after batch, without end: the paths `shard_order` gives for (seed, epoch, rank),
then the next epoch's, so a pipeline prefetches across an epoch's end (and across an evaluation). An epoch that is
not the one fed next (set_epoch on resume, an epoch left half-read) first drains the few batches prefetched.
Crops and flips: DALI 2.4's random operators take their random state as an argument input (`_random_state`, the
hook its dynamic mode uses; the pipeline's `seed` is fixed at construction and the operators' own generators run on
across epochs). The state of a batch's first sample seeds the whole batch (sample i draws from (state, i)), so each
batch gets states drawn from (seed, epoch, rank, batch index): a crop depends only on (seed, epoch, rank, sample
position), and a resumed run (set_epoch(e), then skipping the batches already done) replays them exactly.
Train: decoders.image_random_crop (RandomResizedCrop fused into the decode: only the crop is decoded), resized to
spec.train_side(epoch) (fed per batch), flipped on a coin toss, normalised. Val: the whole image, its short side
resized to eval_resize_px, the centre eval_crop_px, normalised; in file order, the last batch of a shard shorter.
Paths are encoded once per run (one NUL-padded row each: a batch is one numpy indexing); labels go to the device
once per epoch (a batch's are a slice of them).

Images: what DALI's decoder (nvImageCodec) reads on the CPU: JPEG, PNG, BMP, TIFF, PNM (ppm/pgm), WebP and
JPEG 2000, grayscale or colour (converted to RGB); on the GPU, JPEGs are decoded there and the rest on the CPU.
16-bit images get DALI's own 8-bit conversion, not necessarily `folders.load_rgb`'s (prepare and torchvision):
convert such a set to 8-bit JPEG first if the two must agree. Bad files: the first image of each split is decoded
before training; a file that fails to be read or decoded mid-run ends the epoch with one DataError naming it (found
by decoding the failed batch's files one by one). Any other pipeline failure (CUDA, memory, DALI itself) is raised
as the RuntimeError it is, with DALI's reason, not blamed on the data.
"""
import os
import re

from resnet.data.dali_augment import rand_augment
from resnet.data.folders import read_dataset
from resnet.data.loaders import IMAGENET_MEAN, IMAGENET_STD, Backend, Batches, shard_order
from resnet.errors import DataError, SettingError

BACKEND = Backend(reads="folders", needs="nvidia.dali", library="NVIDIA DALI",
                  install="pip install nvidia-dali-cuda120 (CPU machines and CUDA 12), or use the NGC PyTorch "
                          "container, which ships it",
                  workers="DALI CPU threads per rank (file reading; decoding too without a GPU)", min_workers=1,
                  decode_to_side=True, randaugment=True)
MIN_DALI = "2.4"   # random states as argument inputs (`_random_state`); exec_dynamic (run on a CUDA stream)
STATE_WORDS = 7    # uint32 words of one DALI random state (nvidia/dali/experimental/dynamic/random.py)
DATA_OPERATORS = ("nvidia.dali.fn.decoders.", "nvidia.dali.fn.io.file.read")  # their failures are the files'


def _version(text):
    return tuple(int(part) for part in re.findall(r"\d+", text)[:2])


def ensure_installed():
    """The installed DALI is new enough (that it is installed at all, the seam checks from BACKEND)."""
    import nvidia.dali

    if _version(nvidia.dali.__version__) < _version(MIN_DALI):
        raise SettingError(f"LOADER=dali: NVIDIA DALI {nvidia.dali.__version__} is installed, this loader needs "
                           f"{MIN_DALI} or newer; pip install -U nvidia-dali-cuda120, or use LOADER=ffcv")


class _Feed:
    """The external source of one pipeline, called by DALI (in the thread that runs it) for each batch it
    schedules: (paths, crop states, flip states, sides) for training, (paths,) for validation."""

    def __init__(self, samples, spec, train):
        import numpy as np

        # Encoded once per run, one row a path, NUL-padded (io.file.read takes a path up to its first NUL, and no
        # POSIX path holds one): a batch's paths are one indexing of this array, not a Python loop.
        raw = [os.fsencode(path) for path, _ in samples]
        width = max(map(len, raw))
        self.paths = np.frombuffer(b"".join(r.ljust(width, b"\0") for r in raw), np.uint8).reshape(len(raw), width)
        self.labels = np.array([label for _, label in samples], dtype=np.int64)
        self.spec, self.train = spec, train
        self.size = spec.batch_size
        self.shard_size = len(shard_order(len(self.labels), spec.rank, spec.world_size, 0, 0, train))
        self.num_batches = self.shard_size // self.size if train else -(-self.shard_size // self.size)
        self.epoch, self.batch, self.fed = None, 0, 0   # the batch fed next; batches fed but not yet read

    def order(self, epoch):
        spec = self.spec
        return shard_order(len(self.labels), spec.rank, spec.world_size, spec.seed, epoch,
                           self.train)[: self.num_batches * self.size]

    def restart(self, epoch):
        self.epoch, self.batch, self._order = epoch, 0, self.order(epoch)

    def __call__(self):
        import numpy as np

        if self.batch == self.num_batches:          # the next epoch follows
            self.restart(self.epoch + 1)
        index = self._order[self.batch * self.size: (self.batch + 1) * self.size]
        paths = self.paths[index]
        self.batch, self.fed = self.batch + 1, self.fed + 1
        if not self.train:
            return (paths,)
        words = np.random.SeedSequence([self.spec.seed, self.epoch, self.spec.rank, self.batch - 1])
        crop, flip = np.split(words.generate_state(2 * STATE_WORDS, np.uint32), 2)
        side = np.full(2, self.spec.train_side(self.epoch), np.float32)
        return paths, [crop] * len(paths), [flip] * len(paths), [side] * len(paths)


def _decoding(spec):
    """The decoder's arguments: nvJPEG on a GPU with the spec's hardware share, paddings and preallocation."""
    if spec.torch_device.type != "cuda":
        return dict(device="cpu")
    args = dict(device="mixed", hw_decoder_load=spec.hw_decoder_load)
    if spec.nvjpeg_padding_mb is not None:
        padding = spec.nvjpeg_padding_mb << 20
        args.update(device_memory_padding=padding, host_memory_padding=padding)
    width, height = spec.preallocate_px
    if width and height:
        args.update(preallocate_width_hint=width, preallocate_height_hint=height)
    return args


def _pipeline(spec, feed, *, train):
    """A built DALI pipeline that yields `feed`'s batches as NHWC images of spec's train or val shape."""
    import torch
    from nvidia.dali import fn, pipeline_def, types

    device = spec.torch_device
    half = spec.dtype(train) == torch.float16  # DALI has no bfloat16: fp32 out, converted by torch
    normalise = dict(dtype=types.FLOAT16 if half else types.FLOAT, output_layout="HWC",
                     mean=[m * 255 for m in IMAGENET_MEAN], std=[s * 255 for s in IMAGENET_STD])

    def graph():
        if train:
            paths, crop, flip, side = fn.external_source(
                source=feed, num_outputs=4, batch=True, dtype=[types.UINT8, types.UINT32, types.UINT32, types.FLOAT])
            images = fn.decoders.image_random_crop(fn.io.file.read(paths), output_type=types.RGB,
                                                   random_area=(spec.crop_scale_min, 1), _random_state=crop,
                                                   random_aspect_ratio=(3 / 4, 4 / 3), **_decoding(spec))
            images = fn.resize(images, size=side)
            if spec.randaugment:   # Hot: on the uint8 crops (one side: LoaderSpec.check refuses decode-to-side)
                images = rand_augment(images, *spec.randaugment, side=spec.train_crop_px,
                                      seed=(spec.seed * 7919 + spec.rank) % 2**31)
            mirror = fn.random.coin_flip(probability=0.5, _random_state=flip)
            return fn.crop_mirror_normalize(images, mirror=mirror, **normalise)
        (paths,) = fn.external_source(source=feed, num_outputs=1, batch=True, dtype=[types.UINT8])
        images = fn.decoders.image(fn.io.file.read(paths), output_type=types.RGB, **_decoding(spec))
        images = fn.resize(images, resize_shorter=spec.eval_resize_px)
        return fn.crop_mirror_normalize(images, crop=(spec.eval_crop_px,) * 2, **normalise)

    # RandAugment's per-image choice of operation is a DALI conditional: the graph is traced from its source
    pipe = pipeline_def(graph, enable_conditionals=bool(train and spec.randaugment))(
        batch_size=spec.batch_size, num_threads=spec.workers, prefetch_queue_depth=spec.dali_prefetch,
        device_id=device.index if device.type == "cuda" else None, exec_dynamic=True)
    pipe.build()
    return pipe


def decode_problem(path):
    """Why DALI's CPU decoder cannot read the image at `path` (one line), or None when it can."""
    import numpy as np
    from nvidia.dali import Pipeline, fn, types

    try:
        encoded = np.fromfile(path, dtype=np.uint8)
    except OSError as e:
        return f"cannot read the file ({e.strerror})"
    pipe = Pipeline(batch_size=1, num_threads=1, device_id=None, prefetch_queue_depth=1, exec_dynamic=True)
    with pipe:
        pipe.set_outputs(fn.decoders.image(fn.external_source(source=[[encoded]], cycle=False), device="cpu",
                                           output_type=types.RGB))
    try:
        pipe.build()
        pipe.run()
        return None
    except RuntimeError as e:
        return _reason(e)
    finally:
        del pipe


def _reason(error):
    """The informative line of DALI's multi-line error text (it repeats the pipeline's traceback)."""
    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
    useful = [ln for ln in lines if not ln.startswith(("Critical error", "Current pipeline", "Error in", "File ",
                                                      "which was used", "encountered", "img = ", "images = ",
                                                      "C++ context"))]
    return (useful or lines or ["unknown error"])[-1]


def check_decodes(path):
    problem = decode_problem(path)
    if problem:
        raise DataError(f"{path}: DALI cannot decode this image ({problem}); replace or delete the file")


def failure(error, files, size, prefetch):
    """What a pipeline failure while reading the batch `files[:size]` is: for a failure of the file reader or the
    decoder, the DataError of the first file (of that batch and the ones DALI had prefetched) that does not decode
    alone, else of the batch; for any other (CUDA, memory, DALI itself), a RuntimeError with DALI's reason."""
    if not any(op in str(error) for op in DATA_OPERATORS):
        return RuntimeError(f"LOADER=dali: the DALI pipeline failed ({_reason(error)}) outside reading and "
                            "decoding the files, so not a data problem (MLPERF_RESNET_DEBUG=1 shows DALI's message)")
    for path in files[: (prefetch + 1) * size]:
        problem = decode_problem(path)
        if problem:
            return DataError(f"{path}: DALI cannot decode this image ({problem}); replace or delete the file")
    return DataError(f"{files[0]} (and {len(files[:size]) - 1} more files of its batch): DALI failed on this batch "
                     f"({_reason(error)}); check those files, or use LOADER=ffcv or torchvision")


class _Loader:
    """One split: its feed and its pipeline, built once; `iterate(epoch)` yields the epoch's batches."""

    def __init__(self, spec, samples, train):
        self.spec, self.train, self.files = spec, train, [path for path, _ in samples]
        self.feed = _Feed(samples, spec, train)
        self.pipe = _pipeline(spec, self.feed, train=train) if self.feed.num_batches else None

    def close(self):
        self.pipe, self.feed.epoch, self.feed.fed = None, None, 0   # frees the pipeline and its threads

    def _next_read(self):
        """(epoch, batch) of the batch the pipeline yields next: the one fed next, less those fed but not read."""
        feed = self.feed
        epoch, batch = feed.epoch, feed.batch - feed.fed
        while batch < 0:
            epoch, batch = epoch - 1, batch + feed.num_batches
        return (epoch + 1, 0) if batch == feed.num_batches else (epoch, batch)

    def _start(self, epoch):
        """Make epoch `epoch` the one the pipeline yields next. Each run() feeds one batch and yields one: the
        batches prefetched for another position are read and dropped while the new epoch's take their place."""
        feed = self.feed
        if feed.epoch is not None and self._next_read() == (epoch, 0):
            return
        stale = feed.fed
        feed.restart(epoch)
        try:
            for _ in range(stale):
                self.pipe.run()
                feed.fed -= 1
        except RuntimeError:    # in a batch of another epoch: that epoch reports it when it is read
            self.close()
            self.pipe = _pipeline(self.spec, feed, train=self.train)
            feed.restart(epoch)

    def iterate(self, epoch):
        import torch
        from nvidia.dali.plugin.pytorch import feed_ndarray

        if self.pipe is None:
            if not self.feed.num_batches:
                return
            self.pipe = _pipeline(self.spec, self.feed, train=self.train)     # after a failure
        self._start(epoch)
        device, out_dtype, size = self.spec.torch_device, self.spec.dtype(self.train), self.spec.batch_size
        order = self.feed.order(epoch)
        labels = torch.from_numpy(self.feed.labels[order]).to(device)      # once per epoch
        stream = torch.cuda.current_stream(device) if device.type == "cuda" else None
        dali_dtype = torch.float16 if out_dtype == torch.float16 else torch.float32
        for first in range(0, len(order), size):
            try:
                (out,) = self.pipe.run(stream)  # on a GPU: bound to torch's stream, no host wait
            except RuntimeError as e:
                self.close()                    # DALI: "Current pipeline object is no longer valid"
                raise failure(e, [self.files[i] for i in order[first:]], size, self.spec.dali_prefetch) from e
            self.feed.fed -= 1
            out = out.as_tensor()
            batch = feed_ndarray(out, torch.empty(out.shape(), dtype=dali_dtype, device=device), stream)
            images = batch.to(out_dtype).permute(0, 3, 1, 2)  # NCHW view of NHWC: channels_last
            yield images, labels[first: first + len(images)]

    def batches(self):
        num = self.feed.num_batches
        return Batches(self.iterate, num, self.spec.batch_size, num * self.spec.batch_size if self.train
                       else self.feed.shard_size, close=self.close)


def build(data_dir, spec):
    if spec.dali_prefetch < 1:
        raise SettingError(f"DALI_PREFETCH_QUEUE {spec.dali_prefetch}: must be a whole number >= 1")
    train_samples, val_samples, info = read_dataset(data_dir, spec, check_decodes)
    train = _Loader(spec, train_samples, train=True).batches()
    val = _Loader(spec, val_samples, train=False).batches()
    return train, val, info
