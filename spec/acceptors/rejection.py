"""Lossless tree rejection sampling.

Walk down from the root. At each node the target's distribution there, ``p``, is
what the next token must be distributed as. Try the node's children in rank order:

* deterministic candidates (top-k heads, n-gram lookup): accept child ``x`` with
  probability ``r(x)``; on rejection set ``r(x) = 0`` and renormalise;
* candidates sampled from the draft distribution ``q``: accept ``x`` with probability
  ``min(1, r(x) / q(x))``; on rejection ``r = normalise(max(r - q, 0))``; siblings
  drawn without replacement also remove ``x`` from ``q`` and renormalise it
  (recursive rejection sampling, Jeon et al. 2024; with replacement is SpecInfer's
  multi-round rule, Miao et al. 2024).

Here ``r`` starts as ``p`` and is the residual after the rejections so far. On
acceptance the walk moves to the child; when every child is rejected, or at a leaf,
the bonus token is sampled from ``r``. Each emitted token is then distributed
exactly as the target's sampler would have drawn it (docs/losslessness.md has the
argument; tests/test_lossless_exact.py checks it exactly).

The steps are small overridable methods so that ``spec.testing.mutants`` can build
the classic bugs and the tests can show they are caught.
"""

from __future__ import annotations

from typing import Optional

import torch

from spec.acceptors.walking import WalkingAcceptor, capped_ratio, set_entry
from spec.protocols import Acceptance, AcceptorTraits, CandidateKind, Draft
from spec.randomness import Randomness


def normalise(weights: torch.Tensor, fallback: torch.Tensor) -> torch.Tensor:
    """``weights / sum``; ``fallback`` when the sum is 0 (only floating-point rounding gets there).

    Chosen on the device: testing the sum on the host would wait for the GPU at every rejection.
    """
    total = weights.sum()
    return torch.where(total > 0, weights / total, fallback)


class RejectionSamplingAcceptor(WalkingAcceptor):
    """Lossless for every candidate kind; equals greedy decoding at temperature 0."""

    traits = AcceptorTraits(candidate_kinds=set(CandidateKind), lossless=True)

    # ---- the algorithm -----------------------------------------------------------------
    def walk(self, draft: Draft, p_rows: torch.Tensor, randomness: Randomness) -> Acceptance:
        """Rejection-sample a path through ``draft`` given the target's distributions ``p_rows`` ``[n, V]``."""
        tree, kind = draft.tree, draft.kind
        q_rows = draft.draft_probs.to(p_rows) if draft.draft_probs is not None else None
        tokens = draft.tokens.tolist()
        node, path, accepted = 0, [0], []
        while True:
            children = tree.children[node]
            residual = p_rows[node]
            q = None if kind is CandidateKind.DETERMINISTIC else q_rows[children[0]] if children else None
            chosen = None
            for child in children:
                x = tokens[child]
                if randomness.bernoulli(self.acceptance_probability(residual, q, x, kind)):
                    chosen = child
                    break
                residual, q = self.after_rejection(residual, q, x, kind)
            if chosen is None:
                bonus = randomness.categorical(self.bonus_distribution(residual, p_rows[node]))
                return Acceptance(path=path, tokens=accepted, bonus_token=bonus)
            path.append(chosen)
            accepted.append(tokens[chosen])
            node = chosen

    def acceptance_probability(self, residual: torch.Tensor, q: Optional[torch.Tensor], x: int,
                               kind: CandidateKind) -> float:
        if kind is CandidateKind.DETERMINISTIC:
            return float(residual[x])
        return capped_ratio(1.0, residual, q, x)

    def after_rejection(self, residual: torch.Tensor, q: Optional[torch.Tensor], x: int,
                        kind: CandidateKind) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """The residual (and, without replacement, the draft distribution) after rejecting ``x``."""
        if kind is CandidateKind.DETERMINISTIC:
            return normalise(set_entry(residual, x), residual), q
        new_residual = normalise((residual - q).clamp(min=0.0), residual)
        if kind is CandidateKind.SAMPLED_WITHOUT_REPLACEMENT:
            q = normalise(set_entry(q, x), q)
        return new_residual, q

    def bonus_distribution(self, residual: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        """What the bonus token is drawn from: the residual left after the rejections."""
        return residual
