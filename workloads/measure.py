"""The step loop: warm up once, then measured segments until a slice's budget is spent.

Independent of processes, so tests can drive it with a fake device. Time is measured in
segments (~0.25 s) that start and end on a synchronised device, so queued work is never
counted in the wrong segment. On an asynchronous device a segment ends once its budget's work
is queued, so a slice ends within a step of its duration, not a launch queue later. The
reference check and the memory sample run between segments and are not part of the measured
time (they are part of the load gap, which the parent measures from the segments'
`started`/`ended` stamps).
"""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import psutil

from workloads.backends.base import PreparedWorkload
from workloads.protocol import Check, MemorySample, RunSlice, SliceDone, Steps, Warmup, WorkerEvent

Emit = Callable[[WorkerEvent], None]

# On an asynchronous clock, a device event between two very short steps costs a visible share
# of the step (measured on an H100: ~2% for a 0.11 ms matmul), so steps shorter than this are
# timed in groups, for throughput. Their latencies come from a sample: one group in
# SAMPLE_EVERY_GROUPS is timed step by step (an event per step), which costs ~2%/16 of
# throughput and gives measured p99 and max instead of group means.
MIN_MARK_SECONDS = 1e-3
MAX_STEPS_PER_MARK = 64
SAMPLE_EVERY_GROUPS = 16
# On an asynchronous clock the last segment is reported (event times read, memory sampled, the
# event sent) once this much device work of the next segment is queued: the ~2 ms of host work
# per segment then overlaps device work (on an H200 reporting between segments left the GPU
# idle ~1% of a matmul phase: 0.3 s a 30 s slice).
OVERLAP_SECONDS = 0.005


def steps_per_mark(clock: Any, step_seconds: float) -> int:
    """How many steps share one timing mark: 1 unless the clock is asynchronous and steps are short."""
    if not getattr(clock, "asynchronous", False) or step_seconds <= 0:
        return 1
    return max(1, min(MAX_STEPS_PER_MARK, int(MIN_MARK_SECONDS / step_seconds)))


def peak_rss_bytes() -> int:
    """This process's resident-set high-water mark from the OS (ru_maxrss: KiB on Linux, bytes
    on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


class MemoryTracker:
    """Samples this process's RSS (and its OS high-water mark) and the device allocator."""

    def __init__(self) -> None:
        self._process = psutil.Process()

    def sample(self, workload: PreparedWorkload | None) -> MemorySample:
        """One `MemorySample` now (bytes)."""
        rss = int(self._process.memory_info().rss)
        device = workload.device_memory() if workload is not None else {}
        return MemorySample(
            rss=rss, peak_rss=max(rss, peak_rss_bytes()),
            device_allocated=device.get("device_allocated"),
            device_reserved=device.get("device_reserved"),
            device_peak_allocated=device.get("device_peak_allocated"),
            device_driver_allocated=device.get("device_driver_allocated"),
        )


def warm_up(workload: PreparedWorkload, steps: int, emit: Emit,
            now: Callable[[], float] = time.monotonic) -> Warmup:
    """Run the workload's warm-up (which may capture a CUDA graph), synchronised, and report it.

    Returns the `Warmup` it emitted; its `first_step_seconds` is NaN when `steps` is 0.
    """
    clock = workload.clock
    clock.sync()
    started = now()
    first = workload.warm_up(steps, now)
    clock.sync()
    ended = now()
    event = Warmup(steps=steps, seconds=ended - started, first_step_seconds=first,
                   started=started, ended=ended)
    emit(event)
    return event


@dataclass
class CheckState:
    """The reference check's progress across a worker's slices."""

    reference: Any = None
    steps_total: int = 0
    last_check: int | None = None
    measured: float = 0.0  # measured seconds over the worker's slices
    last_check_measured: float = 0.0
    device_references: dict[str, Any] = field(default_factory=dict)  # the reference, moved once
    step_seconds: float = 0.0  # a typical step's duration, to size timing groups
    segment_step_seconds: float = 0.0  # the last segment's mean step (device time): queued work
    groups: int = 0  # timing groups run so far (every SAMPLE_EVERY_GROUPS-th is timed per step)


def check(workload: PreparedWorkload, state: CheckState, emit: Emit) -> None:
    """Compare sample 0 of the last output with the float64 reference and emit a `Check`."""
    from workloads.reference import relative_error, tolerance

    assert workload.spec is not None, "a prepared workload knows its spec"
    sample = workload.output_sample()
    device = str(sample.device)
    if device not in state.device_references:
        state.device_references[device] = state.reference.to(sample.device)
    error = relative_error(sample, state.device_references[device])
    limit = tolerance(workload.spec, workload.precision)
    state.last_check, state.last_check_measured = state.steps_total, state.measured
    emit(Check(step=state.steps_total, relative_error=error, tolerance=limit, ok=error <= limit))


