"""bench/: the first GPU session's driver end to end on the CPU (SMOKE=1, run once for several tests), the step
and loader benchmarks, the projection."""
import json
import os
import re
import sys

import pytest
import torch

from tests.conftest import REPO, sh

NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="with CUDA the session measures the GPU")


@pytest.fixture(scope="module")
def first_session(tmp_path_factory):
    """`SMOKE=1 python -m bench.first_session OUT`, run once: every part at toy sizes on the CPU."""
    out = tmp_path_factory.mktemp("first_session") / "out"
    proc = sh(sys.executable, "-m", "bench.first_session", out, env={**os.environ, "SMOKE": "1"}, timeout=1500)
    return proc, out


@NO_CUDA
def test_first_session_smoke_runs_every_part_on_the_cpu(first_session):
    """Budgets printed before the first part; every part done or skipped (cuda_tests: no CUDA device); at most
    8 files; the train run's log passes the official checker; zero graphs compiled after the warm-up."""
    proc, out = first_session
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert re.search(r"budgets: data \d+ s, .* train \d+ s; \d+ s in all", lines[0])
    assert sorted(p.name for p in out.iterdir()) == ["result_0.txt", "session.json", "session.log", "session.png"]
    assert (out / "session.log").read_text().splitlines() == lines
    assert "SKIPPED: cuda_tests (0 s): no CUDA device" in lines
    session = json.loads((out / "session.json").read_text())
    parts = session["parts"]
    assert {p["status"] for p in parts.values()} == {"done", "skipped"}
    eager = parts["eager"]["rows"]
    assert {(r["loop"], r["px"]) for r in eager} == {("ours", 16), ("ours", 32), ("plain", 16), ("plain", 32)}
    assert all(r["img_s"] > 0 and not r["compiled"] for r in eager)
    compiled = {r.get("part"): r for r in parts["compiled"]["rows"]}
    assert compiled["warm_up"]["graphs"] >= 2 and compiled["recompiles_after_warm_up"]["graphs"] == 0
    assert {r["loop"] for r in parts["compiled"]["rows"] if r.get("compiled")} == {"ours", "plain"}
    assert parts["ema_eval"]["rows"][0]["ema_update_s"] > 0 and parts["ema_eval"]["rows"][0]["eval_img_s"] > 0
    loaders = {r["loader"]: r for r in parts["loader"]["rows"]}
    assert loaders["torchvision"]["img_s"] > 0 and loaders["torchvision"]["val_first_batch_s"] > 0
    assert 0 < loaders["torchvision"]["epoch_start_s"]     # 2 epochs timed: a later epoch's first batch
    assert parts["gpu_decode"]["rows"][0]["shape"][1:] in ([375, 500], [500, 375]) or \
        max(parts["gpu_decode"]["rows"][0]["shape"][1:]) == 500
    assert parts["train"]["rows"][0]["checker"] == "PASS" and (out / "result_0.txt").stat().st_size > 1000
    assert session["metadata"]["git_commit"] and session["metadata"]["versions"]["torch"]
    assert (out / "session.png").stat().st_size > 10_000


@NO_CUDA
def test_first_session_projects_eight_of_the_device_it_measured(first_session):
    """The projection's title names the device and 8 of it; what it assumed is printed; the trainer's steps per
    epoch and EMA cadence are ImageNet's; MosaicML's A100 minutes are labelled as another model's."""
    proc, out = first_session
    text = proc.stdout
    assert re.search(r"^projection: 8x CPU \(\d+ cores\), batch 256 each", text, flags=re.M)
    assert "assumed: all-reduce: 102 MB of fp32 gradients a step at 400 GB/s" in text
    assert "625 steps an epoch, the EMA every 20" in text and "loader start paid every epoch" in text
    rows = re.findall(r"^ +(\d+) +(\d+) +([\d.]+) +([\d.]+) +(model|loader) +[\d.]+ +[\d.]+ +([\d.]+) +([\d.]+)$",
                      text, flags=re.M)
    assert [int(r[0]) for r in rows] == list(range(1, 28))      # through MosaicML's epoch of success
    assert all((r[4] == "model") == (float(r[2]) >= float(r[3])) for r in rows)
    assert all(float(r[6]) > 0 for r in rows)                    # MosaicML's minutes beside ours
    assert "MosaicML's published 8x A100 epochs and evaluations, another GPU model" in text
    total = float(re.search(r"projected time to train through epoch 27: ([\d.]+) min", text)[1])
    session = json.loads((out / "session.json").read_text())
    assert session["projection"]["total_minutes"] == pytest.approx(total, abs=0.01)


