"""run.sub under a real SLURM: slurmctld and two slurmd (nodes n1, n2) on this machine (tests/slurm_cluster.sh),
`sbatch -N 2 run.sub` in its bare-metal mode (CONT unset) with a two-node CPU config (gloo) on the tests' tiny
image folders. Five runs across both nodes, each log passing the official checker, the summary as the job's
result; a job cancelled mid-run (scancel) logged as aborted and continued by the same job submitted again
(RESUME=auto); a node that never starts its task and a node without the environment, each ended in one line;
and the cluster stopped with nothing of it left running or on disk.

Where the machine cannot run it (not root, SLURM not installed and not installable) the module is skipped with
slurm_cluster.sh's one line. As root it installs Debian's slurm-wlm and munge when they are missing (CI)."""
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from compliance.summarize import summarize_dir
from tests.conftest import NO_JIT, REPO, TINY_CONFIG, events, run_stop

CLUSTER_SH = REPO / "tests" / "slurm_cluster.sh"
ENDED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE",
         "PREEMPTED"}
# The two-node CPU config: TINY_CONFIG's shape on two nodes of one process each (global batch 2 x 16 = 32),
# through torchvision's loader on the image folders (it starts sooner than FFCV: the launcher is the point here).
# The two nodes share this machine's cores: one torch thread each (with two each, on a loaded 2-core machine, an
# epoch took 5x longer). NEXP, SEED, EPOCHS, EVAL_EVERY_EPOCHS, TARGET_ACCURACY, RDZV_TIMEOUT_S: the job's
# environment may set them.
FIXED = {**{k: v for k, v in TINY_CONFIG.items() if k not in NO_JIT}, "DGXSYSTEM": "CPU_2x1", "DGXNNODES": "2",
         "DEVICE": "cpu", "LOADER": "torchvision", "OMP_NUM_THREADS": "1"}   # (no FFCV here: no NUMBA_DISABLE_JIT)
OVERRIDABLE = ("NEXP", "EPOCHS", "EVAL_EVERY_EPOCHS", "TARGET_ACCURACY")
TARGET = TINY_CONFIG["TARGET_ACCURACY"]


def write_config(folder: Path, data: Path) -> Path:
    """config_CPU_2x1.sh, as a site would write one (it names itself in CONFIG_FILE)."""
    lines = ['CONFIG_FILE=$(readlink -f "${BASH_SOURCE[0]}")', "export CONFIG_FILE", f"export DATADIR={data}",
             'export WALLTIME=30']
    for name, value in FIXED.items():
        lines.append(f'export {name}="${{{name}:-{value}}}"' if name in OVERRIDABLE else f"export {name}={value}")
    lines.append('export NEXP="${NEXP:-5}"')
    path = folder / "config_CPU_2x1.sh"
    path.write_text("\n".join(lines) + "\n")
    return path


class Cluster:
    """The running cluster: submit run.sub as a user does, and follow its jobs through scontrol."""

    def __init__(self, state: Path):
        self.state = state
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_", "SRUN_"))}
        # The nodes run the submit directory's run_and_time.sh with this interpreter's environment (VENV).
        self.env = {**env, "SLURM_CONF": str(state / "slurm.conf"), "VENV": sys.prefix,
                    "PATH": f"{Path(sys.executable).parent}:{env['PATH']}"}

    def sbatch(self, config: Path, logdir: Path, **env) -> str:
        """`source config_CPU_2x1.sh && sbatch -N "$DGXNNODES" run.sub` from the repository: the job's id."""
        out = subprocess.run(["bash", "-c", 'source "$1" && exec sbatch --parsable -N "$DGXNNODES" -o "$2" run.sub',
                              "sbatch", str(config), str(logdir / "slurm-%j.out")], cwd=REPO, capture_output=True,
                             text=True, timeout=60,
                             env={**self.env, "LOGDIR": str(logdir), "MASTER_PORT": str(free_port()), **env})
        assert out.returncode == 0, out.stderr
        return out.stdout.strip().split(";")[0]

    def job(self, job: str) -> dict:
        out = subprocess.run(["scontrol", "show", "job", "-o", job], capture_output=True, text=True, timeout=60,
                             env=self.env)
        assert out.returncode == 0, out.stderr
        return dict(re.findall(r"(\w+)=(\S*)", out.stdout))

    def wait(self, job: str, timeout_s: float, until=lambda info: info["JobState"] in ENDED) -> dict:
        """Poll the job's state until `until` holds (default: the job has ended); its scontrol record."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            info = self.job(job)
            if until(info):
                return info
            time.sleep(0.5)
        subprocess.run(["scancel", job], env=self.env, timeout=60)
        pytest.fail(f"job {job} still {self.job(job)['JobState']} after {timeout_s} s")


def free_port() -> int:
    """A port for node 0's store: other tests on this machine may hold run.sub's default, 29500."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pids(state: Path) -> list[int]:
    return [int(p.read_text()) for p in state.glob("*.pid") if p.read_text().strip()]


