"""One slice of one phase on one backend, as run inside the child worker process.

`measure()` is the step loop itself, independent of processes so tests can drive it with a
fake device. `worker_main()` is the child's entry point: it prepares the backend, runs
`measure()` and streams events to the parent over a pipe. Events are plain dicts:

  {"type": "prepared", "device": str, "prepare_seconds": float, "info": {...}}
  {"type": "warmup", "steps": int, "seconds": float, "first_step_seconds": float}
  {"type": "steps", "durations": [s, ...], "seconds": float, "memory": {...}}
  {"type": "check", "step": int, "relative_error": float, "tolerance": float, "ok": bool}
  {"type": "failure", "reason": str, "detail": str, "stage": "prepare"|"run"}
  {"type": "done", "steps": int, "seconds": float, "stopped": bool}
"""

from __future__ import annotations

import contextlib
import os
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from workloads.backends.base import PreparedWorkload, classify_failure
from workloads.phases import PhaseSpec
from workloads.reference import TOLERANCE, reference_output, relative_error

Event = dict[str, Any]
Emit = Callable[[Event], None]


@dataclass(frozen=True)
class SliceRequest:
    """Everything a worker needs; picklable so it crosses the process boundary."""

    spec: PhaseSpec
    backend: str
    precision: str = "fp32"
    seed: int = 0
    duration_s: float | None = 60.0  # measured time after warm-up; None = until max_steps
    max_steps: int | None = None
    warmup_steps: int = 3
    check_every: int = 50  # 0 disables the reference check
    flush_interval_s: float = 0.25  # how often step durations stream to the parent
    reference_dir: str | None = None
    environment: dict[str, str] = field(default_factory=dict)


class MemoryTracker:
    """Peak and time-averaged RSS of this process plus the device allocator's gauges."""

    def __init__(self) -> None:
        self._process = psutil.Process()
        self.peak_rss = 0
        self._rss_sum = 0.0
        self._samples = 0
        self.device: dict[str, int] = {}

    def sample(self, workload: PreparedWorkload | None) -> dict[str, int]:
        rss = int(self._process.memory_info().rss)
        self.peak_rss = max(self.peak_rss, rss)
        self._rss_sum += rss
        self._samples += 1
        if workload is not None:
            for key, value in workload.device_memory().items():
                self.device[key] = value
        peak_device = max(
            self.device.get("device_peak_allocated", 0), self.device.get("device_allocated", 0)
        )
        return {
            "rss": rss,
            "peak_rss": self.peak_rss,
            "avg_rss": int(self._rss_sum / self._samples),
            "peak_device": peak_device,
            **self.device,
        }


def _check(workload: PreparedWorkload, reference: Any, step: int, emit: Emit) -> None:
    error = relative_error(workload.output_sample(), reference)
    tolerance = TOLERANCE[workload.precision]
    emit({"type": "check", "step": step, "relative_error": error, "tolerance": tolerance,
          "ok": error <= tolerance})


# On an asynchronous clock, a device event between two very short steps costs a visible share
# of the step (measured on an H100: ~2% for a 0.11 ms matmul), so steps shorter than this are
# timed in groups and each step of a group is given the group's average.
MIN_MARK_SECONDS = 1e-3
MAX_STEPS_PER_MARK = 64


def steps_per_mark(clock: Any, step_seconds: float) -> int:
    """How many steps share one timing mark: 1 unless the clock is asynchronous and steps are short."""
    if not getattr(clock, "asynchronous", False) or step_seconds <= 0:
        return 1
    return max(1, min(MAX_STEPS_PER_MARK, int(MIN_MARK_SECONDS / step_seconds)))


