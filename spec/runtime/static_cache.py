"""A preallocated KV cache that never reallocates.

Per layer, keys and values ``[kv_heads, rows, head_dim]`` (batch of one), allocated
once. A verify pass writes the tree's entries in rows ``cached .. cached + n - 1``;
``compact`` then moves the accepted path's rows into place, so rows
``0 .. cached - 1`` always hold exactly the committed sequence and nothing is ever
concatenated or copied out.

Separate tensors per layer rather than one ``[layers, 2, ...]`` tensor: a compiled
step that writes through views of one big input makes inductor copy the whole
cache on every call (measured: 20 ms against 0.1 ms for a 6-layer cache).
"""

from __future__ import annotations

from typing import Optional

import torch

from spec.errors import ConfigurationError


class StaticKVCache:
    """``keys[layer]``, ``values[layer]``: ``[kv_heads, rows, head_dim]``; rows past the committed length are scratch."""

    def __init__(self, num_layers: int, kv_heads: int, head_dim: int, rows: int, dtype: torch.dtype,
                 device: torch.device) -> None:
        if min(num_layers, kv_heads, head_dim, rows) < 1:
            raise ConfigurationError(
                f"A static KV cache needs positive sizes, got layers={num_layers}, kv_heads={kv_heads}, "
                f"head_dim={head_dim}, rows={rows}."
            )
        shape = (kv_heads, rows, head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]

    @property
    def rows(self) -> int:
        return self.keys[0].shape[1]

    @property
    def tensors(self) -> list[torch.Tensor]:
        return self.keys + self.values

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors)

    def compact(self, start: int, rows: torch.Tensor, layers: Optional[range] = None) -> None:
        """Move rows ``rows`` (``[keep]`` int64, absolute) to ``start .. start + keep - 1`` in ``layers`` (all).

        The gather reads before the copy writes, so overlapping source and destination are safe.
        """
        keep = rows.shape[0]
        for index in range(len(self.keys)) if layers is None else layers:
            for tensor in (self.keys[index], self.values[index]):
                tensor[:, start : start + keep] = tensor.index_select(1, rows)
