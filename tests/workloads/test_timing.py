"""Step timing on asynchronous devices, driven through the worker's real step loop.

The fake device runs on a fake clock: `step()` queues work and returns at once (as a CUDA or MPS
launch does); the device works through its queue on its own timeline, and the host's clock
only catches up with it when the host synchronises. Timing that skips the synchronisation
therefore measures launch cost instead of work, which the tests show the broken clocks doing.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
import torch

from workloads.backends.base import PreparedWorkload
from workloads.measure import measure, steps_per_mark
from workloads.protocol import RunSlice, SliceDone, Steps, Warmup, WorkerEvent
from workloads.timing import EventClock, StepClock, SyncClock, latency_summary, percentile

LAUNCH_S = 1e-6  # host cost of queueing one step


class FakeDevice:
    """An asynchronous device on a fake clock (seconds)."""

    def __init__(self) -> None:
        self.host = 0.0  # the host's clock
        self.busy_until = 0.0  # when the device finishes what is queued
        self.launched = 0
        self.syncs = 0
        self.max_queue_s = 0.0  # the most work the host ever had queued ahead of the device

    def now(self) -> float:
        return self.host

    def launch(self, work_s: float) -> None:
        start = max(self.busy_until, self.host)
        self.busy_until = start + work_s
        self.host += LAUNCH_S
        self.launched += 1
        self.max_queue_s = max(self.max_queue_s, self.busy_until - self.host)

    def sync(self) -> None:
        self.syncs += 1
        self.host = max(self.host, self.busy_until)


class FakeEvent:
    """A CUDA event: its time is when the device reaches it in the queue."""

    def __init__(self, device: FakeDevice, enable_timing: bool = False) -> None:
        assert enable_timing
        self.device = device
        self.at: float | None = None

    def record(self) -> None:
        self.at = max(self.device.busy_until, self.device.host)

    def synchronize(self) -> None:
        assert self.at is not None
        self.device.host = max(self.device.host, self.at)

    def elapsed_time(self, end: FakeEvent) -> float:
        assert self.at is not None and end.at is not None
        if self.device.host < end.at:  # CUDA refuses to read an event that has not completed
            raise RuntimeError("event has not completed")
        return (end.at - self.at) * 1000.0  # milliseconds, like torch.cuda.Event


class FakeTorch:
    """Just enough of `torch` for EventClock: torch.cuda.Event and torch.cuda.synchronize."""

    def __init__(self, device: FakeDevice) -> None:
        self.cuda = self
        self._device = device

    def Event(self, enable_timing: bool = False) -> FakeEvent:  # torch.cuda.Event
        return FakeEvent(self._device, enable_timing)

    def synchronize(self) -> None:
        self._device.sync()


@dataclass
class FakeWorkload(PreparedWorkload):
    """Step i queues work(i) seconds on the fake device; `on_step` sees each step's index."""

    device: FakeDevice = field(default_factory=FakeDevice)
    work: Callable[[int], float] = lambda i: 0.01
    on_step: Callable[[int], None] = lambda i: None

    def step(self) -> None:
        index = self.device.launched
        self.on_step(index)
        self.device.launch(self.work(index))

    def output_sample(self) -> torch.Tensor:
        return torch.zeros(1, dtype=torch.float64)


def request(**changes: Any) -> RunSlice:
    settings: dict[str, Any] = {"slice_id": 1, "duration_s": None, "max_steps": 12,
                                "warmup_steps": 0, "check_every": 0, "flush_interval_s": 10.0}
    settings.update(changes)
    return RunSlice(**settings)


def run(workload: FakeWorkload, req: RunSlice,
        should_stop: Callable[[], bool] = lambda: False) -> list[WorkerEvent]:
    events: list[WorkerEvent] = []
    measure(workload, req, events.append, should_stop, now=workload.device.now)
    return events


def durations(events: list[WorkerEvent]) -> list[float]:
    return [d for e in events if isinstance(e, Steps) for d in e.durations]


def done(events: list[WorkerEvent]) -> SliceDone:
    assert isinstance(events[-1], SliceDone)
    return events[-1]


def fake(clock: Callable[[FakeDevice], StepClock],
         work: Callable[[int], float] = lambda i: 0.01 * (1 + i % 3)) -> FakeWorkload:
    device = FakeDevice()
    return FakeWorkload(backend="fake", device_label="fake", precision="fp32",
                        clock=clock(device), device=device, work=work)


