"""The report's figures from slice rows: throughput, speedup, energy per operation, sustained ratio.

Definitions (checked by tests/daemon/report/):

- a *workload* is what a figure measures: one phase of one profile at one shape set. Slices
  of different workloads are never pooled or divided by one another: a ci slice is not
  "0.07 sustained" against a heavy one. The shapes come from the slice's run configuration
  (journal column `run`, workloads.protocol.RunConfig: `shapes`) where the journal has it,
  else from its `info` (`shapes`); a journal with neither tells workloads apart by profile;
- a *lane* is one (requested backend, backend it ran on, precision, CPU baseline or not, run
  configuration): the run configuration is the slice's `run` record apart from what the
  workload and the lane already say (phase, shapes, backend, precision): device, technique
  (eager, cuda_graph), memory format, variant, tf32 and any field added later; empty where the
  journal has none. So a workload×lane holds exactly the slices of one `run_key` (the
  record's digest) of one profile: a figure over time never mixes two run configurations. A
  lane whose requested backend differs from where it ran is labelled "requested→ran on";
- throughput of a slice is its FLOP over its measured seconds (warm-up excluded); of a
  workload×lane, total FLOP over total measured seconds (FLOP/s);
- the sustained ratio of a slice is its throughput over the first slice's of the same
  workload×lane in the selection (the rotation, or the --since window); the table shows the
  last slice's ratio;
- speedup is a lane's throughput over the same workload's CPU run (the CPU baseline first),
  else over the compared pair's first lane;
- energy per operation uses `system_energy` on each slice's per-component joules (no rail
  counted twice), over the slices that recorded energy and ran steps.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from daemon.report.units import clip
from daemon.stability import system_energy
from workloads.backends import registry as backend_registry


@dataclass(frozen=True)
class Workload:
    """What a figure measures: `phase` of `profile` at one shape set (`shapes`, canonical JSON
    of the phase's input shapes, "" where the journal does not record them)."""

    profile: str
    phase: str
    shapes: str = ""

    def label(self, show_shapes: bool = False) -> str:
        """"matmul · profile heavy", with the shapes appended when `show_shapes`."""
        text = f"{self.phase} · profile {self.profile}"
        return f"{text} · shapes {self.shapes}" if show_shapes and self.shapes else text


# Run-record fields the workload or the lane already carries, and the record's digest.
_RUN_ELSEWHERE = frozenset({"phase", "shapes", "backend", "precision", "key", "run_key"})
# Defaults of workloads.protocol.RunConfig: a lane on them is named by its backend alone.
_RUN_DEFAULTS = {"device": "0", "technique": "eager", "memory_format": "contiguous", "variant": "standard",
                 "tf32": False}


def run_configuration(run: Mapping[str, Any]) -> str:
    """The run record's fields beyond phase, shapes, backend and precision, as a short label
    that is empty on the defaults: "device 1 · cuda_graph · channels_last · ane · tf32"
    (fields unknown here are shown as name=value, so a new field still tells lanes apart)."""
    words = []
    for name in (*_RUN_DEFAULTS, *sorted(set(run) - set(_RUN_DEFAULTS) - _RUN_ELSEWHERE)):
        if name not in run or run[name] == _RUN_DEFAULTS.get(name, object()):
            continue
        value = run[name]
        words.append(f"device {value}" if name == "device" else "tf32" if name == "tf32" and value is True
                     else str(value) if name in _RUN_DEFAULTS else f"{name}={value}")
    return " · ".join(words)


@dataclass(frozen=True)
class Lane:
    """Where a series of slices was asked to run, where it ran, in which precision and run
    configuration (`run`, see run_configuration; "" on the defaults or where the journal has
    no run record)."""

    requested: str
    backend: str
    precision: str
    baseline: bool = False
    run: str = ""

    def label(self, show_precision: bool = False, show_run: bool = False) -> str:
        """"cuda", "coreml-ane→mps", "cpu fp32 (baseline)", "cuda [cuda_graph]" as needed to
        tell the selection's lanes apart (the lane on the defaults stays unmarked)."""
        name = self.backend if self.requested == self.backend else f"{self.requested}→{self.backend}"
        if show_precision:
            name += f" {self.precision}"
        if show_run and self.run:
            name += f" [{self.run}]"
        return name + (" (baseline)" if self.baseline else "")


Key = tuple[Workload, Lane]


def _json_field(value: Any) -> Any:
    """A JSON column's value whether the journal decoded it already or not."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return None
    return value


def _shapes(record: Any) -> str:
    """The shapes of a run record or info, without the model variant: the ANE layout of the
    attention phase computes the same function with the same FLOP, so a Metal slice and an ANE
    one of the same sizes stay one workload (the variant is part of their lanes)."""
    shapes = record.get("shapes") if isinstance(record, Mapping) else None
    if not shapes:
        return ""
    if isinstance(shapes, str):
        return " ".join(word for word in shapes.split() if not word.startswith("variant="))
    if isinstance(shapes, Mapping):
        shapes = {k: v for k, v in shapes.items() if k != "variant"}
    return json.dumps(shapes, sort_keys=True, separators=(",", ":"))


def _run(row: Mapping[str, Any]) -> Mapping[str, Any]:
    run = _json_field(row.get("run"))
    return run if isinstance(run, Mapping) else {}


def workload_of(row: Mapping[str, Any]) -> Workload:
    """A slice row's workload: its profile (added by selection.select) and phase, with the shapes
    of its run configuration (column `run`) when the journal has it, else of its `info`."""
    shapes = _shapes(_run(row)) or _shapes(_json_field(row.get("info")))
    return Workload(str(row.get("profile") or "unknown"), row["phase"], shapes)


def lane_of(row: Mapping[str, Any]) -> Lane:
    """A slice row's lane, with the run configuration of its run record (column `run`)."""
    return Lane(row["requested_backend"], row["backend"], row["precision"], bool(row["baseline"]),
                run_configuration(_run(row)))


def key_of(row: Mapping[str, Any]) -> Key:
    """(workload, lane) of a slice row: the unit every figure is computed over."""
    return workload_of(row), lane_of(row)


def slice_rate(row: Mapping[str, Any]) -> float | None:
    """FLOP/s over the slice's measured seconds; None for a slice that measured nothing."""
    if row["steps"] > 0 and row["seconds"] > 0 and row["flop"] > 0:
        return float(row["flop"]) / float(row["seconds"])
    return None


def slice_time(row: Mapping[str, Any]) -> float:
    """The middle of the slice's wall time (epoch s), where its point goes on a time axis."""
    return (float(row["started_at"]) + float(row["ended_at"])) / 2.0


def in_time_order(slices: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Slice rows by start time, then id."""
    return sorted(slices, key=lambda r: (r["started_at"], r["id"]))


@dataclass
class LaneStats:
    """Totals of one workload×lane over the selection (seconds are measured seconds)."""

    workload: Workload
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
    asked: int = 0  # slices asked of this lane's requested backend in the workload, wherever they ran
    moved_to: dict[str, int] = field(default_factory=dict)  # of those, slices that ran elsewhere, by backend
    speedup: float | None = None
    speedup_reference: Lane | None = None

    @property
    def throughput(self) -> float | None:
        """Total FLOP over total measured seconds (FLOP/s); None when nothing was measured."""
        return self.flop / self.seconds if self.seconds > 0 and self.flop > 0 else None

    @property
    def flop_per_joule(self) -> float | None:
        """FLOP per joule of whole-system energy, over the slices that recorded energy."""
        return self.energy_flop / self.energy_joules if self.energy_joules > 0 else None

    @property
    def joules_per_step(self) -> float | None:
        """Joules of whole-system energy per measured step, over the slices that recorded energy."""
        return self.energy_joules / self.energy_steps if self.energy_joules > 0 and self.energy_steps else None

    @property
    def sustained_ratio(self) -> float | None:
        """Last slice's throughput over the first's; None with fewer than two measured slices."""
        return self.rates[-1] / self.rates[0] if len(self.rates) >= 2 else None

    @property
    def min_ratio(self) -> float | None:
        """Lowest slice throughput over the first's; None with fewer than two measured slices."""
        return min(self.rates) / self.rates[0] if len(self.rates) >= 2 else None


def ordered(values: Iterable[Any]) -> list[Any]:
    """Distinct values in order of first appearance."""
    return list(dict.fromkeys(values))


def lane_stats(slices: Sequence[dict[str, Any]]) -> dict[Key, LaneStats]:
    """Totals per (workload, lane) of the slice rows, in order of first slice."""
    stats: dict[Key, LaneStats] = {}
    for row in in_time_order(slices):
        workload, lane = key_of(row)
        entry = stats.setdefault((workload, lane), LaneStats(workload, lane))
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
    groups: dict[tuple[Workload, str, str, bool], list[LaneStats]] = {}
    for (workload, lane), entry in stats.items():
        groups.setdefault((workload, lane.requested, lane.precision, lane.baseline), []).append(entry)
    for members in groups.values():
        asked = sum(m.slices for m in members)
        moved: dict[str, int] = {}
        for member in members:
            if member.fallback_slices:
                moved[member.lane.backend] = moved.get(member.lane.backend, 0) + member.fallback_slices
        for member in members:
            member.asked, member.moved_to = asked, dict(moved)
    return stats


def lane_key(lane: Lane) -> tuple[bool, bool, int, int, str]:
    """Lanes as the page lists them: asked-for backends first, fallbacks after them, the baseline last."""
    return (lane.baseline, lane.requested != lane.backend, backend_registry.rank(lane.backend),
            backend_registry.rank(lane.requested), lane.run)


def ordered_lanes(stats: Mapping[Key, LaneStats]) -> list[Lane]:
    """The distinct lanes of `stats` in display order (lane_key, then first appearance)."""
    lanes = ordered(lane for _, lane in stats)
    return sorted(lanes, key=lambda lane: (*lane_key(lane), lanes.index(lane)))


def choose_pair(lanes: Sequence[Lane]) -> list[Lane]:
    """The two lanes to set side by side: Metal vs ANE, CUDA vs CPU, else the first two asked for."""
    if len(lanes) <= 1:
        return list(lanes)
    metal = sorted((lane for lane in lanes if lane.backend == "mps"), key=lane_key)
    coreml = sorted((lane for lane in lanes if lane.backend.startswith("coreml-")), key=lane_key)
    cuda = sorted((lane for lane in lanes if lane.backend == "cuda"), key=lane_key)
    cpu = sorted((lane for lane in lanes if lane.backend == "cpu"),
                 key=lambda lane: (not lane.baseline, lane.requested != "cpu"))
    for firsts, seconds in ((metal, coreml), (cuda, cpu)):
        if firsts and seconds:
            return _same_precision(firsts, seconds)
    rest = sorted(lanes, key=lambda lane: (*lane_key(lane), lanes.index(lane)))
    return _same_precision(rest[:1], rest[1:])


def _same_precision(firsts: Sequence[Lane], seconds: Sequence[Lane]) -> list[Lane]:
    """The first pair that compares like with like in precision, else the first of each."""
    for first in firsts:
        for second in seconds:
            if second.precision == first.precision:
                return [first, second]
    return [firsts[0], seconds[0]]


def add_speedups(stats: Mapping[Key, LaneStats], pair: Sequence[Lane]) -> None:
    """Set each entry's speedup: over its workload's CPU run (the baseline first), else over the
    pair's first lane in the same workload. Never across workloads."""
    for workload in ordered(w for w, _ in stats):
        entries = [s for (w, _), s in stats.items() if w == workload and s.throughput]
        cpu = sorted((s for s in entries if s.lane.backend == "cpu"),
                     key=lambda s: (not s.lane.baseline, s.lane.requested != "cpu"))
        reference = cpu[0] if cpu else next((s for s in entries if pair and s.lane == pair[0]), None)
        if reference is None or not reference.throughput:
            continue
        for entry in entries:
            entry.speedup = (entry.throughput or 0.0) / reference.throughput
            entry.speedup_reference = reference.lane


Point = tuple[float, int, float]  # (epoch s, rotation id, value)


def throughput_series(slices: Sequence[dict[str, Any]]) -> dict[Key, list[Point]]:
    """(time, rotation, FLOP/s) per workload×lane, one point per slice that measured steps."""
    series: dict[Key, list[Point]] = {}
    for row in in_time_order(slices):
        rate = slice_rate(row)
        if rate is not None:
            series.setdefault(key_of(row), []).append((slice_time(row), int(row["rotation_id"]), rate))
    return series


def sustained_series(slices: Sequence[dict[str, Any]]) -> dict[Key, list[Point]]:
    """(time, rotation, ratio) per workload×lane: each slice's throughput over the first one's."""
    return {key: [(t, r, rate / points[0][2]) for t, r, rate in points]
            for key, points in throughput_series(slices).items()}


def fallback_reasons(events: Sequence[dict[str, Any]], lane: Lane) -> list[str]:
    """Distinct "reason: detail" of the journal's fallback events away from the lane's requested backend."""
    reasons: list[str] = []
    for event in events:
        if event["kind"] != "fallback":
            continue
        detail = _json_field(event["detail"] or "{}")
        if not isinstance(detail, dict) or detail.get("from") != lane.requested:
            continue
        text = str(detail.get("reason") or "unknown")
        if detail.get("detail"):
            text += f": {clip(str(detail['detail']), 160)}"
        if text not in reasons:
            reasons.append(text)
    return reasons
