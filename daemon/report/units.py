"""How the report writes numbers, times and durations (SI prefixes, local clock time)."""

from __future__ import annotations

import math
import time

_PREFIXES = ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k"), (1.0, ""), (1e-3, "m"),
             (1e-6, "µ"))


def si_scale(value: float) -> tuple[float, str]:
    """(divisor, prefix) that puts `value` in [1, 1000): 2.5e12 -> (1e12, "T"); below 1e-6 the
    micro prefix is kept."""
    magnitude = abs(value)
    for scale, prefix in _PREFIXES:
        if magnitude >= scale:
            return scale, prefix
    return _PREFIXES[-1]


def si(value: float | None, unit: str) -> str:
    """`value` with 3 significant digits and an SI prefix: si(2.5e12, "FLOP/s") == "2.5 TFLOP/s";
    "—" for None, NaN or infinity."""
    if value is None or not math.isfinite(value):
        return "—"
    if value == 0:
        return f"0 {unit}"
    scale, prefix = si_scale(value)
    return f"{value / scale:.3g} {prefix}{unit}"


def when(stamp: float | None, fmt: str = "%Y-%m-%d %H:%M:%S") -> str:
    """An epoch second as local clock time; "—" for None or 0."""
    return time.strftime(fmt, time.localtime(stamp)) if stamp else "—"


def duration(seconds: float) -> str:
    """A duration in the unit that reads best: "4.2 s", "90 s", "12 min", "3.5 h", "2.0 d"."""
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def slices(count: int) -> str:
    """"1 slice", "3 slices"."""
    return f"{count} slice" if count == 1 else f"{count} slices"


def clip(text: str, limit: int) -> str:
    """`text` cut to `limit` characters, the last one an ellipsis when it was cut."""
    return text if len(text) <= limit else text[: limit - 1] + "…"
