"""The DALI backend on the CPU (the real DALI pipeline with CPU operators): batch format, class indices against
prepare's and torchvision's, the order and crops per (seed, epoch), resume, both pipelines built once, sharding,
exact evaluation for world sizes 1-3, bad data named up front and mid-run, other DALI failures not blamed on the
data, the install and version hints, one folder scan for 2 gloo ranks, and training runs (1 process, 2 gloo ranks)
whose logs pass the checker."""
import collections
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from resnet.data import beton, dali_loader
from resnet.data.loaders import IMAGENET_MEAN, IMAGENET_STD, LoaderSpec, make_loaders, shard_order
from resnet.data.synth import make_synthetic
from resnet.errors import DataError, SettingError
from tests.conftest import REPO, cli, events, run_stop
from tests.test_train import TINY

DALI = pytest.importorskip("nvidia.dali")


CLASSES = 19  # one train and one val image per class: a label names its sample; 19 divides by neither 2 nor 3
CROP, RESIZE = 32, 40


def spec(**run):
    base = dict(batch_size=3, train_crop_px=CROP, crop_scale_min=0.08, eval_crop_px=CROP, eval_resize_px=RESIZE,
                workers=2, seed=11)
    return LoaderSpec(**{**base, **run})


def dali(data, **run):
    return make_loaders(data, spec(**run), loader="dali")


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    out = tmp_path_factory.mktemp("dali") / "tree"
    make_synthetic(out, classes=CLASSES, train_per_class=1, val_per_class=1, size_px=48, seed=5, progress=False)
    return out


def epoch(loader, e=None):
    """All batches of one epoch, copied."""
    if e is not None:
        loader.set_epoch(e)
    return [(x.clone(), y.clone()) for x, y in loader]


def labels(batches):
    return [int(v) for _, y in batches for v in y]


def test_batch_format(tree):
    for train_precision, dtype in (("fp32", torch.float32), ("fp16", torch.float16), ("bf16", torch.bfloat16)):
        train, val, info = dali(tree, train_precision=train_precision)
        assert info.num_classes == info.train_samples == info.eval_samples == CLASSES
        assert (len(train), train.num_samples, len(val), val.num_samples) == (6, 18, 7, 19)
        for batches, want_dtype, sizes in (([*train], dtype, [3] * 6), ([*val], torch.float32, [3] * 6 + [1])):
            assert [len(y) for _, y in batches] == sizes
            # an epoch's labels are slices of one tensor, moved to the device once per epoch
            assert len({y.untyped_storage().data_ptr() for _, y in batches}) == 1
            for x, y in batches:
                assert x.shape == (len(y), 3, CROP, CROP) and x.dtype == want_dtype and x.device.type == "cpu"
                assert x.is_contiguous(memory_format=torch.channels_last)
                assert y.dtype == torch.int64 and y.shape == (len(y),)
                pixels = (x.float() * torch.tensor(IMAGENET_STD).view(3, 1, 1) * 255
                          + torch.tensor(IMAGENET_MEAN).view(3, 1, 1) * 255)
                assert pixels.min() > -1.5 and pixels.max() < 256.5 and x.float().std() > 0.3
        train.close(), val.close()


def test_classes_and_val_images_match_prepare_and_torchvision(synth_tree, ffcv_data):
    """The same class index for every image as prepare's manifest and the torchvision backend; the same val images
    (up to the resize filters) in the same order."""
    run = dict(batch_size=5, train_crop_px=32, crop_scale_min=0.08, eval_crop_px=32, eval_resize_px=36, workers=1)
    loaded = {kind: make_loaders(synth_tree, LoaderSpec(**run), loader=kind) for kind in ("dali", "torchvision")}
    classes = beton.read_manifest(ffcv_data)["classes"]
    assert list(loaded["dali"][2].classes) == list(loaded["torchvision"][2].classes) == list(classes)
    assert loaded["dali"][2].digest == loaded["torchvision"][2].digest
    (ours, theirs) = (epoch(loaded[kind][1]) for kind in ("dali", "torchvision"))
    assert labels(ours) == labels(theirs) == sorted(labels(ours)) and len(set(labels(ours))) == 4
    for (x, _), (y, _) in zip(ours, theirs):
        assert (x - y).abs().mean() < 0.15       # normalised units: ~9 of 255 grey levels, resize filters differ
    for kind in loaded:
        loaded[kind][0].close(), loaded[kind][1].close()


