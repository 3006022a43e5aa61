"""`soakd trigger [--micro]`: ask the running daemon for a rotation (SIGUSR1) or micro-benchmarks (SIGUSR2)."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from typing import Any

from daemon.commands.run import add_config_arguments, load_or_exit
from daemon.pidlock import running_pid


def register(subparsers: Any) -> None:
    """Add `soakd trigger` to the CLI's sub-parsers."""
    parser = subparsers.add_parser("trigger", help="start a rotation (or --micro) in the running daemon")
    add_config_arguments(parser)
    parser.add_argument("--micro", action="store_true", help="run the micro-benchmark suite instead")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Signal the running daemon (SIGUSR1, or SIGUSR2 with --micro); exit 1 when none runs."""
    config = load_or_exit(args)
    pid = running_pid(config.pid_path)
    if pid is None:
        print(f"soakd trigger: no running soakd (pid file {config.pid_path})", file=sys.stderr)
        return 1
    signum = signal.SIGUSR2 if args.micro else signal.SIGUSR1
    os.kill(pid, signum)
    what = "micro-benchmarks" if args.micro else "a rotation"
    print(f"sent {signum.name} to soakd (pid {pid}): {what} will start (or queue behind the current one)")
    return 0
