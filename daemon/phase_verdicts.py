"""A phase's verdicts in the daemon: loops collected while slices run, judged when the phase ends.

The recorder (daemon/recorder.py) feeds `PhaseJudge` the rotation's slice events: each slice
of a series (phase x backend x precision x device) is one loop, with the throughput it measured
and the telemetry the sampler saw while it ran (daemon/loop_telemetry.py). When the phase
ends, `PhaseJudge.judge` applies the pure rules of daemon/verdicts.py per series: the stability
score, the slowdowns and what explains them, and the series' sustained throughput against the
history band of earlier rotations with the same run configuration (run_key and profile), read
from the journal. `record_verdicts` then journals (table `verdicts`, `slowdown` events),
exports (WorkloadMetrics.series_verdict) and logs them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from daemon.energy import IntervalEnergy
from daemon.loop_telemetry import LoopWindow, device_keys
from daemon.records import VerdictRow
from daemon.sampler import Sampler
from daemon.verdicts import (
    DEFAULT_HISTORY_ROTATIONS,
    DEFAULT_OUTLIER_RATIO,
    DEFAULT_PASS_MARK,
    DEFAULT_SLOWDOWN_THRESHOLD,
    DeviceVerdict,
    HistoryBand,
    Loop,
    Slowdown,
    StabilityScore,
    find_slowdowns,
    history_band,
    stability_score,
    sustained_throughput,
    warm_level,
)
from workloads.rotation import SliceContext
from workloads.runner import SliceResult

SeriesKey = tuple[str, str, str]  # backend, precision, device (within one phase)
History = Callable[[str, str, int], list[float]]  # (run_key, profile, limit) -> oldest first


@dataclass(frozen=True)
class VerdictSettings:
    """The verdicts' thresholds (config section [verdicts]); fixed for a rotation when it starts.

    `pass_mark` (0-1]: the stability score that passes; `slowdown_threshold` (0-1): how far
    below the warm level a loop is a slowdown; `history_rotations`: how many earlier rotations
    make the history band; `outlier_ratio`: a device below this share of the host's median
    device is an outlier.
    """

    pass_mark: float = DEFAULT_PASS_MARK
    slowdown_threshold: float = DEFAULT_SLOWDOWN_THRESHOLD
    history_rotations: int = DEFAULT_HISTORY_ROTATIONS
    outlier_ratio: float = DEFAULT_OUTLIER_RATIO

    @classmethod
    def from_config(cls, config: Any) -> VerdictSettings:
        """The settings of a daemon.config.Config."""
        return cls(config.pass_mark, config.slowdown_threshold, config.history_rotations, config.outlier_ratio)


@dataclass
class SeriesVerdict:
    """One series' verdicts for a phase (see VerdictRow for the fields' meaning)."""

    phase: str
    backend: str
    precision: str
    device: str
    run_key: str | None
    loops: list[Loop]
    score: StabilityScore
    slowdowns: list[Slowdown]
    slowdown_threshold: float
    sustained: float | None
    band: HistoryBand | None
    device_verdict: DeviceVerdict | None = None

    @property
    def labels(self) -> tuple[str, str, str, str]:
        """(phase, backend, precision, device): the series' metric labels."""
        return (self.phase, self.backend, self.precision, self.device)

    @property
    def unexplained(self) -> list[Slowdown]:
        """The slowdowns nothing in the telemetry explains."""
        return [s for s in self.slowdowns if not s.explained]

    @property
    def regression(self) -> bool | None:
        """Sustained throughput below the history band; None without both."""
        return None if self.band is None or self.sustained is None else self.band.below(self.sustained)

    def row(self, profile: str, ended_at: float | None = None) -> VerdictRow:
        """The journal row."""
        band, device = self.band, self.device_verdict
        return VerdictRow(
            phase=self.phase, backend=self.backend, precision=self.precision, device=self.device,
            profile=profile, ended_at=time.time() if ended_at is None else ended_at,
            pass_mark=self.score.pass_mark, slowdown_threshold=self.slowdown_threshold, run_key=self.run_key,
            loops=list(self.score.loops), loop_readings=[loop.telemetry.to_dict() for loop in self.loops],
            stability=self.score.score, passed=self.score.passed, warm_flop_per_second=warm_level(self.loops),
            slowdowns=len(self.slowdowns), unexplained_slowdowns=len(self.unexplained),
            sustained_flop_per_second=self.sustained,
            history_rotations=band.rotations if band else 0, history_low=band.low if band else None,
            history_median=band.median if band else None, history_high=band.high if band else None,
            regression=self.regression,
            device_relative=device.relative if device else None, device_outlier=device.outlier if device else None)


@dataclass
class _Series:
    run_key: str | None = None
    loops: list[Loop] = field(default_factory=list)
    slices: list[tuple[float, float]] = field(default_factory=list)  # (FLOP, measured seconds)