def synced(device: FakeDevice) -> StepClock:
    return SyncClock(device.sync, now=device.now)


def unsynced(device: FakeDevice) -> StepClock:
    return SyncClock(lambda: None, now=device.now)


def events_clock(device: FakeDevice) -> StepClock:
    return EventClock(FakeTorch(device))


def queued(workload: FakeWorkload, steps: int, first: int = 0) -> list[float]:
    return [workload.work(i) for i in range(first, first + steps)]


@pytest.mark.parametrize("clock", [synced, events_clock], ids=["SyncClock", "EventClock"])
def test_measured_durations_are_the_queued_work(clock: Callable[[FakeDevice], StepClock]) -> None:
    workload = fake(clock)
    events = run(workload, request(max_steps=12))
    expected = queued(workload, 12)
    assert durations(events) == pytest.approx(expected, abs=2 * LAUNCH_S)
    assert done(events).steps == 12
    assert done(events).seconds == pytest.approx(sum(expected), abs=1e-4)


@pytest.mark.parametrize("clock", [unsynced], ids=["SyncClock-without-sync"])
def test_clock_that_skips_sync_measures_launches_not_work(
        clock: Callable[[FakeDevice], StepClock]) -> None:
    """The control for the test above: with the sync skipped the same run is off by ~10^4."""
    workload = fake(clock)
    events = run(workload, request(max_steps=12))
    expected = queued(workload, 12)
    measured = durations(events)
    assert len(measured) == 12
    assert max(measured) < min(expected) / 100
    assert done(events).seconds < sum(expected) / 100
    # ... so the throughput it would report is over 100x too high, and the assertion the
    # real clocks pass fails here.
    with pytest.raises(AssertionError):
        assert measured == pytest.approx(expected, abs=2 * LAUNCH_S)


def test_event_clock_lets_the_host_run_ahead() -> None:
    """EventClock times on the device's timeline without a host sync per step."""
    workload = fake(events_clock, work=lambda i: 0.01)
    events = run(workload, request(max_steps=50))
    assert durations(events) == pytest.approx([0.01] * 50, abs=1e-9)
    # a handful per segment (the first, with no step estimate yet, is one step), not one per step
    assert workload.device.syncs < 10
    assert workload.device.max_queue_s > 0.4  # the host had most of the 50 steps queued


def test_reading_event_times_is_not_counted_as_step_time() -> None:
    """Reading thousands of event times costs host time after the device is done; a segment's
    measured seconds end when the device does, not when the bookkeeping does."""

    class CostlyEvent(FakeEvent):
        def elapsed_time(self, end: FakeEvent) -> float:
            value = super().elapsed_time(end)
            self.device.host += 1e-3  # 1 ms per read: 12 ms over the run
            return value

    device = FakeDevice()
    fake_torch = FakeTorch(device)
    fake_torch.Event = lambda enable_timing=False: CostlyEvent(device, enable_timing)  # type: ignore[method-assign]
    workload = FakeWorkload(backend="fake", device_label="fake", precision="fp32",
                            clock=EventClock(fake_torch), device=device, work=lambda i: 0.01)
    events = run(workload, request(max_steps=12))
    assert durations(events) == pytest.approx([0.01] * 12, abs=1e-9)
    assert done(events).seconds == pytest.approx(0.12, abs=1e-4)


class SleepingDevice:
    """The same idea on the real clock: sync() sleeps until the queued work is done."""

    def __init__(self, work_s: float) -> None:
        self.work_s = work_s
        self.busy_until = time.perf_counter()

    def launch(self) -> None:
        self.busy_until = max(self.busy_until, time.perf_counter()) + self.work_s

    def sync(self) -> None:
        remaining = self.busy_until - time.perf_counter()
        if remaining > 0:
            time.sleep(remaining)


@dataclass
class SleepingWorkload(PreparedWorkload):
    device: SleepingDevice = field(default_factory=lambda: SleepingDevice(0.02))

    def step(self) -> None:
        self.device.launch()

    def output_sample(self) -> torch.Tensor:
        return torch.zeros(1, dtype=torch.float64)


