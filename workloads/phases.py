"""The three phases of a rotation (matmul, conv, attention): shapes, FLOP formulas, profiles.

Pure data, no torch: the daemon reads profiles and FLOP counts without importing torch
(its workers build the models, `workloads/models.py`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from typing import Any, Literal

PHASE_NAMES: tuple[str, ...] = ("matmul", "conv", "attention")
# How several backends share a phase (workloads/rotation.py runs them); here, torch-free, so the
# daemon's config and the CLI take their choices from one place.
Mode = Literal["alternate", "sequential", "concurrent"]
MODES: tuple[str, ...] = ("alternate", "sequential", "concurrent")


@dataclass(frozen=True)
class MatmulSpec:
    """Batched matrix product: batch x (n x n @ n x n).

    The defaults are seed 000's heavy phase 1: 2048 x 2048 matrices in batches of 4.
    """

    batch: int = 4
    n: int = 2048
    name: str = field(default="matmul", init=False)

    def input_shapes(self) -> dict[str, tuple[int, ...]]:
        """Input name -> shape: `a` and `b`, each (batch, n, n)."""
        shape = (self.batch, self.n, self.n)
        return {"a": shape, "b": shape}

    def output_shape(self) -> tuple[int, ...]:
        """(batch, n, n)."""
        return (self.batch, self.n, self.n)

    def flop_per_step(self) -> int:
        """FLOP of one step, 2 * batch * n³ (one multiply and one add per multiply-add)."""
        return 2 * self.batch * self.n**3



@dataclass(frozen=True)
class ConvSpec:
    """A plain conv net: stages of 3x3 conv+ReLU layers, the first conv of each stage with stride 2.

    Stage i has `stage_layers[i]` layers of `stage_channels[i]` output channels; padding is
    kernel // 2. The defaults are seed 000's heavy phase 2: 1024 x 1024 images in batches of
    8, 24 layers, channels 3 -> 64 -> 128 -> 256 -> 512 -> 1024. Raises ValueError when the
    two stage tuples differ in length or a stage has no layer.
    """

    batch: int = 8
    size: int = 1024
    in_channels: int = 3
    stage_channels: tuple[int, ...] = (64, 128, 256, 512, 1024)
    stage_layers: tuple[int, ...] = (4, 5, 5, 5, 5)
    kernel: int = 3
    name: str = field(default="conv", init=False)

    def __post_init__(self) -> None:
        if len(self.stage_channels) != len(self.stage_layers):
            raise ValueError("conv.stage_channels and conv.stage_layers must have the same length")
        if any(n < 1 for n in self.stage_layers):
            raise ValueError("conv.stage_layers entries must be >= 1")

    @property
    def depth(self) -> int:
        """The number of conv layers (the sum of `stage_layers`)."""
        return sum(self.stage_layers)

    def layers(self) -> list[tuple[int, int, int, int]]:
        """(in_channels, out_channels, stride, output_size) for each conv layer."""
        out: list[tuple[int, int, int, int]] = []
        cin, size = self.in_channels, self.size
        for cout, count in zip(self.stage_channels, self.stage_layers, strict=True):
            for i in range(count):
                stride = 2 if i == 0 else 1
                size = _conv_out(size, self.kernel, stride, self.kernel // 2)
                out.append((cin, cout, stride, size))
                cin = cout
        return out

    def input_shapes(self) -> dict[str, tuple[int, ...]]:
        """Input name -> shape: `x`, (batch, in_channels, size, size) (NCHW)."""
        return {"x": (self.batch, self.in_channels, self.size, self.size)}

    def output_shape(self) -> tuple[int, ...]:
        """(batch, last stage's channels, out size, out size), NCHW."""
        _cin, cout, _, size = self.layers()[-1]
        return (self.batch, cout, size, size)

    def flop_per_step(self) -> int:
        """FLOP of one forward: the convolutions' multiply-adds, 2 * in * out channels *
        kernel² * output pixels * batch per layer (ReLU and biases not counted)."""
        k2 = self.kernel * self.kernel
        return sum(2 * cin * cout * k2 * s * s * self.batch for cin, cout, _, s in self.layers())



ATTENTION_VARIANTS: tuple[str, ...] = ("standard", "ane")
"""The attention phase's layouts: "standard" is (B, S, C) with linear layers and one batched
attention; "ane" is Apple's Neural Engine layout (B, C, 1, S) with 1x1 convolutions and
attention split per head (`workloads/ane_transformer.py`). Same function, same weights."""

# The variant a backend runs when none is chosen: the Neural Engine gets the layout it is
# built for (issue 18); everything else the standard one. Any backend can run either.
DEFAULT_ATTENTION_VARIANT: dict[str, str] = {"coreml-ane": "ane"}


def default_attention_variant(backend: str) -> str:
    """The attention variant `backend` runs by default ("ane" for coreml-ane, else "standard")."""
    return DEFAULT_ATTENTION_VARIANT.get(backend, "standard")


@dataclass(frozen=True)
class AttentionSpec:
    """A stack of pre-norm transformer encoder layers (explicit attention, GELU FFN).

    `variant` picks the layout (one of ATTENTION_VARIANTS); it changes neither the function,
    the weights for a seed, the input and output shapes, nor the FLOP count. The FFN's hidden
    width is `ffn_mult` * d_model. The defaults (seq 1024, d_model 512, 16 heads, 12 layers)
    are seed 000's heavy phase 3; the seed gives no batch. Raises ValueError when d_model is
    not divisible by heads or `variant` is not a variant.
    """

    batch: int = 1
    seq: int = 1024
    d_model: int = 512
    heads: int = 16
    layers: int = 12
    ffn_mult: int = 4
    variant: str = "standard"
    name: str = field(default="attention", init=False)

    def __post_init__(self) -> None:
        if self.d_model % self.heads:
            raise ValueError(
                f"attention.d_model ({self.d_model}) must be divisible by heads ({self.heads})"
            )
        if self.variant not in ATTENTION_VARIANTS:
            raise ValueError(f"attention.variant: {self.variant!r} is not a variant "
                             f"(choose from {', '.join(ATTENTION_VARIANTS)})")

    def input_shapes(self) -> dict[str, tuple[int, ...]]:
        """Input name -> shape: `x`, (batch, seq, d_model), whatever the variant."""
        return {"x": (self.batch, self.seq, self.d_model)}

    def output_shape(self) -> tuple[int, ...]:
        """(batch, seq, d_model)."""
        return (self.batch, self.seq, self.d_model)

    def flop_per_step(self) -> int:
        """FLOPs of one forward as torch's FlopCounterMode counts them: the matrix products
        (2 per multiply-add), not softmax, norms, GELU, biases or residual adds.

        The same for both variants: the "ane" layout's 1x1 convolutions do the linear layers'
        multiply-adds (FlopCounterMode counts a convolution as 2 * out elements * in channels
        * kernel area, here area 1), and its per-head score and weighted-sum products add up
        to the batched ones (heads x 2 * t * t * d/heads each).
        """
        b, t, d, f = self.batch, self.seq, self.d_model, self.ffn_mult
        projections = 2 * t * d * (4 * d)  # q, k, v and output projections
        ffn = 2 * 2 * t * d * (f * d)
        scores = 2 * 2 * t * t * d  # QK^T and attention @ V
        return self.layers * b * (projections + ffn + scores)



PhaseSpec = MatmulSpec | ConvSpec | AttentionSpec


def variant_of(spec: PhaseSpec) -> str:
    """The spec's layout variant: the attention spec's `variant`; "standard" for the phases
    that have only one layout (matmul, conv)."""
    return spec.variant if isinstance(spec, AttentionSpec) else "standard"


def reference_spec(spec: PhaseSpec) -> PhaseSpec:
    """The spec whose model is the float64 reference for `spec`: the standard attention layout
    for either variant (same function, same weights), so one reference serves both and the
    "ane" layout is checked against an independent implementation; `spec` itself otherwise."""
    if isinstance(spec, AttentionSpec) and spec.variant != "standard":
        return replace(spec, variant="standard")
    return spec


def _conv_out(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


@dataclass(frozen=True)
class Profile:
    """Shapes and durations of one rotation (durations in seconds).

    `PROFILES` holds the named ones; `with_overrides` changes single fields.
    """

    name: str
    matmul: MatmulSpec
    conv: ConvSpec
    attention: AttentionSpec
    phase_seconds: float  # whole phase, shared by the backends that run it
    slice_seconds: float  # backends alternate in slices of this length
    warmup_steps: int
    check_every: int  # compare with the float64 reference every K steps ...
    cpu_baseline_seconds: float  # short CPU run per phase for "speedup vs CPU"
    # How long a worker may take to prepare (model build, float64 reference, Core ML
    # conversion and compile) before it is killed: generous for the heavy shapes, short for
    # the small ones so a stuck worker does not hold a ci rotation for 15 minutes.
    prepare_timeout_seconds: float = 900.0
    # ... but at most once per this much measured time: a check costs milliseconds of device
    # idle time, and at thousands of steps a second "every 50 steps" is hundreds a second.
    check_interval_seconds: float = 0.0

    def __post_init__(self) -> None:
        # Overrides are coerced to the type of the current value: keep durations floats even
        # when written as ints (20 * 60), so that 1.5 s is accepted.
        for name in ("phase_seconds", "slice_seconds", "cpu_baseline_seconds", "prepare_timeout_seconds",
                     "check_interval_seconds"):
            object.__setattr__(self, name, float(getattr(self, name)))

    def spec(self, phase: str) -> PhaseSpec:
        """The spec of `phase` (matmul, conv or attention); raises KeyError for another name."""
        if phase not in PHASE_NAMES:
            raise KeyError(f"unknown phase {phase!r} (choose from {', '.join(PHASE_NAMES)})")
        spec: PhaseSpec = getattr(self, phase)
        return spec


# heavy: seed 000's shapes and 20-minute phases (the attention batch is ours, see below).
_HEAVY = Profile(
    name="heavy",
    matmul=MatmulSpec(batch=4, n=2048),
    conv=ConvSpec(batch=8, size=1024),
    # Heavy: batch 8, not 1: at batch 1 the 12-layer step is bound by kernel launches and left an
    # H200 at 230-320 W of 700 (bare torch: batch 1 eager 22 TFLOP/s, batch 8 92 TFLOP/s at
    # 665 W, 96 at 686 W as a CUDA graph; measured 2026-11-30). The seeds fix seq, d_model,
    # heads and layers, not the batch.
    attention=AttentionSpec(batch=8, seq=1024, d_model=512, heads=16, layers=12),
    phase_seconds=20 * 60,
    slice_seconds=60,
    warmup_steps=3,
    check_every=50,
    cpu_baseline_seconds=60,
    check_interval_seconds=10,
)

PROFILES: dict[str, Profile] = {
    "heavy": _HEAVY,
    # reduced: seed 000's "not enough memory" settings (matrix 2048 -> 1024, image batch 8 -> 4),
    # the seed's attention batch of 1; the heavy profile's durations.
    "reduced": replace(
        _HEAVY,
        name="reduced",
        matmul=MatmulSpec(batch=4, n=1024),
        conv=ConvSpec(batch=4, size=1024),
        attention=replace(_HEAVY.attention, batch=1),
    ),
    # For a host whose only backend is the CPU: the heavy conv step takes ~28 s on 2 cores, so
    # a heavy rotation runs for hours. These shapes take 0.05-0.8 s a step on 2 cores here
    # (matmul 8.6, conv 6.4, attention 22.5 GFLOP), with the heavy profile's durations.
    "cpu": Profile(
        name="cpu",
        matmul=MatmulSpec(batch=4, n=1024),
        conv=ConvSpec(batch=1, size=256, stage_channels=(32, 64, 128, 256, 512)),
        attention=AttentionSpec(batch=1, seq=512, d_model=512, heads=8, layers=6),
        phase_seconds=20 * 60,
        slice_seconds=60,
        warmup_steps=2,
        check_every=20,
        cpu_baseline_seconds=0,
        prepare_timeout_seconds=300,
        check_interval_seconds=10,
    ),
    "light": Profile(
        name="light",
        matmul=MatmulSpec(batch=4, n=512),
        conv=ConvSpec(batch=2, size=128, stage_channels=(16, 32, 64, 128, 256)),
        attention=AttentionSpec(batch=1, seq=256, d_model=256, heads=8, layers=4),
        phase_seconds=15,
        slice_seconds=5,
        warmup_steps=2,
        check_every=20,
        cpu_baseline_seconds=3,
        prepare_timeout_seconds=180,
        check_interval_seconds=1,
    ),
    "ci": Profile(
        name="ci",
        matmul=MatmulSpec(batch=2, n=128),
        conv=ConvSpec(batch=1, size=64, stage_channels=(8, 16, 32, 64, 128)),
        attention=AttentionSpec(batch=1, seq=64, d_model=64, heads=4, layers=2),
        phase_seconds=2,
        slice_seconds=1,
        warmup_steps=1,
        check_every=10,
        cpu_baseline_seconds=0.5,
        prepare_timeout_seconds=120,
    ),
}


# Override key -> (lowest, highest) accepted; for a tuple (conv.stage_*), each entry. Sizes stop
# short of what overflows an index or a FLOP count; durations stop at a day a phase. README's
# configuration section lists these (a test keeps them equal).
OVERRIDE_RANGES: dict[str, tuple[float, float]] = {
    "phase_seconds": (0.1, 86_400), "slice_seconds": (0.1, 3600), "cpu_baseline_seconds": (0, 3600),
    "prepare_timeout_seconds": (1, 86_400), "check_interval_seconds": (0, 86_400),
    "warmup_steps": (1, 1000), "check_every": (1, 1_000_000),
    "matmul.batch": (1, 4096), "matmul.n": (1, 65_536),
    "conv.batch": (1, 4096), "conv.size": (1, 16_384), "conv.in_channels": (1, 1024),
    "conv.stage_channels": (1, 16_384), "conv.stage_layers": (1, 256), "conv.kernel": (1, 31),
    "attention.batch": (1, 4096), "attention.seq": (1, 131_072), "attention.d_model": (1, 65_536),
    "attention.heads": (1, 1024), "attention.layers": (1, 1024), "attention.ffn_mult": (1, 64),
}
MAX_STAGES = 16  # conv.stage_channels / conv.stage_layers entries
MAX_SLICES_PER_PHASE = 10_000  # phase_seconds / slice_seconds: the slice plan is a list of this size


def _coerce(value: Any, current: Any, key: str) -> Any:
    """Turn a config/CLI value into the type of the field it overrides, within `OVERRIDE_RANGES`.
    Raises ValueError("key: why")."""
    low, high = OVERRIDE_RANGES.get(key, (1, math.inf))
    try:
        if isinstance(current, str):  # a choice; the spec's __post_init__ checks the value
            if not isinstance(value, str) or not value:
                raise TypeError
            return value
        if isinstance(current, bool):
            raise TypeError
        if isinstance(current, int):
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise TypeError
            out: Any = int(value)
            if not low <= out <= high:
                raise ValueError
            return out
        if isinstance(current, float):
            if isinstance(value, bool):
                raise TypeError
            out = float(value)
            if not low <= out <= high:  # also refuses NaN and infinities
                raise ValueError
            return out
        if isinstance(current, tuple):
            items = value.split(",") if isinstance(value, str) else list(value)
            out = tuple(int(v) for v in items)
            if not 1 <= len(out) <= MAX_STAGES or not all(low <= v <= high for v in out):
                raise ValueError
            return out
    except (TypeError, ValueError, OverflowError):
        if isinstance(current, str):
            raise ValueError(f"{key}: bad value {value!r} (expected a name)") from None
        kind = type(current).__name__
        shape = f" of 1-{MAX_STAGES} entries each" if isinstance(current, tuple) else ""
        raise ValueError(f"{key}: bad value {value!r} (expected a {kind}{shape} "
                         f"between {low:g} and {high:g})") from None
    raise ValueError(f"{key}: cannot be overridden")


def with_overrides(profile: Profile, overrides: dict[str, Any]) -> Profile:
    """A copy of `profile` with dotted overrides applied, e.g. {"matmul.n": 1024, "phase_seconds": 30}.

    Each value is coerced to the type of the field it replaces (an integer, a float, a comma
    list of 1 to `MAX_STAGES` integers, a non-empty name), within `OVERRIDE_RANGES`. Raises
    ValueError("key: why") for an unknown phase or setting, a value of the wrong type or out
    of range, a spec the new values make invalid, or more than `MAX_SLICES_PER_PHASE` slices
    a phase.
    """
    phase_changes: dict[str, dict[str, Any]] = {}
    top_changes: dict[str, Any] = {}
    for key, value in overrides.items():
        head, _, rest = key.partition(".")
        if rest:
            if head not in PHASE_NAMES:
                raise ValueError(f"{key}: unknown phase {head!r}")
            spec = profile.spec(head)
            names = {f.name for f in fields(spec) if f.init}
            if rest not in names:
                raise ValueError(f"{key}: unknown setting (known: {', '.join(sorted(names))})")
            phase_changes.setdefault(head, {})[rest] = _coerce(value, getattr(spec, rest), key)
        else:
            names = {f.name for f in fields(profile)} - {"name", *PHASE_NAMES}
            if key not in names:
                raise ValueError(f"{key}: unknown setting (known: {', '.join(sorted(names))})")
            top_changes[key] = _coerce(value, getattr(profile, key), key)
    for phase, changes in phase_changes.items():
        try:
            top_changes[phase] = replace(profile.spec(phase), **changes)
        except ValueError as exc:
            raise ValueError(str(exc)) from None
    result = replace(profile, **top_changes)
    slices = result.phase_seconds / result.slice_seconds
    if slices > MAX_SLICES_PER_PHASE:
        raise ValueError(f"phase_seconds: {result.phase_seconds:g} s in slices of {result.slice_seconds:g} s "
                         f"is {slices:,.0f} slices a phase (at most {MAX_SLICES_PER_PHASE:,})")
    return result


def get_profile(name: str, overrides: dict[str, Any] | None = None) -> Profile:
    """The profile called `name` with `overrides` applied (see `with_overrides`). Raises
    KeyError for an unknown name and ValueError for a bad override."""
    if name not in PROFILES:
        raise KeyError(f"unknown profile {name!r} (choose from {', '.join(PROFILES)})")
    return with_overrides(PROFILES[name], overrides or {})



AUTO_PROFILE = "auto"
# Rotation time that is not phase time: the backend probe, the first phase's preparation and
# the hand-overs (a few seconds each), with room to spare.
ROTATION_OVERHEAD_S = 60.0


def auto_profile(backends: list[str]) -> tuple[str, str]:
    """The profile `auto` picks for the resolved backends, and why (one line).

    Any accelerator (cuda, mps, a Core ML backend) gets the heavy shapes the seeds define; a
    host where only the CPU runs gets the `cpu` shapes, which it finishes in its hour.
    """
    accelerators = [name for name in backends if name != "cpu"]
    if accelerators:
        return "heavy", f"an accelerator runs here ({', '.join(accelerators)}): the seeds' heavy shapes"
    return "cpu", ("only the CPU runs here: the heavy shapes would take hours a rotation (a heavy "
                   "conv step is ~28 s on 2 cores), the cpu shapes take under a second a step")


def estimated_rotation_seconds(profile: Profile, phase_units: int, baseline_phases: int = 0) -> float:
    """A rotation's planned wall time: its phases, CPU baselines to measure, and overhead (s)."""
    return profile.phase_seconds * phase_units + profile.cpu_baseline_seconds * baseline_phases \
        + ROTATION_OVERHEAD_S


def fit_to_interval(profile: Profile, interval_s: float, phase_units: int) -> Profile:
    """`profile` with phases shortened (never lengthened) so a rotation fits `interval_s`.

    With the default hour and three phases the heavy profile's 20-minute phases become 19
    (57 minutes of phases plus overhead): back-to-back rotations would otherwise leave no
    idle time and every rotation would start late.
    """
    budget = interval_s - ROTATION_OVERHEAD_S
    if phase_units <= 0 or budget <= 0 or profile.phase_seconds * phase_units <= budget:
        return profile
    minutes = math.floor(budget / phase_units / 60.0)
    seconds = minutes * 60.0 if minutes >= 1 else budget / phase_units
    return replace(profile, phase_seconds=max(profile.slice_seconds, seconds))
