"""torch on the CPU, an NVIDIA GPU (cuda) or the Metal GPU (mps)."""

from __future__ import annotations

import math
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import cache
from typing import Any, cast

import torch

from workloads.backends.base import (
    Availability,
    Backend,
    BackendFailure,
    PreparedWorkload,
    PrepareOptions,
    classify_failure,
)
from workloads.models import build
from workloads.phases import ConvSpec, PhaseSpec
from workloads.protocol import RunConfig
from workloads.timing import EventClock, StepClock, SyncClock

# tf32 holds fp32 tensors: TF32 is a math mode of the matrix units, not a storage type.
TORCH_DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "tf32": torch.float32,
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
}


@dataclass
class TorchWorkload(PreparedWorkload):
    """A torch model and its fixed inputs on one device; a step is one forward pass.

    With `graph_wanted` (CUDA), `warm_up()` captures one step as a CUDA graph after the plain
    warm-up steps and every later step is one replay: the whole 12-layer step is one launch,
    so a launch-bound step no longer leaves the GPU waiting on Python. A capture that fails
    falls back to eager, with the reason in `info["cuda_graph_fallback"]` and `run` updated.
    """

    model: torch.nn.Module | None = None
    inputs: tuple[torch.Tensor, ...] = ()
    device: torch.device | None = None
    last_output: torch.Tensor | None = None
    graph_wanted: bool = False
    graph: Any = None  # torch.cuda.CUDAGraph once captured

    def step(self) -> None:
        """One forward pass on the fixed inputs (a graph replay once captured), queued on the
        device without waiting for it; the output is kept in `last_output`."""
        if self.graph is not None:
            self.graph.replay()  # writes the captured output tensor in place
            return
        assert self.model is not None
        with torch.inference_mode():
            # Free the previous output first so its memory is reused, as in a plain loop; held
            # over the next step it costs a fresh buffer per step (~8% on a small bf16 CPU matmul).
            self.last_output = None
            self.last_output = self.model(*self.inputs)

    def warm_up(self, steps: int, now: Callable[[], float] = time.perf_counter) -> float:
        """Run `steps` synchronised steps; returns the first one's seconds (NaN for none).

        With `graph_wanted`, at least one step runs on a side stream (timed with
        time.perf_counter, not `now`), then one step is captured as a CUDA graph and replayed
        once; a failed capture falls back to one more eager step and records why.
        """
        if not self.graph_wanted:
            return super().warm_up(steps, now)
        first = self._warm_up_on_side_stream(steps)
        try:
            self._capture()
        except Exception as exc:  # graphs are an optimisation: run eager, and say so
            self.graph = None
            torch.cuda.synchronize()
            self.info["cuda_graph_fallback"] = f"{type(exc).__name__}: {exc}"
            if self.run is not None:
                self.run = replace(self.run, technique="eager")
            super().warm_up(1)
        self.warmup_steps_done = steps
        self.warmed_up = True
        return first

    def _warm_up_on_side_stream(self, steps: int) -> float:
        """Plain steps on a side stream, as torch's graph-capture recipe asks (lazy library
        initialisation happens here, not inside the capture)."""
        first = math.nan
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for i in range(max(1, steps)):
                started = time.perf_counter()
                self.step()
                side.synchronize()
                self.last_warmup_step_seconds = time.perf_counter() - started
                if i == 0:
                    first = self.last_warmup_step_seconds
        torch.cuda.current_stream(self.device).wait_stream(side)
        return first

    def _capture(self) -> None:
        assert self.model is not None
        graph = torch.cuda.CUDAGraph()
        self.last_output = None
        with torch.inference_mode(), torch.cuda.graph(graph):
            output = self.model(*self.inputs)
        self.graph, self.last_output = graph, output
        started = time.perf_counter()
        graph.replay()
        torch.cuda.synchronize(self.device)
        self.last_warmup_step_seconds = time.perf_counter() - started

    def output_sample(self) -> torch.Tensor:
        """Sample 0 of the last output in float64: on the GPU for CUDA (the comparison runs
        there, no copy to the host), on the CPU otherwise (MPS has no float64)."""
        if self.last_output is None:
            self.step()
        assert self.last_output is not None
        if self.last_output.device.type == "cuda":
            return self.last_output[:1].to(torch.float64)
        return self.last_output[:1].to("cpu", torch.float64)

    def device_memory(self) -> dict[str, int]:
        """The device's allocator gauges in bytes (`device_memory`)."""
        return device_memory(self.device)

    def close(self) -> None:
        """Drop the graph, model, inputs and output and return cached device memory."""
        self.graph = None
        self.model = None
        self.inputs = ()
        self.last_output = None
        release_device_memory(self.device)


