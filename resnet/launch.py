"""Python decides, bash runs: what run_and_time.sh asks of Python. The environment (a sourced config) is read and
checked here, once: the launch numbers, the train flags, typos in the config file and in the environment, and
the modules the benchmark needs. The set of experiments (seeds, logs, which ended) is resnet.launchset's.

    python -m resnet.launch deps [LOADER]    the modules the benchmark needs are importable (stdlib only)
    python -m resnet.launch prepare          everything checked; NUL-separated "set NAME=VALUE" and "flag WORD"
    python -m resnet.launch flags            train flags from the environment, NUL-separated, after checking them
    python -m resnet.launch check-config F   names config F exports that no part of this package reads
    python -m resnet.launch check-env        environment variables that look like a misspelt setting
    python -m resnet.launch config-names F   the names config F exports (run_with_docker.sh passes them on)
    python -m resnet.launch begin|claim|record|stopped|verdict ...   the set (resnet.launchset)

Each bad value fails with one line that names the setting and the fix, before any process is launched. This
module imports only the standard library at its top: `deps` and `config_environ` run under any python3.
"""
from __future__ import annotations

import argparse
import difflib
import os
import re
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from resnet import errors

# Read by the launch scripts rather than by the training process. EXPERIMENT_INDEX: set by run_with_docker.sh and
# run.sub, which call run_and_time.sh once per experiment i of the set (resnet.launchset).
LAUNCH_NAMES = {"DGXNGPU", "DGXNNODES", "WALLTIME", "NEXP", "SEED", "LOGDIR", "DRY_RUN", "BIND_CPU", "CONFIG_FILE",
                "MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "CONT", "CACHE_CLEARED", "PYTHON", "RDZV_TIMEOUT_S",
                "EXPERIMENT_INDEX"}
MAX_SEED = 2**31 - 1
# Whole numbers the launch scripts compute with (bash arithmetic) or hand to torchrun: (least, most).
LAUNCH_NUMBERS = {"NEXP": (1, None), "DGXNGPU": (1, None), "DGXNNODES": (1, None), "SEED": (0, MAX_SEED),
                  "SLURM_NODEID": (0, None), "NODE_RANK": (0, None), "MASTER_PORT": (1, 65535),
                  "RDZV_TIMEOUT_S": (1, None), "EXPERIMENT_INDEX": (0, None)}
MAX_GPUS_PER_NODE = 16     # the most GPUs one node has (DGX: 8; HGX-2 class: 16)
SWITCHES = ("DRY_RUN", "BIND_CPU", "CACHE_CLEARED")
KNOWN_PREFIXES = ("NCCL_", "OMP_", "CUDA_", "TORCH_", "PYTORCH_", "UCX_", "MKL_", "SLURM_")
SHELL_NAMES = {"PATH", "PWD", "SHLVL", "_", "OLDPWD"}
# Names that two other MLPerf ResNet implementations give settings of this one, and ours (None: the recipe fixes
# it). NVIDIA: config_DGXH100.sh of mlcommons/training_results_v3.1 and config_L40S_2x4x204.sh of v4.0 (both in
# NVIDIA/benchmarks/resnet/implementations/*mxnet/); MosaicML: setup.sh and 8xA100_80GB-methods/config.yaml of
# mlcommons/training_results_v2.0 (MosaicML/benchmarks/resnet/implementations/).
OTHER_NAMES = {
    "NUMEPOCHS": ("NVIDIA", "EPOCHS"), "EVAL_PERIOD": ("NVIDIA", "EVAL_EVERY_EPOCHS"),
    "LABELSMOOTHING": ("NVIDIA", "LABEL_SMOOTHING"), "NETWORK": ("NVIDIA", "ARCH"),
    "DALI_THREADS": ("NVIDIA", "NUM_WORKERS"), "WD": ("NVIDIA", None), "MOM": ("NVIDIA", None),
    "OPTIMIZER": ("NVIDIA", None), "LRSCHED": ("NVIDIA", None), "LARSETA": ("NVIDIA", None),
    "EVAL_OFFSET": ("NVIDIA", None), "BENCHMARK_TOTAL_RUNS": ("MosaicML", "NEXP"),
    "SYS_GPU_NUM": ("MosaicML", "DGXNGPU"), "MLPERF_ROOT_DIR": ("MosaicML", "LOGDIR"),
    "BENCHMARK_CONFIG": ("MosaicML", "RECIPE"),
}
# What each backend needs installed, and how to get it. Until the loader seam declares this per backend
# (resnet.data.loaders, h-seam), this is its one table.
def fail(text: str):
    raise errors.SettingError(text)


def shown(value: str) -> str:
    """A value as the error line shows it: as typed when plain, quoted when it holds spaces or controls."""
    return value if value.isprintable() and " " not in value and value else repr(value)


