"""Every setting of a run in one table, `SETTINGS`: its config variable (exported by config_<SYSTEM>.sh), its
train flag, its type, its checks, and either the Recipe field it sets (its default is the recipe's value) or,
for a run setting, its default. The flags, the environment -> flags translation, the per-setting checks and
the recipe overrides are all read from the table: a new hyper-parameter is one Recipe field plus one row.

The launcher's use of the table (environment -> flags, config and environment typos) is in resnet.launch,
which imports this module and never the other way round.
"""
from __future__ import annotations

import argparse
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from compliance import ComplianceError, check_plain_name
from resnet.data.loaders import LOADERS, data_hint, declared
from resnet.errors import SettingError
from resnet.recipe import ARCHS, LOSSES, PRECISIONS, RECIPES, SUBMISSION_TARGET_ACCURACY, Recipe


def bool01(text) -> bool:
    """A config switch: "0" or "1"."""
    if isinstance(text, bool):
        return text
    if text not in ("0", "1"):
        raise ValueError(text)
    return text == "1"


@dataclass(frozen=True)
class Setting:
    env: str | None                 # config variable; None: a flag only (the launcher sets it per run)
    flag: str
    type: Callable                  # int, float, str or bool01
    help: str
    field: str | None = None        # the Recipe field it sets; None: a run setting (or derived, see recipe_from_args)
    default: object = None          # run settings only: a recipe field defaults to the chosen recipe's value
    choices: tuple | Callable = ()  # allowed values (or a function returning them, for lazy imports)
    within: str | None = None       # allowed range as an interval, e.g. "(0, 1]"; every float must also be finite
    const: object = None            # the value of the bare flag (`--resume` = `--resume 1`); None: a value is needed

    @property
    def dest(self) -> str:
        return self.flag[2:].replace("-", "_")

    @property
    def name(self) -> str:
        """How an error names it: the flag and the config variable."""
        return f"{self.flag} ({self.env})" if self.env else self.flag


def _recipe_row(field: str, type_, help_: str, env: str | None = None, **checks) -> Setting:
    """A row for a Recipe field: env = FIELD, flag = --field-with-dashes unless an older name is kept."""
    return Setting(env or field.upper(), "--" + field.replace("_", "-"), type_, help_, field=field, **checks)


