"""Step timing that respects asynchronous devices.

Device work is queued, not done, when a torch call returns. A clock therefore either
synchronises the device at every step boundary (`SyncClock`: CPU, MPS, Core ML) or records
device events and synchronises only when it drains them (`EventClock`: CUDA), which keeps
the launch queue full so that timing does not slow the workload down.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol


class StepClock(Protocol):
    """Marks step boundaries and turns consecutive marks into durations in seconds."""

    def mark(self) -> Any:
        """A boundary between steps (may synchronise the device)."""

    def drain(self, marks: Sequence[Any]) -> list[float]:
        """Durations between consecutive marks; waits for the device to reach the last one."""

    def sync(self) -> None:
        """Wait until all queued device work is done."""


class SyncClock:
    """Synchronise the device, then read the host's monotonic clock."""

    def __init__(self, synchronize: Callable[[], None], now: Callable[[], float] = time.perf_counter):
        self._synchronize = synchronize
        self._now = now

    def sync(self) -> None:
        self._synchronize()

    def mark(self) -> float:
        self._synchronize()
        return self._now()

    def drain(self, marks: Sequence[Any]) -> list[float]:
        return [b - a for a, b in zip(marks, marks[1:], strict=False)]


class EventClock:
    """CUDA events recorded on the current stream; elapsed times read when drained."""

    def __init__(self, torch_module: Any) -> None:
        self._cuda = torch_module.cuda

    def sync(self) -> None:
        self._cuda.synchronize()

    def mark(self) -> Any:
        event = self._cuda.Event(enable_timing=True)
        event.record()
        return event

    def drain(self, marks: Sequence[Any]) -> list[float]:
        if not marks:
            return []
        marks[-1].synchronize()
        return [a.elapsed_time(b) / 1000.0 for a, b in zip(marks, marks[1:], strict=False)]


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100) of already sorted values; NaN when empty."""
    if not sorted_values:
        return math.nan
    pos = (len(sorted_values) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def latency_summary(durations: Sequence[float]) -> dict[str, float]:
    values = sorted(durations)
    return {
        "p50": percentile(values, 50),
        "p90": percentile(values, 90),
        "p99": percentile(values, 99),
        "max": values[-1] if values else math.nan,
        "mean": sum(values) / len(values) if values else math.nan,
    }
