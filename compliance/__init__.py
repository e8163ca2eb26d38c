"""MLPerf compliance around the training code: the official checkers, the time-to-train summary and the
submission tree. Reads logs only; never imports the training code (`resnet`)."""
import argparse
import re
import sys

ERROR_PREFIX = "mlperf-resnet: error: "  # what the command layer puts before an error's text


class ComplianceError(Exception):
    """A problem the user can fix; str() is '<where>: <problem>; <fix>'."""

    exit_code = 1


class ComplianceErrors(ComplianceError):
    """Several problems found at once (e.g. every log a submission cannot take). str() puts each on its own line,
    so that the command layer, which prints ERROR_PREFIX + str(error), shows every problem as its own error
    line; `.problems` holds them for callers that want the list."""

    def __init__(self, problems):
        self.problems = list(problems)
        super().__init__(self.problems)

    def __str__(self) -> str:
        return f"\n{ERROR_PREFIX}".join(self.problems)


# An organisation, system or implementation name becomes a folder of the submission tree, and the official tools
# put it in paths and CSV files: a leading letter or digit, then letters, digits, . _ - + (as MLCommons' own
# submitter and system names are: NVIDIA, dgxa100_ngc22.04_mxnet, 8xA100_80GB-methods).
PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}")
PLAIN_NAME_RULE = "1-64 letters, digits, '.', '_', '-' or '+', starting with a letter or digit"


def check_plain_name(what: str, value: str) -> None:
    """Raise ComplianceError unless `value` is a plain name (PLAIN_NAME); `what` names the setting, e.g. '--org'.
    The trainer checks SUBMISSION_ORG and DGXSYSTEM with it before training, and `package` its --org, --system
    and --impl, so that a run is never made under a name the package refuses."""
    if isinstance(value, str) and PLAIN_NAME.fullmatch(value):
        return
    # the suggestion: each run of other characters becomes one '_', from the first letter or digit on
    plain = re.sub(r"[^A-Za-z0-9._+-]+", "_", value if isinstance(value, str) else "")
    plain = re.sub(r"^[^A-Za-z0-9]+", "", plain)[:64].rstrip("_")
    fix = f"use e.g. {plain}" if plain else "give a name such as Acme_Inc or DGXA100"
    raise ComplianceError(f"{what}: {value!r} is not a plain name ({PLAIN_NAME_RULE}); {fix}")


def main(command, argv=None, errors=(ComplianceError,)) -> int:
    """Run one command module on its own (`python -m compliance.check ...`; resnet's through resnet.errors.main):
    parse its arguments, run it, and turn one of `errors` into the single line `mlperf-resnet: error: ...` and a
    non-zero exit. A command module has NAME, add_arguments(parser) and run(args) -> exit code."""
    parser = argparse.ArgumentParser(prog=f"mlperf-resnet {command.NAME}", description=command.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    command.add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return command.run(args)
    except errors as e:
        print(f"{ERROR_PREFIX}{e}", file=sys.stderr, flush=True)
        return e.exit_code
