"""run_and_time.sh, the MLPerf entry point, end to end on the CPU: five seeds, logs that the official checker
accepts, the summary, seeds that miss the target (their exit status visible, no torchrun stack trace), a smoke
run's exit status, signals forwarded to the trainer, two nodes on one machine, the dry run, and every bad input
refused in one line before anything runs or is written."""
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from compliance.check import check_log
from compliance.summarize import summarize_dir
from tests.conftest import JIT, NOT_SETTINGS, REPO, TINY_CONFIG, events, first, run_and_time, run_stop


@pytest.fixture
def folders(synth_tree) -> dict:
    """The image folders through LOADER=torchvision: for the launcher's own behaviour (logs, nodes), where the
    loader is not the point, it starts ~9 s sooner than FFCV (no pipeline compilation); the FFCV path is the
    benchmark's (cpu_benchmark, the smoke run, SIGTERM below)."""
    return {"LOADER": "torchvision", "DATADIR": str(synth_tree)}


@pytest.fixture
def folders_dali(synth_tree) -> dict:
    """The image folders through LOADER=dali, for the tests with a busy process beside them: DALI's threads start
    as soon as torchvision's processes and, unlike them, do not compete with the trainer for the two cores."""
    return {"LOADER": "dali", "DATADIR": str(synth_tree)}


def test_five_seeds_compliant_logs_and_summary(cpu_benchmark):
    out, results = cpu_benchmark
    # Valid at TINY_CONFIG's 0.1, below MLPerf's 0.759: exit 5 (README: When things go wrong), warned once at the
    # start (not by each of the five trainers).
    assert out.returncode == 5, out.stderr[-4000:]
    assert out.stderr.count("is below MLPerf's ResNet target 0.759") == 1, out.stderr[-4000:]
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
    assert "below MLPerf's 0.759: not a valid submission (no log of it can count; exit 5)" in out.stderr
    assert summarize_dir(results)["runs_minutes"] == [None] * 5
    summary = summarize_dir(results, target=float(TINY_CONFIG["TARGET_ACCURACY"]))
    assert summary["valid"] and len(summary["runs_minutes"]) == 5 and None not in summary["runs_minutes"]
    middle = sorted(summary["runs_minutes"])[1:4]
    assert abs(summary["score_minutes"] - sum(middle) / 3) < 1e-9
    assert re.search(r"score", out.stdout, re.I)


def test_seeds_that_miss_the_target_show_exit_2_without_a_stack_trace(folders, tmp_path):
    """A target of 1.0 that no run reaches (TARGET_ACCURACY=1.0 is accepted and summarised): each experiment trains
    its one epoch, misses, and the next one still runs; an earlier log and a dangling result link are left alone."""
    results = tmp_path / "CPU" / "resnet"
    results.mkdir(parents=True)
    earlier = results / "result_0.txt"
    earlier.write_text("an earlier run's log\n")
    elsewhere = tmp_path / "elsewhere.txt"
    (results / "result_1.txt").symlink_to(elsewhere)
    out = run_and_time({**folders, "LOGDIR": str(tmp_path), "NEXP": "2", "SEED": "7", "EPOCHS": "1",
                        "TARGET_ACCURACY": "1.0"})
    assert earlier.read_text() == "an earlier run's log\n"
    assert not elsewhere.exists(), "the launcher or the trainer followed the dangling link"
    assert (results / "result_1.txt").is_symlink()
    assert [p.name for p in sorted(results.glob("result_*.txt"))] == [f"result_{i}.txt" for i in range(4)]
    for name in ("result_2.txt", "result_3.txt"):
        assert run_stop(results / name)["metadata"]["status"] == "aborted"
    assert re.findall(r"seed (\d+) exit 2 \(target not reached\)", out.stderr) == ["7", "8"]
    assert "Traceback" not in out.stderr and "ChildFailedError" not in out.stderr, out.stderr[-3000:]
    assert "--target" not in out.stderr, out.stderr[-3000:]
    assert "2 experiments, 2 did not reach the target or failed" in out.stderr
    assert "not a submission score" in out.stdout + out.stderr, out.stdout + out.stderr
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


def start_run_and_time(env: dict, **popen) -> subprocess.Popen:
    path = f"{Path(sys.executable).parent}:{os.environ['PATH']}"
    return subprocess.Popen(["./run_and_time.sh"], cwd=REPO, stdout=popen.pop("stdout", subprocess.PIPE),
                            stderr=subprocess.PIPE, text=True,
                            env={"PATH": path, "HOME": os.environ.get("HOME", "/root"), "PYTHON": sys.executable,
                                 **TINY_CONFIG, **env}, **popen)


