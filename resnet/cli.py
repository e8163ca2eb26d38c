"""`mlperf-resnet`: one command, one sub-command per job. Each module registers its own sub-command."""
import argparse
import importlib
import sys

COMMANDS = [
    "resnet.schedule",
    "resnet.data.synth",
    "resnet.data.prepare",
    "resnet.train",
    "compliance.check",
    "compliance.summarize",
    "compliance.package",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mlperf-resnet", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(name).register(sub)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


def standalone(register, argv=None) -> int:
    """Run one command module on its own (`python -m resnet.data.synth ...`)."""
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    register(sub)
    name = next(iter(sub.choices))
    args = parser.parse_args([name, *(sys.argv[1:] if argv is None else argv)])
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
