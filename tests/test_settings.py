"""The settings table: every bad setting fails with one line naming it and the fix, exits non-zero and writes
nothing; flags, environment and recipe values all come from the one table, so that a new hyper-parameter is
one Recipe field plus one row."""
import argparse
import dataclasses
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

from resnet import errors, launch, settings
from resnet.errors import SettingError
from resnet.recipe import MILD, PRECISIONS, RECIPES, Recipe, amp_dtype, needs_grad_scaler
from resnet.settings import SETTINGS, Setting, add_train_arguments, validate_train_args

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def world(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for name in ("train.beton", "val.beton"):
        (data / name).write_bytes(b"")
    (data / "train").mkdir()
    (data / "val").mkdir()
    results = tmp_path / "results"
    results.mkdir()
    (results / "result_0.txt").write_text("an earlier run\n")
    return tmp_path, data, results


def snapshot(root: Path) -> dict:
    return {p: p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# The train command's argument handling, run through the command layer (errors.main) as `train` runs it.
VALIDATE = types.SimpleNamespace(NAME="train", __doc__="", add_arguments=add_train_arguments,
                                 run=lambda args: (validate_train_args(args, world_size=1), 0)[1])

BAD_FLAGS = [
    (["--recipe", "spicy"], f"--recipe (RECIPE): 'spicy' is not one of {', '.join(RECIPES)}"),
    (["--arch", "vgg16"], "--arch (ARCH): 'vgg16' is not one of resnet18"),
    (["--epochs", "0"], "--epochs (EPOCHS): 0 is not in [1, inf)"),
    (["--epochs", "ten"], "--epochs (EPOCHS): 'ten' is not a whole number"),
    (["--epochs", "2", "--eval-every-epochs", "3"], "fewer than the evaluation interval"),
    (["--eval-every-epochs", "-1"], "--eval-every-epochs (EVAL_EVERY_EPOCHS): -1 is not in [1, inf)"),
    (["--batch-size", "0"], "--batch-size (BATCHSIZE): 0 is not in [1, inf)"),
    (["--batch-size", "8", "--global-batch-size", "16"], "given together with --batch-size"),
    (["--lr", "0"], "--lr (LR): 0.0 is not in (0, inf)"),
    (["--lr", "-0.1"], "--lr (LR): -0.1 is not in (0, inf)"),
    (["--lr", "nan"], "--lr (LR): nan is not a finite number"),
    (["--lr", "inf"], "--lr (LR): inf is not a finite number"),
    (["--lr=-inf"], "--lr (LR): -inf is not a finite number"),
    (["--warmup-epochs", "40", "--epochs", "28"], "--warmup-epochs (WARMUP_EPOCHS): 40.0 is more than the 28"),
    (["--warmup-epochs", "nan"], "--warmup-epochs (WARMUP_EPOCHS): nan is not a finite number"),
    (["--target-accuracy", "75.9"], "--target-accuracy (TARGET_ACCURACY): 75.9 is not in (0, 1]"),
    (["--target-accuracy", "0"], "is not in (0, 1]"),
    (["--target-accuracy", "nan"], "--target-accuracy (TARGET_ACCURACY): nan is not a finite number"),
    (["--precision", "fp4"], f"--precision (PRECISION): 'fp4' is not one of {', '.join(PRECISIONS)}"),
    (["--precision", "fp16", "--device", "cpu"], "--precision (PRECISION): fp16 needs a CUDA GPU"),
    (["--eval-precision", "fp64"], "--eval-precision (EVAL_PRECISION): 'fp64' is not one of"),
    (["--eval-precision", "fp16", "--device", "cpu"], "--eval-precision (EVAL_PRECISION): fp16 needs a CUDA GPU"),
    (["--workers", "-2"], "--workers (NUM_WORKERS): -2 is not in [0, inf)"),
    (["--eval-crop-px", "256", "--eval-resize-px", "232"], "--eval-crop-px (EVAL_CROP_PX): 256 is larger"),
    (["--train-crop-px", "0"], "--train-crop-px (TRAIN_CROP_PX): 0 is not in [1, inf)"),
    (["--crop-scale-min", "0"], "--crop-scale-min (CROP_SCALE_MIN): 0.0 is not in (0, 1]"),
    (["--crop-scale-min", "1.5"], "--crop-scale-min (CROP_SCALE_MIN): 1.5 is not in (0, 1]"),
    (["--crop-scale-min", "nan"], "--crop-scale-min (CROP_SCALE_MIN): nan is not a finite number"),
    (["--resize-initial-scale", "0"], "--resize-initial-scale (RESIZE_INITIAL_SCALE): 0.0 is not in (0, 1]"),
    (["--train-crop-px", "32", "--resize-initial-scale", "0.05"],
     "--resize-initial-scale (RESIZE_INITIAL_SCALE): 0.05 x TRAIN_CROP_PX 32 rounds to a first training side of 0 px"),
    (["--resize-delay", "1.2"], "--resize-delay (RESIZE_DELAY): 1.2 is not in [0, 1]"),
    (["--resize-delay", "0.6", "--resize-finetune", "0.6"], "--resize-finetune (RESIZE_FINETUNE): 0.6 plus"),
    (["--blurpool", "yes"], "--blurpool (BLURPOOL): 'yes' is not 0 or 1"),
    (["--ema", "2"], "--ema (EMA): '2' is not 0 or 1"),
    (["--log-bias-init", "true"], "--log-bias-init (LOG_BIAS_INIT): 'true' is not 0 or 1"),
    (["--ema-half-life-epochs", "0"], "--ema-half-life-epochs (EMA_HALF_LIFE_EPOCHS): 0.0 is not in (0, inf)"),
    (["--ema-every-epochs", "1/32"], "--ema-every-epochs (EMA_EVERY_EPOCHS): '1/32' is not a number"),
    (["--ema-every-epochs", "nan"], "--ema-every-epochs (EMA_EVERY_EPOCHS): nan is not a finite number"),
    (["--ema-every-epochs", "29"], "--ema-every-epochs (EMA_EVERY_EPOCHS): 29.0 epochs between EMA updates is more "
                                   "than the 28 epochs of the run"),
    (["--loss", "mse"], "--loss (LOSS): 'mse' is not one of bce, ce"),
    (["--label-smoothing", "1"], "--label-smoothing (LABEL_SMOOTHING): 1.0 is not in [0, 1)"),
    (["--label-smoothing", "inf"], "--label-smoothing (LABEL_SMOOTHING): inf is not a finite number"),
    (["--loader", "tfrecord"], "--loader (LOADER): 'tfrecord' is not one of "
                               + ", ".join(settings.BY_FLAG["--loader"].choices)),
    (["--device", "tpu"], "--device (DEVICE): 'tpu' is not one of auto, cpu, cuda"),
    (["--status", "available"], "--status (SUBMISSION_STATUS): 'available' is not one of onprem"),
    (["--org", " "], "--org (SUBMISSION_ORG): is empty"),
    (["--seed", "-5"], "--seed: -5 is not in [0, 2147483647]"),
    (["--seed", "2147483648"], "--seed: 2147483648 is not in [0, 2147483647]"),
    (["--compile", "yes"], "--compile (COMPILE): 'yes' is not 0 or 1"),
    (["--checkpoint-every-minutes", "5"], "needs a checkpoint folder"),
    (["--checkpoint-dir", "{tmp}/ck", "--checkpoint-every-minutes", "-1"],
     "--checkpoint-every-minutes (CHECKPOINT_EVERY_MINUTES): -1.0 is not in (0, inf)"),
    (["--checkpoint-dir", "{tmp}/ck", "--checkpoint-every-minutes", "nan"],
     "--checkpoint-every-minutes (CHECKPOINT_EVERY_MINUTES): nan is not a finite number"),
    (["--dist-timeout-s", "nan"], "--dist-timeout-s: nan is not a finite number"),
    (["--resume"], "--resume: needs the killed run's checkpoint folder"),
    (["--data", "{tmp}/nowhere"], "--data (DATADIR): {tmp}/nowhere does not exist"),
    (["--data", "{tmp}"], "--data (DATADIR): {tmp}/train.beton is missing"),
    (["--loader", "torchvision", "--data", "{tmp}/results"], "{tmp}/results/train is missing"),
    (["--log-file", "{tmp}/results/result_0.txt"], "already exists and result logs are never overwritten"),
    (["--results-dir", "{tmp}/results/result_0.txt/resnet"],
     "--results-dir (LOGDIR): {tmp}/results/result_0.txt/resnet is not writable"),
]


@pytest.mark.parametrize("flags,message", BAD_FLAGS, ids=[" ".join(f) for f, _ in BAD_FLAGS])
def test_bad_setting_fails_with_one_line_and_writes_nothing(world, flags, message, capsys):
    tmp, data, results = world
    before = snapshot(tmp)
    flags = [f.replace("{tmp}", str(tmp)) for f in flags]
    base = ["--data", str(data), "--results-dir", str(results), "--device", "cpu", "--precision", "fp32"]
    # later flags win in argparse, so the case's own --data/--precision/--device override the base
    code = errors.main(VALIDATE, base + flags)
    out = capsys.readouterr()
    assert code == 1 and out.out == ""
    assert out.err.startswith("mlperf-resnet: error: ") and out.err.count("\n") == 1, out.err
    assert message.replace("{tmp}", str(tmp)) in out.err
    assert snapshot(tmp) == before            # nothing written, the earlier log untouched


def test_library_code_raises_a_typed_error_not_systemexit(world):
    _, data, results = world
    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    with pytest.raises(SettingError, match=r"^--lr \(LR\): nan is not a finite number; give a finite value$"):
        validate_train_args(parser.parse_args(["--data", str(data), "--lr", "nan"]), world_size=1)


def test_good_settings_are_converted_and_run_defaults_come_from_the_table(world):
    _, data, results = world
    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    args = parser.parse_args(["--data", str(data), "--results-dir", str(results), "--device", "cpu",
                              "--epochs", "6", "--warmup-epochs", "1", "--lr", "0.5", "--blurpool", "0",
                              "--crop-scale-min", "0.35", "--target-accuracy", "0.8", "--batch-size", "16"])
    assert validate_train_args(args, world_size=2) == []
    assert (args.epochs, args.lr, args.blurpool, args.crop_scale_min) == (6, 0.5, False, 0.35)
    defaults = {s.dest: s.default for s in SETTINGS if not s.field and s.default is not None}
    assert defaults["loader"] == "ffcv" and defaults["device"] == "auto" and defaults["compile"] is False
    given = ("results_dir", "device")
    assert all(getattr(args, dest) == value for dest, value in defaults.items() if dest not in given)
    recipe = settings.recipe_from_args(args, world_size=2)
    assert (recipe.epochs, recipe.global_batch_size, recipe.peak_lr, recipe.blurpool) == (6, 32, 0.5, False)
    assert recipe.precision == "fp32"          # the recipe's fp16 is a GPU default; on the CPU, fp32
    assert recipe.eval_precision == "fp32" and recipe.ema_every_epochs == MILD.ema_every_epochs


def test_every_recipe_row_matches_its_field_and_naming():
    fields = {f.name: f for f in dataclasses.fields(Recipe)}
    kinds = {bool: settings.bool01, int: int, float: float, str: str}
    for row in SETTINGS:
        if row.field:
            assert row.field in fields, row
            assert kinds[type(getattr(MILD, row.field))] is row.type, row
            assert row.default is None, f"{row.flag}: a recipe field's default is the recipe's"
            assert row.flag == "--" + row.field.replace("_", "-")
            assert row.env == row.field.upper() or row.env == "GLOBAL_BATCHSIZE"   # older name kept
    # what no setting changes: the recipe's constants (and `name`, chosen by RECIPE; lr_per_sample, set by LR)
    fixed = set(fields) - {row.field for row in SETTINGS if row.field}
    methods = {"mixup_alpha", "sam_rho", "sam_every_steps", "sam_epsilon", "colout_fraction", "randaugment_depth",
               "randaugment_severity", "stochastic_depth_rate"}      # section 12: set by RECIPE=medium|hot only
    assert fixed == {"name", "channels_last", "lr_per_sample", "momentum", "weight_decay", *methods}


@pytest.mark.parametrize("recipe", RECIPES)
def test_an_ema_setting_that_leaves_the_evaluated_weights_untrained_is_warned(world, recipe):
    """Fewer than a handful of updates in the run, or a half-life over a quarter of it: one warning line each,
    naming the setting and the value to set. The recipe's own EMA (or none) gives no warning."""
    _, data, results = world
    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    base = ["--data", str(data), "--results-dir", str(results), "--device", "cpu", "--recipe", recipe,
            "--epochs", "12", "--eval-every-epochs", "3", "--warmup-epochs", "1"]
    assert validate_train_args(parser.parse_args(base), world_size=1) == []
    warned = validate_train_args(parser.parse_args(base + ["--ema", "1", "--ema-every-epochs", "4",
                                                           "--ema-half-life-epochs", "3.5"]), world_size=1)
    assert warned == [
        "--ema-every-epochs (EMA_EVERY_EPOCHS): 4.0 epochs between updates make 3 EMA update(s) in 12 epochs, so "
        f"the evaluated weights are mostly early ones; set it to the recipe's {MILD.ema_every_epochs} (or EMA=0)",
        "--ema-half-life-epochs (EMA_HALF_LIFE_EPOCHS): a half-life of 3.5 epochs is more than a quarter of the "
        f"12-epoch run, so the evaluated weights are mostly early ones; set it to the recipe's "
        f"{MILD.ema_half_life_epochs} (at most 3)"]
    fine = base + ["--ema", "1", "--ema-every-epochs", "2.4", "--ema-half-life-epochs", "3"]     # 5 updates
    assert validate_train_args(parser.parse_args(fine), world_size=1) == []
    assert validate_train_args(parser.parse_args(base + ["--ema", "0", "--ema-every-epochs", "4"]), 1) == []


@dataclasses.dataclass(frozen=True)
class MixupRecipe(Recipe):
    mixup_alpha: float = 0.0                      # the new hyper-parameter: one field ...


MIXUP_ROWS = SETTINGS + [Setting("MIXUP_ALPHA", "--mixup-alpha", float, "mixup strength", field="mixup_alpha",
                                 within="[0, inf)")]    # ... and one row


def test_a_new_hyper_parameter_is_one_field_and_one_row():
    recipes = {"mild": MixupRecipe(name="mild")}
    parser = argparse.ArgumentParser()
    settings.add_arguments(parser, MIXUP_ROWS, recipes)
    assert "MIXUP_ALPHA" in parser.format_help()                       # a flag, documented with its variable
    words = launch.env_to_flags({"MIXUP_ALPHA": "0.2", "EPOCHS": "4"}, MIXUP_ROWS)
    assert words == ["--epochs", "4", "--mixup-alpha", "0.2"]           # the config variable becomes the flag
    args = parser.parse_args(words)
    settings.read(args, MIXUP_ROWS)
    recipe = settings.recipe_from_args(args, 1, rows=MIXUP_ROWS, recipes=recipes)
    assert (recipe.mixup_alpha, recipe.epochs) == (0.2, 4)              # the recipe value
    default = parser.parse_args([])
    settings.read(default, MIXUP_ROWS)
    assert settings.recipe_from_args(default, 1, rows=MIXUP_ROWS, recipes=recipes).mixup_alpha == 0.0
    for bad, message in (("-1", "-1.0 is not in [0, inf)"), ("nan", "nan is not a finite number"),
                         ("lots", "'lots' is not a number")):                       # its checks
        with pytest.raises(SettingError) as error:
            settings.read(parser.parse_args(["--mixup-alpha", bad]), MIXUP_ROWS)
        assert str(error.value).startswith(f"--mixup-alpha (MIXUP_ALPHA): {message}; ")
    known = {s.env for s in MIXUP_ROWS if s.env}
    assert launch.misspelt_settings({"MIXUP_ALHPA": "0.2"}, known) == {"MIXUP_ALHPA": "MIXUP_ALPHA"}


def test_one_precision_table():
    import torch

    assert {"fp16", "bf16", "fp32"} <= set(PRECISIONS)       # the recipe's; more may come
    assert [amp_dtype(p) for p in ("fp16", "bf16", "fp32")] == [torch.float16, torch.bfloat16, None]
    assert [needs_grad_scaler(p) for p in ("fp16", "bf16", "fp32")] == [True, False, False]
    for name, precision in PRECISIONS.items():
        assert needs_grad_scaler(name) == precision.grad_scaler
        assert amp_dtype(name) == (getattr(torch, precision.autocast) if precision.autocast else None), name
    assert settings.BY_FLAG["--precision"].choices == settings.BY_FLAG["--eval-precision"].choices == tuple(PRECISIONS)


def run_settings(env, *args, cwd=REPO):
    clean = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "PYTHONPATH")}
    return subprocess.run([sys.executable, "-m", "resnet.launch", *args], env={**clean, **env},
                          capture_output=True, text=True, cwd=cwd)


