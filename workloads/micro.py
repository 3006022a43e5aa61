"""The micro-benchmark suite (seed 002): small torch ops timed one at a time per backend.

Categories and sizes follow the seed:

| category      | ops                  | sizes                          | headline unit |
|---------------|----------------------|--------------------------------|---------------|
| `matmul`      | MatMul (n x n @ n x n) | 64, 128, 256, 512, 1024      | GFLOPS (and GB/s) |
| `elementwise` | Add, Mul             | 1K, 10K, 100K, 1M elements     | GB/s          |
| `reduction`   | Sum                  | 1K, 10K, 100K, 1M elements     | GB/s          |
| `transfer`    | Host->Device, Device->Host | 1K, 10K, 100K, 1M elements | GB/s        |
| `activation`  | ReLU, GELU           | 1K, 10K, 100K, 1M elements     | GFLOPS        |
| `launch`      | add 1 to a 1-element tensor, synchronised | 1 element | median time |

1K means 1,000 elements (decimal, as the seed's 10K/100K/1M). Every op writes into a
preallocated output (`out=` or `copy_`), so the allocator is not what is timed.

FLOP and byte counts (s = bytes per element of the dtype, 4 for fp32):

- MatMul n: FLOP = 2·n³; bytes = 3·n²·s (read A and B, write C once: the minimum traffic,
  so its GB/s is a lower bound and is left out of the peak bandwidth).
- Add / Mul, n elements: FLOP = n; bytes = 3·n·s (read two, write one).
- Sum, n elements: FLOP = n − 1; bytes = (n + 1)·s (read n, write the scalar).
- Host->Device / Device->Host, n elements: FLOP = 0; bytes = n·s, the payload (not
  read + write). On CUDA the host side is pinned memory and the copy is non-blocking;
  on MPS it is ordinary host memory. On the CPU backend host and device are the same
  memory: both directions are a memcpy (`copy_` between two CPU tensors) and are
  labelled "(memcpy)".
- ReLU, n elements: FLOP = n (one max per element); bytes = 2·n·s. It runs as
  `clamp_min(x, 0, out=y)`, the kernel `torch.relu` itself uses.
- GELU, n elements: FLOP = 8·n, a convention, not a measurement: torch's default exact
  (erf) GELU is what runs, and 8 counts the operations of the tanh form
  0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))) with tanh as one. Rows carry
  `flop_estimated: true`. Bytes = 2·n·s.
- Launch: one `add_(1)` on a 1-element tensor followed by a device synchronise, every
  iteration: the round trip of a tiny op (launch + execute + sync). GFLOPS and GB/s are
  left empty; its median time is the number.

On a CPU a 1M-element fp32 vector (4 MB) fits in the last-level cache of most server
chips, so the CPU's "bandwidth" figures at that size are cache bandwidth, not DRAM.

Timing follows DESIGN's measurement rules: the backend's own step clock (`SyncClock` that
synchronises at every boundary on CPU/MPS, `EventClock` with CUDA events on CUDA); once per
backend a device warm-up (matmuls for `device_warmup_s`, reported apart), then per op and
size a synchronised warm-up that is timed and reported apart, then `iterations` timed
runs; the median is the headline (GFLOPS and GB/s come from it), with avg/min/max beside
it.

Only the torch backends (cpu, cuda, mps) take part. Core ML backends run whole converted
models, not individual tensor ops, so they are reported as skipped, with that reason.

The daemon never runs device work in its own process: `run_micro_in_worker()` runs each
backend in a fresh spawned child, as the workload slices do (`workloads.runner`).
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing
import os
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from workloads.backends import (
    BACKEND_NAMES,
    COREML_BACKENDS,
    auto_backends,
    get_backend,
    parse_backends,
)
from workloads.backends.base import classify_failure
from workloads.backends.torch_backend import TORCH_DTYPES
from workloads.host import host_info
from workloads.micro_profiles import MicroProfile, get_micro_profile
from workloads.runner import reap_worker, receive, signal_name
from workloads.timing import StepClock, SyncClock, percentile
from workloads.worker import Event

CATEGORIES: tuple[str, ...] = (
    "matmul", "elementwise", "reduction", "transfer", "activation", "launch",
)
CATEGORY_TITLES: dict[str, str] = {
    "matmul": "Matrix Multiplication",
    "elementwise": "Element-wise Operations",
    "reduction": "Reduction Operations",
    "transfer": "Memory Transfer Bandwidth",
    "activation": "Activation Functions",
    "launch": "Launch Overhead",
}
MATMUL_SIZES: tuple[int, ...] = (64, 128, 256, 512, 1024)
VECTOR_SIZES: tuple[int, ...] = (1_000, 10_000, 100_000, 1_000_000)
GELU_FLOP_PER_ELEMENT = 8
RELU_FLOP_PER_ELEMENT = 1
# Categories whose GB/s counts toward the peak memory bandwidth (matmul's bytes are the
# minimum traffic, launch moves one element).
BANDWIDTH_CATEGORIES: frozenset[str] = frozenset(
    {"elementwise", "reduction", "transfer", "activation"}
)
COREML_SKIP_REASON = (
    "Core ML backends are not part of the micro suite (Core ML runs whole converted models, "
    "not individual tensor ops)"
)


@dataclass(frozen=True)
class MicroCase:
    """One op at one size: its counts and a `setup()` that allocates and returns the op."""

    category: str
    op: str  # stable id: matmul, add, mul, sum, h2d, d2h, relu, gelu, launch
    label: str  # what the table shows in its Operation column
    size: str  # what the table shows in its Size column: "1024x1024", "1M"
    n: int  # matrix dimension for matmul, element count otherwise
    flop: int
    bytes: int
    setup: Callable[[], Callable[[], object]]
    flop_estimated: bool = False
    sync_each: bool = False  # synchronise after every iteration (launch overhead)
    note: str = ""


@dataclass
class MicroResult:
    """One op at one size on one backend; times in seconds, rates from the median."""

    backend: str
    device: str
    category: str
    op: str
    label: str
    size: str
    n: int
    dtype: str
    iterations: int
    warmup: int
    warmup_s: float
    avg_s: float
    min_s: float
    max_s: float
    median_s: float
    flop: int
    bytes: int
    gflops: float | None
    gb_per_s: float | None
    flop_estimated: bool = False
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {key: _finite(value) for key, value in asdict(self).items()}


@dataclass
class MicroRun:
    """The suite's outcome over several backends (what `soakd micro --json` prints)."""

    profile: MicroProfile
    dtype: str = "fp32"
    host: dict[str, str] = field(default_factory=host_info)
    results: list[MicroResult] = field(default_factory=list)
    devices: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)  # backend -> why it did not run
    failures: dict[str, str] = field(default_factory=dict)  # backend -> what went wrong
    device_warmup_s: dict[str, float] = field(default_factory=dict)  # backend -> seconds
    seconds: float = 0.0
    stopped: bool = False  # a stop request cut the run short
    # The host's 1-minute load average when the run started and ended: on a CPU the numbers
    # are only as good as the host is quiet (other processes steal cores from torch's threads).
    load_average: dict[str, float | None] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when something was measured and no backend failed (skipping is not failing)."""
        return bool(self.results) and not self.failures

    def backends(self) -> list[str]:
        return list(dict.fromkeys(r.backend for r in self.results))

    def summary(self) -> dict[str, dict[str, Any]]:
        """Per backend: peak compute (GFLOPS), peak bandwidth (GB/s), where each was reached,
        and the launch overhead."""
        out: dict[str, dict[str, Any]] = {}
        for backend in self.backends():
            rows = [r for r in self.results if r.backend == backend]
            compute = [r for r in rows if r.gflops is not None and r.category != "launch"]
            bandwidth = [r for r in rows if r.gb_per_s is not None
                         and r.category in BANDWIDTH_CATEGORIES]
            launch = [r for r in rows if r.category == "launch"]
            best_c = max(compute, key=lambda r: r.gflops or 0.0, default=None)
            best_b = max(bandwidth, key=lambda r: r.gb_per_s or 0.0, default=None)
            out[backend] = {
                "device": self.devices.get(backend, rows[0].device),
                "peak_gflops": best_c.gflops if best_c else None,
                "peak_gflops_at": f"{best_c.label} {best_c.size}" if best_c else None,
                "peak_gb_per_s": best_b.gb_per_s if best_b else None,
                "peak_gb_per_s_at": f"{best_b.label} {best_b.size}" if best_b else None,
                "launch_overhead_s": launch[0].median_s if launch else None,
            }
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "profile": self.profile.name,
            "dtype": self.dtype,
            "warmup": self.profile.warmup,
            "iterations": self.profile.iterations,
            "launch_iterations": self.profile.launch_iterations,
            "device_warmup_s": dict(self.device_warmup_s),
            "seconds": self.seconds,
            "results": [r.to_dict() for r in self.results],
            "summary": {
                backend: {key: _finite(value) for key, value in peaks.items()}
                for backend, peaks in self.summary().items()
            },
            "skipped": dict(self.skipped),
            "failures": dict(self.failures),
            "stopped": self.stopped,
            "load_average": dict(self.load_average),
        }


def load_average() -> float | None:
    """The host's 1-minute load average, None where the OS has none."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def size_label(n: int) -> str:
    """1000 -> "1K", 1_000_000 -> "1M" (decimal, as the seed writes sizes)."""
    for scale, suffix in ((1_000_000, "M"), (1_000, "K")):
        if n >= scale and n % scale == 0:
            return f"{n // scale}{suffix}"
    return str(n)


