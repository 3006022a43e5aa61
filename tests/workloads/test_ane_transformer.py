"""The ANE-layout attention variant (issue 18): the same function with the same weights as
the standard encoder, proven on the CPU (float64 and fp32), the same FLOPs as torch counts,
traceable, and selectable like any other spec setting."""

from __future__ import annotations

import warnings
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from test_phases import counted_flops
from torch import nn

from workloads.ane_transformer import EncoderANE, LayerNormChannels
from workloads.backends import get_backend
from workloads.measure import CheckState, measure
from workloads.models import Encoder, build
from workloads.phases import (
    ATTENTION_VARIANTS,
    PROFILES,
    AttentionSpec,
    default_attention_variant,
    get_profile,
    reference_spec,
    variant_of,
)
from workloads.protocol import Check, RunSlice, SliceDone, WorkerEvent
from workloads.reference import TOLERANCE, compute_reference, reference_output, relative_error

CI = PROFILES["ci"].attention
# ci and light shapes, plus an uneven one: batch 3, 3 heads of 8, FFN 2x, odd sequence.
SHAPES = {"ci": CI, "light": PROFILES["light"].attention,
          "uneven": AttentionSpec(batch=3, seq=37, d_model=24, heads=3, layers=2, ffn_mult=2)}


def pair(spec: AttentionSpec, seed: int = 0) -> tuple[nn.Module, nn.Module, torch.Tensor]:
    """Both variants built from the same seed, and their (shared) input."""
    standard, inputs = build(replace(spec, variant="standard"), seed)
    ane, ane_inputs = build(replace(spec, variant="ane"), seed)
    assert torch.equal(inputs["x"], ane_inputs["x"])
    return standard, ane, inputs["x"]


@pytest.mark.parametrize("shape", SHAPES)
def test_float64_outputs_are_equal_to_1e_12(shape: str) -> None:
    standard, ane, x = pair(SHAPES[shape], seed=5)
    assert isinstance(standard, Encoder) and isinstance(ane, EncoderANE)
    with torch.inference_mode():
        want = standard.double()(x.double())
        got = ane.double()(x.double())
    assert got.dtype == torch.float64 and got.shape == want.shape == x.shape
    assert relative_error(got, want) <= 1e-12
    # Not trivially equal: the function does depend on the weights.
    other, _ = build(replace(SHAPES[shape], variant="ane"), seed=6)
    with torch.inference_mode():
        assert relative_error(other.double()(x.double()), want) > 1e-3


@pytest.mark.parametrize("shape", SHAPES)
def test_fp32_output_is_within_the_fp32_tolerance_of_the_float64_reference(shape: str) -> None:
    spec = replace(SHAPES[shape], variant="ane")
    model, inputs = build(spec, 0)
    with torch.inference_mode():
        out = model(*inputs.values())
    # The reference the runtime check uses (sample 0, float64, standard layout).
    reference = compute_reference(spec, 0)
    error = relative_error(out[:1], reference)
    assert error <= TOLERANCE["fp32"]
    assert error < 1e-5  # in fact fp32 rounding only
    standard, _ = build(replace(spec, variant="standard"), 0)
    with torch.inference_mode():
        assert relative_error(out, standard(*inputs.values())) < 1e-5


def test_the_weights_are_the_standard_encoders() -> None:
    standard, ane, _ = pair(CI, seed=3)
    theirs, ours = standard.state_dict(), ane.state_dict()
    assert theirs.keys() == ours.keys()
    for name, tensor in theirs.items():
        assert torch.equal(ours[name].reshape(tensor.shape), tensor), name
    assert ours["layers.0.qkv.weight"].shape == (3 * CI.d_model, CI.d_model, 1, 1)
    assert isinstance(ane.layers[0].qkv, nn.Conv2d) and ane.layers[0].qkv.kernel_size == (1, 1)
    assert not ane.training
    # A float64 source stays float64: its weights are copied, not rounded through float32.
    gen = torch.Generator().manual_seed(3)
    wide = Encoder(CI, gen).double()
    copied = EncoderANE.from_standard(CI, wide)
    assert all(p.dtype == torch.float64 for p in copied.parameters())
    assert torch.equal(copied.layers[1].ff2.weight.flatten(1), wide.layers[1].ff2.weight)