def test_env_values_of_the_wrong_type_name_the_variable(world):
    _, data, _ = world
    out = run_settings({"DATADIR": str(data), "BATCHSIZE": "lots"}, "flags")
    assert out.returncode == 1 and out.stdout == ""
    assert out.stderr.strip() == ("mlperf-resnet: error: --batch-size (BATCHSIZE): 'lots' is not a whole number; "
                                  "fix the value in the config or flag")


def test_env_to_flags_and_world_size_divisibility(world):
    tmp, data, _ = world
    good = run_settings({"DATADIR": str(data), "BATCHSIZE": "32", "EPOCHS": "4", "WARMUP_EPOCHS": "1",
                         "PRECISION": "fp32", "BLURPOOL": "0", "CROP_SCALE_MIN": "0.25", "DEVICE": "cpu",
                         "LOGDIR": str(tmp / "logs"), "DGXSYSTEM": "CPU"}, "flags")
    assert good.returncode == 0, good.stderr
    assert good.stderr == ""
    words = good.stdout.split("\0")
    assert words[words.index("--batch-size") + 1] == "32"
    assert words[words.index("--blurpool") + 1] == "0" and words[words.index("--crop-scale-min") + 1] == "0.25"
    assert words[words.index("--results-dir") + 1] == str(tmp / "logs" / "CPU" / "resnet")
    bad = run_settings({"DATADIR": str(data), "GLOBAL_BATCHSIZE": "100", "DGXNGPU": "8", "PRECISION": "fp32"},
                       "flags")
    assert bad.returncode == 1 and "100 is not divisible by the world size 8" in bad.stderr


