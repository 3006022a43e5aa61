"""index.html: the report page, rendered from templates/report.html.j2 with jinja2 (autoescape on).

Everything the page shows is built here as plain data (text with an optional CSS class per
part, never HTML), so every journal string reaches the page escaped by jinja2.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import jinja2

from daemon.report.plots import BINS, SHADE_MAX_ROTATIONS
from daemon.report.selection import Selection
from daemon.report.statistics import Key, Lane, LaneStats, Workload, fallback_reasons, ordered
from daemon.report.units import clip, duration, si, slices, when
from workloads.host import host_info


@dataclass(frozen=True)
class Part:
    """A run of text on the page; `css` is a class name ("bad", "good", "muted") or "", `br`
    starts it on a new line."""

    text: str
    css: str = ""
    br: bool = False


Cell = list[Part]


@dataclass
class Row:
    """One table row: a heading and a cell per column (None: that lane did not run it)."""

    name: str
    cells: list[Cell | None]


@dataclass
class Table:
    """A comparison table: lanes as columns, a block of rows per workload."""

    css: str  # "compare" or "all": the tests and the stylesheet find tables by it
    columns: list[str]
    blocks: list[tuple[str, list[Row]]]


@dataclass
class Figure:
    """An <img> with its caption (a plot file beside index.html)."""

    src: str
    alt: str
    caption: str


@dataclass
class Naming:
    """How lanes and workloads are named on this page: precision, run configuration and shapes
    are shown only where they tell two apart."""

    show_precision: bool = False
    show_run: bool = False
    show_shapes: bool = False

    @classmethod
    def for_keys(cls, keys: Sequence[Key]) -> Naming:
        """The least that tells every lane and every workload of `keys` apart."""
        lanes = ordered(lane for _, lane in keys)
        workloads = ordered(w for w, _ in keys)
        return cls(
            show_precision=len({(x.requested, x.backend, x.baseline, x.run) for x in lanes}) < len(lanes),
            show_run=len({(x.requested, x.backend, x.baseline, x.precision) for x in lanes}) < len(lanes),
            show_shapes=len({(w.profile, w.phase) for w in workloads}) < len(workloads),
        )

    def lane(self, lane: Lane) -> str:
        """The lane's column heading and legend entry."""
        return lane.label(self.show_precision, self.show_run)

    def workload(self, workload: Workload) -> str:
        """The workload's block heading and panel title, with its profile always."""
        return workload.label(self.show_shapes)


@dataclass
class PageData:
    """What `soakd report` found, handed to `render_page`."""

    selection: Selection
    stats: dict[Key, LaneStats]
    lanes: list[Lane]  # display order
    pair: list[Lane]  # the two lanes set side by side (or the only one)
    workloads: list[Workload]  # in order of first slice
    plots: set[str]  # file names drawn
    unknown_levels: list[str]
    naming: Naming
    bins: dict[str, int] = field(default_factory=dict)  # plot file: seconds per averaged bin
    verdicts: Any = None  # daemon/report/verdicts.VerdictSection, None without verdicts in the journal


# --- cells ----------------------------------------------------------------------------------------


def _ratio_cell(entry: LaneStats) -> Cell:
    ratio = entry.sustained_ratio
    if ratio is None:
        return [Part("— (one measured slice)", "muted")]
    cell = [Part(f"{ratio:.2f}", "bad" if ratio < 0.9 else "good" if ratio >= 0.97 else "")]
    low = entry.min_ratio
    if low is not None and low < ratio:
        cell.append(Part(f" (lowest {low:.2f})", "muted"))
    return cell


def _fallback_cell(entry: LaneStats, events: Sequence[dict[str, Any]]) -> Cell:
    if not entry.moved_to:
        return [Part("none")]
    moved = sum(entry.moved_to.values())
    cell = [Part(f"{moved} of {entry.asked} slices asked of {entry.lane.requested} ran on "
                 f"{', '.join(entry.moved_to)}", "bad")]
    cell += [Part(reason, "muted", br=True) for reason in fallback_reasons(events, entry.lane)]
    return cell