def test_channel_layer_norm_equals_torchs_over_the_last_axis() -> None:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 7, 16, generator=gen, dtype=torch.float64)  # (B, S, C)
    ours = LayerNormChannels(16).double()
    theirs = nn.LayerNorm(16).double()
    with torch.no_grad():
        for norm in (ours, theirs):
            norm.weight.copy_(torch.randn(16, generator=gen))
            norm.bias.copy_(torch.randn(16, generator=gen))
        ours.load_state_dict(theirs.state_dict())
        got = ours(x.transpose(1, 2).unsqueeze(2)).squeeze(2).transpose(1, 2)
    assert relative_error(got, theirs(x)) <= 1e-14


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("variant", ATTENTION_VARIANTS)
def test_flop_formula_equals_the_flop_counter_exactly(profile: str, variant: str) -> None:
    spec = replace(PROFILES[profile].attention, variant=variant)
    counted, shape = counted_flops(spec)
    assert spec.flop_per_step() == counted
    assert shape == spec.output_shape()


def test_the_ane_variant_traces_whole() -> None:
    spec = replace(CI, variant="ane")
    model, inputs = build(spec, 0)
    args = tuple(inputs.values())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("error", torch.jit.TracerWarning)
        traced = torch.jit.trace(model, args)
    other = torch.randn(2, CI.seq, CI.d_model, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        assert torch.equal(traced(*args), model(*args))
        # Another batch size too: the float64 reference runs sample 0 alone.
        torch.testing.assert_close(traced(other), model(other), rtol=1e-5, atol=1e-5)


def test_variant_is_a_validated_overridable_setting() -> None:
    assert CI.variant == "standard" and variant_of(CI) == "standard"
    assert variant_of(PROFILES["ci"].conv) == "standard"
    chosen = get_profile("ci", {"attention.variant": "ane"}).attention
    assert chosen.variant == "ane" and variant_of(chosen) == "ane"
    assert chosen.flop_per_step() == CI.flop_per_step()
    with pytest.raises(ValueError, match=r"attention\.variant: 'npu' is not a variant "
                                         r"\(choose from standard, ane\)"):
        get_profile("ci", {"attention.variant": "npu"})
    with pytest.raises(ValueError, match=r"attention\.variant: bad value 3 \(expected a name\)"):
        get_profile("ci", {"attention.variant": 3})
    with pytest.raises(ValueError, match=r"attention\.variant"):
        AttentionSpec(variant="ANE")


def test_coreml_ane_defaults_to_the_ane_layout() -> None:
    assert default_attention_variant("coreml-ane") == "ane"
    for backend in ("coreml-gpu", "coreml-cpu", "coreml-all", "mps", "cuda", "cpu"):
        assert default_attention_variant(backend) == "standard"


def test_both_variants_share_one_float64_reference(tmp_path: Path) -> None:
    ane = replace(CI, variant="ane")
    assert reference_spec(ane) == CI and reference_spec(CI) == CI
    assert reference_spec(PROFILES["ci"].conv) == PROFILES["ci"].conv
    first = reference_output(ane, 0, tmp_path)
    assert len(list(tmp_path.iterdir())) == 1
    assert torch.equal(reference_output(CI, 0, tmp_path), first)
    assert len(list(tmp_path.iterdir())) == 1


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_the_ane_variant_runs_the_cpu_step_loop_and_passes_the_reference_check(precision: str) -> None:
    spec = replace(CI, variant="ane")
    workload = get_backend("cpu").prepare(spec, precision, 0)
    events: list[WorkerEvent] = []
    request = RunSlice(slice_id=1, duration_s=None, max_steps=4, warmup_steps=1, check_every=2)
    measure(workload, request, events.append, state=CheckState(reference=compute_reference(spec, 0)))
    checks = [e for e in events if isinstance(e, Check)]
    assert checks and all(c.ok and c.tolerance == TOLERANCE[precision] for c in checks)
    assert isinstance(events[-1], SliceDone) and events[-1].steps == 4
    assert workload.run is not None and workload.run.variant == "ane"