@pytest.mark.parametrize("name,value,message", [
    ("NEXP", "abc", "NEXP=abc is not a whole number >= 1"),
    ("NEXP", "$(touch pwned)", "NEXP='$(touch pwned)' is not a whole number"),
    ("DGXNGPU", "0", "DGXNGPU=0 is not a whole number >= 1"),
    ("DGXNGPU", "64", "DGXNGPU=64 is more GPUs than a node has (at most 16)"),
    ("DGXNNODES", "2x", "DGXNNODES=2x is not a whole number"),
    ("SEED", "-1", "SEED=-1 is not a whole number >= 0 and <= 2147483647"),
    ("SEED", "2147483647", "SEED: experiment seeds SEED..SEED+NEXP-1 end at 2147483651"),
])
def test_launch_numbers_are_whole_numbers_before_bash_computes_with_them(world, name, value, message):
    tmp, data, _ = world
    out = run_settings({"DATADIR": str(data), "PRECISION": "fp32", "NEXP": "5", name: value}, "flags", cwd=tmp)
    assert out.returncode == 1 and out.stdout == ""
    assert out.stderr.startswith(f"mlperf-resnet: error: {message}") and out.stderr.count("\n") == 1, out.stderr
    assert not (tmp / "pwned").exists()


@pytest.mark.parametrize("target,why", [("0.0759", " (0.759 / 10: likely a typo of 0.759)"),
                                        ("0.00759", " (0.759 / 100: likely a typo of 0.759)"),
                                        ("0.75", " (close to 0.759: likely meant as 0.759)"), ("0.5", "")])
