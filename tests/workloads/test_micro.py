"""The micro-benchmark suite: coverage of the seed's categories, arithmetic, plausibility,
timing on an asynchronous (fake) device, and the spawned worker's failure handling."""

from __future__ import annotations

import itertools
import json
import math
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import Any

import psutil
import pytest
import torch

from workloads.backends import EXTRA_BACKENDS_ENV
from workloads.backends.base import Availability
from workloads.backends.torch_backend import CpuBackend
from workloads.micro import (
    CATEGORIES,
    COREML_SKIP_REASON,
    MicroResult,
    MicroRun,
    get_micro_profile,
    render_table,
    size_label,
)
from workloads.micro.cases import MicroCase, build_cases
from workloads.micro.measure import measure_case
from workloads.micro.results import GELU_FLOP_PER_ELEMENT, MATMUL_SIZES, VECTOR_SIZES
from workloads.micro.run import run_micro, run_micro_in_worker
from workloads.timing import StepClock, SyncClock

# Every (category, op) the seed asks for, with its sizes.
EXPECTED: dict[tuple[str, str], tuple[int, ...]] = {
    ("matmul", "matmul"): MATMUL_SIZES,
    ("elementwise", "add"): VECTOR_SIZES,
    ("elementwise", "mul"): VECTOR_SIZES,
    ("reduction", "sum"): VECTOR_SIZES,
    ("transfer", "h2d"): VECTOR_SIZES,
    ("transfer", "d2h"): VECTOR_SIZES,
    ("activation", "relu"): VECTOR_SIZES,
    ("activation", "gelu"): VECTOR_SIZES,
    ("launch", "launch"): (1,),
}
ROWS_PER_BACKEND = sum(len(sizes) for sizes in EXPECTED.values())  # 34

# A physical ceiling for fp32 on this host: every logical CPU at 5 GHz retiring two
# 16-lane FMAs (AVX-512) per cycle = 64 FLOP/cycle. Real CPUs stay well below it.
CPU_FP32_CEILING_GFLOPS = (os.cpu_count() or 1) * 5.0 * 64
MATMUL_1024_FLOOR_GFLOPS = 1.0


def expected_counts(op: str, n: int, itemsize: int = 4) -> tuple[int, int]:
    """(FLOP, bytes) from the formulas in workloads/micro.py's docstring."""
    formulas: dict[str, tuple[int, int]] = {
        "matmul": (2 * n**3, 3 * n * n * itemsize),
        "add": (n, 3 * n * itemsize),
        "mul": (n, 3 * n * itemsize),
        "sum": (n - 1, (n + 1) * itemsize),
        "h2d": (0, n * itemsize),
        "d2h": (0, n * itemsize),
        "relu": (n, 2 * n * itemsize),
        "gelu": (8 * n, 2 * n * itemsize),
        "launch": (1, 2 * itemsize),
    }
    return formulas[op]


@pytest.fixture(scope="module")
def cpu_run() -> MicroRun:
    return run_micro(["cpu"], "ci")


def test_every_category_op_and_size_present_for_cpu_ci(cpu_run: MicroRun) -> None:
    assert not cpu_run.failures and not cpu_run.skipped
    assert {r.category for r in cpu_run.results} == set(CATEGORIES)
    found: dict[tuple[str, str], list[int]] = {}
    for r in cpu_run.results:
        found.setdefault((r.category, r.op), []).append(r.n)
    assert found == {key: list(sizes) for key, sizes in EXPECTED.items()}
    assert len(cpu_run.results) == ROWS_PER_BACKEND
    assert all(r.backend == "cpu" and r.dtype == "fp32" for r in cpu_run.results)
    sizes = [r.size for r in cpu_run.results if r.op == "add"]
    assert sizes == ["1K", "10K", "100K", "1M"]
    assert [r.size for r in cpu_run.results if r.op == "matmul"][-1] == "1024x1024"


def test_times_are_positive_finite_and_ordered(cpu_run: MicroRun) -> None:
    profile = cpu_run.profile
    for r in cpu_run.results:
        values = (r.avg_s, r.min_s, r.max_s, r.median_s, r.warmup_s)
        assert all(math.isfinite(v) and v > 0 for v in values), r
        assert r.min_s <= r.median_s <= r.max_s and r.min_s <= r.avg_s <= r.max_s, r
        assert r.median_s < 1.0, r  # nothing in the ci suite takes a second on a CPU
        expected = profile.launch_iterations if r.category == "launch" else profile.iterations
        assert r.iterations == expected and r.warmup == profile.warmup