def known_names() -> set[str]:
    from resnet.settings import BY_ENV

    return set(BY_ENV) | LAUNCH_NAMES


def __getattr__(name: str):
    if name == "KNOWN_NAMES":           # every name a config may export (read lazily: the table imports more)
        return known_names()
    raise AttributeError(name)


def config_environ(path: Path, preset: dict | None = None, cwd: Path | None = None) -> dict:
    """What `source path` exports in an empty environment (plus `preset`), without the shell's own names. The one
    place a config is read: run_with_docker.sh, the tests and the typo check all ask this."""
    path = Path(path)
    if not path.is_file():
        fail(f"{path}: no such config; pick one of the config_*.sh files")
    script = 'source "$1" >/dev/null || exit 1; env -0'
    env = ["PATH=/usr/bin:/bin", *(f"{k}={v}" for k, v in (preset or {}).items())]
    out = subprocess.run(["env", "-i", *env, "bash", "-c", script, "_", str(path.resolve())],
                         capture_output=True, cwd=cwd or path.resolve().parent)
    if out.returncode:
        last = (out.stderr.decode(errors="replace").strip().splitlines() or ["no message"])[-1]
        fail(f"{path}: sourcing it failed ({last}); fix the shell error")
    exported = dict(item.decode(errors="replace").split("=", 1) for item in out.stdout.split(b"\0") if item)
    return {k: v for k, v in exported.items() if k not in SHELL_NAMES or k in (preset or {})}


def whole(environ, name: str) -> int | None:
    """$NAME as a whole number within LAUNCH_NUMBERS' bounds (None when unset); one line otherwise."""
    value = environ.get(name, "")
    if value == "":
        return None
    least, most = LAUNCH_NUMBERS[name]
    if not re.fullmatch(r"[0-9]{1,10}", value) or int(value) < least or most is not None and int(value) > most:
        fail(f"{name}={shown(value)} is not a whole number >= {least}" + (f" and <= {most}" if most else "")
             + f"; fix or unset {name}")
    return int(value)


def world_size_from_env(environ) -> int:
    """The launch numbers checked (bash computes with them next) and the world size they give."""
    numbers = {name: whole(environ, name) for name in LAUNCH_NUMBERS}
    gpus = numbers["DGXNGPU"] or 1
    if gpus > MAX_GPUS_PER_NODE:
        fail(f"DGXNGPU={gpus} is more GPUs than a node has (at most {MAX_GPUS_PER_NODE}): DGXNGPU counts the GPUs "
             "of one node (processes per node); for more, set DGXNNODES")
    if numbers["SEED"] is not None and numbers["SEED"] + (numbers["NEXP"] or 1) - 1 > MAX_SEED:
        fail(f"SEED: experiment seeds SEED..SEED+NEXP-1 end at {numbers['SEED'] + (numbers['NEXP'] or 1) - 1}, "
             f"above {MAX_SEED}; choose a smaller SEED")
    return gpus * (numbers["DGXNNODES"] or 1)


@dataclass
class Launch:
    """The launch numbers, checked and normalised (bash takes them as they are, under these names)."""
    nexp: int
    gpus: int
    nodes: int
    node_rank: int
    master_port: int
    rdzv_timeout_s: int
    dry_run: int
    bind_cpu: int
    results: str