def running(pid: int) -> bool:
    """Alive and not a zombie (a daemon's parent, init here, reaps it when it will)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    state = tmp_path_factory.mktemp("slurm") / "cluster"
    start = subprocess.run(["bash", CLUSTER_SH, "start", str(state)], capture_output=True, text=True, timeout=900,
                           env={**os.environ, "INSTALL": "1"})
    if start.returncode == 3:
        pytest.skip(start.stderr.strip())
    assert start.returncode == 0, start.stderr
    yield Cluster(state)
    if state.exists():
        subprocess.run(["bash", CLUSTER_SH, "stop", str(state)], capture_output=True, timeout=300)


@pytest.fixture(scope="module")
def config(synth_tree, tmp_path_factory) -> Path:
    return write_config(tmp_path_factory.mktemp("config"), synth_tree)


def consoles(logdir: Path) -> list[Path]:
    return sorted((logdir / "CPU_2x1").glob("console_*.log"))


def test_five_runs_across_two_nodes_pass_the_checker_and_the_summary_is_the_job_result(cluster, config, tmp_path):
    job = cluster.sbatch(config, tmp_path, SEED="100")
    info = cluster.wait(job, timeout_s=2400)
    output = (tmp_path / f"slurm-{job}.out").read_text()
    # Valid at the tests' target 0.1, below MLPerf's 0.759: no log of it can count, so the set exits 5, not 0.
    assert (info["JobState"], info["ExitCode"]) == ("FAILED", "5:0"), output[-4000:]
    assert info["NodeList"] == "n[1-2]" and info["NumNodes"] == "2"
    results = tmp_path / "CPU_2x1" / "resnet"
    logs = sorted(results.glob("result_*.txt"))
    assert [p.name for p in logs] == [f"result_{i}.txt" for i in range(5)]
    checked = subprocess.run([sys.executable, "-m", "compliance.check", "--target", TARGET, *map(str, logs)],
                             capture_output=True, text=True, timeout=600)
    assert checked.returncode == 0 and checked.stdout.count("PASS") == 5, checked.stdout + checked.stderr
    for i, log in enumerate(logs):
        assert next(e["value"] for e in events(log) if e["key"] == "seed") == 100 + i
        assert run_stop(log)["metadata"]["status"] == "success"
        # Two ranks' worth of samples in every step: one process on each node.
        assert next(e["value"] for e in events(log) if e["key"] == "global_batch_size") == 2 * int(FIXED["BATCHSIZE"])
    # Each experiment's console: node 1 (SLURM_NODEID 1, the second task, on n2) trained and ended cleanly.
    assert len(consoles(tmp_path)) == 5
    for console in consoles(tmp_path):
        text = console.read_text()
        assert "=== node 1: 1 experiments, 0 ended in an error here" in text and "Traceback" not in text, text[-3000:]
    # The job's last words are the set's summary and verdict (valid at its own target: exit 5, said once).
    assert summarize_dir(results, target=float(TARGET))["valid"]
    assert output.count("not a valid submission (no log of it can count; exit 5)") == 1, output[-3000:]
    assert re.search(rf"{re.escape(str(results))}: score [0-9.]+ min", output), output[-3000:]


def test_a_cancelled_job_is_logged_aborted_and_the_same_job_submitted_again_continues_it(cluster, config, tmp_path):
    """scancel mid-run: SLURM sends SIGTERM to every task, the trainer checkpoints and logs run_stop aborted
    (KillWait gives it 60 s before SIGKILL). The same sbatch line then runs only what is left of the set: it resumes
    the interrupted experiment 1 (RESUME=auto) and runs experiment 2, and the set ends with two counted logs, seeds
    31 and 32, beside the aborted one."""
    ckpt = tmp_path / "ckpt"
    env = {"NEXP": "2", "SEED": "31", "EPOCHS": "3", "EVAL_EVERY_EPOCHS": "3", "CHECKPOINT_DIR": str(ckpt)}
    job = cluster.sbatch(config, tmp_path, **env)
    results = tmp_path / "CPU_2x1" / "resnet"
    log = results / "result_0.txt"

    def trained_an_epoch(info: dict) -> bool:
        assert info["JobState"] not in ENDED, f"job {job} ended before it could be cancelled"
        return log.exists() and '"key": "epoch_stop"' in log.read_text()
    cluster.wait(job, timeout_s=900, until=trained_an_epoch)
    subprocess.run(["scancel", job], env=cluster.env, check=True, timeout=60)
    info = cluster.wait(job, timeout_s=300)
    assert info["JobState"] == "CANCELLED"
    stop = run_stop(log)
    assert stop["metadata"]["status"] == "aborted" and stop["metadata"].get("reason") == "signal SIGTERM", stop
    assert (ckpt / "last.pt").is_file()
    (console,) = consoles(tmp_path)
    assert "SIGTERM: checkpoint written at epoch" in console.read_text(), console.read_text()[-3000:]

    again = cluster.sbatch(config, tmp_path, **env)
    info = cluster.wait(again, timeout_s=1500)
    output = (tmp_path / f"slurm-{again}.out").read_text()
    assert (info["JobState"], info["ExitCode"]) == ("COMPLETED", "0:0"), output[-4000:]   # a smoke run of 2
    said = [line for line in output.splitlines() if "continuing the set recorded in" in line]
    assert len(said) == 1 and "0 of 2 experiments ended" in said[0] and "result_0.txt will not count" in said[0]
    text = consoles(tmp_path)[1].read_text()
    assert "resuming the interrupted run" in text and "seed 31 exit 0 (reached the target)" in text, text[-3000:]
    resumed = results / "result_1.txt"
    start = next(e for e in events(resumed) if e["key"] == "run_start")
    assert start["metadata"].get("resumed_from_epoch", 0) >= 1
    # The set: two counted logs with the set's seeds, the aborted one recorded as not counted.
    record = json.loads((results / "set.json").read_text())
    assert record["not_counted"] == ["result_0.txt"]
    counted = sorted({p.name for p in results.glob("result_*.txt")} - set(record["not_counted"]))
    assert counted == ["result_1.txt", "result_2.txt"]
    assert [next(e["value"] for e in events(results / name) if e["key"] == "seed") for name in counted] == [31, 32]
    for name in counted:
        assert run_stop(results / name)["metadata"]["status"] == "success"
    checked = subprocess.run([sys.executable, "-m", "compliance.check", "--target", TARGET,
                              *(str(results / name) for name in counted)], capture_output=True, text=True, timeout=300)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def our_errors(text: str) -> list[str]:
    return [line for line in text.splitlines() if re.match(r"(run\.sub|run_and_time\.sh): error: ", line)]


def test_a_node_that_never_starts_its_task_fails_in_one_line_within_the_rendezvous_timeout(cluster, config,
                                                                                            tmp_path):
    """n2's training task is held before it starts (the cluster's TaskProlog waits while hold_n2 exists): node 0
    waits RDZV_TIMEOUT_S for it, then ends the experiment with one line naming the rendezvous."""
    timeout_s = 10
    hold = cluster.state / "hold_n2"
    hold.touch()
    try:
        job = cluster.sbatch(config, tmp_path, NEXP="1", SEED="41", RDZV_TIMEOUT_S=str(timeout_s))
        waiting = re.compile(rf"=== node 0 of 2: waiting up to {timeout_s} s \(RDZV_TIMEOUT_S\)")

        def node_0_waits(info: dict) -> bool:
            assert info["JobState"] not in ENDED
            return any(waiting.search(c.read_text()) for c in consoles(tmp_path))
        cluster.wait(job, timeout_s=900, until=node_0_waits)
        waited = time.monotonic()
        cluster.wait(job, timeout_s=timeout_s + 240, until=lambda info: bool(our_errors(consoles(tmp_path)[0]
                                                                                         .read_text())))
        assert time.monotonic() - waited < timeout_s + 120, "node 0 did not give up near its timeout"
    finally:
        hold.unlink()
    info = cluster.wait(job, timeout_s=300)
    text = consoles(tmp_path)[0].read_text()
    assert info["JobState"] == "FAILED" and "Traceback" not in text, text[-3000:]
    # node 0 says one line; n2, released once node 0 has given up, may say its own before srun's --wait ends it
    lines = our_errors(text)
    (line,) = [line for line in lines if "node 0:" in line]
    assert line.startswith("run_and_time.sh: error: node 0: the rendezvous or store at 127.0.0.1:"), line
    assert all(re.match(r"run_and_time\.sh: error: node [01]: the rendezvous or store", line) for line in lines), lines
    assert not list((tmp_path / "CPU_2x1" / "resnet").glob("result_*.txt")), "no log claimed and left behind"


def test_a_node_without_the_environment_fails_in_one_line_naming_it(cluster, config, tmp_path):
    missing = tmp_path / "no-venv"
    job = cluster.sbatch(config, tmp_path, NEXP="1", VENV=str(missing))
    info = cluster.wait(job, timeout_s=300)
    output = (tmp_path / f"slurm-{job}.out").read_text()
    assert info["JobState"] == "FAILED", output
    (line,) = output.strip().splitlines()
    assert re.fullmatch(rf"run\.sub: error: node n[12]: no virtual environment at {missing} .*set VENV to one", line)
    assert not (tmp_path / "CPU_2x1").exists(), "nothing ran"


def test_stopping_the_cluster_leaves_nothing_behind(cluster):
    daemons = pids(cluster.state)
    assert len(daemons) == 4, "munged, slurmctld and two slurmd"
    stop = subprocess.run(["bash", CLUSTER_SH, "stop", str(cluster.state)], capture_output=True, text=True,
                          timeout=300)
    assert stop.returncode == 0, stop.stderr
    assert not [p for p in daemons if running(p)], "a daemon outlived stop"
    assert not cluster.state.exists()
    stepds = subprocess.run(["pgrep", "-f", "^slurmstepd"], capture_output=True, text=True).stdout.split()
    assert not [p for p in stepds if str(cluster.state).encode() in Path(f"/proc/{p}/environ").read_bytes()]


# ------------------------------------------------------------- run.sub's own checks (DRY_RUN=1: no SLURM needed)


@pytest.mark.parametrize("cont", ["none", ""], ids=["CONT=none", "CONT unset"])
def test_bare_metal_runs_the_submit_directory_launcher_with_its_environment(cont, tmp_path):
    from tests.test_launchers import SLURM_2, dry_run, option_values

    ckpt = tmp_path / "ckpt"
    cmds, _ = dry_run("run.sub", tmp_path, DGXSYSTEM="DGXA100_2x8", NEXP="2", SEED="7", **SLURM_2, CONT=cont,
                      SLURM_SUBMIT_DIR=str(REPO), CHECKPOINT_DIR=str(ckpt))
    venv = os.path.realpath(REPO / ".venv")
    sruns = [c for c in cmds if c[0] == "srun"]
    assert not [a for c in sruns for a in c if a.startswith("--container")], "no container on bare metal"
    check = sruns[0]
    assert check[-6:-4] == ["bash", "-c"] and check[-3:] == ["check", venv, str(REPO)], check
    trains = [c for c in sruns if c[-1] == f"{REPO}/run_and_time.sh"]
    assert len(trains) == 2
    for i, train in enumerate(trains):
        assert option_values(train, "--chdir") == [str(REPO)] and option_values(train, "--nodes") == ["2"]
        assert option_values(train, "--gpus-per-node") == ["8"]
        env = dict(e.split("=", 1) for e in option_values(train, "--export")[0].split(",")[1:])
        assert (env["DATADIR"], env["LOGDIR"], env["CHECKPOINT_DIR"]) == (
            str(tmp_path / "data"), str(tmp_path / "results"), str(ckpt))
        assert env["CONFIG_FILE"] == str(REPO / "config_DGXA100_2x8.sh"), "the nodes check the config they source"
        assert (env["SEED"], env["NEXP"], env["EXPERIMENT_INDEX"], env["RESUME"], env["MASTER_ADDR"]) == (
            "7", "2", str(i), "auto", "node001")
    assert cmds[-1] == trains[-1], "the last experiment's run_and_time.sh gives the set's verdict"


SPLIT = [  # a setting whose value srun --export (or --container-mounts) would split at its comma
    ({"RESUME": "auto,NEXP=99"}, "RESUME=", "is not auto, 0 or 1"),
    ({"RDZV_TIMEOUT_S": "5,SEED=1"}, "RDZV_TIMEOUT_S=", "is not a whole number >= 1"),
    ({"DATADIR": "/data,x"}, "DATADIR=", "has a comma"),
    ({"LOGDIR": "/logs,SEED=1"}, "LOGDIR=", "has a comma"),
    ({"CHECKPOINT_DIR": "/ckpt,RESUME=1"}, "CHECKPOINT_DIR=", "has a comma"),
]


@pytest.mark.parametrize("cont", ["img", "none"], ids=["container", "bare metal"])
@pytest.mark.parametrize("case", SPLIT, ids=[next(iter(c[0])) for c in SPLIT])
def test_a_value_srun_would_split_at_a_comma_is_refused_in_one_line(case, cont, tmp_path):
    from tests.test_launchers import SLURM_2, fake_bin

    env, name, says = case
    (tmp_path / "data").mkdir()
    base = dict(PATH=f"{fake_bin(tmp_path)}:/usr/bin:/bin", HOME=str(tmp_path), CONT=cont, DGXSYSTEM="DGXA100_2x8",
                DATADIR=str(tmp_path / "data"), LOGDIR=str(tmp_path / "results"), SLURM_SUBMIT_DIR=str(REPO),
                **SLURM_2)
    proc = subprocess.run(["bash", REPO / "run.sub"], env={**base, **env}, cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout == "", proc.stderr
    (error,) = proc.stderr.strip().splitlines()
    assert error.startswith(f"run.sub: error: {name}") and says in error, error
    assert not (tmp_path / "called").exists() and not (tmp_path / "results").exists(), "nothing ran"


# ------------------------------------------------------------------------------- the cluster script itself


def test_the_cluster_script_lints_clean():
    from tests.test_launchers import tool

    lint = subprocess.run([tool("shellcheck"), CLUSTER_SH], capture_output=True, text=True, timeout=120)
    assert lint.returncode == 0, lint.stdout + lint.stderr


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root to become another user")
@pytest.mark.parametrize("path,says", [("/usr/sbin:/usr/bin:/bin", "the SLURM daemons of this test run as root"),
                                       ("/usr/bin:/bin", "SLURM is not installed and only root can install it")],
                         ids=["not root", "not root, no SLURM"])
def test_where_it_cannot_run_it_says_so_in_one_line(path, says, tmp_path):
    """Exit status 3 and one line (the module's skip reason); nothing created."""
    out = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "bash", CLUSTER_SH,
                          "start", str(tmp_path / "cluster")], capture_output=True, text=True, timeout=120,
                         env={"PATH": path, "INSTALL": "1"})
    assert out.returncode == 3, out.stderr
    (line,) = out.stderr.strip().splitlines()
    assert line.startswith("slurm_cluster.sh: cannot run here: ") and says in line, line
    assert not (tmp_path / "cluster").exists()