# --- the cases -------------------------------------------------------------------------


def build_cases(
    device: torch.device,
    dtype: torch.dtype = torch.float32,
    categories: Sequence[str] = CATEGORIES,
    seed: int = 0,
) -> Iterator[MicroCase]:
    """The suite's cases in table order; tensors are allocated only when a case's `setup()` runs."""
    size_of = torch.empty((), dtype=dtype).element_size()
    is_cpu = device.type == "cpu"
    pin = device.type == "cuda"

    def randn(*shape: int, salt: int = 0) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed + 7919 * salt + sum(shape))
        return torch.randn(*shape, generator=generator).to(device=device, dtype=dtype)

    def host(n: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed + n)
        tensor = torch.randn(n, generator=generator).to(dtype)
        return tensor.pin_memory() if pin else tensor

    for category in categories:
        if category not in CATEGORIES:
            raise ValueError(f"unknown category {category!r} (choose from {', '.join(CATEGORIES)})")
        if category == "matmul":
            for n in MATMUL_SIZES:
                def mm_setup(n: int = n) -> Callable[[], object]:
                    a, b = randn(n, n), randn(n, n, salt=1)
                    c = torch.empty(n, n, device=device, dtype=dtype)
                    return lambda: torch.mm(a, b, out=c)
                yield MicroCase(category, "matmul", "MatMul", f"{n}x{n}", n, 2 * n**3,
                                3 * n * n * size_of, mm_setup)
        elif category == "elementwise":
            for op, label, fn in (("add", "Add", torch.add), ("mul", "Mul", torch.mul)):
                for n in VECTOR_SIZES:
                    def ew_setup(n: int = n, fn: Any = fn) -> Callable[[], object]:
                        a, b = randn(n), randn(n, salt=1)
                        c = torch.empty(n, device=device, dtype=dtype)
                        return lambda: fn(a, b, out=c)
                    yield MicroCase(category, op, label, size_label(n), n, n, 3 * n * size_of,
                                    ew_setup)
        elif category == "reduction":
            for n in VECTOR_SIZES:
                def sum_setup(n: int = n) -> Callable[[], object]:
                    a = randn(n)
                    out = torch.empty((), device=device, dtype=dtype)
                    return lambda: torch.sum(a, dim=0, out=out)
                yield MicroCase(category, "sum", "Sum", size_label(n), n, n - 1,
                                (n + 1) * size_of, sum_setup)
        elif category == "transfer":
            note = ("cpu: host and device are the same memory; this is a memcpy "
                    "(copy_ between two CPU tensors)") if is_cpu else (
                    "pinned host memory, non_blocking copy" if pin else "pageable host memory")
            suffix = " (memcpy)" if is_cpu else ""
            for n in VECTOR_SIZES:
                def h2d_setup(n: int = n) -> Callable[[], object]:
                    src = host(n)
                    dst = torch.empty(n, device=device, dtype=dtype)
                    return lambda: dst.copy_(src, non_blocking=pin)
                yield MicroCase(category, "h2d", "Host->Device" + suffix, size_label(n), n, 0,
                                n * size_of, h2d_setup, note=note)
            for n in VECTOR_SIZES:
                def d2h_setup(n: int = n) -> Callable[[], object]:
                    src = randn(n)
                    dst = torch.empty(n, dtype=dtype, pin_memory=pin)
                    return lambda: dst.copy_(src, non_blocking=pin)
                yield MicroCase(category, "d2h", "Device->Host" + suffix, size_label(n), n, 0,
                                n * size_of, d2h_setup, note=note)
        elif category == "activation":
            for n in VECTOR_SIZES:
                def relu_setup(n: int = n) -> Callable[[], object]:
                    x = randn(n)
                    y = torch.empty(n, device=device, dtype=dtype)
                    # torch.relu is clamp_min(x, 0) inside; aten.relu.out (where it exists) is
                    # composite (a temporary, then a copy) and ~2x slower on a CPU.
                    return lambda: torch.clamp_min(x, 0.0, out=y)
                yield MicroCase(category, "relu", "ReLU", size_label(n), n,
                                RELU_FLOP_PER_ELEMENT * n, 2 * n * size_of, relu_setup,
                                note="ReLU: clamp_min(x, 0, out=y), 1 FLOP per element")
            for n in VECTOR_SIZES:
                def gelu_setup(n: int = n) -> Callable[[], object]:
                    x = randn(n)
                    y = torch.empty(n, device=device, dtype=dtype)
                    return lambda: torch.ops.aten.gelu.out(x, out=y)
                yield MicroCase(category, "gelu", "GELU", size_label(n), n,
                                GELU_FLOP_PER_ELEMENT * n, 2 * n * size_of, gelu_setup,
                                flop_estimated=True,
                                note="GELU: 8 FLOP per element by convention (tanh form); "
                                "the exact erf GELU runs")
        elif category == "launch":
            def launch_setup() -> Callable[[], object]:
                x = torch.zeros(1, device=device, dtype=dtype)
                return lambda: x.add_(1)
            yield MicroCase(category, "launch", "Launch (add 1, sync)", "1", 1, 1, 2 * size_of,
                            launch_setup, sync_each=True,
                            note="tiny op + device synchronise per iteration (round trip)")


