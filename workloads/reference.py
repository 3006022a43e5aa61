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
from workloads.phases import ConvSpec, MatmulSpec, PhaseSpec, reference_spec

# Unit round-off u = 2^-(p) of each precision's significand (p = mantissa bits + 1): fp32 24,
# TF32 11 (matrix-unit inputs rounded to 10 mantissa bits), fp16 11, bf16 8. Matrix products and
# convolutions accumulate in fp32 on every backend soakd runs (tensor cores, oneDNN, MPS).
UNIT_ROUNDOFF: dict[str, float] = {"fp32": 2.0**-24, "tf32": 2.0**-11, "fp16": 2.0**-11, "bf16": 2.0**-8}
ACCUMULATE_ROUNDOFF = 2.0**-24
# Headroom over the estimate: on the CPU here the measured errors sit 10-20x below the
# tolerances this gives (ci and light shapes, fp32/fp16/bf16); GPU kernels sum in other orders.
MARGIN = 8.0


def rounding_stages(spec: PhaseSpec) -> tuple[int, int]:
    """(rounding stages along the data path, the longest accumulation) of a phase.

    matmul: the two inputs and the output (3), accumulating over n. conv: the input and each
    layer's output (depth + 1), accumulating over Cin*k^2. attention: about 12 rounded results
    per layer (2 layer norms, 4 projections, scores, softmax, A.V, 2 FFN products, GELU) plus
    the input, accumulating over max(seq, FFN width).
    """
    if isinstance(spec, MatmulSpec):
        return 3, spec.n
    if isinstance(spec, ConvSpec):
        return spec.depth + 1, max(cin * spec.kernel**2 for cin, _, _, _ in spec.layers())
    return 12 * spec.layers + 1, max(spec.seq, spec.ffn_mult * spec.d_model)


def tolerance(spec: PhaseSpec, precision: str) -> float:
    """The largest norm-wise relative error ||out - ref|| / ||ref|| accepted for `spec` in
    `precision`, derived from the arithmetic rather than fixed per precision:

        MARGIN * (u_precision * sqrt(stages) + u_fp32 * sqrt(accumulation length))

    independent rounding errors of u per stage add in quadrature along the data path, and an
    fp32 sum of K terms adds about u * sqrt(K) (Higham, Accuracy and Stability of Numerical
    Algorithms, ch. 3, the probabilistic bound). So fp32 is held to ~1e-5, far below what the
    same model computed in fp16 or TF32 gets (3.6e-4 and up): lower precision is caught.
    Raises KeyError for an unknown precision.
    """
    stages, accumulation = rounding_stages(spec)
    estimate = UNIT_ROUNDOFF[precision] * math.sqrt(stages) + ACCUMULATE_ROUNDOFF * math.sqrt(accumulation)
    return MARGIN * estimate


def relative_error(output: torch.Tensor, reference: torch.Tensor) -> float:
    """Norm-wise relative error in float64; inf when the output holds NaN/inf or the shape differs.

    Computed where `output` is when that device has float64 (CUDA: no copy of the output to the
    host, the reference is moved instead), else on the CPU.
    """
    device = output.device if output.device.type == "cuda" else torch.device("cpu")
    out = output.detach().to(device, torch.float64)
    ref = reference.detach().to(device, torch.float64)
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
