"""The report's verdicts section: stability score, slowdowns, history band, outliers, conditions.

Built from the selection's journal rows (daemon/report/selection.py: `verdicts`, `conditions`
and the `slowdown` events), with the same words as `soakd status` (daemon/verdict_text.py).
The definitions are daemon/verdicts.py's; the sustained ratio (last slice / first slice) in the
tables above is another figure: it compares two slices, the stability score the worst and the
best of all of them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from daemon.report.page import Cell, Part
from daemon.report.selection import Selection
from daemon.verdict_text import (
    conditions_line,
    history_text,
    loop_rates,
    rate,
    series_name,
    slowdown_line,
    stability_text,
)


@dataclass
class VerdictSection:
    """What the page shows under "Verdicts": a row of cells per series and phase (page.VERDICT_COLUMNS), the
    slowdown lines (unexplained first), each rotation's conditions as (rotation id, text, hot)."""

    rows: list[list[Cell]] = field(default_factory=list)
    slowdowns: list[tuple[str, bool]] = field(default_factory=list)  # (text, explained)
    conditions: list[tuple[str, str, bool]] = field(default_factory=list)


def _stability_cell(row: dict[str, Any]) -> Cell:
    if row["stability"] is None:
        return [Part(stability_text(row), "muted")]
    return [Part(f"{row['stability']:.3f}", "good" if row["passed"] else "bad"),
            Part(f" {'pass' if row['passed'] else 'FAIL'} (pass mark {row['pass_mark']:g})", "muted")]


def _slowdown_cell(row: dict[str, Any]) -> Cell:
    count, unexplained = int(row["slowdowns"] or 0), int(row["unexplained_slowdowns"] or 0)
    if not count:
        return [Part("none", "good")]
    cell = [Part(f"{count} ({count - unexplained} explained)")]
    if unexplained:
        cell.append(Part(f"{unexplained} unexplained", "bad", br=True))
    return cell


def _history_cell(row: dict[str, Any]) -> Cell:
    if row["history_low"] is None:
        return [Part(rate(row["sustained_flop_per_second"])), Part(" (no band yet: fewer than 5 earlier rotations)",
                                                                   "muted")]
    text = history_text(row).removeprefix("sustained ")
    return [Part(text, "bad" if row["regression"] else "")]


def _device_cell(row: dict[str, Any]) -> Cell:
    if row["device_relative"] is None:
        return [Part("— (one device)", "muted")]
    return [Part(f"{row['device_relative']:.3f}", "bad" if row["device_outlier"] else "good"),
            Part(" OUTLIER" if row["device_outlier"] else "", "bad")]


def build_section(selection: Selection) -> VerdictSection | None:
    """The verdicts of the selection's rotations; None when the journal has none (a journal
    from before they existed, or rotations that measured nothing)."""
    if not selection.verdicts and not selection.conditions:
        return None
    section = VerdictSection()
    several = len(selection.rotations) > 1
    for row in selection.verdicts:
        name = series_name(row) + f" · {row['profile']}" + (f" · rotation {row['rotation_id']}" if several else "")
        section.rows.append([[Part(name)], _stability_cell(row), [Part(loop_rates(row["loops"] or []), "muted")],
                             _slowdown_cell(row), _history_cell(row), _device_cell(row)])
    details = []
    for event in selection.events:
        if event["kind"] == "slowdown":
            try:
                details.append(json.loads(event["detail"] or "{}"))
            except ValueError:
                continue
    details.sort(key=lambda d: bool(d.get("explained")))
    section.slowdowns = [(slowdown_line(d), bool(d.get("explained"))) for d in details]
    section.conditions = [(str(rotation_id), conditions_line(row), bool(row.get("started_hot")))
                          for rotation_id, row in sorted(selection.conditions.items())]
    return section
