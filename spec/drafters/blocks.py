"""The residual MLP blocks draft heads are made of.

Both start as the identity (their weight branch is zero-initialised), so an
untrained head reads its input unchanged and a freshly built drafter begins from
the model's own next-token guess instead of noise.
"""

from __future__ import annotations

import torch
from torch import nn

from spec.runtime.int8 import Int8Matrix, int8_linear


class ResBlock(nn.Module):
    """``x + SiLU(W x + b)`` with W zero-initialised: starts as the identity.

    ``dropout`` (on the SiLU branch) only acts in training mode.
    """

    def __init__(self, hidden: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.linear = nn.Linear(hidden, hidden)
        nn.init.zeros_(self.linear.weight)
        # No parameters, so checkpoints are the same with or without dropout.
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.dropout(nn.functional.silu(self.linear(x)))


class ProjectedResBlock(nn.Module):
    """``P x + SiLU(W x + b)`` from ``in_features`` down to ``hidden``: a ResBlock whose input is wider.

    The residual cannot be ``x`` itself when the input is a concatenation
    ``[h, e_1, ..., e_k]``, so it is a learned projection ``P``. ``P`` starts as
    "keep the first ``hidden`` features" and ``W`` and ``b`` as zero, so the block
    starts by passing ``h`` through exactly.
    """

    def __init__(self, in_features: int, hidden: int, dropout: float = 0.0) -> None:
        super().__init__()
        if in_features < hidden:
            raise ValueError(f"ProjectedResBlock maps a wider input down: in_features {in_features} < hidden {hidden}.")
        self.residual = nn.Linear(in_features, hidden, bias=False)
        self.linear = nn.Linear(in_features, hidden)
        with torch.no_grad():
            self.residual.weight.zero_()
            self.residual.weight[:, :hidden].copy_(torch.eye(hidden))
            self.linear.weight.zero_()
            self.linear.bias.zero_()
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.residual(x) + self.dropout(nn.functional.silu(self.linear(x)))


def copy_lm_head_into_heads(heads: nn.ModuleList, lm_head: nn.Linear) -> None:
    """Start each head's own vocabulary projection (its last module) as a copy of the model's lm_head."""
    with torch.no_grad():
        for head in heads:
            head[-1].weight.copy_(lm_head.weight)
            if head[-1].bias is not None and lm_head.bias is not None:
                head[-1].bias.copy_(lm_head.bias)


def head_body(head: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """Every block of ``head`` but its vocabulary projection (the last module). Indexed rather than sliced:
    ``head[:-1]`` builds a new ``Sequential`` on every call, which costs a module construction per draft and
    breaks a compiled draft's graph."""
    for k in range(len(head) - 1):
        x = head[k](x)
    return x


def project(x: torch.Tensor, weight: torch.Tensor | Int8Matrix, bias: torch.Tensor | None) -> torch.Tensor:
    """``x`` ``[..., H]`` onto vocabulary rows ``weight`` ``[K, H]`` (+ ``bias`` ``[K]``) -> ``[..., K]``; ``weight``
    may be int8 (a quantized drafter's :meth:`HeadDrafter.projection`)."""
    if isinstance(weight, Int8Matrix):
        return int8_linear(x, weight, bias)
    return nn.functional.linear(x.to(weight.dtype), weight, bias)
