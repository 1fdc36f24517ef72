"""Tree attention kernels for the fast verifier: one signature, interchangeable.

Each takes queries ``[1, heads, n, head_dim]`` and the cache's keys and values
``[1, kv_heads, attend, head_dim]`` (``attend``: the cached prefix, the tree's rows,
and on compiled paths some padding), plus a mask object built by the matching
``*_mask`` function, and returns ``[1, heads, n, head_dim]``.

* ``sdpa``: a boolean mask ``[n, attend]`` for ``scaled_dot_product_attention``;
  the CPU default, and the reference for the others.
* ``flex``: PyTorch's FlexAttention with a block mask computed from the tree's
  ancestor matrix and the prefix length; nothing dense is built on the host and
  fully visible prefix blocks skip the mask function. Meant for CUDA with
  ``torch.compile`` (unfused and slow in eager mode, where it is only for tests).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from spec.runtime.masks import in_window

ATTENTION_KINDS = ("sdpa", "flex")


def sdpa_mask(ancestors: torch.Tensor, start: int, attend: int, positions: torch.Tensor,
              window: Optional[int]) -> torch.Tensor:
    """``[n, attend]`` bool: the prefix ``0 .. start-1``, then the tree by ancestry; the padding hidden.

    ``ancestors`` ``[n, n]`` bool (a node sees itself and its ancestors), ``positions`` ``[n]``.
    For a causal pass over new tokens ``ancestors`` is lower-triangular. With a sliding
    ``window``, ``ancestors`` must already hide new rows too far back; this hides prefix rows.
    """
    n = ancestors.shape[0]
    visible = torch.zeros(n, attend, dtype=torch.bool, device=ancestors.device)
    visible[:, :start] = True
    visible[:, start : start + n] = ancestors
    if window is not None and start > 0:
        # Keys in the prefix sit at their row index; further back than the window is hidden.
        keys = torch.arange(start, device=ancestors.device)
        visible[:, :start] &= in_window(positions[:, None], keys[None, :], window)
    return visible


def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, visible: torch.Tensor,
                   scale: float, gqa: bool) -> torch.Tensor:
    if gqa and q.is_cuda:
        # On CUDA, the fused kernels that take a mask do not take grouped KV heads (only the math kernel does
        # both). Folding each group's query heads into the query axis keeps SDPA fused without copying the
        # keys and values (repeating them copied the whole prefix, every layer, every step).
        return folded_gqa_attention(q, k, v, visible, scale)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=visible[None, None], scale=scale, enable_gqa=gqa)


def folded_gqa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, visible: torch.Tensor,
                         scale: float) -> torch.Tensor:
    """Grouped-query attention as plain attention: ``q`` ``[1, heads, n, d]`` regrouped to ``[1, kv_heads,
    groups * n, d]`` (query head ``i * groups + j`` reads KV head ``i``), the mask ``[n, attend]`` tiled once per
    group member; the result is regrouped back to ``[1, heads, n, d]``."""
    _, heads, n, d = q.shape
    kv_heads = k.shape[1]
    groups = heads // kv_heads
    folded = q.reshape(1, kv_heads, groups * n, d)
    out = F.scaled_dot_product_attention(folded, k, v, attn_mask=visible.repeat(groups, 1)[None, None], scale=scale)
    return out.reshape(1, heads, n, d)


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: None, scale: float,
                     gqa: bool) -> torch.Tensor:
    """A prefill on an empty cache with full attention: plain causal SDPA, no mask (flash on CUDA)."""
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=gqa)


def flex_mask(ancestors: torch.Tensor, start: int, attend: int, positions: torch.Tensor, window: Optional[int]):
    """A FlexAttention ``BlockMask`` equal to ``sdpa_mask``'s, from the ancestor matrix and the prefix length."""
    from torch.nn.attention.flex_attention import create_block_mask

    n = ancestors.shape[0]
    # depth 0 is the first new row, so positions[0] is the prefix length, already on the device.
    prefix = positions[0]

    def tree_mask(b, h, q, kv):
        in_tree = (kv >= prefix) & (kv < prefix + n)
        local = (kv - prefix).clamp(0, n - 1)
        visible = (kv < prefix) | (in_tree & ancestors[q, local])
        if window is not None:
            # Prefix keys sit at their row index; the window among new rows is already in ``ancestors``.
            visible = visible & ((kv >= prefix) | in_window(positions[q], kv, window))
        return visible

    return create_block_mask(tree_mask, None, None, n, attend, device=ancestors.device)


def flex_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_mask, scale: float,
                   gqa: bool) -> torch.Tensor:
    from torch.nn.attention.flex_attention import flex_attention as flex

    return flex(q, k, v, block_mask=block_mask, scale=scale, enable_gqa=gqa)


MASKS = {"sdpa": sdpa_mask, "flex": flex_mask}
KERNELS = {"sdpa": sdpa_attention, "flex": flex_attention}