@pytest.mark.parametrize("skip_sync", [False, True], ids=["synced", "sync-skipped"])
def test_real_time_sleeping_device(skip_sync: bool) -> None:
    device = SleepingDevice(0.02)
    clock = SyncClock((lambda: None) if skip_sync else device.sync)
    workload = SleepingWorkload(backend="fake", device_label="fake", precision="fp32",
                                clock=clock, device=device)
    events: list[WorkerEvent] = []
    measure(workload, request(max_steps=6), events.append)
    measured = durations(events)
    assert len(measured) == 6
    if skip_sync:  # off by far more than scheduling noise: under half the real work
        assert statistics.median(measured) < 0.01
        assert done(events).seconds < 0.5 * 6 * 0.02
    else:
        assert min(measured) >= 0.0195
        assert statistics.median(measured) < 0.04
        assert done(events).seconds >= 6 * 0.0195


def test_warmup_is_excluded_and_reported_apart() -> None:
    # Step 0 is a 0.5 s "compile"; every other step is 10 ms.
    workload = fake(synced, work=lambda i: 0.5 if i == 0 else 0.01)
    events = run(workload, request(warmup_steps=3, max_steps=10))
    warmup = next(e for e in events if isinstance(e, Warmup))
    assert warmup.steps == 3
    assert warmup.first_step_seconds == pytest.approx(0.5, abs=1e-5)
    assert warmup.seconds == pytest.approx(0.52, abs=1e-4)
    assert events.index(warmup) < min(i for i, e in enumerate(events) if isinstance(e, Steps))
    assert durations(events) == pytest.approx([0.01] * 10, abs=2 * LAUNCH_S)
    assert done(events).steps == 10
    assert done(events).seconds == pytest.approx(0.10, abs=1e-4)
    assert workload.device.launched == 13


@pytest.mark.parametrize("duration_s", [None, 100.0])
def test_max_steps_is_honoured_across_segments(duration_s: float | None) -> None:
    # 10 ms steps in 25 ms segments: 3 + 3 + 1.
    workload = fake(synced, work=lambda i: 0.01)
    events = run(workload, request(warmup_steps=2, max_steps=7, duration_s=duration_s,
                                   flush_interval_s=0.025))
    segments = [len(e.durations) for e in events if isinstance(e, Steps)]
    assert segments == [3, 3, 1]
    assert done(events).steps == 7 and not done(events).stopped
    assert workload.device.launched == 2 + 7


@pytest.mark.parametrize("clock", [synced, events_clock], ids=["SyncClock", "EventClock"])
def test_duration_budget_is_honoured(clock: Callable[[FakeDevice], StepClock]) -> None:
    """A slice ends within one step of its duration, also on an asynchronous device whose host
    could queue far more work than the budget before its own clock says the time is up."""
    workload = fake(clock, work=lambda i: 0.03)
    events = run(workload, request(max_steps=None, duration_s=0.5, flush_interval_s=0.25))
    seconds = done(events).seconds
    assert 0.5 <= seconds < 0.5 + 0.03 + 1e-4  # overshoots by less than one step
    assert done(events).steps == math.ceil(0.5 / 0.03)
    assert sum(e.seconds for e in events if isinstance(e, Steps)) == pytest.approx(seconds)


def test_stop_ends_after_the_current_step() -> None:
    """A stop asked for during measured step 5 ends the run when that step is done, even in
    the middle of a long segment."""
    stop = False

    def on_step(index: int) -> None:
        nonlocal stop
        if index == 1 + 4:  # one warm-up step, then measured steps 0..4
            stop = True

    workload = fake(synced, work=lambda i: 0.01)
    workload.on_step = on_step
    events = run(workload, request(warmup_steps=1, max_steps=None, duration_s=100.0,
                                   flush_interval_s=50.0), should_stop=lambda: stop)
    assert done(events).stopped
    assert done(events).steps == 5
    assert workload.device.launched == 1 + 5
    assert done(events).seconds == pytest.approx(0.05, abs=1e-4)


def test_stop_before_the_first_measured_step() -> None:
    workload = fake(synced)
    events = run(workload, request(warmup_steps=1, max_steps=None, duration_s=100.0),
                 should_stop=lambda: True)
    assert done(events) == SliceDone(slice_id=1, steps=0, seconds=0.0, stopped=True)
    assert workload.device.launched == 1


