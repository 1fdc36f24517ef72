"""Who may attend to whom: the one sliding-window rule and the one additive mask.

Every runner builds a boolean ``visible`` ``[queries, keys]`` (True = may attend) from
positions, ancestry and the window here; only a model's own modules, which take an
additive float mask, get :func:`additive_mask` of it.
"""

from __future__ import annotations

from typing import Optional

import torch

from spec.errors import UnsupportedError


def layer_window(config, index: int) -> Optional[int]:
    """The window decoder layer ``index`` attends within, None for full attention.

    A config's ``sliding_window`` applies to every layer unless ``layer_types`` says which
    layers slide (Qwen2's ``max_window_layers``, Gemma 2's alternation).
    """
    window = getattr(config, "sliding_window", None) or None
    kinds = getattr(config, "layer_types", None)
    return window if kinds is None or kinds[index] == "sliding_attention" else None


def model_windows(config) -> set:
    """The distinct windows the model's layers use (None = full attention)."""
    kinds = getattr(config, "layer_types", None)
    return {layer_window(config, i) for i in range(len(kinds) if kinds is not None else 1)}


def shared_window(config) -> Optional[int]:
    """The window every layer shares, None for full attention; raises when layers differ."""
    windows = model_windows(config)
    if len(windows) > 1:
        raise UnsupportedError("the layers mix sliding-window and full attention")
    return windows.pop()


def in_window(query_positions: torch.Tensor, key_positions: torch.Tensor, window: Optional[int]):
    """Whether a key is no further back than ``window`` from a query; positions broadcast elementwise."""
    if window is None:
        return torch.ones_like(query_positions - key_positions, dtype=torch.bool)
    return (query_positions - key_positions) < window


def causal(query_positions: torch.Tensor, key_positions: torch.Tensor, window: Optional[int]) -> torch.Tensor:
    """``[q, k]`` bool: a query sees the keys at or before its position, within the window."""
    offset = query_positions[:, None] - key_positions[None, :]
    return (offset >= 0) & in_window(query_positions[:, None], key_positions[None, :], window)


def additive_mask(visible: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``[q, k]`` bool -> ``[1, 1, q, k]`` additive: 0 where visible, the dtype's lowest value elsewhere."""
    mask = torch.zeros(visible.shape, dtype=dtype, device=visible.device)
    return mask.masked_fill_(~visible, torch.finfo(dtype).min)[None, None]
