"""`soakd trigger [--micro]`: ask the running daemon for a rotation (SIGUSR1) or micro-benchmarks (SIGUSR2)."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from typing import Any

from daemon.commands.run import add_config_arguments, load_or_exit


def register(subparsers: Any) -> None:
    """Add `soakd trigger` to the CLI's sub-parsers."""
    parser = subparsers.add_parser("trigger", help="start a rotation (or --micro) in the running daemon")
    add_config_arguments(parser)
    parser.add_argument("--micro", action="store_true", help="run the micro-benchmark suite instead")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Signal the running daemon (SIGUSR1, or SIGUSR2 with --micro); exit 1 when none runs."""
    from daemon.commands.status import daemon_pid

    config = load_or_exit(args)
    is_running, pid = daemon_pid(config)
    if pid is None:
        why = "its pid is unknown" if is_running else "none holds the state directory"
        print(f"soakd trigger: no running soakd to signal ({why}: {config.state_dir})", file=sys.stderr)
        return 1
    signum = signal.SIGUSR2 if args.micro else signal.SIGUSR1
    os.kill(pid, signum)
    what = "micro-benchmarks" if args.micro else "a rotation"
    print(f"sent {signum.name} to soakd (pid {pid}): {what} will start (or queue behind the current one)")
    return 0
