"""run_and_time.sh, the MLPerf entry point, end to end on the CPU: five seeds, logs that the official checker
accepts, the summary, seeds that miss the target (their exit status visible, no torchrun stack trace), a smoke
run's exit status, signals forwarded to the trainer, two nodes on one machine, the dry run, and every bad input
refused in one line before anything runs or is written."""
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from compliance.check import check_log
from compliance.summarize import summarize_dir
from tests.conftest import REPO, TINY_CONFIG, events, run_and_time, run_stop


def test_five_seeds_compliant_logs_and_summary(cpu_benchmark):
    out, results = cpu_benchmark
    assert out.returncode == 0, out.stderr[-4000:]
    logs = sorted(results.glob("result_*.txt"))
    assert [p.name for p in logs] == [f"result_{i}.txt" for i in range(5)]
    seeds = [next(e["value"] for e in events(p) if e["key"] == "seed") for p in logs]
    assert seeds == [100, 101, 102, 103, 104]
    for log in logs:
        assert run_stop(log)["metadata"]["status"] == "success"
        assert next(e for e in events(log) if e["key"] == "cache_clear")["value"] in (True, False)
        for ruleset in ("4.0.0", "2.0.0"):
            assert check_log(log, ruleset)[0], (log, ruleset)
    assert out.stdout.count("PASS") == 5                      # the official checker, once per new log
    assert out.stderr.count("exit 0 (reached the target)") == 5
    # run_and_time.sh summarises at the runs' own target (TINY_CONFIG's 0.1: "not a submission score"); at
    # MLPerf's 0.759 none of these runs counts.
    assert "not a submission score" in out.stdout + out.stderr
    assert summarize_dir(results)["runs_minutes"] == [None] * 5
    summary = summarize_dir(results, target=float(TINY_CONFIG["TARGET_ACCURACY"]))
    assert summary["valid"] and len(summary["runs_minutes"]) == 5 and None not in summary["runs_minutes"]
    middle = sorted(summary["runs_minutes"])[1:4]
    assert abs(summary["score_minutes"] - sum(middle) / 3) < 1e-9
    assert re.search(r"score", out.stdout, re.I)


def test_seeds_that_miss_the_target_show_exit_2_without_a_stack_trace(ffcv_data, tmp_path):
    results = tmp_path / "CPU" / "resnet"
    results.mkdir(parents=True)
    earlier = results / "result_0.txt"
    earlier.write_text("an earlier run's log\n")
    # A target no run reaches: each experiment trains its one epoch, misses, and the next one still runs.
    out = run_and_time({"DATADIR": str(ffcv_data), "LOGDIR": str(tmp_path), "NEXP": "2", "SEED": "7",
                        "EPOCHS": "1", "TARGET_ACCURACY": "0.99"})
    assert earlier.read_text() == "an earlier run's log\n"
    assert [p.name for p in sorted(results.glob("result_*.txt"))] == ["result_0.txt", "result_1.txt", "result_2.txt"]
    for name in ("result_1.txt", "result_2.txt"):
        assert run_stop(results / name)["metadata"]["status"] == "aborted"
    assert re.findall(r"seed (\d+) exit 2 \(target not reached\)", out.stderr) == ["7", "8"]
    assert "Traceback" not in out.stderr and "ChildFailedError" not in out.stderr, out.stderr[-3000:]
    assert "2 experiments, 2 did not reach the target or failed" in out.stderr
    assert out.returncode == 1


def test_a_smoke_run_that_reaches_the_target_exits_0(ffcv_data, tmp_path):
    out = run_and_time({"DATADIR": str(ffcv_data), "LOGDIR": str(tmp_path), "NEXP": "1", "SEED": "3"})
    assert out.returncode == 0, out.stderr[-4000:]
    assert "exit 0 (reached the target)" in out.stderr and "smoke run passed" in out.stderr
    assert "PASS" in out.stdout
    assert not summarize_dir(tmp_path / "CPU" / "resnet")["valid"], "one run is no submission"


