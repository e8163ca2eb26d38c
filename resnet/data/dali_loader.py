"""The DALI backend (LOADER=dali): the ImageNet folders read directly by NVIDIA DALI, decoded on the GPU (nvJPEG,
`device="mixed"`, with `spec.hw_decoder_load` of the JPEGs sent to the A100/H100 hardware decoder) or, without
one, by the same pipeline with CPU operators. See resnet/data/loaders.py for the contract.

Order: an external_source feeds the paths `shard_order` gives for (seed, epoch, rank), batch by batch, and DALI's
threads read the files (fn.io.file.read); a new pipeline per epoch, seeded from (seed, epoch, rank), draws the crops
and flips, so an epoch's batches depend on (seed, epoch) alone and a resumed run (set_epoch(e), then skipping the
batches already done) replays them. The source ends with the epoch: DALI decodes nothing past it, and the val
shard's last batch is simply shorter (no padding).
Train: decoders.image_random_crop (RandomResizedCrop fused into the decode: only the crop is decoded), resized to
spec.train_side(epoch), flipped on a coin toss, normalised. Val: the whole image, its short side resized to
eval_resize_px, the centre eval_crop_px, normalised.

Images: what DALI's decoder (nvImageCodec) reads on the CPU: JPEG, PNG, BMP, TIFF, PNM (ppm/pgm), WebP and
JPEG 2000, grayscale or colour (converted to RGB); on the GPU, JPEGs are decoded there and the rest on the CPU.
16-bit images get DALI's own 8-bit conversion, not necessarily `folders.load_rgb`'s (prepare and torchvision):
convert such a set to 8-bit JPEG first if the two must agree. Bad files: the first image of each split is decoded before training; a file that fails
mid-run ends the epoch with one DataError naming it (found by decoding the failed batch's files one by one).
"""
import os

from resnet.data.folders import read_dataset
from resnet.data.loaders import IMAGENET_MEAN, IMAGENET_STD, Backend, Batches, shard_order
from resnet.errors import DataError

BACKEND = Backend(reads="folders", needs="nvidia.dali", library="NVIDIA DALI",
                  install="pip install nvidia-dali-cuda120 (CPU machines and CUDA 12), or use the NGC PyTorch "
                          "container, which ships it",
                  workers="DALI CPU threads per rank (file reading; decoding too without a GPU)", min_workers=1,
                  decode_to_side=True)
PREFETCH = 2  # batches prepared ahead (the submitted system's FFCV setting)


def _pipeline(spec, files, *, train, epoch):
    """A built DALI pipeline that yields `files` in order, in batches of spec.batch_size (the last may be
    shorter), as NHWC images of spec's train or val shape."""
    import numpy as np
    import torch
    from nvidia.dali import Pipeline, fn, types

    device = spec.torch_device
    cuda = device.type == "cuda"
    seed = int(np.random.SeedSequence([spec.seed, epoch, spec.rank, train]).generate_state(1)[0] >> 1)
    pipe = Pipeline(batch_size=spec.batch_size, num_threads=spec.workers, device_id=device.index if cuda else None,
                    seed=seed, prefetch_queue_depth=PREFETCH)
    decode = dict(device="mixed", hw_decoder_load=spec.hw_decoder_load) if cuda else dict(device="cpu")
    half = spec.dtype(train) == torch.float16  # DALI has no bfloat16: fp32 out, converted by torch
    normalise = dict(dtype=types.FLOAT16 if half else types.FLOAT, output_layout="HWC",
                     mean=[m * 255 for m in IMAGENET_MEAN], std=[s * 255 for s in IMAGENET_STD])
    paths = ([np.frombuffer(os.fsencode(f), np.uint8) for f in files[i: i + spec.batch_size]]
             for i in range(0, len(files), spec.batch_size))
    with pipe:
        encoded = fn.io.file.read(fn.external_source(source=paths, dtype=types.UINT8))
        if train:
            images = fn.decoders.image_random_crop(encoded, output_type=types.RGB, random_area=(spec.crop_scale_min, 1),
                                                   random_aspect_ratio=(3 / 4, 4 / 3), **decode)
            side = spec.train_side(epoch)
            images = fn.resize(images, size=(side, side))
            images = fn.crop_mirror_normalize(images, mirror=fn.random.coin_flip(probability=0.5), **normalise)
        else:
            images = fn.decoders.image(encoded, output_type=types.RGB, **decode)
            images = fn.resize(images, resize_shorter=spec.eval_resize_px)
            images = fn.crop_mirror_normalize(images, crop=(spec.eval_crop_px,) * 2, **normalise)
        pipe.set_outputs(images)
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
    pipe = Pipeline(batch_size=1, num_threads=1, device_id=None, prefetch_queue_depth=1)
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
                                                      "which was used", "encountered", "img = ", "images = "))]
    return (useful or lines or ["unknown error"])[-1]


