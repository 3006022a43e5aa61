"""Micro-benchmark records, profiles and constants (torch-free: the daemon and the worker
protocol use them without importing torch)."""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from workloads.host import host_info

CATEGORIES: tuple[str, ...] = (
    "matmul", "elementwise", "reduction", "transfer", "activation", "launch",
)
CATEGORY_TITLES: dict[str, str] = {
    "matmul": "Matrix Multiplication",
    "elementwise": "Element-wise Operations",
    "reduction": "Reduction Operations",
    "transfer": "Memory Transfer Bandwidth",
    "activation": "Activation Functions",
    "launch": "Launch Overhead",
}
# Categories and sizes from seed 002 (matrix sides n for n x n; vector lengths in elements).
MATMUL_SIZES: tuple[int, ...] = (64, 128, 256, 512, 1024)
VECTOR_SIZES: tuple[int, ...] = (1_000, 10_000, 100_000, 1_000_000)
# GELU: a convention, not a measurement: the operations of the tanh form
# 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))) with tanh counted as one (workloads/micro/__init__.py).
GELU_FLOP_PER_ELEMENT = 8
RELU_FLOP_PER_ELEMENT = 1  # one max per element
# Categories whose GB/s counts toward the peak memory bandwidth (matmul's bytes are the
# minimum traffic, launch moves one element).
BANDWIDTH_CATEGORIES: frozenset[str] = frozenset(
    {"elementwise", "reduction", "transfer", "activation"}
)
COREML_SKIP_REASON = (
    "Core ML backends are not part of the micro suite (Core ML runs whole converted models, "
    "not individual tensor ops)"
)


@dataclass(frozen=True)
class MicroProfile:
    """How many times each op and size runs, and the time limits (seconds).

    `MICRO_PROFILES` holds the ci, light and heavy profiles (the daemon's profile names).
    """

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
        """A copy with the iteration counts overridden (`iterations` applies to launch too).

        Raises ValueError for `iterations` below 1 or a negative `warmup`.
        """
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
    """A profile by name (or as given) with optional iteration overrides. Raises ValueError
    for an unknown name or an override out of range (see `MicroProfile.with_iterations`)."""
    if isinstance(profile, MicroProfile):
        base = profile
    elif profile in MICRO_PROFILES:
        base = MICRO_PROFILES[profile]
    else:
        raise ValueError(f"unknown profile {profile!r} (choose from {', '.join(MICRO_PROFILES)})")
    return base.with_iterations(iterations, warmup)


@dataclass
class MicroResult:
    """One op at one size on one backend; times in seconds, rates from the median.

    `size` is the display size ("1K", "64x64"), `n` the element count or matrix side;
    `flop` and `bytes` are per run (formulas in workloads/micro/__init__.py); `gflops` and
    `gb_per_s` are those over `median_s`, in 1e9 FLOP/s and 1e9 bytes/s, None where the op
    has no such figure. `flop_estimated` marks a FLOP count that is a convention (GELU).
    """

    backend: str
    device: str
    category: str
    op: str
    label: str
    size: str
    n: int
    dtype: str
    iterations: int
    warmup: int
    warmup_s: float
    avg_s: float
    min_s: float
    max_s: float
    median_s: float
    flop: int
    bytes: int
    gflops: float | None
    gb_per_s: float | None
    flop_estimated: bool = False
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict; NaN and infinite floats become None."""
        return {key: _finite(value) for key, value in asdict(self).items()}


@dataclass
class MicroRun:
    """The suite's outcome over several backends (what `soakd micro --json` prints)."""

    profile: MicroProfile
    dtype: str = "fp32"
    host: dict[str, str] = field(default_factory=host_info)
    results: list[MicroResult] = field(default_factory=list)
    devices: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)  # backend -> why it did not run
    failures: dict[str, str] = field(default_factory=dict)  # backend -> what went wrong
    device_warmup_s: dict[str, float] = field(default_factory=dict)  # backend -> seconds
    seconds: float = 0.0
    stopped: bool = False  # a stop request cut the run short
    # The host's 1-minute load average when the run started and ended: on a CPU the numbers
    # are only as good as the host is quiet (other processes steal cores from torch's threads).
    load_average: dict[str, float | None] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when something was measured and no backend failed (skipping is not failing)."""
        return bool(self.results) and not self.failures

    def backends(self) -> list[str]:
        """The backends that have results, in the order of their first result."""
        return list(dict.fromkeys(r.backend for r in self.results))

    def summary(self) -> dict[str, dict[str, Any]]:
        """Per backend: peak compute (GFLOPS), peak bandwidth (GB/s), where each was reached,
        and the launch overhead."""
        out: dict[str, dict[str, Any]] = {}
        for backend in self.backends():
            rows = [r for r in self.results if r.backend == backend]
            compute = [r for r in rows if r.gflops is not None and r.category != "launch"]
            bandwidth = [r for r in rows if r.gb_per_s is not None
                         and r.category in BANDWIDTH_CATEGORIES]
            launch = [r for r in rows if r.category == "launch"]
            best_c = max(compute, key=lambda r: r.gflops or 0.0, default=None)
            best_b = max(bandwidth, key=lambda r: r.gb_per_s or 0.0, default=None)
            out[backend] = {
                "device": self.devices.get(backend, rows[0].device),
                "peak_gflops": best_c.gflops if best_c else None,
                "peak_gflops_at": f"{best_c.label} {best_c.size}" if best_c else None,
                "peak_gb_per_s": best_b.gb_per_s if best_b else None,
                "peak_gb_per_s_at": f"{best_b.label} {best_b.size}" if best_b else None,
                "launch_overhead_s": launch[0].median_s if launch else None,
            }
        return out

    def to_dict(self) -> dict[str, Any]:
        """The run as JSON-ready data (the `soakd micro --json` document): the profile's
        counts, every result, the per-backend `summary`, skips, failures and load averages;
        NaN and infinite figures become None."""
        return {
            "host": self.host,
            "profile": self.profile.name,
            "dtype": self.dtype,
            "warmup": self.profile.warmup,
            "iterations": self.profile.iterations,
            "launch_iterations": self.profile.launch_iterations,
            "device_warmup_s": dict(self.device_warmup_s),
            "seconds": self.seconds,
            "results": [r.to_dict() for r in self.results],
            "summary": {
                backend: {key: _finite(value) for key, value in peaks.items()}
                for backend, peaks in self.summary().items()
            },
            "skipped": dict(self.skipped),
            "failures": dict(self.failures),
            "stopped": self.stopped,
            "load_average": dict(self.load_average),
        }


def load_average() -> float | None:
    """The host's 1-minute load average, None where the OS has none."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def size_label(n: int) -> str:
    """1000 -> "1K", 1_000_000 -> "1M" (decimal, as the seed writes sizes)."""
    for scale, suffix in ((1_000_000, "M"), (1_000, "K")):
        if n >= scale and n % scale == 0:
            return f"{n // scale}{suffix}"
    return str(n)
