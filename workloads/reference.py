"""Correctness under load: a CPU float64 reference per phase, and tolerances by precision."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict
from pathlib import Path

import torch

from workloads.cache import atomic_write, cache_dir
from workloads.models import build
from workloads.phases import PhaseSpec, reference_spec

# Norm-wise relative error ||out - ref|| / ||ref|| allowed per precision. fp32 leaves room
# for TF32 convolutions (torch's default on CUDA); half precisions accumulate over depth.
TOLERANCE: dict[str, float] = {"fp32": 5e-3, "tf32": 5e-3, "fp16": 3e-2, "bf16": 8e-2}


def tolerance(spec: PhaseSpec, precision: str) -> float:
    """The largest norm-wise relative error accepted for `spec` run in `precision`."""
    return TOLERANCE[precision]


def relative_error(output: torch.Tensor, reference: torch.Tensor) -> float:
    """Norm-wise relative error in float64; inf when the output holds NaN/inf or the shape differs."""
    out = output.detach().to("cpu", torch.float64)
    ref = reference.detach().to("cpu", torch.float64)
    if out.shape != ref.shape or not bool(torch.isfinite(out).all()):
        return math.inf
    denom = float(torch.linalg.vector_norm(ref))
    diff = float(torch.linalg.vector_norm(out - ref))
    return diff / denom if denom > 0 else diff


def _key(spec: PhaseSpec, seed: int) -> str:
    blob = json.dumps({"phase": spec.name, "spec": asdict(spec), "seed": seed,
                       "torch": torch.__version__.split("+")[0]}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def compute_reference(spec: PhaseSpec, seed: int) -> torch.Tensor:
    """Sample 0 of the phase's output, computed on the CPU in float64.

    Always by the standard layout's model (`reference_spec`): the "ane" attention variant
    computes the same function with the same weights, and is checked against it.
    """
    model, inputs = build(reference_spec(spec), seed)
    model = model.to(torch.float64)
    sample = [t[:1].to(torch.float64) for t in inputs.values()]
    with torch.inference_mode():
        out: torch.Tensor = model(*sample)
    return out.contiguous()


def reference_output(spec: PhaseSpec, seed: int, directory: Path | None = None) -> torch.Tensor:
    """The float64 reference, cached on disk: heavy phases take a while to compute in float64."""
    spec = reference_spec(spec)  # one cached reference serves both attention variants
    path = (directory or cache_dir() / "reference") / f"{spec.name}-{_key(spec, seed)}.pt"
    if path.exists():
        try:
            cached = torch.load(path, weights_only=True)
            if isinstance(cached, torch.Tensor):
                return cached
        except Exception:  # a corrupt entry is rebuilt below
            path.unlink(missing_ok=True)
    ref = compute_reference(spec, seed)
    atomic_write(path, lambda tmp: torch.save(ref, tmp))
    return ref
