"""The phases' torch models and their fixed inputs (imported by workers, never by the daemon).

Every model here has fixed shapes and no data-dependent Python control flow, so that
`torch.jit.trace` captures it whole and coremltools can convert it. Every model is
batch-independent (no batch norm, no cross-sample mixing): the float64 reference check runs
on sample 0 only, which keeps it cheap at the heavy sizes.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from workloads.ane_transformer import EncoderANE
from workloads.phases import AttentionSpec, ConvSpec, MatmulSpec, PhaseSpec


def _init_(weight: torch.Tensor, fan_in: int, gain: float, generator: torch.Generator) -> None:
    with torch.no_grad():
        weight.normal_(0.0, gain / math.sqrt(fan_in), generator=generator)


class BatchedMatmul(nn.Module):
    """The matmul phase's model: `a @ b`, no parameters."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """(batch, n, n) @ (batch, n, n) -> (batch, n, n)."""
        return torch.matmul(a, b)


class ConvNet(nn.Module):
    """The conv phase's model: `spec.layers()` as bias-free Conv2d + ReLU pairs, weights drawn
    from `generator` with He initialisation (normal, std sqrt(2 / fan_in))."""

    def __init__(self, spec: ConvSpec, generator: torch.Generator) -> None:
        super().__init__()
        convs: list[nn.Module] = []
        for cin, cout, stride, _ in spec.layers():
            conv = nn.Conv2d(cin, cout, spec.kernel, stride=stride, padding=spec.kernel // 2, bias=False)
            # He init keeps activations O(1) through 24 ReLU layers, so fp16 neither
            # overflows nor underflows and the reference check stays meaningful.
            _init_(conv.weight, cin * spec.kernel * spec.kernel, math.sqrt(2.0), generator)
            convs += [conv, nn.ReLU()]
        self.body = nn.Sequential(*convs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, in_channels, size, size) -> `spec.output_shape()`, NCHW."""
        return self.body(x)


class EncoderLayer(nn.Module):
    """One pre-norm transformer encoder layer on (B, S, C): multi-head self-attention written
    out (no fused kernel), then a GELU FFN of width ffn_mult * d_model, each with a residual.
    Linear weights are drawn from `generator` (normal, std 1 / sqrt(fan_in)), biases zero."""

    def __init__(self, spec: AttentionSpec, generator: torch.Generator) -> None:
        super().__init__()
        d = spec.d_model
        self.heads = spec.heads
        self.head_dim = d // spec.heads
        self.scale = 1.0 / math.sqrt(self.head_dim)
        self.norm1 = nn.LayerNorm(d)
        self.norm2 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.out = nn.Linear(d, d)
        self.ff1 = nn.Linear(d, spec.ffn_mult * d)
        self.ff2 = nn.Linear(spec.ffn_mult * d, d)
        for lin in (self.qkv, self.out, self.ff1, self.ff2):
            _init_(lin.weight, lin.in_features, 1.0, generator)
            nn.init.zeros_(lin.bias)
        # Constant shape numbers (batch as -1) so a trace holds no data-dependent ints and the
        # same module runs the batch-1 float64 reference.
        self.split_shape = (-1, spec.seq, spec.heads, self.head_dim)
        self.merged_shape = (-1, spec.seq, spec.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, seq, d_model) -> (B, seq, d_model)."""
        q, k, v = self.qkv(self.norm1(x)).chunk(3, dim=-1)
        q = q.reshape(self.split_shape).transpose(1, 2)
        k = k.reshape(self.split_shape).transpose(1, 2)
        v = v.reshape(self.split_shape).transpose(1, 2)
        weights = torch.softmax(torch.matmul(q, k.transpose(-2, -1)) * self.scale, dim=-1)
        attended = torch.matmul(weights, v).transpose(1, 2).reshape(self.merged_shape)
        x = x + self.out(attended)
        return x + self.ff2(torch.nn.functional.gelu(self.ff1(self.norm2(x))))


class Encoder(nn.Module):
    """The attention phase's standard-layout model: `spec.layers` `EncoderLayer`s in a row."""

    def __init__(self, spec: AttentionSpec, generator: torch.Generator) -> None:
        super().__init__()
        self.layers = nn.Sequential(*(EncoderLayer(spec, generator) for _ in range(spec.layers)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, seq, d_model) -> (B, seq, d_model)."""
        return self.layers(x)


def build_model(spec: PhaseSpec, generator: torch.Generator) -> nn.Module:
    """The phase's model with weights drawn from `generator` (float32, CPU).

    For attention, `spec.variant` picks the layout: `Encoder` ("standard") or
    `workloads.ane_transformer.EncoderANE` ("ane", holding the same weights). Raises
    TypeError for a spec of another type.
    """
    if isinstance(spec, MatmulSpec):
        return BatchedMatmul()
    if isinstance(spec, ConvSpec):
        return ConvNet(spec, generator)
    if isinstance(spec, AttentionSpec):
        # Both variants draw the standard encoder's weights, so a seed means the same weights
        # (and the same inputs after them) in either layout.
        standard = Encoder(spec, generator)
        if spec.variant == "ane":
            return EncoderANE.from_standard(spec, standard)
        return standard
    raise TypeError(f"unknown phase spec {type(spec).__name__}")


def make_inputs(spec: PhaseSpec, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Fixed random inputs (float32, CPU, standard normal) in the order the model's forward
    takes them, shapes from `spec.input_shapes()`."""
    return {
        name: torch.randn(shape, generator=generator, dtype=torch.float32)
        for name, shape in spec.input_shapes().items()
    }


def build(spec: PhaseSpec, seed: int = 0) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """The phase's model (float32, CPU, eval mode) and its fixed inputs, the same for a seed."""
    generator = torch.Generator().manual_seed(seed)
    model = build_model(spec, generator).eval()
    return model, make_inputs(spec, generator)


ModelFactory = Callable[[PhaseSpec, int], tuple[nn.Module, dict[str, torch.Tensor]]]
