"""Step-latency quantiles (daemon/latency.py): within 10 % of the exact quantiles of the recorded
step durations anywhere from 20 µs to 600 s, over a stated window, present only while work runs."""

from __future__ import annotations

import random
import shutil
import subprocess

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from daemon.exporter import WorkloadMetrics
from daemon.latency import CHUNK_SECONDS, WINDOW_SECONDS, LatencyWindow
from workloads.phases import PROFILES
from workloads.protocol import MemorySample, Steps
from workloads.rotation import SliceContext, SliceEnded, SliceStarted
from workloads.runner import SliceResult
from workloads.timing import percentile

CI = PROFILES["ci"]
MEMORY = MemorySample(rss=100, peak_rss=200)
CTX = SliceContext("matmul", "cpu", "cpu", "fp32", CI.matmul, "0")
LABELS = {"phase": "matmul", "backend": "cpu", "precision": "fp32", "device": "0"}
PROMTOOL = shutil.which("promtool")


def segment(durations: list[float], seconds: float | None = None) -> Steps:
    total = sum(durations) if seconds is None else seconds
    return Steps(steps=len(durations), durations=tuple(durations), seconds=total, started=0.0,
                 ended=total, memory=MEMORY)


def quantile(registry: CollectorRegistry, q: str) -> float | None:
    return registry.get_sample_value("soakd_step_latency_seconds", {**LABELS, "quantile": q})


def exact(durations: list[float], q: float) -> float:
    return percentile(sorted(durations), q * 100)


def test_every_step_at_exactly_0_3_s_reads_0_3_s() -> None:
    """The case the histogram got wrong: buckets 0.25-0.5 gave p50 0.375 s and p99 0.4975 s."""
    registry = CollectorRegistry()
    metrics = WorkloadMetrics(registry)
    metrics.begin_phase()
    metrics.handle(CTX, SliceStarted(1, 60.0, 0.0, 0, 1))
    for _ in range(40):
        metrics.handle(CTX, segment([0.3]))
    for q in ("0.5", "0.9", "0.99", "1.0"):
        assert quantile(registry, q) == pytest.approx(0.3, rel=1e-12), q


@pytest.mark.parametrize("centre", [20e-6, 1e-3, 0.3, 50.0, 600.0])
def test_quantiles_within_one_percent_of_exact_across_the_range(centre: float) -> None:
    """Log-normal durations around 20 µs ... 600 s: p50/p90/p99/max against the exact values of
    the same durations (linear interpolation between order statistics, as numpy does)."""
    rng = random.Random(int(centre * 1e6))
    durations = [centre * rng.lognormvariate(0.0, 0.3) for _ in range(5000)]
    window = LatencyWindow()
    window.add(durations, seconds=1.0)  # one segment: the window holds all of it
    got = window.quantiles()
    for q in (0.5, 0.9, 0.99, 1.0):
        assert got[q] == pytest.approx(exact(durations, q), rel=0.01), q


def test_log_uniform_from_20_us_to_600_s() -> None:
    rng = random.Random(7)
    durations = [20e-6 * (600 / 20e-6) ** rng.random() for _ in range(20000)]
    window = LatencyWindow()
    window.add(durations, seconds=1.0)
    for q, value in window.quantiles().items():
        assert value == pytest.approx(exact(durations, q), rel=0.01), q


def test_few_heavy_steps_interpolate_like_the_exact_quantile() -> None:
    """Heavy CPU steps of 30-70 s: a minute holds one or two of them. The quantile of two steps
    lies between them, not at the smaller one."""
    window = LatencyWindow()
    window.add([30.0], 30.0)
    window.add([70.0], 70.0)  # 100 s measured: the first step's chunk ended 70 s ago
    assert window.quantiles() == {q: pytest.approx(70.0) for q in (0.5, 0.9, 0.99, 1.0)}
    window = LatencyWindow()
    window.add([30.0], 30.0)
    window.add([50.0], 20.0)  # a sampled group: 20 s measured, both steps in the window
    got = window.quantiles()
    assert got[0.5] == pytest.approx(40.0, rel=0.01)
    assert got[0.99] == pytest.approx(exact([30.0, 50.0], 0.99), rel=0.01)


