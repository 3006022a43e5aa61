"""`soakd status` and `soakd history`: read the journal; the daemon need not be running."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from typing import Any

from daemon.clitools import UsageError
from daemon.commands.run import add_config_arguments, load_or_exit
from daemon.energy import breakdown
from daemon.journal import Journal, JournalError
from daemon.pidlock import running_pid


def register(subparsers: Any) -> None:
    """Add `soakd status` and `soakd history` to the CLI's sub-parsers."""
    status = subparsers.add_parser("status", help="is soakd running, what it runs, the last rotation")
    add_config_arguments(status)
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=run_status)
    history = subparsers.add_parser("history", help="past rotations from the journal")
    add_config_arguments(history)
    history.add_argument("--limit", type=int, default=10, help="rotations to show (default 10)")
    history.add_argument("--json", action="store_true")
    history.set_defaults(func=run_history)


def summarize_rotation(journal: Journal, rotation: dict[str, Any]) -> dict[str, Any]:
    """Per phase x backend x precision totals of a rotation's slices.

    `energy_joules` is whole-system energy (daemon/energy.breakdown of each slice's components,
    no rail counted twice); `energy_counted` names the components it sums and `energy_notes`
    where a total read 0 and its parts were used.
    """
    groups: dict[tuple[str, str, str, str], dict[str, Any]] = defaultdict(
        lambda: {"steps": 0, "seconds": 0.0, "flop": 0.0, "mismatches": 0, "failures": 0, "energy_joules": 0.0,
                 "energy_counted": [], "energy_notes": []})
    for row in journal.slices(rotation_id=rotation["id"]):
        group = groups[(row["phase"], row["requested_backend"], row["backend"], row["precision"])]
        group["steps"] += row["steps"]
        group["seconds"] += row["seconds"]
        group["flop"] += row["flop"]
        group["mismatches"] += row["mismatches"]
        group["failures"] += 1 if row["failure_reason"] else 0
        energy = breakdown(row["energy_joules"] or {})
        if energy.joules is not None:
            group["energy_joules"] += energy.joules
            group["energy_counted"] = sorted({*group["energy_counted"], *energy.counted})
            group["energy_notes"] = sorted({*group["energy_notes"], *energy.notes})
    rows = []
    for (phase, requested, backend, precision), g in groups.items():
        rows.append({"phase": phase, "requested_backend": requested, "backend": backend,
                     "precision": precision, **g,
                     "flop_per_second": g["flop"] / g["seconds"] if g["seconds"] else 0.0})
    return {**rotation, "results": rows}


def _open(args: argparse.Namespace) -> tuple[Any, Journal | None]:
    config = load_or_exit(args)
    try:
        return config, Journal(config.journal_path, readonly=True)
    except (JournalError, OSError):
        return config, None


def _when(stamp: float | None) -> str:
    if not stamp:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(stamp))


def _rotation_lines(summary: dict[str, Any]) -> list[str]:
    lines = [f"rotation {summary['id']}: {summary['profile']} ({summary['trigger']}) "
             f"{_when(summary['started_at'])} -> {_when(summary['ended_at'])}: {summary['result'] or 'running'}"
             + (f" ({summary['detail']})" if summary.get("detail") else "")]
    for row in summary["results"]:
        moved = row["backend"]
        if row["requested_backend"] != row["backend"]:
            moved = f"{row['requested_backend']}>{row['backend']}"
        energy = ""
        if row["energy_counted"]:
            energy = f"  energy {row['energy_joules']:.1f} J ({' + '.join(row['energy_counted'])})"
        lines.append(f"  {row['phase']:<10} {moved:<16} {row['precision']:<5} {row['steps']:>8} steps "
                     f"{row['flop_per_second'] / 1e12:>9.4f} TFLOP/s  mismatches {row['mismatches']}"
                     f"  failed slices {row['failures']}{energy}")
        lines += [f"    note: {note}" for note in row["energy_notes"]]
    return lines


def run_status(args: argparse.Namespace) -> int:
    """Print whether soakd runs, what it runs now, its sources and the last rotation (or JSON); exit 0."""
    config, journal = _open(args)
    pid = running_pid(config.pid_path)
    document: dict[str, Any] = {"running": pid is not None, "pid": pid, "state_dir": str(config.state_dir),
                                "listen": config.listen, "current": None, "last_rotation": None,
                                "sources": None}
    if journal is not None:
        current = journal.get_state("current")
        document["current"] = current[0] if current and pid is not None else None
        sources = journal.get_state("sources")
        document["sources"] = sources[0] if sources else None
        finished = [r for r in journal.rotations(limit=5) if r["result"] is not None]
        if finished:
            document["last_rotation"] = summarize_rotation(journal, finished[0])
        journal.close()
    if args.json:
        print(json.dumps(document, indent=2, default=str))
        return 0
    print(f"soakd: {'running (pid ' + str(pid) + ')' if pid else 'not running'}; "
          f"metrics http://{config.listen}/metrics; state {config.state_dir}")
    if journal is None:
        print("journal: none yet (the daemon has not run with this state directory)")
        return 0
    current = document["current"]
    if current:
        print(f"now: rotation {current['rotation']}, {current['phase']} on {current['backend']} "
              f"({current['precision']}) since {_when(current['since'])}")
    if document["sources"]:
        up = [n for n, s in document["sources"].items() if s["up"]]
        down = [f"{n} ({s['reason']})" if s["reason"] else n
                for n, s in document["sources"].items() if not s["up"]]
        print(f"sources up: {', '.join(up) or '-'}")
        print(f"sources down: {', '.join(down) or '-'}")
        devices = [f"{n}: {s['reason'].split('; down: ', 1)[1]}" for n, s in document["sources"].items()
                   if s["up"] and "; down: " in (s["reason"] or "")]
        if devices:  # a source that works with some devices down (a lost GPU, an unreadable zone)
            print(f"devices down: {'; '.join(devices)}")
    if document["last_rotation"]:
        print("\n".join(_rotation_lines(document["last_rotation"])))
    else:
        print("no finished rotation yet")
    return 0


def run_history(args: argparse.Namespace) -> int:
    """Print the last --limit rotations with per phase x backend totals (or JSON); exit 1 without a journal."""
    if args.limit < 1:
        raise UsageError(f"--limit must be at least 1, got {args.limit}")
    config, journal = _open(args)
    if journal is None:
        print(f"soakd history: no journal at {config.journal_path}", file=sys.stderr)
        return 1
    summaries = [summarize_rotation(journal, r) for r in journal.rotations(limit=args.limit)]
    journal.close()
    if args.json:
        print(json.dumps(summaries, indent=2, default=str))
    else:
        for summary in summaries:
            print("\n".join(_rotation_lines(summary)))
    return 0
