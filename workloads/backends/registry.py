"""Every backend declared once: its class, fallback, display rank and colour (torch-free).

A new backend is one class (a `workloads.backends.base.Backend`) and one `BackendSpec` here:
the rotation's fallback chains, `auto`, the report's order and colours and the CLI's choices
all read this table. The class is imported only when the backend is used (`load()`), so the
daemon reads names, chains and colours without importing torch or coremltools.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class BackendSpec:
    """One backend.

    `target` is "module:Class" (with `args` passed to the constructor); `fallback` the
    backends a phase moves to, in order, when this one cannot run it; `rank` the display order
    (accelerators first, the CPU last); `colour` its colour in plots (hex); `accelerator`
    whether it counts as an accelerator for `auto` profile choice.
    """

    name: str
    family: str
    target: str
    fallback: tuple[str, ...]
    rank: int
    colour: str
    description: str
    accelerator: bool = True
    args: tuple[Any, ...] = field(default_factory=tuple)

    def load(self) -> Any:
        """A new instance of the backend's class (imports its family's module)."""
        module, _, attr = self.target.partition(":")
        cls = getattr(importlib.import_module(module), attr)
        return cls(*self.args)


def _coreml(name: str, units: str, rank: int, colour: str) -> BackendSpec:
    return BackendSpec(name, "coreml", "workloads.backends.coreml_backend:CoreMLBackend", ("mps", "cpu"),
                       rank, colour, f"a Core ML model with compute units {units} (macOS 13+)", args=(name,))


BACKENDS: dict[str, BackendSpec] = {spec.name: spec for spec in (
    BackendSpec("cuda", "torch", "workloads.backends.torch_backend:CudaBackend", ("cpu",), 0, "#2ca02c",
                "torch on NVIDIA GPUs (CUDA graphs, channels_last conv, one worker per GPU)"),
    BackendSpec("mps", "torch", "workloads.backends.torch_backend:MpsBackend", ("cpu",), 0, "#1f77b4",
                "torch on the Apple GPU (Metal)"),
    _coreml("coreml-ane", "CPU_AND_NE", 1, "#d62728"),
    _coreml("coreml-gpu", "CPU_AND_GPU", 2, "#9467bd"),
    _coreml("coreml-all", "ALL", 3, "#e377c2"),
    _coreml("coreml-cpu", "CPU_ONLY", 4, "#8c564b"),
    BackendSpec("cpu", "torch", "workloads.backends.torch_backend:CpuBackend", (), 5, "#ff7f0e",
                "torch on the host CPU", accelerator=False),
)}
# The CPU baseline's colour in plots (the CPU itself, measured apart).
BASELINE_COLOUR = "#7f7f7f"
UNKNOWN_RANK = 9


def spec(name: str) -> BackendSpec | None:
    """The declared backend `name`, or None."""
    return BACKENDS.get(name)


def rank(name: str) -> int:
    """Display rank of a backend (unknown ones last)."""
    found = BACKENDS.get(name)
    return found.rank if found is not None else UNKNOWN_RANK


def colour(name: str) -> str | None:
    """Plot colour of a backend (None for an unknown one: the caller picks a spare)."""
    found = BACKENDS.get(name)
    return found.colour if found is not None else None
