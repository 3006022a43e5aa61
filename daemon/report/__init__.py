"""`soakd report`: PNG plots and a self-contained HTML page from the journal.

Everything here reads the journal only; the daemon need not run. The parts:

- selection.py: which rows (a rotation, a --since window, the last finished rotation);
- statistics.py: the figures, per workload (phase · profile · shapes) and lane, with their
  definitions; never divided across profiles or run configurations;
- verdicts.py: the verdicts section (stability score, slowdowns, history band, outliers, run
  conditions), from the journal's verdicts and conditions tables;
- plots.py: the PNGs (matplotlib, imported when drawing);
- page.py and templates/: index.html (jinja2, autoescaped).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from daemon.journal import Journal
from daemon.report.plots import INSTALL_HINT, Plotter, import_matplotlib
from daemon.report.selection import ReportError, Selection, select
from daemon.report.statistics import (
    Lane,
    LaneStats,
    Workload,
    add_speedups,
    choose_pair,
    in_time_order,
    key_of,
    lane_stats,
    ordered,
    ordered_lanes,
    sustained_series,
)

__all__ = [
    "INSTALL_HINT", "PLOT_FILES", "Lane", "LaneStats", "Report", "ReportError", "Selection", "Workload",
    "add_speedups", "choose_pair", "lane_stats", "select", "sustained_series", "write_report",
]

PLOT_FILES = ("throughput.png", "sustained.png", "history.png", "power.png", "thermal.png", "energy.png")


@dataclass
class Report:
    """What `write_report` produced: index.html and the PNGs drawn (in PLOT_FILES order)."""

    index: Path
    plots: list[Path]


def write_report(journal: Journal, out: Path, rotation: int | None = None, since: float | None = None,
                 since_text: str | None = None) -> Report:
    """Write index.html and the plots into `out` (created if missing) for the rows `select`
    picks; plots with nothing to show are not drawn, and stale ones from an earlier report in
    `out` are removed. Raises ReportError for nothing to report, matplotlib missing, or `out`
    not writable."""
    from daemon.report.page import Naming, PageData, render_page
    from daemon.report.verdicts import build_section

    import_matplotlib()
    selection = select(journal, rotation=rotation, since=since, since_text=since_text)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ReportError(f"cannot create {out}: {exc.strerror or exc}") from None
    stats = lane_stats(selection.slices)
    lanes = ordered_lanes(stats)
    pair = choose_pair(lanes)
    add_speedups(stats, pair)
    workloads = ordered(key_of(row)[0] for row in in_time_order(selection.slices))
    naming = Naming.for_keys(list(stats))
    plotter = Plotter(selection, lanes, naming.lane, naming.workload)
    drawn: dict[str, Path] = {}
    unknown_levels: list[str] = []
    try:
        for name, draw in (("throughput.png", lambda p: plotter.throughput(p, workloads)),
                           ("sustained.png", lambda p: plotter.sustained(p, workloads)),
                           ("history.png", plotter.history),
                           ("power.png", plotter.power),
                           ("energy.png", lambda p: plotter.energy(p, stats, workloads))):
            if draw(out / name):
                drawn[name] = out / name
        ok, unknown_levels = plotter.thermal(out / "thermal.png")
        if ok:
            drawn["thermal.png"] = out / "thermal.png"
        for name in PLOT_FILES:  # a plot from an earlier report must not sit beside this page
            if name not in drawn:
                (out / name).unlink(missing_ok=True)
        page = render_page(PageData(selection, stats, lanes, pair, workloads, set(drawn), unknown_levels, naming,
                                    plotter.bins, build_section(selection)))
        index = out / "index.html"
        index.write_text(page, encoding="utf-8")
    except OSError as exc:
        raise ReportError(f"cannot write into {out}: {exc.strerror or exc}") from None
    return Report(index, [drawn[n] for n in PLOT_FILES if n in drawn])
