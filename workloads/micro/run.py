"""Running the micro suite: in this process (`run_micro`), or each backend in a worker process
through the same worker loop as the rotation's slices (`run_micro_in_worker`, what the daemon
calls: it never imports torch itself)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from functools import partial

from workloads.backends import auto_candidates, parse_backends, resolve_backends
from workloads.micro.results import (
    CATEGORIES,
    COREML_SKIP_REASON,
    MicroProfile,
    MicroResult,
    MicroRun,
    get_micro_profile,
    load_average,
)
from workloads.process import InProcessWorker, Worker, probe
from workloads.protocol import (
    Failure,
    MicroCaseFailure,
    MicroDone,
    MicroMeasured,
    MicroPrepared,
    MicroSkipped,
    MicroWarmup,
    ProbeResult,
    RunMicro,
    WorkerEvent,
)

MICRO_DTYPES: tuple[str, ...] = ("fp32", "fp16", "bf16")


def absorb(run: MicroRun, name: str, event: WorkerEvent, *,
           on_result: Callable[[MicroResult], None] | None = None) -> None:
    """Fold one micro event of backend `name` into `run`."""
    if isinstance(event, MicroSkipped):
        run.skipped[name] = event.reason
    elif isinstance(event, MicroPrepared):
        run.devices[name] = event.device_name
    elif isinstance(event, MicroWarmup):
        run.device_warmup_s[name] = event.seconds
    elif isinstance(event, MicroMeasured):
        run.results.append(event.result)
        if on_result is not None:
            on_result(event.result)
    elif isinstance(event, MicroCaseFailure | Failure):
        where = f"{event.case}: " if isinstance(event, MicroCaseFailure) else ""
        text = f"{where}{event.reason}: {event.detail}"
        run.failures[name] = f"{run.failures[name]}; {text}" if name in run.failures else text
    elif isinstance(event, MicroDone) and event.stopped:
        run.stopped = True


def _check_dtype(dtype: str) -> None:
    if dtype not in MICRO_DTYPES:
        raise ValueError(f"unknown dtype {dtype!r} (choose from {', '.join(MICRO_DTYPES)})")


def backend_list(backends: str | Sequence[str], in_process: bool = False) -> list[str]:
    """Names from "auto"/"cpu,cuda" text or a list; `auto` is resolved by a worker's probe.

    ValueError for an unknown name.
    """
    text = backends if isinstance(backends, str) else ",".join(backends)
    names = parse_backends(text)
    if "auto" in names:
        answer = probe(auto_candidates(), ("fp32",), in_process=in_process)
        empty = ProbeResult({})
        names = resolve_backends(names, answer if isinstance(answer, ProbeResult) else empty)
    return names


def run_micro(
    backends: str | Sequence[str],
    profile: str | MicroProfile = "ci",
    *,
    iterations: int | None = None,
    warmup: int | None = None,
    dtype: str = "fp32",
    on_result: Callable[[MicroResult], None] | None = None,
    categories: Sequence[str] = CATEGORIES,
) -> MicroRun:
    """Run the suite in THIS process (tests, benchmarks; imports torch).

    The daemon calls `run_micro_in_worker` instead. `backends` is a list of names or a string
    such as "auto" or "cpu,cuda"; ValueError for an unknown backend or profile.
    """
    from workloads.micro.measure import measure_backend

    names = backend_list(backends, in_process=True)
    _check_dtype(dtype)
    run = MicroRun(get_micro_profile(profile, iterations, warmup), dtype)
    run.load_average["start"] = load_average()
    started = time.perf_counter()
    for name in names:
        measure_backend(name, run.profile, partial(absorb, run, name, on_result=on_result), dtype,
                        categories)
    run.seconds = time.perf_counter() - started
    run.load_average["end"] = load_average()
    return run


def run_micro_in_worker(
    backends: str | Sequence[str],
    profile: str | MicroProfile = "ci",
    *,
    iterations: int | None = None,
    warmup: int | None = None,
    dtype: str = "fp32",
    timeout_s: float | None = None,
    on_result: Callable[[MicroResult], None] | None = None,
    stop: threading.Event | None = None,
    categories: Sequence[str] = (),
    in_process: bool = False,
) -> MicroRun:
    """Run the suite with each backend in a worker process; what the daemon calls.

    Backends run one after another. Core ML backends are skipped without a worker (they run
    whole models, not ops); a backend the worker finds unavailable lands in `run.skipped`; a
    worker that crashes, is killed or runs past `timeout_s` (default: the profile's, per
    backend) lands in `run.failures`, with what it measured so far kept. Setting `stop` ends
    the running backend after its current case (the worker is killed if it does not stop
    within a few seconds), keeps what was measured, and runs no further backend
    (`run.stopped`). `on_result` is called in this process for each measurement as it
    arrives. ValueError for an unknown backend or profile or a bad iteration count.
    """
    names = backend_list(backends, in_process)
    _check_dtype(dtype)
    run = MicroRun(get_micro_profile(profile, iterations, warmup), dtype)
    limit = run.profile.timeout_s if timeout_s is None else timeout_s
    run.load_average["start"] = load_average()
    started = time.perf_counter()
    for name in names:
        if run.stopped or (stop is not None and stop.is_set()):
            run.stopped = True
            break
        if name.startswith("coreml-"):
            run.skipped[name] = COREML_SKIP_REASON
            continue
        worker: Worker = InProcessWorker(f"micro-{name}") if in_process else Worker(f"micro-{name}")
        try:
            worker.start()
            outcome = worker.run_micro(RunMicro(name, run.profile, dtype, tuple(categories)),
                                       partial(absorb, run, name, on_result=on_result), stop, limit)
        finally:
            worker.close()
        if isinstance(outcome, Failure) and name not in run.failures:
            run.failures[name] = f"{outcome.reason}: {outcome.detail}"
        if isinstance(outcome, Failure) and outcome.reason == "stopped":
            run.stopped = True
    run.seconds = time.perf_counter() - started
    run.load_average["end"] = load_average()
    return run
