"""`soakd report`: PNG plots and a self-contained HTML page from the journal.

Everything here reads the journal only; matplotlib is imported when plots are drawn, so the
daemon and the rest of the CLI work without the `report` extra installed.

Definitions used on the page (and checked by tests/daemon/test_report.py):
- a *lane* is one (requested backend, backend it ran on, precision, CPU baseline or not); a
  lane whose requested backend differs from where it ran is labelled "requested→ran on";
- throughput of a slice is its FLOP over its measured seconds (warm-up excluded); of a
  phase×lane, total FLOP over total measured seconds;
- the sustained ratio of a slice is its throughput over the first slice's of the same
  phase×lane in the selection (the rotation, or the --since window); the table shows the
  last slice's ratio;
- energy per operation uses `system_energy` on each slice's per-component joules, over the
  slices that recorded energy and ran steps.
"""

from __future__ import annotations

import html
import json
import math
import re
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from daemon.journal import Journal
from daemon.levels import LEVELS, ORDINALS, level_ordinal
from daemon.stability import system_energy
from workloads.host import host_info

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

INSTALL_HINT = "matplotlib is not installed: pip install 'soakd[report]'"
PLOT_FILES = ("throughput.png", "sustained.png", "power.png", "thermal.png", "energy.png")
_SHADE_MAX_ROTATIONS = 3  # phase bands on telemetry plots only while they stay readable
_MARKERS_UP_TO = 60  # points per line; beyond that markers hide the line
_COLOURS = {"mps": "#1f77b4", "coreml-ane": "#d62728", "cuda": "#2ca02c", "cpu": "#ff7f0e",
            "cpu baseline": "#7f7f7f", "coreml-gpu": "#9467bd", "coreml-cpu": "#8c564b", "coreml-all": "#e377c2"}
_SPARE_COLOURS = ("#17becf", "#bcbd22", "#393b79", "#8c6d31", "#843c39", "#7b4173")
_BIN_OVER = 1500  # telemetry rows beyond which a plot shows bins, not every row
_BINS = 600
_TICK_STEPS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200)
_UNITS = {"s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_BACKEND_RANK = {"mps": 0, "cuda": 0, "coreml-ane": 1, "coreml-gpu": 2, "coreml-all": 3,
                 "coreml-cpu": 4, "cpu": 5}
# thermal bands from calm to severe, same order as daemon.levels.LEVELS
_LEVEL_COLOURS = ("#2e7d32", "#9e9d24", "#f9a825", "#ef6c00", "#c62828", "#4a148c")


class ReportError(Exception):
    """Nothing to report, or the report cannot be written: one line, exit 1."""


# --- selection --------------------------------------------------------------------------------


def parse_since(text: str, now: float | None = None) -> float:
    """An ISO date/time (naive means local time) or a relative `30m`, `24h`, `7d`, `2w`."""
    now = time.time() if now is None else now
    value = text.strip()
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(s|m|min|h|d|w)", value.lower())
    if match:
        amount = float(match.group(1))
        if amount <= 0:
            raise ValueError(f"--since must be a positive duration, got {text!r}")
        return now - amount * _UNITS[match.group(2)]
    try:
        stamp = datetime.fromisoformat(value).timestamp()
    except ValueError:
        raise ValueError(f"--since takes an ISO date/time (2026-05-01, 2026-05-01T14:00) or a "
                         f"relative time (24h, 7d), got {text!r}") from None
    if stamp > now:
        raise ValueError(f"--since {text!r} is in the future")
    return stamp


@dataclass
class Selection:
    """The rows one report covers."""

    title: str
    scope: str  # "rotation": reference is the rotation's first slice; "window": the window's
    start: float
    end: float
    rotations: list[dict[str, Any]]
    slices: list[dict[str, Any]]
    telemetry: list[dict[str, Any]]
    events: list[dict[str, Any]]
    sources: dict[str, tuple[bool, str]] = field(default_factory=dict)  # name: (up, reason) at the end


def select(journal: Journal, rotation: int | None = None, since: float | None = None,
           since_text: str | None = None, now: float | None = None) -> Selection:
    """One rotation, every slice since a time, or (default) the last finished rotation with slices."""
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
        slices = journal.slices(since=since)
        if not slices:
            raise ReportError(f"no slices since {_when(since)} in {journal.path}")
        ids = {s["rotation_id"] for s in slices}
        rotations = {r["id"]: r for r in journal.rotations(limit=1_000_000, since=since)}
        for rotation_id in ids - rotations.keys():  # started before the window, ran into it
            found = journal.rotation(rotation_id)
            if found is not None:
                rotations[rotation_id] = found
        end = max(now, max(s["ended_at"] for s in slices))
        label = f"since {_when(since)}" + (f" ({since_text})" if since_text else "")
        return Selection(label, "window", since, end, [rotations[i] for i in sorted(rotations)], slices,
                         journal.telemetry(since=since, until=end), _events(journal, since, end),
                         _sources(journal, end))
    for row in journal.rotations(limit=1_000_000):
        if row["result"] is None:
            continue  # still running
        slices = journal.slices(rotation_id=row["id"])
        if slices:  # a skipped rotation has none
            return _rotation_selection(journal, row, slices, now)
    raise ReportError(f"no finished rotation with slices in {journal.path} yet")


def _rotation_selection(journal: Journal, row: dict[str, Any], slices: list[dict[str, Any]],
                        now: float) -> Selection:
    start = min([row["started_at"], *(s["started_at"] for s in slices)])
    end = row["ended_at"] or max([now, *(s["ended_at"] for s in slices)])
    # by rotation id too: a rotation that overran into the next hour must not lend this one its rows
    telemetry = [t for t in journal.telemetry(since=start, until=end) if t["rotation_id"] in (row["id"], None)]
    return Selection(f"rotation {row['id']}", "rotation", start, end, [row], slices, telemetry,
                     _events(journal, start, end), _sources(journal, end))


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


# --- figures ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Lane:
    """Where a series of slices was asked to run, where it ran, in which precision."""

    requested: str
    backend: str
    precision: str
    baseline: bool = False

    def label(self, show_precision: bool = False) -> str:
        name = self.backend if self.requested == self.backend else f"{self.requested}→{self.backend}"
        if show_precision:
            name += f" {self.precision}"
        return name + (" (baseline)" if self.baseline else "")


def lane_of(row: dict[str, Any]) -> Lane:
    return Lane(row["requested_backend"], row["backend"], row["precision"], bool(row["baseline"]))


