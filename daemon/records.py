"""Journal rows, typed and defined once: the journal's table schema is derived from them
(slices, verdicts, conditions) or, for the version-1 tables (events, telemetry), checked
against them by a test; the INSERT of each of these rows is built from its fields.

A slice row holds what the worker measured (workloads.runner.SliceResult, built from the typed
worker protocol) plus what only the daemon knows (rotation, energy, thermal time). JSON
columns hold dicts; everything else is a plain SQL column of the field's type.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, fields
from typing import Any

from workloads.runner import SliceResult

# Python type (as written in annotations) -> SQLite column type.
_SQL_TYPES = {"str": "TEXT", "int": "INTEGER", "float": "REAL", "bool": "INTEGER"}


@dataclass(frozen=True)
class SliceRow:
    """One slice in the journal. Units: seconds, FLOP, joules, bytes.

    `device` is the device's index within its backend ("0"); `device_name` says it in words.
    `run_key` and `run` are the slice's run configuration (workloads.protocol.RunConfig): two
    slices are comparable only when their run_key is equal. `gap_seconds` is the slice's turn
    with no measured step running; `lead_gap_seconds`/`tail_gap_seconds` are its parts before
    the first and after the last measured segment. `energy_joules` is {component: J} over the
    slice's measured time (its segments, not its warm-up or hand-over), `system_energy_joules`
    the whole-system figure of it (daemon/energy.py) and `energy_note` how that was made;
    `thermal_seconds` is {level: s} over the slice.
    """

    phase: str
    requested_backend: str
    backend: str
    precision: str
    started_at: float
    ended_at: float
    steps: int
    seconds: float
    flop: float
    baseline: bool = False
    device: str = "0"
    device_name: str | None = None
    run_key: str | None = None
    run: dict[str, Any] = field(default_factory=dict, metadata={"json": True})
    latency_p50: float | None = None
    latency_p99: float | None = None
    latency_max: float | None = None
    energy_joules: dict[str, float] = field(default_factory=dict, metadata={"json": True})
    system_energy_joules: float | None = None
    energy_note: str | None = None
    thermal_seconds: dict[str, float] = field(default_factory=dict, metadata={"json": True})
    peak_rss_bytes: int | None = None
    avg_rss_bytes: int | None = None
    peak_device_bytes: int | None = None
    checks: int = 0
    mismatches: int = 0
    max_relative_error: float | None = None
    failure_reason: str | None = None
    failure_detail: str | None = None
    fallback: dict[str, Any] | None = field(default=None, metadata={"json": True})
    prepare_seconds: float | None = None
    warmup_seconds: float | None = None
    gap_seconds: float | None = None
    lead_gap_seconds: float | None = None
    tail_gap_seconds: float | None = None
    worker_pid: int | None = None
    info: dict[str, Any] = field(default_factory=dict, metadata={"json": True})

    @classmethod
    def from_result(cls, result: SliceResult, *, requested_backend: str, baseline: bool,
                    device: str, started_at: float, energy_joules: dict[str, float],
                    thermal_seconds: dict[str, float], ended_at: float | None = None,
                    system_energy_joules: float | None = None, energy_note: str | None = None) -> SliceRow:
        """The row for one finished slice (`started_at`/`ended_at` are unix times)."""
        latency = result.latency_summary()
        failure = result.failure
        fallback = ({"from": requested_backend, "to": result.backend}
                    if requested_backend != result.backend else None)
        return cls(
            phase=result.spec.name, requested_backend=requested_backend, backend=result.backend,
            precision=result.precision, baseline=baseline, device=device,
            device_name=result.device_name or None,
            run_key=result.run.key if result.run is not None else None,
            run=result.run.to_dict() if result.run is not None else {},
            started_at=started_at, ended_at=time.time() if ended_at is None else ended_at,
            steps=result.steps, seconds=result.seconds, flop=float(result.flop),
            latency_p50=finite(latency["p50"]), latency_p99=finite(latency["p99"]),
            latency_max=finite(latency["max"]),
            energy_joules=energy_joules, system_energy_joules=system_energy_joules,
            energy_note=energy_note, thermal_seconds=thermal_seconds,
            peak_rss_bytes=result.peak_rss_bytes or None,
            avg_rss_bytes=int(result.rss_weighted / result.seconds) if result.seconds > 0 else None,
            peak_device_bytes=result.peak_device_bytes or None,
            checks=result.checks, mismatches=result.mismatches,
            max_relative_error=finite(result.max_relative_error),
            failure_reason=failure.reason if failure else None,
            failure_detail=failure.detail if failure else None,
            fallback=fallback, prepare_seconds=finite(result.prepare_seconds),
            warmup_seconds=finite(result.warmup_seconds),
            gap_seconds=result.gap_seconds, lead_gap_seconds=result.lead_gap_seconds,
            tail_gap_seconds=result.tail_gap_seconds, worker_pid=result.worker_pid,
            info=result.info,
        )


@dataclass(frozen=True)
class VerdictRow:
    """One series' verdicts for one phase of one rotation (daemon/verdicts.py; table `verdicts`).

    A series is phase x backend x precision x device. `loops` are its slices' measured
    throughputs (FLOP/s) in order and `loop_readings` the telemetry over each loop
    (LoopTelemetry.to_dict); `stability` is worst loop / best loop (None with fewer than two
    loops) and `passed` whether it reached `pass_mark`. `warm_flop_per_second` is the median of
    the first two loops; `slowdowns` counts loops at least `slowdown_threshold` below it, of
    which `unexplained_slowdowns` had no telemetry change to explain them (each is also a
    `slowdown` event). `sustained_flop_per_second` is the second half of the loops' FLOP over
    their measured seconds; `history_*` the band it was judged against: the 2.5th percentile,
    median and 97.5th percentile of the last `history_rotations` earlier rotations of the same
    `run_key` and `profile` (None below the minimum count), and `regression` whether it fell
    below. `device_relative`/`device_outlier` are the host-median verdict on a host with several
    devices (None on one). Units: FLOP/s, seconds (unix time for `ended_at`).
    """

    phase: str
    backend: str
    precision: str
    device: str
    profile: str
    ended_at: float
    pass_mark: float
    slowdown_threshold: float
    run_key: str | None = None
    loops: list[float] = field(default_factory=list, metadata={"json": True})
    loop_readings: list[dict[str, Any]] = field(default_factory=list, metadata={"json": True})
    stability: float | None = None
    passed: bool | None = None
    warm_flop_per_second: float | None = None
    slowdowns: int = 0
    unexplained_slowdowns: int = 0
    sustained_flop_per_second: float | None = None
    history_rotations: int = 0
    history_low: float | None = None
    history_median: float | None = None
    history_high: float | None = None
    regression: bool | None = None
    device_relative: float | None = None
    device_outlier: bool | None = None


@dataclass(frozen=True)
class ConditionsRow:
    """The conditions a rotation started under (daemon/conditions.py; table `conditions`).

    `on_battery` (None: no battery, or unknown) and `battery_percent` from psutil;
    `low_power_mode` macOS's Low Power Mode from `pmset -g` (None elsewhere); `thermal_level`
    the thermal pressure level (daemon/levels.py) and `temperatures` {"source/sensor": °C} when
    the rotation's first phase was about to start; `other_cpu_ratio` the share (0-1) of all CPU
    time that other processes used over a short window just before. `cooldown` is what the
    optional cool-down did: "off", "cool" (within the margin of idle), "timeout" (gave up after
    the maximum wait), "stopped" (the daemon was stopping) or "no_reference" (no idle
    temperature to wait for); `cooldown_seconds` the wait, which no phase's time includes.
    `idle_temperatures` is the reference (measured when the daemon started idle, or
    configured), `margin_celsius` the margin, and `started_hot` whether some sensor was still
    above idle + margin at the start (None without a reference); `hot_sensors` names them.
    """

    recorded_at: float
    cooldown: str = "off"
    cooldown_seconds: float = 0.0
    on_battery: bool | None = None
    battery_percent: float | None = None
    low_power_mode: bool | None = None
    thermal_level: str | None = None
    temperatures: dict[str, float] = field(default_factory=dict, metadata={"json": True})
    idle_temperatures: dict[str, float] = field(default_factory=dict, metadata={"json": True})
    margin_celsius: float | None = None
    started_hot: bool | None = None
    hot_sensors: list[str] = field(default_factory=list, metadata={"json": True})
    other_cpu_ratio: float | None = None


@dataclass(frozen=True)
class EventRow:
    """One event in the journal (table `events`; its `id` is SQLite's).

    `time` unix seconds; `rotation_id` the rotation running then (None between rotations);
    `kind` what happened (throttle, source_up, source_down, fallback, device_outlier, ...);
    `source` the telemetry source that reported it, if one did; `detail` a JSON object or text.
    """

    time: float
    rotation_id: int | None
    kind: str
    source: str | None = None
    detail: str | None = None


@dataclass(frozen=True)
class TelemetryRow:
    """One telemetry row in the journal (table `telemetry`), written every 10 s of a rotation.

    `time` unix seconds; `power_watts` {component: W} summed over sources; `thermal_pressure`
    the level (daemon/levels.py) or None; `temperatures` {"source/sensor": °C}.
    """

    time: float
    rotation_id: int | None
    power_watts: dict[str, float] = field(default_factory=dict, metadata={"json": True})
    thermal_pressure: str | None = None
    temperatures: dict[str, float] = field(default_factory=dict, metadata={"json": True})


def finite(value: float | None) -> float | None:
    """`value`, or None when it is None, NaN or infinite."""
    return value if value is not None and math.isfinite(value) else None


def json_columns(row_type: type) -> tuple[str, ...]:
    """The fields of a row type stored as JSON text."""
    return tuple(f.name for f in fields(row_type) if f.metadata.get("json"))


def sql_columns(row_type: type) -> list[tuple[str, str]]:
    """(column, SQLite type) for each field of a row type, in field order."""
    out = []
    for f in fields(row_type):
        annotation = str(f.type).replace(" ", "")
        sql = "TEXT" if f.metadata.get("json") else _SQL_TYPES.get(annotation.split("|")[0], "TEXT")
        out.append((f.name, sql if "|None" in annotation else f"{sql} NOT NULL"))
    return out
