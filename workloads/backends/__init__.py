"""Backend registry, platform fallback chains and `auto` selection."""

from __future__ import annotations

import importlib
import os
import platform
import sys

from workloads.backends.base import (
    PRECISIONS,
    Availability,
    Backend,
    BackendFailure,
    PreparedWorkload,
)

TORCH_BACKENDS: tuple[str, ...] = ("cpu", "cuda", "mps")
COREML_BACKENDS: tuple[str, ...] = ("coreml-ane", "coreml-gpu", "coreml-cpu", "coreml-all")
BACKEND_NAMES: tuple[str, ...] = TORCH_BACKENDS + COREML_BACKENDS

__all__ = [
    "BACKEND_NAMES",
    "COREML_BACKENDS",
    "PRECISIONS",
    "TORCH_BACKENDS",
    "Availability",
    "Backend",
    "BackendFailure",
    "PreparedWorkload",
    "auto_backends",
    "fallback_chain",
    "get_backend",
    "is_apple_silicon",
    "parse_backends",
]


def get_backend(name: str) -> Backend:
    """A backend by name; imports its family's module only when asked for."""
    if name in TORCH_BACKENDS:
        from workloads.backends import torch_backend

        classes: dict[str, type[Backend]] = {
            "cpu": torch_backend.CpuBackend,
            "cuda": torch_backend.CudaBackend,
            "mps": torch_backend.MpsBackend,
        }
        return classes[name]()
    if name in COREML_BACKENDS:
        from workloads.backends import coreml_backend

        return coreml_backend.CoreMLBackend(name)
    extra = _extra_backend(name)
    if extra is not None:
        return extra()
    raise ValueError(f"unknown backend {name!r} (choose from {', '.join(BACKEND_NAMES)}, auto)")


# Test hook: extra backends by import path, "name=module:Class,...". Read from the environment at
# each lookup so that a spawned worker (which inherits it) finds the same backends. Built-in
# names are resolved first and cannot be replaced.
EXTRA_BACKENDS_ENV = "SOAKD_EXTRA_BACKENDS"


def _extra_backend(name: str) -> type[Backend] | None:
    for entry in os.environ.get(EXTRA_BACKENDS_ENV, "").split(","):
        key, _, target = entry.strip().partition("=")
        if key == name and target:
            module, _, attr = target.partition(":")
            cls: type[Backend] = getattr(importlib.import_module(module), attr)
            return cls
    return None


def fallback_chain(name: str) -> list[str]:
    """Where a phase goes when `name` cannot run it: Apple coreml → mps → cpu, NVIDIA cuda → cpu."""
    if name in COREML_BACKENDS:
        return [name, "mps", "cpu"]
    if name in ("mps", "cuda"):
        return [name, "cpu"]
    return [name]


def is_apple_silicon() -> bool:
    return sys.platform == "darwin" and platform.machine() == "arm64"


def auto_backends() -> list[str]:
    """Apple Silicon: mps against coreml-ane; an NVIDIA GPU: cuda; otherwise the CPU."""
    if is_apple_silicon():
        return ["mps", "coreml-ane"]
    if get_backend("cuda").available().ok:
        return ["cuda"]
    return ["cpu"]


def parse_backends(text: str) -> list[str]:
    """A comma list of backend names or `auto`; raises ValueError naming the bad entry."""
    names = [part.strip() for part in text.split(",") if part.strip()]
    if not names:
        raise ValueError("no backend given")
    out: list[str] = []
    for name in names:
        expanded = auto_backends() if name == "auto" else [name]
        for item in expanded:
            if item not in BACKEND_NAMES:
                raise ValueError(
                    f"unknown backend {item!r} (choose from {', '.join(BACKEND_NAMES)}, auto)"
                )
            if item not in out:
                out.append(item)
    return out


def default_precisions(backends: list[str]) -> list[str]:
    """fp16 when a Core ML backend is in the comparison (the ANE runs FP16 only, and Metal is
    compared like for like), fp32 otherwise."""
    return ["fp16"] if any(name in COREML_BACKENDS for name in backends) else ["fp32"]


def parse_precisions(text: str, backends: list[str]) -> list[str]:
    """A comma list of precisions or `auto` (see `default_precisions`); ValueError names a bad one."""
    out: list[str] = []
    for item in (part.strip() for part in text.split(",") if part.strip()):
        expanded = default_precisions(backends) if item == "auto" else [item]
        for precision in expanded:
            if precision not in PRECISIONS:
                raise ValueError(f"unknown precision {precision!r} (choose from {', '.join(PRECISIONS)}, auto)")
            if precision not in out:
                out.append(precision)
    if not out:
        raise ValueError("no precision given")
    return out
