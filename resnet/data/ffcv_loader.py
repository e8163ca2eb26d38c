"""The FFCV backend (LOADER=ffcv, the submitted loader): the .beton files `prepare` wrote, JPEGs decoded on the CPU
by FFCV's JIT-compiled pipeline in `spec.workers` threads per rank. See resnet/data/loaders.py for the contract.

Train: RandomResizedCropRGBImageDecoder (only the crop is decoded) -> flip -> normalise. Val: FFCV's centre crop
of eval_crop_px at ratio eval_crop_px / eval_resize_px (the resize-then-crop equivalent). Normalisation runs on
the device as one torch op, except on the CPU for float32/float16, where FFCV's NormalizeImage (a lookup table
fused into the decoding stage) made the loader ~40% faster; it needs cupy on CUDA and has no bfloat16.
"""
from pathlib import Path

from resnet.data import beton
from resnet.data.loaders import IMAGENET_MEAN, IMAGENET_STD, Backend, Batches, DataInfo, check_train_size
from resnet.errors import DataError

BACKEND = Backend(reads="beton", needs="ffcv", library="FFCV",
                  install="pip install -e '.[ffcv]' (ffcv==1.0.2, numba, OpenCV; README: Data)",
                  workers="FFCV decoding threads per rank", min_workers=1, decode_to_side=False)

BATCHES_AHEAD = 2  # batches prepared ahead (the submitted system's setting)


def build(data_dir, spec):
    import hashlib

    import numpy as np
    import torch

    from resnet.data.ffcv_patches import Normalize, RankLoader, ShardOrder
    from ffcv.fields.basics import IntDecoder
    from ffcv.fields.rgb_image import CenterCropRGBImageDecoder, RandomResizedCropRGBImageDecoder
    from ffcv.transforms import NormalizeImage, RandomHorizontalFlip, Squeeze, ToDevice, ToTensor, ToTorchImage

    data_dir, device = Path(data_dir), spec.torch_device
    manifest = beton.read_manifest(data_dir)
    check_train_size(beton.split_path(data_dir, manifest, "train"), manifest["train_samples"], spec)
    on_device = [ToDevice(device, non_blocking=True)] if device.type != "cpu" else []
    digests = {}

    def loader(split, decoder, dtype, shuffle):  # train: shuffle and flip; val: neither
        path = beton.split_path(data_dir, manifest, split)
        digests[split] = beton.check_beton(path, manifest["train_samples" if split == "train" else "eval_samples"],
                                           manifest["num_classes"], manifest.get("digest", {}).get(split))
        image = [decoder, *([RandomHorizontalFlip()] if shuffle else [])]
        if device.type == "cpu" and dtype in (torch.float32, torch.float16):  # FFCV's JIT op: faster here
            image += [NormalizeImage(np.array(IMAGENET_MEAN) * 255, np.array(IMAGENET_STD) * 255,
                                     np.dtype(str(dtype).split(".")[1])), ToTensor()]
        else:
            image += [ToTensor(), *on_device, Normalize(dtype)]
        image.append(ToTorchImage(channels_last=True))
        label = [IntDecoder(), ToTensor(), Squeeze(1), *on_device]
        try:
            ffcv = RankLoader(str(path), batch_size=spec.batch_size, num_workers=spec.workers, os_cache=True,
                              order=ShardOrder(spec.rank, spec.world_size, spec.seed, shuffle), seed=spec.seed,
                              drop_last=shuffle, batches_ahead=BATCHES_AHEAD, pipelines={"image": image, "label": label},
                              cuda_device=device if device.type == "cuda" else None)
        except (OSError, ValueError, AssertionError) as e:  # what check_beton did not foresee
            raise DataError(f"{path}: FFCV cannot open it ({type(e).__name__}: {e}); run `mlperf-resnet prepare` "
                            f"again".replace("\n", " ")) from None

        def iterate(epoch):
            ffcv.next_epoch = epoch
            return iter(ffcv)

        return Batches(iterate, len(ffcv), spec.batch_size, len(ffcv.first_traversal_order), close=ffcv.close_epoch)

    crop = RandomResizedCropRGBImageDecoder((spec.train_crop_px,) * 2, scale=(spec.crop_scale_min, 1.0),
                                            ratio=(3 / 4, 4 / 3))
    train = loader("train", crop, spec.dtype(train=True), shuffle=True)
    centre = CenterCropRGBImageDecoder((spec.eval_crop_px,) * 2, ratio=spec.eval_crop_px / spec.eval_resize_px)
    val = loader("val", centre, spec.dtype(train=False), shuffle=False)
    digest = hashlib.sha256(f"{manifest['classes']}|{digests['train']}|{digests['val']}".encode()).hexdigest()[:32]
    return train, val, DataInfo(tuple(manifest["classes"]), manifest["train_samples"], manifest["eval_samples"],
                                digest)