def test_flop_and_byte_counts_follow_the_formulas(cpu_run: MicroRun) -> None:
    for r in cpu_run.results:
        assert (r.flop, r.bytes) == expected_counts(r.op, r.n), r
        if r.category == "launch":
            assert r.gflops is None and r.gb_per_s is None
            continue
        assert r.gb_per_s == pytest.approx(r.bytes / r.median_s / 1e9)
        if r.flop:
            assert r.gflops == pytest.approx(r.flop / r.median_s / 1e9)
        else:
            assert r.gflops is None  # transfers move data, no arithmetic
    gelu = [r for r in cpu_run.results if r.op == "gelu"]
    assert all(r.flop_estimated and r.flop == GELU_FLOP_PER_ELEMENT * r.n for r in gelu)
    assert not any(r.flop_estimated for r in cpu_run.results if r.op != "gelu")


def test_matmul_gflops_between_a_floor_and_the_physical_ceiling(cpu_run: MicroRun) -> None:
    big = next(r for r in cpu_run.results if r.op == "matmul" and r.n == 1024)
    assert big.gflops is not None
    assert MATMUL_1024_FLOOR_GFLOPS < big.gflops < CPU_FP32_CEILING_GFLOPS
    for r in cpu_run.results:
        if r.gflops is not None:
            assert r.gflops < CPU_FP32_CEILING_GFLOPS, r
        if r.gb_per_s is not None:
            assert r.gb_per_s < 10_000, r  # 10 TB/s: beyond any CPU cache


def test_cpu_transfers_are_labelled_memcpy(cpu_run: MicroRun) -> None:
    transfers = [r for r in cpu_run.results if r.category == "transfer"]
    assert transfers
    for r in transfers:
        assert "(memcpy)" in r.label and "memcpy" in r.note


def test_summary_peaks(cpu_run: MicroRun) -> None:
    summary = cpu_run.summary()["cpu"]
    compute = [r.gflops for r in cpu_run.results if r.gflops is not None]
    assert summary["peak_gflops"] == max(compute)
    bandwidth = [r.gb_per_s for r in cpu_run.results
                 if r.gb_per_s is not None and r.category not in ("matmul", "launch")]
    assert summary["peak_gb_per_s"] == max(bandwidth)
    launch = next(r for r in cpu_run.results if r.category == "launch")
    assert summary["launch_overhead_s"] == launch.median_s
    assert summary["peak_gflops_at"] and summary["peak_gb_per_s_at"]


def test_to_dict_is_strict_json(cpu_run: MicroRun) -> None:
    document = json.loads(json.dumps(cpu_run.to_dict(), allow_nan=False))
    assert set(document) >= {"host", "results", "summary", "skipped", "failures"}
    assert len(document["results"]) == ROWS_PER_BACKEND
    row = document["results"][0]
    for key in ("backend", "category", "op", "size", "dtype", "iterations", "avg_s", "min_s",
                "max_s", "median_s", "flop", "bytes", "gflops", "gb_per_s"):
        assert key in row
    assert document["summary"]["cpu"]["peak_gflops"] > 0
    assert set(document["load_average"]) == {"start", "end"}  # how quiet the host was
    assert document["device_warmup_s"]["cpu"] >= cpu_run.profile.device_warmup_s > 0


def test_table_has_the_seeds_shape(cpu_run: MicroRun) -> None:
    text = render_table(cpu_run)
    for title in ("Matrix Multiplication", "Element-wise Operations", "Reduction Operations",
                  "Memory Transfer Bandwidth", "Activation Functions", "Launch Overhead"):
        assert f"=== {title} Benchmark ===" in text
    header = next(line for line in text.splitlines() if line.startswith("Operation"))
    assert header.split() == ["Operation", "Size", "Avg", "(ms)", "Min", "(ms)", "Max", "(ms)",
                              "Median", "(ms)", "GFLOPS", "GB/s"]
    assert "=== Performance Summary ===" in text
    assert "Peak Compute Performance: " in text and "Peak Memory Bandwidth:    " in text


def test_results_are_numerically_the_ops_they_claim() -> None:
    """The timed callables compute what their labels say (checked once on small inputs)."""
    cases = {(c.op, c.n): c for c in build_cases(torch.device("cpu"))}
    out = cases[("matmul", 64)].setup()()
    assert isinstance(out, torch.Tensor) and out.shape == (64, 64)
    relu = cases[("relu", 1000)].setup()()
    assert isinstance(relu, torch.Tensor) and float(relu.min()) >= 0.0
    total = cases[("sum", 1000)].setup()()
    assert isinstance(total, torch.Tensor) and total.dim() == 0


