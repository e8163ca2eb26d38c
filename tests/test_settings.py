"""Up-front validation: every bad setting fails with one line naming it and the fix, exits non-zero, and
writes nothing."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from resnet import cli, train

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def world(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for name in ("train.beton", "val.beton"):
        (data / name).write_bytes(b"")
    (data / "train").mkdir()
    (data / "val").mkdir()
    results = tmp_path / "results"
    results.mkdir()
    (results / "result_0.txt").write_text("an earlier run\n")
    return tmp_path, data, results


def snapshot(root: Path) -> dict:
    return {p: p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


BAD_FLAGS = [
    (["--recipe", "spicy"], "--recipe (RECIPE): unknown recipe 'spicy'"),
    (["--arch", "vgg16"], "--arch (ARCH): 'vgg16' is not a torchvision ResNet"),
    (["--epochs", "0"], "--epochs (EPOCHS): must be a positive"),
    (["--epochs", "2", "--eval-every-epochs", "3"], "fewer than the evaluation interval"),
    (["--eval-every-epochs", "-1"], "--eval-every-epochs (EVAL_EVERY_EPOCHS): must be a positive"),
    (["--batch-size", "0"], "--batch-size (BATCHSIZE): must be a positive"),
    (["--batch-size", "8", "--global-batch-size", "16"], "given together with --batch-size"),
    (["--lr", "0"], "--lr (LR): the learning rate must be positive"),
    (["--lr", "-0.1"], "--lr (LR): the learning rate must be positive"),
    (["--warmup-epochs", "40", "--epochs", "28"], "--warmup-epochs (WARMUP_EPOCHS): 40.0 is not within"),
    (["--target-accuracy", "75.9"], "--target-accuracy (TARGET_ACCURACY): 75.9 is not in (0, 1]"),
    (["--target-accuracy", "0"], "is not in (0, 1]"),
    (["--precision", "fp8"], "--precision (PRECISION): unknown precision 'fp8'"),
    (["--precision", "fp16", "--device", "cpu"], "fp16 needs a CUDA GPU"),
    (["--workers", "-2"], "--workers (NUM_WORKERS): must be >= 0"),
    (["--eval-crop-px", "256", "--eval-resize-px", "232"], "--eval-crop-px (EVAL_CROP_PX): 256 is larger"),
    (["--train-crop-px", "0"], "--train-crop-px (TRAIN_CROP_PX): must be a positive"),
    (["--loader", "dali"], "--loader (LOADER): unknown loader 'dali'"),
    (["--status", "available"], "--status (SUBMISSION_STATUS): 'available' is not an MLPerf status"),
    (["--org", " "], "--org (SUBMISSION_ORG): is empty"),
    (["--seed", "-5"], "--seed (SEED): -5 is outside"),
    (["--compile", "yes"], "--compile (COMPILE): 'yes' is not 0 or 1"),
    (["--checkpoint-every-minutes", "5"], "needs a checkpoint folder"),
    (["--checkpoint-dir", "{tmp}/ck", "--checkpoint-every-minutes", "-1"], "must be positive"),
    (["--resume"], "--resume: needs the killed run's checkpoint folder"),
    (["--data", "{tmp}/nowhere"], "--data (DATADIR): {tmp}/nowhere does not exist"),
    (["--data", "{tmp}"], "--data (DATADIR): {tmp}/train.beton is missing"),
    (["--loader", "torchvision", "--data", "{tmp}/results"], "{tmp}/results/train is missing"),
    (["--log-file", "{tmp}/results/result_0.txt"], "already exists and result logs are never overwritten"),
    (["--results-dir", "{tmp}/results/result_0.txt/resnet"],
     "--results-dir (LOGDIR): {tmp}/results/result_0.txt/resnet is not writable"),
]


@pytest.mark.parametrize("flags,message", BAD_FLAGS, ids=[" ".join(f) for f, _ in BAD_FLAGS])
def test_bad_setting_fails_with_one_line_and_writes_nothing(world, flags, message, capsys):
    tmp, data, results = world
    before = snapshot(tmp)
    flags = [f.replace("{tmp}", str(tmp)) for f in flags]
    base = ["--data", str(data), "--results-dir", str(results), "--device", "cpu", "--precision", "fp32"]
    # later flags win in argparse, so the case's own --data/--precision/--device override the base
    with pytest.raises(SystemExit) as exc:
        cli.standalone(train.register, base + flags)
    text = str(exc.value.code)
    assert message.replace("{tmp}", str(tmp)) in text
    assert text.startswith("mlperf-resnet: error: ") and "\n" not in text
    assert exc.value.code != 0
    assert snapshot(tmp) == before            # nothing written, the earlier log untouched


def run_settings(env, *args):
    clean = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "PYTHONPATH")}
    return subprocess.run([sys.executable, "-m", "resnet.settings", *args], env={**clean, **env},
                          capture_output=True, text=True, cwd=REPO)


def test_env_values_of_the_wrong_type_name_the_variable(world):
    _, data, _ = world
    out = run_settings({"DATADIR": str(data), "BATCHSIZE": "lots"}, "flags")
    assert out.returncode == 1
    assert out.stderr.strip() == ("mlperf-resnet: error: BATCHSIZE: 'lots' is not a valid int; "
                                  "fix BATCHSIZE in the config")


def test_env_to_flags_and_world_size_divisibility(world):
    tmp, data, _ = world
    good = run_settings({"DATADIR": str(data), "BATCHSIZE": "32", "EPOCHS": "4", "WARMUP_EPOCHS": "1",
                         "PRECISION": "fp32",
                         "LOGDIR": str(tmp / "logs"), "DGXSYSTEM": "CPU"}, "flags")
    assert good.returncode == 0, good.stderr
    words = good.stdout.split("\n")
    assert words[words.index("--batch-size") + 1] == "32"
    assert words[words.index("--results-dir") + 1] == str(tmp / "logs" / "CPU" / "resnet")
    bad = run_settings({"DATADIR": str(data), "GLOBAL_BATCHSIZE": "100", "DGXNGPU": "8", "PRECISION": "fp32"},
                       "flags")
    assert bad.returncode == 1 and "100 is not divisible by the world size 8" in bad.stderr


def test_config_typos_are_reported_with_a_suggestion(tmp_path):
    cfg = tmp_path / "config_TYPO.sh"
    cfg.write_text("export DGXNGPU=8\nexport BATCHSIZ=256\nexport NCCL_DEBUG=INFO\nexport EPOCHS=28\n")
    out = run_settings({}, "check-config", str(cfg))
    assert out.returncode == 1
    assert out.stderr.strip() == f"mlperf-resnet: error: {cfg}: unknown setting BATCHSIZ; did you mean BATCHSIZE?"
    cfg.write_text("export DGXNGPU=8\nexport BATCHSIZE=256\n")
    assert run_settings({}, "check-config", str(cfg)).returncode == 0