# --- measuring ---------------------------------------------------------------------------


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


def _skip_reason(name: str) -> str | None:
    """Why `name` cannot run the micro suite here, or None when it can."""
    from workloads.backends.torch_backend import TorchBackend

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
    emit: Callable[[Event], None],
    dtype: str = "fp32",
    categories: Sequence[str] = CATEGORIES,
) -> None:
    """Run the suite on one backend in this process; results and problems become events:

      {"type": "skipped", "reason": str}
      {"type": "prepared", "device": str}
      {"type": "device_warmup", "seconds": float}
      {"type": "result", "result": MicroResult}
      {"type": "case_failure", "case": str, "reason": str, "detail": str}   (the suite goes on)
      {"type": "failure", "reason": str, "detail": str, "traceback": str}   (it stops)
      {"type": "done", "seconds": float}
    """
    from workloads.backends.torch_backend import TorchBackend, release_device_memory

    started = time.perf_counter()
    reason = _skip_reason(name)
    if reason is not None:
        emit({"type": "skipped", "reason": reason})
        return
    backend = get_backend(name)
    assert isinstance(backend, TorchBackend)
    supported = backend.supports(dtype)
    if dtype not in TORCH_DTYPES or not supported.ok:
        emit({"type": "skipped", "reason": supported.reason or f"unknown dtype {dtype!r}"})
        return
    device: torch.device | None = None
    try:
        device = backend.device()
        label = backend.device_label()
        clock = backend.make_clock()
        emit({"type": "prepared", "device": label})
        with torch.inference_mode():
            seconds = warm_up_device(device, TORCH_DTYPES[dtype], clock, profile.device_warmup_s)
            emit({"type": "device_warmup", "seconds": seconds})
            for case in build_cases(device, TORCH_DTYPES[dtype], categories):
                iterations = profile.launch_iterations if case.sync_each else profile.iterations
                try:
                    result = measure_case(case, clock, profile.warmup, iterations, backend=name,
                                          device=label, dtype=dtype)
                except Exception as exc:  # one op failing (no kernel, out of memory) is not all
                    failure = classify_failure(exc)
                    emit({"type": "case_failure", "case": f"{case.label} {case.size}",
                          "reason": failure.reason, "detail": failure.detail})
                    release_device_memory(device)
                    continue
                emit({"type": "result", "result": result})
    except Exception as exc:
        failure = classify_failure(exc)
        emit({"type": "failure", "reason": failure.reason, "detail": failure.detail,
              "traceback": traceback.format_exc(limit=8)})
        return
    finally:
        release_device_memory(device)
    emit({"type": "done", "seconds": time.perf_counter() - started})


