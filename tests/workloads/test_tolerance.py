"""Tolerances derived from the arithmetic: each precision passes its own, and fp32 catches a model
that silently ran in fp16 or TF32."""

from __future__ import annotations

import pytest
import torch

from workloads.models import build
from workloads.phases import PHASE_NAMES, PROFILES
from workloads.reference import compute_reference, relative_error, tolerance

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
CASES = [(profile, phase) for profile in ("ci", "light") for phase in PHASE_NAMES]


def to_tf32(tensor: torch.Tensor) -> torch.Tensor:
    """Round float32 values to TF32 (10 mantissa bits, round to nearest even), as NVIDIA's
    matrix units do with fp32 inputs when TF32 is allowed."""
    bits = tensor.contiguous().view(torch.int32)
    lsb = (bits >> 13) & 1
    rounded = (bits + 0x0FFF + lsb) & ~0x1FFF
    return rounded.view(torch.float32)


def run(profile: str, phase: str, precision: str) -> float:
    """The relative error of the model run in `precision`; `tf32` stands in for TF32 matrix
    units on the CPU: weights and the inputs of every Linear and Conv2d rounded to TF32,
    accumulation in fp32."""
    spec = PROFILES[profile].spec(phase)
    model, inputs = build(spec, 0)
    sample = [t[:1] for t in inputs.values()]
    if precision == "tf32":
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.copy_(to_tf32(parameter))
        hooks = [m.register_forward_pre_hook(lambda _m, args: tuple(to_tf32(a) for a in args))
                 for m in model.modules() if isinstance(m, torch.nn.Linear | torch.nn.Conv2d)]
        sample = [to_tf32(t) for t in sample]
        with torch.inference_mode():
            out = model(*sample)
        for hook in hooks:
            hook.remove()
    else:
        model = model.to(DTYPES[precision])
        with torch.inference_mode():
            out = model(*[t.to(DTYPES[precision]) for t in sample])
    return relative_error(out, compute_reference(spec, 0))


@pytest.mark.parametrize(("profile", "phase"), CASES)
def test_each_precision_passes_its_own_tolerance(profile: str, phase: str) -> None:
    spec = PROFILES[profile].spec(phase)
    for precision in ("fp32", "fp16", "bf16", "tf32"):
        assert run(profile, phase, precision) <= tolerance(spec, precision), precision


@pytest.mark.parametrize(("profile", "phase"), CASES)
def test_fp32_catches_a_run_in_fp16_or_tf32(profile: str, phase: str) -> None:
    """The old fixed fp32 tolerance (5e-3) let fp16 through (errors 3.6e-4 to 2.5e-3)."""
    spec = PROFILES[profile].spec(phase)
    limit = tolerance(spec, "fp32")
    assert run(profile, phase, "fp32") < limit / 5  # real fp32 sits far inside
    assert run(profile, phase, "fp16") > limit
    assert run(profile, phase, "tf32") > limit


def test_tolerance_grows_with_depth_and_precision() -> None:
    heavy, ci = PROFILES["heavy"], PROFILES["ci"]
    assert tolerance(heavy.conv, "fp32") > tolerance(ci.conv, "fp32")
    assert tolerance(ci.conv, "fp32") < tolerance(ci.conv, "tf32") <= tolerance(ci.conv, "fp16") \
        < tolerance(ci.conv, "bf16")
    assert tolerance(heavy.conv, "fp32") < 1e-4 < 3.6e-4  # fp16's smallest observed error
    with pytest.raises(KeyError):
        tolerance(ci.conv, "fp8")
