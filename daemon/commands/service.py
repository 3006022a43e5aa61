"""`soakd service install|uninstall|status`: soakd as a launchd job (macOS) or systemd unit (Linux).

The work is in the daemon/install/ package; launchd/README.md explains the choices.
Exit status: 0 done (status: loaded/active), 3 status: not loaded/active, 1 an error, 2 bad
arguments.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from daemon.clitools import EX_FAILURE, UsageError
from daemon.install.spec import MANAGERS, Manager, ServiceError, detect_manager, resolve_spec

ACTIONS = ("install", "uninstall", "status")


def register(subparsers: Any) -> None:
    """Add `soakd service` to the CLI's sub-parsers."""
    parser = subparsers.add_parser(
        "service", help="install, remove or inspect soakd as a launchd job or systemd unit")
    parser.add_argument("action", choices=ACTIONS)
    parser.add_argument("--system", action="store_true",
                        help="the system-wide service (root): a LaunchDaemon or a system unit; "
                             "default: the user's LaunchAgent or user unit")
    parser.add_argument("--config", type=Path, metavar="FILE",
                        help="config file for the service (default: the default location, "
                             "pinned if it exists)")
    parser.add_argument("--state-dir", type=Path, metavar="DIR",
                        help="journal and pid file (default: per user or system)")
    parser.add_argument("--prefix", type=Path, metavar="DIR",
                        help="write the files under DIR and run no service command "
                             "(tests, packagers)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the files and commands, change nothing")
    parser.add_argument("--manager", choices=MANAGERS,
                        help="launchd or systemd (default: this host's)")
    parser.set_defaults(func=run)


def _manager(args: argparse.Namespace, renders_only: bool) -> Manager:
    if args.manager is None:
        return detect_manager()
    chosen: Manager = args.manager
    if not renders_only:
        try:
            host = detect_manager()
        except ServiceError:
            host = None
        if host != chosen:
            raise ServiceError(f"{chosen} is not this host's service manager; use --dry-run or "
                               "--prefix to only render its files")
    return chosen


def run(args: argparse.Namespace) -> int:
    """Install, uninstall or inspect the service; exit codes in the module docstring.

    Raises UsageError (one line, exit 2) when `install` is given a --config that is not a file.
    """
    from daemon.install.manager import install, status, subprocess_runner, uninstall
    from daemon.install.render import make_plan

    if args.config is not None and args.action == "install" and not args.config.is_file():
        # The daemon would exit 78 on it at every start: refuse now instead.
        raise UsageError(f"--config {args.config}: no such file")
    prefix = args.prefix.absolute() if args.prefix is not None else None
    renders_only = args.dry_run or prefix is not None
    try:
        manager = _manager(args, renders_only)
        spec = resolve_spec(manager, system=args.system, config=args.config,
                            state_dir=args.state_dir, for_this_host=not renders_only)
        plan = make_plan(spec)
        if args.action == "install":
            install(plan, runner=subprocess_runner, prefix=prefix, activate=prefix is None,
                    dry_run=args.dry_run)
            return 0
        if args.action == "uninstall":
            uninstall(plan, runner=subprocess_runner, prefix=prefix, activate=prefix is None,
                      dry_run=args.dry_run)
            return 0
        return status(plan, runner=None if prefix is not None else subprocess_runner,
                      prefix=prefix)
    except ServiceError as exc:
        print(f"soakd service: error: {exc}", file=sys.stderr)
        return EX_FAILURE