def _absorb(run: MicroRun, name: str, event: Event,
            on_result: Callable[[MicroResult], None] | None) -> None:
    kind = event.get("type")
    if kind == "skipped":
        run.skipped[name] = str(event["reason"])
    elif kind == "prepared":
        run.devices[name] = str(event["device"])
    elif kind == "device_warmup":
        run.device_warmup_s[name] = float(event["seconds"])
    elif kind == "result":
        result: MicroResult = event["result"]
        run.results.append(result)
        if on_result is not None:
            on_result(result)
    elif kind in ("failure", "case_failure"):
        where = f"{event['case']}: " if kind == "case_failure" else ""
        text = f"{where}{event['reason']}: {event['detail']}"
        run.failures[name] = f"{run.failures[name]}; {text}" if name in run.failures else text


def _check_dtype(dtype: str) -> None:
    if dtype not in TORCH_DTYPES:
        raise ValueError(f"unknown dtype {dtype!r} (choose from {', '.join(TORCH_DTYPES)})")


def _backend_list(backends: str | Sequence[str]) -> list[str]:
    """Names from "auto"/"cpu,cuda" text or a list (which may also name registered extras)."""
    if isinstance(backends, str):
        return parse_backends(backends)
    out: list[str] = []
    for name in backends:
        for item in auto_backends() if name == "auto" else [name]:
            if item not in BACKEND_NAMES:
                get_backend(item)  # ValueError for an unknown name
            if item not in out:
                out.append(item)
    if not out:
        raise ValueError("no backend given")
    return out


