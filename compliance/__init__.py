"""MLPerf compliance around the training code: the official checkers, the time-to-train summary and the
submission tree. Reads logs only; never imports the training code (`resnet`)."""
import argparse
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


def main(command, argv=None) -> int:
    """Run one compliance command module on its own (`python -m compliance.check ...`): parse its arguments,
    run it, and turn a ComplianceError into the single line `mlperf-resnet: error: ...` and a non-zero exit."""
    parser = argparse.ArgumentParser(prog=f"mlperf-resnet {command.NAME}", description=command.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    command.add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return command.run(args)
    except ComplianceError as e:
        print(f"{ERROR_PREFIX}{e}", file=sys.stderr, flush=True)
        return e.exit_code
