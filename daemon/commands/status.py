"""`soakd status` and `soakd history`: read the journal; the daemon need not be running."""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import time
from collections import defaultdict
from typing import Any

from daemon.clitools import UsageError
from daemon.commands.run import add_config_arguments, load_or_exit
from daemon.energy import breakdown
from daemon.instance import running
from daemon.journal import Journal, JournalCorrupt, JournalEmpty, JournalError
from daemon.verdict_text import rotation_verdict_lines


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
    return {**rotation, "results": rows, **rotation_verdicts(journal, rotation["id"])}


def rotation_verdicts(journal: Journal, rotation_id: int) -> dict[str, Any]:
    """A rotation's `verdicts` rows (one per series and phase), its `slowdowns` (the slowdown
    events' details) and the `conditions` it started under (None before schema version 3)."""
    conditions = journal.conditions(rotation_id=rotation_id, limit=1)
    slowdowns = [json.loads(e["detail"] or "{}") for e in reversed(journal.events(kind="slowdown",
                                                                                  rotation_id=rotation_id))]
    return {"verdicts": list(reversed(journal.verdicts(rotation_id=rotation_id))), "slowdowns": slowdowns,
            "conditions": conditions[0] if conditions else None}


def _open(args: argparse.Namespace) -> tuple[Any, Journal | None, str | None]:
    """(config, the journal or None when there is none yet, a one-line problem or None)."""
    config = load_or_exit(args)
    try:
        return config, Journal(config.journal_path, readonly=True), None
    except JournalEmpty:
        return config, None, None
    except JournalCorrupt as exc:
        return config, None, f"{exc}; `soakd run` moves it aside and starts a new one"
    except JournalError as exc:
        if not config.journal_path.exists():
            return config, None, None
        return config, None, str(exc)
    except (OSError, sqlite3.Error) as exc:
        return config, None, f"cannot read journal {config.journal_path}: {exc}"


def daemon_pid(config: Any) -> tuple[bool, int | None]:
    """(a daemon holds the state directory, its pid): the pid file, else what the daemon wrote
    in the journal at start (someone may have removed the pid file)."""
    instance = running(config.state_dir)
    if instance is None:
        return False, None
    if instance.pid is not None:
        return True, instance.pid
    try:
        journal = Journal(config.journal_path, readonly=True)
    except (JournalError, OSError, sqlite3.Error):
        return True, None
    try:
        state = journal.get_state("daemon")
    except sqlite3.Error:
        state = None
    finally:
        journal.close()
    pid = state[0].get("pid") if state and isinstance(state[0], dict) else None
    return True, int(pid) if isinstance(pid, int) else None


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
    return lines + rotation_verdict_lines(summary["verdicts"], summary["slowdowns"], summary["conditions"])


def _status_document(config: Any, journal: Journal | None, is_running: bool, pid: int | None) -> dict[str, Any]:
    document: dict[str, Any] = {"running": is_running, "pid": pid, "state_dir": str(config.state_dir),
                                "listen": config.listen, "next_rotation": None, "current": None,
                                "last_rotation": None, "sources": None, "profile": None}
    if journal is None:
        return document
    daemon = journal.get_state("daemon")
    if is_running and daemon and isinstance(daemon[0], dict) and daemon[0].get("listen"):
        document["listen"] = daemon[0]["listen"]  # where the running daemon really listens
    upcoming = journal.get_state("next_rotation")
    document["next_rotation"] = upcoming[0] if upcoming and is_running else None
    current = journal.get_state("current")
    document["current"] = current[0] if current and is_running else None
    sources = journal.get_state("sources")
    document["sources"] = sources[0] if sources else None
    profile = journal.get_state("profile")
    document["profile"] = profile[0] if profile else None
    finished = [r for r in journal.rotations(limit=5) if r["result"] is not None]
    if finished:
        document["last_rotation"] = summarize_rotation(journal, finished[0])
    return document


def _profile_line(profile: dict[str, Any]) -> str:
    """"profile heavy (why); a rotation ~58 min of a 60 min interval" and a warning when it does not fit."""
    minutes = profile["estimate_seconds"] / 60
    text = f"profile: {profile['profile']} ({profile['reason']}); a rotation ~{minutes:.0f} min"
    if profile.get("interval_seconds"):
        text += f" of a {profile['interval_seconds'] / 60:g} min interval"
        if profile.get("fits") is False:
            text += " (does NOT fit: rotations will start late)"
    return text


def _progress_text(progress: dict[str, Any] | None) -> str:
    """"; phase 2/3, slice 4/20, 12 min in, ~38 min left" from the recorder's progress record."""
    if not progress:
        return ""
    text = (f"; phase {progress['phase_index']}/{progress['phases']}, slice "
            f"{progress['slice_index']}/{progress['slices']}, {progress['elapsed_seconds'] / 60:.0f} min in")
    if progress.get("remaining_seconds") is not None:
        text += f", ~{progress['remaining_seconds'] / 60:.0f} min left"
    return text


def _in(stamp: float) -> str:
    seconds = stamp - time.time()
    if seconds <= 0:
        return "due now"
    return f"in {seconds:.0f} s" if seconds < 120 else f"in {seconds / 60:.0f} min"


def run_status(args: argparse.Namespace) -> int:
    """Print whether soakd runs, where it listens, the next rotation, what it runs now (with
    progress), its sources and the last rotation (or JSON); exit 1 on an unreadable journal."""
    config, journal, problem = _open(args)
    if problem is not None:
        print(f"soakd status: {problem}", file=sys.stderr)
        return 1
    is_running, pid = daemon_pid(config)
    try:
        document = _status_document(config, journal, is_running, pid)
    except sqlite3.Error as exc:
        print(f"soakd status: cannot read journal {config.journal_path}: {exc}", file=sys.stderr)
        return 1
    finally:
        if journal is not None:
            journal.close()
    if args.json:
        print(json.dumps(document, indent=2, default=str))
        return 0
    state = f"running (pid {pid if pid else '?'})" if is_running else "not running"
    print(f"soakd: {state}; metrics http://{document['listen']}/metrics; state {config.state_dir}")
    if journal is None:
        print("journal: none yet (the daemon has not run with this state directory)")
        return 0
    if document["next_rotation"]:
        print(f"next rotation: {_when(document['next_rotation'])} ({_in(document['next_rotation'])})")
    if document["profile"]:
        print(_profile_line(document["profile"]))
    current = document["current"]
    if current:
        print(f"now: rotation {current['rotation']}, {current['phase']} on {current['backend']} "
              f"({current['precision']}) since {_when(current['since'])}{_progress_text(current.get('progress'))}")
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
    config, journal, problem = _open(args)
    if problem is not None or journal is None:
        print(f"soakd history: {problem or f'no journal at {config.journal_path}'}", file=sys.stderr)
        return 1
    try:
        summaries = [summarize_rotation(journal, r) for r in journal.rotations(limit=args.limit)]
    except sqlite3.Error as exc:
        print(f"soakd history: cannot read journal {config.journal_path}: {exc}", file=sys.stderr)
        return 1
    finally:
        journal.close()
    if args.json:
        print(json.dumps(summaries, indent=2, default=str))
    else:
        for summary in summaries:
            print("\n".join(_rotation_lines(summary)))
    return 0