@NO_CUDA
def test_first_session_refuses_to_run_without_cuda(tmp_path):
    """Without CUDA (and without SMOKE=1) it stops at once with one error line and writes nothing."""
    proc = sh(sys.executable, "-m", "bench.first_session", tmp_path / "out", env={**os.environ, "SMOKE": "0"})
    assert proc.returncode == 1 and "error: no CUDA device visible" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_a_part_over_its_budget_is_cut_and_keeps_nothing_half_done(tmp_path):
    from bench.first_session import run_part

    part = run_part("data", 0.5, tmp_path / "work", tmp_path)
    assert part["status"] == "cut" and part["detail"] == "cut after its 0 s budget, 0 result(s) kept"
    assert part["seconds"] < 30


def test_the_step_benchmark_times_the_trainers_own_step(monkeypatch):
    """ours is resnet.train.train_step on a build_training (counted here), plain the one plain_step."""
    from types import SimpleNamespace

    from bench import steps
    from resnet import train

    calls = []
    real = train.train_step
    monkeypatch.setattr(train, "train_step", lambda *a: calls.append(a[-1]) or real(*a))
    rows = []
    steps.eager(SimpleNamespace(device=torch.device("cpu"), precisions=["fp32"], batch=2, warmup=1, steps=2,
                                arch="resnet18", sides=[16], fields=dict(train_crop_px=32)), rows.append)
    assert calls == [16, 16, 16] and [r["loop"] for r in rows] == ["ours", "plain"]
    assert all(r["img_s"] > 0 and r["timed_steps"] == 2 for r in rows)


@pytest.mark.skipif(torch.cuda.is_available(), reason="with CUDA --ddp uses every GPU")
def test_step_benchmark_ddp_runs_two_gloo_ranks(tmp_path):
    proc = sh(sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
              "bench.steps", tmp_path / "ddp.json", "--ddp", "--precisions", "fp32", "--sides", "16", "--batch", "2",
              "--arch", "resnet18", "--warmup", "1", "--steps", "2", env={**os.environ, "OMP_NUM_THREADS": "1"},
              timeout=600)
    assert proc.returncode == 0 and "terminate called" not in proc.stderr, proc.stderr[-3000:]
    report = json.loads((tmp_path / "ddp.json").read_text())
    assert report["world_size"] == 2 and {r["cudnn_benchmark"] for r in report["rows"]} == {False, True}
    assert all(r["img_s"] > 0 for r in report["rows"]) and report["metadata"]["machine"]["cores"] >= 1


def test_mosaicml_epoch_times_come_from_their_logs():
    from bench.projection import peer_times

    peer = peer_times()
    assert peer["logs"] == 5 and peer["success_epoch"] == 27
    assert 150 < peer["epoch_s"][1] < 170          # the first epoch carries their start-up
    assert all(38 < peer["epoch_s"][e] < 42 for e in range(2, 15))   # 88-128 px: flat, the loader's pace
    assert peer["epoch_s"][27] > 60 and set(peer["eval_s"]) == set(range(3, 28, 3))


def test_projection_names_the_slower_side_and_adds_what_recurs():
    from bench.projection import interpolate, project
    from resnet.recipe import MILD, Plan

    plan = Plan(MILD, 1000, 1_281_167, 50_000, 8)
    sides = [MILD.resolution_px(e) for e in range(27)]
    rates = dict(model_img_s={px: 20000 * (88 / px) ** 2 for px in sides}, loader_img_s=5000.0, loader_start_s=2.0,
                 first_start_s=5.0, val_start_s=1.0, eval_img_s=12500.0, ema_update_s=0.01)
    result = project(plan, rates, 27, overlap=0.5, bus_gb_s=100.0, params=25_000_000)
    rows = result["rows"]
    assert (result["steps_per_epoch"], result["ema_every_steps"]) == (625, 20)
    exposed = 0.5 * 2 * 7 / 8 * 1e8 / 1e11     # half of a ring all-reduce of 100 MB at 100 GB/s, 8 ranks
    assert result["allreduce_exposed_ms"] == pytest.approx(exposed * 1e3, abs=1e-3)
    assert rows[0]["bound"] == "loader" and rows[-1]["bound"] == "model"        # 88 px: 20k > 5k img/s
    assert rows[0]["loader_s"] == pytest.approx(625 * 256 / 5000, abs=0.01)
    assert rows[0]["ema_s"] == pytest.approx(31 * 0.01, abs=1e-3)
    assert rows[0]["minutes"] == pytest.approx((625 * 256 / 5000 + 5.0) / 60, abs=1e-3)   # the first start, once
    assert rows[1]["minutes"] == pytest.approx((625 * 256 / 5000 + 2.0) / 60, abs=1e-3)   # then every epoch's
    assert rows[2]["eval_s"] == pytest.approx(6250 / 12500 + 1.0) and rows[3]["eval_s"] == 0
    assert rows[-1]["model_s"] == pytest.approx(625 * (256 / rates["model_img_s"][176] + exposed) + 0.31, abs=0.01)
    rates = interpolate({88: 4000.0, 176: 1000.0}, [88, 128, 176])
    assert rates[88] == pytest.approx(4000) and rates[176] == pytest.approx(1000) and 1000 < rates[128] < 4000
    w = (128 ** 2 - 88 ** 2) / (176 ** 2 - 88 ** 2)
    assert 1 / rates[128] == pytest.approx((1 - w) / 4000 + w / 1000)


