"""The telemetry source interface, the reading it returns, and the null source.

A source is a thin reader around a pure parser. `available()` says whether it can work here
and why not; `read()` returns one `Reading` or raises; the sampler (daemon/sampler.py) owns
the timing, the cumulative counters and the per-source health.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field


class SourceError(Exception):
    """A read failed; the sampler records the message and tries again next tick."""


class SourceUnavailable(SourceError):
    """The source cannot work on this machine (not macOS, no root, no driver...)."""


@dataclass
class Reading:
    """What one `read()` saw. Units: J, W, °C, Hz, bytes.

    Energy is reported as *deltas*: the joules each component used since this source's
    previous read (counter sources subtract their raw counters and handle wrap-around
    themselves; powermetrics reports per-window energy already). `energy_window_seconds` is
    the time those deltas cover when the source measured it itself (powermetrics'
    `elapsed_ns`); when None the sampler uses the time between its own reads.

    `power_watts` holds instantaneous power readings. They are a fallback only, used for a
    component that has no energy counter (DESIGN.md: NVML's instantaneous power was off by up
    to 5x against its energy counter).
    """

    energy_joules: dict[str, float] = field(default_factory=dict)
    energy_window_seconds: float | None = None
    power_watts: dict[str, float] = field(default_factory=dict)
    temperatures_celsius: dict[str, float] = field(default_factory=dict)
    thermal_pressure: str | None = None  # canonical level, daemon/levels.py
    throttle_events: dict[str, int] = field(default_factory=dict)  # new events since last read
    clock_hertz: dict[str, float] = field(default_factory=dict)
    memory_bytes: dict[str, int] = field(default_factory=dict)


class Source(ABC):
    """A telemetry source: `available()`, `read()`, `close()`."""

    name: str = "source"

    @abstractmethod
    def available(self) -> tuple[bool, str]:
        """(True, "ok") or (False, reason). Cheap enough to call again now and then."""

    @abstractmethod
    def read(self) -> Reading:
        """One reading; raises SourceError (or anything else) on failure."""

    def close(self) -> None:  # noqa: B027 - most sources hold nothing to release
        """Release processes, handles and threads. Safe to call twice."""


class NullSource(Source):
    """A source that is never available, so a missing one still shows up as down."""

    def __init__(self, name: str, reason: str) -> None:
        self.name = name
        self.reason = reason

    def available(self) -> tuple[bool, str]:
        return False, self.reason

    def read(self) -> Reading:
        raise SourceUnavailable(self.reason)


_UNSAFE = re.compile(r"[^A-Za-z0-9_.:-]+")


def label_value(text: str, default: str = "unknown") -> str:
    """A sensor/zone/domain name turned into a short, predictable Prometheus label value."""
    cleaned = _UNSAFE.sub("_", text.strip()).strip("_").lower()
    return cleaned[:64] or default
