"""Whole-system energy without counting a rail twice, and energy over measured time.

Some energy components are totals of others, and which ones exist differs between machines:

| where | total | contains |
|---|---|---|
| RAPL (Linux) | `psys` (platform, laptops) | every `package*` and `dram*` zone |
| RAPL | `package[-N][-die-M]` | its `core` and `uncore` zones (not `dram`: a separate domain) |
| powermetrics (macOS 13+) | `combined` | `cpu`, `gpu`, `ane` |
| powermetrics (macOS 12) | `package` | `cpu`, `gpu`, `ane`, `dram` (and `combined`) |
| NVML | - | `gpu0`, `gpu1`, ... each its own |

Each source module declares its own containment (`SourceSpec.energy_parts`,
daemon/sources/registry.py); `breakdown()` asks every registered source which of the
components present are parts of which other, at read time, and counts only the outermost
totals. Where a total reads 0 while its parts read more (some desktops report `psys` as 0),
the parts are counted instead and a note says so. `breakdown()` is the one function the
exporter (`soakd_system_energy_joules_total`, `soakd_flop_per_joule`), `soakd status`,
`soakd history` and `soakd report` use.

`EnergyHistory` keeps the sampler's recent cumulative counters so the energy of any set of
time.monotonic() intervals can be computed after the fact (`Sampler.energy_over`).
"""

from __future__ import annotations

import bisect
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

import daemon.sources  # noqa: F401 - fills the source registry
from daemon.sources import registry

EnergyKey = tuple[str, str]  # (source, component)


@dataclass(frozen=True)
class EnergyBreakdown:
    """Whole-system energy and how it was made.

    `joules` is the sum of the `counted` components (None when there was no component at all).
    `contained` maps each part to the total that contains it (as the sources declare), counted
    or not; `notes` say where the rules were bent (a total read 0 and its parts were used).
    """

    joules: float | None
    counted: tuple[str, ...]
    contained: dict[str, str]
    notes: tuple[str, ...] = ()

    def describe(self) -> str:
        """One line: "psys + gpu0 (package, dram in psys; core in package)" and the notes."""
        if self.joules is None:
            return "no energy component"
        text = " + ".join(self.counted) or "nothing"
        inside: dict[str, list[str]] = {}
        for part, total in self.contained.items():
            inside.setdefault(total, []).append(part)
        if inside:
            text += " (" + "; ".join(f"{', '.join(sorted(parts))} in {total}"
                                     for total, parts in sorted(inside.items())) + ")"
        return "; ".join([text, *self.notes])


def energy_parts(components: Collection[str]) -> dict[str, str]:
    """part -> the total that directly contains it, among `components`, from every source's
    declared rules. A rule naming an absent total, or one that would make a cycle, is ignored."""
    present = set(components)
    parents: dict[str, str] = {}
    for spec in registry.specs():
        if spec.energy_parts is None:
            continue
        for part, total in spec.energy_parts(present).items():
            if part in present and total in present and part != total:
                parents.setdefault(part, total)
    cyclic: set[str] = set()
    for part in parents:  # every member of a cycle is dropped
        path = [part]
        node = parents.get(part)
        while node is not None and node not in path:
            path.append(node)
            node = parents.get(node)
        if node is not None:
            cyclic.update(path[path.index(node):])
    return {part: total for part, total in parents.items() if part not in cyclic}


def breakdown(components: Mapping[str, float]) -> EnergyBreakdown:
    """Whole-system joules from per-component joules (one interval, or cumulative).

    Negative or non-finite values count as 0. See the module docstring for the rules.
    """
    values = {c: (v if v == v and 0.0 <= v < float("inf") else 0.0) for c, v in components.items()}
    if not values:
        return EnergyBreakdown(None, (), {})
    parents = energy_parts(values)
    children: dict[str, list[str]] = {}
    for part, total in parents.items():
        children.setdefault(total, []).append(part)
    counted: list[str] = []
    notes: list[str] = []

    def take(component: str) -> None:
        parts = sorted(children.get(component, []))
        inside = sum(values[p] for p in parts)
        if parts and values[component] <= 0.0 < inside:
            notes.append(f"{component} read {values[component]:.6g} J while its parts "
                         f"({', '.join(parts)}) read {inside:.6g} J: the parts are counted")
            for part in parts:
                take(part)
        else:
            counted.append(component)

    for component in sorted(c for c in values if c not in parents):
        take(component)
    return EnergyBreakdown(joules=sum(values[c] for c in counted), counted=tuple(counted),
                           contained=dict(sorted(parents.items())), notes=tuple(notes))


def system_energy(components: Mapping[str, float]) -> float | None:
    """Whole-system joules from {component: J} (`breakdown(...).joules`); None without data."""
    return breakdown(components).joules


