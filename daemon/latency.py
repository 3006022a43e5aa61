"""Step-latency quantiles per workload series, over the last minute of its measured time.

Why not the histogram: `histogram_quantile()` interpolates linearly inside a bucket, so with
every step at exactly 0.3 s in the bucket 0.25-0.5 it read p50 0.375 s and p99 0.4975 s (+25 %,
+66 %). Buckets fine enough for 10 % anywhere from 20 µs to 600 s would be ~200 per series
(ratio ≤ 1.1 over 7.5 decades). Instead the daemon keeps each series' step durations in
`workloads.timing.LatencySketch`'s 1 % log buckets, one sketch per `CHUNK_SECONDS` of the
series' measured time, and exports the quantiles of the last `WINDOW_SECONDS` as the summary
`soakd_step_latency_seconds` (quantile 0.5, 0.9, 0.99 and 1, the max): four series per workload
series. The histogram `soakd_step_duration_seconds` stays for counting (its `_sum`, `_count` and
buckets); quantiles come from here.

The window is measured time (the series' own steps, device-synchronised segment time), not wall
time, so backends that alternate in slices each get their own last minute. A quantile is
interpolated between order statistics as `workloads.timing.percentile` does (numpy's default),
each order statistic read as its 1 % bucket's geometric middle kept inside the smallest and
largest duration seen: within ~0.5 % of the exact value, exact when every step takes the same
time.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from prometheus_client.core import SummaryMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

from daemon.metric_catalog import BY_NAME
from workloads.timing import LatencySketch

METRIC = "soakd_step_latency_seconds"
WINDOW_SECONDS = 60.0  # measured seconds the quantiles cover (plus up to one chunk)
CHUNK_SECONDS = 5.0  # measured seconds per sketch: the window moves in steps of this
QUANTILES = (0.5, 0.9, 0.99, 1.0)

Key = tuple[str, ...]


@dataclass
class _Chunk:
    """Durations of steps that ran from `start` to `end` (the series' measured seconds)."""

    start: float
    end: float
    sketch: LatencySketch = field(default_factory=LatencySketch)
    low: float = math.inf

    def add(self, durations: Sequence[float]) -> None:
        self.sketch.add(durations)
        self.low = min(self.low, *durations)


class LatencyWindow:
    """Step durations of one series over its last `window` seconds of measured time.

    The window holds whole chunks of `chunk` seconds, so it covers between `window` and
    `window + chunk` seconds, and always at least the last segment's steps (a 70 s step is
    never dropped for being longer than the window).
    """

    def __init__(self, window: float = WINDOW_SECONDS, chunk: float = CHUNK_SECONDS) -> None:
        self.window = window
        self.chunk = chunk
        self.measured = 0.0  # the series' measured seconds so far
        self._chunks: deque[_Chunk] = deque()

    def add(self, durations: Sequence[float], seconds: float) -> None:
        """One segment's steps: their `durations` (s; may be a sample of them) and the segment's
        measured `seconds`."""
        if durations:
            last = self._chunks[-1] if self._chunks else None
            if last is None or self.measured - last.start >= self.chunk:
                last = _Chunk(self.measured, self.measured)
                self._chunks.append(last)
            last.add(durations)
            self.measured += max(0.0, seconds)
            last.end = self.measured
        else:
            self.measured += max(0.0, seconds)
        while len(self._chunks) > 1 and self._chunks[0].end <= self.measured - self.window:
            self._chunks.popleft()

    @property
    def count(self) -> int:
        """Durations in the window."""
        return sum(chunk.sketch.count for chunk in self._chunks)

    def quantiles(self, qs: Iterable[float] = QUANTILES) -> dict[float, float]:
        """{q: seconds} for each q in 0..1 over the window; empty when it holds no step."""
        counts: dict[int, int] = {}
        for chunk in self._chunks:
            for index, n in chunk.sketch.counts.items():
                counts[index] = counts.get(index, 0) + n
        total = sum(counts.values())
        if not total:
            return {}
        low = min(chunk.low for chunk in self._chunks)
        high = max(chunk.sketch.max for chunk in self._chunks)
        ordered = sorted(counts.items())

        def order_statistic(rank: int) -> float:
            """The rank-th smallest duration (0-based), as its bucket's middle within [low, high]."""
            seen = 0
            for index, n in ordered:
                seen += n
                if seen > rank:
                    return min(max(LatencySketch.RATIO ** (index + 0.5), low), high)
            return high

        out: dict[float, float] = {}
        for q in qs:
            position = q * (total - 1)
            below = math.floor(position)
            value = order_statistic(below)
            if position > below:
                value += (order_statistic(below + 1) - value) * (position - below)
            out[q] = value
        return out


class StepLatency(Collector):
    """The summary `soakd_step_latency_seconds`, one window per workload series.

    A series' quantiles are exported only while it is shown, which WorkloadMetrics does while
    one of its slices runs (`show`/`hide`), so a panel has a gap, not a stale value, while
    another backend's slice runs or no work does. The summary has no `_sum`/`_count`: those are
    the histogram `soakd_step_duration_seconds`'s.
    """

    def __init__(self, registry: CollectorRegistry | None = None, window: float = WINDOW_SECONDS,
                 chunk: float = CHUNK_SECONDS) -> None:
        metric = BY_NAME[METRIC]
        self._help = metric.help
        self._labels = metric.labels
        self._window, self._chunk = window, chunk
        self._windows: dict[Key, LatencyWindow] = {}
        self._shown: set[Key] = set()
        self._lock = threading.Lock()
        if registry is not None:
            registry.register(self)

    def observe(self, key: Key, durations: Sequence[float], seconds: float) -> None:
        """One segment of the series `key` (label values in catalogue order): step `durations`
        and measured `seconds`. Shows the series."""
        with self._lock:
            window = self._windows.get(key)
            if window is None:
                window = self._windows[key] = LatencyWindow(self._window, self._chunk)
            window.add(durations, seconds)
            self._shown.add(key)

    def show(self, key: Key) -> None:
        """Export the series' quantiles again (a slice of it starts), if it has any."""
        with self._lock:
            if key in self._windows:
                self._shown.add(key)

    def hide(self, key: Key) -> None:
        """Stop exporting the series' quantiles (its slice ended); its window is kept."""
        with self._lock:
            self._shown.discard(key)

    def forget(self, key: Key) -> None:
        """Drop the series' window (its phase ended, or it runs another configuration now)."""
        with self._lock:
            self._windows.pop(key, None)
            self._shown.discard(key)

    def clear(self) -> None:
        """Drop every window (a new phase starts)."""
        with self._lock:
            self._windows.clear()
            self._shown.clear()

    def quantiles(self, key: Key) -> dict[float, float]:
        """The series' exported quantiles now ({} when hidden or empty)."""
        with self._lock:
            return self._windows[key].quantiles() if key in self._shown else {}

    def collect(self) -> Iterator[SummaryMetricFamily]:
        """The summary family at scrape time."""
        family = SummaryMetricFamily(METRIC, self._help, labels=self._labels)
        with self._lock:
            shown = [(key, self._windows[key].quantiles()) for key in sorted(self._shown)]
        for key, values in shown:
            labels = dict(zip(self._labels, key, strict=True))
            for q, value in values.items():
                family.samples.append(Sample(METRIC, {**labels, "quantile": floatToGoString(q)}, value))
        yield family
