"""Equality checks with messages that point at the first difference."""

from __future__ import annotations

import torch


def assert_same_tokens(actual: torch.Tensor, expected: torch.Tensor, what: str = "sequences") -> None:
    """Raise AssertionError naming the first position where two token sequences differ."""
    a, e = actual.flatten().tolist(), expected.flatten().tolist()
    if a == e:
        return
    first = next((i for i, (x, y) in enumerate(zip(a, e)) if x != y), min(len(a), len(e)))
    raise AssertionError(
        f"{what} differ at position {first} (lengths {len(a)} vs {len(e)}): "
        f"got {a[first:first + 8]}..., expected {e[first:first + 8]}..."
    )
