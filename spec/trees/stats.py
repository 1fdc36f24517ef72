"""Acceptance statistics: how often a drafter's candidate of each rank is the target's choice.

``probs[d][r]`` is the probability that the rank-``r`` candidate at depth ``d + 1`` is
what the target picks, given that its parent was accepted. Ranks are mutually
exclusive outcomes (the target picks one token), so each row sums to at most 1.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Optional

import attrs

from spec.errors import ConfigurationError
from spec.io import atomic_write_bytes


def _as_table(value) -> tuple[tuple[float, ...], ...]:
    return tuple(tuple(float(p) for p in row) for row in value)


def _check_table(instance, attribute, table) -> None:
    if not table or not table[0]:
        raise ConfigurationError("An acceptance table needs at least one depth and one rank.")
    width = len(table[0])
    for d, row in enumerate(table):
        if len(row) != width:
            raise ConfigurationError(f"Acceptance table row {d} has {len(row)} ranks, row 0 has {width}; rows must match.")
        for r, p in enumerate(row):
            if math.isnan(p) or not 0.0 <= p <= 1.0:
                raise ConfigurationError(f"Acceptance probability at depth {d + 1}, rank {r} is {p}; it must be in [0, 1].")
        if sum(row) > 1.0 + 1e-6:
            raise ConfigurationError(
                f"Acceptance probabilities at depth {d + 1} sum to {sum(row):.4f} > 1; ranks are exclusive outcomes."
            )


@attrs.frozen
class AcceptanceStats:
    probs: tuple[tuple[float, ...], ...] = attrs.field(converter=_as_table, validator=_check_table)
    drafter: str = ""
    model: Optional[dict[str, Any]] = None  # ModelFingerprint.to_dict() of the target
    samples: int = 0  # parent-accepted opportunities counted at depth 1

    @property
    def depth(self) -> int:
        return len(self.probs)

    @property
    def width(self) -> int:
        return len(self.probs[0])

    def prob(self, depth: int, rank: int) -> float:
        """P(rank ``rank`` at ``depth`` (1-based) is accepted | parent accepted); 0 beyond the table."""
        if depth < 1 or depth > self.depth or rank >= self.width:
            return 0.0
        return self.probs[depth - 1][rank]

    def to_dict(self) -> dict[str, Any]:
        return {"format": "spec-acceptance-stats", "version": 1, "probs": [list(r) for r in self.probs],
                "drafter": self.drafter, "model": self.model, "samples": self.samples}

    def save(self, path: str | os.PathLike) -> None:
        atomic_write_bytes(path, json.dumps(self.to_dict(), indent=2).encode())

    @classmethod
    def load(cls, path: str | os.PathLike) -> "AcceptanceStats":
        """Every field checked; bad content raises a typed error naming the problem (spec.trees.io.load_stats)."""
        from spec.trees.io import load_stats

        return load_stats(path)

