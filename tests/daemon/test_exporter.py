"""WorkloadMetrics on typed rotation events: every figure from the slice's own context."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
from prometheus_client import CollectorRegistry

from daemon.exporter import WorkloadMetrics
from workloads.micro.results import MicroResult
from workloads.phases import PROFILES
from workloads.protocol import MemorySample, Prepared, RunConfig, Steps
from workloads.rotation import SliceContext, SliceEnded, SliceStarted
from workloads.runner import SliceResult

CI = PROFILES["ci"]
HEAVY = PROFILES["heavy"]
MEMORY = MemorySample(rss=100, peak_rss=200)


def context(spec=CI.conv, backend: str = "cpu", device: str = "0") -> SliceContext:
    return SliceContext(spec.name, backend, backend, "fp32", spec, device)


def labels(ctx: SliceContext) -> dict[str, str]:
    return {"phase": ctx.phase, "backend": ctx.backend, "precision": ctx.precision, "device": ctx.device}


def steps(count: int, seconds: float = 1.0) -> Steps:
    return Steps(steps=count, durations=(seconds / count,) * count, seconds=seconds, started=0.0, ended=seconds,
                 memory=MEMORY)


def test_flop_comes_from_the_slices_own_spec() -> None:
    """Ten ci conv steps are 10 x the ci conv FLOP, whatever the live config says (a reload to
    heavy mid-rotation once exported heavy FLOP per step for ci steps)."""
    registry = CollectorRegistry()
    metrics = WorkloadMetrics(registry)
    ctx = context()
    metrics.handle(ctx, steps(10))
    flop = registry.get_sample_value("soakd_flop_total", labels(ctx))
    assert flop == 10 * CI.conv.flop_per_step()
    # the same series fed a heavy slice counts heavy FLOP for that slice only
    metrics.handle(context(HEAVY.conv), steps(1))
    assert registry.get_sample_value("soakd_flop_total", labels(ctx)) == flop + HEAVY.conv.flop_per_step()


def test_load_gap_and_turn_time_are_counted_per_series() -> None:
    registry = CollectorRegistry()
    metrics = WorkloadMetrics(registry)
    ctx = context(device="1")
    result = SliceResult(CI.conv, "cpu", "fp32", turn_started=10.0, turn_ended=13.0)
    result.seconds = 2.5
    metrics.handle(ctx, SliceStarted(1, 3.0, 10.0, 0, 1))
    assert registry.get_sample_value("soakd_phase_active", labels(ctx)) == 1
    metrics.handle(ctx, SliceEnded(result))
    assert registry.get_sample_value("soakd_load_gap_seconds_total", labels(ctx)) == pytest.approx(0.5)
    assert registry.get_sample_value("soakd_phase_seconds_total", labels(ctx)) == pytest.approx(3.0)
    assert registry.get_sample_value("soakd_phase_active", labels(ctx)) == 0


def test_run_info_follows_the_run_configuration() -> None:
    registry = CollectorRegistry()
    metrics = WorkloadMetrics(registry)
    ctx = context(CI.attention)
    run = RunConfig.for_spec(CI.attention, "cpu", "fp32")
    metrics.handle(ctx, Prepared(run, "cpu", 0.1, info={}))
    info = {**labels(ctx), "run_key": run.key, "shapes": run.shapes, "technique": "eager",
            "memory_format": "contiguous", "variant": "standard", "tf32": "false"}
    assert registry.get_sample_value("soakd_run_info", info) == 1
    assert registry.get_sample_value("soakd_compute_plan_ane_ratio", {**labels(ctx), "variant": "standard"}) is None
    other = RunConfig.for_spec(replace(CI.attention, variant="ane"), "cpu", "fp32")
    metrics.handle(ctx, Prepared(other, "cpu", 0.1, info={"compute_plan": {"ane": 0.75}}))
    assert registry.get_sample_value("soakd_run_info", info) is None  # the old one is gone
    assert registry.get_sample_value("soakd_run_info", {**info, "run_key": other.key, "shapes": other.shapes,
                                                        "variant": "ane"}) == 1
    assert registry.get_sample_value("soakd_compute_plan_ane_ratio", {**labels(ctx), "variant": "ane"}) == 0.75


def test_micro_results_are_exported() -> None:
    """soakd_micro_seconds once read a key that did not exist and was never exported."""
    registry = CollectorRegistry()
    metrics = WorkloadMetrics(registry)
    row = MicroResult(backend="cpu", device="cpu", category="matmul", op="matmul", label="MatMul",
                      size="64x64", n=64, dtype="fp32", iterations=3, warmup=1, warmup_s=0.1,
                      avg_s=2e-5, min_s=1e-5, max_s=3e-5, median_s=2e-5, flop=2 * 64**3,
                      bytes=3 * 64 * 64 * 4, gflops=26.2, gb_per_s=2.4)
    metrics.micro_results([row])
    sample = {"backend": "cpu", "category": "matmul", "op": "matmul", "size": "64x64"}
    assert registry.get_sample_value("soakd_micro_seconds", sample) == 2e-5
    assert registry.get_sample_value("soakd_micro_flop_per_second", sample) == pytest.approx(26.2e9)
    assert registry.get_sample_value("soakd_micro_runs_total") == 1
    assert not math.isnan(registry.get_sample_value("soakd_micro_bytes_per_second", sample) or math.nan)