def test_the_window_is_the_last_minute_of_measured_time() -> None:
    window = LatencyWindow()
    for _ in range(240):  # 60 s of 0.3 s steps in 0.3 s segments
        window.add([0.3], 0.3)
    for _ in range(110):  # then 66 s of 0.6 s steps
        window.add([0.6], 0.6)
    # the smallest step in the window is a 0.6 s one: nothing older than the last minute's chunks
    assert window.quantiles((0.0, 0.5)) == {0.0: pytest.approx(0.6), 0.5: pytest.approx(0.6)}
    covered = window.count * 0.6
    assert WINDOW_SECONDS <= covered <= WINDOW_SECONDS + CHUNK_SECONDS + 0.6


def test_quantiles_exist_only_while_a_slice_of_the_series_runs() -> None:
    registry = CollectorRegistry()
    metrics = WorkloadMetrics(registry)
    metrics.begin_phase()
    result = SliceResult(CI.matmul, "cpu", "fp32", turn_started=0.0, turn_ended=2.0)
    assert quantile(registry, "0.5") is None
    metrics.handle(CTX, SliceStarted(1, 1.0, 0.0, 0, 2))
    assert quantile(registry, "0.5") is None  # nothing measured yet: no value, not 0
    metrics.handle(CTX, segment([0.2, 0.2]))
    assert quantile(registry, "0.5") == pytest.approx(0.2)
    metrics.handle(CTX, SliceEnded(result))  # another backend's slice, or no work
    assert quantile(registry, "0.5") is None
    assert registry.get_sample_value("soakd_throughput_flop_per_second", LABELS) is None
    metrics.handle(CTX, SliceStarted(2, 1.0, 2.0, 1, 2))
    # its last measured minute is known from the first step of the new slice on
    assert quantile(registry, "0.5") == pytest.approx(0.2)
    assert registry.get_sample_value("soakd_throughput_flop_per_second", LABELS) == pytest.approx(
        CI.matmul.flop_per_step() / 0.2)
    metrics.end_phase([tuple(LABELS.values())])  # type: ignore[list-item]
    assert quantile(registry, "0.5") is None
    metrics.begin_phase()
    metrics.handle(CTX, SliceStarted(3, 1.0, 0.0, 0, 1))
    assert quantile(registry, "0.5") is None  # a new phase does not inherit the last one's steps


def test_a_rotation_cut_short_hides_the_live_series() -> None:
    registry = CollectorRegistry()
    metrics = WorkloadMetrics(registry)
    metrics.begin_phase()
    metrics.handle(CTX, SliceStarted(1, 1.0, 0.0, 0, 1))
    metrics.handle(CTX, segment([0.1] * 3))
    metrics.rotation_finished("stopped", 1.0)  # no SliceEnded came
    assert quantile(registry, "0.5") is None
    assert registry.get_sample_value("soakd_throughput_flop_per_second", LABELS) is None


def test_measured_seconds_count_every_step_where_latencies_are_sampled() -> None:
    """Sub-ms CUDA steps: durations are a 1-in-16 sample of groups, so the histogram's _sum is not
    the measured time; soakd_measured_seconds_total is."""
    registry = CollectorRegistry()
    metrics = WorkloadMetrics(registry)
    sampled = Steps(steps=1600, durations=(1e-4,) * 100, seconds=0.16, started=0.0, ended=0.16,
                    memory=MEMORY, sampled=True)
    metrics.handle(CTX, sampled)
    assert registry.get_sample_value("soakd_measured_seconds_total", LABELS) == pytest.approx(0.16)
    assert registry.get_sample_value("soakd_step_duration_seconds_sum", LABELS) == pytest.approx(0.01)


def test_histogram_buckets_reach_600_s() -> None:
    registry = CollectorRegistry()
    metrics = WorkloadMetrics(registry)
    metrics.handle(CTX, segment([70.0, 500.0]))
    below = registry.get_sample_value("soakd_step_duration_seconds_bucket", {**LABELS, "le": "600.0"})
    assert below == 2


@pytest.mark.skipif(PROMTOOL is None, reason="promtool (Debian package prometheus) is not installed")
def test_exposition_with_quantiles_passes_promtool() -> None:
    registry = CollectorRegistry()
    metrics = WorkloadMetrics(registry)
    metrics.begin_phase()
    metrics.handle(CTX, SliceStarted(1, 1.0, 0.0, 0, 1))
    metrics.handle(CTX, segment([0.3, 0.31]))
    text = generate_latest(registry).decode()
    assert 'quantile="0.99"' in text
    assert PROMTOOL is not None
    check = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True, text=True,
                           check=False)
    assert check.returncode == 0 and check.stdout == "" and check.stderr == "", check.stdout + check.stderr
