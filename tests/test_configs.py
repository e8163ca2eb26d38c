"""The system configs: each exports only contract settings, is consistent (global batch, crops, evaluation
schedule), passes the settings check, sources the same from anywhere, names itself in CONFIG_FILE; the GPU
configs ask for CUDA, carry a must-change SUBMISSION_ORG, and leave the EMA to the recipe."""
import argparse
import re
import sys
from pathlib import Path

import pytest

from resnet.launch import KNOWN_NAMES
from tests.conftest import sh, source_config

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted(REPO.glob("config_*.sh"))

# A config may export the settings resnet.launch knows (its one table) and nothing else.
CONTRACT_NAMES = KNOWN_NAMES - {"CACHE_CLEARED"}
REQUIRED_NAMES = {"DGXSYSTEM", "DGXNGPU", "DGXNNODES", "WALLTIME", "NEXP", "DATADIR", "LOGDIR", "LOADER", "RECIPE",
                  "ARCH", "EPOCHS", "BATCHSIZE", "EVAL_EVERY_EPOCHS", "TARGET_ACCURACY", "PRECISION", "NUM_WORKERS",
                  "TRAIN_CROP_PX", "EVAL_CROP_PX", "EVAL_RESIZE_PX", "CONFIG_FILE"}
A100_MILD_GLOBAL_BATCH = {"DGXA100": 2048, "DGXA100_2x8": 2048}
GPU_CONFIGS = [c for c in CONFIGS if c.name != "config_CPU.sh"]


def config_problems(path: Path) -> list[str]:
    """Everything inconsistent in one config file (empty when it is fine)."""
    from resnet.data.loaders import LOADERS, declared
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
    if env["LOADER"] not in LOADERS:
        problems.append(f"LOADER={env['LOADER']}")
    elif ints["NUM_WORKERS"] < declared(env["LOADER"]).min_workers:
        problems.append(f"NUM_WORKERS={ints['NUM_WORKERS']}: LOADER={env['LOADER']} needs at least "
                        f"{declared(env['LOADER']).min_workers}")
    elif env.get("DECODE_TO_SIDE") == "1" and not declared(env["LOADER"]).decode_to_side:
        problems.append(f"DECODE_TO_SIDE=1: LOADER={env['LOADER']} does not decode to each epoch's side")
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


# ------------------------------------------------------------------------------------------------- configs


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_config_is_consistent(config):
    assert config_problems(config) == []


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_config_passes_the_settings_check(config):
    check = sh(sys.executable, "-m", "resnet.launch", "check-config", config)
    assert check.returncode == 0, check.stderr


def test_config_sources_the_same_from_anywhere(tmp_path):
    for config in CONFIGS:
        assert source_config(config, cwd=tmp_path) == source_config(config)


def test_user_settings_override_but_recipe_values_do_not():
    env = source_config(REPO / "config_DGXH100.sh", NEXP=2, DATADIR="/scratch/in", LOGDIR="/scratch/out",
                        SEED=9, EPOCHS=3, PRECISION="fp32")
    assert (env["NEXP"], env["DATADIR"], env["LOGDIR"], env["SEED"]) == ("2", "/scratch/in", "/scratch/out", "9")
    assert (env["EPOCHS"], env["PRECISION"]) == ("28", "fp16")
    assert "SEED" not in source_config(REPO / "config_DGXA100.sh"), "unset SEED = a fresh seed per experiment"


def test_the_mild_submission_config():
    env = source_config(REPO / "config_DGXA100.sh")
    wanted = dict(DGXSYSTEM="DGXA100", DGXNGPU="8", DGXNNODES="1", BATCHSIZE="256", EPOCHS="28",
                  EVAL_EVERY_EPOCHS="3", PRECISION="fp16", NUM_WORKERS="8", DEVICE="cuda", TRAIN_CROP_PX="176", EVAL_CROP_PX="224",
                  EVAL_RESIZE_PX="232", TARGET_ACCURACY="0.759", ARCH="resnet50", RECIPE="mild", LOADER="ffcv",
                  WARMUP_EPOCHS="8", NEXP="5")
    assert {k: env[k] for k in wanted} == wanted


