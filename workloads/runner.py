"""Parent side of a slice: spawn the worker, stream its events, survive its death.

The caller (the daemon or `soakd once`) never runs a step itself: a worker that is killed
by a signal, overruns its slice or dies in a native crash becomes a recorded failure.
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from workloads.timing import LatencySketch
from workloads.worker import Event, SliceRequest, prepare_and_measure, worker_main

EventSink = Callable[[Event], None]

# A worker gets this long to prepare (model build, float64 reference, Core ML compile) ...
PREPARE_TIMEOUT_S = 900.0
# ... and this much slack past its measured budget before it is killed as overrun.
OVERRUN_MARGIN_S = 30.0
# After a stop request, a worker whose current step is still running is killed after this
# long, so the daemon can exit inside launchd's/systemd's stop timeout.
STOP_GRACE_S = 5.0


@dataclass
class SliceResult:
    request: SliceRequest
    device: str = ""
    steps: int = 0
    seconds: float = 0.0
    durations: list[float] = field(default_factory=list)
    prepare_seconds: float = math.nan
    warmup_seconds: float = math.nan
    first_step_seconds: float = math.nan
    checks: int = 0
    mismatches: int = 0
    max_relative_error: float = 0.0
    failure: dict[str, str] | None = None
    stopped: bool = False
    memory: dict[str, int] = field(default_factory=dict)
    rss_weighted: float = 0.0  # sum of avg-RSS x seconds, for time-weighted averages
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def flop(self) -> int:
        return self.steps * self.request.spec.flop_per_step()

    def absorb(self, event: Event) -> None:
        """Fold one worker event into the result."""
        kind = event.get("type")
        if kind == "prepared":
            self.device = str(event.get("device", ""))
            self.prepare_seconds = float(event.get("prepare_seconds", math.nan))
            self.info.update(event.get("info") or {})
        elif kind == "warmup":
            self.warmup_seconds = float(event["seconds"])
            self.first_step_seconds = float(event["first_step_seconds"])
        elif kind == "steps":
            durations = list(event["durations"])
            self.durations.extend(durations)
            self.steps += len(durations)
            self.seconds += float(event["seconds"])
            memory = dict(event.get("memory") or {})
            self.rss_weighted += memory.get("rss", 0) * float(event["seconds"])
            for key, value in memory.items():
                self.memory[key] = max(self.memory.get(key, 0), int(value)) if "peak" in key else int(value)
        elif kind == "check":
            self.checks += 1
            error = float(event["relative_error"])
            self.max_relative_error = max(self.max_relative_error, error)
            if not event["ok"]:
                self.mismatches += 1
        elif kind == "failure":
            self.failure = {"reason": str(event["reason"]), "detail": str(event["detail"]),
                            "stage": str(event.get("stage", "run"))}
        elif kind == "done":
            self.stopped = bool(event.get("stopped"))


def receive(conn: Any, timeout: float) -> Any:
    """The next message from a worker's pipe within `timeout`, or None (nothing, or pipe closed)."""
    try:
        return conn.recv() if conn.poll(timeout) else None
    except (EOFError, OSError):
        return None


def reap_worker(process: Any, conn: Any) -> int | None:
    """Wait for a worker to exit (killing it if it lingers), close its pipe; its exit code."""
    process.join(10)
    if process.is_alive():
        process.kill()
        process.join(5)
    conn.close()
    code: int | None = process.exitcode
    return code


def signal_name(code: int) -> str:
    try:
        return signal.Signals(code).name
    except ValueError:
        return f"signal {code}"


def run_slice(
    request: SliceRequest,
    on_event: EventSink | None = None,
    stop: threading.Event | None = None,
    in_process: bool = False,
    prepare_timeout_s: float = PREPARE_TIMEOUT_S,
    stop_grace_s: float = STOP_GRACE_S,
) -> SliceResult:
    """Run one slice in a fresh child worker (or in this process, for tests) and collect it."""
    result = SliceResult(request)

    def deliver(event: Event) -> None:
        result.absorb(event)
        if on_event is not None:
            on_event(event)

    if in_process:
        prepare_and_measure(request, deliver, lambda: stop is not None and stop.is_set())
        return result

    context = multiprocessing.get_context("spawn")
    parent_conn, child_conn = context.Pipe(duplex=True)
    process = context.Process(target=worker_main, args=(child_conn, request), daemon=True,
                              name=f"soakd-worker-{request.backend}")
    process.start()
    child_conn.close()
    started = time.monotonic()
    run_deadline: float | None = None
    stop_sent: float | None = None
    finished = False
    try:
        while True:
            if stop is not None and stop.is_set() and stop_sent is None:
                with contextlib.suppress(OSError):
                    parent_conn.send("stop")
                stop_sent = time.monotonic()
            if stop_sent is not None and time.monotonic() - stop_sent > stop_grace_s:
                process.kill()
                process.join(5)
                result.stopped = True
                deliver({"type": "failure", "reason": "stopped", "stage": "run",
                         "detail": f"worker still busy {stop_grace_s:.0f} s after a stop request; killed"})
                return result
            event = receive(parent_conn, 0.05)
            if event is not None:
                deliver(event)
                if event.get("type") == "warmup":
                    budget = request.duration_s if request.duration_s is not None else 3600.0
                    run_deadline = time.monotonic() + budget + max(OVERRUN_MARGIN_S, budget)
                if event.get("type") in ("done", "failure"):
                    finished = True
                    break
                continue
            if not process.is_alive():
                # Drain anything sent just before exit.
                while (late := receive(parent_conn, 0)) is not None:
                    deliver(late)
                finished = result.failure is not None or result.steps > 0 or result.stopped
                break
            now = time.monotonic()
            over_prepare = run_deadline is None and now - started > prepare_timeout_s
            if over_prepare or (run_deadline is not None and now > run_deadline):
                process.kill()
                process.join(5)
                stage = "prepare" if run_deadline is None else "run"
                deliver({"type": "failure", "reason": "overrun", "stage": stage,
                         "detail": f"worker overran its slice and was killed after {now - started:.0f} s"})
                return result
    finally:
        code = reap_worker(process, parent_conn)
    if result.failure is None and code is not None and code < 0:
        deliver({"type": "failure", "reason": "killed", "stage": "run" if result.steps else "prepare",
                 "detail": f"worker killed by {signal_name(-code)}"})
    elif result.failure is None and not finished:
        deliver({"type": "failure", "reason": "worker_exit", "stage": "prepare",
                 "detail": f"worker exited with code {code} before reporting a result"})
    return result