def slice_rate(row: dict[str, Any]) -> float | None:
    """FLOP/s over the slice's measured seconds; None for a slice that measured nothing."""
    if row["steps"] > 0 and row["seconds"] > 0 and row["flop"] > 0:
        return float(row["flop"]) / float(row["seconds"])
    return None


def slice_time(row: dict[str, Any]) -> float:
    return (float(row["started_at"]) + float(row["ended_at"])) / 2.0


@dataclass
class LaneStats:
    """Totals of one phase×lane over the selection."""

    phase: str
    lane: Lane
    slices: int = 0
    steps: int = 0
    seconds: float = 0.0
    flop: float = 0.0
    energy_joules: float = 0.0  # system energy of the slices below
    energy_steps: int = 0
    energy_flop: float = 0.0
    energy_slices: int = 0
    checks: int = 0
    mismatches: int = 0
    fallback_slices: int = 0
    failed_slices: int = 0
    rates: list[float] = field(default_factory=list)  # per-slice FLOP/s in time order
    asked: int = 0  # slices asked of this lane's requested backend in the phase, wherever they ran
    moved_to: dict[str, int] = field(default_factory=dict)  # of those, slices that ran elsewhere, by backend
    speedup: float | None = None
    speedup_reference: Lane | None = None

    @property
    def throughput(self) -> float | None:
        return self.flop / self.seconds if self.seconds > 0 and self.flop > 0 else None

    @property
    def flop_per_joule(self) -> float | None:
        return self.energy_flop / self.energy_joules if self.energy_joules > 0 else None

    @property
    def joules_per_step(self) -> float | None:
        return self.energy_joules / self.energy_steps if self.energy_joules > 0 and self.energy_steps else None

    @property
    def sustained_ratio(self) -> float | None:
        """Last slice's throughput over the first's; None with fewer than two measured slices."""
        return self.rates[-1] / self.rates[0] if len(self.rates) >= 2 else None

    @property
    def min_ratio(self) -> float | None:
        return min(self.rates) / self.rates[0] if len(self.rates) >= 2 else None


def ordered(values: Iterable[str]) -> list[str]:
    """Distinct values in order of first appearance."""
    return list(dict.fromkeys(values))


def lane_stats(slices: Sequence[dict[str, Any]]) -> dict[tuple[str, Lane], LaneStats]:
    stats: dict[tuple[str, Lane], LaneStats] = {}
    for row in sorted(slices, key=lambda r: (r["started_at"], r["id"])):
        lane = lane_of(row)
        entry = stats.setdefault((row["phase"], lane), LaneStats(row["phase"], lane))
        entry.slices += 1
        entry.steps += int(row["steps"])
        entry.seconds += float(row["seconds"])
        entry.flop += float(row["flop"])
        entry.checks += int(row["checks"] or 0)
        entry.mismatches += int(row["mismatches"] or 0)
        entry.failed_slices += 1 if row["failure_reason"] else 0
        entry.fallback_slices += 1 if row["fallback"] or lane.requested != lane.backend else 0
        rate = slice_rate(row)
        if rate is not None:
            entry.rates.append(rate)
        joules = system_energy(row["energy_joules"] or {})
        if joules is not None and joules > 0 and row["steps"] > 0:
            entry.energy_joules += joules
            entry.energy_steps += int(row["steps"])
            entry.energy_flop += float(row["flop"])
            entry.energy_slices += 1
    # what became of each request: a fallback lane and the lane it left share these counts
    groups: dict[tuple[str, str, str, bool], list[LaneStats]] = {}
    for (phase, lane), entry in stats.items():
        groups.setdefault((phase, lane.requested, lane.precision, lane.baseline), []).append(entry)
    for members in groups.values():
        asked = sum(m.slices for m in members)
        moved = {m.lane.backend: m.fallback_slices for m in members if m.fallback_slices}
        for member in members:
            member.asked, member.moved_to = asked, dict(moved)
    return stats


def _lane_key(lane: Lane) -> tuple[bool, bool, int, int]:
    """Lanes as the page lists them: asked-for backends first, fallbacks after them, the baseline last."""
    return (lane.baseline, lane.requested != lane.backend, _BACKEND_RANK.get(lane.backend, 6),
            _BACKEND_RANK.get(lane.requested, 6))


def choose_pair(lanes: Sequence[Lane]) -> list[Lane]:
    """The two lanes to set side by side: Metal vs ANE, CUDA vs CPU, else the first two asked for."""
    if len(lanes) <= 1:
        return list(lanes)
    metal = sorted((lane for lane in lanes if lane.backend == "mps"), key=_lane_key)
    coreml = sorted((lane for lane in lanes if lane.backend.startswith("coreml-")), key=_lane_key)
    cuda = sorted((lane for lane in lanes if lane.backend == "cuda"), key=_lane_key)
    cpu = sorted((lane for lane in lanes if lane.backend == "cpu"),
                 key=lambda lane: (not lane.baseline, lane.requested != "cpu"))
    for firsts, seconds in ((metal, coreml), (cuda, cpu)):
        if firsts and seconds:
            return _same_precision(firsts, seconds)
    rest = sorted(lanes, key=lambda lane: (*_lane_key(lane), lanes.index(lane)))
    return _same_precision(rest[:1], rest[1:])


def _same_precision(firsts: Sequence[Lane], seconds: Sequence[Lane]) -> list[Lane]:
    """The first pair that compares like with like in precision, else the first of each."""
    for first in firsts:
        for second in seconds:
            if second.precision == first.precision:
                return [first, second]
    return [firsts[0], seconds[0]]


def add_speedups(stats: dict[tuple[str, Lane], LaneStats], pair: Sequence[Lane]) -> None:
    """Speedup over the phase's CPU run (the baseline first), else over the pair's first lane."""
    for phase in ordered(p for p, _ in stats):
        entries = [s for (p, _), s in stats.items() if p == phase and s.throughput]
        cpu = sorted((s for s in entries if s.lane.backend == "cpu"),
                     key=lambda s: (not s.lane.baseline, s.lane.requested != "cpu"))
        reference = cpu[0] if cpu else next((s for s in entries if pair and s.lane == pair[0]), None)
        if reference is None or not reference.throughput:
            continue
        for entry in entries:
            entry.speedup = (entry.throughput or 0.0) / reference.throughput
            entry.speedup_reference = reference.lane


