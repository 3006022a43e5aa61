"""Which journal rows one report covers: a rotation, a time window, or the last finished rotation.

Reads the journal only. Each selected slice row gets the `profile` of its rotation (the
journal keeps the profile on the rotation row), so that figures are never pooled across
profiles (daemon/report/statistics.py).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from daemon.journal import Journal
from daemon.report.units import when


class ReportError(Exception):
    """Nothing to report, or the report cannot be written: one line, exit 1."""


@dataclass
class Selection:
    """The rows one report covers, as the journal returns them (dicts, JSON columns decoded)."""

    title: str  # "rotation 3", "since 2026-05-01 14:00:00 (24h)"
    scope: str  # "rotation": ratios against the rotation's first slice; "window": the window's
    start: float  # epoch s
    end: float  # epoch s
    rotations: list[dict[str, Any]]  # in id order
    slices: list[dict[str, Any]]  # each with its rotation's `profile` added
    telemetry: list[dict[str, Any]]
    events: list[dict[str, Any]]  # in time order
    sources: dict[str, tuple[bool, str]] = field(default_factory=dict)  # name: (up, reason) at the end
    verdicts: list[dict[str, Any]] = field(default_factory=list)  # the rotations' verdict rows, in id order
    conditions: dict[int, dict[str, Any]] = field(default_factory=dict)  # rotation id: its conditions row
    # (run_key, profile) of each verdict row: that run configuration's verdict rows up to the
    # selection's last rotation, oldest first, at most HISTORY_ROTATIONS (the history plot)
    history: dict[tuple[str, str], list[dict[str, Any]]] = field(default_factory=dict)


HISTORY_ROTATIONS = 40  # rotations of one run configuration the history plot shows


def select(journal: Journal, rotation: int | None = None, since: float | None = None,
           since_text: str | None = None, now: float | None = None) -> Selection:
    """One rotation by id, every slice that started at or after `since` (epoch s), or by
    default the last finished rotation that has slices.

    `since_text` is what the user typed, for the title; `now` (epoch s) defaults to the clock.
    Raises ReportError when there is nothing to report.
    """
    now = time.time() if now is None else now
    if rotation is not None:
        row = journal.rotation(rotation)
        if row is None:
            raise ReportError(f"no rotation {rotation} in {journal.path}")
        slices = journal.slices(rotation_id=rotation)
        if not slices:
            raise ReportError(f"rotation {rotation} has no slices (result: {row['result'] or 'running'})")
        return _rotation_selection(journal, row, slices, now)
    if since is not None:
        return _window_selection(journal, since, since_text, now)
    for row in journal.rotations(limit=1_000_000):
        if row["result"] is None:
            continue  # still running
        slices = journal.slices(rotation_id=row["id"])
        if slices:  # a skipped rotation has none
            return _rotation_selection(journal, row, slices, now)
    raise ReportError(f"no finished rotation with slices in {journal.path} yet")


def _window_selection(journal: Journal, since: float, since_text: str | None, now: float) -> Selection:
    slices = journal.slices(since=since)
    if not slices:
        raise ReportError(f"no slices since {when(since)} in {journal.path}")
    ids = {s["rotation_id"] for s in slices}
    rotations = {r["id"]: r for r in journal.rotations(limit=1_000_000, since=since)}
    for rotation_id in ids - rotations.keys():  # started before the window, ran into it
        found = journal.rotation(rotation_id)
        if found is not None:
            rotations[rotation_id] = found
    end = max(now, max(s["ended_at"] for s in slices))
    label = f"since {when(since)}" + (f" ({since_text})" if since_text else "")
    ordered = [rotations[i] for i in sorted(rotations)]
    return _with_verdicts(journal, Selection(label, "window", since, end, ordered, _with_profiles(slices, ordered),
                                             journal.telemetry(since=since, until=end), _events(journal, since, end),
                                             _sources(journal, end)))


def _rotation_selection(journal: Journal, row: dict[str, Any], slices: list[dict[str, Any]],
                        now: float) -> Selection:
    start = min([row["started_at"], *(s["started_at"] for s in slices)])
    end = row["ended_at"] or max([now, *(s["ended_at"] for s in slices)])
    # by rotation id too: a rotation that overran into the next hour must not lend this one its rows
    telemetry = [t for t in journal.telemetry(since=start, until=end) if t["rotation_id"] in (row["id"], None)]
    return _with_verdicts(journal, Selection(f"rotation {row['id']}", "rotation", start, end, [row],
                                             _with_profiles(slices, [row]), telemetry, _events(journal, start, end),
                                             _sources(journal, end)))


def _with_verdicts(journal: Journal, selection: Selection) -> Selection:
    """`selection` with its rotations' verdicts and conditions (daemon/verdicts.py, daemon/conditions.py)
    and the history of each run configuration they judged."""
    ids = [r["id"] for r in selection.rotations]
    last = max(ids)
    for rotation_id in ids:
        selection.verdicts += reversed(journal.verdicts(rotation_id=rotation_id))
        conditions = journal.conditions(rotation_id=rotation_id, limit=1)
        if conditions:
            selection.conditions[rotation_id] = conditions[0]
    for row in selection.verdicts:
        key = (row["run_key"], row["profile"])
        if row["run_key"] is not None and key not in selection.history:
            rows = journal.verdicts(run_key=row["run_key"], profile=row["profile"], limit=HISTORY_ROTATIONS,
                                    until_rotation=last)
            selection.history[key] = list(reversed(rows))
    return selection


def _with_profiles(slices: list[dict[str, Any]], rotations: list[dict[str, Any]]) -> list[dict[str, Any]]:
    profiles = {r["id"]: r["profile"] for r in rotations}
    return [{**s, "profile": profiles.get(s["rotation_id"], "unknown")} for s in slices]


def _sources(journal: Journal, end: float) -> dict[str, tuple[bool, str]]:
    """Each telemetry source's last up/down event before `end`: which readings the plots come from."""
    changes = [e for kind in ("source_up", "source_down") for e in journal.events(kind=kind, limit=10_000)
               if e["time"] <= end and e["source"]]
    state: dict[str, tuple[bool, str]] = {}
    for event in sorted(changes, key=lambda e: (e["time"], e["id"])):
        try:
            detail = json.loads(event["detail"] or "{}")
        except ValueError:
            detail = {}
        reason = str(detail.get("reason") or "") if isinstance(detail, dict) else ""
        state[event["source"]] = (event["kind"] == "source_up", reason)
    return dict(sorted(state.items()))


def _events(journal: Journal, start: float, end: float) -> list[dict[str, Any]]:
    rows = [e for e in journal.events(since=start, limit=5000) if e["time"] <= end]
    return sorted(rows, key=lambda e: (e["time"], e["id"]))