def test_percentile_interpolates_linearly() -> None:
    assert math.isnan(percentile([], 50))
    assert percentile([3.0], 0) == percentile([3.0], 99) == 3.0
    values = [1.0, 2.0, 3.0, 4.0]
    assert percentile(values, 0) == 1.0
    assert percentile(values, 100) == 4.0
    assert percentile(values, 50) == 2.5
    assert percentile(values, 25) == pytest.approx(1.75)
    assert percentile(values, 90) == pytest.approx(3.7)
    data = sorted(np.random.default_rng(0).exponential(size=101).tolist())
    for q in (1, 10, 50, 90, 99, 99.9):
        assert percentile(data, q) == pytest.approx(float(np.percentile(data, q)), rel=1e-12)


def test_latency_summary() -> None:
    durations_s = [0.004, 0.001, 0.003, 0.002, 0.010]  # unsorted on purpose
    summary = latency_summary(durations_s)
    assert set(summary) == {"p50", "p90", "p99", "max", "mean"}
    assert summary["p50"] == pytest.approx(0.003)
    assert summary["p90"] == pytest.approx(0.004 + 0.6 * 0.006)
    assert summary["p99"] == pytest.approx(0.004 + 0.96 * 0.006)
    assert summary["max"] == 0.010
    assert summary["mean"] == pytest.approx(0.004)
    assert durations_s == [0.004, 0.001, 0.003, 0.002, 0.010]  # not sorted in place
    assert all(math.isnan(v) for v in latency_summary([]).values())


def test_latency_sketch_percentiles_within_one_percent() -> None:
    import random

    from workloads.timing import LatencySketch, latency_summary

    rng = random.Random(7)
    values = [rng.lognormvariate(-6, 0.8) for _ in range(20000)]
    sketch = LatencySketch()
    sketch.add(values[:5000])
    sketch.add(values[5000:])
    exact = latency_summary(values)
    approx = sketch.summary()
    for key in ("p50", "p90", "p99"):
        assert abs(approx[key] - exact[key]) / exact[key] < 0.01, key
    assert approx["max"] == exact["max"]
    assert abs(approx["mean"] - exact["mean"]) / exact["mean"] < 1e-9
    assert len(sketch.counts) < 1000  # bounded, not one entry per step


def test_short_steps_on_an_asynchronous_clock_share_one_event() -> None:
    """0.1 ms steps on an event clock are timed in groups (one event per ~1 ms): every step is
    counted, and latencies come from the sampled groups timed step by step."""
    workload = fake(events_clock, work=lambda i: 1e-4)
    events = run(workload, request(max_steps=2005, warmup_steps=2))
    measured = durations(events)
    assert done(events).steps == 2005 == sum(e.steps for e in events if isinstance(e, Steps))
    assert all(e.sampled for e in events if isinstance(e, Steps))
    # 201 groups of 10 (the last one 5): groups 0, 16, 32, ... are timed step by step
    assert len(measured) == 13 * 10
    assert measured == pytest.approx([1e-4] * len(measured), rel=0.05)
    assert done(events).seconds == pytest.approx(2005 * 1e-4, rel=0.01)
    assert steps_per_mark(workload.clock, 1e-4) == 10
    assert steps_per_mark(workload.clock, 5e-3) == 1
    assert steps_per_mark(SyncClock(lambda: None), 1e-4) == 1  # synchronous clocks time every step


def test_grouped_steps_still_measure_the_tail() -> None:
    """2% of 0.1 ms steps stall for 10 ms. Group means would report p99 and max near 1.2 ms; the
    step-by-step sample reports the stalls themselves."""
    import random

    rng = random.Random(3)
    stalls = {i for i in range(100_000) if rng.random() < 0.02}
    workload = fake(events_clock, work=lambda i: 10e-3 if i in stalls else 1e-4)
    events = run(workload, request(max_steps=40_000, warmup_steps=2, flush_interval_s=0.25))
    summary = latency_summary(durations(events))
    assert summary["p99"] == pytest.approx(10e-3, rel=0.01)
    assert summary["max"] == pytest.approx(10e-3, rel=0.01)
    assert summary["p50"] == pytest.approx(1e-4, rel=0.05)
    assert len(durations(events)) >= 40_000 / 16 * 0.9  # a 1-in-16 sample of the steps
    assert workload.device.launched == 40_002
