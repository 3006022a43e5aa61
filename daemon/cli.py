"""`soakd` command line: one module per sub-command under daemon/commands/.

Building the parser imports every command module, so each keeps its top-level imports light
(standard library, daemon.clitools, daemon.config, torch-free workloads modules) and imports
torch-heavy code inside the function that runs the command: `soakd --help`, `status`,
`history`, `trigger` and `replay-powermetrics` never import torch
(tests/daemon/test_cli.py checks it, bench/RESULTS.md has the times).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

from daemon.clitools import (
    EX_BROKEN_PIPE,
    EX_INTERRUPTED,
    EX_USAGE,
    Parser,
    UsageError,
    silence_stdout,
)

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


def build_parser() -> Parser:
    """The `soakd` parser with every sub-command registered (no command is required here:
    `main` answers a bare `soakd` with usage and a pointer to --help)."""
    parser = Parser(prog="soakd", description="Sustained-performance telemetry daemon.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one sub-command; returns its exit code.

    Exit codes (daemon.clitools): 2 for bad arguments or no command, 130 after Ctrl-C, 141
    when the reader of stdout went away (quietly: `soakd history | head`), else the command's.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["run"]:  # the daemon: signal handlers before anything slow
        from daemon import signals

        signals.install()
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        sys.stderr.write(parser.format_usage())
        print("soakd: no command given; run 'soakd --help' for the commands and what they do",
              file=sys.stderr)
        return EX_USAGE
    try:
        code: int = args.func(args)
        sys.stdout.flush()  # a closed pipe shows up here rather than in the interpreter's exit
    except UsageError as exc:
        print(f"soakd {args.command}: error: {exc}", file=sys.stderr)
        return EX_USAGE
    except KeyboardInterrupt:
        print(f"soakd {args.command}: interrupted", file=sys.stderr)
        return EX_INTERRUPTED
    except BrokenPipeError:
        silence_stdout()
        return EX_BROKEN_PIPE
    return code


if __name__ == "__main__":
    sys.exit(main())
