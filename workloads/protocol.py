"""Typed records that cross a process or package boundary, defined once (no torch here).

Three groups:

- `RunConfig`: exactly how a slice ran (shapes, precision, TF32, technique, memory format,
  device, model variant). It is part of every slice's result, journal row and JSON, and the
  key that keeps comparisons from pooling slices that ran differently.
- Commands, parent -> worker: `Probe`, `Prepare`, `RunSlice`, `RunMicro`, `Stop`, `Shutdown`.
- Events, worker -> parent: `Ready`, `ProbeResult`, `Prepared`, `Warmup`, `Steps`, `Check`,
  `Failure`, `SliceDone`, and the micro-benchmark events.

A worker serves many commands (workloads/process.py): it is prepared once for one phase,
backend, device and precision and then runs slice after slice on command, so the device never
waits for a process to start between two slices. Times: durations in seconds; `started` and
`ended` stamps are `time.monotonic()` readings, which on Linux and macOS come from one
system-wide clock, so the parent can place a worker's segments on its own timeline.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

from workloads.micro.results import MicroProfile, MicroResult
from workloads.phases import PhaseSpec, variant_of

# --- how a slice ran -------------------------------------------------------------------------


@dataclass(frozen=True)
class RunConfig:
    """How one slice ran: the figures of two slices are comparable only when these are equal.

    `shapes` is the phase spec's fields as `name=value` words (batch included); `technique`
    is `eager`, `cuda_graph` (each step one CUDA graph replay) or `coreml`; `memory_format` is
    `contiguous` or `channels_last`; `device` is the device's index within its backend
    ("0" on a one-GPU host, "0" for the CPU); `variant` is the model variant (`standard`, or
    `ane` for the Neural Engine layout of the attention phase); `tf32` says whether fp32
    matrix products and convolutions were allowed to run as TF32.
    """

    phase: str
    backend: str
    device: str
    precision: str
    shapes: str
    technique: str = "eager"
    memory_format: str = "contiguous"
    variant: str = "standard"
    tf32: bool = False

    @property
    def key(self) -> str:
        """A short stable digest of every field (10 hex digits): the run's identity."""
        blob = json.dumps(asdict(self), sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:10]

    @classmethod
    def for_spec(cls, spec: PhaseSpec, backend: str, precision: str, *, device: str = "0",
                 technique: str = "eager", memory_format: str = "contiguous",
                 tf32: bool = False) -> RunConfig:
        """The run configuration of `spec` on `backend` (shapes and variant from the spec)."""
        return cls(phase=spec.name, backend=backend, device=device, precision=precision,
                   shapes=spec_shapes(spec), technique=technique, memory_format=memory_format,
                   variant=variant_of(spec), tf32=tf32)

    def to_dict(self) -> dict[str, Any]:
        """The fields plus `key`, for JSON and the journal."""
        return {**asdict(self), "key": self.key}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        """The inverse of `to_dict` (an extra `key` is ignored)."""
        names = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in names})


def spec_shapes(spec: PhaseSpec) -> str:
    """The spec's shape fields as `name=value` words, e.g. `batch=4 n=2048`."""
    parts = []
    for name, value in asdict(spec).items():
        if name == "name":
            continue
        text = ",".join(str(v) for v in value) if isinstance(value, tuple | list) else str(value)
        parts.append(f"{name}={text}")
    return " ".join(parts)


@dataclass(frozen=True)
class MemorySample:
    """A worker's memory, in bytes, read inside the worker at a segment boundary.

    `peak_rss` is the operating system's high-water mark of the worker's resident set
    (`getrusage` ru_maxrss), so a peak between two samples is not missed. The device figures
    are the allocator's gauges where the device has them (None where it has not): CUDA
    allocated / reserved / peak allocated, MPS allocated and driver-allocated.
    """

    rss: int
    peak_rss: int
    device_allocated: int | None = None
    device_reserved: int | None = None
    device_peak_allocated: int | None = None
    device_driver_allocated: int | None = None

    def device_gauges(self) -> dict[str, int]:
        """The device figures that are present, by kind name (`device_allocated`, ...)."""
        return {k: v for k, v in asdict(self).items() if k.startswith("device_") and v is not None}


# --- commands: parent -> worker --------------------------------------------------------------


@dataclass(frozen=True)
class Probe:
    """Ask which backends can run here, and in which precisions (answered by `ProbeResult`)."""

    backends: tuple[str, ...]
    precisions: tuple[str, ...]


@dataclass(frozen=True)
class Prepare:
    """Build one phase's model and inputs on one device and get the float64 reference.

    No device step runs while preparing unless `warm_up_steps` > 0, which the parent asks for
    only when nothing else is measured on the device (before a rotation's first phase); other
    warm-up happens at the first `RunSlice`. `technique` and `memory_format` are `auto`
    (the backend's best: CUDA graphs and channels_last conv on CUDA) or a forced choice.
    `check_every` 0 skips the reference (none is computed).
    """

    spec: PhaseSpec
    backend: str
    precision: str
    device: str = "0"
    seed: int = 0
    check_every: int = 50
    reference_dir: str | None = None
    warm_up_steps: int = 0
    technique: str = "auto"
    memory_format: str = "auto"


