"""Typed errors for library code, and the one place that turns them into a message and an exit code.

Library code (recipe, model, data, checkpoint, settings) raises an `Error` whose text reads
'<where>: <problem>; <fix>'. Only the command layer (`resnet.cli`, or a command module run on its own
through `main`) prints it as the single line `mlperf-resnet: error: <text>` and exits non-zero, so the
library can be used from someone else's code without ending their process. A problem that does not stop
anything is one console line from `warn`: `mlperf-resnet: warning: <text>`.
"""
import contextlib
import sys


#: The trainer's exit statuses, and in the launcher's words: here (stdlib only), so that the launcher says them
#: without importing torch.
SUCCESS, ERROR, NOT_REACHED, NON_FINITE, STOPPED = 0, 1, 2, 3, 4
EXIT_MEANINGS = {SUCCESS: "reached the target", ERROR: "error", NOT_REACHED: "target not reached",
                 NON_FINITE: "non-finite loss", STOPPED: "stopped by a signal"}


class Error(Exception):
    """A problem the user can fix; str() is '<where>: <problem>; <fix>'."""

    exit_code = 1


class SettingError(Error, ValueError):
    """A bad setting (config variable, flag or recipe field)."""


class DataError(Error, ValueError):
    """A problem with the input data (image folders, FFCV files, their manifest)."""


class CheckpointError(Error):
    """A checkpoint that cannot be loaded, or that belongs to another run."""


def report(error: BaseException) -> None:
    print(f"mlperf-resnet: error: {error}", file=sys.stderr, flush=True)


def warn(message: str) -> None:
    """The one console warning line. A console that went away (its pipe closed) must not end a run that is still
    training: a line it cannot take is dropped."""
    with contextlib.suppress(OSError, ValueError):
        print(f"mlperf-resnet: warning: {message}", file=sys.stderr, flush=True)


def main(command, argv=None) -> int:
    """Run one command module on its own (`python -m resnet.data.synth ...`): compliance's runner, with this
    package's errors. A command module imports no command layer."""
    from compliance import main as run_command   # compliance imports nothing of resnet

    return run_command(command, argv, errors=(Error,))