def outputs(procs: list, timeout: float) -> list:
    """Each process's (stdout, stderr) once all have ended; any left after an error or a timeout is killed."""
    try:
        return [p.communicate(timeout=timeout) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()


class Console:
    """A process's stderr, read a line at a time in a thread, so that a test can wait for a line while the
    process runs (the launcher must show each line as it comes, not at exit)."""

    def __init__(self, proc: subprocess.Popen):
        self.lines, self.closed, self.changed = [], False, threading.Condition()
        threading.Thread(target=self._read, args=(proc.stderr,), daemon=True).start()

    def _read(self, stream):
        for line in stream:
            with self.changed:
                self.lines.append(line)
                self.changed.notify_all()
        with self.changed:
            self.closed = True
            self.changed.notify_all()

    def wait_for(self, pattern: str, timeout_s=600) -> str:
        """The first line matching `pattern` (a regex), once it has been printed."""
        deadline = time.monotonic() + timeout_s
        with self.changed:
            while True:
                found = next((line for line in self.lines if re.search(pattern, line)), None)
                if found or self.closed or time.monotonic() > deadline:
                    assert found, f"no line matching {pattern!r} in:\n" + "".join(self.lines)[-3000:]
                    return found
                self.changed.wait(1)

    def text(self, timeout_s=300) -> str:
        with self.changed:
            self.changed.wait_for(lambda: self.closed, timeout_s)
            return "".join(self.lines)


@pytest.fixture
def busy():
    """A process keeping a core busy beside the test: signals must arrive whatever the load."""
    proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    yield proc
    proc.kill()
    proc.wait()


def finish(proc: subprocess.Popen, console: Console, timeout_s=300) -> str:
    """Wait for the launcher to end (killing what is left of it on a timeout); its console."""
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        ps = subprocess.run(["ps", "-o", "pid,ppid,stat,wchan:20,args", "-p",
                             ",".join(map(str, [proc.pid, *descendants(proc.pid)]))], capture_output=True, text=True)
        raise AssertionError(f"still running after {timeout_s} s:\n{ps.stdout}console:\n"
                             + "".join(console.lines)[-5000:]) from None
    finally:
        if proc.poll() is None:
            for pid in [*descendants(proc.pid), proc.pid]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            proc.wait()
    return console.text()


def assert_stopped_by(sig, proc, stderr, log: Path, below: list[int]):
    """The launcher and the trainer both stopped for `sig`, nothing is left running, the run is logged aborted."""
    assert proc.returncode == 128 + sig, stderr[-3000:]
    stop = run_stop(log)
    assert stop["metadata"]["status"] == "aborted" and stop["metadata"].get("reason") == f"signal {sig.name}", stop
    assert f"{sig.name}: checkpoint written at epoch" in stderr, "the trainer's own stop line is shown"
    assert "exit 4 (stopped by a signal)" in stderr and "Traceback" not in stderr, stderr[-3000:]
    assert f"the interrupted run is logged as aborted in {log}" in stderr
    assert "run the same command again to continue it (RESUME=auto" in stderr
    assert not [p for p in below if Path(f"/proc/{p}").exists()], "torchrun or the trainer outlived the script"


SIGNAL_REPEATS = int(os.environ.get("SIGNAL_REPEATS", "1"))    # 10 to prove it (README: signals)
# Each stop signal with one loader: the trainer answers them alike whatever the loader, and each loader's threads or
# processes must survive a signal sent to the trainer's process group (torchvision's DataLoader processes died).
SIGNAL_CASES = [(signal.SIGTERM, "ffcv"), (signal.SIGINT, "torchvision"), (signal.SIGHUP, "dali")]


@pytest.mark.parametrize("repeat", range(SIGNAL_REPEATS))
@pytest.mark.parametrize("sig,loader", SIGNAL_CASES, ids=lambda c: getattr(c, "name", c))
def test_a_signal_reaches_the_trainer_and_stops_the_set(ffcv_data, synth_tree, tmp_path, sig, loader, repeat, busy):
    ckpt = tmp_path / "ckpt"
    data = ffcv_data if loader == "ffcv" else synth_tree
    proc = start_run_and_time({"DATADIR": str(data), "LOADER": loader, "LOGDIR": str(tmp_path), "NEXP": "2",
                               "SEED": "11", "EPOCHS": "30", "TARGET_ACCURACY": "0.99", "CHECKPOINT_DIR": str(ckpt),
                               **JIT},
                              stdout=subprocess.DEVNULL)
    console = Console(proc)
    log = tmp_path / "CPU" / "resnet" / "result_0.txt"
    console.wait_for(r"^epoch 1/30 ")            # a progress line on the console while the run is going
    assert proc.poll() is None
    below = descendants(proc.pid)
    proc.send_signal(sig)
    stderr = finish(proc, console)
    assert_stopped_by(sig, proc, stderr, log, below)
    assert f"stopped by {sig.name} after 1 of 2 experiments" in stderr
    assert sorted(p.name for p in log.parent.glob("result_*")) == ["result_0.txt"], "no further experiment"


def test_ctrl_c_to_the_whole_group_stops_the_run_and_the_same_command_continues_it(folders_dali, tmp_path, busy):
    """A terminal's Ctrl-C reaches every process of the foreground group: the launcher, its console filter
    (which must live on to show the trainer's stop line) and torchrun (in its own group, reached through the
    launcher). Running the same command again continues the run from its checkpoint (RESUME=auto), on a quiet
    machine: the load is for the signal."""
    env = {**folders_dali, "LOGDIR": str(tmp_path), "NEXP": "1", "SEED": "13", "EPOCHS": "2",
           "TARGET_ACCURACY": "0.99", "CHECKPOINT_DIR": str(tmp_path / "ckpt")}
    proc = start_run_and_time(env, stdout=subprocess.DEVNULL, start_new_session=True)
    console = Console(proc)
    results = tmp_path / "CPU" / "resnet"
    console.wait_for(r"^epoch 1/2 ")
    below = descendants(proc.pid)
    os.killpg(proc.pid, signal.SIGINT)
    stderr = finish(proc, console)
    assert_stopped_by(signal.SIGINT, proc, stderr, results / "result_0.txt", below)
    busy.kill()

    again = run_and_time(env)
    assert "resuming the interrupted run" in again.stderr, again.stderr[-3000:]
    assert "seed 13 exit 2 (target not reached)" in again.stderr and again.returncode == 1
    resumed = results / "result_1.txt"
    start = next(e for e in events(resumed) if e["key"] == "run_start")
    assert start["metadata"].get("resumed_from_epoch", 0) >= 1
    assert run_stop(resumed)["metadata"]["status"] == "aborted"         # 2 epochs, the target out of reach
    assert check_log(resumed, "4.0.0")[0]


@pytest.mark.parametrize("sig", [signal.SIGINT], ids=lambda s: s.name)
def test_a_signal_between_experiments_stops_the_set(folders_dali, tmp_path, sig, busy):
    """Sent as the first experiment ends: the next one either never starts or is stopped as it starts. SIGINT: the
    launcher traps every stop signal alike, and bash treats SIGINT specially while it waits for a command."""
    proc = start_run_and_time({**folders_dali, "LOGDIR": str(tmp_path), "NEXP": "3", "SEED": "17",
                               "EPOCHS": "1", "TARGET_ACCURACY": "0.99"}, stdout=subprocess.DEVNULL)
    console = Console(proc)
    console.wait_for(r"^=== experiment 1/3: seed 17 exit 2 ")
    proc.send_signal(sig)
    below = descendants(proc.pid)
    stderr = finish(proc, console)
    assert proc.returncode == 128 + sig, stderr[-3000:]
    assert re.search(rf"stopped by {sig.name} after [12] of 3 experiments", stderr), stderr[-3000:]
    assert "experiment 3/3" not in stderr and "Traceback" not in stderr, stderr[-3000:]
    logs = sorted((tmp_path / "CPU" / "resnet").glob("result_*.txt"))
    assert logs[0].name == "result_0.txt" and len(logs) <= 2
    assert all(log.stat().st_size for log in logs), "no empty log claimed and left behind"
    assert not [p for p in below if Path(f"/proc/{p}").exists()], "a process outlived the script"


def trainers(pid: int) -> list[int]:
    """The trainer processes below the launcher `pid` (torchrun's workers: resnet.train without torchrun)."""
    found = []
    for p in descendants(pid):
        with contextlib.suppress(OSError):
            argv = Path(f"/proc/{p}/cmdline").read_bytes().split(b"\0")
            if b"resnet.train" in argv and not any(a.endswith(b"torchrun") for a in argv):
                found.append(p)
    return found


@pytest.mark.parametrize("repeat", range(SIGNAL_REPEATS))
def test_a_ctrl_c_while_the_trainer_starts_stops_it_quietly(folders_dali, tmp_path, repeat, busy):
    """SIGINT while the trainer is still importing (before its handler): a Python there would die with a
    KeyboardInterrupt traceback; the launcher ends it with SIGTERM instead: no traceback, no log left, no more runs."""
    proc = start_run_and_time({**folders_dali, "LOGDIR": str(tmp_path), "NEXP": "2", "SEED": "19", "EPOCHS": "1",
                               "TARGET_ACCURACY": "0.99"}, stdout=subprocess.DEVNULL)
    console = Console(proc)
    console.wait_for(r"^=== experiment 1/2: seed 19 ")
    deadline = time.monotonic() + 300
    while not trainers(proc.pid):                   # the trainer process exists: its imports take seconds
        assert proc.poll() is None and time.monotonic() < deadline, console.text()
        time.sleep(0.01)
    below = descendants(proc.pid)
    proc.send_signal(signal.SIGINT)
    stderr = finish(proc, console)
    assert proc.returncode == 128 + signal.SIGINT, stderr[-3000:]
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr[-3000:]
    assert "seed 19 exit 4 (stopped by a signal)" in stderr or "seed 19 exit 2" in stderr, stderr[-3000:]
    assert "stopped by SIGINT after 1 of 2 experiments" in stderr and "experiment 2/2" not in stderr, stderr[-3000:]
    logs = list((tmp_path / "CPU" / "resnet").glob("result_*.txt"))
    assert all(run_stop(log)["metadata"]["status"] == "aborted" for log in logs), "a log is a stopped run's"
    assert not [p for p in below if Path(f"/proc/{p}").exists()], "a process outlived the script"


def test_sigint_ignored_at_start_is_warned(ffcv_data, tmp_path):
    env = {"DATADIR": str(ffcv_data), "LOGDIR": str(tmp_path), "NEXP": "1", "SEED": "1", "DRY_RUN": "1"}

    def ignore_sigint():
        signal.signal(signal.SIGINT, signal.SIG_IGN)

    warned = start_run_and_time(env, preexec_fn=ignore_sigint)
    _, stderr = warned.communicate(timeout=300)
    assert warned.returncode == 0, stderr
    assert ("run_and_time.sh: warning: SIGINT is ignored in this shell: Ctrl-C cannot stop the run; start it with "
            "set -m or send SIGTERM") in stderr.splitlines()
    plain = start_run_and_time(env)
    _, stderr = plain.communicate(timeout=300)
    assert plain.returncode == 0 and "SIGINT is ignored" not in stderr, stderr


# ------------------------------------------------------------------------------------- logs of two launches


def test_a_checkpoint_folder_held_by_a_live_run_is_refused_before_any_experiment(folders, tmp_path):
    """Issue 31: a second launcher whose CHECKPOINT_DIR a live run holds (here: a process that claimed it, as rank 0
    of a trainer does) stops in one line naming the holder, before claiming a log or starting an experiment."""
    ckpt = tmp_path / "ckpt"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, pathlib; from resnet import checkpoint; "
                               "checkpoint.claim(pathlib.Path(sys.argv[1])); print('held', flush=True); "
                               "sys.stdin.read()", str(ckpt)], cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        out = run_and_time({**folders, "LOGDIR": str(tmp_path / "logs"), "NEXP": "1", "CHECKPOINT_DIR": str(ckpt)})
    finally:
        holder.communicate("", timeout=60)
    lines = [line for line in out.stderr.splitlines() if "error" in line]
    assert out.returncode == 1 and len(lines) == 1, out.stderr[-3000:]
    # The trainer's own words (checkpoint.held_line): the folder, the holder, what to do.
    assert f"(CHECKPOINT_DIR) {ckpt}: held by a live run (pid {holder.pid} on host" in lines[0], lines[0]
    assert lines[0].endswith("wait for that run to end, or set another CHECKPOINT_DIR"), lines[0]
    assert "=== experiment" not in out.stderr and not list(tmp_path.rglob("result_*.txt"))