def test_order_and_crops_depend_on_seed_and_epoch_only(tree):
    train, _, _ = dali(tree)
    first = [epoch(train) for _ in range(3)]
    again, _, _ = dali(tree)                          # another process-like start: a fresh loader
    for e in (0, 1, 2):
        replay = epoch(again, e)
        assert labels(replay) == labels(first[e])
        assert all(torch.equal(x, y) for (x, _), (y, _) in zip(replay, first[e]))
    assert labels(first[0]) != labels(first[1])
    # the same image is cropped differently in another epoch
    crops = [{int(v): x[i] for x, y in batches for i, v in enumerate(y)} for batches in first[:2]]
    common = set(crops[0]) & set(crops[1])
    assert common and all(not torch.equal(crops[0][k], crops[1][k]) for k in common)
    # resume: set_epoch(e) after later epochs were read replays epoch e exactly
    assert all(torch.equal(x, y) for (x, _), (y, _) in zip(epoch(train, 1), first[1]))
    other, _, _ = dali(tree, seed=12)
    assert labels(epoch(other)) != labels(first[0])
    for loader in (train, again, other):
        loader.close()


def test_both_pipelines_are_built_once_and_any_history_replays_an_epoch(tree, monkeypatch):
    """make_loaders (before run_start) builds the train and val pipelines; epochs, evaluations, a resume's
    set_epoch and a half-read epoch build no other. An epoch's batches are the same whatever was read before
    and however deep the prefetch queue (1 or 3): crops depend on (seed, epoch, rank, position) alone."""
    built = []
    real = dali_loader._pipeline
    monkeypatch.setattr(dali_loader, "_pipeline", lambda *a, **k: built.append(k["train"]) or real(*a, **k))
    train, val, _ = dali(tree, dali_prefetch=3, train_sides=(24, 32, 32))
    assert sorted(built) == [False, True]
    first = [epoch(train) for _ in range(3)]
    evaluated = [labels(epoch(val)) for _ in range(2)]
    assert evaluated[0] == evaluated[1] == list(range(CLASSES))
    train.set_epoch(0)
    for _, _ in zip(range(2), train):      # an epoch left after 2 of its 6 batches
        pass
    again = epoch(train, 1)
    assert [labels(again), [x.shape for x, _ in again]] == [labels(first[1]), [x.shape for x, _ in first[1]]]
    assert all(torch.equal(x, y) for (x, _), (y, _) in zip(again, first[1]))
    assert all(torch.equal(x, y) for (x, _), (y, _) in zip(epoch(train), first[2]))   # epoch 2 follows
    assert sorted(built) == [False, True]
    shallow, _, _ = dali(tree, dali_prefetch=1, train_sides=(24, 32, 32))
    for e in (2, 0):
        assert all(torch.equal(x, y) for (x, _), (y, _) in zip(epoch(shallow, e), first[e]))
    for loader in (train, val, shallow):
        loader.close()


def test_decode_to_side(tree):
    train, _, _ = dali(tree, train_sides=(24, 32))
    assert [tuple(x.shape[2:]) for x, _ in epoch(train)] == [(24, 24)] * 6
    assert [tuple(x.shape[2:]) for x, _ in epoch(train)] == [(32, 32)] * 6
    assert [tuple(x.shape[2:]) for x, _ in epoch(train, 5)] == [(32, 32)] * 6   # the last side stays
    train.close()


@pytest.mark.parametrize("world", [2, 3])
def test_train_shards_are_equal_disjoint_and_in_shard_order(tree, world):
    read = []
    for rank in range(world):
        train, _, _ = dali(tree, rank=rank, world_size=world)
        got = labels(epoch(train, 4))
        assert got == shard_order(CLASSES, rank, world, 11, 4, True)[: len(train) * 3].tolist()
        read.append(got)
        train.close()
    assert len({len(r) for r in read}) == 1
    union = [v for r in read for v in r]
    assert len(union) == len(set(union)) == CLASSES - CLASSES % world   # 18: shards of 9 or 6 are whole batches


def test_evaluation_reads_every_image_once_for_any_world_size(tree):
    def val_images(world):
        seen = collections.Counter()
        for rank in range(world):
            _, val, _ = dali(tree, batch_size=4, rank=rank, world_size=world)
            batches = epoch(val)
            assert sum(len(y) for _, y in batches) == val.num_samples == len(range(rank, CLASSES, world))
            seen.update((int(v), x[i].numpy().tobytes()) for x, y in batches for i, v in enumerate(y))
            val.close()
        return seen

    alone = val_images(1)
    assert sorted(k for k, _ in alone) == list(range(CLASSES)) and set(alone.values()) == {1}
    for world in (2, 3):
        assert val_images(world) == alone


