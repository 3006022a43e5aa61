"""The attention phase's encoder in the layout Apple published for the Neural Engine.

Written from apple/ml-ane-transformers (its reference code and README, which point to
Apple's research article on the same principles), not copied from it. The principles used:

1. Data format (B, C, 1, S): channels on axis 1, the sequence on the last axis, which the
   Neural Engine keeps contiguous. Linear layers become 1x1 convolutions over that layout.
2. Chunked attention: q, k and v are split per head and each head's scores and weighted sum
   are computed on its own (B, S, S) tensor, instead of one (B, heads, S, S) tensor.
3. Fewer memory copies: inside a layer the converted program has no transpose and no
   reshape (one squeeze and one expand_dims per layer, which drop and restore the unit axis).
   Layer norm reduces over the channel axis where it is, instead of moving channels last.

It computes the same function as `workloads.models.Encoder` with the same weights (see
`EncoderANE.from_standard`), and takes and returns (B, S, C) like it, so the two are
interchangeable for the step loop and the float64 reference: the only layout changes are
at the model's input and output.

One departure from the published code, on purpose: it transposes k once per layer and
uses einsum for the scores. Here the scores are `matmul(k_h^T, q_h)` on (B, C/heads, S)
tensors, which coremltools turns into one `matmul(transpose_x=True)` op (its
`fuse_transpose_matmul` pass folds torch's transpose into the matmul's flag), so the
converted program holds no `transpose` op inside the layers. The unit axis is dropped
for the attention core (a squeeze; in row-major memory the same bytes) because matmul works
on the last two axes. FLOPs are the same as the standard layout's: the same products, in other
shapes (see `AttentionSpec.flop_per_step`).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import nn

from workloads.phases import AttentionSpec

if TYPE_CHECKING:
    from workloads.models import Encoder


class LayerNormChannels(nn.Module):
    """Layer norm over the channel axis of a (B, C, 1, S) tensor, as torch's LayerNorm does
    over the last axis of (B, S, C): biased variance, `eps` inside the square root, then a
    per-channel scale and shift (`weight`, `bias`, shape (C,))."""

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.affine_shape = (1, channels, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, 1, S) -> (B, C, 1, S), normalised over C."""
        centred = x - x.mean(dim=1, keepdim=True)
        variance = (centred * centred).mean(dim=1, keepdim=True)
        normed = centred * torch.rsqrt(variance + self.eps)
        return normed * self.weight.view(self.affine_shape) + self.bias.view(self.affine_shape)


class EncoderLayerANE(nn.Module):
    """One pre-norm encoder layer on (B, C, 1, S): per-head attention, then a GELU FFN.

    Module and parameter names follow `workloads.models.EncoderLayer` (qkv, out, ff1, ff2,
    norm1, norm2); the projections are `Conv2d(kernel_size=1)` whose weights are the linear
    weights with two unit axes, shape (out, in, 1, 1).
    """

    def __init__(self, spec: AttentionSpec) -> None:
        super().__init__()
        d = spec.d_model
        self.heads = spec.heads
        self.head_dim = d // spec.heads
        self.scale = 1.0 / math.sqrt(self.head_dim)
        self.norm1 = LayerNormChannels(d)
        self.norm2 = LayerNormChannels(d)
        self.qkv = nn.Conv2d(d, 3 * d, kernel_size=1)
        self.out = nn.Conv2d(d, d, kernel_size=1)
        self.ff1 = nn.Conv2d(d, spec.ffn_mult * d, kernel_size=1)
        self.ff2 = nn.Conv2d(spec.ffn_mult * d, d, kernel_size=1)

    def attend(self, x: torch.Tensor) -> torch.Tensor:
        """Self-attention of a normed (B, C, 1, S) input, before the output projection."""
        # One split gives q heads, then k heads, then v heads: the same channel order as the
        # standard layer's chunk(3) followed by a split of each into heads.
        pieces = self.qkv(x).squeeze(2).split(self.head_dim, dim=1)
        q, k, v = pieces[: self.heads], pieces[self.heads: 2 * self.heads], pieces[2 * self.heads:]
        outputs = []
        for q_h, k_h, v_h in zip(q, k, v, strict=True):  # each (B, C/heads, S)
            # scores[b, key, query]: softmax over the keys (axis 1).
            scores = torch.matmul(k_h.transpose(1, 2), q_h) * self.scale
            weights = torch.softmax(scores, dim=1)
            outputs.append(torch.matmul(v_h, weights))  # (B, C/heads, S)
        return torch.cat(outputs, dim=1).unsqueeze(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, d_model, 1, seq) -> (B, d_model, 1, seq)."""
        x = x + self.out(self.attend(self.norm1(x)))
        return x + self.ff2(torch.nn.functional.gelu(self.ff1(self.norm2(x))))


class EncoderANE(nn.Module):
    """The ANE-layout encoder: (B, S, C) in, (B, S, C) out, (B, C, 1, S) in between."""

    def __init__(self, spec: AttentionSpec) -> None:
        super().__init__()
        self.layers = nn.Sequential(*(EncoderLayerANE(spec) for _ in range(spec.layers)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, seq, d_model) -> (B, seq, d_model), as `workloads.models.Encoder`."""
        hidden = x.transpose(1, 2).unsqueeze(2)  # (B, S, C) -> (B, C, 1, S)
        return self.layers(hidden).squeeze(2).transpose(1, 2)  # back to (B, S, C)

    @classmethod
    def from_standard(cls, spec: AttentionSpec, standard: Encoder) -> EncoderANE:
        """The ANE-layout encoder holding exactly `standard`'s weights (same dtype, device).

        Every parameter is copied by name; a linear weight (out, in) becomes a 1x1
        convolution weight (out, in, 1, 1). Raises RuntimeError (from load_state_dict)
        when the two do not have the same parameters.
        """
        model = cls(spec)
        first = next(standard.parameters(), None)
        if first is not None:  # before the copy, so float64 weights stay float64
            model = model.to(device=first.device, dtype=first.dtype)
        target = model.state_dict()
        model.load_state_dict({name: tensor.reshape(target[name].shape) if name in target else tensor
                               for name, tensor in standard.state_dict().items()})
        return model.train(standard.training)