def sustained_series(slices: Sequence[dict[str, Any]]) -> dict[tuple[str, Lane], list[tuple[float, int, float]]]:
    """(time, rotation, ratio) per phase×lane: each slice's throughput over the first one's."""
    series: dict[tuple[str, Lane], list[tuple[float, int, float]]] = {}
    first: dict[tuple[str, Lane], float] = {}
    for row in sorted(slices, key=lambda r: (r["started_at"], r["id"])):
        rate = slice_rate(row)
        if rate is None:
            continue
        key = (row["phase"], lane_of(row))
        base = first.setdefault(key, rate)
        series.setdefault(key, []).append((slice_time(row), int(row["rotation_id"]), rate / base))
    return series


def fallback_reasons(events: Sequence[dict[str, Any]], lane: Lane) -> list[str]:
    """Distinct "reason: detail" of the journal's fallback events away from the lane's requested backend."""
    reasons: list[str] = []
    for event in events:
        if event["kind"] != "fallback":
            continue
        try:
            detail = json.loads(event["detail"] or "{}")
        except ValueError:
            continue
        if not isinstance(detail, dict) or detail.get("from") != lane.requested:
            continue
        text = str(detail.get("reason") or "unknown")
        if detail.get("detail"):
            text += f": {_clip(str(detail['detail']), 160)}"
        if text not in reasons:
            reasons.append(text)
    return reasons


# --- formatting -------------------------------------------------------------------------------

_PREFIXES = ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k"), (1.0, ""), (1e-3, "m"),
             (1e-6, "µ"))


def si_scale(value: float) -> tuple[float, str]:
    """(divisor, prefix) that puts a value in [1, 1000)."""
    magnitude = abs(value)
    for scale, prefix in _PREFIXES:
        if magnitude >= scale:
            return scale, prefix
    return _PREFIXES[-1]


def si(value: float | None, unit: str) -> str:
    if value is None or not math.isfinite(value):
        return "—"
    if value == 0:
        return f"0 {unit}"
    scale, prefix = si_scale(value)
    return f"{value / scale:.3g} {prefix}{unit}"


def _when(stamp: float | None, fmt: str = "%Y-%m-%d %H:%M:%S") -> str:
    return time.strftime(fmt, time.localtime(stamp)) if stamp else "—"


def _duration(seconds: float) -> str:
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def _slices(count: int) -> str:
    return f"{count} slice" if count == 1 else f"{count} slices"


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


# --- plots ------------------------------------------------------------------------------------


def _import_matplotlib() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise ReportError(INSTALL_HINT) from None
    matplotlib.use("Agg")  # no display needed, and never a GUI window from a daemon's CLI
    return matplotlib