def test_config_check_catches_a_typo_and_a_wrong_batch(tmp_path):
    good = (REPO / "config_DGXA100.sh").read_text()
    bad = tmp_path / "config_TYPO.sh"
    assert config_problems(REPO / "config_DGXA100.sh") == []
    bad.write_text(good.replace("export EPOCHS=", "export EPOCH="))
    problems = config_problems(bad)
    assert "exports EPOCH, which is no contract setting" in problems and "does not export EPOCHS" in problems
    bad.write_text(good.replace("export BATCHSIZE=256", "export BATCHSIZE=128"))
    assert any("global batch 1024" in p for p in config_problems(bad))
    bad.write_text(good.replace("export EVAL_CROP_PX=224", "export EVAL_CROP_PX=240"))
    assert any("EVAL_CROP_PX 240 > EVAL_RESIZE_PX 232" in p for p in config_problems(bad))


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_config_names_the_file_that_was_sourced(config, tmp_path):
    """run_and_time.sh checks CONFIG_FILE for typos: it must be this file, also through a symlink."""
    assert source_config(config)["CONFIG_FILE"] == str(config.resolve())
    link = tmp_path / "config_LINK.sh"
    link.symlink_to(config)
    assert source_config(link)["CONFIG_FILE"] == str(config.resolve())


@pytest.mark.parametrize("config", GPU_CONFIGS, ids=lambda p: p.name)
def test_gpu_configs_ask_for_cuda_and_a_real_org(config):
    env = source_config(config)
    assert env["DEVICE"] == "cuda", "a container without CUDA must fail, not train on 8 CPU processes"
    assert env["SUBMISSION_ORG"] not in ("", "mlperf-resnet")
    assert source_config(config, SUBMISSION_ORG="Acme")["SUBMISSION_ORG"] == "Acme"
    sourced = [config] + [REPO / name for name in re.findall(r"source=(config_\w+\.sh)", config.read_text())]
    assert any("MUST CHANGE" in c.read_text() and "SUBMISSION_ORG" in c.read_text() for c in sourced)


def resolved_recipe(env: dict):
    """The recipe a config's settings give, as the trainer resolves it."""
    from resnet.launch import env_to_flags
    from resnet.settings import add_train_arguments, read, recipe_from_args

    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    args = parser.parse_args(env_to_flags(env))
    read(args)
    return recipe_from_args(args, world_size=int(env["DGXNGPU"]) * int(env["DGXNNODES"]))


@pytest.mark.parametrize("config", GPU_CONFIGS, ids=lambda p: p.name)
def test_configs_leave_the_ema_to_the_recipe(config):
    """The recipe counts the EMA in epochs, so it fits every global batch and data set (tests/test_ema.py):
    a config that set it would have to be changed with its batch."""
    assert resolved_recipe(source_config(config)).ema
    assert "EMA_" not in config.read_text().replace("# No EMA settings", ""), "the recipe defines the EMA"


# ------------------------------------------------------------------------- launch settings from evidence


def test_the_h100_config_trains_in_fp16_from_imagenet_folders_with_dali():
    """fp16 as MosaicML and NVIDIA trained (bf16 one commented line away); DALI decodes on the GPU and reads the
    ImageNet layout, so DATADIR defaults to it, and a user's DATADIR still wins."""
    env = source_config(REPO / "config_DGXH100.sh")
    assert (env["PRECISION"], env["LOADER"], env["DATADIR"]) == ("fp16", "dali", "/data/imagenet")
    assert "# export PRECISION=bf16" in (REPO / "config_DGXH100.sh").read_text()
    assert source_config(REPO / "config_DGXH100.sh", DATADIR="/scratch/in")["DATADIR"] == "/scratch/in"
    a100 = source_config(REPO / "config_DGXA100.sh")
    assert (a100["LOADER"], a100["DATADIR"]) == ("ffcv", "/data/imagenet-ffcv")
    assert "LOADER=dali DATADIR=/data/imagenet" in (REPO / "config_DGXA100.sh").read_text(), "how to switch"


def test_fidelity_states_the_a100_loader_workers_of_the_config():
    """docs/FIDELITY.md calls the loader 'same' as the submission's 8 workers: the config must run 8."""
    row = next(line for line in (REPO / "docs" / "FIDELITY.md").read_text().splitlines()
               if line.startswith("| loader "))
    submitted, ours = row.split("|")[2:4]
    assert submitted.strip().startswith("8 workers") and "`NUM_WORKERS=8`" in ours
    assert source_config(REPO / "config_DGXA100.sh")["NUM_WORKERS"] == "8"


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_a_crafted_nexp_runs_nothing_when_the_config_is_sourced(config, tmp_path):
    """WALLTIME is bash arithmetic: NEXP='a[$(touch FILE)]' would run touch there."""
    pwned = tmp_path / "pwned"
    env = source_config(config, NEXP=f"a[$(touch {pwned})]")
    assert not pwned.exists(), "sourcing the config ran the command hidden in NEXP"
    assert "WALLTIME" not in env and env["NEXP"] == f"a[$(touch {pwned})]"   # run_and_time.sh refuses it next
