"""The CPU baseline behind "speedup vs CPU", kept out of the hot hour.

A CPU run between two accelerator phases leaves the accelerator idle and cooling for its whole
length (65-80 s per phase on an H200, measured 2026-11-30), which changes the very thing a soak
measures. So the baseline runs before a rotation's first phase, while the device is cold, and
only when needed:

- `cached` (default): a baseline measured within `max_age_s` (a day) on this host, torch
  version and shapes is reused; only missing or stale phases are measured, before phase 1.
- `before`: measured before every rotation's first phase.
- `off`: no baseline, no speedup.

A host whose only backend is the CPU has no separate baseline run at all. Records live in
the cache directory (`$SOAKD_CACHE_DIR/baseline/`), one JSON file per key.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from workloads.cache import atomic_write, cache_dir
from workloads.host import chip, host_info
from workloads.phases import PhaseSpec
from workloads.protocol import spec_shapes

POLICIES: tuple[str, ...] = ("cached", "before", "off")
DEFAULT_MAX_AGE_S = 24 * 3600.0


@dataclass(frozen=True)
class BaselineRecord:
    """One phase's CPU fp32 throughput on this host, and when and how it was measured."""

    key: str
    phase: str
    shapes: str
    steps: int
    seconds: float
    flop_per_step: int
    measured_at: float  # unix time
    host: str
    torch: str
    cpu_count: int

    @property
    def steps_per_second(self) -> float:
        """Measured steps per measured second (0 with none)."""
        return self.steps / self.seconds if self.seconds > 0 else 0.0


def baseline_key(spec: PhaseSpec) -> str:
    """What makes two baselines comparable: host, CPU model, cores, torch version, shapes."""
    host = host_info()
    blob = json.dumps({"host": host["hostname"], "chip": chip(), "cpus": os.cpu_count(),
                       "torch": host["torch"], "phase": spec.name, "shapes": spec_shapes(spec),
                       "precision": "fp32"}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def _path(key: str, directory: Path | None) -> Path:
    return (directory or cache_dir() / "baseline") / f"{key}.json"


def load_baseline(spec: PhaseSpec, max_age_s: float = DEFAULT_MAX_AGE_S,
                  directory: Path | None = None, now: float | None = None) -> BaselineRecord | None:
    """The stored baseline for `spec` if one exists and is younger than `max_age_s`."""
    key = baseline_key(spec)
    try:
        data = json.loads(_path(key, directory).read_text(encoding="utf-8"))
        record = BaselineRecord(**data)
    except (OSError, ValueError, TypeError):
        return None
    age = (time.time() if now is None else now) - record.measured_at
    if record.key != key or record.steps <= 0 or not 0 <= age <= max_age_s:
        return None
    return record


def store_baseline(spec: PhaseSpec, steps: int, seconds: float, directory: Path | None = None,
                   measured_at: float | None = None) -> BaselineRecord:
    """Record a measured baseline (atomically) and return it."""
    host = host_info()
    record = BaselineRecord(
        key=baseline_key(spec), phase=spec.name, shapes=spec_shapes(spec), steps=steps,
        seconds=seconds, flop_per_step=spec.flop_per_step(),
        measured_at=time.time() if measured_at is None else measured_at,
        host=host["hostname"], torch=host["torch"], cpu_count=os.cpu_count() or 0)
    text = json.dumps(asdict(record), sort_keys=True)

    def write(tmp: Path) -> None:
        tmp.write_text(text, encoding="utf-8")

    atomic_write(_path(record.key, directory), write)
    return record