def resolve(environ) -> Launch:
    """Every launch setting checked (one line naming it and the fix for the first bad one), normalised."""
    system = environ.get("DGXSYSTEM", "")
    if not system:
        fail("DGXSYSTEM is not set; source a config_<SYSTEM>.sh first (see README)")
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", system) or system in (".", ".."):
        fail(f"DGXSYSTEM={shown(system)} is no system name (letters, digits, _ . -); fix the config")
    world_size_from_env(environ)
    n = {name: whole(environ, name) for name in LAUNCH_NUMBERS}
    if (n["EXPERIMENT_INDEX"] or 0) >= (n["NEXP"] or 5):
        fail(f"EXPERIMENT_INDEX={n['EXPERIMENT_INDEX']} is not below NEXP={n['NEXP'] or 5} (the set's size); fix "
             "or unset EXPERIMENT_INDEX")
    nodes = n["DGXNNODES"] or 1
    if nodes > 1:
        rank = n["SLURM_NODEID"] if n["SLURM_NODEID"] is not None else n["NODE_RANK"] or 0
        if rank >= nodes:
            fail(f"node rank {rank} is not below DGXNNODES={nodes}; fix NODE_RANK")
        if not environ.get("MASTER_ADDR"):
            fail(f"DGXNNODES={nodes} needs MASTER_ADDR (node 0's address; run.sub sets it)")
    elif environ.get("NODE_RANK", "") + environ.get("MASTER_ADDR", ""):
        # The configs fix DGXNNODES (the node count is part of the system and of the global batch): a node told
        # that it is one of several must not train alone on a one-node config.
        fail(f"NODE_RANK={environ.get('NODE_RANK', '')} MASTER_ADDR={environ.get('MASTER_ADDR', '')} are set but "
             "DGXNNODES=1 (the config's node count); unset both for one node, or source a multi-node config (e.g. "
             "config_DGXA100_2x8.sh)")
    else:
        rank = 0
    for name in SWITCHES:
        if environ.get(name, "") not in ("", "0", "1"):
            fail(f"{name}={shown(environ[name])} is not 0 or 1; set {name}=0 or {name}=1")
    logdir = environ.get("LOGDIR") or "./results"
    results = str(Path(logdir) / system / "resnet")
    from resnet.settings import check_path

    check_path("LOGDIR", results)
    bind_cpu = environ.get("BIND_CPU") == "1"
    if bind_cpu and not socket_binding():
        errors.warn("BIND_CPU=1 ignored: this PyTorch's torchrun has no --numa-binding=socket (NGC 25.12 has it)")
        bind_cpu = False
    return Launch(n["NEXP"] or 5, n["DGXNGPU"] or 1, nodes, rank, n["MASTER_PORT"] or 29500,
                  n["RDZV_TIMEOUT_S"] or 300, int(environ.get("DRY_RUN") == "1"),
                  int(bind_cpu), results)


def socket_binding() -> bool:
    """Whether torchrun can bind each local rank to the cores of its GPU's socket (`exclusive` would leave a DGX
    A100 rank 8 cores (NPS4) for 8+ FFCV threads); PyTorch 2.6 (NGC 25.01) has no --numa-binding."""
    try:
        from torch.numa.binding import AffinityMode

        AffinityMode("socket")
        return True
    except (ImportError, ValueError):
        return False


def env_to_flags(environ, rows=None) -> list[str]:
    """Train flags from the config variables in `environ` (empty values count as unset); `read` checks them."""
    from resnet.settings import SETTINGS

    words = []
    for s in rows or SETTINGS:
        value = environ.get(s.env, "") if s.env else ""
        if value != "":
            words += [s.flag, value]
    logdir, system = environ.get("LOGDIR", ""), environ.get("DGXSYSTEM", "")
    if logdir:
        words += ["--results-dir", str(Path(logdir) / (system or "local") / "resnet")]
    return words


def starts_set(environ) -> bool:
    """Whether this call starts its set (EXPERIMENT_INDEX unset or 0): a set's warnings are said once, there."""
    return environ.get("EXPERIMENT_INDEX", "") in ("", "0")


def checked_flags(environ) -> list[str]:
    """The train flags, every one checked as the trainer will (warnings printed once, here)."""
    from resnet.settings import add_train_arguments, validate_train_args

    words = env_to_flags(environ)
    world = world_size_from_env(environ)
    train_parser = argparse.ArgumentParser()
    add_train_arguments(train_parser)
    warnings = validate_train_args(train_parser.parse_args(words), world_size=world,
                                   here=environ.get("DRY_RUN", "0") != "1")
    if starts_set(environ):
        for line in warnings:
            errors.warn(line)
    return words


def check_config(path: Path) -> list[str]:
    """Names a config file exports that no part of this package reads (typos)."""
    names = set(config_environ(path))
    known = known_names()
    return sorted(n for n in names if n not in known and not n.startswith(KNOWN_PREFIXES))


def other_name(name: str) -> str | None:
    """What `name` is when another MLPerf ResNet implementation uses it (OTHER_NAMES), or None."""
    if name not in OTHER_NAMES:
        return None
    who, ours = OTHER_NAMES[name]
    return (f"{name} is {who}'s name: this package reads {ours}" if ours else f"{name} is {who}'s name for a "
            "setting this package does not have (its recipe, RECIPE, fixes it: docs/RECIPE.md)")


def other_names(environ) -> list[str]:
    """Warnings for the environment's names that other implementations use (it runs with ours, theirs ignored)."""
    return [f"environment: {other_name(name)}; {name} is ignored" for name in sorted(environ) if other_name(name)]


def misspelt_settings(environ, known=None) -> dict[str, str]:
    """Environment variables that are no setting but look like one: {name: the setting it probably means}.
    Close matches (cutoff 0.8) and a setting's name in other letter case count; others do not, because the
    environment holds many unrelated variables (HOME, HOSTNAME, a scheduler's). In the sourced config file every
    unknown export is reported (check_config): there, anything exported is meant as a setting."""
    known = sorted(known or known_names())
    upper = {k.upper(): k for k in known}
    found = {}
    for name in environ:
        if name in known or name.upper().startswith(KNOWN_PREFIXES) or name in OTHER_NAMES:
            continue
        if name.upper() in upper:
            found[name] = upper[name.upper()]
            continue
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.8) if name.isupper() else []
        if close:
            found[name] = close[0]
    return found


