"""A rotation: each phase in turn, its backends alternating in slices, with fallback chains.

This is the one small interface the daemon uses (`RotationRunner` with an event callback);
`soakd once` and the benchmarks use it too. What keeps the device loaded:

- **Persistent workers.** A worker (workloads/process.py) is prepared once per phase, backend,
  device and precision and serves every slice of that phase; alternating backends switches
  which worker runs, tearing neither down.
- **Prepared ahead.** The next phase's workers are started and prepared (model on the device,
  no device step) while the current phase runs, so a phase boundary costs only the warm-up.
  The first phase's workers are prepared, and warmed up, before the first phase starts, while
  nothing is measured. (Ahead-preparation is skipped while a CPU lane is measured: building a
  model would take CPU from it.)
- **Recycled without a gap.** A worker past its age or memory bound gets a replacement that
  prepares while the old one still runs and takes over at a slice boundary. A crashed worker
  is recorded and replaced once per phase; a second crash moves the lane along its fallback
  chain.
- **No CPU baseline in the hot hour** (workloads/baseline.py): it runs before the first phase.

Every slice's turn is timed: the time in a phase with no measured step running is the load gap
(`SliceResult.gap_seconds`), reported per slice. A phase keeps to its configured time: a slice
is shortened by what earlier slices of the phase lost (`_PhaseBudget`).
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from workloads.backends import (
    auto_candidates,
    default_precisions,
    fallback_chain,
    resolve_backends,
)
from workloads.baseline import DEFAULT_MAX_AGE_S, BaselineRecord, load_baseline, store_baseline
from workloads.events import (
    BaselineReused,
    FallbackTaken,
    PhaseEnded,
    PhaseStarted,
    RotationCallback,
    RotationEvent,
    RotationResolved,
    SliceContext,
    SliceEnded,
    SliceStarted,
    WorkerReplaced,
)
from workloads.phases import PHASE_NAMES, AttentionSpec, Mode, PhaseSpec, Profile, default_attention_variant
from workloads.process import InProcessWorker, Worker, probe
from workloads.protocol import (
    Availability,
    BackendProbe,
    Failure,
    Prepare,
    ProbeResult,
    RunSlice,
    WorkerEvent,
)
from workloads.runner import PhaseResult, SliceResult

# Failures that end a backend's part in the phase and move it along its fallback chain.
FALLBACK_REASONS = frozenset({
    "unavailable", "unsupported_precision", "out_of_memory", "conversion_failed",
    "runtime_error", "unsupported_compute_units",
})
# A worker that died or hung: replaced once per phase; a second time, the lane falls back.
CRASH_REASONS = frozenset({"killed", "overrun", "worker_exit"})
# A slice shortened to keep its phase on time still measures at least this share of a slice.
MIN_SLICE_SHARE = 0.5


@dataclass(frozen=True)
class _PhaseBudget:
    """A phase's deadline (monotonic seconds) and its slices' nominal length: the profile's
    slice, or the phase's share per round where the phase is shorter than its slices."""

    deadline: float
    nominal: float

    def next_slice(self, rounds_left: int) -> float:
        """A slice's measured seconds: the nominal slice, or less to end the phase on time.

        What is left until the deadline is shared among the rounds still to run, so the time a
        phase loses to a warm-up, a worker's start, a hand-over or a slice's last step is taken
        from its own later slices, not added to the rotation (a rotation's wall time is the sum
        of its phase times). Never under MIN_SLICE_SHARE of the nominal slice.
        """
        share = (self.deadline - time.monotonic()) / max(rounds_left, 1)
        return max(MIN_SLICE_SHARE * self.nominal, min(self.nominal, share))



# --- the plan --------------------------------------------------------------------------------


@dataclass(frozen=True)
class WorkerPolicy:
    """When workers are replaced and prepared ahead.

    `max_age_s`: replace a worker this old (0: never). `max_memory_growth`: replace a worker
    whose memory (RSS plus Metal driver memory) grew past this multiple of what it held after
    its first slice (0: never); MPS caches graphs per shape and its driver memory grows over
    long runs (pytorch#132596). `prepare_ahead`: prepare the next phase's workers during the
    current phase.
    """

    max_age_s: float = 0.0
    max_memory_growth: float = 2.0
    prepare_ahead: bool = True


