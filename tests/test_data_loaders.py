"""FFCV and torchvision loaders on CPU: batch format, labels, epoch order, 2-rank sharding, parity."""
import numpy as np
import pytest
import torch

from resnet.data.folders import scan_dataset
from resnet.data.loaders import IMAGENET_MEAN, IMAGENET_STD, make_loaders, normalize_nhwc, shard_order
from resnet.data.prepare import prepare
from resnet.data.synth import make_synthetic

pytest.importorskip("ffcv")

CLASSES = 20  # one train and one val image per class: a label names its sample
BATCH, WORLD, CROP, RESIZE = 3, 2, 32, 40
KINDS = ("ffcv", "torchvision")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("loaders")
    make_synthetic(root / "folders", classes=CLASSES, train_per_class=1, val_per_class=1, size_px=48, seed=5,
                   progress=False)
    prepare(root / "folders", root / "ffcv", max_side=48, compress_prob=0.5, workers=2)
    return root


@pytest.fixture(scope="module")
def loaders(data):
    """(kind, rank) -> (train, val, info); rank 1 asks for fp16 train / bf16 val batches."""
    built = {}
    for kind in KINDS:
        for rank, dtypes in ((0, ("fp32", "fp32")), (1, (torch.float16, "bf16"))):
            built[kind, rank] = make_loaders(
                data / ("ffcv" if kind == "ffcv" else "folders"), loader=kind, batch_size=BATCH,
                train_crop_px=CROP, eval_crop_px=CROP, eval_resize_px=RESIZE, workers=1,
                device=torch.device("cpu"), rank=rank, world_size=WORLD, seed=11, dtype_train=dtypes[0],
                dtype_eval=dtypes[1])
    return built


def _epoch(loader, epoch=None):
    """All batches of one epoch, copied (FFCV reuses its buffers)."""
    if epoch is not None:
        loader.set_epoch(epoch)
    return [(x.clone(), y.clone()) for x, y in loader]


