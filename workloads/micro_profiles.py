"""Micro-benchmark profiles: how many times each op and size runs (`soakd micro --profile`).

Torch-free, so the daemon's config and the CLI's parser take the profile names from here
without importing torch; workloads/micro.py runs them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any


@dataclass(frozen=True)
class MicroProfile:
    """How many times each op and size runs."""

    name: str
    warmup: int  # untimed (timed apart) runs before measuring each op and size
    iterations: int  # timed runs of each op and size
    launch_iterations: int  # timed runs of the launch-overhead op (it is cheap)
    timeout_s: float  # a backend's worker is killed after this long
    # Before the first case, the device (and torch's thread pool) runs matmuls for this long:
    # without it the first case in a fresh process reads ~1.6x slow on a CPU, whatever its
    # own warm-up count. Timed and reported apart.
    device_warmup_s: float = 0.25

    def with_iterations(
        self, iterations: int | None = None, warmup: int | None = None
    ) -> MicroProfile:
        """A copy with the iteration counts overridden (`iterations` applies to launch too)."""
        changes: dict[str, Any] = {}
        if iterations is not None:
            if iterations < 1:
                raise ValueError(f"iterations must be at least 1, got {iterations}")
            changes["iterations"] = iterations
            changes["launch_iterations"] = iterations
        if warmup is not None:
            if warmup < 0:
                raise ValueError(f"warmup must not be negative, got {warmup}")
            changes["warmup"] = warmup
        return replace(self, **changes) if changes else self


MICRO_PROFILES: dict[str, MicroProfile] = {
    "ci": MicroProfile("ci", warmup=3, iterations=25, launch_iterations=200, timeout_s=300.0,
                       device_warmup_s=0.25),
    "light": MicroProfile("light", warmup=10, iterations=100, launch_iterations=1000,
                          timeout_s=900.0, device_warmup_s=1.0),
    "heavy": MicroProfile("heavy", warmup=20, iterations=500, launch_iterations=5000,
                          timeout_s=3600.0, device_warmup_s=3.0),
}


def get_micro_profile(
    profile: str | MicroProfile, iterations: int | None = None, warmup: int | None = None
) -> MicroProfile:
    """A profile by name (or as given) with optional iteration overrides; ValueError if unknown."""
    if isinstance(profile, MicroProfile):
        base = profile
    elif profile in MICRO_PROFILES:
        base = MICRO_PROFILES[profile]
    else:
        raise ValueError(f"unknown profile {profile!r} (choose from {', '.join(MICRO_PROFILES)})")
    return base.with_iterations(iterations, warmup)
