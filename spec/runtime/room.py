"""The one room check: may a pass use these positions, and does the cache have the rows?"""

from __future__ import annotations

from typing import Optional

import torch

from spec.errors import InputError, ShapeError


def check_room(last_position: int, context: int, rows_needed: int = 0, rows: Optional[int] = None,
               what: str = "verifier") -> None:
    """Refuse a pass reaching position ``last_position`` in a ``context`` of positions, or needing more
    than the cache's ``rows`` (None: a cache that grows)."""
    if last_position >= context:
        raise InputError(
            f"Position {last_position} is past the {what}'s context of {context} tokens; shorten the prompt or "
            "max_new_tokens (the pipelines check this before generating), or use a shallower tree near the end."
        )
    if rows is not None and rows_needed > rows:
        raise InputError(
            f"This step needs {rows_needed} cache rows but the {what}'s static cache has {rows}; build the {what} "
            "with a larger spare_rows or use a smaller tree."
        )


def check_prefill_tokens(tokens: torch.Tensor, scored: bool) -> None:
    """Refuse what a verifier's ``prefill`` (``scored`` False) or ``prefill_root`` (True: scores the last token,
    so there must be one) cannot cache: anything but a 1-D tensor of token ids."""
    if tokens.dim() != 1 or (scored and tokens.shape[0] == 0):
        name, what = ("prefill_root", "a non-empty 1-D") if scored else ("prefill", "a 1-D")
        raise ShapeError(f"{name} takes {what} tensor of token ids, got shape {tuple(tokens.shape)}.")
