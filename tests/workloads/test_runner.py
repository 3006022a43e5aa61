"""Real child workers (spawn): a clean slice, a worker killed by a signal, an overrunning one.

Each spawned worker imports torch (about 2 s here). The misbehaving backends come from
fake_backends.py through the SOAKD_EXTRA_BACKENDS hook, which the child inherits.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import fake_backends as fb
import psutil
import pytest

import workloads.rotation as rotation
import workloads.runner as runner
from workloads.phases import PROFILES
from workloads.rotation import RotationPlan, RotationRunner, SliceContext
from workloads.runner import run_slice
from workloads.timing import latency_summary
from workloads.worker import Event, SliceRequest

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory: pytest.TempPathFactory,
                   monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path_factory.getbasetemp() / "soakd-cache-runner"
    monkeypatch.setenv("SOAKD_CACHE_DIR", str(path))
    return path


def test_child_worker_runs_ci_matmul_on_cpu() -> None:
    events: list[Event] = []
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
    assert result.device.startswith("cpu")
    assert result.prepare_seconds >= 0 and result.warmup_seconds >= 0
    assert result.first_step_seconds > 0
    assert result.memory["peak_rss"] > 10 * 2**20  # a process that has torch loaded
    latency = latency_summary(result.durations)
    assert all(math.isfinite(v) and v > 0 for v in latency.values())
    assert latency["p50"] <= latency["p99"] <= latency["max"]
    # Events streamed over the pipe in the documented order.
    kinds = [e["type"] for e in events]
    assert kinds[0] == "prepared" and kinds[1] == "warmup" and kinds[-1] == "done"
    assert "steps" in kinds and "check" in kinds
    assert events[-1]["steps"] == result.steps


def test_worker_killed_by_signal_is_recorded_and_phase_falls_back(
        monkeypatch: pytest.MonkeyPatch) -> None:
    fb.register(monkeypatch, **{fb.KillerBackend.name: fb.KillerBackend})
    monkeypatch.setattr(rotation, "fallback_chain", lambda name: [name, "cpu"])
    events: list[tuple[SliceContext, Event]] = []
    plan = RotationPlan(profile=PROFILES["ci"], backends=[fb.KillerBackend.name],
                        phases=["matmul"], steps=3)
    results = RotationRunner(plan, lambda c, e: events.append((c, e))).run()
    by_backend = {r.backend: r for r in results}
    killed = by_backend[fb.KillerBackend.name]
    assert killed.steps == 0
    assert dict(killed.failures) == {"killed": 1}
    assert any("SIGKILL" in detail for detail in killed.failure_details)
    cpu = by_backend["cpu"]
    assert cpu.requested_backend == fb.KillerBackend.name
    assert cpu.steps == 3 and not cpu.failures and cpu.mismatches == 0
    assert cpu.fallback is not None
    assert (cpu.fallback["from"], cpu.fallback["to"], cpu.fallback["reason"]) == (
        fb.KillerBackend.name, "cpu", "killed")
    assert "SIGKILL" in cpu.fallback["detail"]
    failure = next(e for c, e in events
                   if e["type"] == "failure" and c.backend == fb.KillerBackend.name)
    assert failure["reason"] == "killed"


def test_overrunning_worker_is_killed_and_recorded(monkeypatch: pytest.MonkeyPatch,
                                                   tmp_path: Path) -> None:
    fb.register(monkeypatch, **{fb.HangingBackend.name: fb.HangingBackend})
    pid_file = tmp_path / "worker.pid"
    monkeypatch.setenv(fb.PID_FILE_ENV, str(pid_file))
    monkeypatch.setattr(runner, "OVERRUN_MARGIN_S", 0.5)
    request = SliceRequest(spec=PROFILES["ci"].matmul, backend=fb.HangingBackend.name,
                           duration_s=0.2, warmup_steps=0, check_every=0)
    started = time.monotonic()
    result = run_slice(request)
    elapsed = time.monotonic() - started
    assert result.failure is not None
    assert result.failure["reason"] == "overrun"
    assert result.failure["stage"] == "run"
    assert result.steps == 0
    assert elapsed < 20  # killed at budget + margin, not after the step's hour
    pid = int(pid_file.read_text())
    assert pid != os.getpid()
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_worker_that_overruns_its_preparation(monkeypatch: pytest.MonkeyPatch) -> None:
    """prepare_timeout_s bounds everything before the warm-up report."""
    fb.register(monkeypatch, **{fb.HangingBackend.name: fb.HangingBackend})
    request = SliceRequest(spec=PROFILES["ci"].matmul, backend=fb.HangingBackend.name,
                           duration_s=0.2, warmup_steps=1, check_every=0)
    result = run_slice(request, prepare_timeout_s=1.0)
    assert result.failure is not None
    assert (result.failure["reason"], result.failure["stage"]) == ("overrun", "prepare")
