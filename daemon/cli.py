"""`soakd` command line: one module per sub-command under daemon/commands/."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import NoReturn

# Each module defines `register(subparsers)`, which adds its parser and sets `func`.
COMMAND_MODULES: tuple[str, ...] = (
    "daemon.commands.once",
    "daemon.commands.service",
    "daemon.commands.run",
    "daemon.commands.status",
    "daemon.commands.trigger",
    # further sub-commands are registered below this line
    "daemon.commands.replay",
    "daemon.commands.micro",
    "daemon.commands.coreml_overhead",
    "daemon.commands.report",
)

EX_USAGE = 2


class UsageError(Exception):
    """Bad arguments found after parsing; printed as one line, exit code 2."""


class Parser(argparse.ArgumentParser):
    """argparse that reports a bad argument as one line (no usage block) and exits 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EX_USAGE, f"{self.prog}: error: {message}\n")


def build_parser() -> Parser:
    parser = Parser(prog="soakd", description="Sustained-performance telemetry daemon.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    subparsers.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["run"]:  # the daemon: signal handlers before the slow imports of build_parser
        from daemon import signals

        signals.install()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
    except UsageError as exc:
        print(f"soakd {args.command}: error: {exc}", file=sys.stderr)
        return EX_USAGE
    except KeyboardInterrupt:
        print(f"soakd {args.command}: interrupted", file=sys.stderr)
        return 130
    return code


if __name__ == "__main__":
    # Under `python -m daemon.cli` this file runs as __main__, a second copy of the module:
    # call the imported daemon.cli so that its UsageError is the one sub-commands raise.
    from daemon.cli import main as _main

    sys.exit(_main())