def _queued_enough(done: int, state: CheckState, budget: float) -> bool:
    """On an asynchronous clock the host runs ahead of the device (a CUDA launch queue holds
    seconds of heavy steps), so the host's clock cannot end a segment: it ends once the work
    queued, `done` steps at the last segment's mean step (else the warm-up's last step), fills
    `budget` seconds. With no estimate yet the first group ends the segment, which gives one."""
    step_seconds = state.segment_step_seconds or state.step_seconds
    return step_seconds <= 0 or done * step_seconds >= budget


def _due(state: CheckState, every: int, interval_s: float = 0.0) -> bool:
    """A check is due every `every` steps, but at most once per `interval_s` of measured time
    (at 9,000 steps/s a check every 50 steps was ~180 a second and left the GPU idle ~9% of
    the time)."""
    if state.reference is None or every <= 0:
        return False
    if state.last_check is None:
        return True
    return state.steps_total - state.last_check >= every and \
        state.measured - state.last_check_measured >= interval_s


def measure(
    workload: PreparedWorkload,
    command: RunSlice,
    emit: Emit,
    should_stop: Callable[[], bool] = lambda: False,
    state: CheckState | None = None,
    now: Callable[[], float] = time.monotonic,
) -> SliceDone:
    """Run one slice's measured steps (warming up first if the workload is not warm yet).

    Steps are timed between clock marks; with an asynchronous clock (CUDA events) short steps
    are grouped under one mark (`steps_per_mark`). Emits `Warmup` (first slice only), `Steps`
    per segment, `Check` every `command.check_every` steps, and returns (and emits) the
    `SliceDone`.
    """
    state = state if state is not None else CheckState()
    clock = workload.clock
    memory = MemoryTracker()
    if not workload.warmed_up:
        warm_up(workload, command.warmup_steps, emit, now)
    if workload.warmup_steps_done > 1:  # the first step pays one-off costs: size groups by the last
        state.step_seconds = workload.last_warmup_step_seconds
    if _due(state, command.check_every):
        check(workload, state, emit)
    group = steps_per_mark(clock, state.step_seconds)
    overlap = getattr(clock, "asynchronous", False)
    steps = 0
    measured = 0.0
    stopped = False
    deferred: Callable[[], None] | None = None  # the last segment's report, not yet sent

    def report(marks: list[Any], timed: list[bool], done: int, seconds: float, started: float,
               ended: float) -> None:
        # host-side bookkeeping: reading event times, the memory sample, the pipe
        intervals = clock.drain(marks)
        durations = tuple(d for d, alone in zip(intervals, timed, strict=True) if alone)
        emit(Steps(steps=done, durations=durations, seconds=seconds, started=started, ended=ended,
                   memory=memory.sample(workload), sampled=group > 1))

    while True:
        remaining = None if command.max_steps is None else command.max_steps - steps
        if remaining is not None and remaining <= 0:
            break
        if command.duration_s is not None and measured >= command.duration_s:
            break
        if should_stop():
            stopped = True
            break
        budget = command.flush_interval_s
        if command.duration_s is not None:
            budget = min(budget, command.duration_s - measured)
        clock.sync()
        started = now()
        marks = [clock.mark()]
        timed: list[bool] = []  # per interval between marks: one step timed on its own?
        done = 0
        while True:
            if deferred is not None and done * state.step_seconds >= OVERLAP_SECONDS:
                # the device has work queued: report the last segment while it runs, so a segment
                # boundary is a synchronisation, not an idle device waiting on the host
                deferred()
                deferred = None
            count = group if remaining is None else min(group, remaining - done)
            if count == 1 or state.groups % SAMPLE_EVERY_GROUPS == 0:
                for _ in range(count):  # time each step of this group on its own
                    workload.step()
                    marks.append(clock.mark())
                    timed.append(True)
            else:
                for _ in range(count):
                    workload.step()
                marks.append(clock.mark())
                timed.append(False)
            state.groups += 1
            done += count
            if remaining is not None and done >= remaining:
                break
            if now() - started >= budget or should_stop():
                break
            if overlap and _queued_enough(done, state, budget):
                break
        if deferred is not None:  # a segment too short to hide it in
            deferred()
            deferred = None
        clock.sync()
        ended = now()
        seconds = ended - started
        measured += seconds
        steps += done
        if done:
            state.segment_step_seconds = seconds / done
        state.steps_total += done
        state.measured += seconds
        deferred = partial(report, marks, timed, done, seconds, started, ended)
        check_due = _due(state, command.check_every, command.check_interval_s)
        if not overlap or check_due:
            deferred()
            deferred = None
        if check_due:
            check(workload, state, emit)
    if deferred is not None:
        deferred()
    done_event = SliceDone(slice_id=command.slice_id, steps=steps, seconds=measured, stopped=stopped)
    emit(done_event)
    return done_event
