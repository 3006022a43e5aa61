"""A rotation: each phase in turn, its backends alternating in slices, with fallback chains.

This is the one small interface the daemon uses (`run_rotation` with an event callback);
`soakd once` and the benchmarks use it too.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from workloads.backends import Availability, fallback_chain, get_backend
from workloads.phases import PHASE_NAMES, Mode, Profile
from workloads.runner import PhaseResult, SliceResult, run_slice
from workloads.worker import Event, SliceRequest

# Failures that end a backend's part in the phase and move it along its fallback chain.
FALLBACK_REASONS = frozenset({
    "unavailable", "unsupported_precision", "out_of_memory", "conversion_failed", "killed",
    "overrun", "worker_exit", "runtime_error", "unsupported_compute_units",
})


@dataclass(frozen=True)
class SliceContext:
    """Where a worker event came from, handed to the event callback with the event."""

    phase: str
    requested_backend: str
    backend: str
    precision: str
    baseline: bool = False


RotationCallback = Callable[[SliceContext, Event], None]


@dataclass
class RotationPlan:
    profile: Profile
    backends: list[str]
    phases: list[str] = field(default_factory=lambda: list(PHASE_NAMES))
    precisions: list[str] = field(default_factory=lambda: ["fp32"])
    mode: Mode = "alternate"
    steps: int | None = None  # a step count per backend instead of a time budget
    seed: int = 0
    cpu_baseline: bool = True
    in_process: bool = False  # tests only: run slices in this process


@dataclass
class _Lane:
    """One requested backend's progress through its fallback chain within a phase."""

    requested: str
    chain: list[str]
    position: int = 0
    results: dict[str, PhaseResult] = field(default_factory=dict)
    baseline: bool = False
    # Hops taken since the last backend that ran, attached to the next result created.
    hops: list[dict[str, str]] = field(default_factory=list)

    @property
    def current(self) -> str | None:
        return self.chain[self.position] if self.position < len(self.chain) else None


def _slice_plan(plan: RotationPlan, lanes: list[_Lane]) -> list[list[_Lane]]:
    """Rounds of lanes to run; each round's lanes run one after another, or together if concurrent."""
    main = [lane for lane in lanes if not lane.baseline]
    baseline = [[lane] for lane in lanes if lane.baseline]
    if plan.steps is not None:
        rounds = [[lane] for lane in main]
        return baseline + rounds
    profile = plan.profile
    share = profile.phase_seconds if plan.mode == "concurrent" else profile.phase_seconds / max(len(main), 1)
    count = max(1, round(share / profile.slice_seconds)) if profile.slice_seconds > 0 else 1
    if plan.mode == "concurrent":
        rounds = [list(main) for _ in range(count)]
    elif plan.mode == "sequential":
        rounds = [[lane] for lane in main for _ in range(count)]
    else:
        rounds = [[lane] for _ in range(count) for lane in main]
    return baseline + rounds