@pytest.mark.parametrize("kind", KINDS)
def test_batch_format(loaders, kind):
    for rank, (train_dtype, val_dtype) in ((0, (torch.float32,) * 2), (1, (torch.float16, torch.bfloat16))):
        train, val, info = loaders[kind, rank]
        assert info["num_classes"] == CLASSES and info["train_samples"] == info["eval_samples"] == CLASSES
        assert len(train) == (CLASSES // WORLD) // BATCH == 3 and len(val) == 4
        for batches, dtype, sizes in ((_epoch(train), train_dtype, [3, 3, 3]),
                                      (_epoch(val), val_dtype, [3, 3, 3, 1])):
            assert [len(y) for _, y in batches] == sizes
            for x, y in batches:
                assert x.shape == (len(y), 3, CROP, CROP) and x.dtype == dtype and x.device.type == "cpu"
                assert x.is_contiguous(memory_format=torch.channels_last)
                assert y.dtype == torch.int64 and y.shape == (len(y),)
                pixels = x.float() * torch.tensor(IMAGENET_STD).view(3, 1, 1) * 255 + torch.tensor(
                    IMAGENET_MEAN).view(3, 1, 1) * 255
                assert pixels.min() > -1.5 and pixels.max() < 256.5 and x.float().std() > 0.3


@pytest.mark.parametrize("kind", KINDS)
def test_sharding_and_epoch_order(loaders, kind):
    train0, val0, _ = loaders[kind, 0]
    train1, val1, _ = loaders[kind, 1]
    seen = {}
    for rank, train in ((0, train0), (1, train1)):
        first = torch.cat([y for _, y in _epoch(train, 0)]).tolist()
        assert first == shard_order(CLASSES, rank, WORLD, 11, 0, True)[:9].tolist()
        second = torch.cat([y for _, y in _epoch(train)]).tolist()  # iterating moved on to epoch 1
        assert second == shard_order(CLASSES, rank, WORLD, 11, 1, True)[:9].tolist() and second != first
        assert torch.cat([y for _, y in _epoch(train, 0)]).tolist() == first  # set_epoch replays an epoch
        seen[rank] = first
    assert len(set(seen[0])) == len(set(seen[1])) == 9 and not set(seen[0]) & set(seen[1])

    val_labels = [torch.cat([y for _, y in _epoch(v)]).tolist() for v in (val0, val1)]
    assert val_labels == [list(range(0, CLASSES, 2)), list(range(1, CLASSES, 2))]  # every image once


def test_shard_order_partitions():
    for n, world in ((10, 1), (10, 3), (1001, 8)):
        shards = [shard_order(n, r, world, 3, 2, True) for r in range(world)]
        assert len({len(s) for s in shards}) == 1 and len(shards[0]) == n // world
        joined = np.concatenate(shards)
        assert len(set(joined.tolist())) == len(joined) == n - n % world
        val = np.concatenate([shard_order(n, r, world, 3, 2, False) for r in range(world)])
        assert sorted(val.tolist()) == list(range(n))
    assert (shard_order(100, 0, 2, 3, 0, True) != shard_order(100, 0, 2, 4, 0, True)).any()


def test_val_images_match_between_loaders_and_folders(loaders, data):
    _, val_samples = scan_dataset(data / "folders")[1:3]
    ffcv = _epoch(loaders["ffcv", 0][1])
    tv = _epoch(loaders["torchvision", 0][1])
    for (xf, yf), (xt, yt) in zip(ffcv, tv):
        assert yf.tolist() == yt.tolist() == [val_samples[i][1] for i in yf.tolist()]
        # Same crop of the same image; the resize filters differ (OpenCV area vs PIL bilinear) and half
        # the FFCV images went through one more JPEG round: close, not equal.
        assert (xf - xt).abs().mean() < 0.12, (xf - xt).abs().mean()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_normalize_nhwc(dtype):
    images = torch.randint(0, 256, (2, 5, 7, 3), dtype=torch.uint8)
    expected = (images.double() / 255 - torch.tensor(IMAGENET_MEAN, dtype=torch.double)) / torch.tensor(
        IMAGENET_STD, dtype=torch.double)
    out = normalize_nhwc(images, torch.empty(images.shape, dtype=dtype))
    tolerance = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}[dtype]
    assert out.dtype == dtype and torch.allclose(out.double(), expected, atol=tolerance, rtol=tolerance)


def test_errors_name_the_file_and_the_fix(tmp_path, data):
    with pytest.raises(SystemExit, match=r"^mlperf-resnet train: error: .*manifest.json: cannot read .* run "
                                         r"`mlperf-resnet prepare SRC"):
        make_loaders(tmp_path, loader="ffcv", batch_size=2)
    with pytest.raises(SystemExit, match=r"^mlperf-resnet train: error: .*train: missing split folder"):
        make_loaders(tmp_path, loader="torchvision", batch_size=2)
    with pytest.raises(SystemExit, match=r"train: 20 images give no full batch of 8 per device on 4 devices; "
                                         r"lower the per-device batch size"):
        make_loaders(data / "folders", loader="torchvision", batch_size=8, world_size=4)
    with pytest.raises(SystemExit, match=r"LOADER=dali: unknown loader; use ffcv or torchvision"):
        make_loaders(data / "folders", loader="dali", batch_size=2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("kind", KINDS)
def test_cuda_batches(data, kind):
    train, val, _ = make_loaders(data / ("ffcv" if kind == "ffcv" else "folders"), loader=kind, batch_size=BATCH,
                                 train_crop_px=CROP, eval_crop_px=CROP, eval_resize_px=RESIZE, workers=1,
                                 device=torch.device("cuda"), dtype_train="bf16", dtype_eval="fp32")
    for loader, dtype, count in ((train, torch.bfloat16, CLASSES // BATCH * BATCH), (val, torch.float32, CLASSES)):
        labels = []
        for x, y in loader:
            assert x.is_cuda and y.is_cuda and x.dtype == dtype and y.dtype == torch.int64
            assert x.is_contiguous(memory_format=torch.channels_last)
            labels += y.tolist()
        assert len(labels) == count