POSITIVE, NON_NEGATIVE, FRACTION = "[1, inf)", "[0, inf)", "(0, 1]"
# Set by run_and_time.sh for its trainers: the settings' warnings were printed once, at the start of the set.
WARNED = "MLPERF_RESNET_WARNED"
RESUME_MODES = ("auto", "0", "1")   # resnet.checkpoint.find_resumable
SETTINGS = [
    # what the run trains: the recipe and its fields (defaults: the recipe's)
    Setting("RECIPE", "--recipe", str, "the recipe", default="mild", choices=tuple(RECIPES)),
    _recipe_row("arch", str, "network (resnet.recipe.ARCHS)", choices=ARCHS),
    _recipe_row("epochs", int, "training epochs", within=POSITIVE),
    Setting("BATCHSIZE", "--batch-size", int, "batch per device (global = this x processes)", within=POSITIVE),
    _recipe_row("global_batch_size", int, "global batch (instead of --batch-size)", env="GLOBAL_BATCHSIZE",
                within=POSITIVE),
    Setting("LR", "--lr", float, "peak learning rate (default: 0.001 x global batch)", within="(0, inf)"),
    _recipe_row("warmup_epochs", float, "linear warm-up epochs", within=NON_NEGATIVE),
    _recipe_row("eval_every_epochs", int, "evaluate after every k completed epochs, and after the last",
                within=POSITIVE),
    _recipe_row("target_accuracy", float, "stop at the first top-1 above this (MLPerf: 0.759)", within=FRACTION),
    _recipe_row("precision", str, "training arithmetic", choices=tuple(PRECISIONS)),
    _recipe_row("eval_precision", str, "evaluation arithmetic (the submission: fp32)", choices=tuple(PRECISIONS)),
    _recipe_row("train_crop_px", int, "training crop side (progressive resizing ends here)", within=POSITIVE),
    _recipe_row("crop_scale_min", float, "smallest RandomResizedCrop area fraction (ImageNet: 0.08)",
                within=FRACTION),
    _recipe_row("resize_initial_scale", float, "first training side / crop side (1: no progressive resizing)",
                within=FRACTION),
    _recipe_row("resize_delay", float, "fraction of training at the initial side", within="[0, 1]"),
    _recipe_row("resize_finetune", float, "fraction of training at the full side", within="[0, 1]"),
    _recipe_row("resize_increment_px", int, "progressive-resizing sides are multiples of this (ImageNet: 4)",
                within=POSITIVE),
    _recipe_row("eval_crop_px", int, "evaluation centre-crop side", within=POSITIVE),
    _recipe_row("eval_resize_px", int, "evaluation resize-equivalent side", within=POSITIVE),
    _recipe_row("blurpool", bool01, "1 = BlurPool surgery"),
    _recipe_row("ema", bool01, "1 = evaluate an EMA of the weights"),
    _recipe_row("ema_half_life_epochs", float, "EMA half-life, in epochs of this data set", within="(0, inf)"),
    _recipe_row("ema_every_epochs", float, "epochs between EMA updates (whole steps, at least 1)",
                within="(0, inf)"),
    _recipe_row("loss", str, "bce: label-smoothed binary cross-entropy; ce: cross-entropy", choices=LOSSES),
    _recipe_row("label_smoothing", float, "label smoothing", within="[0, 1)"),
    _recipe_row("log_bias_init", bool01, "1 = fc bias -ln(classes)"),
    # how and where it runs
    Setting("NUM_WORKERS", "--workers", int, "data loader workers per process",
            default=min(8, len(os.sched_getaffinity(0))), within=NON_NEGATIVE),
    Setting("DATADIR", "--data", str, "data folder: train.beton/val.beton (ffcv) or train/ val/ image folders (dali, "
            "torchvision)"),
    Setting("LOADER", "--loader", str, "data loader (README 'Data': which to pick)", default="ffcv",
            choices=LOADERS),
    Setting("DECODE_TO_SIDE", "--decode-to-side", bool01, "1 = DALI decodes training crops straight to each "
            "epoch's side (0: to TRAIN_CROP_PX, shrunk on the device, as submitted)", default=False),
    Setting("DALI_HW_DECODER_LOAD", "--dali-hw-decoder-load", float, "share of JPEGs DALI sends to the GPU's "
            "hardware decoder (A100/H100)", default=0.65, within="[0, 1]"),
    Setting("DALI_PREFETCH_QUEUE", "--dali-prefetch-queue", int, "batches each DALI pipeline prepares ahead",
            default=2, within=POSITIVE),
    Setting("DALI_NVJPEG_MEMPADDING", "--dali-nvjpeg-mempadding", int, "nvJPEG host and device memory padding in "
            "MB, DALI on a GPU (default: DALI's own)", within=NON_NEGATIVE),
    Setting("DALI_PREALLOCATE_WIDTH", "--dali-preallocate-width", int, "with DALI_PREALLOCATE_HEIGHT: the image size "
            "DALI preallocates the hardware JPEG decoder for (0: none)", default=0, within=NON_NEGATIVE),
    Setting("DALI_PREALLOCATE_HEIGHT", "--dali-preallocate-height", int, "see DALI_PREALLOCATE_WIDTH", default=0,
            within=NON_NEGATIVE),
    Setting("DEVICE", "--device", str, "auto: CUDA when visible; GPU configs say cuda", default="auto",
            choices=("auto", "cpu", "cuda")),
    Setting("COMPILE", "--compile", bool01, "1 = torch.compile the model", default=False),
    Setting("SUBMISSION_ORG", "--org", str, "submitting organisation", default="mlperf-resnet"),
    Setting("SUBMISSION_STATUS", "--status", str, "MLPerf status", default="onprem",
            choices=("onprem", "cloud", "preview", "research")),
    Setting("DGXSYSTEM", "--platform", str, "system name (submission_platform)", default="local"),
    Setting("CHECKPOINT_DIR", "--checkpoint-dir", str, "write last.pt here every epoch"),
    Setting("RESUME", "--resume", str, "auto: continue an unfinished run of the same identity in CHECKPOINT_DIR, "
            "else start fresh; 1: must continue; 0: start fresh (an unfinished run's checkpoint is never "
            "overwritten)", default="auto", choices=RESUME_MODES, const="1"),
    Setting("CHECKPOINT_EVERY_MINUTES", "--checkpoint-every-minutes", float, "also checkpoint every N minutes",
            within="(0, inf)"),
    # set per run by the launcher (run_and_time.sh), not by a config
    Setting(None, "--results-dir", str, "result_N.txt goes here (next free N); from LOGDIR/DGXSYSTEM/resnet",
            default="results/local/resnet"),
    Setting(None, "--log-file", str, "write the MLPerf log to this exact (new) file instead"),
    Setting(None, "--seed", int, "default: a fresh random seed", within="[0, 2147483647]"),
    Setting(None, "--cache-cleared", bool01, "whether the launcher dropped the page cache (logged as cache_clear)",
            default=False),
    Setting(None, "--dist-timeout-s", float, "collective timeout (a dead peer)", default=300.0, within="(0, inf)"),
]
BY_ENV = {s.env: s for s in SETTINGS if s.env}
BY_FLAG = {s.flag: s for s in SETTINGS}
BY_FIELD = {s.field: s for s in SETTINGS if s.field}
TYPE_WORDS = {int: "a whole number", float: "a number", bool01: "0 or 1", str: "text"}