def test_profiles_and_overrides() -> None:
    ci, light, heavy = (get_micro_profile(name) for name in ("ci", "light", "heavy"))
    assert ci.iterations < light.iterations < heavy.iterations
    assert get_micro_profile("ci", iterations=7).iterations == 7
    assert get_micro_profile("ci", iterations=7).launch_iterations == 7
    assert get_micro_profile("ci", warmup=0).warmup == 0
    with pytest.raises(ValueError, match="unknown profile"):
        get_micro_profile("turbo")
    with pytest.raises(ValueError, match="at least 1"):
        get_micro_profile("ci", iterations=0)
    with pytest.raises(ValueError, match="unknown category"):
        list(build_cases(torch.device("cpu"), categories=["fft"]))
    with pytest.raises(ValueError, match="unknown backend"):
        run_micro(["tpu"], "ci")
    with pytest.raises(ValueError, match="unknown backend"):
        run_micro("cpu,tpu", "ci")


def test_size_labels() -> None:
    assert [size_label(n) for n in VECTOR_SIZES] == ["1K", "10K", "100K", "1M"]
    assert size_label(1) == "1" and size_label(1500) == "1500"


def test_coreml_and_unavailable_backends_are_skipped_with_a_reason(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from workloads.backends.torch_backend import CudaBackend

    monkeypatch.setattr(CudaBackend, "available",
                        lambda self: Availability.no("no NVIDIA GPU (test)"))
    run = run_micro(["coreml-ane", "cuda"], get_micro_profile("ci", iterations=1))
    assert run.results == [] and not run.failures
    assert run.skipped == {"coreml-ane": COREML_SKIP_REASON, "cuda": "no NVIDIA GPU (test)"}
    assert "Core ML" in COREML_SKIP_REASON and not run.ok


def test_one_failing_op_is_recorded_and_the_suite_goes_on(monkeypatch: pytest.MonkeyPatch) -> None:
    import dataclasses

    import workloads.micro.measure as micro

    real = micro.build_cases

    def refuse() -> Callable[[], object]:
        raise RuntimeError("\"gelu_out\" not implemented for 'Half'")

    def patched(*args: Any, **kwargs: Any) -> Any:
        for case in real(*args, **kwargs):
            yield dataclasses.replace(case, setup=refuse) if (case.op, case.n) == ("gelu", 1000) \
                else case

    monkeypatch.setattr(micro, "build_cases", patched)
    run = run_micro(["cpu"], get_micro_profile("ci", iterations=2))
    assert len(run.results) == ROWS_PER_BACKEND - 1
    assert run.failures == {"cpu": "GELU 1K: unsupported_precision: RuntimeError: "
                                   "\"gelu_out\" not implemented for 'Half'"}
    assert run.results[-1].category == "launch"  # it went on to the end
    assert not run.ok


def test_unknown_dtype_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown dtype"):
        run_micro(["cpu"], "ci", dtype="fp8")
    with pytest.raises(ValueError, match="unknown dtype"):
        run_micro_in_worker(["cpu"], "ci", dtype="fp8")


# --- timing on an asynchronous device ---------------------------------------------------------


class FakeDevice:
    """A device whose work completes only when the host synchronises (or an event is reached).

    Host time advances by `launch_s` per launch; queued ops run back to back on the device
    timeline, `cost_s` each, an op starting no earlier than its launch ends. Nothing is done
    until `synchronize()` moves the host clock past the end of the queue.
    """

    def __init__(self, cost_s: float, launch_s: float = 1e-6) -> None:
        self.cost_s = cost_s
        self.launch_s = launch_s
        self.host = 0.0
        self.busy_until = 0.0
        self.syncs = 0

    def now(self) -> float:
        return self.host

    def launch(self) -> None:
        self.host += self.launch_s  # the op reaches the device once its launch is done
        start = max(self.busy_until, self.host)
        self.busy_until = start + self.cost_s

    def synchronize(self) -> None:
        self.syncs += 1
        self.host = max(self.host, self.busy_until)


class FakeEventClock:
    """EventClock's contract on the fake device: a mark is a position on the device timeline."""

    def __init__(self, device: FakeDevice) -> None:
        self.device = device

    def sync(self) -> None:
        self.device.synchronize()

    def mark(self) -> float:
        return max(self.device.busy_until, self.device.host)

    def drain(self, marks: Any) -> list[float]:
        self.device.synchronize()
        return [b - a for a, b in itertools.pairwise(marks)]


def fake_case(device: FakeDevice, sync_each: bool = False) -> MicroCase:
    def setup() -> Callable[[], object]:
        return device.launch

    return MicroCase("matmul", "fake", "Fake", "1", 1, 10**9, 10**9, setup, sync_each=sync_each)


def matches_device_time(result: MicroResult, cost_s: float) -> bool:
    return result.median_s == pytest.approx(cost_s, rel=0.01) and \
        result.min_s == pytest.approx(cost_s, rel=0.01)


@pytest.mark.parametrize("kind", ["sync", "event"])
def test_measures_device_time_not_launch_time(kind: str) -> None:
    device = FakeDevice(cost_s=2e-3)
    clock: StepClock = SyncClock(device.synchronize, device.now) if kind == "sync" \
        else FakeEventClock(device)
    result = measure_case(fake_case(device), clock, warmup=3, iterations=20, now=device.now)
    assert matches_device_time(result, 2e-3)
    assert result.max_s == pytest.approx(2e-3, rel=0.01)  # warm-up work did not leak in
    assert result.gflops == pytest.approx(10**9 / 2e-3 / 1e9, rel=0.01)
    # The warm-up is timed apart, and it includes its device work (synchronised).
    assert result.warmup_s == pytest.approx(3 * 2e-3, rel=0.01)


def test_skipping_sync_would_be_caught() -> None:
    """The same measurement with a clock that does not synchronise reads the launch time."""
    device = FakeDevice(cost_s=2e-3)
    broken = SyncClock(lambda: None, device.now)
    result = measure_case(fake_case(device), broken, warmup=3, iterations=20, now=device.now)
    assert result.median_s == pytest.approx(device.launch_s)
    assert not matches_device_time(result, 2e-3)  # the check above fails on it
    assert result.gflops is not None and result.gflops > 1000  # and it would claim 1 PFLOP/s


def test_launch_overhead_synchronises_every_iteration_even_with_events() -> None:
    device = FakeDevice(cost_s=5e-6, launch_s=20e-6)
    result = measure_case(fake_case(device, sync_each=True), FakeEventClock(device), warmup=2,
                          iterations=30, now=device.now)
    # launch + execute per iteration, measured on the host across a synchronise
    assert result.median_s == pytest.approx(25e-6, rel=0.01)
    assert device.syncs >= 30
    assert result.gflops is None and result.gb_per_s is None


def test_suite_uses_the_backends_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every timed boundary of the real suite goes through the backend's clock."""
    calls = {"sync": 0}

    def counting_sync() -> None:
        calls["sync"] += 1

    monkeypatch.setattr(CpuBackend, "make_clock", lambda self: SyncClock(counting_sync))
    run = run_micro(["cpu"], get_micro_profile("ci", iterations=2, warmup=0))
    assert len(run.results) == ROWS_PER_BACKEND
    # per case: a sync before warm-up, after warm-up, 1 + iterations marks, and one at the end
    assert calls["sync"] >= ROWS_PER_BACKEND * (2 + 3 + 1)


# --- the spawned worker -----------------------------------------------------------------------


class _KillingClock(SyncClock):
    """A CPU clock that SIGKILLs its process at the `limit`-th timed boundary."""

    def __init__(self, limit: int) -> None:
        super().__init__(lambda: None)
        self.limit = limit
        self.count = 0

    def mark(self) -> float:
        self.count += 1
        if self.count >= self.limit:
            os.kill(os.getpid(), signal.SIGKILL)
        return super().mark()


class MicroKillerBackend(CpuBackend):
    """The CPU backend whose clock SIGKILLs the worker mid-suite (a native crash)."""

    name = "micro-killer-fake"

    def make_clock(self) -> StepClock:
        return _KillingClock(100)  # 10 iterations: 11 marks a case, killed in the 10th case


class MicroPlainBackend(CpuBackend):
    """The CPU backend under another name: a second backend that must not start after a stop."""

    name = "micro-plain-fake"


class MicroUnavailableBackend(CpuBackend):
    name = "micro-unavailable-fake"

    def available(self) -> Availability:
        return Availability.no("fake accelerator is not installed on this host")


def register(monkeypatch: pytest.MonkeyPatch, *classes: type[CpuBackend]) -> None:
    entries = [f"{cls.name}={cls.__module__}:{cls.__qualname__}" for cls in classes]
    monkeypatch.setenv(EXTRA_BACKENDS_ENV, ",".join(entries))


@pytest.mark.slow
def test_worker_runs_the_suite_in_a_child_process() -> None:
    run = run_micro_in_worker(["cpu", "coreml-ane"], "ci")
    assert run.ok, run.failures
    assert len(run.results) == ROWS_PER_BACKEND
    assert run.devices["cpu"].startswith("cpu")
    assert run.skipped == {"coreml-ane": COREML_SKIP_REASON}
    assert {r.category for r in run.results} == set(CATEGORIES)


@pytest.mark.slow
def test_worker_killed_by_a_signal_is_a_recorded_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    register(monkeypatch, MicroKillerBackend, MicroUnavailableBackend)
    seen: list[MicroResult] = []
    run = run_micro_in_worker(
        ["micro-unavailable-fake", "micro-killer-fake", "cpu"],
        get_micro_profile("ci", iterations=10, warmup=1), on_result=seen.append,
    )
    assert run.skipped == {"micro-unavailable-fake": "fake accelerator is not installed on this host"}
    assert run.failures["micro-killer-fake"].startswith("killed:")
    assert "SIGKILL" in run.failures["micro-killer-fake"]
    killed = [r for r in run.results if r.backend == "micro-killer-fake"]
    assert len(killed) == 9  # what it measured before dying (9 cases of 11 marks) is kept
    assert len([r for r in run.results if r.backend == "cpu"]) == ROWS_PER_BACKEND
    assert seen == run.results
    assert not run.ok


@pytest.mark.slow
def test_worker_that_overruns_is_killed() -> None:
    profile = get_micro_profile("heavy", iterations=1_000_000)
    run = run_micro_in_worker(["cpu"], profile, timeout_s=6.0)
    assert run.failures["cpu"].startswith("overrun:")
    assert run.seconds < 30


def stop_once_a_worker_is_busy(stop: threading.Event, cpu_seconds: float) -> None:
    """Set `stop` (in a thread) once a child process of this one has used `cpu_seconds` of CPU.

    CPU time, not a timer: on a loaded 2-core machine a worker's start took over the 10 s a
    timer gave it, and the stop landed before the worker's first case."""
    def watch() -> None:
        me = psutil.Process()
        while not stop.is_set():
            for child in me.children(recursive=True):
                try:
                    used = child.cpu_times()
                except psutil.Error:
                    continue
                if used.user + used.system >= cpu_seconds:
                    stop.set()
            stop.wait(0.1)

    threading.Thread(target=watch, daemon=True).start()


@pytest.mark.slow
def test_stop_kills_the_worker_and_runs_nothing_more(monkeypatch: pytest.MonkeyPatch) -> None:
    register(monkeypatch, MicroPlainBackend)
    stop = threading.Event()
    # 12 CPU-seconds: past the worker's start (torch import, ~3 s) and its 3 s device warm-up
    # (on every core), inside the first case's minutes (10^8 iterations of a 64x64 matmul, at
    # ~6 us each here; at 10^6 the case ended 1 s after a stop and the worker stopped cleanly)
    stop_once_a_worker_is_busy(stop, cpu_seconds=12.0)
    try:
        run = run_micro_in_worker(["cpu", "micro-plain-fake"],
                                  get_micro_profile("heavy", iterations=100_000_000), stop=stop,
                                  categories=("matmul",))
    finally:
        stop.set()
    assert run.stopped
    assert run.failures == {"cpu": run.failures["cpu"]}
    assert run.failures["cpu"].startswith("stopped:")
    assert "micro-plain-fake" not in run.backends() and "micro-plain-fake" not in run.skipped
    assert run.seconds < 40


@pytest.mark.slow
def test_stop_between_cases_keeps_what_was_measured(monkeypatch: pytest.MonkeyPatch) -> None:
    """A stop reaches the worker, which ends after its current case: the cases measured so far
    are kept, nothing is killed, and no further backend starts."""
    register(monkeypatch, MicroPlainBackend)
    stop = threading.Event()
    seen: list[MicroResult] = []

    def on_result(result: MicroResult) -> None:
        seen.append(result)
        if len(seen) == 3:
            stop.set()

    run = run_micro_in_worker(["cpu", "micro-plain-fake"], get_micro_profile("ci", iterations=5),
                              on_result=on_result, stop=stop)
    assert run.stopped and not run.failures
    assert 3 <= len(run.results) < ROWS_PER_BACKEND and run.results == seen
    assert {r.backend for r in run.results} == {"cpu"}


def test_workloads_micro_does_not_import_the_daemon() -> None:
    code = ("import sys, workloads.micro; "
            "sys.exit(any(m == 'daemon' or m.startswith('daemon.') for m in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code], check=False, timeout=120).returncode == 0