def check_decodes(path):
    problem = decode_problem(path)
    if problem:
        raise DataError(f"{path}: DALI cannot decode this image ({problem}); replace or delete the file")


def _failed_batch(error, files, first, size):
    """The DataError for a pipeline failure in the batch starting at files[first]: the first file (of that batch
    and the ones DALI had prefetched) that does not decode alone, else the batch's files and DALI's reason."""
    for path in files[first: first + (PREFETCH + 1) * size]:
        problem = decode_problem(path)
        if problem:
            return DataError(f"{path}: DALI cannot decode this image ({problem}); replace or delete the file")
    batch = files[first: first + size]
    return DataError(f"{batch[0]} (and {len(batch) - 1} more files of its batch): DALI failed on this batch "
                     f"({_reason(error)}); check those files, or use LOADER=ffcv or torchvision")


def _loader(spec, samples, *, train):
    """Batches over `samples` ((path, label) pairs): train (shuffled, drop_last, random crops) or val."""
    import torch
    from nvidia.dali.plugin.pytorch import feed_ndarray

    device, out_dtype, size = spec.torch_device, spec.dtype(train), spec.batch_size
    n = len(samples)
    shard = len(shard_order(n, spec.rank, spec.world_size, spec.seed, 0, train))
    num_batches = shard // size if train else -(-shard // size)
    live = []  # the pipeline of the epoch being read: close() frees it (and its threads)

    def release():
        while live:
            live.pop()

    def iterate(epoch):
        order = shard_order(n, spec.rank, spec.world_size, spec.seed, epoch, train)[: num_batches * size]
        release()
        if not len(order):
            return
        files = [samples[i][0] for i in order]
        labels = torch.tensor([samples[i][1] for i in order], dtype=torch.int64)
        live.append(_pipeline(spec, files, train=train, epoch=epoch))
        stream = torch.cuda.current_stream(device) if device.type == "cuda" else None
        dali_dtype = torch.float16 if out_dtype == torch.float16 else torch.float32
        try:
            for first in range(0, len(files), size):
                try:
                    (out,) = live[0].run(stream)  # on a GPU: bound to torch's stream, no host wait
                except RuntimeError as e:
                    release()
                    raise _failed_batch(e, files, first, size) from None
                out = out.as_tensor()
                batch = feed_ndarray(out, torch.empty(out.shape(), dtype=dali_dtype, device=device), stream)
                images = batch.to(out_dtype).permute(0, 3, 1, 2)  # NCHW view of NHWC: channels_last
                yield images, labels[first: first + len(images)].to(device, non_blocking=True)
        finally:
            release()

    return Batches(iterate, num_batches, size, num_batches * size if train else shard, close=release)


def build(data_dir, spec):
    train_samples, val_samples, info = read_dataset(data_dir, spec, check_decodes)
    train = _loader(spec, train_samples, train=True)
    val = _loader(spec, val_samples, train=False)
    return train, val, info
