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


@pytest.fixture(scope="module")
def first_session(tmp_path_factory):
    """bench/first_gpu_session.sh with SMOKE=1, run once: its gpu_check (--cpu-smoke, projecting config_CPU.sh
    through epoch 3) and its 2-rank gloo DDP check are the runs the tests below read (each took a minute alone)."""
    import os
    import subprocess

    out = tmp_path_factory.mktemp("first_session") / "out"
    proc = subprocess.run(["bash", str(REPO / "bench" / "first_gpu_session.sh"), str(out)],
                          env={**os.environ, "SMOKE": "1", "PYTHON": sys.executable}, capture_output=True, text=True,
                          timeout=2400)
    return proc, out


@pytest.mark.skipif(torch.cuda.is_available(), reason="with CUDA the parts run instead of skipping")
def test_gpu_check_cpu_smoke_skips_cuda_parts(first_session):
    proc, out = first_session
    stdout = (out / "gpu_check.log").read_text()
    assert "PASS: gpu_check" in proc.stdout, stdout[-3000:]
    for part in ("amp_fp16", "amp_bf16", "channels_last", "ffcv_pipeline", "train_compliance"):
        assert f"SKIP: {part}: no CUDA device" in stdout
    assert "SKIP: throughput_compiled:" in stdout and "FAIL" not in stdout
    for row in ("plain resnet50", "plain-cl resnet50", "mild resnet50", "mild / plain", "mild / plain-cl"):
        assert re.search(rf"^{row} +\d", stdout, flags=re.M), row
    report = json.loads((out / "gpu_check.json").read_text())
    rows = report["throughput"]["rows"]
    assert {r["model"] for r in rows} == {"plain", "plain-cl", "mild"} and all(r["images_per_s"] > 0 for r in rows)
    assert {p["status"] for p in report["parts"].values()} == {"SKIP", "PASS"}
    assert report["parts"]["projection"]["status"] == "PASS"
    # config_CPU.sh's projection, read back from the printed table: every epoch through the one asked for
    from bench.projection import parse_table

    printed = parse_table(stdout)
    assert [r["epoch"] for r in printed["rows"]] == [1, 2, 3] and printed["through_epoch"] == 3
    assert all(r["minutes"] > 0 and r["bound"] in ("model", "loader") for r in printed["rows"])
    assert all((r["bound"] == "model") == (r["model_img_s"] <= r["loader_img_s"]) for r in printed["rows"])
    assert all(r["peer_minutes"] > 0 for r in printed["rows"])      # MosaicML's epochs beside ours
    assert printed["total_minutes"] > sum(r["minutes"] for r in printed["rows"]) - 0.01  # + start-up
    assert report["projection"]["total_minutes"] == pytest.approx(printed["total_minutes"], abs=0.01)
    assert report["metadata"]["git_commit"] and report["metadata"]["versions"]["torch"] == torch.__version__.split("+")[0]


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
def test_gpu_check_ddp_mode_runs_two_gloo_ranks(first_session):
    proc, out = first_session
    stdout = (out / "ddp.log").read_text()
    assert "PASS: ddp" in proc.stdout, stdout[-3000:]
    report = json.loads((out / "ddp.json").read_text())
    assert report["world_size"] == 2 and report["ffcv_batches"] == report["ffcv_batches_per_epoch"] > 0
    assert {r["cudnn_benchmark"] for r in report["rows"]} == {False, True}
    assert "PASS: ddp: 2 ranks stepped together" in stdout
    assert "SKIP: gpu0_contexts: no CUDA device" in stdout and "terminate called" not in stdout
    assert report["metadata"]["machine"]["cores"] >= 1


def test_gpu0_check_fails_when_it_cannot_check(monkeypatch):
    """Without pynvml the stray-context check cannot see GPU 0: it must say FAIL, never PASS."""
    sys.path.insert(0, str(REPO / "bench"))
    import gpu_ddp

    monkeypatch.setitem(sys.modules, "pynvml", None)     # as on a machine without nvidia-ml-py
    status, detail = gpu_ddp.gpu0_contexts([101, 102])
    assert status == "FAIL" and detail.startswith("cannot check: pynvml is not installed")


def test_mosaicml_epoch_times_come_from_their_logs():
    from bench.projection import peer_times

    peer = peer_times()
    assert peer["logs"] == 5 and peer["success_epoch"] == 27
    assert 150 < peer["epoch_s"][1] < 170          # the first epoch carries their start-up
    assert all(38 < peer["epoch_s"][e] < 42 for e in range(2, 15))   # 88-128 px: flat, the loader's pace
    assert peer["epoch_s"][27] > 60 and set(peer["eval_s"]) == set(range(3, 28, 3))


