"""Step timing that respects asynchronous devices.

Device work is queued, not done, when a torch call returns. A clock therefore either
synchronises the device at every step boundary (`SyncClock`: CPU, MPS, Core ML) or records
device events and synchronises only when it drains them (`EventClock`: CUDA), which keeps
the launch queue full so that timing does not slow the workload down.
"""

from __future__ import annotations

import itertools
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
    """Synchronise the device, then read the host's monotonic clock.

    `synchronize` waits for the device's queued work (a no-op on the CPU); `now` is the
    clock in seconds (time.perf_counter). Marks are clock readings in seconds.
    """

    asynchronous = False

    def __init__(self, synchronize: Callable[[], None], now: Callable[[], float] = time.perf_counter):
        self._synchronize = synchronize
        self._now = now

    def sync(self) -> None:
        """Wait until all queued device work is done."""
        self._synchronize()

    def mark(self) -> float:
        """Synchronise, then the clock's reading in seconds."""
        self._synchronize()
        return self._now()

    def drain(self, marks: Sequence[Any]) -> list[float]:
        """Seconds between consecutive marks (len(marks) - 1 values; none for fewer than two)."""
        return [b - a for a, b in itertools.pairwise(marks)]


class EventClock:
    """CUDA events recorded on the current stream; elapsed times read when drained.

    `torch_module` is the imported torch (this module never imports it). Marks are
    torch.cuda.Event objects; their times come from the device (CUDA reports milliseconds,
    converted to seconds).
    """

    asynchronous = True

    def __init__(self, torch_module: Any) -> None:
        self._cuda = torch_module.cuda

    def sync(self) -> None:
        """torch.cuda.synchronize(): wait for all queued work on the current device."""
        self._cuda.synchronize()

    def mark(self) -> Any:
        """A timing event recorded on the current stream; does not wait for the device."""
        event = self._cuda.Event(enable_timing=True)
        event.record()
        return event

    def drain(self, marks: Sequence[Any]) -> list[float]:
        """Seconds between consecutive marks (len(marks) - 1 values), after waiting for the
        last event to complete."""
        if not marks:
            return []
        marks[-1].synchronize()
        return [a.elapsed_time(b) / 1000.0 for a, b in itertools.pairwise(marks)]


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100) of already sorted values; NaN when empty."""
    if not sorted_values:
        return math.nan
    pos = (len(sorted_values) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def latency_summary(durations: Sequence[float]) -> dict[str, float]:
    """p50, p90, p99 (linear-interpolated), max and mean of `durations`, in their unit
    (seconds where the callers use it); NaN for each when there are none."""
    values = sorted(durations)
    return {
        "p50": percentile(values, 50),
        "p90": percentile(values, 90),
        "p99": percentile(values, 99),
        "max": values[-1] if values else math.nan,
        "mean": sum(values) / len(values) if values else math.nan,
    }


class LatencySketch:
    """Step durations in log-spaced buckets 1% wide: percentiles within ~0.5% relative error in
    bounded memory, so a 20-minute phase at thousands of steps per second is not kept whole."""

    RATIO = 1.01

    def __init__(self) -> None:
        self.counts: dict[int, int] = {}
        self.count = 0
        self.max = -math.inf
        self.total = 0.0
        self._log_ratio = math.log(self.RATIO)

    def add(self, values: Sequence[float]) -> None:
        """Count durations in seconds; one of 0 or less falls in a bucket reported as 0."""
        for value in values:
            index = math.floor(math.log(value) / self._log_ratio) if value > 0 else -(10**6)
            self.counts[index] = self.counts.get(index, 0) + 1
            self.max = max(self.max, value)
            self.total += value
        self.count += len(values)

    def percentile(self, q: float) -> float:
        """The duration in seconds at percentile `q` (0..100): the geometric middle of the
        bucket holding rank q/100 * (count - 1), capped at the largest value seen; NaN when
        empty."""
        if not self.count:
            return math.nan
        rank = q / 100.0 * (self.count - 1)
        seen = 0
        for index in sorted(self.counts):
            seen += self.counts[index]
            if seen > rank:
                if index == -(10**6):
                    return 0.0
                # the bucket's geometric middle, never above the largest value seen
                return min(self.RATIO ** (index + 0.5), self.max)
        return self.max

    def summary(self) -> dict[str, float]:
        """p50, p90, p99, max and mean in seconds (as `latency_summary`); NaN when empty."""
        return {
            "p50": self.percentile(50),
            "p90": self.percentile(90),
            "p99": self.percentile(99),
            "max": self.max if self.count else math.nan,
            "mean": self.total / self.count if self.count else math.nan,
        }