def test_run_metadata_names_the_commit_versions_and_machine():
    import subprocess

    from bench.common import run_metadata

    meta = run_metadata()
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    assert meta["git_commit"] == head and isinstance(meta["git_dirty"], bool)
    assert meta["versions"]["torch"] in (torch.__version__.split("+")[0], torch.__version__)
    assert set(meta["versions"]) >= {"torch", "torchvision", "ffcv", "dali", "numpy", "mlperf-logging"}
    assert meta["machine"]["cores"] >= 1 and meta["machine"]["gpus"] == ([] if not torch.cuda.is_available() else
                                                                          meta["machine"]["gpus"])
    assert meta["date"].endswith("+00:00")


def test_loader_ranks_measures_every_rank_loading_at_once(ffcv_data, tmp_path):
    """`bench.loaders ranks` on 2 CPU ranks: a rate per rank, the slowest, both first batches."""
    proc = sh(sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
              "bench.loaders", "ranks", tmp_path / "ranks.json", "--data", ffcv_data, "--loader", "ffcv",
              "--workers", "1", "--batch-size", "16", "--crop", "32", "--eval-crop", "32", "--eval-resize", "36",
              "--batches", "6", "--warmup", "2", timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "ranks.json").read_text())
    assert report["ranks"] == 2 and len(report["per_rank_img_s"]) == 2
    assert report["slowest_rank_img_s"] == min(report["per_rank_img_s"]) > 0
    assert report["train_first_batch_s"] > 0 and report["val_first_batch_s"] > 0 and report["metadata"]["git_commit"]


def test_loader_benchmark_says_what_is_not_installed_and_refuses_unknown_fields(monkeypatch, tmp_path):
    import dataclasses

    from bench import loaders
    from resnet.data import dali_loader

    monkeypatch.setattr(dali_loader, "BACKEND", dataclasses.replace(dali_loader.BACKEND, needs="no_such_module_here"))
    assert loaders.measure("dali", None, None, 0, 0) == dict(loader="dali", status="not installed here")
    args = loaders.parse_args(["ranks", str(tmp_path / "x.json"), "--spec", "no_such_field=1"])
    with pytest.raises(SystemExit, match="LoaderSpec has no field 'no_such_field'"):
        loaders.spec_for(args)
    spec = loaders.spec_for(loaders.parse_args(["ranks", "x", "--spec", "hw_decoder_load=0.99"]))
    assert spec.hw_decoder_load == 0.99


def test_dali_sweep_runs_every_combination(synth_tree, tmp_path):
    """The sweep command (hardware-decoder share x threads x prefetch) on one CPU rank, torchvision standing in
    for DALI (the same LoaderSpec fields reach it): a row per combination and the best."""
    proc = sh(sys.executable, "-m", "bench.loaders", "sweep", tmp_path / "sweep.json", "--data", synth_tree,
              "--loader", "torchvision", "--hw-loads", "0.5", "0.99", "--threads", "1", "--batch-size", "16",
              "--crop", "32", "--batches", "3", "--warmup", "1", env={**os.environ, "OMP_NUM_THREADS": "1"},
              timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "sweep.json").read_text())
    assert [(r["hw_decoder_load"], r["threads"]) for r in report["rows"]] == [(0.5, 1), (0.99, 1)]
    assert all(r["status"] == "measured" and r["slowest_rank_img_s"] > 0 for r in report["rows"])
    assert report["best"] in report["rows"]
