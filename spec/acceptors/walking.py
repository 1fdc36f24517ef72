"""What the sampling acceptors share: the target's processed distributions in float64, then a walk."""

from __future__ import annotations

from typing import Optional

import torch

from spec.errors import ShapeError
from spec.protocols import Acceptance, Draft, SamplingParams, Verification
from spec.randomness import Randomness, as_randomness
from spec.sampling import target_probs


class WalkingAcceptor:
    """``accept`` = ``check(draft)``, then ``walk(draft, p_rows, randomness)`` on the target's distributions.

    Subclasses implement ``walk`` (drawing only through ``randomness``, so exact tests can enumerate it)
    and may override ``check`` to refuse drafts the rule is not defined for, before any work.
    """

    def accept(self, draft: Draft, verification: Verification, sampling: SamplingParams,
               generator: Optional[torch.Generator] = None) -> Acceptance:
        self.check(draft)
        # float64 so residual arithmetic does not drift for large vocabularies.
        p_rows = target_probs(verification.logits.double(), sampling)
        return self.walk(draft, p_rows, as_randomness(generator))

    def check(self, draft: Draft) -> None:
        """Refuse a draft this rule is not defined for (default: every draft is fine)."""

    def walk(self, draft: Draft, p_rows: torch.Tensor, randomness: Randomness) -> Acceptance:
        raise NotImplementedError


def set_entry(weights: torch.Tensor, x: int, value: float = 0.0) -> torch.Tensor:
    """A copy of ``weights`` ``[V]`` with entry ``x`` set to ``value``. Equal to ``index_fill`` with a one-element
    index tensor, which would first copy that index from the host to the device (a synchronisation on CUDA)."""
    filled = weights.clone()
    filled[x] = value
    return filled


def capped_ratio(scale: float, target: torch.Tensor, q: torch.Tensor, x: int) -> float:
    """``min(1, scale * target(x) / q(x))``: the acceptance weight of a candidate ``x`` drawn from ``q``."""
    qx, tx = torch.stack((q[x], target[x])).tolist()  # one read (each read of a CUDA tensor waits for the GPU)
    if qx <= 0:
        raise ShapeError(
            f"Candidate token {x} has draft probability 0 under the q it was supposedly drawn from; "
            "the drafter's draft_probs do not match its tokens."
        )
    return min(1.0, scale * tx / qx)
