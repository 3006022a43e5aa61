"""Real child workers (spawn): a clean slice, a worker killed by a signal, an overrunning one.

Each spawned worker imports torch (about 2 s here). The misbehaving backends come from
fake_backends.py through the SOAKD_EXTRA_BACKENDS hook, which the child inherits.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any

import fake_backends as fb
import psutil
import pytest

import workloads.rotation as rotation
from workloads.phases import PROFILES, get_profile
from workloads.protocol import Check, Failure, Prepared, SliceDone, Steps, Warmup, WorkerEvent
from workloads.rotation import (
    FallbackTaken,
    PhaseEnded,
    RotationEvent,
    RotationPlan,
    RotationRunner,
    SliceContext,
    SliceEnded,
    WorkerPolicy,
    WorkerReplaced,
)
from workloads.runner import SliceRequest, run_slice
from workloads.timing import latency_summary

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory: pytest.TempPathFactory,
                   monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path_factory.getbasetemp() / "soakd-cache-runner"
    monkeypatch.setenv("SOAKD_CACHE_DIR", str(path))
    return path


def test_child_worker_runs_ci_matmul_on_cpu() -> None:
    events: list[WorkerEvent] = []
    request = SliceRequest(spec=PROFILES["ci"].matmul, backend="cpu", duration_s=0.5,
                           warmup_steps=1, check_every=10)
    started = time.monotonic()
    result = run_slice(request, on_event=events.append)
    assert time.monotonic() - started < 30
    assert result.failure is None, result.failure
    assert result.steps > 0
    assert len(result.durations) == result.steps
    assert 0.5 <= result.seconds < 3.0
    assert result.checks >= 1 and result.mismatches == 0
    assert result.device_name.startswith("cpu")
    assert result.run is not None and result.run.technique == "eager" and result.run.device == "0"
    assert result.prepare_seconds >= 0 and result.warmup_seconds >= 0
    assert result.first_step_seconds > 0
    assert result.peak_rss_bytes > 10 * 2**20  # a process that has torch loaded
    latency = latency_summary(result.durations)
    assert all(math.isfinite(v) and v > 0 for v in latency.values())
    assert latency["p50"] <= latency["p99"] <= latency["max"]
    # Typed events streamed over the pipe in the documented order.
    kinds = [type(e) for e in events]
    assert kinds[0] is Prepared and kinds[1] is Warmup and kinds[-1] is SliceDone
    assert Steps in kinds and Check in kinds
    final = events[-1]
    assert isinstance(final, SliceDone) and final.steps == result.steps
    segments = [e for e in events if isinstance(e, Steps)]
    assert all(seg.ended - seg.started == pytest.approx(seg.seconds, abs=1e-6) for seg in segments)


def test_worker_killed_by_signal_is_recorded_and_phase_falls_back(
        monkeypatch: pytest.MonkeyPatch) -> None:
    fb.register(monkeypatch, **{fb.KillerBackend.name: fb.KillerBackend})
    monkeypatch.setattr(rotation, "fallback_chain", lambda name: [name, "cpu"])
    events: list[tuple[SliceContext | None, RotationEvent]] = []
    plan = RotationPlan(profile=PROFILES["ci"], backends=[fb.KillerBackend.name],
                        phases=["matmul"], steps=3, precisions=["fp32"])
    results = RotationRunner(plan, lambda c, e: events.append((c, e))).run()
    by_backend = {r.backend: r for r in results}
    killed = by_backend[fb.KillerBackend.name]
    assert killed.steps == 0
    # killed once, replaced, killed again: then the phase falls back
    assert dict(killed.failures) == {"killed": 2}
    assert any("SIGKILL" in detail for detail in killed.failure_details)
    cpu = by_backend["cpu"]
    assert cpu.requested_backend == fb.KillerBackend.name
    assert cpu.steps == 3 and not cpu.failures and cpu.mismatches == 0
    assert cpu.fallback is not None
    assert (cpu.fallback["from"], cpu.fallback["to"], cpu.fallback["reason"]) == (
        fb.KillerBackend.name, "cpu", "killed")
    assert "SIGKILL" in cpu.fallback["detail"]
    failure = next(e for c, e in events
                   if isinstance(e, Failure) and c is not None and c.backend == fb.KillerBackend.name)
    assert failure.reason == "killed"
    assert [e.reason for _, e in events if isinstance(e, FallbackTaken)] == ["killed"]


def test_overrunning_worker_is_killed_and_recorded(monkeypatch: pytest.MonkeyPatch,
                                                   tmp_path: Path) -> None:
    fb.register(monkeypatch, **{fb.HangingBackend.name: fb.HangingBackend})
    pid_file = tmp_path / "worker.pid"
    monkeypatch.setenv(fb.PID_FILE_ENV, str(pid_file))
    request = SliceRequest(spec=PROFILES["ci"].matmul, backend=fb.HangingBackend.name,
                           duration_s=0.2, warmup_steps=0, check_every=0)
    started = time.monotonic()
    result = run_slice(request, overrun_margin_s=0.5)
    elapsed = time.monotonic() - started
    assert result.failure is not None
    assert result.failure.reason == "overrun"
    assert result.failure.stage == "run"
    assert result.steps == 0
    assert elapsed < 20  # killed at budget + margin, not after the step's hour
    pid = int(pid_file.read_text())
    assert pid != os.getpid()
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_worker_that_overruns_its_preparation(monkeypatch: pytest.MonkeyPatch) -> None:
    """prepare_timeout_s bounds the preparation."""
    fb.register(monkeypatch, **{fb.SlowPrepareBackend.name: fb.SlowPrepareBackend})
    request = SliceRequest(spec=PROFILES["ci"].matmul, backend=fb.SlowPrepareBackend.name,
                           duration_s=0.2, warmup_steps=1, check_every=0)
    started = time.monotonic()
    result = run_slice(request, prepare_timeout_s=5.0)
    assert result.failure is not None
    assert (result.failure.reason, result.failure.stage) == ("overrun", "prepare")
    assert time.monotonic() - started < 20


# --- persistent workers (issue: a soak that soaks) --------------------------------------------


def collect(plan: RotationPlan) -> tuple[list[Any], list[tuple[SliceContext | None, RotationEvent]]]:
    events: list[tuple[SliceContext | None, RotationEvent]] = []
    results = RotationRunner(plan, lambda c, e: events.append((c, e))).run()
    return results, events


def ended(events: list[tuple[SliceContext | None, RotationEvent]], phase: str | None = None) -> list[Any]:
    return [e.result for c, e in events if isinstance(e, SliceEnded) and c is not None
            and not c.baseline and (phase is None or c.phase == phase)]


def plain_plan(monkeypatch: pytest.MonkeyPatch, **overrides: Any) -> RotationPlan:
    fb.register(monkeypatch, plain=fb.PlainBackend, plain2=fb.PlainBackend,
                **{fb.CrashOnceBackend.name: fb.CrashOnceBackend,
                   fb.DeviceLikeBackend.name: fb.DeviceLikeBackend})
    profile = get_profile("ci", {"phase_seconds": 2.0, "slice_seconds": 0.5})
    settings: dict[str, Any] = {"profile": profile, "backends": ["plain", "plain2"],
                                "phases": ["matmul"], "precisions": ["fp32"], "cpu_baseline": "off"}
    settings.update(overrides)
    return RotationPlan(**settings)


def test_one_worker_serves_every_slice_of_its_phase(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two backends alternate in four slices: each keeps one worker, prepared once."""
    _, events = collect(plain_plan(monkeypatch))
    slices = ended(events)
    assert [s.backend for s in slices] == ["plain", "plain2"] * 2
    pids = {backend: {s.worker_pid for s in slices if s.backend == backend} for backend in ("plain", "plain2")}
    assert all(len(p) == 1 for p in pids.values()) and pids["plain"] != pids["plain2"]
    assert sum(isinstance(e, Prepared) for _, e in events) == 2
    assert all(s.failure is None and s.steps > 0 for s in slices)
    # a slice that is not its worker's first starts measuring within a fraction of a second
    later = [s for s in slices[2:]]
    assert all(s.lead_gap_seconds < 0.5 for s in later), [s.lead_gap_seconds for s in later]


