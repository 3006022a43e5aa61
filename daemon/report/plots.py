"""The report's PNG figures, drawn with matplotlib's object API (no pyplot global state).

matplotlib is imported when a figure is drawn, not when this module is, and always with the
Agg backend (no display, never a window). One panel per workload (phase · profile), so no
line ever joins slices of two profiles.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from daemon.levels import LEVELS, ORDINALS, level_ordinal
from daemon.report.selection import ReportError, Selection
from daemon.report.statistics import (
    Key,
    Lane,
    LaneStats,
    Point,
    Workload,
    key_of,
    ordered,
    sustained_series,
    throughput_series,
)
from daemon.report.units import duration, si_scale
from daemon.stability import system_energy
from workloads.backends.registry import BASELINE_COLOUR
from workloads.backends.registry import colour as backend_colour

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

INSTALL_HINT = "matplotlib is not installed: pip install matplotlib (a dependency of soakd)"
SHADE_MAX_ROTATIONS = 3  # phase bands on telemetry plots only while they stay readable
BIN_SECONDS_OVER = 1500  # telemetry rows beyond which a plot shows bins, not every row
BINS = 600
_MARKERS_UP_TO = 60  # points per line; beyond that markers hide the line
_SPARE_COLOURS = ("#17becf", "#bcbd22", "#393b79", "#8c6d31", "#843c39", "#7b4173")
TICK_STEPS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200)
# thermal bands from calm to severe, same order as daemon.levels.LEVELS
_LEVEL_COLOURS = ("#2e7d32", "#9e9d24", "#f9a825", "#ef6c00", "#c62828", "#4a148c")


def import_matplotlib() -> Any:
    """matplotlib set to Agg; raises ReportError (INSTALL_HINT) when it is missing."""
    try:
        import matplotlib
    except ImportError:
        raise ReportError(INSTALL_HINT) from None
    matplotlib.use("Agg")  # no display needed, and never a GUI window from a daemon's CLI
    return matplotlib


class Plotter:
    """Draws the report's figures with matplotlib's object API (no pyplot global state)."""

    def __init__(self, selection: Selection, lanes: Sequence[Lane], lane_label: Callable[[Lane], str],
                 workload_label: Callable[[Workload], str]) -> None:
        """`lanes` in display order (each gets a colour); the labels name lanes and workloads
        as the page does."""
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
            colour = BASELINE_COLOUR if lane.baseline else backend_colour(lane.backend)
            dashed = lane.requested != lane.backend
            if colour is None or (colour, dashed) in taken:
                colour = spare.pop(0) if spare else "#333333"
            taken.add((colour, dashed))
            self.colours[lane] = colour
        self.lanes = list(lanes)
        self.lane_label = lane_label
        self.workload_label = workload_label
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
            step = next((s for s in TICK_STEPS if (span + 2 * pad) / s <= 7), TICK_STEPS[-1])
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
                      label=self.lane_label(lane) if index == 0 else None)

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
        if len(self.selection.rotations) > SHADE_MAX_ROTATIONS:
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
        if len(self.selection.rotations) <= SHADE_MAX_ROTATIONS:  # the bands are drawn: show them whole
            start, end = self._span(self.selection.slices)
            times += [start, end]
        return min(times), max(times)

    def _workload_span(self, workload: Workload) -> tuple[float, float]:
        return self._span(r for r in self.selection.slices if key_of(r)[0] == workload)

    def _panels(self, workloads: Sequence[Workload], series: dict[Key, list[Point]],
                height: float) -> tuple[Figure, list[tuple[Axes, Workload]]] | None:
        """One panel per workload that has points, each titled with its workload's label."""
        shown = [w for w in workloads if any(k[0] == w for k in series)]
        if not shown:
            return None
        figure = self._figure(11, 1.0 + height * len(shown))
        axes_list = list(figure.subplots(len(shown), 1, squeeze=False)[:, 0])
        for axes, workload in zip(axes_list, shown, strict=True):
            axes.set_title(self.workload_label(workload), loc="left", fontweight="bold")
            self._time_axis(axes, *self._workload_span(workload), label=axes is axes_list[-1])
        return figure, list(zip(axes_list, shown, strict=True))

    def throughput(self, path: Path, workloads: Sequence[Workload]) -> bool:
        """throughput.png: each slice's FLOP/s over time, a panel per workload, a line per lane.
        False (nothing drawn) when no slice measured steps."""
        series = throughput_series(self.selection.slices)
        drawn = self._panels(workloads, series, 2.5)
        if drawn is None:
            return False
        figure, panels = drawn
        for axes, workload in panels:
            peak = max(p[2] for k, v in series.items() if k[0] == workload for p in v)
            scale, prefix = si_scale(peak)
            for lane in self.lanes:
                points = series.get((workload, lane))
                if points:
                    self._series(axes, [(t, r, v / scale) for t, r, v in points], lane)
            axes.set_ylabel(f"{prefix}FLOP/s")
            axes.set_ylim(bottom=0, top=peak / scale * 1.15)
        self._legend(figure, [axes for axes, _ in panels])
        figure.suptitle("Throughput per slice: FLOP over measured seconds (warm-up excluded)")
        figure.savefig(path)
        return True

    def sustained(self, path: Path, workloads: Sequence[Workload]) -> bool:
        """sustained.png: each slice's throughput over the first of its workload×lane."""
        series = sustained_series(self.selection.slices)
        drawn = self._panels(workloads, series, 2.3)
        if drawn is None:
            return False
        figure, panels = drawn
        reference = "the rotation" if self.selection.scope == "rotation" else "the window"
        for axes, workload in panels:
            top = 1.0
            for lane in self.lanes:
                points = series.get((workload, lane))
                if points:
                    top = max(top, *(p[2] for p in points))
                    self._series(axes, points, lane)
            axes.axhline(1.0, color="#333333", linewidth=0.8, linestyle="--")
            axes.set_ylim(0, max(1.25, top * 1.1))
            axes.set_ylabel("× first slice")
        self._legend(figure, [axes for axes, _ in panels])
        figure.suptitle(f"Sustained ratio: slice throughput / first slice of the same workload and backend "
                        f"in {reference}")
        figure.savefig(path)
        return True

    def _bin_seconds(self, rows: Sequence[dict[str, Any]]) -> int | None:
        """A bin width that leaves about BINS points, when there are too many rows to draw one by one."""
        if len(rows) <= BIN_SECONDS_OVER:
            return None
        want = (float(rows[-1]["time"]) - float(rows[0]["time"])) / BINS
        return next((step for step in TICK_STEPS if step >= want), TICK_STEPS[-1])

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
        """power.png: watts per component from the telemetry rows (and their total where the
        source has no `combined`), binned past BIN_SECONDS_OVER rows. False when no row has power."""
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
        self._save_telemetry(figure, axes, path, rows, bin_seconds,
                             "Power per component (journal telemetry rows, from energy-counter deltas)", "mean")
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
        self._save_telemetry(figure, axes, path, known, bin_seconds,
                             "Thermal pressure over time (journal telemetry rows)", "highest level")
        return True, unknown

    def _save_telemetry(self, figure: Figure, axes: Axes, path: Path, rows: Sequence[dict[str, Any]],
                        bin_seconds: int | None, title: str, reduced: str) -> None:
        """Time axis over the rows (and the phase bands), title saying how bins were reduced, save."""
        self._time_axis(axes, *self._telemetry_span(rows))
        if bin_seconds:
            self.bins[path.name] = bin_seconds
            title += f", {reduced} per {duration(bin_seconds)}"
        figure.suptitle(title)
        figure.savefig(path)

    def history(self, path: Path, max_panels: int = 8) -> bool:
        """history.png: per run configuration judged in the selection (at most `max_panels`), each
        rotation's sustained throughput over time, with the band it was judged against as an error
        bar (2.5-97.5 percentile of the earlier rotations, a tick at their median) and the latest
        band shaded across the panel; rotations below their band in red. False when no verdict row
        has a sustained throughput."""
        panels = [(key, [r for r in rows if r["sustained_flop_per_second"]])
                  for key, rows in self.selection.history.items()]
        panels = [(key, rows) for key, rows in panels if rows][:max_panels]
        if not panels:
            return False
        figure = self._figure(11, 1.0 + 2.6 * len(panels))
        axes_list = list(figure.subplots(len(panels), 1, squeeze=False)[:, 0])
        for axes, ((_run_key, profile), rows) in zip(axes_list, panels, strict=True):
            values = [r["sustained_flop_per_second"] for r in rows]
            bands = [r for r in rows if r["history_low"] is not None]
            bounds = values + [r["history_low"] for r in bands] + [r["history_high"] for r in bands]
            scale, prefix = si_scale(max(bounds))
            times = self._times(float(r["ended_at"]) for r in rows)
            if bands:
                latest = bands[-1]
                axes.axhspan(latest["history_low"] / scale, latest["history_high"] / scale, color="#90caf9",
                             alpha=0.35, linewidth=0, label=f"latest band ({latest['history_rotations']} rotations)")
                at = self._times(float(r["ended_at"]) for r in bands)
                medians = [r["history_median"] / scale for r in bands]
                below = [m - r["history_low"] / scale for m, r in zip(medians, bands, strict=True)]
                above = [r["history_high"] / scale - m for m, r in zip(medians, bands, strict=True)]
                axes.errorbar(at, medians, yerr=[below, above], fmt="_", color="#1565c0", markersize=12, capsize=4,
                              linewidth=1.2, label="band it was judged against: 2.5-97.5 % (tick: median)")
            axes.plot(times, [v / scale for v in values], color="#333333", marker="o", markersize=4, linewidth=1.2,
                      label="sustained throughput")
            low = [(t, r) for t, r in zip(times, rows, strict=True) if r["regression"]]
            if low:
                axes.plot([t for t, _ in low], [r["sustained_flop_per_second"] / scale for _, r in low],
                          linestyle="none", marker="o", markersize=8, color="#c62828", label="regression")
            first = rows[0]
            axes.set_title(f"{first['phase']} · {first['backend']} · {first['precision']} · device "
                           f"{first['device']} · profile {profile}", loc="left", fontweight="bold")
            self._time_axis(axes, float(rows[0]["ended_at"]), float(rows[-1]["ended_at"]),
                            label=axes is axes_list[-1])
            spread = (max(bounds) - min(bounds)) or 0.05 * max(bounds)
            axes.set_ylim(max(0.0, min(bounds) - 0.3 * spread) / scale, (max(bounds) + 0.3 * spread) / scale)
            axes.set_ylabel(f"{prefix}FLOP/s")
            axes.legend(loc="lower left", fontsize=8)
        figure.suptitle("History: sustained throughput per rotation of each run configuration")
        figure.savefig(path)
        return True

    def energy(self, path: Path, stats: dict[Key, LaneStats], workloads: Sequence[Workload]) -> bool:
        """energy.png: joules per step and FLOP per joule, bars per workload and lane. False
        (nothing drawn) when no slice recorded energy."""
        from matplotlib.ticker import FuncFormatter

        measured = {k: s for k, s in stats.items() if s.flop_per_joule is not None}
        workloads = [w for w in workloads if any(k[0] == w for k in measured)]
        lanes = [lane for lane in self.lanes if any(k[1] == lane for k in measured)]
        if not workloads:
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
                for position, workload in enumerate(workloads):
                    entry = measured.get((workload, lane))
                    if entry is not None:
                        xs.append(position - 0.4 + width * (index + 0.5))
                        heights.append(getattr(entry, metric) / scale)
                fell_back = lane.requested != lane.backend
                bars = axes.bar(xs, heights, width * 0.92, color=self.colours[lane], hatch="//" if fell_back else None,
                                edgecolor="white" if fell_back else None, label=self.lane_label(lane))
                crowded = len(lanes) >= 4  # side-by-side labels would run into each other: stand them up
                axes.bar_label(bars, labels=[f"{h:.3g}" for h in heights], fontsize=7 if crowded else 8,
                               padding=2, rotation=90 if crowded else 0)
            axes.set_xticks(range(len(workloads)),
                            [self.workload_label(w).replace(" · ", "\n", 1) for w in workloads])
            axes.set_ylabel(f"{prefix}{unit}" + (" per step" if metric == "joules_per_step" else ""))
            if spread > 30:  # workloads differ by orders of magnitude: a log axis keeps the small bars visible
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


