"""Rotation events -> journal rows, metrics and log lines (on the daemon's executor thread).

The rotation (workloads/rotation.py) runs in worker processes and tells the daemon what
happens through typed events; this is the one place that turns them into the journal, the
Prometheus instruments and the log. Every figure about a slice comes from the slice's own
context and result, never from the live configuration (a SIGHUP mid-rotation changes
nothing already running).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

from daemon.conditions import RunConditions
from daemon.config import Config
from daemon.exporter import WorkloadMetrics, series_key
from daemon.journal import Journal
from daemon.phase_verdicts import PhaseJudge, SeriesKey, VerdictSettings, journal_history, record_verdicts
from daemon.records import ConditionsRow, SliceRow
from daemon.sampler import Sampler, Snapshot
from daemon.verdicts import DeviceVerdict, device_outliers, sustained_throughput
from workloads.backends import parse_backends, parse_precisions
from workloads.phases import Profile, get_profile
from workloads.protocol import Check, Failure, Steps
from workloads.rotation import (
    BaselineReused,
    FallbackTaken,
    PhaseEnded,
    PhaseStarted,
    RotationEvent,
    RotationPlan,
    RotationResolved,
    SliceContext,
    SliceEnded,
    SliceStarted,
    WorkerPolicy,
    WorkerReplaced,
)


def plan_from_config(config: Config, profile: Profile | None = None) -> RotationPlan:
    """The rotation a config asks for (`auto` backends are resolved by the rotation's own probe;
    `profile` is the chosen one when the config says `auto`, daemon/autoprofile.py)."""
    return RotationPlan(
        profile=profile or get_profile(config.profile, config.profile_overrides),
        backends=parse_backends(config.backends), phases=list(config.phases),
        precisions=parse_precisions(",".join(config.precisions)),
        mode=config.mode,  # type: ignore[arg-type]
        seed=config.seed, cpu_baseline=config.cpu_baseline, variants=dict(config.attention_variants),
        devices=config.devices,
        workers=WorkerPolicy(max_age_s=config.worker_max_age_seconds,
                             max_memory_growth=config.worker_max_memory_growth,
                             prepare_ahead=config.prepare_ahead))


@dataclass
class Progress:
    """Where a rotation is: phase i of n, slice k of m, elapsed and estimated remaining."""

    started: float = field(default_factory=time.monotonic)
    units: int = 0  # phases x precisions
    unit: int = 0
    planned_seconds: float = 0.0  # per phase
    phase: str = ""
    precision: str = ""
    slices: int = 0
    slice_index: int = 0
    phase_started: float = math.nan

    def remaining_seconds(self, now: float | None = None) -> float | None:
        """Planned time left: this phase's remainder plus the phases after it (None unknown)."""
        if not self.units or not self.planned_seconds:
            return None
        now = time.monotonic() if now is None else now
        in_phase = 0.0 if math.isnan(self.phase_started) else now - self.phase_started
        return max(0.0, self.planned_seconds - in_phase) + self.planned_seconds * (self.units - self.unit)

    def ratio(self, now: float | None = None) -> float | None:
        """Planned phase time done over the rotation's planned phase time (0-1; None unknown)."""
        remaining = self.remaining_seconds(now)
        total = self.planned_seconds * self.units
        return None if remaining is None or total <= 0 else min(1.0, max(0.0, 1.0 - remaining / total))

    def to_dict(self) -> dict[str, Any]:
        """For the journal's `current` state (what `soakd status` shows)."""
        remaining = self.remaining_seconds()
        return {"phase": self.phase, "precision": self.precision, "phase_index": self.unit,
                "phases": self.units, "slice_index": self.slice_index + 1, "slices": self.slices,
                "elapsed_seconds": round(time.monotonic() - self.started, 1),
                "remaining_seconds": round(remaining, 1) if remaining is not None else None}


