"""The sampler: reads every source on its own thread and keeps the latest snapshot.

The Prometheus exporter calls `Sampler.snapshot()` at scrape time; that only returns the
cached, immutable `Snapshot` (daemon/snapshot.py), it never touches hardware. Energy is kept
zeus-style as cumulative counters per (source, component) since the sampler started, so the
energy of any window is the difference of two snapshots (`Sampler.energy_between`), and the
energy of any set of past intervals comes from the bounded history (`Sampler.energy_over`).

One source failing (an exception from `read()`, or `available()` saying no) never stops
the others: it is recorded in that source's `SourceHealth` and retried on the next tick.
Unavailable sources are probed again every `reprobe_s` seconds. Within a source, devices
and readings fail on their own (daemon/device_book.py).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from daemon.device_book import DeviceBook, Note
from daemon.energy import EnergyBreakdown, EnergyHistory, IntervalEnergy, breakdown, by_component
from daemon.levels import LEVELS
from daemon.snapshot import Snapshot, SourceHealth, TelemetryEvent
from daemon.sources.base import Reading, Source, SourceUnavailable
from daemon.throttle import ThrottleBook

__all__ = ["Sampler", "Snapshot", "SourceHealth", "TelemetryEvent", "default_sources"]
log = logging.getLogger(__name__)
MAX_EVENTS = 256  # telemetry events kept in the snapshot for the daemon to journal


@dataclass
class _State:
    """Mutable per-source bookkeeping, owned by the sampling thread."""

    source: Source
    available: bool | None = None
    reason: str = "not sampled yet"
    ok_reason: str = "ok"  # what available() said when it last said yes
    probed_at: float = -math.inf
    up: bool = False
    last_error: str | None = None
    errors_total: int = 0
    reads_total: int = 0
    read_duration: float = 0.0
    last_read_at: float | None = None
    reading: Reading | None = None  # last successful reading, for the gauges
    power: dict[str, float] = field(default_factory=dict)
    metered: set[str] = field(default_factory=set)  # components that ever reported energy

    def health(self) -> SourceHealth:
        """The immutable health record of this source now."""
        return SourceHealth(name=self.source.name, up=self.up, reason=self.reason,
                            last_error=self.last_error, errors_total=self.errors_total,
                            reads_total=self.reads_total,
                            read_duration_seconds=self.read_duration)


def _empty_snapshot(states: list[_State]) -> Snapshot:
    return Snapshot(time=0.0, monotonic=0.0, energy_joules={}, power_watts={},
                    temperatures_celsius={}, thermal_pressure=None, thermal_seconds_total={},
                    throttle_events_total={}, clock_hertz={}, memory_bytes={},
                    health={s.source.name: s.health() for s in states})


class Sampler:
    """Runs all sources at a fixed cadence on a daemon thread.

    Power (`Snapshot.power_watts`) is ΔE/Δt: the energy a source reported for its last
    interval divided by that interval, where the interval is the source's own measured window
    when it has one (powermetrics' `elapsed_ns`) and otherwise the time between two reads of
    that source. If a read brings no new energy (powermetrics had no new sample yet) the
    previous power stays. Instantaneous power readings (NVML's power usage) are used only for
    components that have never reported energy: a fallback, never mixed with ΔE/Δt, and marked
    `power_method` "instantaneous".

    Thermal seconds are sample-and-hold: the time between two ticks counts for the level
    seen at the first of them. The level is taken from the first source, in the order given,
    that reports one (default_sources orders them best first). Throttle state, events and
    seconds are kept by a `ThrottleBook` (daemon/throttle.py) the same way.

    `history_points` bounds the energy history `energy_over` reads (one point per tick).
    The sampler owns its sources: `stop()` closes them. Raises ValueError for an interval
    that is not positive or two sources with the same name.
    """

    def __init__(self, sources: list[Source], interval_s: float = 1.0,
                 clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time, reprobe_s: float = 60.0,
                 history_points: int = 7200) -> None:
        if not interval_s > 0:
            raise ValueError(f"sampler interval must be positive, got {interval_s}")
        names = [s.name for s in sources]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"duplicate source names: {', '.join(duplicates)}")
        self.interval_s = interval_s
        self.reprobe_s = reprobe_s
        self._clock = clock
        self._wall = wall
        self._states = [_State(source) for source in sources]
        self._energy: dict[tuple[str, str], float] = {}
        self._resets: dict[tuple[str, str], int] = {}
        self._system_energy: float | None = None
        self._plan: tuple[str, ...] = ()
        self._gap_seconds: dict[str, float] = {}
        self._throttles = ThrottleBook()
        self._devices = DeviceBook()
        self._events: deque[TelemetryEvent] = deque(maxlen=MAX_EVENTS)
        self._seq = 0
        self._history = EnergyHistory(history_points)
        self._history_lock = threading.Lock()
        self._thermal_seconds: dict[str, float] = {}
        self._level: str | None = None
        self._last_tick: float | None = None
        self._sample_lock = threading.Lock()
        self._publish_lock = threading.Lock()
        self._snapshot = _empty_snapshot(self._states)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.cpu_seconds = 0.0  # CPU time used by the sampler thread so far
        self.ticks = 0

    # -- public API --

    def snapshot(self) -> Snapshot:
        """The latest snapshot; never blocks on hardware."""
        with self._publish_lock:
            return self._snapshot

    def sample_once(self) -> Snapshot:
        """Read every source now, publish and return the new snapshot. Never raises for a
        failing source."""
        with self._sample_lock:
            now = self._clock()
            tick: dict[tuple[str, str], float] = {}
            for state in self._states:
                self._sample_source(state, now, tick)
            level, level_source = next(((s.reading.thermal_pressure, s.source.name) for s in self._states
                                        if s.up and s.reading is not None
                                        and s.reading.thermal_pressure is not None), (None, None))
            self._account_thermal(now, level)
            self._throttles.update(now, {s.source.name: (s.reading.throttle_active, s.reading.throttle_events)
                                         for s in self._states if s.up and s.reading is not None},
                                   level, level_source)
            plan = self._account_system_energy(now, tick)
            self._last_tick = now
            self.ticks += 1
            snapshot = self._build(now, level, plan)
            with self._history_lock:
                self._history.add(now, snapshot.energy_joules)
            with self._publish_lock:
                self._snapshot = snapshot
            return snapshot

    def start(self) -> None:
        """Take the first sample now, then keep sampling every `interval_s` on a thread."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self.sample_once()
        self._thread = threading.Thread(target=self._run, name="soakd-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread and close every source."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.interval_s + 10.0)
            self._thread = None
        for state in self._states:
            try:
                state.source.close()
            except Exception:  # closing is best effort; a stuck source must not block exit
                log.exception("closing source %s failed", state.source.name)

    @staticmethod
    def energy_between(start: Snapshot, end: Snapshot) -> dict[str, float]:
        """component -> joules used between two snapshots, summed over sources. Raises
        ValueError when `end` is older than `start`."""
        if end.monotonic < start.monotonic:
            raise ValueError("end snapshot is older than start snapshot")
        out: dict[str, float] = {}
        for (source, component), joules in end.energy_joules.items():
            used = joules - start.energy_joules.get((source, component), 0.0)
            out[component] = out.get(component, 0.0) + max(0.0, used)
        return out

    def energy_over(self, intervals: Sequence[tuple[float, float]]) -> IntervalEnergy:
        """Energy used during `intervals` ((start, end) pairs of time.monotonic()), by
        component, with the whole-system total (daemon/energy.breakdown) and the method.

        The cumulative counters are interpolated linearly between the sampler ticks around
        each interval edge. Accuracy at the 1 s default tick: exact while power is constant
        across the tick around an edge; otherwise each edge is off by at most the energy of
        one tick (P x 1 s), half of that on average for a power step at a random point of the
        tick, so over a 60 s slice at steady load the error is well under 1%, and it does not
        grow with the number of steps inside an interval. Sources with their own windows
        (powermetrics) add their window's lag (up to one powermetrics interval) at each edge.
        Energy older than the kept history (`history_points` ticks, 2 h at 1 s) is missing:
        `method` says "clamped" then. Raises ValueError for an interval that ends before it
        starts.
        """
        with self._history_lock:
            return self._history.over(intervals)

    # -- internals --

    def _run(self) -> None:
        next_tick = time.monotonic() + self.interval_s
        while not self._stop.wait(max(0.0, next_tick - time.monotonic())):
            try:
                self.sample_once()
            except Exception:  # sample_once guards each source; this is a last resort
                log.exception("sampler tick failed")
            self.cpu_seconds = time.thread_time()
            next_tick += self.interval_s
            behind = time.monotonic() - next_tick
            if behind > 0:  # skip missed ticks instead of bursting to catch up
                next_tick += math.ceil(behind / self.interval_s) * self.interval_s

    def _event(self, now: float, kind: str, source: str, device: str | None, detail: dict[str, Any]) -> None:
        self._seq += 1
        self._events.append(TelemetryEvent(self._seq, self._wall(), now, kind, source, device, detail))

    def _probe(self, state: _State, now: float) -> bool:
        due = state.available is None or (
            not state.available and now - state.probed_at >= self.reprobe_s)
        if due:
            state.probed_at = now
            try:
                state.available, state.reason = state.source.available()
                if state.available:
                    state.ok_reason = state.reason
            except Exception as exc:
                state.available, state.reason = False, f"unavailable: probe failed: {exc!r}"
        return bool(state.available)

    def _down(self, state: _State) -> None:
        state.up, state.reading = False, None
        state.power.clear()
        self._devices.source_down(state.source.name)

    def _sample_source(self, state: _State, now: float, tick: dict[tuple[str, str], float]) -> None:
        if not self._probe(state, now):
            self._down(state)
            return
        started = time.perf_counter()
        try:
            reading = state.source.read()
        except Exception as exc:
            state.read_duration = time.perf_counter() - started
            state.errors_total += 1
            state.last_error = str(exc) or type(exc).__name__
            if isinstance(exc, SourceUnavailable):
                state.available, state.probed_at = False, now  # probe again in reprobe_s
                state.reason = state.last_error
            else:
                state.reason = f"read failed: {state.last_error}"
            self._down(state)
            return
        state.read_duration = time.perf_counter() - started
        state.reads_total += 1
        state.up = True
        self._account(state, reading, now, tick)
        name = state.source.name
        for kind, device, detail in self._devices.update(name, reading):
            self._note(now, name, (kind, device, detail))
        down = self._devices.down_summary(name)
        state.reason = f"{state.ok_reason}; down: {down}" if down else state.ok_reason
        state.reading = reading

    def _note(self, now: float, source: str, note: Note) -> None:
        kind, device, detail = note
        self._event(now, kind, source, device, detail)

    def _account(self, state: _State, reading: Reading, now: float,
                 tick: dict[tuple[str, str], float]) -> None:
        name = state.source.name
        window = reading.energy_window_seconds
        if window is None and state.last_read_at is not None:
            window = now - state.last_read_at
        for component, joules in reading.energy_joules.items():
            if not math.isfinite(joules) or joules < 0:
                continue  # a counter must never go backwards
            key = (name, component)
            self._energy[key] = self._energy.get(key, 0.0) + joules
            tick[key] = tick.get(key, 0.0) + joules
            state.metered.add(component)
            if window is not None and window > 0:
                state.power[component] = joules / window
        for component, watts in reading.power_watts.items():
            if component not in state.metered and math.isfinite(watts):
                state.power[component] = watts
        for component, count in reading.counter_resets.items():
            key = (name, component)
            self._resets[key] = self._resets.get(key, 0) + count
            self._event(now, "energy_reset", name, component, {"component": component})
        for text in reading.notes:
            self._event(now, "source_note", name, None, {"note": text})
        for start, end in reading.gaps:
            self._gap_seconds[name] = self._gap_seconds.get(name, 0.0) + (end - start)
            self._event(now, "gap", name, None, {"seconds": end - start, "start": start, "end": end})
            with self._history_lock:
                self._history.add_gap(name, start, end)
        state.last_read_at = now

    def _account_thermal(self, now: float, level: str | None) -> None:
        if self._last_tick is not None and self._level is not None:
            elapsed = max(0.0, now - self._last_tick)
            self._thermal_seconds[self._level] = self._thermal_seconds.get(self._level, 0.0) + elapsed
        if level is not None and not self._thermal_seconds:
            self._thermal_seconds = dict.fromkeys(LEVELS, 0.0)
        if level is not None:
            self._thermal_seconds.setdefault(level, 0.0)
        self._level = level

    def _account_system_energy(self, now: float, tick: dict[tuple[str, str], float]) -> EnergyBreakdown:
        """Add this tick's whole-system energy; note when the counted components change."""
        if tick:
            joules = breakdown(by_component(tick)).joules or 0.0
            self._system_energy = (self._system_energy or 0.0) + joules
        plan = breakdown(by_component(self._energy))
        if plan.joules is not None and plan.counted != self._plan:
            self._plan = plan.counted
            self._event(now, "energy_plan", "sampler", None,
                        {"counted": list(plan.counted), "description": plan.describe()})
        return plan

    def _build(self, now: float, level: str | None, plan: EnergyBreakdown) -> Snapshot:
        power: dict[tuple[str, str], float] = {}
        method: dict[tuple[str, str], str] = {}
        temperatures: dict[tuple[str, str], float] = {}
        clocks: dict[tuple[str, str], float] = {}
        memory: dict[str, int] = {}
        for state in self._states:
            name = state.source.name
            power.update({(name, c): w for c, w in state.power.items()})
            method.update({(name, c): "counter" if c in state.metered else "instantaneous"
                           for c in state.power})
            if not state.up or state.reading is None:
                continue
            reading = state.reading
            temperatures.update({(name, s): t for s, t in reading.temperatures_celsius.items()})
            clocks.update({(name, d): hz for d, hz in reading.clock_hertz.items()})
            for kind, value in reading.memory_bytes.items():
                memory.setdefault(kind, value)
        throttles = self._throttles
        return Snapshot(
            time=self._wall(),
            monotonic=now,
            energy_joules=dict(self._energy),
            power_watts=power,
            temperatures_celsius=temperatures,
            thermal_pressure=level,
            thermal_seconds_total=dict(self._thermal_seconds),
            throttle_events_total=dict(throttles.events_total),
            clock_hertz=clocks,
            memory_bytes=memory,
            health={s.source.name: s.health() for s in self._states},
            power_method=method,
            energy_resets_total=dict(self._resets),
            system_energy_joules=self._system_energy,
            energy_breakdown=plan if plan.joules is not None else None,
            throttle_active=throttles.active,
            throttle_known=throttles.known,
            throttled_seconds_total=dict(throttles.seconds_total),
            devices=self._devices.devices(),
            reading_unavailable=self._devices.unavailable(),
            reading_errors_total=dict(self._devices.errors_total),
            hardware_errors_total=self._devices.hardware(),
            hardware_conditions=self._devices.conditions(),
            power_limit_watts=self._devices.power_limits(),
            gap_seconds_total=dict(self._gap_seconds),
            events=tuple(self._events),
        )


def default_sources(config: dict[str, Any] | None = None) -> list[Source]:
    """The platform's sources from the source registry (daemon/sources/registry.py), in
    sampling order (best thermal source first).

    `config` is the parsed `[sources]` table: each source's on/off switch (`nvml = false`) and
    the options the sources declare (`rapl_root`, `thermal_root`, `replay_file`,
    `powermetrics_interval_ms`, ...). By default each source is on where it belongs
    (powermetrics and the macOS thermal sources on macOS, NVML off macOS, RAPL and sysfs
    thermal on Linux, memory everywhere, replay only with `replay_file`). Unavailable sources
    are still returned; the sampler reports them as down with their reason.
    """
    from daemon.sources.registry import build_sources

    return build_sources(config or {})
