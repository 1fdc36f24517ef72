"""Typical acceptance (Medusa, Cai et al. 2024, section 2.3.1). Fast, and NOT lossless.

A candidate ``x`` after a node is accepted when the target's probability of it there
is above ``min(epsilon, delta * exp(-H(p)))``: high-entropy (uncertain) positions
accept more. The longest path of accepted candidates wins, ties broken by the
path's likelihood under the target; the bonus token is sampled from ``p`` at its end.
It trades the exact output distribution for longer accepted paths; use
``RejectionSamplingAcceptor`` when the output must be distributed as the model's.
At temperature 0 it is exactly greedy.
"""

from __future__ import annotations

from typing import Optional

import attrs
import torch

from spec.randomness import as_randomness
from spec.errors import ConfigurationError
from spec.protocols import Acceptance, AcceptorTraits, CandidateKind, Draft, SamplingParams, Verification
from spec.sampling import target_probs


def _check_positive(instance, attribute, value):
    if not value >= 0:
        raise ConfigurationError(f"TypicalAcceptor.{attribute.name} must be >= 0, got {value!r}.")


def typical_thresholds(p_rows: torch.Tensor, epsilon: float, delta: float) -> torch.Tensor:
    """``[n]`` acceptance threshold at each node: ``min(epsilon, delta * exp(-H(p)))``."""
    entropy = -(p_rows * p_rows.clamp(min=1e-300).log()).sum(dim=-1)
    return torch.clamp(delta * torch.exp(-entropy), max=epsilon)


@attrs.frozen
class TypicalAcceptor:
    epsilon: float = attrs.field(default=0.09, validator=_check_positive)
    delta: float = attrs.field(default=0.3, validator=_check_positive)
    traits = AcceptorTraits(candidate_kinds=set(CandidateKind), lossless=False)  # documented lossy

    def accept(self, draft: Draft, verification: Verification, sampling: SamplingParams,
               generator: Optional[torch.Generator] = None) -> Acceptance:
        p_rows = target_probs(verification.logits.double(), sampling)
        path = self.typical_path(draft, p_rows)
        bonus = as_randomness(generator).categorical(p_rows[path[-1]])
        return Acceptance(path=path, tokens=draft.tokens[list(path[1:])].tolist(), bonus_token=bonus)

    def admitted(self, draft: Draft, p_rows: torch.Tensor) -> torch.Tensor:
        """``[n]`` bool: node i's candidate passes the typical test at its parent (root: True)."""
        tree = draft.tree
        parents = tree.parent_index.to(p_rows.device)
        thresholds = typical_thresholds(p_rows, self.epsilon, self.delta)
        prob = p_rows[parents, draft.tokens.to(p_rows.device)]
        ok = prob > thresholds[parents]
        ok[0] = True
        return ok

    def typical_path(self, draft: Draft, p_rows: torch.Tensor) -> tuple[int, ...]:
        tree = draft.tree
        ok = self.admitted(draft, p_rows)
        parents = tree.parent_index.to(p_rows.device)
        node_logp = p_rows[parents, draft.tokens.to(p_rows.device)].clamp(min=1e-300).log()
        node_logp[0] = 0.0
        paths = tree.leaf_paths.to(p_rows.device)
        valid = paths >= 0
        idx = paths.clamp(min=0)
        run = (ok[idx] & valid).long().cumprod(dim=1)  # 1 while the path is still accepted
        length = run.sum(dim=1)
        likelihood = (node_logp[idx] * run).sum(dim=1)
        # Longest first; among the longest, the most likely under the target.
        score = torch.where(length == length.max(), likelihood, torch.full_like(likelihood, float("-inf")))
        best = int(torch.argmax(score))
        return tuple(paths[best, : int(length[best])].tolist())
