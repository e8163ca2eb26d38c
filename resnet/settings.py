"""Every setting of a run in one table: its config variable (exported by config_<SYSTEM>.sh), its train flag,
and its checks. `python -m resnet.settings flags` turns the environment into train flags (run_and_time.sh),
`python -m resnet.settings check-config FILE` finds typos in a config. Each bad value fails with one line that
names the setting and the fix, before any process is launched."""
import argparse
import difflib
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from resnet.recipe import RECIPES, get_recipe


@dataclass(frozen=True)
class Setting:
    env: str
    flag: str
    type: type
    help: str


def _bool01(text: str) -> bool:
    if text not in ("0", "1"):
        raise ValueError
    return text == "1"


SETTINGS = [
    Setting("RECIPE", "--recipe", str, f"recipe: {' | '.join(RECIPES)}"),
    Setting("ARCH", "--arch", str, "torchvision ResNet (default: the recipe's, resnet50)"),
    Setting("EPOCHS", "--epochs", int, "training epochs"),
    Setting("BATCHSIZE", "--batch-size", int, "batch per device (global = this x processes)"),
    Setting("GLOBAL_BATCHSIZE", "--global-batch-size", int, "global batch (instead of --batch-size)"),
    Setting("LR", "--lr", float, "peak learning rate (default: 0.001 x global batch)"),
    Setting("WARMUP_EPOCHS", "--warmup-epochs", float, "linear warm-up epochs"),
    Setting("EVAL_EVERY_EPOCHS", "--eval-every-epochs", int, "evaluate every k epochs, ending at the last"),
    Setting("TARGET_ACCURACY", "--target-accuracy", float, "stop at the first top-1 above this"),
    Setting("PRECISION", "--precision", str, "fp16 | bf16 | fp32"),
    Setting("TRAIN_CROP_PX", "--train-crop-px", int, "training crop side (progressive resizing ends here)"),
    Setting("EVAL_CROP_PX", "--eval-crop-px", int, "evaluation centre-crop side"),
    Setting("EVAL_RESIZE_PX", "--eval-resize-px", int, "evaluation resize-equivalent side"),
    Setting("NUM_WORKERS", "--workers", int, "data loader workers per process"),
    Setting("DATADIR", "--data", str, "data folder: train.beton/val.beton (ffcv) or train/ val/ (torchvision)"),
    Setting("LOADER", "--loader", str, "ffcv | torchvision"),
    Setting("SUBMISSION_ORG", "--org", str, "submitting organisation"),
    Setting("SUBMISSION_STATUS", "--status", str, "onprem | cloud | preview | research"),
    Setting("DGXSYSTEM", "--platform", str, "system name (submission_platform)"),
    Setting("COMPILE", "--compile", _bool01, "1 = torch.compile the model"),
    Setting("CHECKPOINT_DIR", "--checkpoint-dir", str, "write last.pt here every epoch"),
    Setting("CHECKPOINT_EVERY_MINUTES", "--checkpoint-every-minutes", float, "also checkpoint every N minutes"),
]
BY_ENV = {s.env: s for s in SETTINGS}
# Read by the launch scripts rather than by the training process.
LAUNCH_NAMES = {"DGXNGPU", "DGXNNODES", "WALLTIME", "NEXP", "SEED", "LOGDIR", "DRY_RUN", "BIND_CPU",
                "MASTER_ADDR", "MASTER_PORT", "CONT", "CACHE_CLEARED"}
KNOWN_NAMES = set(BY_ENV) | LAUNCH_NAMES
KNOWN_PREFIXES = ("NCCL_", "OMP_", "CUDA_", "TORCH_", "PYTORCH_", "UCX_", "MKL_")
PRECISIONS = ("fp16", "bf16", "fp32")
STATUSES = ("onprem", "cloud", "preview", "research")
LOADERS = ("ffcv", "torchvision")


def fail(setting: str, problem: str, fix: str):
    raise SystemExit(f"mlperf-resnet: error: {setting}: {problem}; {fix}")


