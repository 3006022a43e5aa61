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
from workloads.backends.registry import BACKENDS
from workloads.protocol import ProbeResult

TORCH_BACKENDS: tuple[str, ...] = tuple(n for n, s in BACKENDS.items() if s.family == "torch")
COREML_BACKENDS: tuple[str, ...] = tuple(n for n, s in BACKENDS.items() if s.family == "coreml")
BACKEND_NAMES: tuple[str, ...] = tuple(BACKENDS)

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
    "auto_candidates",
    "default_precisions",
    "fallback_chain",
    "get_backend",
    "is_apple_silicon",
    "parse_backends",
    "parse_precisions",
    "resolve_backends",
]


def get_backend(name: str) -> Backend:
    """A backend by name (workloads/backends/registry.py); imports its family's module only
    when asked for. Raises ValueError for an unknown name."""
    if name in BACKENDS:
        backend: Backend = BACKENDS[name].load()
        return backend
    extra = _extra_backend(name)
    if extra is not None:
        return extra()
    raise ValueError(f"unknown backend {name!r} (choose from {', '.join(BACKEND_NAMES)}, auto)")


# Test hook: extra backends by import path, "name=module:Class,...". Read from the environment at
# each lookup so that a spawned worker (which inherits it) finds the same backends. Built-in
# names are resolved first and cannot be replaced.
EXTRA_BACKENDS_ENV = "SOAKD_EXTRA_BACKENDS"


def _extra_backend_target(name: str) -> str | None:
    for entry in os.environ.get(EXTRA_BACKENDS_ENV, "").split(","):
        key, _, target = entry.strip().partition("=")
        if key == name and target:
            return target
    return None


def _extra_backend(name: str) -> type[Backend] | None:
    target = _extra_backend_target(name)
    if target is None:
        return None
    module, _, attr = target.partition(":")
    cls: type[Backend] = getattr(importlib.import_module(module), attr)
    return cls


def fallback_chain(name: str) -> list[str]:
    """Where a phase goes when `name` cannot run it (each backend declares it): Apple coreml →
    mps → cpu, NVIDIA cuda → cpu; an undeclared (test) backend has no fallback."""
    spec = BACKENDS.get(name)
    return [name, *spec.fallback] if spec is not None else [name]


def is_apple_silicon() -> bool:
    """A Mac with an Apple chip (Metal and the Neural Engine)."""
    return sys.platform == "darwin" and platform.machine() == "arm64"


def auto_candidates() -> tuple[str, ...]:
    """The backends `auto` may pick, to be probed (in a worker) before choosing."""
    return ("mps", "coreml-ane") if is_apple_silicon() else ("cuda",)


def auto_backends(probe: ProbeResult) -> list[str]:
    """Apple Silicon: mps against coreml-ane; an NVIDIA GPU: cuda; otherwise the CPU.

    `probe` is a worker's answer (workloads.process.probe) for at least `auto_candidates()`.
    """
    if is_apple_silicon():
        return ["mps", "coreml-ane"]
    cuda = probe.backends.get("cuda")
    if cuda is not None and cuda.available.ok and cuda.devices:
        return ["cuda"]
    return ["cpu"]


def parse_backends(text: str) -> list[str]:
    """A comma list of backend names or `auto`, checked (torch-free; `auto` is kept as the word
    `auto`: `resolve_backends` expands it). Raises ValueError naming the bad entry, or when
    no backend is given."""
    names = [part.strip() for part in text.split(",") if part.strip()]
    if not names:
        raise ValueError("no backend given")
    out: list[str] = []
    for item in names:
        if item != "auto" and item not in BACKEND_NAMES and _extra_backend_target(item) is None:
            raise ValueError(f"unknown backend {item!r} (choose from {', '.join(BACKEND_NAMES)}, auto)")
        if item not in out:
            out.append(item)
    return out


def resolve_backends(names: list[str], probe: ProbeResult) -> list[str]:
    """`names` with `auto` replaced by what it picks on this host (duplicates dropped)."""
    out: list[str] = []
    for name in names:
        for item in auto_backends(probe) if name == "auto" else [name]:
            if item not in out:
                out.append(item)
    return out


def default_precisions(backends: list[str]) -> list[str]:
    """`auto` precision: bf16 when CUDA runs (the tensor cores ML work uses), fp16 when a Core
    ML backend is compared (the Neural Engine is FP16 only, and Metal is compared like for
    like), fp32 otherwise."""
    if "cuda" in backends:
        return ["bf16"]
    return ["fp16"] if any(name in COREML_BACKENDS for name in backends) else ["fp32"]


def parse_precisions(text: str, backends: list[str] | None = None) -> list[str]:
    """A comma list of precisions or `auto`; `auto` expands with `default_precisions(backends)`
    when `backends` is given (else it stays `auto`). Raises ValueError naming a bad one, or
    when no precision is given."""
    out: list[str] = []
    for item in (part.strip() for part in text.split(",") if part.strip()):
        expanded = default_precisions(backends) if item == "auto" and backends is not None else [item]
        for precision in expanded:
            if precision not in PRECISIONS and precision != "auto":
                raise ValueError(f"unknown precision {precision!r} (choose from {', '.join(PRECISIONS)}, auto)")
            if precision not in out:
                out.append(precision)
    if not out:
        raise ValueError("no precision given")
    return out
