"""Verdicts a user can act on, computed from measured slices (pure functions, no I/O).

The outlier rule: on a host with several GPUs, each phase runs on all of them at once (they
share the host's power and cooling); a GPU whose sustained throughput falls below a ratio of
the host's median GPU is named, not averaged away.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

DEFAULT_OUTLIER_RATIO = 0.95


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


def sustained_throughput(slices: list[tuple[float, float]]) -> float | None:
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