def run_micro(
    backends: str | Sequence[str],
    profile: str | MicroProfile = "ci",
    *,
    iterations: int | None = None,
    warmup: int | None = None,
    dtype: str = "fp32",
    on_result: Callable[[MicroResult], None] | None = None,
) -> MicroRun:
    """Run the suite in THIS process (tests, benchmarks, the worker itself).

    The daemon should call `run_micro_in_worker` instead. `backends` is a list of names or
    a string such as "auto" or "cpu,cuda"; ValueError for an unknown backend or profile.
    """
    names = _backend_list(backends)
    _check_dtype(dtype)
    run = MicroRun(get_micro_profile(profile, iterations, warmup), dtype)
    run.load_average["start"] = load_average()
    started = time.perf_counter()
    for name in names:

        def emit(event: Event, name: str = name) -> None:
            _absorb(run, name, event, on_result)

        measure_backend(name, run.profile, emit, dtype)
    run.seconds = time.perf_counter() - started
    run.load_average["end"] = load_average()
    return run


def _worker_main(conn: Any, name: str, profile: MicroProfile, dtype: str) -> None:
    """Child process entry point: one backend's suite, events sent over `conn`."""
    try:
        measure_backend(name, profile, conn.send, dtype)
    except (BrokenPipeError, EOFError):  # parent went away
        pass
    finally:
        with contextlib.suppress(OSError):
            conn.close()


def _run_backend_in_worker(
    run: MicroRun,
    name: str,
    timeout_s: float,
    on_result: Callable[[MicroResult], None] | None,
    stop: threading.Event | None,
) -> None:
    context = multiprocessing.get_context("spawn")
    parent_conn, child_conn = context.Pipe(duplex=False)
    process = context.Process(target=_worker_main, args=(child_conn, name, run.profile, run.dtype),
                              daemon=True, name=f"soakd-micro-{name}")
    process.start()
    child_conn.close()
    deadline = time.monotonic() + timeout_s
    finished = False
    try:
        while not finished:
            event: Event | None = receive(parent_conn, 0.05)
            if event is not None:
                _absorb(run, name, event, on_result)
                finished = event.get("type") in ("done", "skipped", "failure")
                continue
            if not process.is_alive():
                break
            if stop is not None and stop.is_set():
                process.kill()
                process.join(5)
                run.stopped = True
                run.failures[name] = "stopped: a stop was requested; the micro worker was killed"
                return
            if time.monotonic() > deadline:
                process.kill()
                process.join(5)
                run.failures[name] = (f"overrun: the micro worker ran past {timeout_s:.0f} s "
                                      "and was killed")
                return
    finally:
        code = reap_worker(process, parent_conn)
    if not finished and name not in run.failures:
        if code is not None and code < 0:
            run.failures[name] = f"killed: micro worker killed by {signal_name(-code)}"
        else:
            run.failures[name] = (f"worker_exit: micro worker exited with code {code} "
                                  "before finishing")


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
) -> MicroRun:
    """Run the suite with each backend in its own spawned child process; what the daemon calls.

    Backends run one after another, each in a fresh worker. Unavailable backends (and Core
    ML ones) are probed here without touching a device and land in `run.skipped`; a worker
    that crashes, is killed or runs past `timeout_s` (default: the profile's, per backend)
    lands in `run.failures`, with what it measured so far kept. Setting `stop` kills the
    running worker at once and runs no further backend (`run.stopped`). `on_result` is
    called in this process for each measurement as it arrives. ValueError for an unknown
    backend or profile or a bad iteration count.
    """
    names = _backend_list(backends)
    _check_dtype(dtype)
    run = MicroRun(get_micro_profile(profile, iterations, warmup), dtype)
    limit = run.profile.timeout_s if timeout_s is None else timeout_s
    run.load_average["start"] = load_average()
    started = time.perf_counter()
    for name in names:
        if run.stopped or (stop is not None and stop.is_set()):
            run.stopped = True
            break
        reason = _skip_reason(name)
        if reason is not None:
            run.skipped[name] = reason
            continue
        _run_backend_in_worker(run, name, limit, on_result, stop)
    run.seconds = time.perf_counter() - started
    run.load_average["end"] = load_average()
    return run


