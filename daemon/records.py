"""Journal rows, typed and defined once: the journal's table schema is derived from them.

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
    slice; `thermal_seconds` is {level: s}.
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
                    thermal_seconds: dict[str, float], ended_at: float | None = None) -> SliceRow:
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
            energy_joules=energy_joules, thermal_seconds=thermal_seconds,
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