def test_projection_names_the_slower_side_and_adds_evaluations():
    from bench.projection import interpolate, project
    from resnet.recipe import MILD

    sides = [MILD.resolution_px(e) for e in range(27)]
    model = {px: 20000 * (88 / px) ** 2 for px in sides}          # the model slows with the area
    result = project(MILD, images_per_rank=160_000, eval_images_per_rank=6250, model_rate=model,
                     loader_rate=5000.0, eval_rate=12500.0, through_epoch=27, startup_s=30.0)
    rows = result["rows"]
    assert rows[0]["bound"] == "loader" and rows[-1]["bound"] == "model"        # 88 px: 20k > 5k img/s
    assert rows[0]["minutes"] == pytest.approx(160_000 / 5000 / 60, abs=1e-3)
    assert rows[2]["eval_s"] == pytest.approx(0.5) and rows[3]["eval_s"] == 0
    assert result["total_minutes"] == pytest.approx(0.5 + sum(r["minutes"] for r in rows), abs=1e-2)
    rates = interpolate({88: 4000.0, 176: 1000.0}, [88, 128, 176])
    assert rates[88] == 4000 and rates[176] == 1000 and 1000 < rates[128] < 4000


def test_run_metadata_names_the_commit_versions_and_machine():
    import subprocess

    from bench.common import run_metadata

    meta = run_metadata()
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    assert meta["git_commit"] == head and isinstance(meta["git_dirty"], bool)
    assert meta["versions"]["torch"] == torch.__version__.split("+")[0] or meta["versions"]["torch"] == torch.__version__
    assert set(meta["versions"]) >= {"torch", "torchvision", "ffcv", "dali", "numpy"}
    assert meta["machine"]["cores"] >= 1 and meta["machine"]["gpus"] == ([] if not torch.cuda.is_available() else
                                                                          meta["machine"]["gpus"])
    assert meta["date"].endswith("+00:00")


def test_loader_ranks_measures_every_rank_loading_at_once(ffcv_data, tmp_path):
    """bench/loader_ranks.py (the DGX loader measurement) on 2 CPU ranks: one line with a rate per rank."""
    proc = sh(sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
              REPO / "bench" / "loader_ranks.py", "--data", ffcv_data, "--workers", "1", "--batch-size", "16",
              "--crop", "32", "--eval-crop", "32", "--eval-resize", "36", "--batches", "6", "--warmup", "2",
              "--device", "cpu", "--out", tmp_path / "ranks.json", timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(line for line in proc.stdout.splitlines() if line.startswith("crop 32 px"))
    rates = re.search(r"per rank (\d+) (\d+) img/s; node (\d+) img/s", line)
    assert rates and int(rates[3]) >= int(rates[1]) > 0, line
    report = json.loads((tmp_path / "ranks.json").read_text())
    assert report["ranks"] == 2 and report["train_first_batch_s"] > 0 and report["val_first_batch_s"] > 0
    assert report["metadata"]["git_commit"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="with CUDA the script measures the GPU")
def test_first_gpu_session_refuses_to_run_without_cuda(tmp_path):
    """Without CUDA (and without SMOKE=1) it stops at once with one error line and measures nothing."""
    import os

    proc = sh("bash", REPO / "bench" / "first_gpu_session.sh", tmp_path / "out",
              env={**os.environ, "SMOKE": "0", "PYTHON": sys.executable})
    assert proc.returncode == 1 and "error: no CUDA device visible" in proc.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="with CUDA the script measures the GPU")
def test_first_gpu_session_smoke_runs_every_step_on_the_cpu(first_session):
    """SMOKE=1: every step runs on the CPU, every file lands under OUT, and what needs CUDA says NOT MEASURED."""
    proc, out = first_session
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for step in ("gpu_check", "ddp", "loader_ffcv", "loader_dali"):
        assert f"PASS: {step}" in proc.stdout and (out / f"{step}.json").is_file()
    summary = (out / "summary.txt").read_text()
    assert "NOT MEASURED: amp_fp16: no CUDA device" in summary and "NOT MEASURED: gpu0_contexts" in summary
    assert re.search(r"^projection: [\d.]+ min through epoch 3 \(config_CPU.sh\)", summary, flags=re.M)
    assert re.search(r"^loader dali: \d+ img/s per rank", summary, flags=re.M)