def _name(flag: str) -> str:
    env = next((s.env for s in SETTINGS if s.flag == flag), None)
    return f"{flag} ({env})" if env else flag


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    for s in SETTINGS:
        kind = str if s.type is _bool01 else s.type
        p.add_argument(s.flag, type=kind, default=None, help=f"{s.help} [config: {s.env}]")
    p.add_argument("--results-dir", default="results/local/resnet", help="result_N.txt goes here (next free N)")
    p.add_argument("--log-file", help="write the MLPerf log to this exact (new) file instead")
    p.add_argument("--seed", type=int, help="default: a fresh random seed")
    p.add_argument("--cache-cleared", type=int, choices=(0, 1), default=0,
                   help="whether the launcher dropped the page cache (logged as cache_clear)")
    p.add_argument("--resume", action="store_true", help="continue from --checkpoint-dir/last.pt")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--dist-timeout-s", type=float, default=300.0, help="collective timeout (a dead peer)")


def recipe_from_args(args: argparse.Namespace, world_size: int):
    recipe = get_recipe(args.recipe or "mild")
    changes = {field: getattr(args, attr) for field, attr in (
        ("arch", "arch"), ("epochs", "epochs"), ("warmup_epochs", "warmup_epochs"),
        ("eval_every_epochs", "eval_every_epochs"), ("target_accuracy", "target_accuracy"),
        ("precision", "precision"), ("train_crop_px", "train_crop_px"), ("eval_crop_px", "eval_crop_px"),
        ("eval_resize_px", "eval_resize_px")) if getattr(args, attr) is not None}
    if args.global_batch_size is not None:
        changes["global_batch_size"] = args.global_batch_size
    elif args.batch_size is not None:
        changes["global_batch_size"] = args.batch_size * world_size
    recipe = recipe.replace(**changes)
    if args.lr is not None:
        recipe = recipe.replace(lr_per_sample=args.lr / recipe.global_batch_size)
    if recipe.precision == "fp16" and args.precision is None and (args.device == "cpu" or not _cuda()):
        recipe = recipe.replace(precision="fp32")    # the recipe's GPU default; without CUDA, fp32 unless asked
    return recipe


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


# What a setting that neither the config nor the command line gives falls back to (recipe values come from
# the recipe itself).
DEFAULTS = {"loader": "ffcv", "workers": min(8, len(os.sched_getaffinity(0))), "org": "mlperf-resnet",
            "platform": "local", "status": "onprem", "compile": False}