@dataclass
class PhaseResult:
    """One backend's merged slices for one phase and precision (what `soakd once` prints)."""

    phase: str
    requested_backend: str
    backend: str
    precision: str
    flop_per_step: int
    device: str = ""
    steps: int = 0
    seconds: float = 0.0
    latency: LatencySketch = field(default_factory=LatencySketch)
    slices: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    failure_details: list[str] = field(default_factory=list)
    checks: int = 0
    mismatches: int = 0
    max_relative_error: float = 0.0
    prepare_seconds: float = 0.0
    warmup_seconds: float = 0.0
    first_step_seconds: float = math.nan
    peak_rss_bytes: int = 0
    rss_weighted: float = 0.0
    peak_device_bytes: int = 0
    fallback: dict[str, Any] | None = None
    baseline: bool = False
    info: dict[str, Any] = field(default_factory=dict)

    def add(self, piece: SliceResult) -> None:
        self.slices += 1
        if piece.device:
            self.device = piece.device
        self.steps += piece.steps
        self.seconds += piece.seconds
        self.latency.add(piece.durations)
        self.checks += piece.checks
        self.mismatches += piece.mismatches
        self.max_relative_error = max(self.max_relative_error, piece.max_relative_error)
        if not math.isnan(piece.prepare_seconds):
            self.prepare_seconds += piece.prepare_seconds
        if not math.isnan(piece.warmup_seconds):
            self.warmup_seconds += piece.warmup_seconds
        if math.isnan(self.first_step_seconds) and not math.isnan(piece.first_step_seconds):
            self.first_step_seconds = piece.first_step_seconds
        self.peak_rss_bytes = max(self.peak_rss_bytes, piece.memory.get("peak_rss", 0))
        self.rss_weighted += piece.rss_weighted
        self.peak_device_bytes = max(self.peak_device_bytes, piece.memory.get("peak_device", 0))
        self.info.update(piece.info)
        if piece.failure is not None:
            self.failures[piece.failure["reason"]] += 1
            self.failure_details.append(piece.failure["detail"])

    @property
    def flop(self) -> int:
        return self.steps * self.flop_per_step

    @property
    def steps_per_second(self) -> float:
        return self.steps / self.seconds if self.seconds > 0 else 0.0

    @property
    def flop_per_second(self) -> float:
        return self.flop / self.seconds if self.seconds > 0 else 0.0

    @property
    def success_rate(self) -> float:
        attempts = self.steps + sum(self.failures.values())
        return self.steps / attempts if attempts else 0.0

    def to_dict(self) -> dict[str, Any]:
        latency = self.latency.summary()
        return {
            "phase": self.phase,
            "backend": self.backend,
            "requested_backend": self.requested_backend,
            "precision": self.precision,
            "device": self.device,
            "baseline": self.baseline,
            "steps": self.steps,
            "seconds": self.seconds,
            "flop": self.flop,
            "flop_per_step": self.flop_per_step,
            "steps_per_second": self.steps_per_second,
            "flop_per_second": self.flop_per_second,
            "latency_seconds": {k: _finite(v) for k, v in latency.items()},
            "failures": dict(self.failures),
            "failure_details": self.failure_details[-5:],
            "success_rate": self.success_rate,
            "checks": self.checks,
            "mismatches": self.mismatches,
            "max_relative_error": _finite(self.max_relative_error),
            "slices": self.slices,
            "prepare_seconds": self.prepare_seconds,
            "warmup_seconds": self.warmup_seconds,
            "first_step_seconds": _finite(self.first_step_seconds),
            "memory_bytes": {
                "peak_rss": self.peak_rss_bytes,
                "avg_rss": int(self.rss_weighted / self.seconds) if self.seconds > 0 else 0,
                "peak_device": self.peak_device_bytes,
            },
            "fallback": self.fallback,
            "info": self.info,
        }


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None
