"""RotationRunner in this process: fallback chains, slice plans, mismatches, speedups.

Slices run in-process (`in_process=True`) on the ci shapes; the worker processes themselves are
covered in test_runner.py.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import fake_backends as fb
import pytest

import workloads.rotation as rotation
from workloads.backends import get_backend
from workloads.phases import PROFILES, get_profile
from workloads.rotation import (
    RotationPlan,
    RotationRunner,
    SliceContext,
    _Lane,
    _slice_plan,
    speedups,
    summarize,
)
from workloads.runner import PhaseResult, SliceResult, run_slice
from workloads.worker import Event, SliceRequest


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory: pytest.TempPathFactory,
                   monkeypatch: pytest.MonkeyPatch) -> Path:
    """float64 references go to a per-module temporary cache, computed once per module."""
    path = tmp_path_factory.getbasetemp() / "soakd-cache-rotation"
    monkeypatch.setenv("SOAKD_CACHE_DIR", str(path))
    return path


@pytest.fixture
def fakes(monkeypatch: pytest.MonkeyPatch) -> None:
    fb.register(monkeypatch, **{
        fb.PlainBackend.name: fb.PlainBackend,
        fb.UnavailableBackend.name: fb.UnavailableBackend,
        fb.NoHalfBackend.name: fb.NoHalfBackend,
        fb.OomBackend.name: fb.OomBackend,
        fb.HalfRefusingBackend.name: fb.HalfRefusingBackend,
        fb.PerturbingBackend.name: fb.PerturbingBackend,
    })
    # Every fake falls back to the CPU, as cuda and mps do.
    real_chain = rotation.fallback_chain
    monkeypatch.setattr(rotation, "fallback_chain",
                        lambda name: [name, "cpu"] if name.endswith("-fake") else real_chain(name))


def run_plan(backends: list[str], precision: str = "fp32", phases: list[str] | None = None,
             steps: int = 3) -> tuple[list[PhaseResult], list[tuple[SliceContext, Event]]]:
    events: list[tuple[SliceContext, Event]] = []
    plan = RotationPlan(profile=PROFILES["ci"], backends=backends, phases=phases or ["matmul"],
                        precisions=[precision], steps=steps, in_process=True)
    results = RotationRunner(plan, lambda c, e: events.append((c, e))).run()
    return results, events


def test_extra_backend_hook_resolves_and_cannot_shadow(monkeypatch: pytest.MonkeyPatch) -> None:
    fb.register(monkeypatch, **{"cpu": fb.OomBackend, fb.OomBackend.name: fb.OomBackend})
    assert isinstance(get_backend(fb.OomBackend.name), fb.OomBackend)
    assert type(get_backend("cpu")).__name__ == "CpuBackend"  # built-in names win
    with pytest.raises(ValueError, match="unknown backend 'nothing-here'"):
        get_backend("nothing-here")


def test_cpu_runs_clean() -> None:
    results, _ = run_plan(["cpu"], phases=["matmul", "conv", "attention"])
    assert [(r.phase, r.backend, r.requested_backend) for r in results] == [
        ("matmul", "cpu", "cpu"), ("conv", "cpu", "cpu"), ("attention", "cpu", "cpu")]
    for result in results:
        assert result.steps == 3
        assert result.checks >= 1 and result.mismatches == 0
        assert result.max_relative_error < 1e-4
        assert result.fallback is None and not result.failures
        assert result.flop == 3 * PROFILES["ci"].spec(result.phase).flop_per_step()
        assert result.device.startswith("cpu")


def test_unavailable_mps_falls_back_to_cpu() -> None:
    """The real chain: mps → cpu, and mps is unavailable on Linux."""
    results, events = run_plan(["mps"])
    (result,) = results
    assert (result.requested_backend, result.backend, result.steps) == ("mps", "cpu", 3)
    assert result.fallback is not None
    assert result.fallback["from"] == "mps" and result.fallback["to"] == "cpu"
    assert result.fallback["reason"] == "unavailable"
    assert "macOS" in result.fallback["detail"]
    hops = [e for _, e in events if e["type"] == "fallback"]
    assert [(e["from"], e["to"], e["reason"]) for e in hops] == [("mps", "cpu", "unavailable")]
    assert result.to_dict()["fallback"]["reason"] == "unavailable"


@pytest.mark.parametrize(
    ("backend", "precision", "reason", "runs_first"),
    [
        (fb.UnavailableBackend.name, "fp32", "unavailable", False),
        (fb.NoHalfBackend.name, "fp16", "unsupported_precision", False),
        (fb.HalfRefusingBackend.name, "fp16", "unsupported_precision", True),
        (fb.OomBackend.name, "fp32", "out_of_memory", True),
    ],
)
def test_failing_backend_moves_phase_to_next(fakes: None, backend: str, precision: str,
                                             reason: str, runs_first: bool) -> None:
    results, events = run_plan([backend], precision=precision)
    by_backend = {r.backend: r for r in results}
    cpu = by_backend["cpu"]
    assert cpu.requested_backend == backend
    assert cpu.precision == precision
    assert cpu.steps == 3 and cpu.mismatches == 0
    assert cpu.fallback is not None
    assert (cpu.fallback["from"], cpu.fallback["to"], cpu.fallback["reason"]) == (
        backend, "cpu", reason)
    if runs_first:
        # It prepared and ran, failed, and is recorded with its failure.
        failed = by_backend[backend]
        assert failed.steps == 0
        assert failed.failures == Counter({reason: 1})
        assert failed.success_rate == 0.0
        assert failed.fallback is None
    else:
        # Refused by its probe: nothing ran there.
        assert backend not in by_backend
        probe = [e for c, e in events if e["type"] == "failure" and c.backend == backend]
        assert probe and probe[0]["stage"] == "probe" and probe[0]["reason"] == reason


def test_oom_is_survived_and_later_phases_still_run(fakes: None) -> None:
    results, _ = run_plan([fb.OomBackend.name], phases=["matmul", "attention"])
    assert [(r.phase, r.backend) for r in results] == [
        ("matmul", fb.OomBackend.name), ("matmul", "cpu"),
        ("attention", fb.OomBackend.name), ("attention", "cpu")]
    assert all(r.steps == 3 for r in results if r.backend == "cpu")


def test_numeric_mismatch_is_counted(fakes: None) -> None:
    request = SliceRequest(spec=PROFILES["ci"].attention, backend=fb.PerturbingBackend.name,
                           duration_s=None, max_steps=4, warmup_steps=1, check_every=1,
                           flush_interval_s=0.0)
    piece = run_slice(request, in_process=True)
    assert piece.failure is None and piece.steps == 4
    assert piece.checks == 5  # after warm-up, then after each one-step segment
    assert piece.mismatches == piece.checks
    assert piece.max_relative_error == pytest.approx(fb.PERTURBATION, rel=1e-3)
    # The honest backend on the same request: checked as often, never off.
    honest = run_slice(SliceRequest(**{**request.__dict__, "backend": "cpu"}), in_process=True)
    assert honest.checks == 5 and honest.mismatches == 0

    results, _ = run_plan([fb.PerturbingBackend.name, "cpu"])
    counts = {r.backend: r.mismatches for r in results}
    assert counts[fb.PerturbingBackend.name] >= 1 and counts["cpu"] == 0
    row = summarize(results)[0]
    assert row["mismatches"] >= 1 and row["max_relative_error"] == pytest.approx(0.05, rel=1e-3)


# --- slice plans -------------------------------------------------------------------------


class Recorder:
    """A slice runner that records what it was asked to run and runs nothing."""

    def __init__(self, barrier: threading.Barrier | None = None) -> None:
        self.calls: list[tuple[str, float | None, str, int]] = []
        self.barrier = barrier
        self._lock = threading.Lock()

    def __call__(self, request: SliceRequest, on_event: Any, stop: threading.Event,
                 in_process: bool = False) -> SliceResult:
        with self._lock:
            self.calls.append((request.backend, request.duration_s, request.precision,
                               request.warmup_steps))
        if self.barrier is not None and request.backend != "cpu":
            # Both lanes of a concurrent round must be in here at once, or this times out.
            self.barrier.wait(timeout=5)
        piece = SliceResult(request)
        piece.absorb({"type": "steps", "durations": [0.1], "seconds": 0.1, "memory": {}})
        return piece


def plan_for(mode: str) -> RotationPlan:
    profile = get_profile("ci", {"phase_seconds": 4, "slice_seconds": 1,
                                 "cpu_baseline_seconds": 0.5})
    return RotationPlan(profile=profile, backends=["plain", "plain2"], phases=["conv"],
                        precisions=["fp16"], mode=mode)  # type: ignore[arg-type]


@pytest.fixture
def two_plain(monkeypatch: pytest.MonkeyPatch) -> None:
    fb.register(monkeypatch, plain=fb.PlainBackend, plain2=fb.PlainBackend)


@pytest.mark.parametrize(
    ("mode", "order"),
    [
        ("alternate", ["plain", "plain2", "plain", "plain2"]),
        ("sequential", ["plain", "plain", "plain2", "plain2"]),
    ],
)
def test_slice_order(two_plain: None, mode: str, order: list[str]) -> None:
    recorder = Recorder()
    results = RotationRunner(plan_for(mode), slice_runner=recorder).run()
    # The CPU baseline comes first, short, in fp32 with one warm-up step.
    assert recorder.calls[0] == ("cpu", 0.5, "fp32", 1)
    assert [c[0] for c in recorder.calls[1:]] == order
    assert all(c[1:] == (1.0, "fp16", PROFILES["ci"].warmup_steps) for c in recorder.calls[1:])
    assert [(r.backend, r.slices, r.baseline) for r in results] == [
        ("cpu", 1, True), ("plain", 2, False), ("plain2", 2, False)]


def test_concurrent_slices_run_together(two_plain: None) -> None:
    recorder = Recorder(threading.Barrier(2))
    started = time.monotonic()
    results = RotationRunner(plan_for("concurrent"), slice_runner=recorder).run()
    assert time.monotonic() - started < 5
    assert recorder.calls[0][0] == "cpu"
    rest = [c[0] for c in recorder.calls[1:]]
    # Each lane gets the whole phase (4 slices of 1 s), both lanes in every round.
    assert len(rest) == 8
    assert all(sorted(rest[i:i + 2]) == ["plain", "plain2"] for i in range(0, 8, 2))
    assert [(r.backend, r.slices) for r in results] == [("cpu", 1), ("plain", 4), ("plain2", 4)]


def test_slice_plan_shapes() -> None:
    lanes = [_Lane("cpu", ["cpu"], baseline=True), _Lane("a", ["a"]), _Lane("b", ["b"])]
    plan = plan_for("alternate")
    names = [[lane.requested for lane in r] for r in _slice_plan(plan, lanes)]
    assert names == [["cpu"], ["a"], ["b"], ["a"], ["b"]]
    plan.mode = "concurrent"
    names = [[lane.requested for lane in r] for r in _slice_plan(plan, lanes)]
    assert names == [["cpu"]] + [["a", "b"]] * 4
    plan.steps = 5  # a step count: one slice per backend, whatever the mode
    names = [[lane.requested for lane in r] for r in _slice_plan(plan, lanes)]
    assert names == [["cpu"], ["a"], ["b"]]


def test_stop_ends_the_rotation(two_plain: None) -> None:
    stop = threading.Event()
    recorder = Recorder()

    def on_event(context: SliceContext, event: Event) -> None:
        if event["type"] == "slice_end" and context.backend == "plain":
            stop.set()

    plan = plan_for("alternate")
    plan.phases = ["matmul", "conv"]
    RotationRunner(plan, on_event, stop, slice_runner=recorder).run()
    assert [c[0] for c in recorder.calls] == ["cpu", "plain"]


# --- speedups -----------------------------------------------------------------------------


def result(phase: str, backend: str, precision: str, steps: int, seconds: float) -> PhaseResult:
    out = PhaseResult(phase=phase, requested_backend=backend, backend=backend,
                      precision=precision, flop_per_step=1000)
    out.steps, out.seconds = steps, seconds
    return out


def test_speedups() -> None:
    results = [
        result("matmul", "cpu", "fp32", 10, 1.0),     # 10 steps/s
        result("matmul", "cuda", "fp32", 300, 1.5),   # 200 steps/s
        result("matmul", "cpu", "fp16", 5, 1.0),      # 5 steps/s
        result("matmul", "cuda", "fp16", 400, 1.0),   # against cpu fp16
        result("matmul", "cuda", "bf16", 100, 1.0),   # no cpu bf16: against cpu fp32
        result("conv", "cuda", "fp32", 10, 1.0),      # no cpu result in this phase
        result("attention", "cpu", "fp32", 0, 0.0),   # a cpu run with no steps is no base
        result("attention", "cuda", "fp32", 10, 1.0),
        result("matmul", "mps", "fp32", 0, 0.0),      # no steps of its own
    ]
    assert speedups(results) == {
        0: pytest.approx(1.0), 1: pytest.approx(20.0), 2: pytest.approx(1.0),
        3: pytest.approx(80.0), 4: pytest.approx(10.0), 5: None, 6: None, 7: None, 8: None}
    rows = summarize(results)
    assert rows[3]["speedup_vs_cpu"] == pytest.approx(80.0)
    assert rows[1]["flop_per_second"] == pytest.approx(200_000.0)
