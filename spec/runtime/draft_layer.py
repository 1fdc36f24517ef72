"""A drafter's own decoder layer, run by hand: EAGLE's one layer over (token, feature) pairs.

EAGLE-style drafters run one decoder layer of the model's architecture (projections sized
their own way: EAGLE-3's attention reads ``2H`` features) over a sequence of pairs, with a
KV cache of their own. Two pieces:

* :func:`qkv` and :func:`attend`: the layer's attention from its own modules, on any batch
  shape, with an explicit boolean mask; training (teacher forcing, EAGLE-3's unrolled
  training-time test) and drafting share them, so both run the same arithmetic.
* :class:`DraftLayerCache`: the layer's keys and values ``[kv_heads, rows, head_dim]``.
  Rows ``0 .. committed - 1`` hold the committed pairs; rows beyond are scratch for one
  tree's nodes, overwritten each step. The window (sliding-window models) is applied from
  each row's position, recorded when it is written.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn
from torch.nn import functional as F

from spec.errors import ContextLengthError
from spec.models import context_length
from spec.runtime.layers import rotate
from spec.runtime.masks import in_window, layer_window
from spec.runtime.context_layer import _backbone


def rotary_table(model, positions: torch.Tensor, dtype: torch.dtype, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's rotary ``cos``, ``sin`` ``[..., d]`` at ``positions`` (any shape), from its own rotary module."""
    rotary = _backbone(model, what).rotary_emb
    flat = positions.reshape(1, -1)
    probe = torch.zeros(1, dtype=dtype, device=positions.device)
    cos, sin = rotary(probe, flat)
    return cos[0].reshape(*positions.shape, -1), sin[0].reshape(*positions.shape, -1)


def qkv(attn: nn.Module, h: torch.Tensor, cos: torch.Tensor,
        sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``h`` ``[B, N, F]`` through the attention's projections -> ``q`` ``[B, heads, N, d]``, ``k``, ``v``
    ``[B, kv_heads, N, d]``; rotary ``cos``/``sin`` ``[B or 1, N, d]`` applied to ``q`` and ``k``."""
    b, n, d = h.shape[0], h.shape[1], attn.head_dim
    q = attn.q_proj(h).view(b, n, -1, d).transpose(1, 2)
    k = attn.k_proj(h).view(b, n, -1, d).transpose(1, 2)
    v = attn.v_proj(h).view(b, n, -1, d).transpose(1, 2)
    cos, sin = cos[:, None].to(q.dtype), sin[:, None].to(q.dtype)
    return rotate(q, cos, sin), rotate(k, cos, sin), v


def attend(attn: nn.Module, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
    """Attention of ``q`` ``[B, heads, N, d]`` over ``k``, ``v`` ``[B, kv_heads, K, d]`` where ``visible``
    ``[B or 1, N, K]`` bool, then the output projection -> ``[B, N, H]``."""
    scale = float(getattr(attn, "scaling", attn.head_dim ** -0.5))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=visible[:, None], scale=scale,
                                         enable_gqa=q.shape[1] != k.shape[1])
    return attn.o_proj(out.transpose(1, 2).flatten(2))


class DraftLayerCache:
    """Keys and values of a drafter's one decoder layer (batch of one), with the position of every row."""

    def __init__(self, model, attn: nn.Module, what: str, spare_rows: int = 256) -> None:
        self.model = model
        self.what = what
        self.window: Optional[int] = layer_window(model.config, 0)
        weight = attn.o_proj.weight
        kv_heads = attn.k_proj.out_features // attn.head_dim
        self.max_length = context_length(model)
        rows = self.max_length + spare_rows
        self.keys = torch.zeros(kv_heads, rows, attn.head_dim, dtype=weight.dtype, device=weight.device)
        self.values = torch.zeros_like(self.keys)
        self.row_positions = torch.zeros(rows, dtype=torch.long, device=weight.device)
        # The rotary angles of every position, once (each position's are computed independently, so the
        # table's rows equal what the rotary module gives on the fly, as in LlamaFamilyForward).
        self.cos, self.sin = rotary_table(model, torch.arange(rows, device=weight.device), weight.dtype, what)
        self.reset()

    @property
    def rows(self) -> int:
        return self.keys.shape[1]

    def reset(self) -> None:
        # Stale rows need no clearing: a pass only attends to rows that it or an earlier pass wrote.
        self.committed = 0

    def run(self, attn: nn.Module, h: torch.Tensor, positions: torch.Tensor, rows: torch.Tensor,
            visible: torch.Tensor) -> torch.Tensor:
        """``h`` ``[n, F]`` at ``positions`` ``[n]``: write its keys and values at ``rows`` ``[n]``, attend over
        rows ``0 .. visible.shape[1] - 1`` where ``visible`` ``[n, attend]`` (and within the window) -> ``[n, H]``."""
        attend_rows = visible.shape[1]
        if attend_rows > self.rows or int(rows.max()) >= self.rows:
            raise ContextLengthError(
                f"The {self.what}'s cache has {self.rows} rows but this pass needs {max(attend_rows, int(rows.max()) + 1)}; "
                "generate fewer tokens or use a smaller tree.")
        q, k, v = qkv(attn, h[None].to(self.keys.dtype), self.cos[positions][None], self.sin[positions][None])
        self.keys.index_copy_(1, rows, k[0])
        self.values.index_copy_(1, rows, v[0])
        self.row_positions[rows] = positions
        if self.window is not None:
            visible = visible & in_window(positions[:, None], self.row_positions[None, :attend_rows], self.window)
        return attend(attn, q, self.keys[None, :, :attend_rows], self.values[None, :, :attend_rows], visible[None])[0]


def tree_visibility(ancestor_mask: torch.Tensor, nodes: torch.Tensor, committed: int) -> torch.Tensor:
    """``[N, committed + n]`` bool for tree ``nodes`` ``[N]`` whose node ``j`` (``j >= 1``) sits at row
    ``committed + j``: every committed row, and the rows of the node's non-root ancestors and itself (the
    root's pair is the last committed row, so its own scratch row is never read)."""
    n = ancestor_mask.shape[0]
    visible = torch.zeros(nodes.shape[0], committed + n, dtype=torch.bool, device=nodes.device)
    visible[:, :committed] = True
    visible[:, committed:] = ancestor_mask.to(nodes.device)[nodes]
    visible[:, committed] = False
    return visible


def check_draft_room(cache: DraftLayerCache, committed: int, nodes: int) -> None:
    if committed + nodes > cache.rows:
        raise ContextLengthError(f"The {cache.what} holds {cache.rows} rows; {committed} committed pairs and a tree "
                                 f"of {nodes} nodes do not fit. Generate fewer tokens or use a smaller tree.")