def by_component(energy: Mapping[EnergyKey, float]) -> dict[str, float]:
    """{(source, component): J} -> {component: J}, summed over sources (the journal's shape)."""
    out: dict[str, float] = {}
    for (_source, component), joules in energy.items():
        out[component] = out.get(component, 0.0) + joules
    return out


# --- energy over measured time -------------------------------------------------------------


@dataclass(frozen=True)
class IntervalEnergy:
    """Energy used during a set of time.monotonic() intervals (`Sampler.energy_over`).

    `joules` per (source, component); `components` the same summed per component (the
    journal's shape); `system` the whole-system breakdown of `components`. `method`:
    "interpolated" (cumulative counters, linear between the sampler ticks around each interval
    edge), "clamped" (part of the intervals lies outside the kept history: energy there is
    missing, see `covered_seconds`) or "none" (no history). `unmeasured_seconds` is the part of
    the intervals inside a recorded gap of some source (no energy was counted for it).
    """

    joules: dict[EnergyKey, float]
    components: dict[str, float]
    system: EnergyBreakdown
    method: str
    seconds: float
    covered_seconds: float
    unmeasured_seconds: float


class EnergyHistory:
    """A bounded history of (time.monotonic(), cumulative joules per (source, component)).

    `max_points` bounds memory (one point per sampler tick: 7200 points cover two hours at
    1 s). Not thread-safe: the sampler calls it under its own lock. Raises ValueError for
    `max_points` below 2.
    """

    def __init__(self, max_points: int = 7200) -> None:
        if max_points < 2:
            raise ValueError("an energy history needs at least 2 points")
        self.max_points = max_points
        self._times: list[float] = []
        self._energy: list[Mapping[EnergyKey, float]] = []
        self._gaps: list[tuple[str, float, float]] = []

    def add(self, now: float, cumulative: Mapping[EnergyKey, float]) -> None:
        """One tick's cumulative counters; raises ValueError if `now` is before the last tick's."""
        if self._times and now < self._times[-1]:
            raise ValueError("energy history times must not go backwards")
        self._times.append(now)
        self._energy.append(cumulative)
        excess = len(self._times) - self.max_points
        if excess > self.max_points // 10:  # trim in chunks: list deletion is O(n)
            del self._times[:excess]
            del self._energy[:excess]
            oldest = self._times[0]
            self._gaps = [g for g in self._gaps if g[2] > oldest]

    def add_gap(self, source: str, start: float, end: float) -> None:
        """A span a source could not measure (no energy was counted for it)."""
        if end > start:
            self._gaps.append((source, start, end))
            del self._gaps[:-1000]

    def at(self, t: float) -> dict[EnergyKey, float]:
        """Cumulative joules at time t, linear between the two ticks around it; clamped to the
        first or last tick outside the history."""
        times = self._times
        if not times:
            return {}
        if t <= times[0]:
            return dict(self._energy[0])
        if t >= times[-1]:
            return dict(self._energy[-1])
        right = bisect.bisect_right(times, t)
        t0, t1 = times[right - 1], times[right]
        e0, e1 = self._energy[right - 1], self._energy[right]
        weight = (t - t0) / (t1 - t0) if t1 > t0 else 1.0
        keys = set(e0) | set(e1)
        return {k: e0.get(k, 0.0) + weight * (e1.get(k, 0.0) - e0.get(k, 0.0)) for k in keys}

    def over(self, intervals: Sequence[tuple[float, float]]) -> IntervalEnergy:
        """Energy during `intervals` ((start, end) pairs of time.monotonic(); end >= start).
        Raises ValueError for an interval that ends before it starts."""
        joules: dict[EnergyKey, float] = {}
        seconds = covered = unmeasured = 0.0
        for start, end in intervals:
            if end < start:
                raise ValueError(f"interval ends before it starts: ({start}, {end})")
            seconds += end - start
            if self._times:
                covered += max(0.0, min(end, self._times[-1]) - max(start, self._times[0]))
            unmeasured += _overlap(self._gaps, start, end)
            before, after = self.at(start), self.at(end)
            for key in set(before) | set(after):
                used = max(0.0, after.get(key, 0.0) - before.get(key, 0.0))
                joules[key] = joules.get(key, 0.0) + used
        if not self._times:
            method = "none"
        elif covered + 1e-9 < seconds:
            method = "clamped"
        else:
            method = "interpolated"
        components = by_component(joules)
        return IntervalEnergy(joules=joules, components=components, system=breakdown(components),
                              method=method, seconds=seconds, covered_seconds=covered,
                              unmeasured_seconds=unmeasured)


def _overlap(gaps: Sequence[tuple[str, float, float]], start: float, end: float) -> float:
    """Seconds of [start, end] inside any gap (overlapping gaps of several sources counted once)."""
    spans = sorted((max(start, a), min(end, b)) for _s, a, b in gaps if b > start and a < end)
    total, reach = 0.0, start
    for a, b in spans:
        a = max(a, reach)
        if b > a:
            total += b - a
            reach = b
    return total