def _tree_copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def _truncate(path):
    path.write_bytes(path.read_bytes()[:200])


def _first(tree, split):
    return sorted((tree / split).glob("*/*"))[0]


@pytest.mark.parametrize("case", ["truncated train", "garbage val", "empty class", "no val"])
def test_bad_data_is_found_when_the_loaders_are_built(tree, tmp_path, case):
    data = _tree_copy(tree, tmp_path / "tree")
    if case == "truncated train":
        named = _first(data, "train")
        _truncate(named)
    elif case == "garbage val":
        named = _first(data, "val")
        named.write_bytes(b"not an image" * 50)
    elif case == "empty class":
        named = data / "train" / "zz_empty"
        named.mkdir()
    else:
        named = data / "val"
        shutil.rmtree(named)
    with pytest.raises(DataError) as e:
        dali(data)
    assert str(named) in str(e.value) and "\n" not in str(e.value)


def test_a_bad_file_mid_run_ends_the_epoch_naming_it(tree, tmp_path):
    data = _tree_copy(tree, tmp_path / "tree")
    bad = sorted((data / "train").glob("*/*"))[7]
    _truncate(bad)
    train, val, _ = dali(data)                       # the first images decode: found only when read
    with pytest.raises(DataError) as e:
        for e_ in range(2):
            epoch(train, e_)
    assert str(e.value).startswith(f"{bad}: DALI cannot decode this image") and "\n" not in str(e.value)
    assert labels(epoch(val)) == list(range(CLASSES))       # the other loader still works
    train.close(), val.close()


def test_a_dali_failure_that_is_not_about_the_files_is_reported_as_itself(tree):
    """A resize to an 8,000,000 px side cannot be allocated (192 TB an image, past any address space): a real
    failure of DALI's resize operator. It is raised as a RuntimeError with DALI's reason, without decoding the
    batch's files one by one and without a DataError blaming them; the loader still works after it."""
    train, val, _ = dali(tree, train_sides=(8_000_000, CROP))
    with pytest.raises(RuntimeError) as e:
        epoch(train)
    assert not isinstance(e.value, DataError)
    assert str(e.value).startswith("LOADER=dali: the DALI pipeline failed (std::bad_alloc)"), str(e.value)
    assert "\n" not in str(e.value)
    assert [tuple(x.shape[2:]) for x, _ in epoch(train, 1)] == [(CROP, CROP)] * 6    # a new pipeline, epoch 1
    train.close(), val.close()


def test_the_gpu_decoder_gets_the_h100_settings_under_dali_s_own_argument_names():
    """What a CUDA spec asks of nvJPEG (no GPU here to build it): the hardware share, NVIDIA's 256 MB paddings in
    bytes and the preallocation hints, each an argument both DALI decoders take; on the CPU none of them."""
    from nvidia.dali import backend

    cuda = spec(device="cuda:0", hw_decoder_load=0.99, nvjpeg_padding_mb=256, preallocate_px=(5980, 6430))
    args = dali_loader._decoding(cuda)
    assert args == dict(device="mixed", hw_decoder_load=0.99, device_memory_padding=256 << 20,
                        host_memory_padding=256 << 20, preallocate_width_hint=5980, preallocate_height_hint=6430)
    for op in ("decoders__Image", "decoders__ImageRandomCrop"):
        assert all(backend.GetSchema(op).HasArgument(name) for name in set(args) - {"device"}), op
    assert dali_loader._decoding(spec(hw_decoder_load=0.99, nvjpeg_padding_mb=256)) == dict(device="cpu")
    assert dali_loader._decoding(spec(device="cuda:1")) == dict(device="mixed", hw_decoder_load=0.65)


def test_an_older_dali_is_refused_in_one_line_naming_both_versions(monkeypatch):
    monkeypatch.setattr(DALI, "__version__", "1.42.0")
    with pytest.raises(SettingError) as e:
        dali_loader.ensure_installed()
    assert str(e.value).startswith("LOADER=dali: NVIDIA DALI 1.42.0 is installed, this loader needs 2.4 or newer")
    monkeypatch.setattr(DALI, "__version__", "2.4.0")
    dali_loader.ensure_installed()


SCAN = """import json, sys
import torch.distributed as dist
from resnet.data import folders
from resnet.errors import DataError
dist.init_process_group("gloo")
scans, real = [], folders.scan_split
folders.scan_split = lambda *a, **k: scans.append(a[1]) or real(*a, **k)
try:
    classes, train, val, _, digest = folders.shared_scan(sys.argv[1])
    out = dict(classes=classes, train=train, val=val, digest=digest)
except DataError as e:
    out = dict(error=str(e))
with open(f"{sys.argv[2]}/rank{dist.get_rank()}.json", "w") as f:
    json.dump(dict(scans=scans, **out), f)
dist.destroy_process_group()
"""