def fail(setting: str, problem: str, fix: str):
    raise SettingError(f"{setting}: {problem}; {fix}")


# ----------------------------------------------------------------------------------------- generic over rows


def add_arguments(parser: argparse.ArgumentParser, rows=SETTINGS, recipes=RECIPES) -> None:
    """One option per row. Values stay text here: `read` converts and checks them, so that a bad value is one
    line naming the setting (argparse's own errors are two lines and exit 2)."""
    for s in rows:
        lazy = callable(s.choices)     # not resolved for --help: ARCH's list imports torchvision
        metavar = ("|".join(s.choices) if s.choices and not lazy
                   else {bool01: "0|1", int: "N", float: "X"}.get(s.type, "NAME" if lazy else "TEXT"))
        default = s.default
        if s.field:
            default = "the recipe's (" + ", ".join(f"{n}: {getattr(r, s.field)}" for n, r in recipes.items()) + ")"
        where = f"config: {s.env}; " if s.env else ""
        bare = {"nargs": "?", "const": s.const} if s.const is not None else {}
        parser.add_argument(s.flag, default=s.default, metavar=metavar, **bare,
                            help=f"{s.help} [{where}default: {default}]".replace("%", "%%"))


def read(args: argparse.Namespace, rows=SETTINGS) -> None:
    """Convert each given value to its row's type and check it against the row; the first bad one raises."""
    for s in rows:
        value = getattr(args, s.dest, None)
        if value is None:
            continue
        if isinstance(value, str) and s.type is not str:
            try:
                value = s.type(value.strip())
            except ValueError:
                fail(s.name, f"{value!r} is not {TYPE_WORDS[s.type]}", "fix the value in the config or flag")
        if s.type is str and not value.strip():
            fail(s.name, "is empty", "set a value or leave the setting out")
        if s.type is float and not math.isfinite(value):
            fail(s.name, f"{value} is not a finite number", "give a finite value")
        choices = s.choices() if callable(s.choices) else s.choices
        if choices and value not in choices:
            fail(s.name, f"{value!r} is not one of {', '.join(map(str, choices))}", "pick one of them")
        if s.within and not in_interval(value, s.within):
            fail(s.name, f"{value} is not in {s.within}", f"choose a value in {s.within}")
        setattr(args, s.dest, value)


