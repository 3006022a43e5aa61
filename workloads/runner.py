"""Results on the parent's side: one slice (`SliceResult`), one backend's phase (`PhaseResult`).

`run_slice()` runs a single slice in a worker of its own (prepare, run, close), for tests and
benchmarks; rotations keep their workers across slices (workloads/rotation.py).
"""

from __future__ import annotations

import math
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from workloads.phases import PhaseSpec
from workloads.process import InProcessWorker, Worker
from workloads.protocol import (
    Check,
    Failure,
    MemorySample,
    Prepare,
    Prepared,
    RunConfig,
    RunSlice,
    SliceDone,
    Steps,
    Warmup,
    WorkerEvent,
)
from workloads.timing import LatencySketch, latency_summary

# A worker gets this long to prepare (model build, float64 reference, Core ML compile) unless
# the profile says otherwise.
PREPARE_TIMEOUT_S = 900.0


@dataclass
class SliceResult:
    """What one slice did, folded from its worker's events (`absorb`), plus the parent's timing.

    Times: `seconds` is measured time (the sum of the segments); `turn_started`/`turn_ended`
    (monotonic) bound the slice's turn on the device, from the end of the slice before it to
    the moment its result came back; `gap_seconds` is the turn minus the measured time (the
    device ran no measured step: warm-up, preparation inside the phase, reference checks,
    hand-over). `lead_gap_seconds`/`tail_gap_seconds` are the parts before the first and after
    the last measured segment, so a boundary between two slices is tail + lead.
    """

    spec: PhaseSpec
    backend: str
    precision: str
    slice_id: int = 0
    run: RunConfig | None = None
    device_name: str = ""
    steps: int = 0
    seconds: float = 0.0
    durations: list[float] = field(default_factory=list)
    prepare_seconds: float = math.nan
    warmup_seconds: float = math.nan
    first_step_seconds: float = math.nan
    checks: int = 0
    mismatches: int = 0
    max_relative_error: float = 0.0
    failure: Failure | None = None
    stopped: bool = False
    memory: MemorySample | None = None
    peak_rss_bytes: int = 0
    peak_device_bytes: int = 0
    rss_weighted: float = 0.0  # sum of RSS x segment seconds, for time-weighted averages
    info: dict[str, Any] = field(default_factory=dict)
    first_started: float = math.nan  # monotonic start of the first measured segment
    last_ended: float = math.nan  # monotonic end of the last measured segment
    turn_started: float = math.nan
    turn_ended: float = math.nan
    segments: list[tuple[float, float]] = field(default_factory=list)  # measured (start, end)
    worker_pid: int | None = None

    @property
    def flop(self) -> int:
        """FLOP done: measured steps x this slice's own spec's FLOP per step."""
        return self.steps * self.spec.flop_per_step()

    def latency_summary(self) -> dict[str, float]:
        """p50, p90, p99, max and mean of the step durations (seconds; NaN with none)."""
        return latency_summary(self.durations)

    @property
    def gap_seconds(self) -> float:
        """Turn time with no measured step running (0 when the turn was not timed)."""
        if math.isnan(self.turn_started) or math.isnan(self.turn_ended):
            return 0.0
        return max(0.0, self.turn_ended - self.turn_started - self.seconds)

    @property
    def lead_gap_seconds(self) -> float:
        """From the turn's start to the first measured step (the whole turn if none ran)."""
        if math.isnan(self.first_started):
            return self.gap_seconds
        return max(0.0, self.first_started - self.turn_started) if not math.isnan(self.turn_started) else 0.0

    @property
    def tail_gap_seconds(self) -> float:
        """From the last measured step to the turn's end."""
        if math.isnan(self.last_ended) or math.isnan(self.turn_ended):
            return 0.0
        return max(0.0, self.turn_ended - self.last_ended)

    def absorb(self, event: WorkerEvent) -> None:
        """Fold one worker event into the result."""
        if isinstance(event, Prepared):
            self.run = event.run
            self.device_name = event.device_name
            self.prepare_seconds = event.prepare_seconds
            self.info.update(event.info)
        elif isinstance(event, Warmup):
            self.warmup_seconds = event.seconds
            self.first_step_seconds = event.first_step_seconds
            if event.run is not None:
                self.run = event.run
        elif isinstance(event, Steps):
            self._absorb_steps(event)
        elif isinstance(event, Check):
            self.checks += 1
            self.max_relative_error = max(self.max_relative_error, event.relative_error)
            self.mismatches += 0 if event.ok else 1
        elif isinstance(event, Failure):
            self.failure = event
            self.stopped = self.stopped or event.reason == "stopped"
        elif isinstance(event, SliceDone):
            self.stopped = event.stopped

    def _absorb_steps(self, event: Steps) -> None:
        self.durations.extend(event.durations)
        self.steps += event.steps
        self.seconds += event.seconds
        self.segments.append((event.started, event.ended))
        if math.isnan(self.first_started):
            self.first_started = event.started
        self.last_ended = event.ended
        memory = event.memory
        self.memory = memory
        self.rss_weighted += memory.rss * event.seconds
        self.peak_rss_bytes = max(self.peak_rss_bytes, memory.peak_rss)
        device_peak = max(memory.device_peak_allocated or 0, memory.device_allocated or 0,
                          memory.device_driver_allocated or 0)
        self.peak_device_bytes = max(self.peak_device_bytes, device_peak)