def _two_rank_scan(tmp_path, data):
    script = tmp_path / "scan.py"
    script.write_text(SCAN)
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          str(script), str(data), str(tmp_path)], cwd=REPO, capture_output=True, text=True,
                         timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 0, out.stderr[-3000:]
    return [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]


def test_rank_0_scans_and_digests_the_folders_and_the_other_rank_receives_them(tree, tmp_path):
    from resnet.data.folders import dataset_digest, scan_dataset

    ranks = _two_rank_scan(tmp_path, tree)
    assert [r["scans"] for r in ranks] == [["train", "val"], []]        # one scan, by rank 0
    classes, train, val, _ = scan_dataset(tree)
    for r in ranks:
        assert (r["classes"], r["digest"]) == (classes, dataset_digest(tree, classes, train, val))
        assert [tuple(s) for s in r["train"]] == train and [tuple(s) for s in r["val"]] == val
    data = _tree_copy(tree, tmp_path / "tree")
    shutil.rmtree(data / "val")
    ranks = _two_rank_scan(tmp_path, data)                   # rank 0's DataError on both, no rank left waiting
    assert ranks[0]["error"] == ranks[1]["error"] and str(data / "val") in ranks[1]["error"]


def test_png_and_grayscale_images_are_read(tree, tmp_path):
    from PIL import Image

    data = _tree_copy(tree, tmp_path / "tree")
    for i, path in enumerate(sorted((data / "train").glob("*/*"))[:4]):
        with Image.open(path) as im:
            converted = im.convert("L") if i % 2 else im
            converted.save(path.with_suffix(".png"))
        path.unlink()
    train, val, info = dali(data)
    assert info.train_samples == CLASSES
    assert labels(epoch(train)) == shard_order(CLASSES, 0, 1, 11, 0, True)[:18].tolist()
    train.close(), val.close()


def test_missing_dali_says_how_to_install(synth_tree, tmp_path):
    log = tmp_path / "log.txt"
    code = ("import sys; sys.modules['nvidia.dali'] = None; from resnet.cli import main; "
            "sys.exit(main(sys.argv[1:]))")
    out = subprocess.run([sys.executable, "-c", code, "train", *TINY, "--loader", "dali", "--data", synth_tree,
                          "--log-file", log, "--epochs", "1",
                          "--eval-every-epochs", "1"], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert out.returncode != 0
    errors = [line for line in out.stderr.splitlines() if line.startswith("mlperf-resnet: error:")]
    assert errors == ["mlperf-resnet: error: LOADER=dali: NVIDIA DALI is not installed; pip install "
                      "nvidia-dali-cuda120 (CPU machines and CUDA 12), or use the NGC PyTorch container, which "
                      "ships it"], out.stderr
    assert not log.exists()


def _checked(log):
    out = subprocess.run([sys.executable, "-m", "compliance.check", "--target", "0.1", log], capture_output=True,
                         text=True, cwd=REPO, timeout=300)
    assert out.returncode == 0 and out.stdout.startswith("PASS"), out.stdout + out.stderr


def test_cpu_training_with_dali_passes_the_checker(synth_tree, tmp_path):
    log = tmp_path / "result_0.txt"
    out = cli("train", *TINY, "--loader", "dali", "--data", synth_tree, "--log-file", log, "--epochs", "2",
              "--eval-every-epochs", "1", "--target-accuracy", "0.1", "--seed", "3", check=False)
    assert out.returncode == 0, out.stderr
    assert run_stop(log)["metadata"]["status"] == "success"
    _checked(log)


def test_two_gloo_ranks_train_with_dali_and_exit_cleanly(synth_tree, tmp_path):
    results = tmp_path / "results"
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          "-m", "resnet.train", *map(str, TINY), "--loader", "dali", "--data", str(synth_tree),
                          "--results-dir", str(results), "--epochs", "2", "--eval-every-epochs", "1",
                          "--target-accuracy", "0.1", "--seed", "4"], cwd=REPO, capture_output=True, text=True,
                         timeout=900, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 0, out.stderr[-4000:]
    assert "terminate called" not in out.stderr
    log = results / "result_0.txt"
    assert run_stop(log)["metadata"]["status"] == "success" and "eval_accuracy" in [e["key"] for e in events(log)]
    _checked(log)