def in_interval(value: float, interval: str) -> bool:
    """Whether `value` lies in an interval written as in maths: "(0, 1]", "[1, inf)"."""
    match = re.fullmatch(r"([\[(])\s*(\S+),\s*(\S+)\s*([\])])", interval)
    opening, low, high, closing = match.groups()
    low, high = float(low), float(high)
    above = value >= low if opening == "[" else value > low
    below = value <= high if closing == "]" else value < high
    return above and below


def recipe_from_args(args: argparse.Namespace, world_size: int, rows=SETTINGS, recipes=RECIPES) -> Recipe:
    """The chosen recipe with every given recipe-field setting applied (call after `read`). Two settings are
    derived rather than fields: BATCHSIZE (x processes = the global batch) and LR (= lr per sample x batch)."""
    name = getattr(args, "recipe", None) or "mild"
    if name not in recipes:
        fail(BY_FLAG["--recipe"].name, f"unknown recipe {name!r}", f"use one of {', '.join(recipes)}")
    recipe = recipes[name]
    changes = {s.field: getattr(args, s.dest) for s in rows if s.field and getattr(args, s.dest, None) is not None}
    if getattr(args, "batch_size", None) is not None and "global_batch_size" not in changes:
        changes["global_batch_size"] = args.batch_size * world_size
    recipe = recipe.replace(**changes)
    if getattr(args, "lr", None) is not None:
        recipe = recipe.replace(lr_per_sample=args.lr / recipe.global_batch_size)
    device = getattr(args, "device", None)
    if recipe.precision == "fp16" and "precision" not in changes and device is not None and not _cuda(device):
        recipe = recipe.replace(precision="fp32")    # the recipe's GPU default; without CUDA, fp32 unless asked
    return recipe


def check_recipe(recipe: Recipe) -> None:
    """The checks that involve more than one field (each field's own checks are in its row)."""
    def name(field):
        return BY_FIELD[field].name if field in BY_FIELD else field

    if recipe.epochs < recipe.eval_every_epochs:
        fail(name("epochs"), f"{recipe.epochs} epochs is fewer than the evaluation interval "
             f"{recipe.eval_every_epochs}", "train longer or evaluate more often (EVAL_EVERY_EPOCHS)")
    if recipe.warmup_epochs > recipe.epochs:
        fail(name("warmup_epochs"), f"{recipe.warmup_epochs} is more than the {recipe.epochs} epochs",
             "shorten the warm-up")
    if recipe.eval_crop_px > recipe.eval_resize_px:
        fail(name("eval_crop_px"), f"{recipe.eval_crop_px} is larger than EVAL_RESIZE_PX {recipe.eval_resize_px}",
             "crop at most the resized side")
    first_px = recipe.resolution_px(0)
    if first_px < 1:
        fail(name("resize_initial_scale"), f"{recipe.resize_initial_scale} x TRAIN_CROP_PX {recipe.train_crop_px} "
             f"rounds to a first training side of {first_px} px", "raise RESIZE_INITIAL_SCALE or TRAIN_CROP_PX")
    if recipe.resize_delay + recipe.resize_finetune > 1:
        fail(name("resize_finetune"), f"{recipe.resize_finetune} plus RESIZE_DELAY {recipe.resize_delay} is more "
             "than all of training", "keep RESIZE_DELAY + RESIZE_FINETUNE <= 1")
    if recipe.ema and recipe.ema_every_epochs > recipe.epochs:    # no update: every evaluation the raw weights
        fail(name("ema_every_epochs"), f"{recipe.ema_every_epochs} epochs between EMA updates is more than the "
             f"{recipe.epochs} epochs of the run", f"use the recipe's {Recipe.ema_every_epochs} or set EMA=0")


def check_resumed_batch(identity: dict, recipe: Recipe) -> None:
    """A resume with another batch is refused naming BATCHSIZE (the checkpoint's identity would name the
    lr_per_sample that the batch changed)."""
    then = (identity.get("recipe") or {}).get("global_batch_size")
    if then is not None and then != recipe.global_batch_size:
        fail(BY_FLAG["--batch-size"].name, f"the global batch is {recipe.global_batch_size} here but {then} in the "
             "checkpoint of the interrupted run", f"resume with its batch (BATCHSIZE x processes = {then}), or move "
             "its checkpoint away (or set another CHECKPOINT_DIR) to start a new run")