def test_two_launches_into_one_logdir_get_their_own_logs(folders, tmp_path):
    procs = [start_run_and_time({**folders, "LOGDIR": str(tmp_path), "NEXP": "1", "SEED": seed})
             for seed in ("31", "32")]
    outs = outputs(procs, timeout=900)
    assert [p.returncode for p in procs] == [0, 0], [o[1][-3000:] for o in outs]
    logs = sorted((tmp_path / "CPU" / "resnet").glob("result_*.txt"))
    assert [p.name for p in logs] == ["result_0.txt", "result_1.txt"]
    seeds = set()
    for log in logs:
        assert check_log(log, "4.0.0")[0], log
        assert [e["key"] for e in events(log)].count("run_start") == 1, "one run per log, nothing interleaved"
        seeds |= {e["value"] for e in events(log) if e["key"] == "seed"}
    assert seeds == {31, 32}


def test_a_newline_in_a_setting_stays_inside_its_value(ffcv_data, tmp_path):
    out = run_and_time({"DATADIR": str(ffcv_data), "LOGDIR": str(tmp_path), "NEXP": "1", "SEED": "5",
                        "DRY_RUN": "1", "CHECKPOINT_DIR": f"{tmp_path}/ckpt\n--epochs\n99"})
    assert out.returncode == 0, out.stderr
    (line,) = out.stdout.strip().splitlines()
    assert f"--checkpoint-dir $'{tmp_path}/ckpt\\n--epochs\\n99'" in line and "--epochs 99" not in line, line
    assert line.count("--epochs ") == 1, "the value's words became no flags"