def test_next_phase_is_prepared_ahead(monkeypatch: pytest.MonkeyPatch) -> None:
    """Phase 2's worker is spawned and prepared while phase 1 runs: its first slice does not
    wait for a process start (about 2-3 s of torch import here). The backend leaves the host
    idle between steps, as a GPU does (a CPU-bound phase would starve the preparing worker on
    a 2-core host; soakd does not prepare ahead while a CPU lane is measured)."""
    profile = get_profile("ci", {"phase_seconds": 10.0, "slice_seconds": 1.0})
    backend = fb.DeviceLikeBackend.name
    _, events = collect(plain_plan(monkeypatch, backends=[backend], phases=["matmul", "conv"], profile=profile))
    phase_one_end = next(e.ended for _, e in events if isinstance(e, PhaseEnded) and e.phase == "matmul")
    conv = ended(events, "conv")
    first = conv[0]
    prepared = next(e for c, e in events if isinstance(e, Prepared) and c is not None and c.phase == "conv")
    assert prepared.prepare_seconds > 0
    assert prepared.ready_at < phase_one_end  # ready before phase 2 began
    assert first.turn_started >= phase_one_end - 1e-6
    assert first.lead_gap_seconds < 1.0, first.lead_gap_seconds  # warm-up only, no spawn
    # and the same plan without preparing ahead pays the spawn inside the phase
    short = get_profile("ci", {"phase_seconds": 2.0, "slice_seconds": 1.0})
    _, cold = collect(plain_plan(monkeypatch, backends=[backend], phases=["matmul", "conv"], profile=short,
                                 workers=WorkerPolicy(prepare_ahead=False)))
    assert ended(cold, "conv")[0].lead_gap_seconds > first.lead_gap_seconds + 0.5