@dataclass
class PhaseResult:
    """One backend's merged slices for one phase, precision and run configuration (what
    `soakd once` prints). Slices that ran differently (another `RunConfig`) never merge."""

    phase: str
    requested_backend: str
    backend: str
    precision: str
    flop_per_step: int
    device: str = ""
    run: RunConfig | None = None
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
    gap_seconds: float = 0.0
    peak_rss_bytes: int = 0
    rss_weighted: float = 0.0
    peak_device_bytes: int = 0
    fallback: dict[str, Any] | None = None
    baseline: bool = False
    cached_baseline: dict[str, Any] | None = None  # where a reused CPU baseline came from
    info: dict[str, Any] = field(default_factory=dict)

    def add(self, piece: SliceResult) -> None:
        """Merge one slice."""
        self.slices += 1
        if piece.device_name:
            self.device = piece.device_name
        if piece.run is not None:
            self.run = piece.run
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
        self.gap_seconds += piece.gap_seconds
        self.peak_rss_bytes = max(self.peak_rss_bytes, piece.peak_rss_bytes)
        self.rss_weighted += piece.rss_weighted
        self.peak_device_bytes = max(self.peak_device_bytes, piece.peak_device_bytes)
        self.info.update(piece.info)
        if piece.failure is not None:
            self.failures[piece.failure.reason] += 1
            self.failure_details.append(piece.failure.detail)

    @property
    def flop(self) -> int:
        """FLOP done in the measured steps."""
        return self.steps * self.flop_per_step

    @property
    def steps_per_second(self) -> float:
        """Measured steps per measured second (0 with none)."""
        return self.steps / self.seconds if self.seconds > 0 else 0.0

    @property
    def flop_per_second(self) -> float:
        """FLOP/s over the measured time (0 with none)."""
        return self.flop / self.seconds if self.seconds > 0 else 0.0

    @property
    def success_rate(self) -> float:
        """Steps over steps plus failed slices (0-1)."""
        attempts = self.steps + sum(self.failures.values())
        return self.steps / attempts if attempts else 0.0

    def to_dict(self) -> dict[str, Any]:
        """The JSON of `soakd once` for this result."""
        latency = self.latency.summary()
        return {
            "phase": self.phase,
            "backend": self.backend,
            "requested_backend": self.requested_backend,
            "precision": self.precision,
            "device": self.device,
            "run": self.run.to_dict() if self.run is not None else None,
            "baseline": self.baseline,
            "cached_baseline": self.cached_baseline,
            "steps": self.steps,
            "seconds": self.seconds,
            "flop": self.flop,
            "flop_per_step": self.flop_per_step,
            "steps_per_second": self.steps_per_second,
            "flop_per_second": self.flop_per_second,
            "latency_seconds": {k: finite(v) for k, v in latency.items()},
            "failures": dict(self.failures),
            "failure_details": self.failure_details[-5:],
            "success_rate": self.success_rate,
            "checks": self.checks,
            "mismatches": self.mismatches,
            "max_relative_error": finite(self.max_relative_error),
            "slices": self.slices,
            "prepare_seconds": self.prepare_seconds,
            "warmup_seconds": self.warmup_seconds,
            "first_step_seconds": finite(self.first_step_seconds),
            "load_gap_seconds": self.gap_seconds,
            "memory_bytes": {
                "worker_peak_rss": self.peak_rss_bytes,
                "worker_avg_rss": int(self.rss_weighted / self.seconds) if self.seconds > 0 else 0,
                "device_peak": self.peak_device_bytes,
            },
            "fallback": self.fallback,
            "info": self.info,
        }