def _ran_on_cell(entry: LaneStats) -> Cell:
    stayed = entry.asked - sum(entry.moved_to.values())
    cell = [Part(f"{entry.lane.requested} ({slices(stayed)})")] if stayed else []
    cell += [Part(f"{backend} ({slices(count)}, fallback)", "bad", br=bool(cell) or index > 0)
             for index, (backend, count) in enumerate(entry.moved_to.items())]
    return cell


def _or_missing(value: str | None, missing: str = "no energy source") -> Cell:
    return [Part(value)] if value else [Part(missing, "muted")]


def _row_makers(naming: Naming, events: Sequence[dict[str, Any]], references: Sequence[Lane],
                moved: bool) -> list[tuple[str, Callable[[LaneStats], Cell]]]:
    rows: list[tuple[str, Callable[[LaneStats], Cell]]] = [("precision", lambda s: [Part(s.lane.precision)])]
    if moved:
        rows.append(("ran on", _ran_on_cell))
    reference = ", ".join(naming.lane(lane) for lane in references) or "—"
    rows += [
        ("throughput", lambda s: [Part(si(s.throughput, "FLOP/s"))]),
        (f"speedup vs {reference}", lambda s: [Part("—" if s.speedup is None else f"{s.speedup:.2f}×")]),
        ("FLOP per joule", lambda s: _or_missing(si(s.flop_per_joule, "FLOP/J") if s.flop_per_joule else None)),
        ("energy per step", lambda s: _or_missing(si(s.joules_per_step, "J") if s.joules_per_step else None)),
        ("sustained ratio (last / first slice)", _ratio_cell),
        ("mismatches", lambda s: [Part(str(s.mismatches), "bad" if s.mismatches else "good"),
                                  Part(f" of {s.checks} checks", "muted")]),
        ("fallbacks", lambda s: _fallback_cell(s, events)),
        ("slices", lambda s: [Part(str(s.slices)), Part(f" ({s.failed_slices} failed)", "bad")]
         if s.failed_slices else [Part(str(s.slices))]),
        ("steps · measured time", lambda s: [Part(f"{s.steps:,} · {duration(s.seconds)}")]),
    ]
    return rows


def _column_entry(stats: Mapping[Key, LaneStats], workload: Workload, lane: Lane,
                  substitute: bool) -> LaneStats | None:
    """The lane's figures in a workload; with `substitute`, where the whole request fell back, the fallback's."""
    entry = stats.get((workload, lane))
    if entry is not None or not substitute or lane.requested != lane.backend:
        return entry
    moved = [s for (w, other), s in stats.items()
             if w == workload and other.requested == lane.requested and other.backend != other.requested
             and other.precision == lane.precision and other.baseline == lane.baseline]
    return max(moved, key=lambda s: s.slices) if moved else None


def build_table(data: PageData, columns: Sequence[Lane], css: str, substitute: bool = False) -> Table:
    """The figures of `columns` for every workload any of them ran (see statistics.py's definitions)."""
    blocks: list[tuple[str, list[Row]]] = []
    for workload in data.workloads:
        entries = [_column_entry(data.stats, workload, lane, substitute) for lane in columns]
        if not any(entries):
            continue
        references = ordered(e.speedup_reference for e in entries if e is not None and e.speedup_reference)
        makers = _row_makers(data.naming, data.selection.events, references,
                             any(e is not None and e.moved_to for e in entries))
        rows = [Row(name, [make(e) if e is not None else None for e in entries]) for name, make in makers]
        blocks.append((data.naming.workload(workload), rows))
    return Table(css, [data.naming.lane(lane) for lane in columns], blocks)


# --- sections -------------------------------------------------------------------------------------