class Plotter:
    """Draws the report's figures with matplotlib's object API (no pyplot global state)."""

    def __init__(self, selection: Selection, lanes: Sequence[Lane], show_precision: bool) -> None:
        from dateutil import tz

        self.selection = selection
        self.zone = tz.tzlocal()
        now = datetime.now(self.zone)
        offset = now.strftime("%z")
        name = now.tzname() or ""
        self.zone_name = "UTC" if offset in ("+0000", "-0000") else f"{name}, UTC{offset[:3]}:{offset[3:]}"
        self.colours: dict[Lane, str] = {}
        spare = [c for c in _SPARE_COLOURS]
        taken: set[tuple[str, bool]] = set()
        for lane in lanes:  # one colour per backend in every report; a fallback has where it ran, dashed
            colour = _COLOURS.get("cpu baseline" if lane.baseline else lane.backend)
            dashed = lane.requested != lane.backend
            if colour is None or (colour, dashed) in taken:
                colour = spare.pop(0) if spare else "#333333"
            taken.add((colour, dashed))
            self.colours[lane] = colour
        self.lanes = list(lanes)
        self.show_precision = show_precision
        self.bins: dict[str, int] = {}  # plot file: seconds per bin, where rows were averaged

    def _figure(self, width: float, height: float) -> Figure:
        from matplotlib.figure import Figure

        figure = Figure(figsize=(width, height), dpi=110, layout="constrained")
        figure.patch.set_facecolor("white")
        return figure

    def _times(self, stamps: Iterable[float]) -> list[float]:
        """Epoch seconds as matplotlib date numbers (the axis formatter shows them in local time)."""
        import matplotlib.dates as mdates

        return [float(mdates.date2num(datetime.fromtimestamp(s, self.zone))) for s in stamps]

    def _time_axis(self, axes: Axes, start: float, end: float, label: bool = True) -> None:
        """Round clock ticks over [start, end] (epoch s); the date goes in the axis label when it is one day."""
        import matplotlib.dates as mdates

        span = max(end - start, 1.0)
        pad = max(span * 0.04, 1.0)  # a lone point gets a little room, not matplotlib's ±years
        left, right = self._times((start - pad, end + pad))
        axes.set_xlim(left, right)
        axes.grid(True, alpha=0.3)
        first, last = (datetime.fromtimestamp(s, self.zone) for s in (start - pad, end + pad))
        if span <= 2 * 86400:
            step = next((s for s in _TICK_STEPS if (span + 2 * pad) / s <= 7), _TICK_STEPS[-1])
            locator: Any
            if step < 60:
                locator = mdates.SecondLocator(bysecond=range(0, 60, step), tz=self.zone)
            elif step < 3600:
                locator = mdates.MinuteLocator(byminute=range(0, 60, step // 60), tz=self.zone)
            else:
                locator = mdates.HourLocator(byhour=range(0, 24, step // 3600), tz=self.zone)
            same_day = first.date() == last.date()
            pattern = ("%H:%M:%S" if step < 60 else "%H:%M") if same_day else "%d %b %H:%M"
            axes.xaxis.set_major_locator(locator)
            axes.xaxis.set_major_formatter(mdates.DateFormatter(pattern, tz=self.zone))
            day = first.strftime("%Y-%m-%d") if same_day else f"{first:%Y-%m-%d} – {last:%Y-%m-%d}"
            text = f"time on {day} ({self.zone_name})"
        else:
            auto = mdates.AutoDateLocator(tz=self.zone, minticks=3, maxticks=8)
            axes.xaxis.set_major_locator(auto)
            axes.xaxis.set_major_formatter(mdates.ConciseDateFormatter(auto, tz=self.zone))
            text = f"time ({self.zone_name})"
        if label:
            axes.set_xlabel(text)

    def _span(self, rows: Iterable[dict[str, Any]]) -> tuple[float, float]:
        rows = list(rows)
        return (min(float(r["started_at"]) for r in rows), max(float(r["ended_at"]) for r in rows))

    def _series(self, axes: Axes, points: Sequence[tuple[float, int, float]], lane: Lane) -> None:
        """One line per rotation so gaps between rotations are not drawn as straight lines."""
        marker = "o" if len(points) <= _MARKERS_UP_TO else None
        style = "--" if lane.requested != lane.backend else "-"
        for index, rotation in enumerate(ordered(str(p[1]) for p in points)):
            part = [p for p in points if str(p[1]) == rotation]
            axes.plot(self._times(p[0] for p in part), [p[2] for p in part], color=self.colours[lane],
                      linestyle=style, marker=marker, markersize=4, linewidth=1.6,
                      label=lane.label(self.show_precision) if index == 0 else None)

    def _legend(self, figure: Figure, axes_list: Sequence[Axes]) -> None:
        """One legend for all panels (a lane has the same colour in each), outside the data."""
        seen: dict[str, Any] = {}
        for axes in axes_list:
            for handle, label in zip(*axes.get_legend_handles_labels(), strict=True):
                seen.setdefault(label, handle)
        figure.legend(list(seen.values()), list(seen), loc="outside right upper", fontsize=9,
                      title="backend", title_fontsize=9)

    def _phase_bands(self, axes: Axes) -> None:
        """Mark each phase's time span so power and heat can be read against the workload."""
        if len(self.selection.rotations) > _SHADE_MAX_ROTATIONS:
            return
        spans: dict[tuple[int, str], list[float]] = {}
        for row in self.selection.slices:
            span = spans.setdefault((row["rotation_id"], row["phase"]), [row["started_at"], row["ended_at"]])
            span[0] = min(span[0], row["started_at"])
            span[1] = max(span[1], row["ended_at"])
        for index, ((_, phase), (start, end)) in enumerate(sorted(spans.items(), key=lambda kv: kv[1][0])):
            left, right = self._times((start, end))
            if index % 2 == 0:
                axes.axvspan(left, right, color="#5c6bc0", alpha=0.08, linewidth=0)
            for edge in (left, right):
                axes.axvline(edge, color="#5c6bc0", alpha=0.5, linewidth=0.8, linestyle=":")
            axes.text(left + (right - left) / 2, 0.985, phase, transform=axes.get_xaxis_transform(),
                      ha="center", va="top", fontsize=8, color="#303f9f")

    def _telemetry_span(self, rows: Sequence[dict[str, Any]]) -> tuple[float, float]:
        times = [float(r["time"]) for r in rows]
        if len(self.selection.rotations) <= _SHADE_MAX_ROTATIONS:  # the bands are drawn: show them whole
            start, end = self._span(self.selection.slices)
            times += [start, end]
        return min(times), max(times)

    def throughput(self, path: Path, phases: Sequence[str]) -> bool:
        points: dict[tuple[str, Lane], list[tuple[float, int, float]]] = {}
        for row in sorted(self.selection.slices, key=lambda r: (r["started_at"], r["id"])):
            rate = slice_rate(row)
            if rate is not None:
                points.setdefault((row["phase"], lane_of(row)), []).append(
                    (slice_time(row), int(row["rotation_id"]), rate))
        phases = [p for p in phases if any(k[0] == p for k in points)]
        if not phases:
            return False
        figure = self._figure(11, 1.0 + 2.5 * len(phases))
        axes_list = list(figure.subplots(len(phases), 1, squeeze=False)[:, 0])
        for axes, phase in zip(axes_list, phases, strict=True):
            peak = max(p[2] for k, v in points.items() if k[0] == phase for p in v)
            scale, prefix = si_scale(peak)
            for lane in self.lanes:
                series = points.get((phase, lane))
                if series:
                    self._series(axes, [(t, r, v / scale) for t, r, v in series], lane)
            axes.set_title(phase, loc="left", fontweight="bold")
            axes.set_ylabel(f"{prefix}FLOP/s")
            axes.set_ylim(bottom=0, top=peak / scale * 1.15)
            self._time_axis(axes, *self._span(r for r in self.selection.slices if r["phase"] == phase),
                            label=axes is axes_list[-1])
        self._legend(figure, axes_list)
        figure.suptitle("Throughput per slice: FLOP over measured seconds (warm-up excluded)")
        figure.savefig(path)
        return True

    def sustained(self, path: Path, phases: Sequence[str]) -> bool:
        series = sustained_series(self.selection.slices)
        phases = [p for p in phases if any(k[0] == p for k in series)]
        if not phases:
            return False
        figure = self._figure(11, 1.0 + 2.3 * len(phases))
        axes_list = list(figure.subplots(len(phases), 1, squeeze=False)[:, 0])
        reference = "the rotation" if self.selection.scope == "rotation" else "the window"
        for axes, phase in zip(axes_list, phases, strict=True):
            top = 1.0
            for lane in self.lanes:
                points = series.get((phase, lane))
                if points:
                    top = max(top, *(p[2] for p in points))
                    self._series(axes, points, lane)
            axes.axhline(1.0, color="#333333", linewidth=0.8, linestyle="--")
            axes.set_ylim(0, max(1.25, top * 1.1))
            axes.set_title(phase, loc="left", fontweight="bold")
            axes.set_ylabel("× first slice")
            self._time_axis(axes, *self._span(r for r in self.selection.slices if r["phase"] == phase),
                            label=axes is axes_list[-1])
        self._legend(figure, axes_list)
        figure.suptitle(f"Sustained ratio: slice throughput / first slice of the same phase and backend "
                        f"in {reference}")
        figure.savefig(path)
        return True

    def _bin_seconds(self, rows: Sequence[dict[str, Any]]) -> int | None:
        """A bin width that leaves about _BINS points, when there are too many rows to draw one by one."""
        if len(rows) <= _BIN_OVER:
            return None
        want = (float(rows[-1]["time"]) - float(rows[0]["time"])) / _BINS
        return next((step for step in _TICK_STEPS if step >= want), _TICK_STEPS[-1])

    @staticmethod
    def _telemetry_points(rows: Sequence[dict[str, Any]], value: Callable[[dict[str, Any]], float | None],
                          reduce: Callable[[list[float]], float], bin_seconds: int | None
                          ) -> list[tuple[float, int, float]]:
        """(time, rotation, value) per row, or per bin of each rotation reduced with `reduce`."""
        buckets: dict[tuple[int, float], list[float]] = {}
        for row in rows:
            number = value(row)
            if number is None:
                continue
            rotation = int(row["rotation_id"]) if row["rotation_id"] is not None else -1
            stamp = float(row["time"])
            if bin_seconds:
                stamp = (stamp // bin_seconds + 0.5) * bin_seconds
            buckets.setdefault((rotation, stamp), []).append(number)
        return sorted(((stamp, rotation, reduce(values)) for (rotation, stamp), values in buckets.items()),
                      key=lambda p: p[0])

    def _lines(self, axes: Axes, points: Sequence[tuple[float, int, float]], label: str, **style: Any) -> None:
        """One line per rotation, as in _series."""
        marker = "o" if len(points) <= _MARKERS_UP_TO else None
        for index, rotation in enumerate(ordered(str(p[1]) for p in points)):
            part = [p for p in points if str(p[1]) == rotation]
            axes.plot(self._times(p[0] for p in part), [p[2] for p in part], marker=marker, markersize=4,
                      label=label if index == 0 else None, **style)

    def power(self, path: Path) -> bool:
        rows = [r for r in self.selection.telemetry if r["power_watts"]]
        if not rows:
            return False
        components = sorted({c for r in rows for c in r["power_watts"]})
        bin_seconds = self._bin_seconds(rows)
        figure = self._figure(11, 4.2)
        axes = figure.subplots()
        self._phase_bands(axes)
        peak = 0.0
        series: list[tuple[str, list[tuple[float, int, float]], dict[str, Any]]] = []
        for index, component in enumerate(components):
            total = component == "combined"
            points = self._telemetry_points(rows, _reader(component), statistics.fmean, bin_seconds)
            series.append(("combined (total)" if total else component, points,
                           {"color": "#222222" if total else f"C{index}", "linewidth": 2.2 if total else 1.4}))
        if "combined" not in components and len(components) > 1:
            # Linux rails: the total that system_energy counts, so no rail is counted twice
            points = self._telemetry_points(rows, lambda r: system_energy(r["power_watts"]), statistics.fmean,
                                            bin_seconds)
            series.append(("total", points, {"color": "#222222", "linewidth": 2.2}))
        for label, points, style in series:
            if points:
                peak = max(peak, *(p[2] for p in points))
                self._lines(axes, points, label, **style)
        axes.set_ylim(0, peak * 1.2 if peak > 0 else 1.0)  # headroom for the phase names
        axes.set_ylabel("power (W)")
        axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9, title="component",
                    title_fontsize=9)
        self._time_axis(axes, *self._telemetry_span(rows))
        title = "Power per component (journal telemetry rows, from energy-counter deltas)"
        if bin_seconds:
            self.bins["power.png"] = bin_seconds
            title += f", mean per {_duration(bin_seconds)}"
        figure.suptitle(title)
        figure.savefig(path)
        return True

    def thermal(self, path: Path) -> tuple[bool, list[str]]:
        """Pressure level over time; also the unrecognised level names that were left out."""
        rows = [r for r in self.selection.telemetry if r["thermal_pressure"]]
        known = [r for r in rows if level_ordinal(r["thermal_pressure"]) is not None]
        unknown = ordered(r["thermal_pressure"] for r in rows if level_ordinal(r["thermal_pressure"]) is None)
        if not known:
            return False, unknown
        bin_seconds = self._bin_seconds(known)
        figure = self._figure(11, 3.6)
        axes = figure.subplots()
        self._phase_bands(axes)
        points = self._telemetry_points(known, lambda r: float(ORDINALS[r["thermal_pressure"]]), max, bin_seconds)
        self._lines(axes, points, "level", drawstyle="steps-post", color="#b71c1c", linewidth=1.8)
        axes.set_yticks(range(len(LEVELS)), list(LEVELS))
        for tick, colour in zip(axes.get_yticklabels(), _LEVEL_COLOURS, strict=True):
            tick.set_color(colour)
        axes.set_ylim(-0.5, len(LEVELS) - 0.2)
        axes.set_ylabel("thermal pressure level")
        self._time_axis(axes, *self._telemetry_span(known))
        title = "Thermal pressure over time (journal telemetry rows)"
        if bin_seconds:
            self.bins["thermal.png"] = bin_seconds
            title += f", highest level per {_duration(bin_seconds)}"
        figure.suptitle(title)
        figure.savefig(path)
        return True, unknown

    def energy(self, path: Path, stats: dict[tuple[str, Lane], LaneStats], phases: Sequence[str]) -> bool:
        from matplotlib.ticker import FuncFormatter

        measured = {k: s for k, s in stats.items() if s.flop_per_joule is not None}
        phases = [p for p in phases if any(k[0] == p for k in measured)]
        lanes = [lane for lane in self.lanes if any(k[1] == lane for k in measured)]
        if not phases:
            return False
        figure = self._figure(11, 4.4)
        left, right = figure.subplots(1, 2)
        width = 0.8 / len(lanes)
        for axes, metric, unit, title in (
                (left, "joules_per_step", "J", "energy per step (lower is better)"),
                (right, "flop_per_joule", "FLOP/J", "FLOP per joule (higher is better)")):
            values = [getattr(s, metric) for s in measured.values()]
            scale, prefix = si_scale(max(values))
            spread = max(values) / min(values) if min(values) > 0 else 1.0
            for index, lane in enumerate(lanes):
                xs, heights = [], []
                for position, phase in enumerate(phases):
                    entry = measured.get((phase, lane))
                    if entry is not None:
                        xs.append(position - 0.4 + width * (index + 0.5))
                        heights.append(getattr(entry, metric) / scale)
                fell_back = lane.requested != lane.backend
                bars = axes.bar(xs, heights, width * 0.92, color=self.colours[lane], hatch="//" if fell_back else None,
                                edgecolor="white" if fell_back else None, label=lane.label(self.show_precision))
                crowded = len(lanes) >= 4  # side-by-side labels would run into each other: stand them up
                axes.bar_label(bars, labels=[f"{h:.3g}" for h in heights], fontsize=7 if crowded else 8,
                               padding=2, rotation=90 if crowded else 0)
            axes.set_xticks(range(len(phases)), list(phases))
            axes.set_ylabel(f"{prefix}{unit}" + (" per step" if metric == "joules_per_step" else ""))
            if spread > 30:  # phases differ by orders of magnitude: a log axis keeps the small bars visible
                axes.set_yscale("log")
                axes.set_ylim(top=max(values) / scale * (5.0 if len(lanes) >= 4 else 2.5))
                axes.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
                axes.set_title(f"{title}, log scale", loc="left")
            else:
                axes.set_ylim(0, max(values) / scale * (1.3 if len(lanes) >= 4 else 1.18))
                axes.set_title(title, loc="left")
            axes.grid(True, axis="y", alpha=0.3)
        self._legend(figure, [left])
        figure.suptitle("Energy per operation by backend (whole-system energy over each slice)")
        figure.savefig(path)
        return True


def _reader(component: str) -> Callable[[dict[str, Any]], float | None]:
    """A telemetry row's watts for one component (None where the row has none)."""

    def read(row: dict[str, Any]) -> float | None:
        value = row["power_watts"].get(component)
        return float(value) if value is not None else None

    return read


# --- the page ---------------------------------------------------------------------------------

_CSS = """
body{font:15px/1.45 -apple-system,BlinkMacSystemFont,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;
margin:0;background:#f4f5f7;color:#1d232a}
main{max-width:1180px;margin:0 auto;padding:24px}
h1{font-size:26px;margin:0 0 4px}h2{font-size:19px;margin:32px 0 10px}
.sub{color:#5b6570;margin:0 0 18px}
.cards{display:flex;flex-wrap:wrap;gap:12px;margin:12px 0}
.card{background:#fff;border-radius:8px;padding:12px 16px;box-shadow:0 1px 2px rgba(0,0,0,.08);min-width:200px}
.card .k{color:#5b6570;font-size:13px}.card .v{font-size:22px;font-weight:600}
.card .n{color:#5b6570;font-size:13px}
table{border-collapse:collapse;background:#fff;box-shadow:0 1px 2px rgba(0,0,0,.08);margin:8px 0}
th,td{padding:6px 12px;border-bottom:1px solid #e3e6ea;text-align:left;vertical-align:top}
td.num{text-align:right;font-variant-numeric:tabular-nums}
thead th{background:#eef0f3}
tr.phase th{background:#f8f9fa;font-size:16px;padding-top:12px}
.bad{color:#b71c1c;font-weight:600}.good{color:#1b5e20}.muted{color:#7a838c}
figure{background:#fff;margin:14px 0;padding:12px;border-radius:8px;box-shadow:0 1px 2px rgba(0,0,0,.08)}
figure img{max-width:100%;height:auto;display:block}
figcaption{color:#5b6570;font-size:13px;margin-top:6px}
.note{background:#fff8e1;border-left:4px solid #f9a825;padding:8px 12px;margin:10px 0}
footer{color:#7a838c;font-size:13px;margin-top:36px}
code{background:#eef0f3;padding:0 3px;border-radius:3px}
"""


@dataclass
class Report:
    """What `write_report` produced."""

    index: Path
    plots: list[Path]


def write_report(journal: Journal, out: Path, rotation: int | None = None, since: float | None = None,
                 since_text: str | None = None) -> Report:
    _import_matplotlib()
    selection = select(journal, rotation=rotation, since=since, since_text=since_text)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ReportError(f"cannot create {out}: {exc.strerror or exc}") from None
    stats = lane_stats(selection.slices)
    lanes = ordered_lanes(stats)
    pair = choose_pair(lanes)
    add_speedups(stats, pair)
    phases = ordered(s["phase"] for s in sorted(selection.slices, key=lambda r: (r["started_at"], r["id"])))
    # precision goes in the labels only where it tells two lanes apart; the table always has a row for it
    show_precision = len({(lane.requested, lane.backend, lane.baseline) for lane in lanes}) < len(lanes)
    plotter = Plotter(selection, lanes, show_precision)
    drawn: dict[str, Path] = {}
    unknown_levels: list[str] = []
    try:
        for name, draw in (("throughput.png", lambda p: plotter.throughput(p, phases)),
                           ("sustained.png", lambda p: plotter.sustained(p, phases)),
                           ("power.png", plotter.power),
                           ("energy.png", lambda p: plotter.energy(p, stats, phases))):
            if draw(out / name):
                drawn[name] = out / name
        ok, unknown_levels = plotter.thermal(out / "thermal.png")
        if ok:
            drawn["thermal.png"] = out / "thermal.png"
        for name in PLOT_FILES:  # a plot from an earlier report must not sit beside this page
            if name not in drawn:
                (out / name).unlink(missing_ok=True)
        page = render_html(selection, stats, lanes, pair, phases, set(drawn), unknown_levels, show_precision,
                           plotter.bins)
        index = out / "index.html"
        index.write_text(page, encoding="utf-8")
    except OSError as exc:
        raise ReportError(f"cannot write into {out}: {exc.strerror or exc}") from None
    return Report(index, [drawn[n] for n in PLOT_FILES if n in drawn])


def ordered_lanes(stats: dict[tuple[str, Lane], LaneStats]) -> list[Lane]:
    lanes = list(dict.fromkeys(lane for _, lane in stats))
    return sorted(lanes, key=lambda lane: (*_lane_key(lane), lanes.index(lane)))


def _ratio_cell(entry: LaneStats) -> str:
    ratio = entry.sustained_ratio
    if ratio is None:
        return '<span class="muted">— (one measured slice)</span>'
    css = "bad" if ratio < 0.9 else "good" if ratio >= 0.97 else ""
    low = entry.min_ratio
    return (f'<span class="{css}">{ratio:.2f}</span>'
            + (f' <span class="muted">(lowest {low:.2f})</span>' if low is not None and low < ratio else ""))


def _fallback_cell(entry: LaneStats, events: Sequence[dict[str, Any]]) -> str:
    if not entry.moved_to:
        return "none"
    moved = sum(entry.moved_to.values())
    text = (f'<span class="bad">{moved} of {entry.asked} slices asked of {_e(entry.lane.requested)} ran on '
            f'{_e(", ".join(entry.moved_to))}</span>')
    reasons = fallback_reasons(events, entry.lane)
    if reasons:
        text += "<br><span class='muted'>" + "<br>".join(_e(r) for r in reasons) + "</span>"
    return text


def _ran_on_cell(entry: LaneStats) -> str:
    stayed = entry.asked - sum(entry.moved_to.values())
    parts = [f"{_e(entry.lane.requested)} ({_slices(stayed)})"] if stayed else []
    parts += [f'<span class="bad">{_e(backend)} ({_slices(count)}, fallback)</span>'
              for backend, count in entry.moved_to.items()]
    return "<br>".join(parts)


def _column_entry(stats: dict[tuple[str, Lane], LaneStats], phase: str, lane: Lane,
                  substitute: bool) -> LaneStats | None:
    """The lane's figures in a phase; with `substitute`, where the whole request fell back, the fallback's."""
    entry = stats.get((phase, lane))
    if entry is not None or not substitute or lane.requested != lane.backend:
        return entry
    moved = [s for (p, other), s in stats.items()
             if p == phase and other.requested == lane.requested and other.backend != other.requested
             and other.precision == lane.precision and other.baseline == lane.baseline]
    return max(moved, key=lambda s: s.slices) if moved else None


def _table(stats: dict[tuple[str, Lane], LaneStats], columns: Sequence[Lane], phases: Sequence[str],
           events: Sequence[dict[str, Any]], show_precision: bool, css: str, substitute: bool = False) -> str:
    head = "".join(f"<th>{_e(lane.label(show_precision))}</th>" for lane in columns)
    body: list[str] = []
    for phase in phases:
        entries = [_column_entry(stats, phase, lane, substitute) for lane in columns]
        if not any(entries):
            continue
        body.append(f'<tr class="phase"><th colspan="{len(columns) + 1}">{_e(phase)}</th></tr>')
        references = ordered(e.speedup_reference.label(show_precision) for e in entries
                             if e is not None and e.speedup_reference is not None)
        rows: list[tuple[str, Any]] = [("precision", lambda s: _e(s.lane.precision))]
        if any(e is not None and e.moved_to for e in entries):
            rows.append(("ran on", _ran_on_cell))
        rows += [
            ("throughput", lambda s: _e(si(s.throughput, "FLOP/s"))),
            (f"speedup vs {', '.join(references) or '—'}",
             lambda s: "—" if s.speedup is None else f"{s.speedup:.2f}×"),
            ("FLOP per joule", lambda s: _e(si(s.flop_per_joule, "FLOP/J")) if s.flop_per_joule
             else '<span class="muted">no energy source</span>'),
            ("energy per step", lambda s: _e(si(s.joules_per_step, "J")) if s.joules_per_step
             else '<span class="muted">no energy source</span>'),
            ("sustained ratio (last / first slice)", _ratio_cell),
            ("mismatches", lambda s: (f'<span class="{"bad" if s.mismatches else "good"}">{s.mismatches}</span>'
                                      f' <span class="muted">of {s.checks} checks</span>')),
            ("fallbacks", lambda s: _fallback_cell(s, events)),
            ("slices", lambda s: f'{s.slices} <span class="bad">({s.failed_slices} failed)</span>'
             if s.failed_slices else str(s.slices)),
            ("steps · measured time", lambda s: f"{s.steps:,} · {_e(_duration(s.seconds))}"),
        ]
        for name, cell in rows:
            cells = "".join(f'<td class="num">{cell(e)}</td>' if e is not None else '<td class="muted">not run</td>'
                            for e in entries)
            body.append(f"<tr><th>{_e(name)}</th>{cells}</tr>")
    return f'<table class="{css}"><thead><tr><th></th>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def _pair_title(pair: Sequence[Lane], show_precision: bool) -> str:
    backends = {lane.backend for lane in pair}
    names = " vs ".join(lane.label(show_precision) for lane in pair)
    if len(pair) == 1:
        return f"{names} (the only backend)"
    if "mps" in backends and any(b.startswith("coreml-") for b in backends):
        return f"Metal vs Neural Engine ({names})"
    if backends == {"cuda", "cpu"}:
        return f"CUDA vs CPU ({names})"
    return names


def _cards(stats: dict[tuple[str, Lane], LaneStats], pair: Sequence[Lane], phases: Sequence[str],
           show_precision: bool) -> str:
    cards: list[str] = []
    for phase in phases:
        entry = stats.get((phase, pair[0])) if pair else None
        if entry is None or entry.throughput is None:
            continue
        note = ""
        if entry.speedup is not None and entry.speedup_reference not in (None, entry.lane):
            reference = entry.speedup_reference.label(show_precision) if entry.speedup_reference else ""
            note = f"{entry.speedup:.2f}× vs {_e(reference)}"
        if entry.sustained_ratio is not None:
            note += f"{' · ' if note else ''}sustained {entry.sustained_ratio:.2f}"
        cards.append(f'<div class="card"><div class="k">{_e(phase)} · {_e(entry.lane.label(show_precision))}'
                     f'</div><div class="v">{_e(si(entry.throughput, "FLOP/s"))}</div>'
                     f'<div class="n">{note or "&nbsp;"}</div></div>')
    return f'<div class="cards">{"".join(cards)}</div>' if cards else ""


def _figure_html(name: str, alt: str, caption: str) -> str:
    return (f'<figure><img src="{_e(name)}" alt="{_e(alt)}"><figcaption>{caption}</figcaption></figure>')


def render_html(selection: Selection, stats: dict[tuple[str, Lane], LaneStats], lanes: Sequence[Lane],
                pair: Sequence[Lane], phases: Sequence[str], plots: set[str], unknown_levels: Sequence[str],
                show_precision: bool, bins: dict[str, int] | None = None) -> str:
    bins = bins or {}
    rotations = selection.rotations
    parts: list[str] = []
    if len(rotations) == 1:
        r = rotations[0]
        ended = r["ended_at"]
        span = _duration(ended - r["started_at"]) if ended else "running"
        sub = (f"profile {r['profile']} · trigger {r['trigger']} · backends {r['backends']} · "
               f"{r['result'] or 'running'}{' (' + r['detail'] + ')' if r.get('detail') else ''} · "
               f"{_when(r['started_at'])} → {_when(ended, '%H:%M:%S') if ended else 'now'} ({span})")
    else:
        results: dict[str, int] = {}
        for r in rotations:
            results[r["result"] or "running"] = results.get(r["result"] or "running", 0) + 1
        counts = ", ".join(f"{n} {k}" for k, n in sorted(results.items()))
        sub = (f"{len(rotations)} rotations ({counts}) · {len(selection.slices)} slices · "
               f"{_when(selection.start)} → {_when(selection.end)}")
    parts.append(f"<h1>soakd report: {_e(selection.title)}</h1><p class='sub'>{_e(sub)}</p>")
    parts.append(_cards(stats, pair, phases, show_precision))

    parts.append(f"<h2>{_e(_pair_title(pair, show_precision))}</h2>")
    if len(pair) < 2:
        parts.append("<p class='note'>Only one backend ran in this selection, so there is nothing to set "
                     "beside it; the table shows its figures alone.</p>")
    parts.append(_table(stats, pair, phases, selection.events, show_precision, "compare", substitute=True))
    parts.append("<p class='muted'>Speedup is throughput over the phase's CPU run (the CPU baseline when "
                 "there is one). Energy is whole-system energy (no rail counted twice) over each slice's wall "
                 "time, which includes worker start and warm-up, divided by the steps measured.</p>")
    others = [lane for lane in lanes if lane not in pair]
    if others:
        parts.append("<h2>All backends</h2>")
        parts.append(_table(stats, [*pair, *others], phases, selection.events, show_precision, "all"))

    parts.append("<h2>Throughput</h2>")
    if "throughput.png" in plots:
        parts.append(_figure_html("throughput.png", "throughput over time per phase and backend",
                                  "One line per backend, one panel per phase; each point is a slice's FLOP "
                                  "over its measured seconds."))
    else:
        parts.append("<p class='note'>No slice measured any steps, so there is no throughput to plot.</p>")
    if "sustained.png" in plots:
        reference = "rotation" if selection.scope == "rotation" else "selected window"
        parts.append(_figure_html("sustained.png", "sustained ratio over time",
                                  f"Each slice's throughput over the first slice of the same phase and backend "
                                  f"in the {_e(reference)}; 1.0 (dashed) is no change, below it is slower."))

    parts.append("<h2>Energy per operation</h2>")
    missing = [lane.label(show_precision) for lane in lanes
               if not any(s.flop_per_joule for (_, ln), s in stats.items() if ln == lane)]
    if "energy.png" in plots:
        parts.append(_figure_html("energy.png", "energy per step and FLOP per joule by backend",
                                  "Left: joules per measured step; right: FLOP per joule. From each slice's "
                                  "per-component energy counters, summed without counting a rail twice."))
        if missing:
            parts.append(f"<p class='note'>no energy source for {_e(', '.join(missing))}: those slices "
                         "recorded no energy.</p>")
    else:
        parts.append("<p class='note'>no energy source: the slices recorded no energy (no powermetrics, "
                     "NVML or RAPL counter was readable), so energy per operation is not shown.</p>")

    parts.append("<h2>Power and heat</h2>")
    if selection.sources:
        up = [name for name, (ok, _) in selection.sources.items() if ok]
        down = [f"{name} ({reason})" if reason else name
                for name, (ok, reason) in selection.sources.items() if not ok]
        parts.append(f"<p class='muted'>Telemetry sources at the end of the selection: up {_e(', '.join(up) or '—')}"
                     f"; down {_e('; '.join(down) or '—')}.</p>")
    shaded = " Shaded bands mark the phases." if len(rotations) <= _SHADE_MAX_ROTATIONS else ""
    if "power.png" in plots:
        binned = (f" Averaged per {_e(_duration(bins['power.png']))} to keep {_BINS}-odd points."
                  if "power.png" in bins else "")
        parts.append(_figure_html("power.png", "power per component over time",
                                  f"Watts per component from the journal's telemetry rows (one every ~10 s "
                                  f"while a rotation runs).{binned}{shaded}"))
    else:
        parts.append("<p class='note'>no power source: the telemetry rows carry no power readings.</p>")
    if "thermal.png" in plots:
        parts.append(_figure_html("thermal.png", "thermal pressure over time",
                                  "The OS thermal pressure level, nominal (calm) to sleeping (severe)."
                                  + (f" The highest level in each {_e(_duration(bins['thermal.png']))}."
                                     if "thermal.png" in bins else "") + shaded))
    else:
        parts.append("<p class='note'>no thermal pressure source: the telemetry rows carry no level.</p>")
    if unknown_levels:
        parts.append(f"<p class='note'>Readings at levels soakd does not know were left out of the plot: "
                     f"{_e(', '.join(unknown_levels))}.</p>")

    parts.append(_events_html(selection.events))
    if len(rotations) > 1:
        parts.append(_rotations_html(rotations))
    info = host_info()
    host = (f"{info['hostname']} · {info['chip']} · {info['os']} {info['os_version']} ({info['machine']}) · "
            f"python {info['python']} · torch {info['torch']} · coremltools {info['coremltools']}")
    parts.append(f"<footer>report generated on: {_e(host)} at {_e(_when(time.time()))}. The journal does not "
                 f"record the host it was measured on.</footer>")
    title = f"soakd report: {selection.title}"
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{_e(title)}</title><style>{_CSS}</style></head><body><main>{''.join(parts)}"
            f"</main></body></html>\n")


_NOTABLE = ("fallback", "mismatch", "throttle", "error", "source_down")


def _events_html(events: Sequence[dict[str, Any]], limit: int = 40) -> str:
    notable = [e for e in events if e["kind"] in _NOTABLE]
    if not notable:
        return ("<h2>Events</h2><p class='muted'>No fallback, mismatch, throttle or error, and no telemetry "
                "source went down, during this selection.</p>")
    rows = "".join(
        f"<tr><td>{_e(_when(e['time']))}</td><td>{_e(e['kind'])}</td><td>{_e(e['source'] or '')}</td>"
        f"<td>{_e(_clip(str(e['detail'] or ''), 240))}</td></tr>" for e in notable[-limit:])
    more = f"<p class='muted'>{len(notable) - limit} earlier events not shown.</p>" if len(notable) > limit else ""
    return (f"<h2>Events</h2>{more}<table><thead><tr><th>time</th><th>kind</th><th>source</th><th>detail</th>"
            f"</tr></thead><tbody>{rows}</tbody></table>")


def _rotations_html(rotations: Sequence[dict[str, Any]], limit: int = 50) -> str:
    rows = "".join(
        f"<tr><td class='num'>{_e(r['id'])}</td><td>{_e(r['profile'])}</td><td>{_e(r['trigger'])}</td>"
        f"<td>{_e(_when(r['started_at']))}</td>"
        f"<td class='num'>{_e(_duration(r['ended_at'] - r['started_at']) if r['ended_at'] else 'running')}</td>"
        f"<td>{_e(r['result'] or 'running')}</td></tr>" for r in rotations[-limit:])
    more = (f"<p class='muted'>{len(rotations) - limit} earlier rotations not shown.</p>"
            if len(rotations) > limit else "")
    return (f"<h2>Rotations</h2>{more}<table><thead><tr><th>id</th><th>profile</th><th>trigger</th>"
            f"<th>started</th><th>duration</th><th>result</th></tr></thead><tbody>{rows}</tbody></table>")
