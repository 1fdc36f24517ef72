"""Weight-only int8 for a drafter's own matrices (CPU).

On a CPU decoding a small model, a draft step is bound by reading weights: the target's
weights do not fit the last-level cache beside the drafter's, so every pass of an EAGLE
layer or a Hydra head streams its matrices from memory again, a few rows at a time.
Storing them as int8 with one scale per output row reads a quarter of the bytes, and
``torch.ops.aten._weight_int8pack_mm`` (bfloat16 activations) runs small-row products
2-3x faster than float32 on the shipped model's shapes (docs/benchmarks.md).

Only the draft is approximated: the verifier scores every candidate with the target's own
weights, so greedy output and the sampled distribution are unchanged (a sampled draft's
``q`` is whatever the quantised heads give, and rejection sampling is exact for any ``q``).

The kernel gives silently wrong results unless the input width is a multiple of 16
(measured: NaN at 8, 24, 40; garbage at 1000), so :func:`int8_supported` keeps other
matrices in floating point. :class:`Int8Linear` keeps the float weight too (checkpoints,
training and code reading ``.weight`` see it unchanged) and re-quantises when it is edited.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from torch import nn

from spec.errors import UnsupportedError

#: The kernel's input width must be a multiple of this.
WIDTH_MULTIPLE = 16


class Int8Matrix(NamedTuple):
    """``values`` ``[N, K]`` int8 and ``scales`` ``[N]`` bfloat16: row ``n`` is ``values[n] * scales[n]``.

    A NamedTuple rather than an attrs class: it travels into compiled draft functions, and Dynamo
    traces named tuples of tensors without a graph break."""

    values: torch.Tensor
    scales: torch.Tensor

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return self.values.to(dtype) * self.scales.to(dtype)[:, None]


def int8_supported(weight: torch.Tensor) -> bool:
    """Whether ``weight`` ``[N, K]`` can run through the int8 kernel: a 2-D float matrix on the CPU whose
    input width ``K`` is a multiple of :data:`WIDTH_MULTIPLE`."""
    return (weight.dim() == 2 and weight.device.type == "cpu" and weight.is_floating_point()
            and weight.shape[1] % WIDTH_MULTIPLE == 0 and weight.shape[1] > 0)


def quantize_rows(weight: torch.Tensor) -> Int8Matrix:
    """Symmetric per-row int8 of ``weight`` ``[N, K]``: scale = max |row| / 127, values rounded to nearest
    (each entry off by at most half its row's scale). An all-zero row gets scale 1 (its values are 0)."""
    if not int8_supported(weight):
        raise UnsupportedError(
            f"int8 weights need a 2-D float CPU matrix whose input width is a multiple of {WIDTH_MULTIPLE}; got "
            f"shape {tuple(weight.shape)} on {weight.device}. Keep this matrix in floating point.")
    w = weight.detach().float()
    peak = w.abs().amax(dim=1)
    scales = torch.where(peak > 0, peak / 127, torch.ones_like(peak))
    values = torch.round(w / scales[:, None]).clamp(-127, 127).to(torch.int8)
    return Int8Matrix(values.contiguous(), scales.to(torch.bfloat16))


def int8_linear(x: torch.Tensor, matrix: Int8Matrix, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``x`` ``[..., K]`` times ``matrix`` ``[N, K]`` transposed (+ ``bias`` ``[N]``) -> ``[..., N]`` in ``x``'s dtype.
    The product runs in bfloat16 with float accumulation (the kernel's fast path)."""
    shape = x.shape
    flat = x.reshape(-1, shape[-1]).to(torch.bfloat16).contiguous()
    out = torch.ops.aten._weight_int8pack_mm(flat, matrix.values, matrix.scales).to(x.dtype)
    out = out.reshape(*shape[:-1], matrix.values.shape[0])
    return out if bias is None else out + bias.to(out.dtype)


class Int8Linear(nn.Linear):
    """An ``nn.Linear`` that multiplies with an int8 copy of its weight (:func:`quantize_rows`).

    The float ``weight`` and ``bias`` stay as they were, so a checkpoint saved from it is the float one and
    code that reads ``.weight`` (placement, a draft vocabulary's rows) keeps working; the int8 copy is a
    non-persistent buffer. Drafting only: a forward that would train the weight is refused.
    """

    def __init__(self, linear: nn.Linear) -> None:
        nn.Module.__init__(self)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight, self.bias = linear.weight, linear.bias
        self._requantize()

    def _requantize(self) -> None:
        matrix = quantize_rows(self.weight)
        self.register_buffer("int8_values", matrix.values, persistent=False)
        self.register_buffer("int8_scales", matrix.scales, persistent=False)
        self._quantized_version = self.weight._version

    @property
    def matrix(self) -> Int8Matrix:
        """The int8 copy, re-made first if the float weight was edited in place since (eager only)."""
        if not torch.compiler.is_compiling() and self.weight._version != self._quantized_version:
            self._requantize()
        return Int8Matrix(self.int8_values, self.int8_scales)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and self.weight.requires_grad:
            raise UnsupportedError(
                "These heads run int8 weights for drafting (drafter.quantize()); training through them would not "
                "update the float weights it reads. Train a drafter loaded without quantize(), then quantize it.")
        return int8_linear(x, self.matrix, self.bias)


def quantize_linears(module: nn.Module) -> int:
    """Replace every ``nn.Linear`` under ``module`` that :func:`int8_supported` takes by an :class:`Int8Linear`,
    in place; returns how many were replaced (others keep their float weights)."""
    replaced = 0
    for name, child in list(module.named_children()):
        if isinstance(child, Int8Linear):
            continue
        if isinstance(child, nn.Linear) and int8_supported(child.weight):
            setattr(module, name, Int8Linear(child))
            replaced += 1
        else:
            replaced += quantize_linears(child)
    return replaced
