"""Verdicts a user can act on, computed from measured slices (pure functions, no I/O).

Four verdicts, each per phase x backend x precision x device (a *series*):

- **The outlier.** On a host with several GPUs each phase runs on all of them at once (they
  share the host's power and cooling); a GPU whose sustained throughput falls below a ratio of
  the host's median GPU is named, not averaged away (`device_outliers`).
- **Stability score.** The series' *loops* are its slices in the phase, each with its
  measured throughput (FLOP over measured seconds, warm-up excluded); stability is the worst
  loop over the best (3DMark's stress-test definition, pass mark 0.97): loops of 100, 99, 98,
  97, 96 score 0.96, a fail (`stability_score`).
- **Every slowdown explained or flagged.** The warm level is the median throughput of the
  phase's first two loops; a later loop at least 5 % below it is a slowdown. It is explained
  when the telemetry changed between the warm loops and that loop (`explain`): a throttle
  reason appeared or its share of the loop's time grew (by more than 10 points: the sampler's
  1 s ticks jitter a share near 100 %), thermal pressure rose, the device clock
  fell by at least half the throughput drop, or the device's power moved relative to its cap
  (onto it, off it, or the cap itself moved). Otherwise it is unexplained. A device at its
  power cap from the start has the cap in its warm state: staying there explains nothing.
- **History band.** Across rotations of the same run configuration (run_key and profile):
  the median and the 2.5-97.5 percentile band of sustained throughput over the last N
  rotations; a rotation below the band is a regression (`history_band`).
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from daemon.levels import LEVELS

DEFAULT_OUTLIER_RATIO = 0.95
DEFAULT_PASS_MARK = 0.97  # 3DMark's stress-test pass mark
DEFAULT_SLOWDOWN_THRESHOLD = 0.05  # a loop this far below the warm level is a slowdown
DEFAULT_HISTORY_ROTATIONS = 20
MIN_HISTORY_ROTATIONS = 5  # fewer earlier rotations make no band: 2.5-97.5 % of 2 values is no band
WARM_LOOPS = 2
THROTTLE_SHARE_MARGIN = 0.10  # a throttle reason's share of a loop must grow by more than this (1 s ticks jitter it)
AT_CAP = 0.95  # power at or above this fraction of its limit is "at the cap"
LIMIT_MOVED = 0.01  # a power limit that changed by more than this fraction moved


@dataclass(frozen=True)
class DeviceVerdict:
    """One device's sustained throughput in a phase against the host's median device.

    `relative` is throughput / median (1.0 for the median device); `outlier` is True when it is
    below the ratio the check used.
    """

    device: str
    flop_per_second: float
    relative: float
    outlier: bool


def sustained_throughput(slices: Sequence[tuple[float, float]]) -> float | None:
    """FLOP/s over the second half of a device's slices in a phase (the first half holds its
    warm-up transient); all of them when there are fewer than two. `slices` are (FLOP,
    measured seconds) in order. None without measured time."""
    kept = slices[len(slices) // 2:] if len(slices) >= 2 else slices
    seconds = sum(s for _, s in kept)
    return sum(f for f, _ in kept) / seconds if seconds > 0 else None


def device_outliers(throughput: dict[str, float], ratio: float = DEFAULT_OUTLIER_RATIO
                    ) -> dict[str, DeviceVerdict]:
    """Each device against the median of all devices (FLOP/s by device id).

    Needs at least two devices (one GPU has no peers: {}). The median of an even count is the
    mean of the middle two, so with two GPUs each is compared with their mean.
    """
    usable = {device: value for device, value in throughput.items() if value > 0}
    if len(usable) < 2:
        return {}
    median = statistics.median(usable.values())
    return {device: DeviceVerdict(device, value, value / median, value / median < ratio)
            for device, value in sorted(usable.items())}


# --- stability score ----------------------------------------------------------------------------


@dataclass(frozen=True)
class StabilityScore:
    """Worst loop over best loop of one series in one phase.

    `loops` are the loops' throughputs (FLOP/s) in order; `score` is min/max (0-1), None with
    fewer than two loops (one loop is not a series); `passed` is score >= `pass_mark`, None
    without a score.
    """

    loops: tuple[float, ...]
    score: float | None
    pass_mark: float

    @property
    def passed(self) -> bool | None:
        """score >= pass_mark; None without a score."""
        return None if self.score is None else self.score >= self.pass_mark


def stability_score(loops: Sequence[float], pass_mark: float = DEFAULT_PASS_MARK) -> StabilityScore:
    """3DMark's loop stability: the worst loop's throughput over the best loop's.

    `loops` are FLOP/s per loop; loops that measured nothing (<= 0) are left out. Raises
    ValueError for a pass mark outside (0, 1].
    """
    if not 0 < pass_mark <= 1:
        raise ValueError(f"pass mark must be in (0, 1], got {pass_mark}")
    kept = tuple(float(v) for v in loops if v > 0)
    score = min(kept) / max(kept) if len(kept) >= 2 else None
    return StabilityScore(kept, score, pass_mark)


# --- slowdowns ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoopTelemetry:
    """What the telemetry said during one loop of one series (daemon/loop_telemetry.py makes it).

    `seconds` is the wall time the readings cover (the slice's turn); `throttle_seconds` the
    seconds each throttle reason (daemon/throttle.py) was active in it, host-wide (NVML reports
    the union of the GPUs' reasons); `throttle_known` whether any source could see throttling.
    `thermal_level` is the highest thermal-pressure level seen (daemon/levels.py), None where no
    source reports one. The device's own readings: `clock_hertz` its clock (mean over the
    sampler ticks in the loop), `power_watts` its power (its energy counter over the loop's
    measured time; the whole system's where the device has no counter of its own),
    `power_limit_watts` the limit it enforces (NVML), `temperature_celsius` its temperature at
    the loop's end. None: not readable here.
    """

    seconds: float = 0.0
    throttle_seconds: Mapping[str, float] = field(default_factory=dict)
    throttle_known: bool = False
    thermal_level: str | None = None
    clock_hertz: float | None = None
    power_watts: float | None = None
    power_limit_watts: float | None = None
    temperature_celsius: float | None = None

    def throttle_share(self, reason: str) -> float:
        """Share (0-1) of the loop's time `reason` was active."""
        if self.seconds <= 0:
            return 0.0
        return min(1.0, self.throttle_seconds.get(reason, 0.0) / self.seconds)

    @property
    def at_cap(self) -> bool | None:
        """Power at or above AT_CAP of its limit; None without both readings."""
        if self.power_watts is None or not self.power_limit_watts:
            return None
        return self.power_watts >= AT_CAP * self.power_limit_watts

    def to_dict(self) -> dict[str, object]:
        """The readings for the journal (throttle shares instead of seconds)."""
        return {"seconds": round(self.seconds, 3), "throttle_known": self.throttle_known,
                "throttle_share": {r: round(self.throttle_share(r), 4) for r in sorted(self.throttle_seconds)},
                "thermal_level": self.thermal_level, "clock_hertz": self.clock_hertz,
                "power_watts": _round(self.power_watts), "power_limit_watts": self.power_limit_watts,
                "temperature_celsius": self.temperature_celsius}


@dataclass(frozen=True)
class Loop:
    """One loop: its measured throughput (FLOP/s) and the telemetry over it."""

    flop_per_second: float
    telemetry: LoopTelemetry = field(default_factory=LoopTelemetry)


@dataclass(frozen=True)
class Slowdown:
    """A loop at least the threshold below the warm level.

    `index` is the loop's position in the phase (0-based); `drop` is 1 - loop / warm (0-1);
    `explanations` say which telemetry changed (empty: unexplained); `warm` and `loop` are the
    readings compared (the warm loops' combined, and the loop's).
    """

    index: int
    flop_per_second: float
    warm_flop_per_second: float
    drop: float
    explanations: tuple[str, ...]
    warm: LoopTelemetry
    loop: LoopTelemetry

    @property
    def explained(self) -> bool:
        """Some telemetry changed with the drop."""
        return bool(self.explanations)

    def to_dict(self) -> dict[str, object]:
        """For the journal's `slowdown` event and the log."""
        return {"loop": self.index, "flop_per_second": self.flop_per_second,
                "warm_flop_per_second": self.warm_flop_per_second, "drop": round(self.drop, 4),
                "explained": self.explained, "explanations": list(self.explanations),
                "readings": {"warm": self.warm.to_dict(), "loop": self.loop.to_dict()}}


def warm_level(loops: Sequence[Loop]) -> float | None:
    """Median throughput of the first WARM_LOOPS loops (their mean, for two); None with fewer."""
    if len(loops) < WARM_LOOPS:
        return None
    return statistics.median(loop.flop_per_second for loop in loops[:WARM_LOOPS])


def warm_telemetry(loops: Sequence[Loop]) -> LoopTelemetry:
    """The warm loops' telemetry as one: throttle seconds and wall seconds summed (so shares
    are over both), the highest thermal level, the mean clock, power and limit, the last
    temperature."""
    warm = [loop.telemetry for loop in loops[:WARM_LOOPS]]
    seconds: dict[str, float] = {}
    for t in warm:
        for reason, value in t.throttle_seconds.items():
            seconds[reason] = seconds.get(reason, 0.0) + value
    levels = [t.thermal_level for t in warm if t.thermal_level in LEVELS]
    return LoopTelemetry(
        seconds=sum(t.seconds for t in warm), throttle_seconds=seconds,
        throttle_known=any(t.throttle_known for t in warm),
        thermal_level=max(levels, key=LEVELS.index) if levels else None,
        clock_hertz=_mean(t.clock_hertz for t in warm), power_watts=_mean(t.power_watts for t in warm),
        power_limit_watts=_mean(t.power_limit_watts for t in warm),
        temperature_celsius=next((t.temperature_celsius for t in reversed(warm)
                                  if t.temperature_celsius is not None), None))


def explain(warm: LoopTelemetry, loop: LoopTelemetry, drop: float) -> tuple[str, ...]:
    """What changed between the warm loops' telemetry and a slow loop's, in words (empty: nothing).

    `drop` is the loop's throughput drop below the warm level (0-1). Each rule needs its
    readings on both sides; a reading missing on either side explains nothing.
    """
    out: list[str] = []
    for reason in sorted(set(loop.throttle_seconds) | set(warm.throttle_seconds)):
        before, now = warm.throttle_share(reason), loop.throttle_share(reason)
        if (before == 0 and now > 0) or now - before > THROTTLE_SHARE_MARGIN:
            out.append(f"throttle {reason}: {before:.0%} -> {now:.0%} of the time")
    if (warm.thermal_level in LEVELS and loop.thermal_level in LEVELS
            and LEVELS.index(loop.thermal_level) > LEVELS.index(warm.thermal_level)):
        out.append(f"thermal pressure rose: {warm.thermal_level} -> {loop.thermal_level}")
    if warm.clock_hertz and loop.clock_hertz is not None:
        clock_drop = 1.0 - loop.clock_hertz / warm.clock_hertz
        if drop > 0 and clock_drop >= 0.5 * drop:
            out.append(f"clock fell {clock_drop:.0%}: {warm.clock_hertz / 1e6:.0f} -> "
                       f"{loop.clock_hertz / 1e6:.0f} MHz")
    out += _power_change(warm, loop)
    return tuple(out)


def _power_change(warm: LoopTelemetry, loop: LoopTelemetry) -> list[str]:
    """The power cap moved, or the device's power moved onto or off its cap."""
    if warm.power_limit_watts and loop.power_limit_watts:
        moved = loop.power_limit_watts / warm.power_limit_watts - 1.0
        if abs(moved) > LIMIT_MOVED:
            return [f"power limit moved: {warm.power_limit_watts:.0f} -> {loop.power_limit_watts:.0f} W"]
    before, now = warm.at_cap, loop.at_cap
    if before is None or now is None or before == now:
        return []
    where = "off its cap" if before else "onto its cap"
    return [f"power moved {where}: {warm.power_watts:.0f} -> {loop.power_watts:.0f} W "
            f"(limit {loop.power_limit_watts:.0f} W)"]


def find_slowdowns(loops: Sequence[Loop], threshold: float = DEFAULT_SLOWDOWN_THRESHOLD) -> list[Slowdown]:
    """Every loop after the warm loops whose throughput is at least `threshold` (0-1) below the
    warm level, with what explains it. [] with fewer than WARM_LOOPS + 1 loops. Raises
    ValueError for a threshold outside (0, 1)."""
    if not 0 < threshold < 1:
        raise ValueError(f"slowdown threshold must be in (0, 1), got {threshold}")
    level = warm_level(loops)
    if level is None or level <= 0:
        return []
    warm = warm_telemetry(loops)
    out = []
    for index, loop in enumerate(loops[WARM_LOOPS:], start=WARM_LOOPS):
        drop = 1.0 - loop.flop_per_second / level
        if drop >= threshold - 1e-12:
            out.append(Slowdown(index, loop.flop_per_second, level, drop,
                                explain(warm, loop.telemetry, drop), warm, loop.telemetry))
    return out


# --- history ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HistoryBand:
    """Sustained throughput (FLOP/s) of earlier rotations of one run configuration.

    `rotations` is how many values it was made of; `low`/`high` the 2.5th/97.5th percentiles
    and `median` the 50th (linear interpolation between order statistics, numpy's default).
    """

    rotations: int
    low: float
    median: float
    high: float

    def below(self, value: float) -> bool:
        """`value` lies below the band: a regression."""
        return value < self.low


def history_band(values: Sequence[float], limit: int = DEFAULT_HISTORY_ROTATIONS,
                 minimum: int = MIN_HISTORY_ROTATIONS) -> HistoryBand | None:
    """The band over the last `limit` of `values` (oldest first; non-positive values left out);
    None with fewer than `minimum` values."""
    kept = [float(v) for v in values if v > 0][-limit:] if limit > 0 else []
    if len(kept) < max(2, minimum):
        return None
    cuts = statistics.quantiles(kept, n=40, method="inclusive")  # 39 cuts: 2.5 %, 5 %, ..., 97.5 %
    return HistoryBand(len(kept), cuts[0], cuts[19], cuts[38])


def _mean(values: Iterable[float | None]) -> float | None:
    numbers = [float(v) for v in values if v is not None]
    return sum(numbers) / len(numbers) if numbers else None


def _round(value: float | None, digits: int = 3) -> float | None:
    return round(value, digits) if value is not None else None
