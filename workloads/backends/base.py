"""What every backend provides: an availability probe with a reason, and prepared workloads."""

from __future__ import annotations

import sys
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from workloads.phases import PhaseSpec
from workloads.timing import StepClock

if TYPE_CHECKING:
    import torch

PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "bf16")


@dataclass(frozen=True)
class Availability:
    ok: bool
    reason: str = ""

    @classmethod
    def yes(cls) -> Availability:
        return cls(True, "")

    @classmethod
    def no(cls, reason: str) -> Availability:
        return cls(False, reason)


class BackendFailure(Exception):
    """A backend cannot prepare or run a phase; `reason` is a short metric-label-safe word."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def classify_failure(exc: BaseException) -> BackendFailure:
    """Map an exception raised while preparing or running a step to a failure reason."""
    if isinstance(exc, BackendFailure):
        return exc
    text = f"{type(exc).__name__}: {exc}".strip()
    lowered = text.lower()
    torch = sys.modules.get("torch")  # never imported here: only a worker that ran torch has it
    oom_type = getattr(torch, "OutOfMemoryError", None) if torch is not None else None
    if (oom_type is not None and isinstance(exc, oom_type)) or "out of memory" in lowered:
        return BackendFailure("out_of_memory", text)
    if isinstance(exc, MemoryError):
        return BackendFailure("out_of_memory", text)
    if "not implemented for" in lowered or "unsupported dtype" in lowered:
        return BackendFailure("unsupported_precision", text)
    return BackendFailure("runtime_error", text)


@dataclass
class PreparedWorkload(ABC):
    """A phase's model and fixed inputs, ready on a device; one `step()` is one timed unit."""

    backend: str
    device_label: str
    precision: str
    clock: StepClock
    info: dict[str, Any] = field(default_factory=dict)

    @abstractmethod
    def step(self) -> None:
        """Run one step on the fixed inputs (asynchronously where the device allows)."""

    @abstractmethod
    def output_sample(self) -> torch.Tensor:
        """Sample 0 of the last step's output as a float64 CPU tensor (synchronises)."""

    def device_memory(self) -> dict[str, int]:
        """Device allocator gauges in bytes (empty where the device has none)."""
        return {}

    def close(self) -> None:  # noqa: B027 - optional hook, most workloads need nothing here
        """Release device memory."""


class Backend(ABC):
    name: str = ""

    @abstractmethod
    def available(self) -> Availability:
        """Whether this backend can run here; when not, a reason a person understands."""

    @abstractmethod
    def supports(self, precision: str) -> Availability:
        """Whether this backend runs the given precision."""

    @abstractmethod
    def prepare(self, spec: PhaseSpec, precision: str, seed: int) -> PreparedWorkload:
        """Build the phase's model and inputs on the device; raises BackendFailure."""
