"""The three phases of a rotation (matmul, conv, attention): shapes, FLOP formulas, profiles.

Pure data, no torch: the daemon reads profiles and FLOP counts without importing torch
(its workers build the models, `workloads/models.py`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from typing import Any

PHASE_NAMES: tuple[str, ...] = ("matmul", "conv", "attention")


@dataclass(frozen=True)
class MatmulSpec:
    """Batched matrix product: batch x (n x n @ n x n)."""

    batch: int = 4
    n: int = 2048
    name: str = field(default="matmul", init=False)

    def input_shapes(self) -> dict[str, tuple[int, ...]]:
        shape = (self.batch, self.n, self.n)
        return {"a": shape, "b": shape}

    def output_shape(self) -> tuple[int, ...]:
        return (self.batch, self.n, self.n)

    def flop_per_step(self) -> int:
        return 2 * self.batch * self.n**3



@dataclass(frozen=True)
class ConvSpec:
    """A plain conv net: stages of 3x3 conv+ReLU layers, the first conv of each stage with stride 2."""

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
        return {"x": (self.batch, self.in_channels, self.size, self.size)}

    def output_shape(self) -> tuple[int, ...]:
        _cin, cout, _, size = self.layers()[-1]
        return (self.batch, cout, size, size)

    def flop_per_step(self) -> int:
        k2 = self.kernel * self.kernel
        return sum(2 * cin * cout * k2 * s * s * self.batch for cin, cout, _, s in self.layers())



@dataclass(frozen=True)
class AttentionSpec:
    """A stack of pre-norm transformer encoder layers (explicit attention, GELU FFN)."""

    batch: int = 1
    seq: int = 1024
    d_model: int = 512
    heads: int = 16
    layers: int = 12
    ffn_mult: int = 4
    name: str = field(default="attention", init=False)

    def __post_init__(self) -> None:
        if self.d_model % self.heads:
            raise ValueError(
                f"attention.d_model ({self.d_model}) must be divisible by heads ({self.heads})"
            )

    def input_shapes(self) -> dict[str, tuple[int, ...]]:
        return {"x": (self.batch, self.seq, self.d_model)}

    def output_shape(self) -> tuple[int, ...]:
        return (self.batch, self.seq, self.d_model)

    def flop_per_step(self) -> int:
        b, t, d, f = self.batch, self.seq, self.d_model, self.ffn_mult
        projections = 2 * t * d * (4 * d)  # q, k, v and output projections
        ffn = 2 * 2 * t * d * (f * d)
        scores = 2 * 2 * t * t * d  # QK^T and attention @ V
        return self.layers * b * (projections + ffn + scores)



PhaseSpec = MatmulSpec | ConvSpec | AttentionSpec


def _conv_out(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


@dataclass(frozen=True)
class Profile:
    """Shapes and durations of one rotation."""

    name: str
    matmul: MatmulSpec
    conv: ConvSpec
    attention: AttentionSpec
    phase_seconds: float  # whole phase, shared by the backends that run it
    slice_seconds: float  # backends alternate in slices of this length
    warmup_steps: int
    check_every: int  # compare with the float64 reference every K steps
    cpu_baseline_seconds: float  # short CPU run per phase for "speedup vs CPU"

    def __post_init__(self) -> None:
        # Overrides are coerced to the type of the current value: keep durations floats even
        # when written as ints (20 * 60), so that 1.5 s is accepted.
        for name in ("phase_seconds", "slice_seconds", "cpu_baseline_seconds"):
            object.__setattr__(self, name, float(getattr(self, name)))

    def spec(self, phase: str) -> PhaseSpec:
        if phase not in PHASE_NAMES:
            raise KeyError(f"unknown phase {phase!r} (choose from {', '.join(PHASE_NAMES)})")
        spec: PhaseSpec = getattr(self, phase)
        return spec


PROFILES: dict[str, Profile] = {
    "heavy": Profile(
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
    ),
    "reduced": Profile(
        name="reduced",
        matmul=MatmulSpec(batch=4, n=1024),
        conv=ConvSpec(batch=4, size=1024),
        attention=AttentionSpec(batch=1, seq=1024, d_model=512, heads=16, layers=12),
        phase_seconds=20 * 60,
        slice_seconds=60,
        warmup_steps=3,
        check_every=50,
        cpu_baseline_seconds=60,
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
    ),
}


# Override key -> (lowest, highest) accepted; for a tuple (conv.stage_*), each entry. Sizes stop
# short of what overflows an index or a FLOP count; durations stop at a day a phase. README's
# configuration section lists these (a test keeps them equal).
OVERRIDE_RANGES: dict[str, tuple[float, float]] = {
    "phase_seconds": (0.1, 86_400), "slice_seconds": (0.1, 3600), "cpu_baseline_seconds": (0, 3600),
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
        kind = type(current).__name__
        shape = f" of 1-{MAX_STAGES} entries each" if isinstance(current, tuple) else ""
        raise ValueError(f"{key}: bad value {value!r} (expected a {kind}{shape} "
                         f"between {low:g} and {high:g})") from None
    raise ValueError(f"{key}: cannot be overridden")


def with_overrides(profile: Profile, overrides: dict[str, Any]) -> Profile:
    """A copy of `profile` with dotted overrides applied, e.g. {"matmul.n": 1024, "phase_seconds": 30}.
    Raises ValueError("key: why") for an unknown key or a value out of `OVERRIDE_RANGES`."""
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
    if name not in PROFILES:
        raise KeyError(f"unknown profile {name!r} (choose from {', '.join(PROFILES)})")
    return with_overrides(PROFILES[name], overrides or {})