@dataclass
class RotationPlan:
    """What to run. `backends` and `precisions` may say `auto` (resolved by a worker's probe).

    `steps` runs a fixed step count per backend instead of time slices. `cpu_baseline` is a
    policy of workloads/baseline.py (`cached`, `before`, `off`). `devices` limits a
    multi-device backend to these device indices (None: every device the probe found).
    `variants` picks a model variant per backend for the attention phase (e.g.
    {"coreml-ane": "ane"}). `in_process` runs workers in this process (tests).
    """

    profile: Profile
    backends: list[str]
    phases: list[str] = field(default_factory=lambda: list(PHASE_NAMES))
    precisions: list[str] = field(default_factory=lambda: ["auto"])
    mode: Mode = "alternate"
    steps: int | None = None
    seed: int = 0
    cpu_baseline: str = "cached"
    baseline_max_age_s: float = DEFAULT_MAX_AGE_S
    devices: tuple[str, ...] | None = None
    variants: dict[str, str] = field(default_factory=dict)
    technique: str = "auto"
    memory_format: str = "auto"
    workers: WorkerPolicy = field(default_factory=WorkerPolicy)
    worker_environment: dict[str, str] = field(default_factory=dict)
    in_process: bool = False


WorkerKey = tuple[str, str, str, str]  # phase, backend, device, precision


@dataclass
class _Lane:
    """One requested backend on one device, through its fallback chain, within a phase."""

    requested: str
    chain: list[str]
    device: str = "0"
    position: int = 0
    results: dict[tuple[str, str], PhaseResult] = field(default_factory=dict)  # (backend, run key)
    baseline: bool = False
    hops: list[dict[str, str]] = field(default_factory=list)  # since the last backend that ran
    worker: Worker | None = None
    replacement: Worker | None = None
    replacement_reason: str = ""
    base_memory: int | None = None
    replaced_crashes: int = 0
    first_events: list[WorkerEvent] = field(default_factory=list)

    @property
    def current(self) -> str | None:
        """The backend this lane runs now (None once the chain is used up)."""
        return self.chain[self.position] if self.position < len(self.chain) else None


def _rounds(plan: RotationPlan, lanes: list[_Lane]) -> list[list[_Lane]]:
    """Rounds of lanes: a round's lanes run together, rounds one after another.

    Lanes of one backend on several devices always run together (the host heats as one);
    backends alternate by slice, run one after the other (sequential), or all at once
    (concurrent).
    """
    groups: dict[str, list[_Lane]] = {}
    for lane in lanes:
        groups.setdefault(lane.requested, []).append(lane)
    ordered = list(groups.values())
    if plan.steps is not None:
        return ordered
    profile = plan.profile
    share = profile.phase_seconds if plan.mode == "concurrent" else profile.phase_seconds / max(len(ordered), 1)
    count = max(1, round(share / profile.slice_seconds)) if profile.slice_seconds > 0 else 1
    if plan.mode == "concurrent":
        return [list(lanes) for _ in range(count)]
    if plan.mode == "sequential":
        return [group for group in ordered for _ in range(count)]
    return [group for _ in range(count) for group in ordered]