def finite(value: float) -> float | None:
    """`value`, or None when it is NaN or infinite (JSON has neither)."""
    return value if math.isfinite(value) else None


@dataclass(frozen=True)
class SliceRequest:
    """A single slice run in a worker of its own: the `Prepare` and `RunSlice` in one record."""

    spec: PhaseSpec
    backend: str
    precision: str = "fp32"
    seed: int = 0
    duration_s: float | None = 60.0
    max_steps: int | None = None
    warmup_steps: int = 3
    check_every: int = 50
    flush_interval_s: float = 0.25
    reference_dir: str | None = None
    device: str = "0"
    technique: str = "auto"
    memory_format: str = "auto"

    def prepare_command(self) -> Prepare:
        """The `Prepare` for this slice."""
        return Prepare(spec=self.spec, backend=self.backend, precision=self.precision,
                       device=self.device, seed=self.seed, check_every=self.check_every,
                       reference_dir=self.reference_dir, technique=self.technique,
                       memory_format=self.memory_format)

    def run_command(self, slice_id: int = 0) -> RunSlice:
        """The `RunSlice` for this slice."""
        return RunSlice(slice_id=slice_id, duration_s=self.duration_s, max_steps=self.max_steps,
                        warmup_steps=self.warmup_steps, check_every=self.check_every,
                        flush_interval_s=self.flush_interval_s)


def run_slice(request: SliceRequest, on_event: Any = None, stop: threading.Event | None = None,
              in_process: bool = False, prepare_timeout_s: float = PREPARE_TIMEOUT_S,
              overrun_margin_s: float | None = None) -> SliceResult:
    """Run one slice in a fresh worker (or in this process, for tests) and collect it."""
    result = SliceResult(request.spec, request.backend, request.precision)

    def deliver(event: WorkerEvent) -> None:
        result.absorb(event)
        if on_event is not None:
            on_event(event)

    worker: Worker = InProcessWorker(request.backend) if in_process else Worker(request.backend)
    try:
        worker.prepare(request.prepare_command())
        prepared = worker.await_prepared(prepare_timeout_s, stop, deliver)
        result.worker_pid = worker.pid
        if isinstance(prepared, Prepared):
            kwargs = {} if overrun_margin_s is None else {"overrun_margin_s": overrun_margin_s}
            worker.run_slice(request.run_command(), deliver, stop, **kwargs)
        elif result.failure is not prepared:  # the parent's verdict: death, timeout or stop
            deliver(prepared)
    finally:
        worker.close()
    return result


def speedups(results: list[PhaseResult]) -> dict[int, float | None]:
    """Throughput over the CPU's for the same phase and shapes (same precision preferred), by
    result index. A CPU run of other shapes (another run configuration) is never a base."""
    out: dict[int, float | None] = {}
    for i, result in enumerate(results):
        shapes = result.run.shapes if result.run is not None else None
        cpu = [r for r in results if r.phase == result.phase and r.backend == "cpu" and r.steps
               and (shapes is None or r.run is None or r.run.shapes == shapes
                    or (r.cached_baseline or {}).get("shapes") == shapes)]
        # the CPU baseline first, then a CPU run of the same precision, then any CPU run
        cpu.sort(key=lambda r: (not r.baseline, r.precision != result.precision))
        base = cpu[0].steps_per_second if cpu else 0.0
        out[i] = result.steps_per_second / base if base > 0 and result.steps else None
    return out


def summarize(results: list[PhaseResult]) -> list[dict[str, object]]:
    """Result dicts with `speedup_vs_cpu` filled in."""
    ratios = speedups(results)
    rows = []
    for i, result in enumerate(results):
        row = result.to_dict()
        row["speedup_vs_cpu"] = ratios[i]
        rows.append(row)
    return rows