def device_memory(device: torch.device | None) -> dict[str, int]:
    """Allocator gauges for the device in use, in bytes: CUDA's allocated, reserved and peak
    allocated; MPS's allocated and driver-allocated; {} for the CPU or None."""
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
    """Collect garbage, then hand the allocator's cached blocks back (CUDA, MPS)."""
    import gc

    gc.collect()
    if device is not None and device.type == "cuda":
        torch.cuda.empty_cache()
    elif device is not None and device.type == "mps":
        torch.mps.empty_cache()


class TorchBackend(Backend):
    """torch on one device type; subclasses say which, and how to probe and time it.

    `clock` replaces the device's own step clock (tests pass a fake one).
    """

    device_type: str = "cpu"
    precisions: tuple[str, ...] = ("fp32", "fp16", "bf16")

    def __init__(self, clock: StepClock | None = None) -> None:
        self._clock = clock

    def device(self, index: str = "0") -> torch.device:
        """The torch device for a device index ("0")."""
        return torch.device(self.device_type)

    def device_label(self, device: torch.device | None = None) -> str:
        """The device in words, for results and logs."""
        return self.device_type

    def make_clock(self, device: torch.device | None = None) -> StepClock:
        """A clock that synchronises this device at step boundaries."""
        return SyncClock(lambda: None)

    def supports(self, precision: str) -> Availability:
        """Yes when `precision` is one of the backend's `precisions`."""
        if precision not in self.precisions:
            return Availability.no(f"{self.name} does not run {precision}")
        return Availability.yes()

    def technique(self, spec: PhaseSpec, options: PrepareOptions) -> str:
        """`eager` unless the backend captures graphs (CUDA) and `options` allow it."""
        return "eager" if options.technique == "auto" else options.technique

    def memory_format(self, spec: PhaseSpec, options: PrepareOptions) -> str:
        """`contiguous` unless `options` ask for channels_last (CUDA picks it for the conv net)."""
        return "contiguous" if options.memory_format == "auto" else options.memory_format

    def configure_precision(self, precision: str) -> None:
        """Set the process-wide math mode for `precision` (CUDA: TF32 on or off)."""

    def prepare(self, spec: PhaseSpec, precision: str, seed: int,
                options: PrepareOptions | None = None) -> PreparedWorkload:
        """The phase's model and inputs (seeded by `seed`) in `precision` on the device
        `options` name. Raises BackendFailure: `unavailable`, `unsupported_precision`, or the
        classified failure of building or moving the model (`out_of_memory`, ...)."""
        options = options or PrepareOptions()
        availability = self.available()
        if not availability.ok:
            raise BackendFailure("unavailable", availability.reason)
        supported = self.supports(precision)
        if not supported.ok:
            raise BackendFailure("unsupported_precision", supported.reason)
        self.configure_precision(precision)
        device = self.device(options.device)
        dtype = TORCH_DTYPES[precision]
        technique = self.technique(spec, options)
        memory_format = self.memory_format(spec, options)
        layout = torch.channels_last if memory_format == "channels_last" else torch.contiguous_format
        try:
            model, inputs = build(spec, seed)
            model = model.to(device=device, dtype=dtype)
            tensors = tuple(t.to(device=device, dtype=dtype) for t in inputs.values())
            if memory_format == "channels_last":
                model = cast(Any, model).to(memory_format=layout)  # nn.Module.to's stubs lack it
                tensors = tuple(t.to(memory_format=layout) if t.dim() == 4 else t for t in tensors)
        except Exception as exc:
            release_device_memory(device)
            raise classify_failure(exc) from exc
        run = RunConfig.for_spec(spec, self.name, precision, device=options.device,
                                 technique=technique, memory_format=memory_format,
                                 tf32=precision == "tf32")
        return TorchWorkload(
            backend=self.name,
            device_label=self.device_label(device),
            precision=precision,
            clock=self._clock or self.make_clock(device),
            spec=spec,
            run=run,
            model=model,
            inputs=tensors,
            device=device,
            graph_wanted=technique == "cuda_graph",
        )


