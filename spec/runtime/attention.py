"""Tree attention kernels for the fast verifier: one signature, interchangeable.

Each takes queries ``[1, heads, n, head_dim]`` and the cache's keys and values
``[1, kv_heads, attend, head_dim]`` (``attend``: the cached prefix, the tree's rows,
and on compiled paths some padding), plus a mask object built by the matching
``*_mask`` function, and returns ``[1, heads, n, head_dim]``.

* ``sdpa``: a boolean mask ``[n, attend]`` for ``scaled_dot_product_attention``;
  the CPU default, and the reference for the others.
* ``flex``: PyTorch's FlexAttention with a block mask: a mask function reading the
  tree's ancestor matrix and the prefix length, on block tensors worked out from
  lengths alone and kept per layout (``FlexTreeMasks``), so nothing dense is built,
  no mask function runs to build it, and prefix blocks are full (the kernel skips
  the mask function there). Meant for CUDA with
  ``torch.compile`` (unfused and slow in eager mode, where it is only for tests).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Optional

import attrs
import torch
import torch.nn.functional as F

from spec.errors import ShapeError
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


def tree_mask_mod(ancestors: torch.Tensor, positions: torch.Tensor, window: Optional[int]):
    """FlexAttention's mask function for a tree verify: ``sdpa_mask``'s rule, element by element.

    ``ancestors`` ``[n, n]`` bool, ``positions`` ``[n]`` (depth 0 is the first new row, so ``positions[0]`` is
    the prefix length, read on the device: the same function object serves every prefix length).
    """
    n = ancestors.shape[0]
    prefix = positions[0]

    def tree_mask(b, h, q, kv):
        in_tree = (kv >= prefix) & (kv < prefix + n)
        local = (kv - prefix).clamp(0, n - 1)
        visible = (kv < prefix) | (in_tree & ancestors[q, local])
        if window is not None:
            # Prefix keys sit at their row index; the window among new rows is already in ``ancestors``.
            visible = visible & ((kv >= prefix) | in_window(positions[q], kv, window))
        return visible

    return tree_mask


FLEX_BLOCK = 128  # FlexAttention's default block (create_block_mask's): query and key rows per tile


@attrs.frozen
class BlockLayout:
    """Which key blocks each query block of a tree verify reads, in host ints (``block`` rows a tile).

    ``full[i]``: the key blocks query block ``i`` sees entirely, where the kernel skips the mask function;
    ``partial[i]``: those it sees in part, where the mask function decides; every other block is skipped.
    ``key_blocks``: the blocks the attended rows span. The exact lengths are not part of it (a step's BlockMask
    carries them), so consecutive steps share a layout until the prefix crosses a block.
    """

    key_blocks: int = attrs.field(validator=attrs.validators.ge(1))
    full: tuple[tuple[int, ...], ...]
    partial: tuple[tuple[int, ...], ...] = attrs.field()
    block: int = FLEX_BLOCK

    @partial.validator
    def _check(self, attribute, value) -> None:
        if len(value) != len(self.full) or not value:
            raise ShapeError(f"A block layout needs one full and one partial list per query block, got "
                             f"{len(self.full)} and {len(value)}.")
        for full, partial in zip(self.full, value):
            if set(full) & set(partial) or not set(full) | set(partial) <= set(range(self.key_blocks)):
                raise ShapeError(f"Key blocks must be distinct and below {self.key_blocks}: full {full}, "
                                 f"partial {partial}.")

    @property
    def query_blocks(self) -> int:
        return len(self.full)


def tree_block_layout(start: int, n: int, attend: int, window: Optional[int], block: int = FLEX_BLOCK) -> BlockLayout:
    """The block layout of ``n`` tree rows over a ``start``-row prefix, ``attend`` key rows (the rest hidden).

    Worked out from lengths alone, with no mask function run: a key block wholly inside the prefix is full
    (create_block_mask never finds one for a tree under ``block`` nodes: the query block's padding rows make
    every block partial, so the mask function ran over the whole prefix); the blocks holding the prefix's end
    and the tree's rows are partial. In breadth-first order a node's ancestors precede it, so query block ``i``
    reads tree rows up to its own last node only. With a sliding ``window`` a prefix block is full when even the
    deepest query of the block sees its oldest row (a node's depth is at most its index), skipped when even the
    root cannot see its newest row, and partial in between. Sound rather than tight: a block marked partial
    where create_block_mask would skip or fill it costs mask evaluations, never a wrong element.
    """
    full, partial = [], []
    for i in range(-(-n // block)):
        last = min(n, (i + 1) * block) - 1  # the block's last node: its deepest possible position is start + last
        seen_full, seen_partial = [], []
        for j in range(start // block):  # key blocks inside the prefix
            oldest, newest = j * block, (j + 1) * block - 1
            if window is None or start + last - oldest < window:
                seen_full.append(j)
            elif start - newest < window:
                seen_partial.append(j)
        seen_partial.extend(range(start // block, (start + last) // block + 1))
        full.append(tuple(seen_full))
        partial.append(tuple(seen_partial))
    return BlockLayout(key_blocks=-(-attend // block), full=tuple(full), partial=tuple(partial), block=block)


def layout_block_mask(layout: BlockLayout, device: torch.device):
    """A ``BlockMask`` of ``layout`` with no mask function yet (``FlexTreeMasks`` adds each step's)."""
    from torch.nn.attention.flex_attention import BlockMask

    def ordered(rows: tuple[tuple[int, ...], ...]) -> tuple[torch.Tensor, torch.Tensor]:
        # [1, 1, query_blocks] counts and [1, 1, query_blocks, key_blocks] indices, listed blocks first.
        counts = torch.tensor([len(r) for r in rows], dtype=torch.int32)
        indices = torch.zeros(len(rows), layout.key_blocks, dtype=torch.int32)
        for i, r in enumerate(rows):
            indices[i, : len(r)] = torch.tensor(r, dtype=torch.int32)
        return counts[None, None].to(device), indices[None, None].to(device)

    kv_num_blocks, kv_indices = ordered(layout.partial)
    full_num_blocks, full_indices = ordered(layout.full)
    # seq_lengths: the largest the layout covers; each step's BlockMask carries its own.
    return BlockMask.from_kv_blocks(kv_num_blocks, kv_indices, full_num_blocks, full_indices, BLOCK_SIZE=layout.block,
                                    seq_lengths=(layout.query_blocks * layout.block, layout.key_blocks * layout.block))


class FlexTreeMasks:
    """Builds a tree verify's FlexAttention ``BlockMask`` without ``create_block_mask``.

    ``create_block_mask`` evaluates the mask function over every (query, key) pair of the whole prefix, on every
    verify (tens of small kernels, with the GPU idle while the host issues them). Here the block tensors depend
    only on the ``BlockLayout`` (block counts, not the tree's contents nor the exact lengths), which changes when
    the prefix or the tree crosses a block: they are built once per layout and kept (least recently used dropped), and a
    step only attaches its mask function (its tree's ancestors and the prefix length on the device).
    """

    def __init__(self, capacity: int = 64) -> None:
        self.capacity = capacity
        # Per instance (one per verifier), least recently used dropped past ``capacity``.
        self._template = lru_cache(maxsize=capacity)(layout_block_mask)

    def __len__(self) -> int:
        return self._template.cache_info().currsize

    def __call__(self, ancestors: torch.Tensor, start: int, attend: int, positions: torch.Tensor,
                 window: Optional[int]):
        from torch.nn.attention.flex_attention import BlockMask

        t = self._template(tree_block_layout(start, ancestors.shape[0], attend, window), ancestors.device)
        return BlockMask((ancestors.shape[0], attend), t.kv_num_blocks, t.kv_indices, t.full_kv_num_blocks,
                         t.full_kv_indices, t.q_num_blocks, t.q_indices, t.full_q_num_blocks, t.full_q_indices,
                         t.BLOCK_SIZE, tree_mask_mod(ancestors, positions, window))


def flex_mask(ancestors: torch.Tensor, start: int, attend: int, positions: torch.Tensor, window: Optional[int]):
    """``create_block_mask`` over ``tree_mask_mod``: the reference ``FlexTreeMasks`` is tested against."""
    from torch.nn.attention.flex_attention import create_block_mask

    return create_block_mask(tree_mask_mod(ancestors, positions, window), None, None, ancestors.shape[0], attend,
                             device=ancestors.device)


def flex_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_mask, scale: float,
                   gqa: bool) -> torch.Tensor:
    from torch.nn.attention.flex_attention import flex_attention as flex

    return flex(q, k, v, block_mask=block_mask, scale=scale, enable_gqa=gqa)


def mask_builders() -> dict:
    """Each kind's mask builder, fresh (the flex one keeps its block layouts): ``(ancestors, start, attend,
    positions, window) -> mask``."""
    return {"sdpa": sdpa_mask, "flex": FlexTreeMasks()}


KERNELS = {"sdpa": sdpa_attention, "flex": flex_attention}
