"""The telemetry source interface, the reading it returns, and the null source.

A source is a thin reader around a pure parser. `available()` says whether it can work here
and why not; `read()` returns one `Reading` or raises; the sampler (daemon/sampler.py) owns
the timing, the cumulative counters and the per-source health.

A source with several devices (GPUs, RAPL zones) isolates them: one device or one reading
failing drops that reading for that device, reported in the `Reading` (`devices`,
`issues`), never the whole read. `read()` raises only when nothing at all could be read.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field


class SourceError(Exception):
    """A read failed; the sampler records the message and tries again next tick."""


class SourceUnavailable(SourceError):
    """The source cannot work on this machine (not macOS, no root, no driver...)."""


@dataclass(frozen=True)
class DeviceStatus:
    """One device of a source (a GPU, a RAPL zone): up, or down with the reason."""

    up: bool
    reason: str  # "ok" or why it is down, e.g. "gpu_is_lost: GPU is lost"


@dataclass(frozen=True)
class ReadingIssue:
    """One reading of one device that this read did not take.

    `reason` is a short label-safe slug (`not_supported`, `function_not_found`, `gpu_is_lost`,
    `permission_denied`, ...); `detail` the human text. A `lasting` issue is skipped from now
    on (the hardware or driver cannot give it) and is repeated in every later Reading as
    state; a passing one happened on this read only.
    """

    device: str
    reading: str  # energy, temperature, clock_events, ecc_corrected_volatile, ...
    reason: str
    detail: str
    lasting: bool = False


@dataclass(frozen=True)
class HardwareErrorEvent:
    """A hardware error counter of a device moved (or an XID event arrived) since the last read.

    `count` is the increase, `total` the device's cumulative count after it (the value the
    device reports: volatile ECC counts since the driver loaded; XID events since soakd
    started listening). The sampler stamps it with the time; the daemon tags it with the phase.
    """

    device: str
    kind: str  # xid | ecc_corrected_volatile | ecc_uncorrected_volatile | pcie_replay | ...
    count: int
    total: int
    detail: str = ""


@dataclass
class Reading:
    """What one `read()` saw. Units: J, W, °C, Hz, bytes, seconds.

    Energy is reported as *deltas*: the joules each component used since this source's
    previous read (counter sources subtract their raw counters and handle wrap-around and
    resets themselves, see daemon/sources/counters.py; powermetrics reports per-window energy
    already). `energy_window_seconds` is the time those deltas cover when the source measured
    it itself (powermetrics' `elapsed_ns`); when None the sampler uses the time between its
    own reads.

    `power_watts` holds instantaneous power readings. They are a fallback only, used for a
    component that has no energy counter (DESIGN.md: NVML's instantaneous power was off by up
    to 5x against its energy counter); the exporter labels them `method="instantaneous"`.

    `throttle_active` is the set of throttle reasons active now (daemon/throttle.py defines
    which reasons are throttles), or None when this source cannot see throttling.
    `throttle_events` counts reasons that turned on since the last read.

    `gaps` are (start, end) time.monotonic() spans the source could not measure (a restarted
    powermetrics child): no energy is reported for them. `notes` are one-off facts the daemon
    journals and logs (a child replaced for its size).
    """

    energy_joules: dict[str, float] = field(default_factory=dict)
    energy_window_seconds: float | None = None
    power_watts: dict[str, float] = field(default_factory=dict)
    temperatures_celsius: dict[str, float] = field(default_factory=dict)
    thermal_pressure: str | None = None  # canonical level, daemon/levels.py
    throttle_events: dict[str, int] = field(default_factory=dict)  # new events since last read
    throttle_active: frozenset[str] | None = None
    clock_hertz: dict[str, float] = field(default_factory=dict)
    memory_bytes: dict[str, int] = field(default_factory=dict)
    devices: dict[str, DeviceStatus] = field(default_factory=dict)
    issues: list[ReadingIssue] = field(default_factory=list)
    hardware_errors: dict[tuple[str, str], int] = field(default_factory=dict)  # (device, kind)
    hardware_events: list[HardwareErrorEvent] = field(default_factory=list)
    hardware_conditions: dict[tuple[str, str], bool] = field(default_factory=dict)
    power_limit_watts: dict[str, float] = field(default_factory=dict)  # device -> W
    counter_resets: dict[str, int] = field(default_factory=dict)  # component -> resets seen
    gaps: list[tuple[float, float]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # worth journaling and logging once each


class Source(ABC):
    """A telemetry source: `available()`, `read()`, `close()`."""

    name: str = "source"

    @abstractmethod
    def available(self) -> tuple[bool, str]:
        """(True, "ok...") or (False, reason). Cheap enough to call again now and then."""

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
        """Always (False, the reason given at construction)."""
        return False, self.reason

    def read(self) -> Reading:
        """Always raises SourceUnavailable with the reason."""
        raise SourceUnavailable(self.reason)


_UNSAFE = re.compile(r"[^A-Za-z0-9_.:-]+")
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")


def label_value(text: str, default: str = "unknown") -> str:
    """A sensor/zone/domain name turned into a short, predictable Prometheus label value: runs
    of characters other than letters, digits and `_.:-` become one `_`, the ends are stripped of
    `_`, lower case, at most 64 characters; `default` when nothing is left."""
    cleaned = _UNSAFE.sub("_", text.strip()).strip("_").lower()
    return cleaned[:64] or default


def error_slug(exc: BaseException) -> str:
    """A short label-safe reason for an exception: `NVMLError_GpuIsLost` -> `gpu_is_lost`,
    PermissionError -> `permission_denied`, FileNotFoundError -> `not_found`, else the class
    name in snake case."""
    if isinstance(exc, PermissionError):
        return "permission_denied"
    if isinstance(exc, FileNotFoundError):
        return "not_found"
    name = type(exc).__name__
    for prefix in ("NVMLError_", "NVMLError"):
        if name.startswith(prefix) and len(name) > len(prefix):
            name = name[len(prefix):]
            break
    return label_value(_CAMEL.sub("_", name), default="error")
