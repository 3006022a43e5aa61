"""RotationRunner in this process: fallback chains, slice plans, mismatches, speedups.

Slices run in-process (`in_process=True`) on the ci shapes; the worker processes themselves are
covered in test_runner.py.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import replace
from pathlib import Path

import fake_backends as fb
import pytest

import workloads.rotation as rotation
from workloads.backends import get_backend
from workloads.phases import PROFILES, get_profile
from workloads.protocol import Failure
from workloads.rotation import (
    BaselineReused,
    FallbackTaken,
    PhaseEnded,
    PhaseStarted,
    RotationEvent,
    RotationPlan,
    RotationResolved,
    RotationRunner,
    SliceContext,
    SliceEnded,
    SliceStarted,
    _Lane,
    _rounds,
)
from workloads.runner import PhaseResult, SliceRequest, run_slice, speedups, summarize


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
             steps: int = 3) -> tuple[list[PhaseResult], list[tuple[SliceContext | None, RotationEvent]]]:
    events: list[tuple[SliceContext | None, RotationEvent]] = []
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
    results, events = run_plan(["cpu"], phases=["matmul", "conv", "attention"])
    assert [(r.phase, r.backend, r.requested_backend) for r in results] == [
        ("matmul", "cpu", "cpu"), ("conv", "cpu", "cpu"), ("attention", "cpu", "cpu")]
    for result in results:
        assert result.steps == 3
        assert result.checks >= 1 and result.mismatches == 0
        assert result.max_relative_error < 1e-4
        assert result.fallback is None and not result.failures
        assert result.flop == 3 * PROFILES["ci"].spec(result.phase).flop_per_step()
        assert result.device.startswith("cpu")
        assert result.run is not None
        assert (result.run.phase, result.run.backend, result.run.device) == (result.phase, "cpu", "0")
        assert (result.run.technique, result.run.memory_format, result.run.tf32) == ("eager", "contiguous", False)
        assert f"batch={PROFILES['ci'].spec(result.phase).batch}" in result.run.shapes
    # a CPU-only host runs no separate CPU baseline
    assert not any(r.baseline for r in results)
    resolved = [e for _, e in events if isinstance(e, RotationResolved)]
    assert resolved and resolved[0].backends == ("cpu",) and resolved[0].precisions == ("fp32",)


def test_auto_resolves_to_the_cpu_here_with_fp32() -> None:
    """No GPU on this host: `auto` is the CPU, and `auto` precision on it is fp32."""
    plan = RotationPlan(profile=PROFILES["ci"], backends=["auto"], phases=["matmul"],
                        precisions=["auto"], steps=2, in_process=True)
    runner = RotationRunner(plan)
    (result,) = runner.run()
    assert runner.backends == ["cpu"] and runner.precisions == ["fp32"]
    assert result.precision == "fp32" and result.steps == 2


def test_unavailable_mps_falls_back_to_cpu() -> None:
    """The real chain: mps → cpu, and mps is unavailable on Linux."""
    results, events = run_plan(["mps"])
    (result,) = results
    assert (result.requested_backend, result.backend, result.steps) == ("mps", "cpu", 3)
    assert result.fallback is not None
    assert result.fallback["from"] == "mps" and result.fallback["to"] == "cpu"
    assert result.fallback["reason"] == "unavailable"
    assert "macOS" in result.fallback["detail"]
    hops = [e for _, e in events if isinstance(e, FallbackTaken)]
    assert [(e.from_backend, e.to_backend, e.reason) for e in hops] == [("mps", "cpu", "unavailable")]
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
        probe = [e for c, e in events if isinstance(e, Failure) and c is not None and c.backend == backend]
        assert probe and probe[0].stage == "probe" and probe[0].reason == reason


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
    honest = run_slice(replace(request, backend="cpu"), in_process=True)
    assert honest.checks == 5 and honest.mismatches == 0

    results, _ = run_plan([fb.PerturbingBackend.name, "cpu"])
    counts = {r.backend: r.mismatches for r in results}
    assert counts[fb.PerturbingBackend.name] >= 1 and counts["cpu"] == 0
    row = summarize(results)[0]
    assert row["mismatches"] >= 1 and row["max_relative_error"] == pytest.approx(0.05, rel=1e-3)


# --- slice plans -------------------------------------------------------------------------


def timed_plan(mode: str, backends: list[str] | None = None) -> RotationPlan:
    profile = get_profile("ci", {"phase_seconds": 0.4, "slice_seconds": 0.1,
                                 "cpu_baseline_seconds": 0.1})
    return RotationPlan(profile=profile, backends=backends or ["plain", "plain2"], phases=["matmul"],
                        precisions=["fp32"], mode=mode, in_process=True,  # type: ignore[arg-type]
                        cpu_baseline="before")


@pytest.fixture
def two_plain(monkeypatch: pytest.MonkeyPatch) -> None:
    fb.register(monkeypatch, plain=fb.PlainBackend, plain2=fb.PlainBackend)


def started_slices(events: list[tuple[SliceContext | None, RotationEvent]]) -> list[tuple[str, bool]]:
    return [(c.backend, c.baseline) for c, e in events if c is not None and isinstance(e, SliceStarted)]


@pytest.mark.parametrize(
    ("mode", "order"),
    [
        ("alternate", ["plain", "plain2", "plain", "plain2"]),
        ("sequential", ["plain", "plain", "plain2", "plain2"]),
    ],
)
def test_slice_order(two_plain: None, mode: str, order: list[str]) -> None:
    events: list[tuple[SliceContext | None, RotationEvent]] = []
    results = RotationRunner(timed_plan(mode), lambda c, e: events.append((c, e))).run()
    # The CPU baseline comes first, before the phase starts, in fp32.
    started = started_slices(events)
    assert started[0] == ("cpu", True)
    assert [b for b, _ in started[1:]] == order
    first_phase = next(i for i, (_, e) in enumerate(events) if isinstance(e, PhaseStarted))
    baseline_end = next(i for i, (c, e) in enumerate(events)
                        if isinstance(e, SliceEnded) and c is not None and c.baseline)
    assert baseline_end < first_phase  # never in the hot hour
    assert [(r.backend, r.slices, r.baseline) for r in results] == [
        ("cpu", 1, True), ("plain", 2, False), ("plain2", 2, False)]


def test_concurrent_slices_run_together(two_plain: None) -> None:
    events: list[tuple[SliceContext | None, RotationEvent]] = []
    results = RotationRunner(timed_plan("concurrent"), lambda c, e: events.append((c, e))).run()
    turns = [(c.backend, e.turn_started) for c, e in events
             if c is not None and not c.baseline and isinstance(e, SliceStarted)]
    # Each lane gets the whole phase (4 slices of 0.1 s), both lanes in every round, sharing its start.
    assert len(turns) == 8
    for i in range(0, 8, 2):
        assert sorted(b for b, _ in turns[i:i + 2]) == ["plain", "plain2"]
        assert turns[i][1] == turns[i + 1][1]
    assert [(r.backend, r.slices) for r in results if not r.baseline] == [("plain", 4), ("plain2", 4)]


def test_a_phase_keeps_to_its_time_when_a_warm_up_runs_in_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """The second phase's worker warms up inside the phase (1.5 s): its later slices give that
    time back, so the phase still ends after its configured 8 s (8 slices of 1 s: 9.5 s
    without), and the first phase, warmed before it started, runs whole slices."""
    fb.register(monkeypatch, **{fb.SlowWarmupBackend.name: fb.SlowWarmupBackend})
    profile = get_profile("ci", {"phase_seconds": 8.0, "slice_seconds": 1.0})
    plan = RotationPlan(profile=profile, backends=[fb.SlowWarmupBackend.name], phases=["matmul", "conv"],
                        precisions=["fp32"], in_process=True, cpu_baseline="off")
    events: list[tuple[SliceContext | None, RotationEvent]] = []
    RotationRunner(plan, lambda c, e: events.append((c, e))).run()
    walls = {e.phase: e.wall_seconds for _, e in events if isinstance(e, PhaseEnded)}
    assert 7.9 <= walls["conv"] < 8.0 + 1.0  # 9.5 s and more without; a busy host adds steps
    slices = {phase: [e.result.seconds for c, e in events
                      if c is not None and c.phase == phase and isinstance(e, SliceEnded)]
              for phase in walls}
    assert len(slices["matmul"]) == len(slices["conv"]) == 8
    # A phase's first slice is a whole one (the warm-up in conv's is not measured time); a
    # busy host may stretch any slice by a step, which the later slices then give back too.
    assert slices["matmul"][0] >= 0.95 and slices["conv"][0] >= 0.95
    assert sum(slices["conv"][1:]) <= 7 * 1.0 - fb.SLOW_WARMUP_S / 2
    assert min(slices["conv"][1:]) >= 0.5  # never under half a slice


def test_a_phase_shorter_than_a_slice_runs_for_the_phase() -> None:
    """`soakd once --duration 0.3` with 2 s slices: one slice of 0.3 s (the whole 2 s slice ran
    before, and then half a slice was the least)."""
    profile = get_profile("ci", {"phase_seconds": 0.3, "slice_seconds": 2.0})
    plan = RotationPlan(profile=profile, backends=["cpu"], phases=["matmul"], precisions=["fp32"],
                        in_process=True, cpu_baseline="off")
    events: list[tuple[SliceContext | None, RotationEvent]] = []
    RotationRunner(plan, lambda c, e: events.append((c, e))).run()
    measured = [e.result.seconds for _, e in events if isinstance(e, SliceEnded)]
    assert len(measured) == 1 and 0.25 <= measured[0] < 0.6


def test_round_shapes() -> None:
    lanes = [_Lane("a", ["a"]), _Lane("b", ["b"]), _Lane("c", ["c"], device="0"),
             _Lane("c", ["c"], device="1")]
    plan = timed_plan("alternate")
    names = [[(lane.requested, lane.device) for lane in r] for r in _rounds(plan, lanes[:2])]
    assert names == [[("a", "0")], [("b", "0")]] * 2
    # one backend on two devices: both devices in every round, backends alternate
    names = [[(lane.requested, lane.device) for lane in r] for r in _rounds(plan, [lanes[0], *lanes[2:]])]
    assert names == [[("a", "0")], [("c", "0"), ("c", "1")]] * 2
    plan.mode = "concurrent"
    assert [len(r) for r in _rounds(plan, lanes)] == [4] * 4
    plan.steps = 5  # a step count: one round per backend, whatever the mode
    names = [[lane.requested for lane in r] for r in _rounds(plan, lanes)]
    assert names == [["a"], ["b"], ["c", "c"]]


def test_stop_ends_the_rotation(two_plain: None) -> None:
    stop = threading.Event()
    events: list[tuple[SliceContext | None, RotationEvent]] = []

    def on_event(context: SliceContext | None, event: RotationEvent) -> None:
        events.append((context, event))
        if isinstance(event, SliceEnded) and context is not None and context.backend == "plain":
            stop.set()

    plan = timed_plan("alternate")
    plan.phases = ["matmul", "conv"]
    RotationRunner(plan, on_event, stop).run()
    assert started_slices(events) == [("cpu", True), ("cpu", True), ("plain", False)]


def test_cached_baseline_is_reused_and_shapes_are_its_key(two_plain: None, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOAKD_CACHE_DIR", str(tmp_path))
    plan = timed_plan("alternate", ["plain"])
    plan.cpu_baseline = "cached"
    first: list[tuple[SliceContext | None, RotationEvent]] = []
    RotationRunner(plan, lambda c, e: first.append((c, e))).run()
    assert started_slices(first)[0] == ("cpu", True)  # measured: nothing cached yet
    second: list[tuple[SliceContext | None, RotationEvent]] = []
    results = RotationRunner(plan, lambda c, e: second.append((c, e))).run()
    assert ("cpu", True) not in started_slices(second)  # reused
    (reused,) = [e for _, e in second if isinstance(e, BaselineReused)]
    baseline = results[0]
    assert baseline.baseline and baseline.cached_baseline is not None
    assert baseline.steps == reused.record.steps > 0
    assert summarize(results)[1]["speedup_vs_cpu"] is not None
    # other shapes are another baseline: measured again
    plan.profile = get_profile("ci", {"phase_seconds": 0.4, "slice_seconds": 0.1,
                                      "cpu_baseline_seconds": 0.1, "matmul.n": 96})
    third: list[tuple[SliceContext | None, RotationEvent]] = []
    RotationRunner(plan, lambda c, e: third.append((c, e))).run()
    assert started_slices(third)[0] == ("cpu", True)


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


def test_attention_variant_per_backend() -> None:
    """coreml-ane runs the Neural Engine layout by default, everything else the standard one; a
    plan can choose per backend, and a profile override applies to every backend."""
    plan = RotationPlan(profile=PROFILES["ci"], backends=["cpu"], in_process=True)
    runner = RotationRunner(plan)
    assert runner._spec("attention", "coreml-ane").variant == "ane"  # type: ignore[union-attr]
    assert runner._spec("attention", "cpu").variant == "standard"  # type: ignore[union-attr]
    assert runner._spec("matmul", "coreml-ane") == PROFILES["ci"].matmul
    plan.variants = {"cpu": "ane", "coreml-ane": "standard"}
    assert runner._spec("attention", "cpu").variant == "ane"  # type: ignore[union-attr]
    assert runner._spec("attention", "coreml-ane").variant == "standard"  # type: ignore[union-attr]
    plan.variants = {}
    plan.profile = get_profile("ci", {"attention.variant": "ane"})
    assert runner._spec("attention", "mps").variant == "ane"  # type: ignore[union-attr]


def test_the_variant_is_part_of_the_run_label() -> None:
    plan = RotationPlan(profile=PROFILES["ci"], backends=["cpu"], phases=["attention"], steps=2,
                        precisions=["fp32"], in_process=True, variants={"cpu": "ane"})
    (result,) = RotationRunner(plan).run()
    assert result.run is not None and result.run.variant == "ane" and "variant=ane" in result.run.shapes
    standard = RotationPlan(profile=PROFILES["ci"], backends=["cpu"], phases=["attention"], steps=2,
                            precisions=["fp32"], in_process=True)
    (other,) = RotationRunner(standard).run()
    assert other.run is not None and other.run.key != result.run.key


def test_a_new_backend_is_one_class_and_one_registry_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    """A backend declared in workloads/backends/registry.py (here a stand-in "xpu" that is the CPU
    under another name) is found by name, has its fallback chain, rank and colour, and runs."""
    from workloads.backends import registry

    entry = registry.BackendSpec("xpu-fake", "torch", "fake_backends:PlainBackend", ("cpu",), 0, "#123456",
                                 "a stand-in accelerator")
    monkeypatch.setitem(registry.BACKENDS, entry.name, entry)
    assert type(get_backend("xpu-fake")).__name__ == "PlainBackend"
    assert rotation.fallback_chain("xpu-fake") == ["xpu-fake", "cpu"]
    assert registry.rank("xpu-fake") == 0 and registry.colour("xpu-fake") == "#123456"
    results, _ = run_plan(["xpu-fake"])
    assert [(r.backend, r.steps) for r in results] == [("xpu-fake", 3)]
