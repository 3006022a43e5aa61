"""The three phases: analytic FLOPs against torch's counter, shapes, overrides, tracing, seeds."""

from __future__ import annotations

import math
import warnings
from dataclasses import replace
from typing import Any

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from workloads.models import build
from workloads.phases import (
    PHASE_NAMES,
    PROFILES,
    ConvSpec,
    PhaseSpec,
    get_profile,
    with_overrides,
)

ALL = [(profile, phase) for profile in PROFILES for phase in PHASE_NAMES]


def counted_flops(spec: PhaseSpec) -> tuple[int, tuple[int, ...]]:
    """FLOPs torch counts for one forward, and the output shape, run on the meta device.

    Built on the CPU (the real weight init), then moved to meta: heavy shapes cost no compute.
    """
    model, inputs = build(spec, seed=0)
    model = model.to("meta")
    args = [t.to("meta") for t in inputs.values()]
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        out = model(*args)
    assert out.device.type == "meta"
    return int(counter.get_total_flops()), tuple(out.shape)


@pytest.mark.parametrize(("profile", "phase"), ALL)
def test_flop_formula_matches_flop_counter(profile: str, phase: str) -> None:
    spec = PROFILES[profile].spec(phase)
    counted, shape = counted_flops(spec)
    assert counted > 0
    assert spec.flop_per_step() == pytest.approx(counted, rel=0.01)
    assert shape == spec.output_shape()


def test_heavy_flops_are_the_designs_numbers() -> None:
    """DESIGN.md's table: 68.7 GFLOP, 3.25 TFLOP (batch 8), 103 GFLOP per sequence (batch 1);
    the heavy attention batch is 8 sequences, so 8 x 103 GFLOP a step."""
    heavy = PROFILES["heavy"]
    # To the digits DESIGN.md gives.
    assert heavy.matmul.flop_per_step() == pytest.approx(68.7e9, abs=0.05e9)
    assert heavy.conv.flop_per_step() == pytest.approx(3.25e12, abs=0.005e12)
    assert heavy.attention.batch == 8
    assert heavy.attention.flop_per_step() == pytest.approx(8 * 103e9, abs=8 * 0.5e9)
    assert replace(heavy.attention, batch=1).flop_per_step() == pytest.approx(103e9, abs=0.5e9)
    assert heavy.conv.depth == 24
    assert [cout for _, cout, _, _ in heavy.conv.layers()][-1] == 1024
    # Five stride-2 stages: 1024 -> 512 .. 32.
    assert heavy.conv.output_shape() == (8, 1024, 32, 32)


def test_overridden_conv_still_matches_counter() -> None:
    """The formula follows the layer list, not the default one (uneven stages, odd size)."""
    spec = get_profile("ci", {"conv.stage_channels": "4,8,12", "conv.stage_layers": [1, 3, 2],
                              "conv.size": 37, "conv.batch": 3}).conv
    assert spec.stage_channels == (4, 8, 12)
    assert spec.stage_layers == (1, 3, 2)
    counted, shape = counted_flops(spec)
    assert spec.flop_per_step() == pytest.approx(counted, rel=0.01)
    assert shape == spec.output_shape() == (3, 12, 5, 5)


def test_attention_flops_scale_with_batch_and_seq() -> None:
    base = get_profile("ci").attention
    bigger = get_profile("ci", {"attention.batch": 3, "attention.seq": 96}).attention
    counted, shape = counted_flops(bigger)
    assert bigger.flop_per_step() == pytest.approx(counted, rel=0.01)
    assert shape == (3, 96, base.d_model)
    assert bigger.flop_per_step() > 3 * base.flop_per_step()


