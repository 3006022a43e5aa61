"""What every backend provides: an availability probe with a reason, and prepared workloads.

torch-free at import: the daemon reads backend names and precisions from here; only a worker
that prepares a workload imports torch (through the backend family's own module).
"""

from __future__ import annotations

import math
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from workloads.phases import PhaseSpec
from workloads.protocol import Availability, RunConfig
from workloads.timing import StepClock

if TYPE_CHECKING:
    import torch

# `tf32` is fp32 tensors with matrix products and convolutions allowed to round their inputs
# to TF32 (10-bit mantissa) on NVIDIA tensor cores; `fp32` means TF32 off.
PRECISIONS: tuple[str, ...] = ("fp32", "tf32", "fp16", "bf16")

__all__ = ["PRECISIONS", "Availability", "Backend", "BackendFailure", "PrepareOptions",
           "PreparedWorkload", "classify_failure"]


class BackendFailure(Exception):
    """A backend cannot prepare or run a phase; `reason` is a short metric-label-safe word."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


# What an out-of-memory looks like in an exception's text, on every backend: CUDA's and MPS's
# allocators ("out of memory"), the CPU allocator ("DefaultCPUAllocator: can't allocate
# memory"), the OS (ENOMEM, "Cannot allocate memory"), Core ML / Metal ("insufficient memory").
OOM_MARKERS: tuple[str, ...] = ("out of memory", "can't allocate memory", "cannot allocate memory",
                                "insufficient memory", "failed to allocate")


def classify_failure(exc: BaseException) -> BackendFailure:
    """Map an exception raised while preparing or running a step to a failure reason."""
    if isinstance(exc, BackendFailure):
        return exc
    text = f"{type(exc).__name__}: {exc}".strip()
    lowered = text.lower()
    torch = sys.modules.get("torch")  # never imported here: only a worker that ran torch has it
    oom_type = getattr(torch, "OutOfMemoryError", None) if torch is not None else None
    is_oom = (oom_type is not None and isinstance(exc, oom_type)) or isinstance(exc, MemoryError)
    if is_oom or any(marker in lowered for marker in OOM_MARKERS):
        return BackendFailure("out_of_memory", text)
    if "not implemented for" in lowered or "unsupported dtype" in lowered:
        return BackendFailure("unsupported_precision", text)
    return BackendFailure("runtime_error", text)


@dataclass(frozen=True)
class PrepareOptions:
    """How to run a phase, beyond shapes and precision.

    `device`: the device index within the backend ("0"). `technique`: `auto` (the backend's
    best: a CUDA graph per step on CUDA), `eager`, or `cuda_graph`. `memory_format`: `auto`
    (channels_last for the conv net on CUDA), `contiguous` or `channels_last`.
    """

    device: str = "0"
    technique: str = "auto"
    memory_format: str = "auto"


@dataclass
class PreparedWorkload(ABC):
    """A phase's model and fixed inputs, ready on a device; one `step()` is one timed unit.

    `run` says how it runs (workloads.protocol.RunConfig). `warm_up()` runs the warm-up steps
    (and, where the backend captures one, the CUDA graph) once; later slices measure at once.
    """

    backend: str
    device_label: str
    precision: str
    clock: StepClock
    spec: PhaseSpec | None = None
    run: RunConfig | None = None
    info: dict[str, Any] = field(default_factory=dict)
    warmed_up: bool = False
    warmup_steps_done: int = 0
    last_warmup_step_seconds: float = 0.0

    @abstractmethod
    def step(self) -> None:
        """Run one step on the fixed inputs (asynchronously where the device allows)."""

    @abstractmethod
    def output_sample(self) -> torch.Tensor:
        """Sample 0 of the last step's output as a float64 CPU tensor (synchronises)."""

    def warm_up(self, steps: int, now: Callable[[], float] = time.perf_counter) -> float:
        """Run `steps` synchronised steps; returns the first one's seconds (NaN for none).

        Backends that capture a graph do it here, after the plain steps.
        """
        first = math.nan
        for i in range(steps):
            started = now()
            self.step()
            self.clock.sync()
            self.last_warmup_step_seconds = now() - started
            if i == 0:
                first = self.last_warmup_step_seconds
        self.warmup_steps_done = steps
        self.warmed_up = True
        return first

    def device_memory(self) -> dict[str, int]:
        """Device allocator gauges in bytes (empty where the device has none)."""
        return {}

    def close(self) -> None:  # noqa: B027 - optional hook, most workloads need nothing here
        """Release device memory."""


class Backend(ABC):
    """A backend family member: probes, precision support, and `prepare()`."""

    name: str = ""

    @abstractmethod
    def available(self) -> Availability:
        """Whether this backend can run here; when not, a reason a person understands."""

    @abstractmethod
    def supports(self, precision: str) -> Availability:
        """Whether this backend runs the given precision."""

    def devices(self) -> tuple[str, ...]:
        """The device indices this backend can run on here ("0" for a single device)."""
        return ("0",)

    @abstractmethod
    def prepare(self, spec: PhaseSpec, precision: str, seed: int,
                options: PrepareOptions | None = None) -> PreparedWorkload:
        """Build the phase's model and inputs on the device (`options` None: the defaults);
        raises BackendFailure."""