def ema_warnings(recipe: Recipe) -> list[str]:
    """EMA settings that leave the evaluated weights mostly untrained (they average the early epochs): fewer
    than a handful of updates in the run, or a half-life longer than a quarter of it."""
    if not recipe.ema:
        return []
    warnings, updates = [], math.floor(recipe.epochs / recipe.ema_every_epochs)
    if updates < 5:
        warnings.append(f"{BY_FIELD['ema_every_epochs'].name}: {recipe.ema_every_epochs} epochs between updates "
                        f"make {updates} EMA update(s) in {recipe.epochs} epochs, so the evaluated weights are "
                        f"mostly early ones; set it to the recipe's {Recipe.ema_every_epochs} (or EMA=0)")
    if recipe.ema_half_life_epochs > recipe.epochs / 4:
        warnings.append(f"{BY_FIELD['ema_half_life_epochs'].name}: a half-life of {recipe.ema_half_life_epochs} "
                        f"epochs is more than a quarter of the {recipe.epochs}-epoch run, so the evaluated weights "
                        f"are mostly early ones; set it to the recipe's {Recipe.ema_half_life_epochs} "
                        f"(at most {recipe.epochs / 4:g})")
    return warnings


# ------------------------------------------------------------------------------------------------ training


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    add_arguments(p)


def _cuda(device: str = "auto") -> bool:
    if device == "cpu":
        return False
    import torch

    return torch.cuda.is_available()


def validate_train_args(args: argparse.Namespace, world_size: int | None = None, here: bool = True) -> list[str]:
    """Check every setting up front; the first bad one raises SettingError naming it and the fix. Converts the
    values in place. here=False skips what depends on this machine (a dry run on a login node checks a GPU
    config): its devices and its data folder (run_and_time.sh warns about that itself). Returns warnings for the
    console (print them once, not once per rank)."""
    world_size = world_size or int(os.environ.get("WORLD_SIZE", 1))
    read(args)
    for flag in ("--org", "--platform"):   # package's rule: a run under a name it refuses could never be submitted
        try:
            check_plain_name(BY_FLAG[flag].name, getattr(args, BY_FLAG[flag].dest))
        except ComplianceError as e:
            raise SettingError(str(e)) from None
    warnings = []
    if args.batch_size is not None and args.global_batch_size is not None:
        fail(BY_FLAG["--global-batch-size"].name, "given together with --batch-size (BATCHSIZE)",
             "set only one of them")
    if args.global_batch_size is not None and args.global_batch_size % world_size:
        fail(BY_FLAG["--global-batch-size"].name, f"{args.global_batch_size} is not divisible by the world size "
             f"{world_size}", "choose a multiple of the number of processes")
    if here and args.device == "cuda" and not _cuda():
        fail(BY_FLAG["--device"].name, "cuda asked for, but no CUDA GPU is visible", "check the driver and the "
             "container's GPU access (docker --gpus, SLURM --gpus-per-node), or set DEVICE=auto to run anywhere")
    for flag in ("--precision", "--eval-precision"):
        value = getattr(args, BY_FLAG[flag].dest)
        if here and value is not None and PRECISIONS[value].needs_cuda and not _cuda(args.device):
            fail(BY_FLAG[flag].name, f"{value} needs a CUDA GPU and none is visible", "use bf16 or fp32 on the CPU")
    if args.checkpoint_every_minutes is not None and not args.checkpoint_dir:
        fail(BY_FLAG["--checkpoint-every-minutes"].name, "needs a checkpoint folder", "set CHECKPOINT_DIR")
    if args.resume == "1" and not args.checkpoint_dir:
        fail("--resume", "needs the killed run's checkpoint folder", "add --checkpoint-dir DIR")
    recipe = recipe_from_args(args, world_size)
    check_recipe(recipe)
    warnings += ema_warnings(recipe)
    warnings += [line for line in [target_warning(recipe.target_accuracy)] if line]
    for flag in ("--log-file", "--results-dir", "--checkpoint-dir", "--data"):
        if getattr(args, BY_FLAG[flag].dest, None):
            check_path(BY_FLAG[flag].name if flag != "--results-dir" else "--results-dir (LOGDIR)",
                       getattr(args, BY_FLAG[flag].dest))
    if here:                  # a dry run previews on a login node: the data may live on the compute nodes only
        _validate_data(args)
    _validate_output(args)
    return [] if os.environ.get(WARNED) == "1" else warnings


