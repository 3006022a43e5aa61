"""The sampler: reads every source on its own thread and keeps the latest snapshot.

The Prometheus exporter calls `Sampler.snapshot()` at scrape time; that only returns the
cached, immutable `Snapshot`, it never touches hardware. Energy is kept zeus-style as
cumulative counters per (source, component) since the sampler started, so the energy of any
window is the difference of two snapshots (`Sampler.energy_between`).

One source failing (an exception from `read()`, or `available()` saying no) never stops
the others: it is recorded in that source's `SourceHealth` and retried on the next tick.
Unavailable sources are probed again every `reprobe_s` seconds.
"""

from __future__ import annotations

import logging
import math
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from daemon.levels import LEVELS
from daemon.sources.base import Reading, Source, SourceUnavailable

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SourceHealth:
    """One source's state for the exporter's `soakd_source_*` metrics."""

    name: str
    up: bool  # available and its last read succeeded
    reason: str  # "ok..." or why it is down
    last_error: str | None  # most recent read error, kept after recovery
    errors_total: int
    reads_total: int  # successful reads
    read_duration_seconds: float  # duration of the last read attempt


@dataclass(frozen=True)
class Snapshot:
    """Everything the sampler knows at one tick. Never mutated after it is published."""

    time: float  # unix time of the sample
    monotonic: float
    # (source, component) -> cumulative J since sampler start; monotonic, wrap handled
    energy_joules: dict[tuple[str, str], float]
    # (source, component) -> W over the source's last energy interval (ΔE/Δt; see Sampler)
    power_watts: dict[tuple[str, str], float]
    temperatures_celsius: dict[tuple[str, str], float]  # (source, sensor)
    thermal_pressure: str | None  # canonical level (daemon/levels.py), best source
    thermal_seconds_total: dict[str, float]  # level -> seconds at that level since start
    throttle_events_total: dict[tuple[str, str], int]  # (source, reason)
    clock_hertz: dict[tuple[str, str], float]  # (source, domain)
    memory_bytes: dict[str, int]  # kind -> bytes
    health: dict[str, SourceHealth]


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
    components that have never reported energy: a fallback, never mixed with ΔE/Δt.

    Thermal seconds are sample-and-hold: the time between two ticks counts for the level
    seen at the first of them. The level is taken from the first source, in the order given,
    that reports one (default_sources orders them best first).

    The sampler owns its sources: `stop()` closes them.
    """

    def __init__(self, sources: list[Source], interval_s: float = 1.0,
                 clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time, reprobe_s: float = 60.0) -> None:
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
        self._throttle: dict[tuple[str, str], int] = {}
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
            for state in self._states:
                self._sample_source(state, now)
            level = next((s.reading.thermal_pressure for s in self._states
                          if s.up and s.reading is not None
                          and s.reading.thermal_pressure is not None), None)
            if self._last_tick is not None and self._level is not None:
                elapsed = max(0.0, now - self._last_tick)
                self._thermal_seconds[self._level] = (
                    self._thermal_seconds.get(self._level, 0.0) + elapsed)
            if level is not None and not self._thermal_seconds:
                self._thermal_seconds = dict.fromkeys(LEVELS, 0.0)
            if level is not None:
                self._thermal_seconds.setdefault(level, 0.0)
            self._level = level
            self._last_tick = now
            self.ticks += 1
            snapshot = self._build(now, level)
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
        """component -> joules used between two snapshots, summed over sources."""
        if end.monotonic < start.monotonic:
            raise ValueError("end snapshot is older than start snapshot")
        out: dict[str, float] = {}
        for (source, component), joules in end.energy_joules.items():
            used = joules - start.energy_joules.get((source, component), 0.0)
            out[component] = out.get(component, 0.0) + max(0.0, used)
        return out

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

    def _sample_source(self, state: _State, now: float) -> None:
        if not self._probe(state, now):
            state.up, state.reading = False, None
            state.power.clear()
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
            state.up, state.reading = False, None
            state.power.clear()
            return
        state.read_duration = time.perf_counter() - started
        state.reads_total += 1
        state.up = True
        state.reason = state.ok_reason
        self._account(state, reading, now)
        state.reading = reading

    def _account(self, state: _State, reading: Reading, now: float) -> None:
        name = state.source.name
        window = reading.energy_window_seconds
        if window is None and state.last_read_at is not None:
            window = now - state.last_read_at
        for component, joules in reading.energy_joules.items():
            if not math.isfinite(joules) or joules < 0:
                continue  # a counter must never go backwards
            key = (name, component)
            self._energy[key] = self._energy.get(key, 0.0) + joules
            state.metered.add(component)
            if window is not None and window > 0:
                state.power[component] = joules / window
        for component, watts in reading.power_watts.items():
            if component not in state.metered and math.isfinite(watts):
                state.power[component] = watts
        for reason, count in reading.throttle_events.items():
            key = (name, reason)
            self._throttle[key] = self._throttle.get(key, 0) + max(0, count)
        state.last_read_at = now

    def _build(self, now: float, level: str | None) -> Snapshot:
        power: dict[tuple[str, str], float] = {}
        temperatures: dict[tuple[str, str], float] = {}
        clocks: dict[tuple[str, str], float] = {}
        memory: dict[str, int] = {}
        for state in self._states:
            name = state.source.name
            power.update({(name, c): w for c, w in state.power.items()})
            if not state.up or state.reading is None:
                continue
            reading = state.reading
            temperatures.update({(name, s): t for s, t in reading.temperatures_celsius.items()})
            clocks.update({(name, d): hz for d, hz in reading.clock_hertz.items()})
            for kind, value in reading.memory_bytes.items():
                memory.setdefault(kind, value)
        return Snapshot(
            time=self._wall(),
            monotonic=now,
            energy_joules=dict(self._energy),
            power_watts=power,
            temperatures_celsius=temperatures,
            thermal_pressure=level,
            thermal_seconds_total=dict(self._thermal_seconds),
            throttle_events_total=dict(self._throttle),
            clock_hertz=clocks,
            memory_bytes=memory,
            health={s.source.name: s.health() for s in self._states},
        )


def default_sources(config: dict[str, Any] | None = None) -> list[Source]:
    """The platform's sources, best thermal source first.

    Config keys (all optional): "powermetrics", "nvml", "rapl" (bool: force on / off; by
    default each is on where it belongs: powermetrics on macOS, NVML off macOS, RAPL on
    Linux), "powermetrics_interval_ms" (int, default 1000), "rapl_root", "thermal_root"
    (sysfs paths), "replay_file" (a recorded powermetrics file replayed as source "replay",
    for demos and CI). Unavailable sources are still returned; the sampler reports them as
    down with their reason. A source switched off in config is left out.
    """
    from daemon.sources.memory import MemorySource
    from daemon.sources.nvml import NvmlSource
    from daemon.sources.powermetrics import PowermetricsSource
    from daemon.sources.rapl import DEFAULT_ROOT as RAPL_ROOT
    from daemon.sources.rapl import RaplSource
    from daemon.sources.replay import ReplaySource
    from daemon.sources.sysfs_thermal import DEFAULT_ROOT as THERMAL_ROOT
    from daemon.sources.sysfs_thermal import SysfsThermalSource
    from daemon.sources.thermal_macos import (
        NotifyThermalSource,
        PmsetThermalSource,
        ThermalStateSource,
    )

    cfg = config or {}
    mac, linux = sys.platform == "darwin", sys.platform.startswith("linux")

    def wanted(key: str, default: bool) -> bool:
        value = cfg.get(key)
        return default if value is None else bool(value)

    sources: list[Source] = []
    if cfg.get("replay_file"):
        sources.append(ReplaySource(str(cfg["replay_file"])))
    if wanted("powermetrics", mac):
        sources.append(PowermetricsSource(interval_ms=int(cfg.get("powermetrics_interval_ms",
                                                                  1000))))
    if mac:
        sources += [NotifyThermalSource(), ThermalStateSource(), PmsetThermalSource()]
    if wanted("nvml", not mac):
        sources.append(NvmlSource())
    if wanted("rapl", linux):
        sources.append(RaplSource(cfg.get("rapl_root") or RAPL_ROOT))
    if linux or cfg.get("thermal_root"):
        sources.append(SysfsThermalSource(cfg.get("thermal_root") or THERMAL_ROOT))
    sources.append(MemorySource())
    return sources