def test_a_node_of_several_on_a_one_node_config_is_refused(ffcv_data, tmp_path):
    """DGXNNODES, NODE_RANK and MASTER_ADDR exported before sourcing a one-node config: the config fixes the
    node count (it is part of the system), and the launcher says so instead of training alone."""
    script = ("export DGXNNODES=2 NODE_RANK=1 MASTER_ADDR=127.0.0.1; source ./config_CPU.sh; "
              f"DATADIR={ffcv_data} LOGDIR={tmp_path / 'logs'} exec ./run_and_time.sh")
    path = f"{Path(sys.executable).parent}:{os.environ['PATH']}"
    out = subprocess.run(["bash", "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300,
                         env={"PATH": path, "HOME": os.environ.get("HOME", "/root"), "PYTHON": sys.executable})
    assert out.returncode == 1 and out.stdout == ""
    (line,) = out.stderr.strip().splitlines()
    assert re.match(r"(run_and_time\.sh|mlperf-resnet): error: NODE_RANK=1 MASTER_ADDR=127\.0\.0\.1 are set but "
                    "DGXNNODES=1", line), line      # checked in resnet.launch since the checks moved there
    assert not (tmp_path / "logs").exists()


# ---------------------------------------------------------------------------------- two nodes, one machine


def wait_for_training(log: Path, proc: subprocess.Popen, timeout_s=600) -> None:
    """Until the log shows a trained epoch (the run is past its set-up)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        if log.exists() and '"key": "epoch_stop"' in log.read_text():
            return
        time.sleep(0.5)
    pytest.fail(f"{log} shows no trained epoch after {timeout_s} s")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def two_nodes(data: dict, logdir: Path, **env) -> list[subprocess.Popen]:
    """run_and_time.sh twice, as node 0 and node 1 of a two-node job (one process each, gloo, c10d on localhost)."""
    common = {**data, "LOGDIR": str(logdir), "NEXP": "1", "SEED": "21", "DGXNNODES": "2",
              "DGXNGPU": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), **env}
    return [start_run_and_time({**common, "NODE_RANK": str(rank)}) for rank in (0, 1)]


def test_two_nodes_on_one_machine_write_one_compliant_log(folders, tmp_path):
    nodes = two_nodes(folders, tmp_path)
    outs = outputs(nodes, timeout=600)
    assert [n.returncode for n in nodes] == [0, 0], [o[1][-3000:] for o in outs]
    (log,) = (tmp_path / "CPU" / "resnet").glob("result_*.txt")
    assert run_stop(log)["metadata"]["status"] == "success"
    assert next(e for e in events(log) if e["key"] == "global_batch_size")["value"] == 2 * int(TINY_CONFIG["BATCHSIZE"])
    assert check_log(log, "4.0.0")[0]
    assert "PASS" in outs[0][0] and "node 0 reports the results" in outs[1][1]


def test_a_dead_node_ends_the_other_one(folders, tmp_path):
    nodes = two_nodes(folders, tmp_path, EPOCHS="30", TARGET_ACCURACY="0.99")
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
    assert "Traceback" not in stderr, stderr[-3000:]
    assert len([line for line in stderr.splitlines() if "error" in line and not line.startswith("===")]) <= 2, \
        stderr[-3000:]


@pytest.mark.parametrize("alone", [0, 1], ids=["node 0 alone", "node 1 alone"])
def test_a_node_whose_peer_never_starts_gives_up_in_one_line(ffcv_data, tmp_path, alone):
    """It says what it waits for (address, port, node count) and ends after RDZV_TIMEOUT_S with one line."""
    port, timeout_s = free_port(), 10
    proc = start_run_and_time({"DATADIR": str(ffcv_data), "LOGDIR": str(tmp_path), "NEXP": "1", "SEED": "21",
                               "DGXNNODES": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
                               "NODE_RANK": str(alone), "RDZV_TIMEOUT_S": str(timeout_s)}, stdout=subprocess.DEVNULL)
    console = Console(proc)
    console.wait_for(rf"^=== node {alone} of 2: waiting up to {timeout_s} s \(RDZV_TIMEOUT_S\) for all 2 nodes at "
                     rf"127\.0\.0\.1:{port}$")
    waiting = time.monotonic()
    stderr = finish(proc, console, timeout_s=timeout_s + 240)
    assert time.monotonic() - waiting < timeout_s + 120, "it did not give up near its timeout"
    assert proc.returncode == 1 and "Traceback" not in stderr, stderr[-3000:]
    errors = [line for line in stderr.splitlines() if not line.startswith("===") and ": warning: " not in line]
    assert len(errors) == 1, stderr[-3000:]
    assert errors[0].startswith(f"run_and_time.sh: error: node {alone}: the rendezvous or store at "
                                f"127.0.0.1:{port} failed"), errors
    assert not list(tmp_path.glob("CPU/resnet/result_*.txt")), "no log claimed and left behind"


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


def test_bind_cpu_binds_each_rank_to_its_socket_or_says_why_not(ffcv_data, tmp_path):
    out = run_and_time({"DATADIR": str(ffcv_data), "LOGDIR": str(tmp_path), "NEXP": "1", "SEED": "5",
                        "DRY_RUN": "1", "BIND_CPU": "1"})
    assert out.returncode == 0, out.stderr
    try:
        from torch.numa.binding import AffinityMode

        AffinityMode("socket")
        assert "--numa-binding=socket" in out.stdout and "BIND_CPU" not in out.stderr
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
    ({"DGXNNODES": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "65536"},
     "MASTER_PORT=65536 is not a whole number >= 1 and <= 65535"),
    ({"DGXNNODES": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "0"}, "MASTER_PORT=0 is not a whole number >= 1"),
    ({"DGXNNODES": "2", "MASTER_ADDR": "127.0.0.1", "RDZV_TIMEOUT_S": "soon"}, "RDZV_TIMEOUT_S=soon is not"),
    ({"NODE_RANK": "1"}, "NODE_RANK=1 MASTER_ADDR= are set but DGXNNODES=1"),
    ({"MASTER_ADDR": "10.0.0.1"}, "MASTER_ADDR=10.0.0.1 are set but DGXNNODES=1"),
    ({"LOADER": "dali", "PYTHONPATH": "SHADOW"}, "(no module named 'nvidia.dali'; pip install"),
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
    if env.get("PYTHONPATH") == "SHADOW":      # a Python without DALI: a plain `nvidia` package hides it
        (tmp_path / "shadow" / "nvidia").mkdir(parents=True)
        (tmp_path / "shadow" / "nvidia" / "__init__.py").touch()
        env = {**env, "PYTHONPATH": str(tmp_path / "shadow")}
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


# ------------------------------------------------------------------------------- a set that can be continued


def wait_for_count(console: Console, pattern: str, count: int, timeout_s=600) -> None:
    """Until `count` lines match `pattern` (the console's own condition, no sleep)."""
    deadline = time.monotonic() + timeout_s
    with console.changed:
        while sum(bool(re.search(pattern, line)) for line in console.lines) < count:
            assert not console.closed and time.monotonic() < deadline, "".join(console.lines)[-3000:]
            console.changed.wait(1)


def test_the_same_command_after_a_stop_runs_only_what_is_left_of_the_set(folders_dali, tmp_path):
    """NEXP=2 without SEED, stopped in experiment 2: the same command resumes experiment 2 with its recorded seed
    (its checkpoint), runs nothing else, and the set ends with two counted logs; the aborted one is recorded as not
    counted. The stop line says what the checkpoint allows; the re-run says what it does before it starts."""
    env = {**folders_dali, "LOGDIR": str(tmp_path), "NEXP": "2", "EPOCHS": "2", "TARGET_ACCURACY": "0.99",
           "CHECKPOINT_DIR": str(tmp_path / "ckpt")}
    proc = start_run_and_time(env, stdout=subprocess.DEVNULL)
    console = Console(proc)
    console.wait_for(r"^=== experiment 2/2: seed ")
    wait_for_count(console, r"^epoch 1/2 ", 2)
    proc.send_signal(signal.SIGTERM)
    stderr = finish(proc, console)
    results = tmp_path / "CPU" / "resnet"
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    assert "stopped by SIGTERM after 2 of 2 experiments" in stderr, stderr[-3000:]
    assert re.search(r"its checkpoint \(epoch \d+, step \d+\) is in .*: run the same command again to continue it",
                     stderr), stderr[-3000:]
    seeds = [first(results / f"result_{i}.txt", "seed")["value"] for i in range(2)]

    again = run_and_time(env)
    assert again.returncode == 1, again.stderr[-3000:]       # a smoke run of 2 that missed its 0.99
    said = [line for line in again.stderr.splitlines() if "continuing the set recorded in" in line]
    assert len(said) == 1 and "1 of 2 experiments ended" in said[0] and "result_1.txt will not count" in said[0]
    assert "resuming the interrupted run" in again.stderr and "experiment 1/2" not in again.stderr
    assert f"experiment 2/2: seed {seeds[1]} exit 2" in again.stderr, again.stderr[-3000:]
    assert sorted(p.name for p in results.glob("result_*.txt")) == ["result_0.txt", "result_1.txt", "result_2.txt"]
    assert first(results / "result_2.txt", "seed")["value"] == seeds[1]
    assert first(results / "result_2.txt", "run_start")["metadata"].get("resumed_from_epoch", 0) >= 1
    record = json.loads((results / "set.json").read_text())
    assert record["not_counted"] == ["result_1.txt"]
    assert [e["logs"] for e in record["experiments"]] == [["result_0.txt"], ["result_1.txt", "result_2.txt"]]
    assert [e["state"] for e in record["experiments"]] == ["ended", "ended"]


def catches_stop_signals(pid: int) -> bool:
    """Whether `pid` has its own handler for SIGHUP (SigCgt bit 0): resnet.train's StopRequest is installed."""
    status = Path(f"/proc/{pid}/status").read_text()
    return bool(int(re.search(r"SigCgt:\s*([0-9a-fA-F]+)", status).group(1), 16) & 1)


def test_a_stop_during_set_up_is_a_stop_with_no_log(synth_tree, tmp_path):
    """SIGINT as soon as the trainer can take it, while it sets up (COMPILE=1: its warm-up compiles for tens of
    seconds): exit 4 at once, its one line, no traceback, no log, nothing timed."""
    tiny = {k: v for k, v in TINY_CONFIG.items()
            if k not in ("DGXSYSTEM", "DGXNGPU", "DGXNNODES", "LOADER", *NOT_SETTINGS)}
    from resnet.settings import BY_ENV

    flags = [w for k, v in tiny.items() for w in (BY_ENV[k].flag, v)]
    proc = subprocess.Popen([sys.executable, "-m", "resnet.train", *flags, "--data", str(synth_tree), "--loader",
                             "torchvision", "--device", "cpu", "--compile", "1", "--results-dir", str(tmp_path / "r")],
                            stderr=subprocess.PIPE, text=True, cwd=REPO)
    console = Console(proc)
    deadline = time.monotonic() + 300
    while proc.poll() is None and not catches_stop_signals(proc.pid):     # its imports take seconds
        assert time.monotonic() < deadline, console.text()
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    stderr = finish(proc, console)
    assert proc.returncode == 4, stderr[-3000:]
    assert "SIGINT: stopped during set-up, before run_start" in stderr and "Traceback" not in stderr, stderr[-3000:]
    assert not list(tmp_path.rglob("result_*.txt")), "a stop before run_start leaves no log"