def validate_train_args(args: argparse.Namespace, world_size: int | None = None, here: bool = True) -> None:
    """Check every setting up front; the first bad one fails with one line naming it and the fix.
    Fills in DEFAULTS for what was not given. here=False skips what depends on this machine's devices
    (a dry run on a login node checks a GPU config)."""
    world_size = world_size or int(os.environ.get("WORLD_SIZE", 1))
    if args.recipe is not None and args.recipe not in RECIPES:
        fail(_name("--recipe"), f"unknown recipe {args.recipe!r}", f"use one of {', '.join(RECIPES)}")
    if args.compile is not None:
        try:
            args.compile = _bool01(str(args.compile)) if not isinstance(args.compile, bool) else args.compile
        except ValueError:
            fail(_name("--compile"), f"{args.compile!r} is not 0 or 1", "set COMPILE=0 or COMPILE=1")
    from resnet.model import ARCHS

    if args.arch is not None and args.arch not in ARCHS:
        fail(_name("--arch"), f"{args.arch!r} is not a torchvision ResNet", f"use one of {', '.join(ARCHS)}")
    for flag in ("--epochs", "--batch-size", "--global-batch-size", "--eval-every-epochs", "--train-crop-px",
                 "--eval-crop-px", "--eval-resize-px"):
        value = getattr(args, flag[2:].replace("-", "_"))
        if value is not None and value <= 0:
            fail(_name(flag), f"must be a positive whole number, got {value}", "fix the value in the config")
    if args.lr is not None and args.lr <= 0:
        fail(_name("--lr"), f"the learning rate must be positive, got {args.lr}", "unset LR to use 0.001 x batch")
    if args.batch_size is not None and args.global_batch_size is not None:
        fail(_name("--global-batch-size"), "given together with --batch-size (BATCHSIZE)", "set only one of them")
    if args.global_batch_size is not None and args.global_batch_size % world_size:
        fail(_name("--global-batch-size"), f"{args.global_batch_size} is not divisible by the world size "
             f"{world_size}", "choose a multiple of the number of processes")
    if args.workers is not None and args.workers < 0:
        fail(_name("--workers"), f"must be >= 0, got {args.workers}", "use 0 for in-process loading")
    if args.precision is not None and args.precision not in PRECISIONS:
        fail(_name("--precision"), f"unknown precision {args.precision!r}", f"use one of {', '.join(PRECISIONS)}")
    if here and args.precision == "fp16" and (args.device == "cpu" or not _cuda()):
        fail(_name("--precision"), "fp16 needs a CUDA GPU and none is visible", "use bf16 or fp32 on the CPU")
    if args.loader is not None and args.loader not in LOADERS:
        fail(_name("--loader"), f"unknown loader {args.loader!r}", f"use one of {', '.join(LOADERS)}")
    if args.status is not None and args.status not in STATUSES:
        fail(_name("--status"), f"{args.status!r} is not an MLPerf status", f"use one of {', '.join(STATUSES)}")
    for flag in ("--org", "--platform"):
        if getattr(args, flag[2:]) is not None and not getattr(args, flag[2:]).strip():
            fail(_name(flag), "is empty", "set a non-empty name")
    if args.seed is not None and not 0 <= args.seed < 2**31:
        fail("--seed (SEED)", f"{args.seed} is outside 0..2^31-1", "pick a smaller non-negative seed")
    recipe = recipe_from_args(args, world_size)
    if not 0 < recipe.target_accuracy <= 1:
        fail(_name("--target-accuracy"), f"{recipe.target_accuracy} is not in (0, 1]", "use a fraction such as 0.759")
    if recipe.epochs < recipe.eval_every_epochs:
        fail(_name("--epochs"), f"{recipe.epochs} epochs is fewer than the evaluation interval "
             f"{recipe.eval_every_epochs}", "train longer or evaluate more often (EVAL_EVERY_EPOCHS)")
    if not 0 <= recipe.warmup_epochs <= recipe.epochs:
        fail(_name("--warmup-epochs"), f"{recipe.warmup_epochs} is not within 0..{recipe.epochs} epochs",
             "shorten the warm-up")
    if recipe.eval_crop_px > recipe.eval_resize_px:
        fail(_name("--eval-crop-px"), f"{recipe.eval_crop_px} is larger than EVAL_RESIZE_PX "
             f"{recipe.eval_resize_px}", "crop at most the resized side")
    if args.checkpoint_every_minutes is not None and args.checkpoint_every_minutes <= 0:
        fail(_name("--checkpoint-every-minutes"), "must be positive", "unset it to checkpoint only per epoch")
    if args.checkpoint_every_minutes and not args.checkpoint_dir:
        fail(_name("--checkpoint-every-minutes"), "needs a checkpoint folder", "set CHECKPOINT_DIR")
    if args.resume and not args.checkpoint_dir:
        fail("--resume", "needs the killed run's checkpoint folder", "add --checkpoint-dir DIR")
    _validate_data(args)
    _validate_output(args)
    for name, value in DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, value)


def _validate_data(args) -> None:
    if not args.data:
        fail(_name("--data"), "no data folder given", "set DATADIR (see README: mlperf-resnet prepare)")
    data, loader = Path(args.data), args.loader or "ffcv"
    if not data.is_dir():
        fail(_name("--data"), f"{data} does not exist", "prepare the data set first (mlperf-resnet prepare)")
    wanted = ("train.beton", "val.beton") if loader == "ffcv" else ("train", "val")
    for split in wanted:
        if not (data / split).exists():
            fail(_name("--data"), f"{data / split} is missing", "run mlperf-resnet prepare SRC OUT for ffcv files, "
                 "or point DATADIR at a folder with train/ and val/ for LOADER=torchvision")