class Recorder:
    """Journals, measures and logs one rotation's events. A bug here never ends a rotation:
    `on_event` logs and swallows its own exceptions."""

    def __init__(self, journal: Journal, metrics: WorkloadMetrics, sampler: Sampler, log: Any) -> None:
        self.journal = journal
        self.metrics = metrics
        self.sampler = sampler
        self.log = log
        self.rotation_id: int | None = None
        self.progress = Progress()
        self._phases: list[str] = []
        self._windows: dict[int, tuple[float, Snapshot]] = {}  # slice id -> (unix start, snapshot)
        # this phase's measured (FLOP, seconds) per slice, by (backend, precision, device)
        self._phase_slices: dict[tuple[str, str, str], list[tuple[float, float]]] = {}
        self.judge = PhaseJudge(sampler)
        self.conditions = RunConditions(sampler)  # idle temperatures: the daemon starts idle
        self.settings = VerdictSettings()
        self._profile = ""

    def begin(self, rotation_id: int, plan: RotationPlan, settings: VerdictSettings | None = None,
              conditions: ConditionsRow | None = None) -> None:
        """A rotation starts (journaled as `rotation_id`) with the verdicts' `settings` (the
        defaults when None) and the `conditions` it starts under (daemon/conditions.py), which
        are journaled and exported."""
        self.rotation_id = rotation_id
        self.progress = Progress()
        self._phases = list(plan.phases)
        self._profile = plan.profile.name
        self._windows.clear()
        self.settings = settings or VerdictSettings()
        if conditions is not None:
            self.journal.add_conditions(rotation_id, conditions)
            self.metrics.rotation_conditions(conditions)

    def end(self) -> None:
        """The rotation ended."""
        self.rotation_id = None

    def on_event(self, context: SliceContext | None, event: RotationEvent) -> None:
        """The rotation's callback."""
        try:
            if context is None:
                self._rotation_event(event)
            else:
                self._slice_event(context, event)
        except Exception:
            self.log.exception("event_handling_failed", event_type=type(event).__name__)

    # --- rotation-level events ---

    def _rotation_event(self, event: RotationEvent) -> None:
        if isinstance(event, RotationResolved):
            self.progress.units = len(self._phases) * len(event.precisions)
            self.metrics.rotation_started([
                (phase, backend, precision, device)
                for phase in self._phases for backend in event.backends
                for precision in event.precisions for device in event.devices.get(backend, ("0",))])
            self.log.info("rotation_resolved", backends=list(event.backends),
                          precisions=list(event.precisions),
                          devices={k: list(v) for k, v in event.devices.items()},
                          probe_seconds=round(event.seconds, 2))
        elif isinstance(event, BaselineReused):
            record = event.record
            self.log.info("cpu_baseline_reused", phase=record.phase,
                          measured_at=round(record.measured_at), steps_per_second=record.steps_per_second)
            self.journal.add_event("baseline_reused", {"phase": record.phase, "key": record.key,
                                                       "measured_at": record.measured_at,
                                                       "steps": record.steps, "seconds": record.seconds},
                                   rotation_id=self.rotation_id)
        elif isinstance(event, PhaseStarted):
            self.progress.unit += 1
            self.progress.phase, self.progress.precision = event.phase, event.precision
            self.progress.planned_seconds, self.progress.slices = event.planned_seconds, event.slices
            self.progress.phase_started, self.progress.slice_index = event.started, 0
            self.metrics.begin_phase(event.planned_seconds)
            self._phase_slices.clear()
            self.judge.begin_phase()
            self.log.info("phase_start", phase=event.phase, precision=event.precision,
                          phase_index=f"{self.progress.unit}/{self.progress.units}", slices=event.slices,
                          remaining_seconds=_round(self.progress.remaining_seconds()))
        elif isinstance(event, PhaseEnded):
            devices = self._judge_devices(event.phase)
            verdicts = self.judge.judge(event.phase, event.precision, self._profile, self.settings,
                                        journal_history(self.journal), devices)
            record_verdicts(verdicts, profile=self._profile, rotation_id=self.rotation_id or 0,
                            journal=self.journal, metrics=self.metrics, log=self.log)
            self.metrics.end_phase([(event.phase, backend, event.precision, device)
                                    for backend, precision, device in self._phase_slices
                                    if precision == event.precision])
            share = event.gap_seconds / event.wall_seconds if event.wall_seconds > 0 else 0.0
            self.log.info("phase_end", phase=event.phase, precision=event.precision,
                          wall_seconds=round(event.wall_seconds, 2), load_gap_seconds=round(event.gap_seconds, 3),
                          load_gap_share=round(share, 4))

    def _judge_devices(self, phase: str) -> dict[SeriesKey, DeviceVerdict]:
        """Name a device that fell behind the host's median device in this phase; the verdicts
        by (backend, precision, device)."""
        out: dict[SeriesKey, DeviceVerdict] = {}
        groups: dict[tuple[str, str], dict[str, float]] = {}
        for (backend, precision, device), slices in self._phase_slices.items():
            value = sustained_throughput(slices)
            if value is not None:
                groups.setdefault((backend, precision), {})[device] = value
        for (backend, precision), throughput in groups.items():
            verdicts = device_outliers(throughput, self.settings.outlier_ratio)
            if not verdicts:
                continue
            self.metrics.device_verdicts(phase, backend, precision, verdicts)
            for verdict in verdicts.values():
                out[(backend, precision, verdict.device)] = verdict
                if verdict.outlier:
                    detail = {"phase": phase, "backend": backend, "precision": precision,
                              "device": verdict.device, "relative": round(verdict.relative, 4),
                              "flop_per_second": verdict.flop_per_second, "ratio": self.settings.outlier_ratio,
                              "host": {d: v.flop_per_second for d, v in verdicts.items()}}
                    self.log.warning("device_outlier", **detail)
                    self.journal.add_event("device_outlier", detail, rotation_id=self.rotation_id)
        return out

    # --- slice-level events ---

    def _slice_event(self, context: SliceContext, event: RotationEvent) -> None:
        self.metrics.handle(context, event)
        log = self.log.bind(phase=context.phase, backend=context.backend, precision=context.precision,
                            device=context.device)
        if isinstance(event, SliceStarted):
            self.progress.slice_index = event.index
            self.metrics.rotation_progress(self.progress.ratio(), self.progress.remaining_seconds())
            self._windows[event.slice_id] = (time.time(), self.sampler.snapshot())
            self.judge.slice_started(context, event.slice_id)
            self.journal.set_state("current", {"rotation": self.rotation_id, "phase": context.phase,
                                               "backend": context.backend, "device": context.device,
                                               "requested_backend": context.requested_backend,
                                               "precision": context.precision, "since": time.time(),
                                               "progress": self.progress.to_dict()})
            log.info("slice_start", requested_backend=context.requested_backend,
                     slice=f"{event.index + 1}/{event.slices}",
                     phase_index=f"{self.progress.unit}/{self.progress.units}",
                     elapsed_seconds=round(time.monotonic() - self.progress.started, 1),
                     remaining_seconds=_round(self.progress.remaining_seconds()))
        elif isinstance(event, SliceEnded):
            self._end_slice(context, event, log)
        elif isinstance(event, Steps):
            self.judge.running(context.slice_id)
        elif isinstance(event, Failure):
            log.warning("slice_failure", reason=event.reason, detail=event.detail, stage=event.stage)
        elif isinstance(event, FallbackTaken):
            log.warning("fallback", to_backend=event.to_backend, reason=event.reason, detail=event.detail)
            self.journal.add_event("fallback", {"from": event.from_backend, "to": event.to_backend,
                                                "reason": event.reason, "detail": event.detail},
                                   rotation_id=self.rotation_id)
        elif isinstance(event, WorkerReplaced):
            log.info("worker_replaced", reason=event.reason, old_pid=event.old_pid, new_pid=event.new_pid)
            self.journal.add_event("worker_replaced", {"reason": event.reason, "old_pid": event.old_pid,
                                                       "new_pid": event.new_pid, "detail": event.detail,
                                                       "phase": context.phase, "backend": context.backend},
                                   rotation_id=self.rotation_id)
        elif isinstance(event, Check) and not event.ok:
            log.warning("numeric_mismatch", relative_error=event.relative_error,
                        tolerance=event.tolerance, step=event.step)
            self.journal.add_event("mismatch", {"phase": context.phase, "backend": context.backend,
                                                "relative_error": event.relative_error},
                                   rotation_id=self.rotation_id)

    def _end_slice(self, context: SliceContext, event: SliceEnded, log: Any) -> None:
        result = event.result
        if not context.baseline and result.seconds > 0:
            self._phase_slices.setdefault((context.backend, context.precision, context.device), []).append(
                (float(result.flop), result.seconds))
        started_wall, start = self._windows.pop(result.slice_id, (time.time(), None))
        # a tick now, so the energy history reaches past the slice's last measured segment
        end = self.sampler.sample_once()
        thermal = _thermal_between(start, end) if start is not None else {}
        # energy over the slice's measured segments only: start-up, warm-up and hand-over do
        # no measured work, so they must not cost FLOP/J anything
        measured = self.sampler.energy_over(result.segments)
        self.judge.slice_ended(context, result, end, measured)
        joules = measured.system.joules if measured.method != "none" else None
        note = f"{measured.method}; {measured.system.describe()}" if joules is not None else None
        if not context.concurrent:  # lanes running at once share one host's energy: no split
            self.metrics.add_slice_energy(series_key(context), joules)
        self.journal.add_slice(self.rotation_id or 0, SliceRow.from_result(
            result, requested_backend=context.requested_backend, baseline=context.baseline,
            device=context.device, started_at=started_wall, energy_joules=measured.components,
            thermal_seconds=thermal, system_energy_joules=joules, energy_note=note))
        log.info("slice_end", steps=result.steps, seconds=round(result.seconds, 3),
                 flop_per_second=result.flop / result.seconds if result.seconds else 0.0,
                 load_gap_seconds=round(result.gap_seconds, 3),
                 energy_joules=round(joules, 3) if joules is not None else None,
                 failure=result.failure.reason if result.failure else None)


def _thermal_between(start: Snapshot, end: Snapshot) -> dict[str, float]:
    """Seconds spent at each thermal level between two snapshots."""
    return {level: seconds - start.thermal_seconds_total.get(level, 0.0)
            for level, seconds in end.thermal_seconds_total.items()}


def _round(value: float | None) -> float | None:
    return round(value, 1) if value is not None else None