class RotationRunner:
    """Runs a plan; `stop` ends it after the current step of every running worker."""

    def __init__(self, plan: RotationPlan, on_event: RotationCallback | None = None,
                 stop: threading.Event | None = None) -> None:
        self.plan = plan
        self.on_event = on_event
        self.stop = stop or threading.Event()
        self._lock = threading.Lock()
        self._slice_ids = itertools.count(1)
        self._ahead: dict[WorkerKey, Worker] = {}
        self._spare: Worker | None = None  # the probe's worker, torch imported: the first lane's
        self._retiring: list[threading.Thread] = []
        self.probe: ProbeResult = ProbeResult({})
        self.backends: list[str] = []
        self.precisions: list[str] = []
        self.prepare_seconds = 0.0  # before the first phase: probe, baseline, first workers

    # -- the whole rotation --

    def run(self) -> list[PhaseResult]:
        """Run every phase and precision; the results, in order (baselines first)."""
        results: list[PhaseResult] = []
        started = time.monotonic()
        try:
            self._resolve()
            results += self._baselines()
            units = [(phase, precision) for phase in self.plan.phases for precision in self.precisions]
            for index, (phase, precision) in enumerate(units):
                if self.stop.is_set():
                    break
                lanes = self._lanes(phase, precision)
                self._start_workers(lanes, phase, precision, warm=index == 0)
                if index == 0:
                    self._await_all(lanes, phase, precision)
                    self.prepare_seconds = time.monotonic() - started
                if index + 1 < len(units) and self._may_prepare_ahead(lanes):
                    self._prepare_ahead(*units[index + 1])
                results += self._run_phase(lanes, phase, precision)
        finally:
            self._shutdown()
        return results

    def _resolve(self) -> None:
        """Probe the backends in a worker (this process need not import torch); resolve `auto`."""
        started = time.monotonic()
        names = [n for n in self.plan.backends if n != "auto"]
        candidates = list(dict.fromkeys(
            [*(auto_candidates() if "auto" in self.plan.backends else ()), *names,
             *(b for n in names for b in fallback_chain(n)), "cpu"]))
        wanted = {p for p in self.plan.precisions if p != "auto"} | {"fp32", "tf32", "fp16", "bf16"}
        answer, self._spare = probe(tuple(candidates), tuple(sorted(wanted)), in_process=self.plan.in_process,
                                    keep=True)
        if isinstance(answer, Failure):  # no worker could even start: every backend is unavailable
            reason = Availability.no(f"backend probe failed: {answer.reason}: {answer.detail}")
            answer = ProbeResult({name: BackendProbe(reason, {}, ()) for name in candidates})
        self.probe = answer
        self.backends = resolve_backends(list(self.plan.backends), answer)
        self.precisions = []
        for item in self.plan.precisions:
            for precision in default_precisions(self.backends) if item == "auto" else [item]:
                if precision not in self.precisions:
                    self.precisions.append(precision)
        devices = {name: self._devices(name) for name in self.backends}
        self._emit(None, RotationResolved(tuple(self.backends), tuple(self.precisions), devices,
                                          time.monotonic() - started))

    def _devices(self, backend: str) -> tuple[str, ...]:
        found = self.probe.backends.get(backend)
        devices = tuple(found.devices) if found is not None and found.devices else ("0",)
        if self.plan.devices is not None and len(devices) > 1:
            devices = tuple(d for d in devices if d in self.plan.devices) or devices[:1]
        return devices

    def _availability(self, backend: str, precision: str) -> tuple[Availability, str]:
        found = self.probe.backends.get(backend)
        if found is None:  # not probed (e.g. a test backend named later): assume it runs
            return Availability.yes(), ""
        if not found.available.ok:
            return found.available, "unavailable"
        support = found.precisions.get(precision, Availability.yes())
        return support, "unsupported_precision"

    # -- baselines --

    def _baselines(self) -> list[PhaseResult]:
        """The CPU baseline per phase, before the first phase (workloads/baseline.py)."""
        plan = self.plan
        if plan.cpu_baseline == "off" or "cpu" in self.backends or plan.steps is not None \
                or plan.profile.cpu_baseline_seconds <= 0:
            return []
        results: list[PhaseResult] = []
        for phase in plan.phases:
            if self.stop.is_set():
                break
            spec = self._spec(phase, "cpu")
            record = load_baseline(spec, plan.baseline_max_age_s) if plan.cpu_baseline == "cached" else None
            if record is not None:
                self._emit(None, BaselineReused(record))
                results.append(_from_record(record))
                continue
            lane = _Lane("cpu", ["cpu"], baseline=True)
            self._start_workers([lane], phase, "fp32", warm=False)
            self._run_lane_slice(lane, phase, "fp32", time.monotonic(), 0, 1)
            self._retire(lane.worker)
            lane.worker = None
            measured = [r for r in lane.results.values() if r.steps > 0]
            if measured:
                store_baseline(spec, measured[0].steps, measured[0].seconds)
            results += lane.results.values()
        return results

    # -- one phase --

    def _spec(self, phase: str, backend: str) -> PhaseSpec:
        """The phase's spec as `backend` runs it: the attention variant is the plan's choice for
        the backend, else the one set in the profile (an override applies to every backend),
        else the backend's default (`ane` on coreml-ane)."""
        spec = self.plan.profile.spec(phase)
        if isinstance(spec, AttentionSpec):
            variant = self.plan.variants.get(backend) or (
                spec.variant if spec.variant != "standard" else default_attention_variant(backend))
            spec = replace(spec, variant=variant)
        return spec

    def _lanes(self, phase: str, precision: str) -> list[_Lane]:
        return [_Lane(name, fallback_chain(name), device=device)
                for name in self.backends for device in self._devices(name)]

    def _run_phase(self, lanes: list[_Lane], phase: str, precision: str) -> list[PhaseResult]:
        rounds = _rounds(self.plan, lanes)
        slices = len(rounds)
        planned = self.plan.profile.phase_seconds if self.plan.steps is None else 0.0
        phase_started = time.monotonic()
        budget = None if planned <= 0 else _PhaseBudget(
            phase_started + planned, min(self.plan.profile.slice_seconds, planned / slices))
        self._emit(None, PhaseStarted(phase, precision, planned, phase_started, slices))
        for index, round_ in enumerate(rounds):
            if self.stop.is_set():
                break
            turn_started = time.monotonic()
            if len(round_) == 1:
                self._run_lane_slice(round_[0], phase, precision, turn_started, index, slices, budget=budget)
            else:
                threads = [threading.Thread(target=self._run_lane_slice,
                                            args=(lane, phase, precision, turn_started, index, slices, True,
                                                  budget))
                           for lane in round_]
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join()
        ended = time.monotonic()
        for lane in lanes:
            for worker in (lane.worker, lane.replacement):
                self._retire(worker)
            lane.worker = lane.replacement = None
        results = [result for lane in lanes for result in lane.results.values()]
        gap = sum(r.gap_seconds for r in results)
        self._emit(None, PhaseEnded(phase, precision, ended - phase_started, gap, ended))
        return results

    def _context(self, lane: _Lane, phase: str, precision: str, backend: str,
                 slice_id: int = 0, concurrent: bool = False) -> SliceContext:
        return SliceContext(phase, lane.requested, backend, precision, self._spec(phase, backend),
                            lane.device, lane.baseline, slice_id, concurrent)

    def _run_lane_slice(self, lane: _Lane, phase: str, precision: str, turn_started: float,
                        index: int, slices: int, concurrent: bool = False,
                        budget: _PhaseBudget | None = None) -> None:
        plan, profile = self.plan, self.plan.profile
        while lane.current is not None and not self.stop.is_set():
            backend = lane.current
            slice_id = next(self._slice_ids)
            context = self._context(lane, phase, precision, backend, slice_id, concurrent)
            availability, reason = self._availability(backend, precision)
            if not availability.ok:
                self._emit(context, Failure(reason, availability.reason, "probe"))
                self._fall_back(lane, context, reason, availability.reason)
                continue
            self._take_over_replacement(lane, context)
            worker = self._worker(lane, phase, precision, backend)
            result = SliceResult(context.spec, backend, precision, slice_id=slice_id,
                                 turn_started=turn_started, worker_pid=worker.pid)
            deliver = self._deliver(context, result)
            for event in lane.first_events:
                result.absorb(event)
            lane.first_events = []
            ready = worker.prepared or worker.failure or worker.await_prepared(
                profile.prepare_timeout_seconds, self.stop, deliver)
            duration = profile.slice_seconds
            if lane.baseline:
                duration = profile.cpu_baseline_seconds
            elif budget is not None:
                duration = budget.next_slice(slices - index)
            command = RunSlice(slice_id=slice_id,
                               duration_s=None if plan.steps is not None else duration,
                               max_steps=plan.steps,
                               warmup_steps=1 if lane.baseline else profile.warmup_steps,
                               check_every=profile.check_every,
                               check_interval_s=profile.check_interval_seconds)
            outcome: Failure | None = ready if isinstance(ready, Failure) else None
            if outcome is None:
                result.run, result.device_name = worker.run, worker.prepared.device_name if worker.prepared else ""
                self._emit(context, SliceStarted(slice_id, command.duration_s, turn_started, index, slices))
                final = worker.run_slice(command, deliver, self.stop,
                                         warmup_timeout_s=profile.prepare_timeout_seconds)
                outcome = final if isinstance(final, Failure) else None
                result.run = worker.run or result.run
            elif result.failure is not ready:  # the parent's own verdict (death, timeout, stop)
                deliver(ready)
            result.turn_ended = time.monotonic()
            self._record(lane, backend, precision, result)
            self._emit(context, SliceEnded(result))
            if outcome is None:
                self._maybe_recycle(lane, phase, precision, backend, context)
                return
            if outcome.reason in CRASH_REASONS and lane.replaced_crashes < 1:
                lane.replaced_crashes += 1  # one more try, on a fresh worker, in this same turn
                self._replace(lane, phase, precision, backend, context, outcome.reason, outcome.detail)
                continue
            if outcome.reason in FALLBACK_REASONS | CRASH_REASONS:
                self._retire(lane.worker)
                lane.worker = None
                self._fall_back(lane, context, outcome.reason, outcome.detail)
                continue
            return  # stopped

    def _deliver(self, context: SliceContext, result: SliceResult) -> Callable[[WorkerEvent], None]:
        def deliver(event: WorkerEvent) -> None:
            result.absorb(event)
            self._emit(context, event)
        return deliver

    def _record(self, lane: _Lane, backend: str, precision: str, result: SliceResult) -> None:
        """Merge a slice into its lane's result for the same backend and run configuration; a
        slice that never got a run configuration (it failed while preparing) joins the
        backend's result of any configuration."""
        key = (backend, result.run.key if result.run is not None else "")
        unknown = (backend, "")
        if result.run is None:
            key = next((k for k in lane.results if k[0] == backend), unknown)
        elif key not in lane.results and unknown in lane.results:
            lane.results[key] = lane.results.pop(unknown)
        if key not in lane.results:
            phase_result = PhaseResult(
                phase=result.spec.name, requested_backend=lane.requested, backend=backend,
                precision=precision, flop_per_step=result.spec.flop_per_step(), baseline=lane.baseline)
            if lane.hops:
                first = lane.hops[0]
                phase_result.fallback = {"from": first["from"], "to": backend, "reason": first["reason"],
                                         "detail": first["detail"], "hops": list(lane.hops)}
                lane.hops.clear()
            lane.results[key] = phase_result
        lane.results[key].add(result)

    def _fall_back(self, lane: _Lane, context: SliceContext, reason: str, detail: str) -> None:
        failed = lane.current or ""
        lane.position += 1
        target = lane.current or ""
        lane.replaced_crashes = 0
        lane.hops.append({"from": failed, "to": target, "reason": reason, "detail": detail})
        self._emit(context, FallbackTaken(failed, target, reason, detail))

    # -- workers --

    def _new_worker(self, backend: str, device: str) -> Worker:
        name = f"{backend}-{device}"
        if self.plan.in_process:
            return InProcessWorker(name, self.plan.worker_environment)
        return Worker(name, self.plan.worker_environment)

    def _prepare_command(self, phase: str, precision: str, backend: str, device: str,
                         warm: bool) -> Prepare:
        profile = self.plan.profile
        return Prepare(spec=self._spec(phase, backend), backend=backend, precision=precision,
                       device=device, seed=self.plan.seed, check_every=profile.check_every,
                       warm_up_steps=profile.warmup_steps if warm else 0,
                       technique=self.plan.technique, memory_format=self.plan.memory_format)

    def _start_workers(self, lanes: list[_Lane], phase: str, precision: str, warm: bool) -> None:
        """Give every lane a worker for its current backend (taken from those prepared ahead,
        or started and sent `Prepare` now, without waiting)."""
        for lane in lanes:
            backend = lane.current
            if backend is None or not self._availability(backend, precision)[0].ok:
                continue
            ahead = self._ahead.pop((phase, backend, lane.device, precision), None)
            if ahead is not None:
                lane.worker = ahead
                continue
            lane.worker, self._spare = self._spare or self._new_worker(backend, lane.device), None
            lane.worker.prepare(self._prepare_command(phase, precision, backend, lane.device, warm))

    def _await_all(self, lanes: list[_Lane], phase: str, precision: str) -> None:
        """Before the first phase: wait for every lane's worker (not phase time)."""
        for lane in lanes:
            if lane.worker is not None and lane.current is not None:
                context = self._context(lane, phase, precision, lane.current)
                lane.worker.await_prepared(self.plan.profile.prepare_timeout_seconds, self.stop,
                                           lane.first_events.append)
                for event in lane.first_events:
                    self._emit(context, event)

    def _worker(self, lane: _Lane, phase: str, precision: str, backend: str) -> Worker:
        if lane.worker is None:
            lane.worker = self._new_worker(backend, lane.device)
            lane.worker.prepare(self._prepare_command(phase, precision, backend, lane.device, warm=False))
        return lane.worker

    def _may_prepare_ahead(self, lanes: list[_Lane]) -> bool:
        if not self.plan.workers.prepare_ahead or self.plan.steps is not None:
            return False
        return not any(lane.current == "cpu" for lane in lanes)

    def _prepare_ahead(self, phase: str, precision: str) -> None:
        for lane in self._lanes(phase, precision):
            backend = lane.current
            if backend is None or not self._availability(backend, precision)[0].ok:
                continue
            worker = self._new_worker(backend, lane.device)
            worker.prepare(self._prepare_command(phase, precision, backend, lane.device, warm=False))
            self._ahead[(phase, backend, lane.device, precision)] = worker

    def _maybe_recycle(self, lane: _Lane, phase: str, precision: str, backend: str,
                       context: SliceContext) -> None:
        """Start a replacement for a worker past its age or memory bound (it takes over at a
        later slice boundary, once prepared)."""
        worker, policy = lane.worker, self.plan.workers
        if worker is None or lane.replacement is not None:
            return
        memory = _memory(worker)
        if lane.base_memory is None:  # what the worker holds after its first slice
            lane.base_memory = memory
        reason = ""
        if policy.max_age_s > 0 and worker.age() > policy.max_age_s:
            reason = "age"
        elif policy.max_memory_growth > 0 and memory and lane.base_memory \
                and memory > policy.max_memory_growth * lane.base_memory:
            reason = "memory"
        if reason:
            lane.replacement = self._new_worker(backend, lane.device)
            lane.replacement.prepare(self._prepare_command(phase, precision, backend, lane.device, warm=False))
            lane.replacement_reason = reason

    def _take_over_replacement(self, lane: _Lane, context: SliceContext) -> None:
        replacement = lane.replacement
        if replacement is None or not replacement.poll_prepared():
            return
        old = lane.worker
        lane.worker, lane.replacement, lane.base_memory = replacement, None, None
        self._emit(context, WorkerReplaced(lane.replacement_reason, old.pid if old else None, replacement.pid))
        self._retire(old)

    def _replace(self, lane: _Lane, phase: str, precision: str, backend: str, context: SliceContext,
                 reason: str, detail: str) -> None:
        old = lane.worker
        self._retire(old)
        lane.worker = self._new_worker(backend, lane.device)
        lane.worker.prepare(self._prepare_command(phase, precision, backend, lane.device, warm=False))
        lane.base_memory = None
        self._emit(context, WorkerReplaced(reason, old.pid if old else None, lane.worker.pid, detail))

    def _retire(self, worker: Worker | None) -> None:
        """Shut a worker down in the background (its exit must not hold up the next slice)."""
        if worker is None:
            return
        thread = threading.Thread(target=worker.close, name=f"soakd-retire-{worker.name}", daemon=True)
        thread.start()
        self._retiring.append(thread)

    def _shutdown(self) -> None:
        self._retire(self._spare)
        self._spare = None
        for worker in self._ahead.values():
            if self.stop.is_set():
                worker.kill()  # a stop cuts preparation short: nothing of it is worth keeping
            self._retire(worker)
        self._ahead.clear()
        for thread in self._retiring:
            thread.join()
        self._retiring.clear()

    def _emit(self, context: SliceContext | None, event: RotationEvent) -> None:
        if self.on_event is not None:
            with self._lock:
                self.on_event(context, event)


def _memory(worker: Worker) -> int | None:
    """What the recycling bound watches: RSS read from outside, plus Metal driver memory."""
    rss = worker.rss()
    driver = getattr(worker.last_memory, "device_driver_allocated", None) or 0
    return None if rss is None else rss + driver


def _from_record(record: BaselineRecord) -> PhaseResult:
    result = PhaseResult(phase=record.phase, requested_backend="cpu", backend="cpu", precision="fp32",
                         flop_per_step=record.flop_per_step, baseline=True)
    result.steps, result.seconds, result.slices = record.steps, record.seconds, 0
    result.cached_baseline = {"measured_at": record.measured_at, "key": record.key,
                              "shapes": record.shapes}
    return result


def run_rotation(plan: RotationPlan, on_event: RotationCallback | None = None,
                 stop: threading.Event | None = None) -> list[PhaseResult]:
    """Run `plan` (see `RotationRunner`)."""
    return RotationRunner(plan, on_event, stop).run()
