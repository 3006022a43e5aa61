"""Timing the suite's cases on one backend, inside a worker process (imports torch)."""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable, Sequence

import torch

from workloads.backends import COREML_BACKENDS, get_backend
from workloads.backends.base import classify_failure
from workloads.backends.torch_backend import TORCH_DTYPES, TorchBackend, release_device_memory
from workloads.micro.cases import MicroCase, build_cases
from workloads.micro.results import CATEGORIES, COREML_SKIP_REASON, MicroProfile, MicroResult
from workloads.protocol import (
    Failure,
    MicroCaseFailure,
    MicroDone,
    MicroMeasured,
    MicroPrepared,
    MicroSkipped,
    MicroWarmup,
    WorkerEvent,
)
from workloads.timing import StepClock, SyncClock, percentile


def measure_case(
    case: MicroCase,
    clock: StepClock,
    warmup: int,
    iterations: int,
    *,
    backend: str = "",
    device: str = "",
    dtype: str = "fp32",
    now: Callable[[], float] = time.perf_counter,
) -> MicroResult:
    """Warm up (synchronised, timed apart), then time `iterations` runs between clock marks.

    With a `SyncClock` every mark synchronises the device; with an `EventClock` the marks are
    device events and the durations are read once the last one is reached. A case with
    `sync_each` (launch overhead) is timed with a synchronising clock whatever `clock` is.
    Raises ValueError for `iterations` below 1; errors of the op itself propagate.
    """
    if iterations < 1:
        raise ValueError(f"iterations must be at least 1, got {iterations}")
    fn = case.setup()
    timing: StepClock = SyncClock(clock.sync, now) if case.sync_each else clock
    clock.sync()
    started = now()
    for _ in range(warmup):
        fn()
    clock.sync()
    warmup_s = now() - started
    marks = [timing.mark()]
    for _ in range(iterations):
        fn()
        marks.append(timing.mark())
    durations = timing.drain(marks)
    clock.sync()
    values = sorted(durations)
    median = percentile(values, 50)
    rated = not case.sync_each and median > 0
    return MicroResult(
        backend=backend, device=device, category=case.category, op=case.op, label=case.label,
        size=case.size, n=case.n, dtype=dtype, iterations=len(values), warmup=warmup,
        warmup_s=warmup_s, avg_s=sum(values) / len(values), min_s=values[0], max_s=values[-1],
        median_s=median, flop=case.flop, bytes=case.bytes,
        gflops=case.flop / median / 1e9 if rated and case.flop > 0 else None,
        gb_per_s=case.bytes / median / 1e9 if rated and case.bytes > 0 else None,
        flop_estimated=case.flop_estimated, note=case.note,
    )


def warm_up_device(device: torch.device, dtype: torch.dtype, clock: StepClock,
                   seconds: float, n: int = 256) -> float:
    """Run n x n matmuls for about `seconds` (synchronised); returns the time it took."""
    started = time.perf_counter()
    if seconds <= 0:
        return 0.0
    a = torch.ones(n, n, device=device, dtype=dtype)
    c = torch.empty(n, n, device=device, dtype=dtype)
    clock.sync()
    while time.perf_counter() - started < seconds:
        for _ in range(8):
            torch.mm(a, a, out=c)
        clock.sync()
    return time.perf_counter() - started


def skip_reason(name: str) -> str | None:
    """Why `name` cannot run the micro suite here, or None when it can (imports torch)."""
    if name in COREML_BACKENDS:
        return COREML_SKIP_REASON
    backend = get_backend(name)
    if not isinstance(backend, TorchBackend):
        return f"{name} is not a torch backend; the micro suite runs torch ops only"
    availability = backend.available()
    return None if availability.ok else availability.reason


def measure_backend(
    name: str,
    profile: MicroProfile,
    emit: Callable[[WorkerEvent], None],
    dtype: str = "fp32",
    categories: Sequence[str] = CATEGORIES,
    should_stop: Callable[[], bool] = lambda: False,
) -> None:
    """Run the suite on one backend in this process; results and problems become events.

    `MicroSkipped` (cannot run here), `MicroPrepared`, `MicroWarmup`, one `MicroMeasured` per
    op and size, `MicroCaseFailure` for one op that failed (the suite goes on), `Failure`
    (the suite stops), and `MicroDone` last (also after a stop: what was measured is kept).
    `should_stop` is asked between cases.
    """
    started = time.perf_counter()
    reason = skip_reason(name)
    if reason is not None:
        emit(MicroSkipped(reason))
        return
    backend = get_backend(name)
    assert isinstance(backend, TorchBackend)
    supported = backend.supports(dtype)
    if dtype not in TORCH_DTYPES or not supported.ok:
        emit(MicroSkipped(supported.reason or f"unknown dtype {dtype!r}"))
        return
    device: torch.device | None = None
    stopped = False
    try:
        device = backend.device()
        label = backend.device_label()
        clock = backend.make_clock()
        emit(MicroPrepared(label))
        with torch.inference_mode():
            seconds = warm_up_device(device, TORCH_DTYPES[dtype], clock, profile.device_warmup_s)
            emit(MicroWarmup(seconds))
            for case in build_cases(device, TORCH_DTYPES[dtype], categories):
                if should_stop():
                    stopped = True
                    break
                iterations = profile.launch_iterations if case.sync_each else profile.iterations
                try:
                    result = measure_case(case, clock, profile.warmup, iterations, backend=name,
                                          device=label, dtype=dtype)
                except Exception as exc:  # one op failing (no kernel, out of memory) is not all
                    failure = classify_failure(exc)
                    emit(MicroCaseFailure(f"{case.label} {case.size}", failure.reason, failure.detail))
                    release_device_memory(device)
                    continue
                emit(MicroMeasured(result))
    except Exception as exc:
        failure = classify_failure(exc)
        emit(Failure(failure.reason, failure.detail, "run", traceback.format_exc(limit=8)))
        return
    finally:
        release_device_memory(device)
    emit(MicroDone(time.perf_counter() - started, stopped))