def test_a_target_below_mlperfs_is_allowed_with_one_warning(world, target, why):
    _, data, _ = world
    out = run_settings({"DATADIR": str(data), "PRECISION": "fp32", "TARGET_ACCURACY": target}, "flags")
    assert out.returncode == 0, out.stderr
    assert out.stderr == (f"mlperf-resnet: warning: --target-accuracy (TARGET_ACCURACY): {target} is below MLPerf's "
                          f"ResNet target 0.759{why}: this is not a submission run, no log of it can count (a set of "
                          "5 or more exits 5)\n")
    for fine in ("0.759", "0.77"):
        assert run_settings({"DATADIR": str(data), "PRECISION": "fp32", "TARGET_ACCURACY": fine}, "flags").stderr == ""
    launched = run_settings({"DATADIR": str(data), "PRECISION": "fp32", "TARGET_ACCURACY": target,
                             "MLPERF_RESNET_WARNED": "1"}, "flags")   # a trainer of run_and_time.sh's: said there
    assert launched.returncode == 0 and launched.stderr == ""


def test_device_cuda_without_a_gpu_fails_but_a_dry_run_checks_neither_devices_nor_data(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA")
    cuda = run_settings({"DATADIR": str(tmp_path), "DEVICE": "cuda"}, "flags")
    assert cuda.returncode == 1 and "--device (DEVICE): cuda asked for, but no CUDA GPU is visible" in cuda.stderr
    # a dry run on a login node: a GPU config and data that lives on the compute nodes
    dry = run_settings({"DATADIR": str(tmp_path / "nowhere"), "DEVICE": "cuda", "PRECISION": "fp16",
                        "DRY_RUN": "1"}, "flags")
    assert dry.returncode == 0 and dry.stderr == "", dry.stderr      # run_and_time.sh warns about DATADIR
    assert "--device\0cuda\0" in dry.stdout


def test_config_typos_are_reported_with_a_suggestion(tmp_path):
    cfg = tmp_path / "config_TYPO.sh"
    cfg.write_text("export DGXNGPU=8\nexport BATCHSIZ=256\nexport NCCL_DEBUG=INFO\nexport EPOCHS=28\n"
                   'export CONFIG_FILE="$(readlink -f "${BASH_SOURCE[0]}")"\n')
    out = run_settings({}, "check-config", str(cfg))
    assert out.returncode == 1
    assert out.stderr.strip() == f"mlperf-resnet: error: {cfg}: unknown setting BATCHSIZ; did you mean BATCHSIZE?"
    cfg.write_text("export DGXNGPU=8\nexport BATCHSIZE=256\nexport EMA=0\nexport CROP_SCALE_MIN=0.35\n"
                   'source ./more.sh\nexport CONFIG_FILE="$(readlink -f "${BASH_SOURCE[0]}")"\n')
    (tmp_path / "more.sh").write_text("export EVAL_PRECISION=fp32\nexport DEVICE=cuda\n")
    assert run_settings({}, "check-config", str(cfg), cwd=REPO).returncode == 0   # any file, sourced from its folder
    missing = run_settings({}, "check-config", str(tmp_path / "config_NONE.sh"))
    assert missing.returncode == 1
    assert missing.stderr == f"mlperf-resnet: error: {tmp_path}/config_NONE.sh: no such config; pick one of the " \
                             "config_*.sh files\n"


def test_misspelt_settings_in_the_environment_are_reported():
    out = run_settings({"EPOHCS": "10", "BATCHSIZE": "16", "TARGET_ACCURRACY": "0.76", "HOSTNAME": "node1",
                        "LOCAL_RANK": "0", "NVIDIA_VISIBLE_DEVICES": "all", "SLURM_NTASKS": "8"}, "check-env")
    assert out.returncode == 1
    assert out.stderr.splitlines() == [
        "mlperf-resnet: error: environment: EPOHCS is no setting; did you mean EPOCHS? (unset EPOHCS if it is not "
        "meant for this run)",
        "mlperf-resnet: error: environment: TARGET_ACCURRACY is no setting; did you mean TARGET_ACCURACY? (unset "
        "TARGET_ACCURRACY if it is not meant for this run)"]
    fine = {"EPOCHS": "10", "CONFIG_FILE": "/x/config_CPU.sh", "DRY_RUN": "1", "NODE_RANK": "1", "PYTHON": "python3"}
    assert run_settings(fine, "check-env").returncode == 0


def test_other_implementations_names_are_named_with_ours():
    """NVIDIA's and MosaicML's names for our settings: warned in the environment (the run goes on with ours), refused
    in a config file (everything exported there is meant as a setting)."""
    out = run_settings({"NUMEPOCHS": "37", "EVAL_PERIOD": "4", "WD": "5e-5", "BENCHMARK_TOTAL_RUNS": "5",
                        "EPOCHS": "10"}, "check-env")
    assert out.returncode == 0
    assert out.stderr.splitlines() == [
        "mlperf-resnet: warning: environment: BENCHMARK_TOTAL_RUNS is MosaicML's name: this package reads NEXP; "
        "BENCHMARK_TOTAL_RUNS is ignored",
        "mlperf-resnet: warning: environment: EVAL_PERIOD is NVIDIA's name: this package reads EVAL_EVERY_EPOCHS; "
        "EVAL_PERIOD is ignored",
        "mlperf-resnet: warning: environment: NUMEPOCHS is NVIDIA's name: this package reads EPOCHS; NUMEPOCHS is "
        "ignored",
        "mlperf-resnet: warning: environment: WD is NVIDIA's name for a setting this package does not have (its "
        "recipe, RECIPE, fixes it: docs/RECIPE.md); WD is ignored"]
    assert set(launch.OTHER_NAMES.values()) - {(who, None) for who in ("NVIDIA", "MosaicML")} <= {
        (who, ours) for who, ours in launch.OTHER_NAMES.values() if ours in launch.known_names()}, "ours exist"


def test_other_implementations_names_in_a_config_are_refused_with_ours(tmp_path):
    cfg = tmp_path / "config_NV.sh"
    cfg.write_text("export DGXNGPU=8\nexport NUMEPOCHS=37\nexport LABELSMOOTHING=0.1\n")
    out = run_settings({}, "check-config", str(cfg))
    assert out.returncode == 1
    assert out.stderr.splitlines() == [
        f"mlperf-resnet: error: {cfg}: LABELSMOOTHING is NVIDIA's name: this package reads LABEL_SMOOTHING; rename "
        "or remove it",
        f"mlperf-resnet: error: {cfg}: NUMEPOCHS is NVIDIA's name: this package reads EPOCHS; rename or remove it"]


def test_launch_names_cover_what_the_launchers_read():
    assert {"CONFIG_FILE", "DRY_RUN", "NEXP", "SEED", "DGXNGPU", "DGXNNODES", "LOGDIR"} <= launch.LAUNCH_NAMES
    assert {"mild", "baseline"} <= set(RECIPES)
