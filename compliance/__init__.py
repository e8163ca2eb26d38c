"""MLPerf compliance around the training code: the official checkers, the time-to-train summary and the
submission tree. Reads logs only; never imports the training code (`resnet`)."""
import argparse
import sys


class ComplianceError(Exception):
    """A problem the user can fix; str() is '<where>: <problem>; <fix>'."""

    exit_code = 1


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
        print(f"mlperf-resnet: error: {e}", file=sys.stderr, flush=True)
        return e.exit_code
