"""What every `soakd` command shares: exit codes, the usage error, comma lists and time parsing.

Standard library only and cheap to import: the CLI builds its parser from this, and the
launchd supervisor (`daemon/supervisor.py`) takes its exit codes from here.

Exit codes follow BSD sysexits(3) where one fits, so launchd and systemd can tell a permanent
error (78, EX_CONFIG: do not restart) from a passing one (75, EX_TEMPFAIL: a later start may
work).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import NoReturn

EX_OK = 0
EX_FAILURE = 1  # the command ran and failed (no journal, nothing to report, a service error)
EX_USAGE = 2  # bad arguments (argparse's own code; sysexits' EX_USAGE is 64, argparse predates it)
EX_TEMPFAIL = 75  # another instance holds the pid lock; a later start may work
EX_CONFIG = 78  # a permanent configuration error: launchd/systemd must not restart-loop on it
EX_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for Ctrl-C
EX_BROKEN_PIPE = 141  # 128 + SIGPIPE: the reader went away (`soakd status --json | head`)

# Seconds per unit of a relative time such as "90m" or "24h".
DURATION_UNITS: dict[str, float] = {"s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0,
                                    "w": 604800.0}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(" + "|".join(sorted(DURATION_UNITS, key=len, reverse=True))
                       + r")")


class UsageError(Exception):
    """Bad arguments found after parsing: printed as one line, exit code 2 (EX_USAGE)."""


class Parser(argparse.ArgumentParser):
    """argparse that reports a bad argument as one line (no usage block) and exits 2."""

    def error(self, message: str) -> NoReturn:
        """Print `prog: error: message` on stderr and exit EX_USAGE; never returns."""
        self.exit(EX_USAGE, f"{self.prog}: error: {message}\n")


def comma_list(value: str | Iterable[str], what: str, allowed: Sequence[str] | None = None) -> list[str]:
    """The items of a comma list ("a, b,,c") or of a list of strings, stripped, empty ones and
    repeats dropped, in order.

    `what` names an item in messages ("phase", "backend"). Raises ValueError when nothing is
    left, when `value` is neither a string nor a list of strings, or when `allowed` is given
    and an item is not in it.
    """
    if isinstance(value, str):
        parts: list[str] = value.split(",")
    elif isinstance(value, list | tuple) and all(isinstance(item, str) for item in value):
        parts = list(value)
    else:
        raise ValueError(f"expected a comma list or a list of {what} names")
    items = list(dict.fromkeys(part.strip() for part in parts if part.strip()))
    if not items:
        raise ValueError(f"no {what} given")
    if allowed is not None:
        for item in items:
            if item not in allowed:
                raise ValueError(f"unknown {what} {item!r} (choose from {', '.join(allowed)})")
    return items


def device_indices(value: str | Sequence[str | int]) -> tuple[str, ...] | None:
    """Device indices within a backend ("0,1", [0, 1]) as canonical strings ("0", "1"), repeats
    dropped; None for "all" (every visible device). Raises ValueError for anything else."""
    if isinstance(value, str) and value.strip() == "all":
        return None
    parts = value.split(",") if isinstance(value, str) else value
    items = [item for item in parts if not (isinstance(item, str) and not item.strip())] \
        if isinstance(parts, list | tuple) else []
    if not items:
        raise ValueError('expected "all" or device indices like 0,1')
    out: list[str] = []
    for item in items:
        text = str(item).strip()
        if isinstance(item, bool) or not text.isdigit():
            raise ValueError(f"{item!r} is not a device index (0, 1, ...)")
        out.append(str(int(text)))
    return tuple(dict.fromkeys(out))


def parse_duration(text: str) -> float:
    """A relative time ("30s", "90 min", "24h", "7d", "2w") in seconds, > 0.

    Units: s, m/min, h, d, w (DURATION_UNITS). Raises ValueError for anything else, zero or a
    negative amount.
    """
    match = _DURATION.fullmatch(text.strip().lower())
    if match is None:
        raise ValueError(f"not a duration: {text!r} (e.g. 30m, 24h, 7d)")
    seconds = float(match.group(1)) * DURATION_UNITS[match.group(2)]
    if seconds <= 0:
        raise ValueError(f"must be a positive duration, got {text!r}")
    return seconds


def parse_since(text: str, now: float) -> float:
    """The epoch second (s) that `--since TEXT` means at `now` (epoch s).

    TEXT is a relative time ("24h": now minus 86400 s, see parse_duration) or an ISO 8601
    date/time ("2026-05-01", "2026-05-01T14:00", with or without an offset; naive means local
    time). Raises ValueError for other text, a non-positive duration or a time after `now`.
    """
    value = text.strip()
    if _DURATION.fullmatch(value.lower()):
        try:
            return now - parse_duration(value)
        except ValueError:
            raise ValueError(f"--since must be a positive duration, got {text!r}") from None
    try:
        stamp = datetime.fromisoformat(value).timestamp()
    except ValueError:
        raise ValueError(f"--since takes an ISO date/time (2026-05-01, 2026-05-01T14:00) or a "
                         f"relative time (24h, 7d), got {text!r}") from None
    if stamp > now:
        raise ValueError(f"--since {text!r} is in the future")
    return stamp


def silence_stdout() -> None:
    """Point stdout at /dev/null after its reader went away (EPIPE), so that the interpreter's
    final flush does not print a second BrokenPipeError traceback on the way out."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    finally:
        os.close(devnull)


def write_or_check(files: Mapping[str, str], folder: Path, check: bool, regenerate: str) -> int:
    """Write generated `files` (relative name -> text, UTF-8) under `folder`, or with `check`
    only compare them with what is there; the repository's generators of committed files
    (grafana/generate.py, launchd/render_examples.py) share it.

    Returns EX_OK, or EX_FAILURE after naming the missing or differing files on stderr with
    `regenerate`, the command that rewrites them. Raises OSError when a file cannot be written.
    """
    stale: list[str] = []
    for name, text in files.items():
        path = folder / name
        if check:
            if not path.is_file() or path.read_text(encoding="utf-8") != text:
                stale.append(name)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    if stale:
        print(f"out of date: {', '.join(stale)} (run {regenerate})", file=sys.stderr)
        return EX_FAILURE
    return EX_OK