class CpuBackend(TorchBackend):
    """torch on the host CPU, all cores torch uses by default."""

    name = "cpu"
    device_type = "cpu"

    def available(self) -> Availability:
        """Always yes."""
        return Availability.yes()

    def device_label(self, device: torch.device | None = None) -> str:
        """`cpu (<processor>, <N> threads)`."""
        return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


class CudaBackend(TorchBackend):
    """torch on an NVIDIA GPU: CUDA events for timing, a CUDA graph per step, channels_last
    conv, TF32 only when the precision is `tf32`."""

    name = "cuda"
    device_type = "cuda"
    precisions = ("fp32", "tf32", "fp16", "bf16")

    def available(self) -> Availability:
        """Yes when this torch build has CUDA and sees a GPU; else why not."""
        if torch.version.cuda is None:
            return Availability.no("this torch build has no CUDA support (CPU-only wheel)")
        if not torch.cuda.is_available():
            visible = os.environ.get("CUDA_VISIBLE_DEVICES")
            hint = f" (CUDA_VISIBLE_DEVICES={visible!r})" if visible is not None else ""
            return Availability.no(f"no NVIDIA GPU visible to torch{hint}")
        return Availability.yes()

    def devices(self) -> tuple[str, ...]:
        """The index of every GPU torch sees ("0", "1", ...); () when unavailable."""
        return tuple(str(i) for i in range(torch.cuda.device_count())) if self.available().ok else ()

    def supports(self, precision: str) -> Availability:
        """fp32, tf32, fp16, and bf16 where the GPU has it (compute capability 8.0+)."""
        if precision == "bf16" and self.available().ok and not torch.cuda.is_bf16_supported():
            return Availability.no("this NVIDIA GPU has no bf16 support (needs compute capability 8.0+)")
        return super().supports(precision)

    def technique(self, spec: PhaseSpec, options: PrepareOptions) -> str:
        """`cuda_graph` unless `options` force a technique."""
        return "cuda_graph" if options.technique == "auto" else options.technique

    def memory_format(self, spec: PhaseSpec, options: PrepareOptions) -> str:
        """`channels_last` for the conv net, `contiguous` otherwise, unless `options` force one."""
        if options.memory_format == "auto":
            return "channels_last" if isinstance(spec, ConvSpec) else "contiguous"
        return options.memory_format

    def configure_precision(self, precision: str) -> None:
        """TF32 on for matrix products and cuDNN convolutions only when `precision` is tf32."""
        # torch's defaults let cuDNN run "fp32" convolutions as TF32: fp32 must mean fp32.
        tf32 = precision == "tf32"
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32

    def device(self, index: str = "0") -> torch.device:
        """`cuda:<index>`, made the current device. Raises ValueError for a non-integer index
        (torch raises its own error for an index with no GPU)."""
        device = torch.device("cuda", int(index))
        torch.cuda.set_device(device)  # events and the current stream belong to this device
        return device

    def device_label(self, device: torch.device | None = None) -> str:
        """`cuda:<index> (<GPU name>)`, the current device when `device` has no index."""
        index = device.index if device is not None and device.index is not None else torch.cuda.current_device()
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"

    def make_clock(self, device: torch.device | None = None) -> StepClock:
        """CUDA events on the current stream (`EventClock`): no synchronisation per step."""
        return EventClock(torch)


class MpsBackend(TorchBackend):
    """torch on the Apple GPU through Metal Performance Shaders."""

    name = "mps"
    device_type = "mps"

    def available(self) -> Availability:
        """Yes on macOS with an MPS-enabled torch that reports MPS available; else why not."""
        return _mps_availability()

    def supports(self, precision: str) -> Availability:
        """fp32, fp16, and bf16 where MPS can allocate it (macOS 14+)."""
        if precision == "bf16" and self.available().ok and not _mps_bf16():
            return Availability.no("MPS has bf16 only on macOS 14 or later")
        return super().supports(precision)

    def device_label(self, device: torch.device | None = None) -> str:
        """`mps (<machine>, macOS <version>)`."""
        return f"mps ({platform.machine()}, macOS {platform.mac_ver()[0]})"

    def make_clock(self, device: torch.device | None = None) -> StepClock:
        """torch.mps.synchronize at every step boundary (`SyncClock`)."""
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
    """Host facts recorded with results: torch's version, whether CUDA and MPS are available,
    and torch's CPU thread count."""
    return {
        "torch": torch.__version__,
        "cuda_available": torch.cuda.is_available(),
        "mps_available": _mps_availability().ok,
        "threads": torch.get_num_threads(),
    }
