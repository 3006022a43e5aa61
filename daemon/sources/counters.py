"""Cumulative hardware energy counters: a wrap, a reset, or an ordinary step.

RAPL's `energy_uj` wraps to 0 at `max_energy_range_uj` (about 262 kJ on Intel client CPUs,
every few minutes at full load); NVML's total-energy counter is 64-bit and only goes back when
the driver reloads. A counter that reads lower than before is therefore either a wrap or a
reset, and the two must not be confused: taking a reset from 100 kJ to 40 J for a wrap adds
~162 kJ in one tick (~162 kW). A wrap is accepted only when the energy it implies is
plausible for the interval (at most `max_watts` on average); otherwise it is a reset, and the
interval counts nothing (its energy is unknown, not invented).

This module is a helper for counter sources, not a source.
"""

from __future__ import annotations

from dataclasses import dataclass

# The largest server CPU packages and GPUs draw well under 1.5 kW; a wrap that implies more
# than this average over the interval is a counter reset.
DEFAULT_MAX_WATTS = 2000.0


@dataclass(frozen=True)
class CounterStep:
    """The outcome of two counter readings.

    `delta` is in the counter's own units (µJ for RAPL, mJ for NVML) and is 0 for a reset.
    `kind` is "step" (the counter went up or stayed), "wrap" (it went past its range once) or
    "reset" (it went back and a wrap is impossible or implausible).
    """

    delta: int
    kind: str


def counter_step(previous: int, current: int, max_range: int | None, seconds: float | None,
                 joules_per_unit: float, max_watts: float = DEFAULT_MAX_WATTS) -> CounterStep:
    """Classify the move from `previous` to `current` over `seconds`.

    `max_range` is where the counter wraps to 0 (None or 0 when unknown: then no wrap is ever
    assumed, and a decrease is a reset). `joules_per_unit` converts counter units to joules
    (1e-6 for µJ). With `seconds` unknown (None) a wrap is judged on the range alone.
    """
    if current >= previous:
        return CounterStep(current - previous, "step")
    if not max_range or max_range <= 0 or previous > max_range:
        return CounterStep(0, "reset")
    wrapped = max_range - previous + current
    if seconds is not None and seconds > 0 and wrapped * joules_per_unit > max_watts * seconds:
        return CounterStep(0, "reset")
    return CounterStep(wrapped, "wrap")