def _validate_output(args) -> None:
    if args.log_file:
        target = Path(args.log_file)
        if target.exists():
            fail("--log-file", f"{target} already exists and result logs are never overwritten",
                 "choose a new name or leave --log-file out to take the next free result_N.txt")
        folder = target.parent
    else:
        folder = Path(args.results_dir)
    if not _writable(folder):
        fail("--results-dir (LOGDIR)", f"{folder} is not writable", "choose a folder you can write to")
    if args.checkpoint_dir and not _writable(Path(args.checkpoint_dir)):
        fail(_name("--checkpoint-dir"), f"{args.checkpoint_dir} is not writable", "choose another folder")


def _writable(folder: Path) -> bool:
    """Whether `folder` could be created (or written) here: its nearest existing ancestor is a writable folder."""
    while not folder.exists():
        folder = folder.parent
    return folder.is_dir() and os.access(folder, os.W_OK)


def env_to_flags(environ) -> list[str]:
    """Train flags from the config variables in `environ` (empty values count as unset)."""
    words = []
    for s in SETTINGS:
        value = environ.get(s.env, "")
        if value == "":
            continue
        try:
            s.type(value)
        except ValueError:
            fail(s.env, f"{value!r} is not a valid {s.type.__name__.strip('_')}", f"fix {s.env} in the config")
        words += [s.flag, value]
    logdir, system = environ.get("LOGDIR", ""), environ.get("DGXSYSTEM", "")
    if logdir:
        words += ["--results-dir", str(Path(logdir) / (system or "local") / "resnet")]
    return words


def check_config(path: Path) -> list[str]:
    """Names a config file exports that no part of this package reads (typos)."""
    if not path.is_file():
        fail(str(path), "no such config", "pick one of the config_*.sh files")
    script = 'source "$1" >/dev/null || exit 1; env -0'
    out = subprocess.run(["env", "-i", "PATH=/usr/bin:/bin", "bash", "-c", script, "_", str(path.resolve())],
                         capture_output=True, cwd=path.parent)
    if out.returncode:
        last = (out.stderr.decode().strip().splitlines() or ["no message"])[-1]
        fail(str(path), f"sourcing it failed ({last})", "fix the shell error")
    names = {item.split(b"=", 1)[0].decode() for item in out.stdout.split(b"\0") if item}
    names -= {"PATH", "PWD", "SHLVL", "_", "OLDPWD"}
    return sorted(n for n in names if n not in KNOWN_NAMES and not n.startswith(KNOWN_PREFIXES))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m resnet.settings")
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("flags", help="print the train flags from the environment, one word per line, after checking them")
    c = sub.add_parser("check-config", help="report exported names that are no known setting (typos)")
    c.add_argument("config", type=Path)
    args = p.parse_args(argv)
    if args.cmd == "flags":
        words = env_to_flags(os.environ)
        train_parser = argparse.ArgumentParser()
        add_train_arguments(train_parser)
        world = int(os.environ.get("DGXNGPU", 1) or 1) * int(os.environ.get("DGXNNODES", 1) or 1)
        validate_train_args(train_parser.parse_args(words), world_size=world,
                            here=os.environ.get("DRY_RUN", "0") != "1")
        print("\n".join(words))
        return 0
    unknown = check_config(args.config)
    for name in unknown:
        close = difflib.get_close_matches(name, sorted(KNOWN_NAMES), n=1)
        print(f"mlperf-resnet: error: {args.config}: unknown setting {name}"
              + (f"; did you mean {close[0]}?" if close else "; remove it or see README 'Settings'"),
              file=sys.stderr)
    return 1 if unknown else 0


if __name__ == "__main__":
    sys.exit(main())