def measure(
    workload: PreparedWorkload,
    request: SliceRequest,
    emit: Emit,
    should_stop: Callable[[], bool] = lambda: False,
    reference: Any = None,
    now: Callable[[], float] = time.perf_counter,
) -> None:
    """Warm up, then run timed steps until the budget is spent or a stop is asked for.

    Time is measured in segments that start and end on a synchronised device, so queued work
    is never counted in the wrong segment; the reference check runs between segments and is
    not part of the measured time.
    """
    clock = workload.clock
    memory = MemoryTracker()
    clock.sync()
    start = now()
    first = last = 0.0
    for i in range(request.warmup_steps):
        t0 = now()
        workload.step()
        clock.sync()
        last = now() - t0
        if i == 0:
            first = last
    group = steps_per_mark(clock, last if request.warmup_steps > 1 else 0.0)
    emit({"type": "warmup", "steps": request.warmup_steps, "seconds": now() - start,
          "first_step_seconds": first})
    if reference is not None and request.check_every > 0:
        _check(workload, reference, 0, emit)

    steps = 0
    measured = 0.0
    stopped = False
    last_check = 0
    while True:
        remaining_steps = None if request.max_steps is None else request.max_steps - steps
        if remaining_steps is not None and remaining_steps <= 0:
            break
        if request.duration_s is not None and measured >= request.duration_s:
            break
        if should_stop():
            stopped = True
            break
        clock.sync()
        seg_start = now()
        marks = [clock.mark()]
        seg_budget = request.flush_interval_s
        if request.duration_s is not None:
            seg_budget = min(seg_budget, request.duration_s - measured)
        counts: list[int] = []
        done = 0
        while True:
            count = group if remaining_steps is None else min(group, remaining_steps - done)
            for _ in range(count):
                workload.step()
            marks.append(clock.mark())
            counts.append(count)
            done += count
            if remaining_steps is not None and done >= remaining_steps:
                break
            if now() - seg_start >= seg_budget or should_stop():
                break
        clock.sync()
        seconds = now() - seg_start
        # host-side bookkeeping, not part of the measured time; a group's steps share its average
        durations = [d / c for d, c in zip(clock.drain(marks), counts, strict=True) for _ in range(c)]
        measured += seconds
        steps += len(durations)
        emit({"type": "steps", "durations": durations, "seconds": seconds,
              "memory": memory.sample(workload)})
        if reference is not None and request.check_every > 0 and steps - last_check >= request.check_every:
            last_check = steps
            _check(workload, reference, steps, emit)
    emit({"type": "done", "steps": steps, "seconds": measured, "stopped": stopped})


def prepare_and_measure(
    request: SliceRequest,
    emit: Emit,
    should_stop: Callable[[], bool] = lambda: False,
) -> None:
    """Prepare the backend, compute/load the reference, then `measure()`; failures become events."""
    from workloads.backends import get_backend

    stage = "prepare"
    workload: PreparedWorkload | None = None
    try:
        t0 = time.perf_counter()
        reference = None
        if request.check_every > 0:
            directory = Path(request.reference_dir) if request.reference_dir else None
            reference = reference_output(request.spec, request.seed, directory)
        backend = get_backend(request.backend)
        workload = backend.prepare(request.spec, request.precision, request.seed)
        emit({"type": "prepared", "device": workload.device_label,
              "prepare_seconds": time.perf_counter() - t0, "info": workload.info})
        stage = "run"
        measure(workload, request, emit, should_stop, reference)
    except Exception as exc:
        failure = classify_failure(exc)
        emit({"type": "failure", "reason": failure.reason, "detail": failure.detail,
              "stage": stage, "traceback": traceback.format_exc(limit=8)})
    finally:
        if workload is not None:
            workload.close()


def worker_main(conn: Any, request: SliceRequest) -> None:
    """Child process entry point: events go to `conn`; a "stop" message ends after the step."""
    os.environ.update(request.environment)
    stop = False

    def should_stop() -> bool:
        nonlocal stop
        while not stop and conn.poll():
            stop = conn.recv() == "stop"
        return stop

    try:
        prepare_and_measure(request, conn.send, should_stop)
    except (BrokenPipeError, EOFError):  # parent went away: nothing left to report to
        pass
    finally:
        with contextlib.suppress(OSError):
            conn.close()
