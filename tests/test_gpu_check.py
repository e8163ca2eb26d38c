"""bench/gpu_check.py: its CUDA parts skip cleanly here, and their code passes on the CPU."""
import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest
import torch
from tests.conftest import fake_data, sh

REPO = Path(__file__).resolve().parents[1]


def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "bench" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(torch.cuda.is_available(), reason="with CUDA the parts run instead of skipping")
def test_gpu_check_cpu_smoke_skips_cuda_parts(tmp_path):
    out = tmp_path / "gpu_check.json"
    proc = sh(sys.executable, REPO / "bench" / "gpu_check.py", "--cpu-smoke", "--out", out, cwd=tmp_path, timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for part in ("amp_fp16", "amp_bf16", "channels_last", "ffcv_pipeline", "train_compliance"):
        assert f"SKIP: {part}: no CUDA device" in proc.stdout
    assert "SKIP: throughput_compiled:" in proc.stdout and "FAIL" not in proc.stdout
    for row in ("plain resnet50", "plain-cl resnet50", "mild resnet50", "mild / plain", "mild / plain-cl"):
        assert re.search(rf"^{row} +\d", proc.stdout, flags=re.M), row
    report = json.loads(out.read_text())
    rows = report["throughput"]["rows"]
    assert {r["model"] for r in rows} == {"plain", "plain-cl", "mild"} and all(r["images_per_s"] > 0 for r in rows)
    assert {p["status"] for p in report["parts"].values()} == {"SKIP"}


def test_gpu_check_model_parts_pass_on_cpu():
    """The CUDA parts' code, run on the CPU in bf16 (the machine's fast path): it must not rot unseen."""
    check = gpu_check()
    cpu = torch.device("cpu")
    assert "loss" in check.check_amp(cpu, "bf16", batch_size=4, side_px=32, steps=2)
    assert "stay channels-last" in check.check_channels_last(cpu, "bf16", batch_size=2, side_px=64)


def test_gpu_check_ffcv_part_passes_on_cpu(ffcv_data):
    check = gpu_check()
    assert "validation images" in check.check_ffcv_pipeline(ffcv_data, torch.device("cpu"), "fp32", crop_px=32)


def test_gpu_check_train_command_is_one_train_accepts(tmp_path):
    """The train_compliance part's command line parses and validates as resnet.train's (without running it:
    test_train.py runs the training itself)."""
    import argparse

    from resnet.settings import add_train_arguments, validate_train_args

    command = gpu_check().train_command(fake_data(tmp_path), tmp_path / "result_0.txt", "bf16", "cpu")
    assert command[1:5] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1"]
    assert command[5:7] == ["-m", "resnet.train"]
    parser = argparse.ArgumentParser(exit_on_error=False)
    add_train_arguments(parser)
    args = parser.parse_args(command[7:])
    validate_train_args(args, world_size=1)
    assert (args.epochs, args.eval_every_epochs, args.target_accuracy) == (2, 2, 0.05)


def test_gpu_check_times_the_trainers_own_step():
    """The mild loop is resnet.train.train_step on a resnet.train.build_training, not a copy of it."""
    check = gpu_check()
    step = check.TrainStep("mild", torch.device("cpu"), "fp32", full_px=32)
    from resnet import train

    assert step._step is train.train_step and isinstance(step.training, train.Training)
    images, labels = step.batch(2, 32)
    loss, logits = step(images, labels, 16)
    assert step.training.step == 1 and logits.shape == (2, 1000) and loss.dim() == 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="with CUDA --ddp uses every GPU")
def test_gpu_check_ddp_mode_runs_two_gloo_ranks(tmp_path):
    out = tmp_path / "ddp.json"
    proc = sh(sys.executable, REPO / "bench" / "gpu_check.py", "--ddp", "--cpu-smoke", "--no-compile", "--out", out,
              cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["world_size"] == 2 and report["ffcv_batches"] == 3
    assert {r["cudnn_benchmark"] for r in report["rows"]} == {False, True}
    assert "PASS: ddp: 2 ranks stepped together" in proc.stdout


def test_loader_ranks_measures_every_rank_loading_at_once(ffcv_data):
    """bench/loader_ranks.py (the DGX loader measurement) on 2 CPU ranks: one line with a rate per rank."""
    proc = sh(sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
              REPO / "bench" / "loader_ranks.py", "--data", ffcv_data, "--workers", "1", "--batch-size", "16",
              "--crop", "32", "--batches", "6", "--warmup", "2", "--device", "cpu", timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(line for line in proc.stdout.splitlines() if line.startswith("crop 32 px"))
    rates = re.search(r"per rank (\d+) (\d+) img/s; node (\d+) img/s", line)
    assert rates and int(rates[3]) >= int(rates[1]) > 0, line