def test_overrides_apply_and_leave_the_rest() -> None:
    ci = PROFILES["ci"]
    changed = with_overrides(ci, {"matmul.n": "96", "attention.layers": 3, "phase_seconds": 1.5,
                                  "slice_seconds": 0.25, "warmup_steps": 2})
    assert changed.matmul.n == 96 and changed.matmul.batch == ci.matmul.batch
    assert changed.attention.layers == 3 and changed.attention.seq == ci.attention.seq
    assert changed.phase_seconds == 1.5 and changed.slice_seconds == 0.25
    assert changed.warmup_steps == 2
    assert changed.conv == ci.conv
    assert changed.name == "ci"
    # The registry's profile is untouched.
    assert PROFILES["ci"].matmul.n == 128 and PROFILES["ci"].phase_seconds == ci.phase_seconds
    assert changed.matmul.flop_per_step() == 2 * ci.matmul.batch * 96**3
    via_get = get_profile("ci", {"matmul.n": 96})
    assert via_get.matmul.n == 96
    assert get_profile("heavy", {"phase_seconds": 90}).phase_seconds == 90.0
    assert get_profile("ci", None) == ci


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"matmul.n": 0}, "matmul.n"),
        ({"matmul.n": -4}, "matmul.n"),
        ({"matmul.n": "many"}, "matmul.n"),
        ({"matmul.n": 1.5}, "matmul.n"),
        ({"matmul.batch": True}, "matmul.batch"),
        ({"matmul.m": 4}, "matmul.m"),
        ({"matmul.name": "x"}, "matmul.name"),
        ({"gemm.n": 4}, "gemm.n"),
        ({"speed": 4}, "speed"),
        ({"name": "other"}, "name"),
        ({"matmul": 4}, "matmul"),
        ({"phase_seconds": -1}, "phase_seconds"),
        ({"phase_seconds": "inf"}, "phase_seconds"),
        ({"phase_seconds": "nan"}, "phase_seconds"),
        ({"conv.stage_channels": ""}, "conv.stage_channels"),
        ({"conv.stage_channels": "8,0,16,32,64"}, "conv.stage_channels"),
        ({"conv.stage_layers": "1,2"}, "conv.stage_layers"),
        ({"attention.heads": 3}, "heads"),
    ],
)
def test_bad_override_raises_value_error_naming_the_key(overrides: dict[str, Any],
                                                        named: str) -> None:
    with pytest.raises(ValueError, match=named.replace(".", r"\.")):
        get_profile("ci", overrides)
    with pytest.raises(ValueError, match=named.replace(".", r"\.")):
        with_overrides(PROFILES["heavy"], overrides)


def test_unknown_profile_and_phase() -> None:
    with pytest.raises(KeyError, match="nope"):
        get_profile("nope")
    with pytest.raises(KeyError, match="nope"):
        PROFILES["ci"].spec("nope")


def test_conv_spec_rejects_mismatched_stages() -> None:
    with pytest.raises(ValueError, match="same length"):
        ConvSpec(stage_channels=(8, 16), stage_layers=(1,))


@pytest.mark.parametrize("phase", PHASE_NAMES)
def test_ci_model_traces_and_trace_equals_eager(phase: str) -> None:
    spec = PROFILES["ci"].spec(phase)
    model, inputs = build(spec, seed=0)
    args = tuple(inputs.values())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch 2.10+: jit.trace deprecated
        # A TracerWarning means data-dependent Python in forward: Core ML conversion would break.
        warnings.simplefilter("error", torch.jit.TracerWarning)
        traced = torch.jit.trace(model, args)
    with torch.no_grad():
        eager = model(*args)
        assert torch.equal(traced(*args), eager)
        # The trace is a function of its inputs, not of the example it was traced with.
        other = tuple(torch.randn(t.shape, generator=torch.Generator().manual_seed(7))
                      for t in args)
        torch.testing.assert_close(traced(*other), model(*other), rtol=1e-5, atol=1e-5)
        assert not torch.allclose(traced(*other), eager)
    assert tuple(eager.shape) == spec.output_shape()
    assert bool(torch.isfinite(eager).all())


@pytest.mark.parametrize("phase", PHASE_NAMES)
def test_same_seed_same_weights_and_inputs(phase: str) -> None:
    spec = PROFILES["ci"].spec(phase)
    model_a, inputs_a = build(spec, seed=3)
    model_b, inputs_b = build(spec, seed=3)
    model_c, inputs_c = build(spec, seed=4)
    state_a, state_b, state_c = model_a.state_dict(), model_b.state_dict(), model_c.state_dict()
    assert state_a.keys() == state_b.keys()
    for key in state_a:
        assert torch.equal(state_a[key], state_b[key]), key
    assert inputs_a.keys() == inputs_b.keys() == set(spec.input_shapes())
    for key in inputs_a:
        assert torch.equal(inputs_a[key], inputs_b[key])
        assert tuple(inputs_a[key].shape) == spec.input_shapes()[key]
        assert not torch.equal(inputs_a[key], inputs_c[key])
    # Weights (where the model has any that are random) differ with the seed.
    random_weights = [k for k in state_a if k.endswith("weight") and state_a[k].dim() > 1]
    assert all(not torch.equal(state_a[k], state_c[k]) for k in random_weights)
    assert (phase == "matmul") == (not random_weights)
    # Eval mode, float32, CPU.
    assert not model_a.training
    assert all(p.dtype == torch.float32 and p.device.type == "cpu" for p in model_a.parameters())


def test_conv_activations_stay_order_one() -> None:
    """He init keeps the 24-layer net's output O(1), so fp16 neither overflows nor underflows."""
    model, inputs = build(PROFILES["light"].conv, seed=0)
    with torch.no_grad():
        out = model(*inputs.values())
    rms = math.sqrt(float(out.pow(2).mean()))
    assert 0.05 < rms < 50