def _subtitle(selection: Selection) -> str:
    rotations = selection.rotations
    if len(rotations) == 1:
        r = rotations[0]
        ended = r["ended_at"]
        span = duration(ended - r["started_at"]) if ended else "running"
        detail = f" ({r['detail']})" if r.get("detail") else ""
        return (f"profile {r['profile']} · trigger {r['trigger']} · backends {r['backends']} · "
                f"{r['result'] or 'running'}{detail} · "
                f"{when(r['started_at'])} → {when(ended, '%H:%M:%S') if ended else 'now'} ({span})")
    results: dict[str, int] = {}
    for r in rotations:
        results[r["result"] or "running"] = results.get(r["result"] or "running", 0) + 1
    counts = ", ".join(f"{n} {k}" for k, n in sorted(results.items()))
    profiles = ", ".join(ordered(r["profile"] for r in rotations))
    return (f"{len(rotations)} rotations ({counts}) · profiles {profiles} · {len(selection.slices)} slices · "
            f"{when(selection.start)} → {when(selection.end)}")


def _cards(data: PageData) -> list[tuple[str, str, str]]:
    """(what, throughput, note) of the pair's first lane in each workload."""
    cards = []
    for workload in data.workloads:
        entry = data.stats.get((workload, data.pair[0])) if data.pair else None
        if entry is None or entry.throughput is None:
            continue
        notes = []
        if entry.speedup is not None and entry.speedup_reference not in (None, entry.lane):
            reference = data.naming.lane(entry.speedup_reference) if entry.speedup_reference else ""
            notes.append(f"{entry.speedup:.2f}× vs {reference}")
        if entry.sustained_ratio is not None:
            notes.append(f"sustained {entry.sustained_ratio:.2f}")
        cards.append((f"{data.naming.workload(workload)} · {data.naming.lane(entry.lane)}",
                      si(entry.throughput, "FLOP/s"), " · ".join(notes)))
    return cards


def _pair_title(data: PageData) -> str:
    backends = {lane.backend for lane in data.pair}
    names = " vs ".join(data.naming.lane(lane) for lane in data.pair)
    if len(data.pair) == 1:
        return f"{names} (the only backend)"
    if "mps" in backends and any(b.startswith("coreml-") for b in backends):
        return f"Metal vs Neural Engine ({names})"
    if backends == {"cuda", "cpu"}:
        return f"CUDA vs CPU ({names})"
    return names


def _figures(data: PageData) -> dict[str, Figure]:
    selection, bins = data.selection, data.bins
    reference = "rotation" if selection.scope == "rotation" else "selected window"
    shaded = " Shaded bands mark the phases." if len(selection.rotations) <= SHADE_MAX_ROTATIONS else ""
    power_bins = (f" Averaged per {duration(bins['power.png'])} to keep {BINS}-odd points."
                  if "power.png" in bins else "")
    thermal_bins = (f" The highest level in each {duration(bins['thermal.png'])}." if "thermal.png" in bins
                    else "")
    figures = {
        "throughput.png": Figure("throughput.png", "throughput over time per workload and backend",
                                 "One line per backend, one panel per phase and profile; each point is a slice's "
                                 "FLOP over its measured seconds."),
        "sustained.png": Figure("sustained.png", "sustained ratio over time",
                                f"Each slice's throughput over the first slice of the same phase, profile and "
                                f"backend in the {reference}; 1.0 (dashed) is no change, below it is slower."),
        "history.png": Figure("history.png", "sustained throughput per rotation with its history band",
                              "Each rotation's sustained throughput (second half of its loops) of one run "
                              "configuration, over time. The error bar at a rotation is the band it was judged "
                              "against: 2.5-97.5 % of the earlier rotations of the same run configuration and "
                              "profile, with a tick at their median; the latest band is shaded across. A red "
                              "point fell below its band: a regression. At most 8 run configurations, in "
                              "the order they ran."),
        "energy.png": Figure("energy.png", "energy per step and FLOP per joule by backend",
                             "Left: joules per measured step; right: FLOP per joule. From each slice's "
                             "per-component energy counters, summed without counting a rail twice."),
        "power.png": Figure("power.png", "power per component over time",
                            f"Watts per component from the journal's telemetry rows (one every ~10 s while a "
                            f"rotation runs).{power_bins}{shaded}"),
        "thermal.png": Figure("thermal.png", "thermal pressure over time",
                              f"The OS thermal pressure level, nominal (calm) to sleeping (severe).{thermal_bins}"
                              f"{shaded}"),
    }
    return {name: figure for name, figure in figures.items() if name in data.plots}


