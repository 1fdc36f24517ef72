"""Where two greedy completions part, and how close the model's choice was there.

Exact greedy equality holds in float32 and float64 (the tests prove it); in half precision it
is not a property of real models: tree verification runs other kernels and GEMM shapes than
one-token decoding, and at a near-tie the argmax can flip. So a report names the first
divergence and the model's top-2 logit gap at it (computed on the reference prefix, in the
model's dtype): a gap of rounding size is a near-tie, a large one is a bug.
"""

from __future__ import annotations

from typing import Optional

import attrs
import torch


@attrs.frozen
class Divergence:
    index: int  # the first new token that differs (0-based, after the prompt)
    expected: int  # the reference's token there
    got: int
    top2_gap: float  # the model's logit gap between its two best tokens at that position


def first_divergence(model, expected: torch.Tensor, got: torch.Tensor, prompt_length: int) -> Optional[Divergence]:
    """``expected``, ``got``: ``[1, L]`` sequences sharing a prompt of ``prompt_length`` tokens; None if the
    shorter is a prefix of the longer."""
    a, b = expected[0].tolist(), got[0].tolist()
    for i in range(prompt_length, min(len(a), len(b))):
        if a[i] != b[i]:
            with torch.no_grad():
                logits = model(expected[:, :i].to(model.device)).logits[0, -1].float()
            top = torch.topk(logits, 2).values
            return Divergence(index=i - prompt_length, expected=a[i], got=b[i], top2_gap=float(top[0] - top[1]))
    return None
