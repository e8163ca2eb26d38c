"""`mlperf-resnet`: one command, one sub-command per job.

This is the only module that knows every command. A command module has NAME, HELP, add_arguments(parser)
and run(args) -> exit code; it raises typed errors (resnet.errors.Error, compliance.ComplianceError) and
this layer turns them into the single line `mlperf-resnet: error: ...` and a non-zero exit.
"""
import argparse
import sys

from compliance import ComplianceError, check, package, summarize
from resnet import errors, schedule, train
from resnet.data import prepare, synth

COMMANDS = [schedule, synth, prepare, train, check, summarize, package]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mlperf-resnet", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        p = sub.add_parser(command.NAME, help=command.HELP, description=command.__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        command.add_arguments(p)
        p.set_defaults(run=command.run)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (errors.Error, ComplianceError) as e:
        errors.report(e)
        return e.exit_code


if __name__ == "__main__":
    sys.exit(main())
