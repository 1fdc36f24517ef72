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

from spec.errors import ContextLengthError, UnsupportedError
from spec.models import context_length
from spec.runtime.layers import rotate
from spec.runtime.masks import in_window, layer_window
from spec.runtime.support import SUPPORTED_ARCHITECTURES


def _backbone(model, what: str):
    """The model's decoder stack (``layers``, ``rotary_emb``), for a drafter layer of its own architecture."""
    model_type = getattr(model.config, "model_type", type(model).__name__)
    backbone = getattr(model, "model", None)
    if (model_type not in SUPPORTED_ARCHITECTURES or backbone is None
            or not hasattr(backbone, "layers") or not hasattr(backbone, "rotary_emb")):
        raise UnsupportedError(
            f"{what} builds a decoder layer of the model's own architecture, which is supported for "
            f"{', '.join(SUPPORTED_ARCHITECTURES)}; got {model_type!r} ({type(model).__name__}). "
            "Use a supported model, or a drafter without that layer (e.g. HydraDrafter without prefix_layer)."
        )
    return backbone


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
    """Keys and values of a drafter's one decoder layer (batch of one), with the position of every row.

    The buffers start at ``initial_rows`` (or the model's context, if shorter) plus ``spare_rows`` and double when
    a pass needs more (:meth:`reserve`), up to the model's context plus ``spare_rows``: a short generation never
    holds a cache sized for the whole context (about 1 GB per drafter at 128K positions on an 8B model).
    """

    def __init__(self, model, attn: nn.Module, what: str, spare_rows: int = 256, initial_rows: int = 1024) -> None:
        self.model = model
        self.what = what
        self.window: Optional[int] = layer_window(model.config, 0)
        weight = attn.o_proj.weight
        self.kv_heads, self.head_dim = attn.k_proj.out_features // attn.head_dim, attn.head_dim
        self.max_rows = context_length(model) + spare_rows
        self._allocate(min(initial_rows + spare_rows, self.max_rows), weight.dtype, weight.device)
        self.reset()

    def _allocate(self, rows: int, dtype: torch.dtype, device: torch.device) -> None:
        keep = 0 if not hasattr(self, "keys") else self.keys.shape[1]
        keys = torch.zeros(self.kv_heads, rows, self.head_dim, dtype=dtype, device=device)
        values, row_positions = torch.zeros_like(keys), torch.zeros(rows, dtype=torch.long, device=device)
        if keep:  # growing: the rows written so far move over (a pass only reads rows it or an earlier one wrote)
            keys[:, :keep], values[:, :keep] = self.keys, self.values
            row_positions[:keep] = self.row_positions
        self.keys, self.values, self.row_positions = keys, values, row_positions
        # The rotary angles of every position, once (each position's are computed independently, so the
        # table's rows equal what the rotary module gives on the fly, as in LlamaFamilyForward).
        self.cos, self.sin = rotary_table(self.model, torch.arange(rows, device=device), dtype, self.what)

    @property
    def rows(self) -> int:
        return self.keys.shape[1]

    def reserve(self, rows: int) -> None:
        """Make room for ``rows`` rows: grow (doubling) up to the model's context plus the spare rows, or refuse."""
        if rows <= self.rows:
            return
        if rows > self.max_rows:
            raise ContextLengthError(
                f"The {self.what}'s cache holds at most {self.max_rows} rows (the model's context and spare rows for "
                f"a tree) but this pass needs {rows}; generate fewer tokens or use a smaller tree.")
        self._allocate(min(max(2 * self.rows, rows), self.max_rows), self.keys.dtype, self.keys.device)

    def reset(self) -> None:
        # Stale rows need no clearing: a pass only attends to rows that it or an earlier pass wrote.
        self.committed = 0

    def run(self, attn: nn.Module, h: torch.Tensor, positions: torch.Tensor, rows: torch.Tensor,
            visible: torch.Tensor) -> torch.Tensor:
        """``h`` ``[n, F]`` at ``positions`` ``[n]``: write its keys and values at ``rows`` ``[n]``, attend over
        rows ``0 .. visible.shape[1] - 1`` where ``visible`` ``[n, attend]`` (and within the window) -> ``[n, H]``.
        ``rows`` must lie below ``visible.shape[1]`` (a pass attends to what it writes), which :meth:`reserve`
        makes room for; their values stay on the device (no host read)."""
        attend_rows = visible.shape[1]
        self.reserve(attend_rows)
        q, k, v = qkv(attn, h[None].to(self.keys.dtype), self.cos[positions][None], self.sin[positions][None])
        self.keys.index_copy_(1, rows, k[0])
        self.values.index_copy_(1, rows, v[0])
        self.row_positions[rows] = positions
        if self.window is not None:
            visible = visible & in_window(positions[:, None], self.row_positions[None, :attend_rows], self.window)
        return attend(attn, q, self.keys[None, :, :attend_rows], self.values[None, :, :attend_rows], visible[None])[0]


def tree_visibility(ancestor_rows: torch.Tensor, base: torch.Tensor, width: int) -> torch.Tensor:
    """``[N, width]`` bool for tree nodes whose ancestor rows are ``ancestor_rows`` ``[N, n]`` (``ancestor_mask[nodes]``)
    when node ``j`` (``j >= 1``) sits at row ``base + j`` (``base`` ``[]``: the committed pairs, a tensor so a compiled
    draft sees no per-step constant): every committed row, and the rows of the node's non-root ancestors and itself
    (the root's pair is the last committed row, so its own scratch row ``base`` is never read). ``width`` may run past
    the tree (a compiled draft attends over the whole buffer): those rows are hidden."""
    n = ancestor_rows.shape[1]
    offset = torch.arange(width, device=ancestor_rows.device) - base  # each row's node index (< 0: committed)
    in_tree = ancestor_rows.gather(1, offset.clamp(0, n - 1).expand(ancestor_rows.shape[0], width))
    return (offset < 0) | (in_tree & (offset >= 1) & (offset < n))


def causal_rows(rows: torch.Tensor, width: int) -> torch.Tensor:
    """``[m, width]`` bool: pairs written at ``rows`` ``[m]`` see every row up to and including their own."""
    return torch.arange(width, device=rows.device)[None, :] <= rows[:, None]


def check_draft_room(cache: DraftLayerCache, committed: int, nodes: int) -> None:
    """Room for ``committed`` pairs and a tree of ``nodes`` nodes (the cache grows to fit, up to its limit)."""
    cache.reserve(committed + nodes)