@dataclass(frozen=True)
class RunSlice:
    """Run one slice on the prepared model.

    `duration_s` is measured time (warm-up excluded); None runs `max_steps` steps instead.
    `warmup_steps` run first when the model has not been warmed up yet (a prepared worker's
    first slice); later slices of the same worker start measuring at once.
    """

    slice_id: int
    duration_s: float | None = 60.0
    max_steps: int | None = None
    warmup_steps: int = 3
    check_every: int = 50
    flush_interval_s: float = 0.25
    check_interval_s: float = 0.0  # and at most one check per this much measured time


@dataclass(frozen=True)
class RunMicro:
    """Run the micro-benchmark suite on one backend (see workloads/micro)."""

    backend: str
    profile: MicroProfile
    dtype: str = "fp32"
    categories: tuple[str, ...] = ()


@dataclass(frozen=True)
class Stop:
    """End the running slice or suite after the current step."""


@dataclass(frozen=True)
class Shutdown:
    """Release the device and exit."""


Command = Probe | Prepare | RunSlice | RunMicro | Stop | Shutdown


# --- events: worker -> parent ----------------------------------------------------------------


@dataclass(frozen=True)
class Availability:
    """Whether something can run here; when not, a reason a person understands."""

    ok: bool
    reason: str = ""

    @classmethod
    def yes(cls) -> Availability:
        """Available."""
        return cls(True, "")

    @classmethod
    def no(cls, reason: str) -> Availability:
        """Not available, with the reason."""
        return cls(False, reason)


@dataclass(frozen=True)
class BackendProbe:
    """One backend's answer: available at all, per precision, and its devices (indices)."""

    available: Availability
    precisions: dict[str, Availability] = field(default_factory=dict)
    devices: tuple[str, ...] = ("0",)


@dataclass(frozen=True)
class Ready:
    """The worker process started and imported what it needs."""

    pid: int


@dataclass(frozen=True)
class ProbeResult:
    """The answer to `Probe`, by backend name."""

    backends: dict[str, BackendProbe]


@dataclass(frozen=True)
class Prepared:
    """The model is on the device; `run` says how it will run, `device_name` in words."""

    run: RunConfig
    device_name: str
    prepare_seconds: float
    warmed_up: bool = False
    info: dict[str, Any] = field(default_factory=dict)
    ready_at: float = 0.0  # monotonic: when the worker finished preparing


@dataclass(frozen=True)
class Warmup:
    """Warm-up (and graph capture) before the first measured step; not in throughput.

    `run` is set when warming up changed how the slice runs (a CUDA graph that could not be
    captured falls back to eager; `Prepared.run` said `cuda_graph`).
    """

    steps: int
    seconds: float
    first_step_seconds: float
    started: float
    ended: float
    run: RunConfig | None = None


@dataclass(frozen=True)
class Steps:
    """Measured steps of one segment: how many, their latencies, the segment's time.

    `steps` counts every step run; `seconds` runs from one device synchronisation to the next
    and is what throughput divides by; `started`/`ended` place it on the monotonic clock.
    `durations` are step latencies each measured on its own: every step's when each step is
    timed (`sampled` False); when short steps on an asynchronous clock are timed in groups,
    only the steps of a sample of groups timed step by step (`sampled` True), so p99 and max
    are measured latencies, never group means (workloads/measure.py).
    """

    steps: int
    durations: tuple[float, ...]
    seconds: float
    started: float
    ended: float
    memory: MemorySample
    sampled: bool = False


@dataclass(frozen=True)
class Check:
    """An output compared with the CPU float64 reference (norm-wise relative error)."""

    step: int
    relative_error: float
    tolerance: float
    ok: bool


@dataclass(frozen=True)
class Failure:
    """Something failed. `reason` is a short label-safe word; `stage` is probe, prepare or run."""

    reason: str
    detail: str
    stage: str = "run"
    traceback: str = ""


@dataclass(frozen=True)
class SliceDone:
    """The slice ended: measured steps and seconds, and whether a stop cut it short."""

    slice_id: int
    steps: int
    seconds: float
    stopped: bool = False


@dataclass(frozen=True)
class MicroSkipped:
    """The backend cannot run the micro suite here."""

    reason: str


@dataclass(frozen=True)
class MicroPrepared:
    """The micro suite found its device."""

    device_name: str


@dataclass(frozen=True)
class MicroWarmup:
    """The device warm-up before the first case (not in any number)."""

    seconds: float


@dataclass(frozen=True)
class MicroMeasured:
    """One op at one size, measured."""

    result: MicroResult


@dataclass(frozen=True)
class MicroCaseFailure:
    """One op at one size failed; the suite goes on."""

    case: str
    reason: str
    detail: str


@dataclass(frozen=True)
class MicroDone:
    """The suite finished on this backend."""

    seconds: float
    stopped: bool = False


WorkerEvent = (
    Ready | ProbeResult | Prepared | Warmup | Steps | Check | Failure | SliceDone
    | MicroSkipped | MicroPrepared | MicroWarmup | MicroMeasured | MicroCaseFailure | MicroDone
)
