"""What a rotation tells its caller: typed events, defined once (torch-free).

The rotation (workloads/rotation.py) passes each event to its callback with the
`SliceContext` of the slice it belongs to (None for rotation- and phase-level events); worker
events (workloads/protocol.py) pass through with their slice's context. The daemon's recorder
(daemon/recorder.py) and `soakd once` consume them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from workloads.baseline import BaselineRecord
from workloads.phases import PhaseSpec
from workloads.protocol import WorkerEvent
from workloads.runner import SliceResult


@dataclass(frozen=True)
class SliceContext:
    """Where an event came from: phase, backend (where it really ran), device, precision, and
    the slice's own spec (every figure about a slice comes from it, never from live config)."""

    phase: str
    requested_backend: str
    backend: str
    precision: str
    spec: PhaseSpec
    device: str = "0"
    baseline: bool = False
    slice_id: int = 0
    concurrent: bool = False  # other lanes ran in the same round (they share the host's energy)

    @property
    def flop_per_step(self) -> int:
        """FLOP per step of this slice's spec."""
        return self.spec.flop_per_step()


@dataclass(frozen=True)
class RotationResolved:
    """What `auto` chose here: backends, precisions, and each backend's devices."""

    backends: tuple[str, ...]
    precisions: tuple[str, ...]
    devices: dict[str, tuple[str, ...]]
    seconds: float


@dataclass(frozen=True)
class BaselineReused:
    """A stored CPU baseline stands in for a measurement (workloads/baseline.py)."""

    record: BaselineRecord


@dataclass(frozen=True)
class PhaseStarted:
    """A phase (at one precision) begins: its workers are prepared; the clock starts now."""

    phase: str
    precision: str
    planned_seconds: float
    started: float  # monotonic
    slices: int


@dataclass(frozen=True)
class PhaseEnded:
    """A phase ended: its wall time and the time no measured step ran (summed over lanes)."""

    phase: str
    precision: str
    wall_seconds: float
    gap_seconds: float
    ended: float  # monotonic


@dataclass(frozen=True)
class SliceStarted:
    """A slice's turn begins (`turn_started`, monotonic); `index` of `slices` in the phase."""

    slice_id: int
    duration_s: float | None
    turn_started: float
    index: int
    slices: int


@dataclass(frozen=True)
class SliceEnded:
    """A slice ended; `result` has everything it measured."""

    result: SliceResult


@dataclass(frozen=True)
class FallbackTaken:
    """A lane moved along its fallback chain."""

    from_backend: str
    to_backend: str
    reason: str
    detail: str


@dataclass(frozen=True)
class WorkerReplaced:
    """A worker was replaced: `reason` is `age`, `memory` or the crash's reason."""

    reason: str
    old_pid: int | None
    new_pid: int | None
    detail: str = ""


RotationEvent = (WorkerEvent | RotationResolved | BaselineReused | PhaseStarted | PhaseEnded
                 | SliceStarted | SliceEnded | FallbackTaken | WorkerReplaced)
RotationCallback = Callable[[SliceContext | None, RotationEvent], None]

