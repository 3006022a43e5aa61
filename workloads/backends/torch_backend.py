"""torch on the CPU, an NVIDIA GPU (cuda) or the Metal GPU (mps)."""

from __future__ import annotations

import os
import platform
import sys
from dataclasses import dataclass
from functools import cache
from typing import Any

import torch

from workloads.backends.base import (
    Availability,
    Backend,
    BackendFailure,
    PreparedWorkload,
    classify_failure,
)
from workloads.models import build
from workloads.phases import PhaseSpec
from workloads.timing import EventClock, StepClock, SyncClock

TORCH_DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
}


@dataclass
class TorchWorkload(PreparedWorkload):
    model: torch.nn.Module | None = None
    inputs: tuple[torch.Tensor, ...] = ()
    device: torch.device | None = None
    last_output: torch.Tensor | None = None

    def step(self) -> None:
        assert self.model is not None
        with torch.inference_mode():
            # Free the previous output first so its memory is reused, as in a plain loop; held
            # over the next step it costs a fresh buffer per step (~8% on a small bf16 CPU matmul).
            self.last_output = None
            self.last_output = self.model(*self.inputs)

    def output_sample(self) -> torch.Tensor:
        if self.last_output is None:
            self.step()
        assert self.last_output is not None
        return self.last_output[:1].to("cpu", torch.float64)

    def device_memory(self) -> dict[str, int]:
        return device_memory(self.device)

    def close(self) -> None:
        self.model = None
        self.inputs = ()
        self.last_output = None
        release_device_memory(self.device)


def device_memory(device: torch.device | None) -> dict[str, int]:
    """Allocator gauges for the device in use, in bytes."""
    if device is None:
        return {}
    if device.type == "cuda":
        return {
            "device_allocated": int(torch.cuda.memory_allocated(device)),
            "device_reserved": int(torch.cuda.memory_reserved(device)),
            "device_peak_allocated": int(torch.cuda.max_memory_allocated(device)),
        }
    if device.type == "mps":
        return {
            "device_allocated": int(torch.mps.current_allocated_memory()),
            "device_driver_allocated": int(torch.mps.driver_allocated_memory()),
        }
    return {}


def release_device_memory(device: torch.device | None) -> None:
    import gc

    gc.collect()
    if device is not None and device.type == "cuda":
        torch.cuda.empty_cache()
    elif device is not None and device.type == "mps":
        torch.mps.empty_cache()


class TorchBackend(Backend):
    device_type: str = "cpu"
    precisions: tuple[str, ...] = ("fp32", "fp16", "bf16")

    def __init__(self, clock: StepClock | None = None) -> None:
        self._clock = clock

    def device(self) -> torch.device:
        return torch.device(self.device_type)

    def device_label(self) -> str:
        return self.device_type

    def make_clock(self) -> StepClock:
        return SyncClock(lambda: None)

    def supports(self, precision: str) -> Availability:
        if precision not in self.precisions:
            return Availability.no(f"{self.name} does not run {precision}")
        return Availability.yes()

    def prepare(self, spec: PhaseSpec, precision: str, seed: int) -> PreparedWorkload:
        availability = self.available()
        if not availability.ok:
            raise BackendFailure("unavailable", availability.reason)
        supported = self.supports(precision)
        if not supported.ok:
            raise BackendFailure("unsupported_precision", supported.reason)
        device = self.device()
        dtype = TORCH_DTYPES[precision]
        try:
            model, inputs = build(spec, seed)
            model = model.to(device=device, dtype=dtype)
            tensors = tuple(t.to(device=device, dtype=dtype) for t in inputs.values())
        except Exception as exc:
            release_device_memory(device)
            raise classify_failure(exc) from exc
        return TorchWorkload(
            backend=self.name,
            device_label=self.device_label(),
            precision=precision,
            clock=self._clock or self.make_clock(),
            model=model,
            inputs=tensors,
            device=device,
        )


class CpuBackend(TorchBackend):
    name = "cpu"
    device_type = "cpu"

    def available(self) -> Availability:
        return Availability.yes()

    def device_label(self) -> str:
        return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


class CudaBackend(TorchBackend):
    name = "cuda"
    device_type = "cuda"

    def available(self) -> Availability:
        if torch.version.cuda is None:
            return Availability.no("this torch build has no CUDA support (CPU-only wheel)")
        if not torch.cuda.is_available():
            visible = os.environ.get("CUDA_VISIBLE_DEVICES")
            hint = f" (CUDA_VISIBLE_DEVICES={visible!r})" if visible is not None else ""
            return Availability.no(f"no NVIDIA GPU visible to torch{hint}")
        return Availability.yes()

    def supports(self, precision: str) -> Availability:
        if precision == "bf16" and self.available().ok and not torch.cuda.is_bf16_supported():
            return Availability.no("this NVIDIA GPU has no bf16 support (needs compute capability 8.0+)")
        return super().supports(precision)

    def device(self) -> torch.device:
        return torch.device("cuda", torch.cuda.current_device())

    def device_label(self) -> str:
        return f"cuda:{torch.cuda.current_device()} ({torch.cuda.get_device_name()})"

    def make_clock(self) -> StepClock:
        return EventClock(torch)


class MpsBackend(TorchBackend):
    name = "mps"
    device_type = "mps"

    def available(self) -> Availability:
        return _mps_availability()

    def supports(self, precision: str) -> Availability:
        if precision == "bf16" and self.available().ok and not _mps_bf16():
            return Availability.no("MPS has bf16 only on macOS 14 or later")
        return super().supports(precision)

    def device_label(self) -> str:
        return f"mps ({platform.machine()}, macOS {platform.mac_ver()[0]})"

    def make_clock(self) -> StepClock:
        return SyncClock(torch.mps.synchronize)


@cache
def _mps_availability() -> Availability:
    if sys.platform != "darwin":
        return Availability.no(f"MPS needs macOS on Apple Silicon (this is {platform.system()})")
    if not torch.backends.mps.is_built():
        return Availability.no("this torch build has no MPS support")
    if not torch.backends.mps.is_available():
        return Availability.no("torch reports MPS unavailable (needs macOS 12.3+ on Apple Silicon)")
    return Availability.yes()


@cache
def _mps_bf16() -> bool:
    try:
        torch.ones(1, dtype=torch.bfloat16, device="mps")
        return True
    except Exception:
        return False


def probe_summary() -> dict[str, Any]:
    """Host facts recorded with results."""
    return {
        "torch": torch.__version__,
        "cuda_available": torch.cuda.is_available(),
        "mps_available": _mps_availability().ok,
        "threads": torch.get_num_threads(),
    }
