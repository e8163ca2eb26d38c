"""What run_and_time.sh asks of Python before it launches anything: the environment turned into checked train
flags, the sourced config and the environment checked for typos, the launch numbers checked before bash
computes with them. resnet.settings holds the table; this module reads it (settings never imports launch).

    python -m resnet.launch flags            train flags from the environment, NUL-separated, after checking them
    python -m resnet.launch check-config F   names config F exports that no part of this package reads
    python -m resnet.launch check-env        environment variables that look like a misspelt setting

Each bad value fails with one line that names the setting and the fix, before any process is launched.
"""
from __future__ import annotations

import argparse
import difflib
import os
import re
import subprocess
import sys
from pathlib import Path

from resnet import errors
from resnet.settings import (BY_ENV, POSITIVE, SETTINGS, add_train_arguments, fail, in_interval,
                             validate_train_args)

# Read by the launch scripts rather than by the training process.
LAUNCH_NAMES = {"DGXNGPU", "DGXNNODES", "WALLTIME", "NEXP", "SEED", "LOGDIR", "DRY_RUN", "BIND_CPU", "CONFIG_FILE",
                "MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "CONT", "CACHE_CLEARED", "PYTHON", "RDZV_TIMEOUT_S"}
# Whole numbers the launch scripts compute with (bash arithmetic) or hand to torchrun: checked before use.
LAUNCH_NUMBERS = {"DGXNGPU": POSITIVE, "DGXNNODES": POSITIVE, "NEXP": POSITIVE, "SEED": "[0, 2147483647]",
                  "MASTER_PORT": "[1, 65535]", "RDZV_TIMEOUT_S": POSITIVE}
KNOWN_NAMES = set(BY_ENV) | LAUNCH_NAMES
KNOWN_PREFIXES = ("NCCL_", "OMP_", "CUDA_", "TORCH_", "PYTORCH_", "UCX_", "MKL_", "SLURM_")


def env_to_flags(environ, rows=SETTINGS) -> list[str]:
    """Train flags from the config variables in `environ` (empty values count as unset); `read` checks them."""
    words = []
    for s in rows:
        value = environ.get(s.env, "") if s.env else ""
        if value != "":
            words += [s.flag, value]
    logdir, system = environ.get("LOGDIR", ""), environ.get("DGXSYSTEM", "")
    if logdir:
        words += ["--results-dir", str(Path(logdir) / (system or "local") / "resnet")]
    return words


def world_size_from_env(environ) -> int:
    """The launch numbers checked (bash computes with them next) and the world size they give."""
    for name, interval in LAUNCH_NUMBERS.items():
        value = environ.get(name, "")
        if value == "":
            continue
        if not re.fullmatch(r"[0-9]{1,10}", value) or not in_interval(int(value), interval):
            fail(name, f"{value!r} is not a whole number in {interval}", f"fix {name} in the config")
    last_seed = int(environ.get("SEED") or 0) + int(environ.get("NEXP") or 1) - 1
    if environ.get("SEED") and last_seed > 2**31 - 1:
        fail("SEED", f"experiment seeds SEED..SEED+NEXP-1 end at {last_seed}, above 2147483647",
             "choose a smaller SEED")
    return int(environ.get("DGXNGPU") or 1) * int(environ.get("DGXNNODES") or 1)


def check_config(path: Path) -> list[str]:
    """Names a config file exports that no part of this package reads (typos)."""
    if not path.is_file():
        fail(str(path), "no such config", "pick one of the config_*.sh files")
    script = 'source "$1" >/dev/null || exit 1; env -0'
    out = subprocess.run(["env", "-i", "PATH=/usr/bin:/bin", "bash", "-c", script, "_", str(path.resolve())],
                         capture_output=True, cwd=path.resolve().parent)
    if out.returncode:
        last = (out.stderr.decode(errors="replace").strip().splitlines() or ["no message"])[-1]
        fail(str(path), f"sourcing it failed ({last})", "fix the shell error")
    names = {item.split(b"=", 1)[0].decode(errors="replace") for item in out.stdout.split(b"\0") if item}
    names -= {"PATH", "PWD", "SHLVL", "_", "OLDPWD"}
    return sorted(n for n in names if n not in KNOWN_NAMES and not n.startswith(KNOWN_PREFIXES))


def misspelt_settings(environ, known=None) -> dict[str, str]:
    """Environment variables that are no setting but look like one: {name: the setting it probably means}.
    Only close matches count (cutoff 0.8), so ordinary variables such as HOME or HOSTNAME pass."""
    known = sorted(known or KNOWN_NAMES)
    found = {}
    for name in environ:
        if name in known or name.startswith(KNOWN_PREFIXES) or not name.isupper():
            continue
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.8)
        if close:
            found[name] = close[0]
    return found


def flags(environ, out=None) -> int:
    """Print the checked train flags, each followed by a NUL: a value may hold any character but NUL (a newline
    in a setting stays inside its value; bash reads them with `mapfile -d ''`)."""
    words = env_to_flags(environ)
    world = world_size_from_env(environ)
    train_parser = argparse.ArgumentParser()
    add_train_arguments(train_parser)
    warnings = validate_train_args(train_parser.parse_args(words), world_size=world,
                                   here=environ.get("DRY_RUN", "0") != "1")
    for line in warnings:
        errors.warn(line)
    out = out or sys.stdout.buffer
    out.write(b"".join(os.fsencode(w) + b"\0" for w in words))
    out.flush()
    return 0


def config_problems(config: Path) -> list[str]:
    problems = []
    for name in check_config(config):
        close = difflib.get_close_matches(name, sorted(KNOWN_NAMES), n=1)
        problems.append(f"{config}: unknown setting {name}"
                        + (f"; did you mean {close[0]}?" if close else "; remove it or see README 'Settings'"))
    return problems


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m resnet.launch")
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("flags", help="print the train flags from the environment, NUL-separated, after checking them")
    c = sub.add_parser("check-config", help="report exported names that are no known setting (typos)")
    c.add_argument("config", type=Path)
    sub.add_parser("check-env", help="report environment variables that look like a misspelt setting")
    args = p.parse_args(argv)
    try:
        if args.cmd == "flags":
            return flags(os.environ)
        if args.cmd == "check-env":
            problems = [f"environment: {name} is no setting; did you mean {close}? (unset {name} if it is not "
                        "meant for this run)"
                        for name, close in sorted(misspelt_settings(os.environ).items())]
        else:
            problems = config_problems(args.config)
    except errors.Error as e:
        errors.report(e)
        return e.exit_code
    for line in problems:
        print(f"mlperf-resnet: error: {line}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
