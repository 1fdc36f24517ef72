"""The target's sampling distribution ``p``, formed as transformers forms it.

Shared by the acceptors (which must reproduce exactly this ``p``) and by the
autoregressive baseline (which samples from it directly), so both agree on what
"the model's own sampler" means.
"""

from __future__ import annotations

from typing import Optional

import torch

from spec.errors import NonFiniteLogitsError, SamplingParamsError
from spec.protocols import SamplingParams


def check_finite(logits: torch.Tensor) -> None:
    """Refuse NaN or +inf logits, and rows with no finite entry. ``-inf`` (a banned token) is fine.

    One reduction and one read of the device (one synchronisation on a GPU): a row's maximum is finite exactly
    when the row holds no NaN (the maximum propagates it), no +inf and some finite entry. Only a failing check
    looks again, to name what is wrong."""
    if not nonfinite_rows(logits.amax(dim=-1)).item():
        return
    if (torch.isnan(logits) | torch.isposinf(logits)).any():
        raise NonFiniteLogitsError(
            "The model produced NaN or +inf logits; check the model's weights and dtype "
            "(float16 overflow is a common cause: try bfloat16 or float32)."
        )
    raise NonFiniteLogitsError("A logits row is entirely -inf: no token can be chosen.")


def nonfinite_rows(row_max: torch.Tensor) -> torch.Tensor:
    """Whether any row whose maximum is ``row_max`` (``logits.amax(-1)`` or ``logits.max(-1).values``) breaks
    :func:`check_finite`'s rule, as a 0-d bool tensor left on the device (for a caller that reads it with others)."""
    return ~torch.isfinite(row_max).all()


def processed_logits(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Logits ``[..., V]`` after temperature, top-k and top-p (transformers' order and tie rules).

    Filtered tokens get ``-inf``. Not for greedy parameters (temperature 0).
    """
    if params.is_greedy:
        raise SamplingParamsError("processed_logits is for sampling; greedy decoding takes the argmax of the raw logits.")
    scores = logits / params.temperature
    if params.top_k is not None and params.top_k < scores.shape[-1]:
        kth_best = torch.topk(scores, params.top_k, dim=-1).values[..., -1:]
        scores = scores.masked_fill(scores < kth_best, float("-inf"))
    if params.top_p < 1.0:
        sorted_scores, order = torch.sort(scores, dim=-1, descending=False)
        cumulative = sorted_scores.softmax(dim=-1).cumsum(dim=-1)
        drop_sorted = cumulative <= (1 - params.top_p)
        drop_sorted[..., -1] = False  # always keep the most likely token
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        scores = scores.masked_fill(drop, float("-inf"))
    return scores


def target_probs(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """The distribution ``p`` ``[..., V]`` the target samples from; a one-hot argmax when greedy."""
    check_finite(logits)
    if params.is_greedy:
        return torch.nn.functional.one_hot(logits.argmax(dim=-1), logits.shape[-1]).to(logits.dtype)
    return processed_logits(logits, params).softmax(dim=-1)


def make_generator(params: SamplingParams, device: torch.device | str = "cpu") -> Optional[torch.Generator]:
    """A generator seeded from ``params.seed`` (None: torch's global RNG)."""
    if params.seed is None:
        return None
    generator = torch.Generator(device=device)
    generator.manual_seed(params.seed)
    return generator