# --- the table ---------------------------------------------------------------------------


def _fmt(value: float | None, scale: float = 1.0, digits: int = 4) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    return f"{value * scale:.{digits}f}"


TABLE_HEADER = (f"{'Operation':<30} {'Size':<15} {'Avg (ms)':>12} {'Min (ms)':>12} "
                f"{'Max (ms)':>12} {'Median (ms)':>12} {'GFLOPS':>12} {'GB/s':>12}")


def render_table(run: MicroRun) -> str:
    """The seed's table: a section per category and backend, then a performance summary."""
    lines: list[str] = []
    summary = run.summary()
    several = len(run.backends()) > 1 or bool(run.skipped) or bool(run.failures)
    for backend in run.backends():
        rows = [r for r in run.results if r.backend == backend]
        if several:
            device = run.devices.get(backend, rows[0].device)
            lines += [f"##### backend {backend}: {device} #####", ""]
        for category in CATEGORIES:
            section = [r for r in rows if r.category == category]
            if not section:
                continue
            lines += [f"=== {CATEGORY_TITLES[category]} Benchmark ===", TABLE_HEADER,
                      "-" * len(TABLE_HEADER)]
            for r in section:
                lines.append(
                    f"{r.label:<30} {r.size:<15} {_fmt(r.avg_s, 1e3):>12} {_fmt(r.min_s, 1e3):>12} "
                    f"{_fmt(r.max_s, 1e3):>12} {_fmt(r.median_s, 1e3):>12} "
                    f"{_fmt(r.gflops, digits=2):>12} {_fmt(r.gb_per_s, digits=2):>12}"
                )
            notes = list(dict.fromkeys(r.note for r in section if r.note))
            lines += [f"  note: {n}" for n in notes]
            lines.append("")
        peak = summary[backend]
        lines += [
            "=== Performance Summary ===",
            f"Peak Compute Performance: {_fmt(peak['peak_gflops'], digits=2)} GFLOPS"
            f"  ({peak['peak_gflops_at']})",
            f"Peak Memory Bandwidth:    {_fmt(peak['peak_gb_per_s'], digits=2)} GB/s"
            f"  ({peak['peak_gb_per_s_at']})",
            f"Launch Overhead (median): {_fmt(peak['launch_overhead_s'], 1e3)} ms",
            "",
        ]
    lines.append(f"profile {run.profile.name}: {run.profile.warmup} warm-up, "
                 f"{run.profile.iterations} timed iterations per op and size "
                 f"({run.profile.launch_iterations} for launch), dtype {run.dtype}; "
                 "GFLOPS and GB/s from the median time; 1K = 1,000 elements")
    if run.device_warmup_s:
        lines.append("device warm-up before the first case (not in the numbers): " + ", ".join(
            f"{backend} {seconds:.2f} s" for backend, seconds in run.device_warmup_s.items()))
    start, end = run.load_average.get("start"), run.load_average.get("end")
    if start is not None and end is not None:
        lines.append(f"host load average (1 min): {start:.2f} at start, {end:.2f} at end, "
                     f"on {os.cpu_count()} logical CPUs")
    for backend, reason in run.skipped.items():
        lines.append(f"skipped {backend}: {reason}")
    for backend, detail in run.failures.items():
        lines.append(f"failed {backend}: {detail}")
    return "\n".join(lines)
