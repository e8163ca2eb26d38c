"""End-to-end training runs on the CPU: the real loop, real FFCV files, the real compliance checker,
real DDP with gloo on 2 processes, real signals."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from compliance.check import check_log
from tests.conftest import REPO, cli, events, first, keys, no_jit, run_stop

TINY = ["--recipe", "mild", "--arch", "resnet18", "--batch-size", "16", "--train-crop-px", "32",
        "--eval-crop-px", "32", "--eval-resize-px", "36", "--workers", "1", "--warmup-epochs", "1",
        "--precision", "fp32", "--org", "tests", "--platform", "CPU", "--status", "research"]


def test_cpu_run_logs_compliantly(ffcv_data, tmp_path):
    results = tmp_path / "results"
    out = cli("train", *TINY, "--data", ffcv_data, "--results-dir", results, "--epochs", "3",
              "--eval-every-epochs", "2", "--target-accuracy", "0.99", "--seed", "7", check=False)
    assert out.returncode == 2, out.stderr          # the target is out of reach: aborted, non-zero
    log = results / "result_0.txt"
    ks = keys(log)
    assert ks[:3] == ["cache_clear", "init_start", "submission_benchmark"]
    assert ks.index("init_stop") < ks.index("run_start") < ks.index("block_start") < ks.index("run_stop")
    # Composer's cadence, MLPerf's numbering: evaluations after 2 completed epochs (a multiple of 2) and after the
    # last (3); epoch_stop and the eval events count completed epochs, epoch_start the epochs before it.
    assert [e["metadata"]["epoch_num"] for e in events(log) if e["key"] == "eval_accuracy"] == [2, 3]
    assert [e["metadata"]["epoch_num"] for e in events(log) if e["key"] == "epoch_stop"] == [1, 2, 3]
    assert [e["metadata"]["epoch_num"] for e in events(log) if e["key"] == "epoch_start"] == [0, 1, 2]
    assert [(e["metadata"]["first_epoch_num"], e["metadata"]["epoch_count"]) for e in events(log)
            if e["key"] == "block_start"] == [(0, 2), (2, 1)]
    assert first(log, "target_accuracy")["value"] == 0.99
    assert run_stop(log)["metadata"]["status"] == "aborted"
    assert next(e for e in events(log) if e["key"] == "seed")["value"] == 7
    for ruleset in ("4.0.0", "2.0.0"):
        ok, problems = check_log(log, ruleset=ruleset)
        assert ok, (ruleset, problems)
    # one live line per epoch on stderr, never in the MLPerf log
    assert len([line for line in out.stderr.splitlines() if line.startswith("epoch ")]) == 3
    assert "img/s" not in log.read_text()
    # a second run takes the next free result file and leaves the first alone
    before = log.read_bytes()
    cli("train", *TINY, "--data", ffcv_data, "--results-dir", results, "--epochs", "1",
        "--eval-every-epochs", "1", "--target-accuracy", "0.01", "--seed", "8")
    assert log.read_bytes() == before
    assert run_stop(results / "result_1.txt")["metadata"]["status"] == "success"


def test_non_finite_loss_aborts_at_the_next_check(ffcv_data, tmp_path):
    log = tmp_path / "nan.txt"
    out = cli("train", *TINY, "--data", ffcv_data, "--log-file", log, "--epochs", "2", "--eval-every-epochs", "1",
              "--lr", "1e30", "--warmup-epochs", "0", "--seed", "1", check=False)
    assert out.returncode == 3
    assert "error: the loss became" in out.stderr and "run aborted" in out.stderr
    assert run_stop(log)["metadata"]["status"] == "aborted"
    assert "epoch_stop" not in keys(log)       # found at a check inside the first epoch, before its end


def torchrun(*args, **kw):
    return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             "-m", "resnet.train", *map(str, args)], cwd=REPO, env=no_jit(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def test_ddp_two_processes_gloo_keeps_replicas_identical(ffcv_data, tmp_path):
    results = tmp_path / "results"
    proc = torchrun(*TINY, "--data", ffcv_data, "--results-dir", results, "--epochs", "2", "--eval-every-epochs",
                    "1", "--target-accuracy", "1.0", "--seed", "3", "--device", "cpu")
    _, err = proc.communicate(timeout=600)
    assert proc.returncode != 0 and "run_stop aborted" in err   # the target 1.0 is out of reach
    assert [p.name for p in results.iterdir()] == ["result_0.txt"]          # only rank 0 logs
    fingerprints = [line for line in err.splitlines() if line.startswith("replicas:")]
    assert fingerprints and all("identical" in line for line in fingerprints), err[-3000:]
    log = results / "result_0.txt"
    assert keys(log).count("run_start") == 1
    train_samples = next(e for e in events(log) if e["key"] == "train_samples")["value"]
    assert train_samples == 4 * 48
    assert next(e for e in events(log) if e["key"] == "global_batch_size")["value"] == 32   # 16 per process x 2


def test_dead_rank_ends_the_job(ffcv_data, tmp_path):
    import psutil

    log = tmp_path / "dead.txt"
    proc = torchrun(*TINY, "--data", ffcv_data, "--log-file", log, "--epochs", "50", "--eval-every-epochs", "50",
                    "--target-accuracy", "0.999", "--seed", "3", "--device", "cpu")
    deadline = time.time() + 300
    while time.time() < deadline and not (log.exists() and "epoch_stop" in log.read_text()):
        time.sleep(0.5)
    assert "epoch_stop" in log.read_text()
    workers = psutil.Process(proc.pid).children(recursive=True)
    victim = next(w for w in workers if "resnet.train" in " ".join(w.cmdline()) and
                  w.environ().get("RANK") == "1")
    killed = time.time()
    victim.kill()
    proc.communicate(timeout=90)
    assert time.time() - killed < 60
    assert proc.returncode != 0


def final_weights(ckpt_dir: Path) -> dict:
    return torch.load(ckpt_dir / "last.pt", weights_only=True)["model"]


def test_sigterm_checkpoints_and_resume_matches_uninterrupted_run(synth_tree, tmp_path):
    common = [*TINY, "--loader", "torchvision", "--data", synth_tree, "--epochs", "3", "--eval-every-epochs", "3",
              "--target-accuracy", "1.0", "--seed", "11", "--workers", "0"]
    straight = tmp_path / "straight"
    cli("train", *common, "--checkpoint-dir", straight, "--log-file", tmp_path / "a.txt", check=False)
    resumed = tmp_path / "resumed"
    proc = subprocess.Popen([sys.executable, "-m", "resnet.cli", "train", *map(str, common), "--checkpoint-dir",
                             resumed, "--log-file", tmp_path / "b.txt"], cwd=REPO, env=no_jit(),
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and not (resumed / "last.pt").exists():
        time.sleep(0.05)
    time.sleep(0.5)                                   # somewhere inside the second epoch
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 4, err
    assert "SIGTERM: checkpoint written" in err
    assert run_stop(tmp_path / "b.txt")["metadata"]["status"] == "aborted"
    state = torch.load(resumed / "last.pt", weights_only=True)
    assert state["progress"]["epoch"] < 3
    out = cli("train", *common, "--checkpoint-dir", resumed, "--resume", "--log-file", tmp_path / "c.txt",
              check=False)
    assert out.returncode == 2, out.stderr           # target 1.0 is unreachable: aborted at the end
    a, b = final_weights(straight), final_weights(resumed)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    start = next(e for e in events(tmp_path / "c.txt") if e["key"] == "run_start")
    assert start["time_ms"] == next(e for e in events(tmp_path / "b.txt") if e["key"] == "run_start")["time_ms"]


def test_timed_checkpoints_survive_sigkill_and_resume(ffcv_data, tmp_path):
    """SIGKILL leaves no chance to save: the every-N-minutes checkpoint (written atomically) is what remains."""
    ckpt = tmp_path / "ck"
    args = [*TINY, "--data", ffcv_data, "--epochs", "3", "--eval-every-epochs", "3", "--target-accuracy", "1.0",
            "--seed", "5", "--checkpoint-dir", ckpt, "--checkpoint-every-minutes", "0.001"]
    proc = subprocess.Popen([sys.executable, "-m", "resnet.cli", "train", *map(str, args), "--log-file",
                             tmp_path / "a.txt"], cwd=REPO, env=no_jit(), stderr=subprocess.DEVNULL)
    deadline, state = time.time() + 300, None
    while time.time() < deadline:
        if (ckpt / "last.pt").exists():
            state = torch.load(ckpt / "last.pt", weights_only=True)     # never half-written: tmp file + rename
            if state["progress"]["epoch"] == 1 and state["progress"]["batches_done"] > 0:
                break
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    assert state is not None and state["progress"]["epoch"] == 1 and state["progress"]["batches_done"] > 0
    out = cli("train", *args, "--resume", "--log-file", tmp_path / "b.txt", check=False)
    assert out.returncode == 2, out.stderr
    assert torch.load(ckpt / "last.pt", weights_only=True)["progress"]["epoch"] == 3
    assert next(e for e in events(tmp_path / "b.txt") if e["key"] == "run_start")["metadata"]["resumed_from_epoch"] == 1


def test_every_rank_evaluates_the_same_batchnorm_statistics(tmp_path):
    """Two gloo processes whose BatchNorm statistics differ: after average_buffers both hold the mean."""
    script = tmp_path / "avg.py"
    script.write_text(
        "import os, torch, torch.distributed as dist\n"
        "from resnet.distributed import average_buffers\n"
        "dist.init_process_group('gloo')\n"
        "bn = torch.nn.BatchNorm2d(3)\n"
        "rank = dist.get_rank()\n"
        "bn.running_mean.fill_(rank * 2.0); bn.running_var.fill_(1.0 + rank); bn.num_batches_tracked += 5\n"
        "average_buffers(bn)\n"
        "open(f'{os.environ[\"OUT\"]}/rank{rank}.txt', 'w').write(\n"
        "    f'{bn.running_mean.tolist()} {bn.running_var.tolist()} {int(bn.num_batches_tracked)}')\n"
        "dist.destroy_process_group()\n")
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          str(script)], cwd=REPO, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(REPO), "OUT": str(tmp_path)})
    results = [(tmp_path / f"rank{r}.txt").read_text() if (tmp_path / f"rank{r}.txt").exists() else None
               for r in (0, 1)]   # one file per rank: two processes' prints can interleave on one pipe
    assert results == ["[1.0, 1.0, 1.0] [1.5, 1.5, 1.5] 5"] * 2, out.stdout + out.stderr


def _tiny_training(precision="fp32", compile_backend=None, epochs=10):
    from resnet import train
    from resnet.data.loaders import LoaderSpec
    from resnet.recipe import MILD, Plan

    recipe = MILD.replace(arch="resnet18", epochs=epochs, train_crop_px=32, eval_crop_px=24, eval_resize_px=28,
                          precision=precision, global_batch_size=4)
    plan = Plan(recipe, num_classes=4, train_samples=40, eval_samples=10, world_size=1)
    spec = LoaderSpec.from_recipe(recipe, batch_size=4)
    t = train.build_training(plan, torch.device("cpu"), compile_model=compile_backend is not None,
                             compile_backend=compile_backend or "inductor")
    return t, plan, spec


def test_warm_up_leaves_no_trace():
    """The warm-up runs forward/backward at every training side and evaluation at both batch shapes, then puts
    weights, BatchNorm statistics, gradients, optimiser and EMA state and RNGs back exactly as they were."""
    from resnet import train

    t, plan, spec = _tiny_training()
    for _ in range(3):   # momentum buffers, an EMA and a scheduler with state
        train.train_step(t, torch.randn(4, 3, 32, 32).contiguous(memory_format=torch.channels_last),
                         torch.tensor([0, 1, 2, 3]), 16)
    before = {k: v.clone() for k, v in t.model.state_dict().items()}
    ema_before = {k: v.clone() for k, v in t.ema.state_dict().items()}
    opt_before = {k: v["momentum_buffer"].clone() for k, v in enumerate(t.optimizer.state.values())}
    rng = torch.get_rng_state()
    eval_batches = spec.eval_batch_sizes(plan.eval_samples)
    assert eval_batches == (2, 4)                     # 10 images: two batches of 4, then one of 2
    sides = train.warm_up(t, plan, spec, eval_batches)
    assert sides == sorted({plan.recipe.resolution_px(e) for e in range(10)}) and len(sides) > 1
    assert all(torch.equal(before[k], v) for k, v in t.model.state_dict().items())
    assert all(torch.equal(ema_before[k], v) for k, v in t.ema.state_dict().items())
    assert all(torch.equal(opt_before[k], v["momentum_buffer"]) for k, v in enumerate(t.optimizer.state.values()))
    assert all(p.grad is None for p in t.model.parameters())
    assert torch.equal(torch.get_rng_state(), rng) and t.model.training and t.ema.module.training


def test_no_compilation_after_the_warm_up_in_bf16():
    """torch.compile guards on dtype, shape and memory format: warmed up with the loader's bf16 channels-last
    batches at every side, training at every side compiles nothing more (counted by dynamo's own counter)."""
    import torch._dynamo.testing

    from resnet import train

    torch._dynamo.reset()
    counter = torch._dynamo.testing.CompileCounter()
    t, plan, spec = _tiny_training("bf16", compile_backend=counter)
    train.warm_up(t, plan, spec, spec.eval_batch_sizes(plan.eval_samples))
    compiled = counter.frame_count
    assert compiled >= len({plan.recipe.resolution_px(e) for e in range(10)})
    for epoch in range(plan.recipe.epochs):           # what the loop does: loader-side bf16 batches, resized
        images = torch.randn(4, 3, 32, 32, dtype=torch.bfloat16).contiguous(memory_format=torch.channels_last)
        train.train_step(t, images, torch.tensor([0, 1, 2, 3]), plan.recipe.resolution_px(epoch))
    assert counter.frame_count == compiled, "a training side compiled again after the warm-up"
    torch._dynamo.reset()


def test_evaluation_scores_the_ema_once_it_has_averaged():
    import dataclasses

    t, _, _ = _tiny_training()
    assert t.evaluated is t.model                     # the EMA holds no average yet
    t.ema.update_parameters(t.model)
    assert t.evaluated is t.ema.module
    assert dataclasses.replace(t, ema=None).evaluated is t.model


class _Batches:
    """Fixed in-memory batches with the surface the loop uses (set_epoch, iteration, close)."""

    def __init__(self, n_batches, side, batch=4):
        g = torch.Generator().manual_seed(0)
        self.batches = [(torch.randn(batch, 3, side, side, generator=g).contiguous(memory_format=torch.channels_last),
                         torch.arange(batch) % 4) for _ in range(n_batches)]

    def set_epoch(self, epoch):
        pass

    def __iter__(self):
        return iter(self.batches)

    def close(self):
        pass


def test_a_two_pass_step_runs_in_the_unchanged_loop_and_the_log_names_the_trainings_optimiser(tmp_path):
    """A recipe's own step (here SAM's shape: two forward/backward passes a step) is chosen once in the Training;
    the real loop runs it at every batch, on batches `prepare` shrank to the epoch's side; the log's opt_name is the
    Training's."""
    import dataclasses
    import signal as signals

    from resnet import distributed, stopping, train
    from resnet.checkpoint import RunProgress, Saver
    from resnet.mlperf import RunLog, log_hyperparameters

    t, plan, _ = _tiny_training(epochs=2)
    sides = []

    def two_pass_step(t, images, labels, side_px):
        images, targets = t.prepare(images, labels, side_px)
        for _ in range(2):
            loss = t.forward_loss(images, targets)
            loss.backward()
            sides.append(images.shape[-1])
        t.optimizer.step()
        t.optimizer.zero_grad(set_to_none=True)
        t.scheduler.step()
        t.step += 1
        return loss.detach()

    t = dataclasses.replace(t, step_fn=two_pass_step, optimizer_name="two_pass_sgdw")
    before = [p.detach().clone() for p in t.model.parameters()]
    log = RunLog(tmp_path / "result_0.txt")
    log_hyperparameters(log, plan.recipe, plan, 0, t.optimizer_name)
    handlers = {s: signals.getsignal(s) for s in stopping.STOP_SIGNALS}
    try:
        code = train.run_loop(t, plan=plan, dev=distributed.Dist(0, 1, 0, torch.device("cpu")), log=log,
                              loaders=(_Batches(plan.steps_per_epoch, 32), _Batches(3, 24)),
                              stop=stopping.StopRequest(), saver=Saver(None, 0, True, RunProgress(0, {})))
    finally:
        for s, h in handlers.items():
            signals.signal(s, h)
        log.close()
    assert code == train.NOT_REACHED
    expected = [plan.recipe.resolution_px(e) for e in range(2) for _ in range(2 * plan.steps_per_epoch)]
    assert sides == expected and t.step == 2 * plan.steps_per_epoch
    assert any(not torch.equal(a, p) for a, p in zip(before, t.model.parameters()))
    assert first(tmp_path / "result_0.txt", "opt_name")["value"] == "two_pass_sgdw"