def config_problems(config: Path) -> list[str]:
    problems = []
    for name in check_config(config):
        close = difflib.get_close_matches(name.upper(), sorted(known_names()), n=1)
        if other_name(name):
            problems.append(f"{config}: {other_name(name)}; rename or remove it")
            continue
        problems.append(f"{config}: unknown setting {name}"
                        + (f"; did you mean {close[0]}?" if close else "; remove it or see README 'Settings'"))
    return problems


def env_problems(environ) -> list[str]:
    return [f"environment: {name} is no setting; did you mean {close}? (unset {name} if it is not meant for this "
            "run)" for name, close in sorted(misspelt_settings(environ).items())]


def missing_module(loader: str) -> str | None:
    """The first module the benchmark needs that this python cannot import, with how to install it (the loader's
    library: as its backend declares it; an unknown LOADER is named by `prepare`)."""
    from resnet.data import loaders   # the seam and the declarations import no library

    for module in ("torch", "mlperf_logging", "compliance"):
        if missing := loaders.missing_module(module):
            return missing
    return loaders.declared(loader).missing() if loader in loaders.BACKENDS else None


def nul_words(words, out=None) -> None:
    """Words each followed by a NUL: a value may hold any character but NUL (bash reads them with mapfile -d '')."""
    out = out or sys.stdout.buffer
    out.write(b"".join(os.fsencode(w) + b"\0" for w in words))
    out.flush()


def held_checkpoint(folder) -> str | None:
    """The trainer's own line refusing `folder` when a live run holds it, else None."""
    from resnet import checkpoint    # imports torch: only when a checkpoint folder has an owner file

    who = checkpoint.holder(folder)
    return checkpoint.held_line(folder, who) if who else None


def prepare(environ) -> int:
    """All the checks run_and_time.sh needs before it launches: config file and environment typos, the launch
    numbers, the train flags. Prints `set NAME=VALUE` (normalised numbers) and `flag WORD` records."""
    problems = config_problems(Path(environ["CONFIG_FILE"])) if environ.get("CONFIG_FILE") else []
    problems = problems or env_problems(environ)
    if problems:
        for line in problems:
            print(f"mlperf-resnet: error: {line}", file=sys.stderr)
        return 1
    launch = resolve(environ)
    if starts_set(environ):
        for line in other_names(environ):
            errors.warn(line)
    words = checked_flags(environ)
    held = environ.get("CHECKPOINT_DIR") and launch.node_rank == 0 and not launch.dry_run and \
        Path(environ["CHECKPOINT_DIR"], "owner.lock").exists() and held_checkpoint(environ["CHECKPOINT_DIR"])
    if held:     # the trainer refuses it too, in the same words; said here before any experiment starts
        fail(held)
    nul_words([f"set {k}={v}" for k, v in vars(launch).items()] + [f"flag {w}" for w in words])
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m resnet.launch")
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("deps").add_argument("loader", nargs="?", default="ffcv")
    sub.add_parser("prepare", help="check everything; print the launch numbers and the train flags")
    sub.add_parser("flags", help="print the train flags from the environment, NUL-separated, after checking them")
    sub.add_parser("check-config", help="report exported names that are no known setting").add_argument(
        "config", type=Path)
    sub.add_parser("check-env", help="report environment variables that look like a misspelt setting")
    sub.add_parser("config-names", help="the names config F exports, one a line").add_argument("config", type=Path)
    from resnet import launchset    # stdlib only at its top, too

    launchset.add_verbs(sub)
    args = p.parse_args(argv)
    try:
        if args.cmd == "deps":
            problem = missing_module(args.loader)
            if problem:
                print(problem, file=sys.stderr)
            return 1 if problem else 0
        if args.cmd == "prepare":
            return prepare(os.environ)
        if args.cmd == "config-names":
            print("\n".join(sorted(config_environ(args.config))))
            return 0
        if args.cmd == "flags":
            nul_words(checked_flags(os.environ))
            return 0
        if args.cmd in launchset.VERBS:
            for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):   # the set's record is written whole
                signal.signal(s, signal.SIG_IGN)
            return launchset.run(args)
        problems = env_problems(os.environ) if args.cmd == "check-env" else config_problems(args.config)
        for line in other_names(os.environ) if args.cmd == "check-env" else []:
            errors.warn(line)
    except errors.Error as e:
        errors.report(e)
        return e.exit_code
    for line in problems:
        print(f"mlperf-resnet: error: {line}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