def target_warning(target: float) -> str | None:
    """The one line for a target below MLPerf's (a likely typo named as one); None for a higher one (a longer run)."""
    mlperf = SUBMISSION_TARGET_ACCURACY
    typo = next((f" ({mlperf} / {10 ** k}: likely a typo of {mlperf})" for k in (1, 2)
                 if math.isclose(target * 10 ** k, mlperf)), "")
    typo = typo or (f" (close to {mlperf}: likely meant as {mlperf})" if abs(target - mlperf) <= 0.01 else "")
    return None if target >= mlperf else (f"{BY_FLAG['--target-accuracy'].name}: {target} is below MLPerf's ResNet "
                                          f"target {mlperf}{typo}: this is not a submission run, no log of it can "
                                          "count (a set of 5 or more exits 5)")


def _validate_data(args) -> None:
    name = BY_FLAG["--data"].name
    if not args.data:
        fail(name, "no data folder given", "set DATADIR (see README: mlperf-resnet prepare)")
    data = Path(args.data)
    if not data.is_dir():
        fail(name, f"{data} does not exist", "prepare the data set first (mlperf-resnet prepare)")
    for split in declared(args.loader).layout.paths:
        if not (data / split).exists():
            fail(name, f"{data / split} is missing", data_hint(args.loader))


NAME_MAX, PATH_MAX = 255, 4096     # Linux: bytes in one file name, in a whole path (with its NUL)


def check_path(name: str, path) -> None:
    """A path the run will create or open: no component over NAME_MAX bytes, the whole (made absolute) under
    PATH_MAX; past them the kernel answers a bare "File name too long" deep inside whatever opens it."""
    absolute = os.fsencode(os.path.abspath(str(path)))
    longest = max(absolute.split(b"/"), key=len)
    if len(longest) > NAME_MAX:
        fail(name, f"the path component {os.fsdecode(longest[:24])}... is {len(longest)} bytes, more than the "
             f"{NAME_MAX} a file name may have", "choose a shorter name")
    if len(absolute) >= PATH_MAX:
        fail(name, f"the path {os.fsdecode(absolute[:40])}... is {len(absolute)} bytes, more than the "
             f"{PATH_MAX - 1} a path may have", "choose a shorter folder")


def _validate_output(args) -> None:
    if args.log_file:
        target = Path(args.log_file)
        if target.is_symlink() or (target.exists() and (not target.is_file() or target.stat().st_size)):
            fail("--log-file", f"{target} already exists{' as a link' if target.is_symlink() else ''} and result "
                 "logs are never overwritten", "choose a new name or leave --log-file out to take the next free "
                 "result_N.txt (an empty file, as a launcher claims it, is taken)")
        folder = target.parent
    else:
        folder = Path(args.results_dir)
    if not _writable(folder):
        fail("--results-dir (LOGDIR)", f"{folder} is not writable", "choose a folder you can write to")
    if args.checkpoint_dir and not _writable(Path(args.checkpoint_dir)):
        fail(BY_FLAG["--checkpoint-dir"].name, f"{args.checkpoint_dir} is not writable", "choose another folder")


def _writable(folder: Path) -> bool:
    """Whether `folder` could be created (or written) here: its nearest existing ancestor is a writable folder."""
    while not folder.exists():
        folder = folder.parent
    return folder.is_dir() and os.access(folder, os.W_OK)