class PhaseJudge:
    """Loops of the running phase, per series; judged at the phase's end. Used from the
    recorder's thread only."""

    def __init__(self, sampler: Sampler) -> None:
        self.sampler = sampler
        self._series: dict[SeriesKey, _Series] = {}
        self._windows: dict[int, LoopWindow] = {}  # slice id -> its window

    def begin_phase(self) -> None:
        """A phase starts: forget the last one's loops."""
        self._series.clear()
        self._windows.clear()

    def slice_started(self, context: SliceContext, slice_id: int) -> None:
        """A slice starts: its window opens on the sampler's latest snapshot."""
        if not context.baseline:
            self._windows[slice_id] = LoopWindow(self.sampler.snapshot(),
                                                 device_keys(context.backend, context.device))

    def running(self, slice_id: int) -> None:
        """The slice reported steps: take the sampler's latest tick into its window."""
        window = self._windows.get(slice_id)
        if window is not None:
            window.add(self.sampler.snapshot())

    def slice_ended(self, context: SliceContext, result: SliceResult, end: Any,
                    energy: IntervalEnergy | None) -> None:
        """A slice ended: one loop of its series, when it measured steps (`end` is the
        snapshot taken at its end, `energy` that of its measured segments)."""
        window = self._windows.pop(result.slice_id, None)
        if context.baseline or window is None or result.seconds <= 0 or result.steps <= 0:
            return
        key = (context.backend, context.precision, context.device)
        series = self._series.setdefault(key, _Series())
        run_key = result.run.key if result.run is not None else series.run_key
        if series.loops and run_key != series.run_key:  # another run configuration: never pooled
            series = self._series[key] = _Series()
        series.run_key = run_key
        telemetry = window.finish(end, energy, result.seconds)
        series.loops.append(Loop(float(result.flop) / result.seconds, telemetry))
        series.slices.append((float(result.flop), result.seconds))

    def judge(self, phase: str, precision: str, profile: str, settings: VerdictSettings,
              history: History | None = None,
              devices: dict[SeriesKey, DeviceVerdict] | None = None) -> list[SeriesVerdict]:
        """Every series of `phase` at `precision` that ran loops: its verdicts. `history` gives the
        sustained throughput of earlier rotations of a run configuration (None: no history);
        `devices` the outlier verdicts of this phase by series."""
        out = []
        for key, series in self._series.items():
            backend, series_precision, device = key
            if series_precision != precision:
                continue
            sustained = sustained_throughput(series.slices)
            band = None
            if history is not None and series.run_key is not None:
                band = history_band(history(series.run_key, profile, settings.history_rotations),
                                    settings.history_rotations)
            out.append(SeriesVerdict(
                phase, backend, precision, device, series.run_key, list(series.loops),
                stability_score([loop.flop_per_second for loop in series.loops], settings.pass_mark),
                find_slowdowns(series.loops, settings.slowdown_threshold), settings.slowdown_threshold,
                sustained, band, (devices or {}).get(key)))
        return out


def journal_history(journal: Any) -> History:
    """Earlier sustained throughputs of a run configuration from the journal's verdict rows,
    oldest first."""

    def read(run_key: str, profile: str, limit: int) -> list[float]:
        rows = journal.verdicts(run_key=run_key, profile=profile, limit=limit)
        return [float(r["sustained_flop_per_second"]) for r in reversed(rows)
                if r["sustained_flop_per_second"] is not None]

    return read


def record_verdicts(verdicts: list[SeriesVerdict], *, profile: str, rotation_id: int, journal: Any,
                    metrics: Any, log: Any) -> None:
    """Journal, export and log a phase's verdicts: one `verdicts` row per series, a `slowdown`
    event per slowdown (with its readings; a warning in the log when unexplained)."""
    for verdict in verdicts:
        journal.add_verdict(rotation_id, verdict.row(profile))
        metrics.series_verdict(verdict)
        labels = dict(zip(("phase", "backend", "precision", "device"), verdict.labels, strict=True))
        for slowdown in verdict.slowdowns:
            detail = {**labels, "run_key": verdict.run_key, **slowdown.to_dict()}
            journal.add_event("slowdown", detail, rotation_id=rotation_id)
            if slowdown.explained:
                log.info("slowdown_explained", **detail)
            else:
                log.warning("slowdown_unexplained", **detail)
        band = verdict.band
        log.info("verdict", **labels, stability=_round(verdict.score.score), passed=verdict.score.passed,
                 pass_mark=verdict.score.pass_mark, loops=len(verdict.loops),
                 slowdowns=len(verdict.slowdowns), unexplained=len(verdict.unexplained),
                 sustained_flop_per_second=verdict.sustained,
                 history=[band.low, band.median, band.high] if band else None, regression=verdict.regression)


def _round(value: float | None) -> float | None:
    return round(value, 4) if value is not None else None