def test_recycled_worker_takes_over_at_a_boundary_with_a_short_gap(monkeypatch: pytest.MonkeyPatch) -> None:
    plan = plain_plan(monkeypatch, backends=["plain"],
                      profile=get_profile("ci", {"phase_seconds": 8.0, "slice_seconds": 0.5}),
                      workers=WorkerPolicy(max_age_s=1.0, max_memory_growth=0.0))
    _, events = collect(plan)
    replaced = [e for _, e in events if isinstance(e, WorkerReplaced)]
    assert replaced and replaced[0].reason == "age"
    slices = ended(events)
    index = next(i for i, s in enumerate(slices) if s.worker_pid == replaced[0].new_pid)
    before, after = slices[index - 1], slices[index]
    assert before.worker_pid == replaced[0].old_pid != after.worker_pid
    boundary = before.tail_gap_seconds + after.lead_gap_seconds
    assert boundary < 0.5, boundary
    assert after.failure is None and after.steps > 0


def test_crashed_worker_is_recorded_and_replaced(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(fb.CRASH_MARKER_ENV, str(tmp_path / "crashed"))
    results, events = collect(plain_plan(monkeypatch, backends=[fb.CrashOnceBackend.name]))
    slices = ended(events)
    crashed = [s for s in slices if s.failure is not None]
    assert len(crashed) == 1 and crashed[0].failure.reason == "killed"
    assert "SIGKILL" in crashed[0].failure.detail
    (replaced,) = [e for _, e in events if isinstance(e, WorkerReplaced)]
    assert replaced.reason == "killed" and replaced.old_pid == int((tmp_path / "crashed").read_text())
    # the phase went on, on the same backend, in the replacement
    assert not any(isinstance(e, FallbackTaken) for _, e in events)
    good = [s for s in slices if s.failure is None]
    assert good and all(s.worker_pid == replaced.new_pid and s.steps > 0 for s in good)
    assert {r.backend for r in results} == {fb.CrashOnceBackend.name}


def test_peak_rss_is_the_workers_high_water_mark(monkeypatch: pytest.MonkeyPatch) -> None:
    """A step that holds 600 MiB for a moment: the RSS sampled between segments never sees it
    (the old "peak" was the largest such sample), the OS's high-water mark does."""
    fb.register(monkeypatch, **{fb.SpikyBackend.name: fb.SpikyBackend})
    events: list[WorkerEvent] = []
    request = SliceRequest(spec=PROFILES["ci"].matmul, backend=fb.SpikyBackend.name, duration_s=None,
                           max_steps=3, warmup_steps=1, check_every=0, flush_interval_s=0.0)
    result = run_slice(request, on_event=events.append)
    assert result.failure is None and result.steps == 3
    sampled = max(e.memory.rss for e in events if isinstance(e, Steps))
    assert result.peak_rss_bytes >= sampled + fb.SPIKE_BYTES * 0.9
    assert result.peak_device_bytes == 0  # no device allocator on the CPU: a separate figure