class RotationRunner:
    """Runs a plan; `stop` ends it after the current step of every running worker."""

    def __init__(self, plan: RotationPlan, on_event: RotationCallback | None = None,
                 stop: threading.Event | None = None,
                 slice_runner: Callable[..., SliceResult] = run_slice) -> None:
        self.plan = plan
        self.on_event = on_event
        self.stop = stop or threading.Event()
        self._run_slice = slice_runner
        self._lock = threading.Lock()

    def run(self) -> list[PhaseResult]:
        results: list[PhaseResult] = []
        for phase in self.plan.phases:
            for precision in self.plan.precisions:
                if self.stop.is_set():
                    return results
                results.extend(self.run_phase(phase, precision))
        return results

    def _lanes(self, precision: str) -> list[_Lane]:
        lanes = [_Lane(name, fallback_chain(name)) for name in self.plan.backends]
        wants_baseline = (self.plan.cpu_baseline and self.plan.profile.cpu_baseline_seconds > 0
                          and "cpu" not in self.plan.backends and self.plan.steps is None)
        if wants_baseline:
            lanes.insert(0, _Lane("cpu", ["cpu"], baseline=True))
        return lanes

    def run_phase(self, phase: str, precision: str) -> list[PhaseResult]:
        lanes = self._lanes(precision)
        for round_ in _slice_plan(self.plan, lanes):
            if self.stop.is_set():
                break
            if len(round_) == 1:
                self._run_lane_slice(phase, precision, round_[0])
            else:
                threads = [threading.Thread(target=self._run_lane_slice, args=(phase, precision, lane))
                           for lane in round_]
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join()
        return [result for lane in lanes for result in lane.results.values()]

    def _result(self, lane: _Lane, phase: str, backend: str, precision: str) -> PhaseResult:
        if backend not in lane.results:
            result = PhaseResult(
                phase=phase, requested_backend=lane.requested, backend=backend,
                precision=precision, flop_per_step=self.plan.profile.spec(phase).flop_per_step(),
                baseline=lane.baseline,
            )
            if lane.hops:
                first = lane.hops[0]
                result.fallback = {"from": first["from"], "to": backend, "reason": first["reason"],
                                   "detail": first["detail"], "hops": list(lane.hops)}
                lane.hops.clear()
            lane.results[backend] = result
        return lane.results[backend]

    def _fall_back(self, lane: _Lane, phase: str, precision: str, reason: str, detail: str) -> None:
        failed = lane.current or ""
        lane.position += 1
        target = lane.current or ""
        lane.hops.append({"from": failed, "to": target, "reason": reason, "detail": detail})
        self._emit(SliceContext(phase, lane.requested, target or failed, precision, lane.baseline),
                   {"type": "fallback", "from": failed, "to": target, "reason": reason,
                    "detail": detail})

    def _emit(self, context: SliceContext, event: Event) -> None:
        if self.on_event is not None:
            with self._lock:
                self.on_event(context, event)

    def _run_lane_slice(self, phase: str, precision: str, lane: _Lane) -> None:
        profile = self.plan.profile
        if lane.baseline:  # the CPU baseline is always fp32: CPU half precision is not a baseline
            precision = "fp32"
        while lane.current is not None and not self.stop.is_set():
            backend_name = lane.current
            context = SliceContext(phase, lane.requested, backend_name, precision, lane.baseline)
            try:
                backend = get_backend(backend_name)
                availability = backend.available()
                if availability.ok:
                    availability = backend.supports(precision)
                    reason = "unsupported_precision"
                else:
                    reason = "unavailable"
            except Exception as exc:  # a backend whose probe itself breaks is unavailable
                availability = Availability.no(f"probe failed: {type(exc).__name__}: {exc}")
                reason = "unavailable"
            detail = availability.reason
            if not availability.ok:
                self._emit(context, {"type": "failure", "reason": reason, "detail": detail,
                                     "stage": "probe"})
                self._fall_back(lane, phase, precision, reason, detail)
                continue
            duration = profile.cpu_baseline_seconds if lane.baseline else profile.slice_seconds
            request = SliceRequest(
                spec=profile.spec(phase), backend=backend_name,
                precision=precision, seed=self.plan.seed,
                duration_s=None if self.plan.steps is not None else duration,
                max_steps=self.plan.steps,
                warmup_steps=1 if lane.baseline else profile.warmup_steps,
                check_every=profile.check_every,
            )
            self._emit(context, {"type": "slice_start", "duration_s": request.duration_s})
            piece = self._run_slice(request, lambda event, c=context: self._emit(c, event),
                                    self.stop, in_process=self.plan.in_process)
            self._result(lane, phase, backend_name, precision).add(piece)
            self._emit(context, {"type": "slice_end", "steps": piece.steps, "seconds": piece.seconds,
                                 "failure": piece.failure, "slice": piece})
            if piece.failure is not None and piece.failure["reason"] in FALLBACK_REASONS:
                self._fall_back(lane, phase, precision, piece.failure["reason"],
                                piece.failure["detail"])
                continue
            return


def run_rotation(plan: RotationPlan, on_event: RotationCallback | None = None,
                 stop: threading.Event | None = None) -> list[PhaseResult]:
    return RotationRunner(plan, on_event, stop).run()


def speedups(results: list[PhaseResult]) -> dict[int, float | None]:
    """Throughput over the CPU's for the same phase (same precision preferred), by result index."""
    out: dict[int, float | None] = {}
    for i, result in enumerate(results):
        cpu = [r for r in results if r.phase == result.phase and r.backend == "cpu" and r.steps]
        # the CPU baseline first, then a CPU run of the same precision, then any CPU run
        cpu.sort(key=lambda r: (not r.baseline, r.precision != result.precision))
        base = cpu[0].steps_per_second if cpu else 0.0
        out[i] = result.steps_per_second / base if base > 0 and result.steps else None
    return out


def summarize(results: list[PhaseResult]) -> list[dict[str, Any]]:
    """Result dicts with `speedup_vs_cpu` filled in."""
    ratios = speedups(results)
    rows = []
    for i, result in enumerate(results):
        row = result.to_dict()
        row["speedup_vs_cpu"] = ratios[i]
        rows.append(row)
    return rows