# ------------------------------------------------------------------------------------------------- signals


def descendants(pid: int) -> list[int]:
    """Every live process below `pid` (torchrun's workers run in their own sessions, so groups do not find them)."""
    children = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def start_run_and_time(env: dict) -> subprocess.Popen:
    path = f"{Path(sys.executable).parent}:{os.environ['PATH']}"
    return subprocess.Popen(["./run_and_time.sh"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={"PATH": path, "HOME": os.environ.get("HOME", "/root"),
                                            "PYTHON": sys.executable, **TINY_CONFIG, **env})


def wait_for_training(log: Path, proc: subprocess.Popen, timeout_s=300) -> None:
    """Until the log shows a trained epoch (the run is past its set-up)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        if log.exists() and '"key": "epoch_stop"' in log.read_text():
            return
        time.sleep(0.5)
    pytest.fail(f"{log} shows no trained epoch after {timeout_s} s")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
def test_a_signal_reaches_the_trainer_and_stops_the_set(ffcv_data, tmp_path, sig):
    ckpt = tmp_path / "ckpt"
    proc = start_run_and_time({"DATADIR": str(ffcv_data), "LOGDIR": str(tmp_path), "NEXP": "2", "SEED": "11",
                               "EPOCHS": "30", "TARGET_ACCURACY": "0.99", "CHECKPOINT_DIR": str(ckpt)})
    log = tmp_path / "CPU" / "resnet" / "result_0.txt"
    try:
        wait_for_training(log, proc)
        below = descendants(proc.pid)
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + sig, stderr[-3000:]
    stop = run_stop(log)
    assert stop["metadata"]["status"] == "aborted" and sig.name in stop["metadata"].get("reason", ""), stop
    assert any(ckpt.iterdir()), "the trainer checkpointed on the way out"
    assert "exit 4 (stopped by a signal)" in stderr and f"stopped by {sig.name} after 1 of 2 experiments" in stderr
    assert "Traceback" not in stderr, stderr[-3000:]
    assert sorted(p.name for p in log.parent.iterdir()) == ["result_0.txt"], "no further experiment"
    assert not [p for p in below if Path(f"/proc/{p}").exists()], "torchrun or the trainer outlived the script"


# ---------------------------------------------------------------------------------- two nodes, one machine


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def two_nodes(ffcv_data: Path, logdir: Path, **env) -> list[subprocess.Popen]:
    """run_and_time.sh twice, as node 0 and node 1 of a two-node job (one process each, gloo, c10d on localhost)."""
    common = {"DATADIR": str(ffcv_data), "LOGDIR": str(logdir), "NEXP": "1", "SEED": "21", "DGXNNODES": "2",
              "DGXNGPU": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), **env}
    return [start_run_and_time({**common, "NODE_RANK": str(rank)}) for rank in (0, 1)]


def test_two_nodes_on_one_machine_write_one_compliant_log(ffcv_data, tmp_path):
    nodes = two_nodes(ffcv_data, tmp_path)
    try:
        outs = [n.communicate(timeout=600) for n in nodes]
    finally:
        for n in nodes:
            if n.poll() is None:
                n.kill()
    assert [n.returncode for n in nodes] == [0, 0], [o[1][-3000:] for o in outs]
    (log,) = (tmp_path / "CPU" / "resnet").glob("result_*.txt")
    assert run_stop(log)["metadata"]["status"] == "success"
    assert next(e for e in events(log) if e["key"] == "global_batch_size")["value"] == 2 * int(TINY_CONFIG["BATCHSIZE"])
    assert check_log(log, "4.0.0")[0]
    assert "PASS" in outs[0][0] and "node 0 reports the results" in outs[1][1]


def test_a_dead_node_ends_the_other_one(ffcv_data, tmp_path):
    nodes = two_nodes(ffcv_data, tmp_path, EPOCHS="30", TARGET_ACCURACY="0.99")
    log = tmp_path / "CPU" / "resnet" / "result_0.txt"
    try:
        wait_for_training(log, nodes[0])
        for pid in [nodes[1].pid, *descendants(nodes[1].pid)]:   # the whole node: script, torchrun, trainer
            os.kill(pid, signal.SIGKILL)
        killed = time.monotonic()
        _, stderr = nodes[0].communicate(timeout=90)
        assert time.monotonic() - killed < 60, "the surviving node took too long to stop"
    finally:
        for n in nodes:
            for pid in [*descendants(n.pid), n.pid]:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            n.wait()
    assert nodes[0].returncode != 0, stderr[-3000:]
    assert re.search(r"exit (1|-\d+) \((error|killed by signal \d+)\)", stderr), stderr[-3000:]


# ------------------------------------------------------------------------------------------------- dry run


def test_dry_run_prints_the_launch_command(ffcv_data, tmp_path):
    out = run_and_time({"DATADIR": str(ffcv_data), "LOGDIR": str(tmp_path), "NEXP": "2", "SEED": "5",
                        "DRY_RUN": "1", "DGXNGPU": "8", "BATCHSIZE": "256", "PRECISION": "fp16"})
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith("torchrun --nproc_per_node=8 --nnodes=1 --standalone -m "
                                                   "resnet.train") for line in lines)
    assert "--seed 5 " in lines[0] and "--seed 6 " in lines[1] and "--batch-size 256" in lines[0]
    assert list(tmp_path.iterdir()) == []


def test_dry_run_without_the_data_here_warns_and_prints(tmp_path):
    """A login node previews the command of a machine that has the data: a warning, not an error."""
    out = run_and_time({"DATADIR": "/nowhere/imagenet-ffcv", "LOGDIR": str(tmp_path / "results"), "NEXP": "1",
                        "SEED": "5", "DRY_RUN": "1"})
    assert out.returncode == 0, out.stderr
    assert "/nowhere/imagenet-ffcv" in out.stderr and "warning" in out.stderr
    (line,) = out.stdout.strip().splitlines()
    assert line.startswith("torchrun ") and "--data /nowhere/imagenet-ffcv" in line
    assert list(tmp_path.iterdir()) == [], "a dry run creates no result folders"


def test_bind_cpu_splits_each_numa_node_or_says_why_not(ffcv_data, tmp_path):
    out = run_and_time({"DATADIR": str(ffcv_data), "LOGDIR": str(tmp_path), "NEXP": "1", "SEED": "5",
                        "DRY_RUN": "1", "BIND_CPU": "1"})
    assert out.returncode == 0, out.stderr
    try:
        from torch.numa.binding import AffinityMode

        AffinityMode("exclusive")
        assert "--numa-binding=exclusive" in out.stdout and "BIND_CPU" not in out.stderr
    except (ImportError, ValueError):
        assert "--numa-binding" not in out.stdout and "BIND_CPU=1 ignored" in out.stderr


# -------------------------------------------------------------------------------------- bad inputs, one line

PWNED = "/tmp/run_and_time_pwned"
BAD_INPUTS = [  # (environment over TINY_CONFIG, what the one line must say)
    ({"NEXP": "abc"}, "NEXP=abc is not a whole number >= 1"),
    ({"NEXP": f"$(touch {PWNED})"}, "NEXP="),
    ({"NEXP": "0"}, "NEXP=0 is not a whole number >= 1"),
    ({"NEXP": "-1"}, "NEXP=-1 is not a whole number >= 1"),
    ({"NEXP": "2+3"}, "NEXP=2+3 is not a whole number"),
    ({"DGXNGPU": "0"}, "DGXNGPU=0 is not a whole number >= 1"),
    ({"DGXNGPU": "1.5"}, "DGXNGPU=1.5 is not"),
    ({"DGXNNODES": "two"}, "DGXNNODES=two is not"),
    ({"SEED": "-5"}, "SEED=-5 is not a whole number >= 0"),
    ({"SEED": f"1;touch {PWNED}"}, "SEED="),
    ({"SEED": "a[$(touch /tmp/run_and_time_pwned)]"}, "SEED="),
    ({"DGXSYSTEM": ""}, "DGXSYSTEM is not set"),
    ({"DGXSYSTEM": "../../etc"}, "is no system name"),
    ({"DRY_RUN": "yes"}, "DRY_RUN=yes is not 0 or 1"),
    ({"BIND_CPU": "2"}, "BIND_CPU=2 is not 0 or 1"),
    ({"CACHE_CLEARED": "maybe"}, "CACHE_CLEARED=maybe is not 0 or 1"),
    ({"DGXNNODES": "2"}, "needs MASTER_ADDR"),
    ({"DGXNNODES": "2", "MASTER_ADDR": "127.0.0.1", "NODE_RANK": "2"}, "node rank 2 is not below DGXNNODES=2"),
    ({"DGXNNODES": "2", "MASTER_ADDR": "127.0.0.1", "NODE_RANK": "x"}, "NODE_RANK=x is not a whole number"),
    ({"DGXNNODES": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "http"}, "MASTER_PORT=http is not"),
    ({"PYTHON": "/nonexistent/python3"}, "PYTHON=/nonexistent/python3 cannot run the benchmark"),
    ({"PYTHON": "/usr/bin/python3"}, "PYTHON=/usr/bin/python3 cannot run the benchmark (no module named 'torch')"),
    ({"PATH": "/usr/bin:/bin"}, "torchrun is not on PATH"),
    ({"CONFIG_FILE": "/nonexistent/config_X.sh"}, "/nonexistent/config_X.sh: no such config"),
    ({"NEXPP": "3"}, "NEXPP is no setting; did you mean NEXP?"),
    ({"PRECISION": "fp8"}, "PRECISION"),
    ({"LOGDIR": "/proc/no/such/dir"}, "not writable"),
]


def errors_only(stderr: str) -> list[str]:
    """The console without warnings (TINY_CONFIG's low target is one: not a submission run)."""
    return [line for line in stderr.strip().splitlines() if ": warning: " not in line]


def bad_input_id(case):
    env, _ = case
    return ",".join(f"{k}={v}" for k, v in env.items())[:40]


@pytest.mark.parametrize("case", BAD_INPUTS, ids=[bad_input_id(c) for c in BAD_INPUTS])
def test_a_bad_input_is_one_line_and_nothing_runs(case, ffcv_data, tmp_path):
    env, line = case
    if env.get("PYTHON") == "/usr/bin/python3" and subprocess.run(["/usr/bin/python3", "-c", "import torch"],
                                                                  capture_output=True).returncode == 0:
        pytest.skip("this machine's system python has torch")
    Path(PWNED).unlink(missing_ok=True)
    logdir = tmp_path / "logs"
    out = run_and_time({"DATADIR": str(ffcv_data), "LOGDIR": str(logdir), "NEXP": "1", "SEED": "1", **env},
                       timeout=120)
    assert out.returncode == 1, out.stderr
    (error,) = errors_only(out.stderr)
    assert out.stdout == "" and re.match(r"(run_and_time\.sh|mlperf-resnet): error: ", error), out.stderr
    assert line in error, out.stderr
    assert not logdir.exists() and not Path(PWNED).exists(), "a refused run wrote (or ran) something"


def test_the_sourced_config_is_checked_for_typos(ffcv_data, tmp_path):
    """CONFIG_FILE (every config exports its own path) names the file actually sourced, whatever DGXSYSTEM says."""
    config = tmp_path / "config_MINE.sh"
    config.write_text((REPO / "config_CPU.sh").read_text() + "export NUM_WORKRES=4\n")
    out = run_and_time({"DATADIR": str(ffcv_data), "LOGDIR": str(tmp_path / "logs"), "CONFIG_FILE": str(config)},
                       timeout=120)
    assert out.returncode == 1 and "unknown setting NUM_WORKRES; did you mean NUM_WORKERS?" in out.stderr
    assert len(errors_only(out.stderr)) == 1 and not (tmp_path / "logs").exists()
