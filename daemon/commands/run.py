"""`soakd run`: the foreground service (launchd and systemd expect no double fork)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from daemon.clitools import EX_CONFIG
from daemon.config import ConfigError, load_config
from workloads.phases import PROFILES


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """--config and --state-dir, which every command that reads the config or journal takes."""
    parser.add_argument("--config", type=Path, metavar="FILE",
                        help="TOML config file (default: the per-user/system location, if present)")
    parser.add_argument("--state-dir", metavar="DIR", help="journal and pid file directory")


def register(subparsers: Any) -> None:
    """Add `soakd run` to the CLI's sub-parsers."""
    parser = subparsers.add_parser("run", help="run the daemon in the foreground")
    add_config_arguments(parser)
    parser.add_argument("--profile", help=f"workload profile (auto, {', '.join(PROFILES)}; default auto: "
                                          "heavy where an accelerator runs, cpu elsewhere)")
    parser.add_argument("--listen", metavar="HOST:PORT", help="metrics address (default 127.0.0.1:10466)")
    parser.set_defaults(func=run)


def flags_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The command-line layer of the config ("section.key": value; None = not given)."""
    return {"daemon.state_dir": args.state_dir, "schedule.profile": getattr(args, "profile", None),
            "daemon.listen": getattr(args, "listen", None)}


def load_or_exit(args: argparse.Namespace) -> Any:
    """The config, or a one-line error and exit 78 (EX_CONFIG)."""
    try:
        return load_config(args.config, flags=flags_from_args(args))
    except ConfigError as exc:
        print(f"soakd: config error: {exc}", file=sys.stderr)
        raise SystemExit(EX_CONFIG) from None


def run(args: argparse.Namespace) -> int:
    """Run the daemon until SIGTERM/SIGINT. Exit 0 after a clean stop, 75 (EX_TEMPFAIL) when
    another soakd holds the state directory, 78 (EX_CONFIG) when it cannot start (bad config,
    journal or state directory, an address in use)."""
    from daemon import log, signals

    inbox = signals.install()  # before anything slow (`soakd` installs them even earlier, in main)
    config = load_or_exit(args)
    log.configure(config.log_format, config.log_level)
    if inbox.stop.is_set():
        log.get_logger().info("stopped", reason="stop requested during start-up, before the state directory was used",
                              signals=inbox.names(inbox.take()))
        return 0
    from daemon.instance import StartupError
    from daemon.service import Service

    service = Service(config, args.config, flags_from_args(args), inbox=inbox)
    try:
        return service.run()
    except StartupError as exc:
        print(f"soakd: cannot start: {exc}", file=sys.stderr)
        return exc.code