# the verdicts table's columns (daemon/report/verdicts.py fills its rows)
VERDICT_COLUMNS = ("series · profile", "stability (worst / best loop)", "loops", "slowdowns",
                   "sustained vs history band", "vs host's median device")
_NOTABLE = ("fallback", "mismatch", "throttle", "error", "source_down", "device_outlier", "slowdown")


def _events(events: Sequence[dict[str, Any]], limit: int = 40) -> tuple[list[list[str]], int]:
    """The last `limit` notable events as (time, kind, source, detail) rows, and how many were left out."""
    notable = [e for e in events if e["kind"] in _NOTABLE]
    rows = [[when(e["time"]), e["kind"], e["source"] or "", clip(str(e["detail"] or ""), 240)]
            for e in notable[-limit:]]
    return rows, max(0, len(notable) - limit)


def _rotations(rotations: Sequence[dict[str, Any]], limit: int = 50) -> tuple[list[list[str]], int]:
    rows = [[str(r["id"]), r["profile"], r["trigger"], when(r["started_at"]),
             duration(r["ended_at"] - r["started_at"]) if r["ended_at"] else "running", r["result"] or "running"]
            for r in rotations[-limit:]]
    return rows, max(0, len(rotations) - limit)


def _footer() -> str:
    info = host_info()
    return (f"{info['hostname']} · {info['chip']} · {info['os']} {info['os_version']} ({info['machine']}) · "
            f"python {info['python']} · torch {info['torch']} · coremltools {info['coremltools']}")


_ENVIRONMENT = jinja2.Environment(
    loader=jinja2.PackageLoader("daemon.report", "templates"),
    autoescape=True,  # every value is text: a journal string can never become markup
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


def render_page(data: PageData) -> str:
    """The whole index.html: summary cards, the pair's table, all backends, the figures
    (only those in `data.plots`), telemetry sources, notable events, rotations, host."""
    selection = data.selection
    others = [lane for lane in data.lanes if lane not in data.pair]
    no_energy = [data.naming.lane(lane) for lane in data.lanes
                 if not any(s.flop_per_joule for (_, other), s in data.stats.items() if other == lane)]
    events, events_left_out = _events(selection.events)
    rotations, rotations_left_out = _rotations(selection.rotations)
    sources_up = [name for name, (ok, _) in selection.sources.items() if ok]
    sources_down = [f"{name} ({reason})" if reason else name
                    for name, (ok, reason) in selection.sources.items() if not ok]
    return _ENVIRONMENT.get_template("report.html.j2").render(
        title=f"soakd report: {selection.title}",
        subtitle=_subtitle(selection),
        cards=_cards(data),
        pair_title=_pair_title(data),
        single_backend=len(data.pair) < 2,
        compare=build_table(data, data.pair, "compare", substitute=True),
        everything=build_table(data, [*data.pair, *others], "all") if others else None,
        figures=_figures(data),
        no_energy=no_energy,
        sources=(", ".join(sources_up) or "—", "; ".join(sources_down) or "—") if selection.sources else None,
        unknown_levels=data.unknown_levels,
        events=events,
        events_left_out=events_left_out,
        rotations=rotations if len(selection.rotations) > 1 else None,
        rotations_left_out=rotations_left_out,
        verdicts=data.verdicts,
        verdict_columns=VERDICT_COLUMNS,
        host=_footer(),
        generated=when(time.time()),
    )
