"""`soakd report`: PNG plots and an HTML page from the journal; the daemon need not be running.

Exit status: 0 written; 1 no journal, nothing matching, matplotlib missing or an unwritable
--out; 2 bad arguments; 78 a bad config.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

from daemon.clitools import UsageError, parse_since
from daemon.commands.run import add_config_arguments, load_or_exit
from daemon.journal import Journal, JournalEmpty, JournalError


def register(subparsers: Any) -> None:
    """Add `soakd report` to the CLI's sub-parsers."""
    parser = subparsers.add_parser("report", help="PNG plots and an HTML page from the journal")
    add_config_arguments(parser)
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--since", metavar="WHEN",
                       help="every slice since an ISO date/time (2026-05-01T14:00) or a relative time "
                            "(24h, 7d)")
    which.add_argument("--rotation", type=int, metavar="N", help="one rotation by id (see soakd history)")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR",
                        help="directory for index.html and the PNGs (created if missing)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Write the report and print one line naming what was written; exit codes in the module docstring.

    Raises UsageError (one line, exit 2) for a --rotation below 1, a --since that does not
    parse, or an --out that exists and is not a directory.
    """
    from daemon.report import ReportError, write_report

    if args.rotation is not None and args.rotation < 1:
        raise UsageError(f"--rotation must be a rotation id (1 or more), got {args.rotation}")
    since = None
    if args.since is not None:
        try:
            since = parse_since(args.since, now=time.time())
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    if args.out.exists() and not args.out.is_dir():
        raise UsageError(f"--out {args.out} exists and is not a directory")
    config = load_or_exit(args)
    try:
        journal = Journal(config.journal_path, readonly=True)
    except (JournalError, OSError, sqlite3.Error) as exc:
        missing = isinstance(exc, JournalEmpty) or not config.journal_path.exists()
        print(f"soakd report: {f'no journal at {config.journal_path}' if missing else exc}", file=sys.stderr)
        return 1
    try:
        report = write_report(journal, args.out, rotation=args.rotation, since=since, since_text=args.since)
    except ReportError as exc:
        print(f"soakd report: {exc}", file=sys.stderr)
        return 1
    except sqlite3.Error as exc:  # not a journal, or a corrupt one
        print(f"soakd report: cannot read {config.journal_path}: {exc}", file=sys.stderr)
        return 1
    finally:
        journal.close()
    print(f"wrote {report.index} and {len(report.plots)} plots: {', '.join(p.name for p in report.plots)}")
    return 0
