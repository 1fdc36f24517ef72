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

from spec.acceptors.greedy import tree_indices
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
        row, length = self._best_path(draft, p_rows)
        tokens = draft.tokens.to(p_rows.device)[row.clamp(min=0)]
        # [length, path (padded), candidate at each path node]: one read of the decision.
        values = torch.cat([length[None], row, tokens]).tolist()
        width, length = row.shape[0], values[0]
        path = tuple(values[1 : 1 + length])
        bonus = as_randomness(generator).categorical(p_rows[path[-1]])
        return Acceptance(path=path, tokens=values[2 + width : 1 + width + length], bonus_token=bonus)

    def admitted(self, draft: Draft, p_rows: torch.Tensor) -> torch.Tensor:
        """``[n]`` bool: node i's candidate passes the typical test at its parent (root: True)."""
        parents, _ = tree_indices(draft.tree, p_rows.device)
        thresholds = typical_thresholds(p_rows, self.epsilon, self.delta)
        prob = p_rows[parents, draft.tokens.to(p_rows.device)]
        ok = prob > thresholds[parents]
        ok[0] = True
        return ok

    def typical_path(self, draft: Draft, p_rows: torch.Tensor) -> tuple[int, ...]:
        row, length = self._best_path(draft, p_rows)
        values = torch.cat([length[None], row]).tolist()
        return tuple(values[1 : 1 + values[0]])

    def _best_path(self, draft: Draft, p_rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """On the device: the chosen leaf path's nodes ``[depth + 1]`` (-1 padded) and how many of them are
        accepted (a 0-d tensor), with the tree's index tensors cached per shape (no upload per step)."""
        ok = self.admitted(draft, p_rows)
        parents, paths = tree_indices(draft.tree, p_rows.device)
        node_logp = p_rows[parents, draft.tokens.to(p_rows.device)].clamp(min=1e-300).log()
        node_logp[0] = 0.0
        valid = paths >= 0
        idx = paths.clamp(min=0)
        run = (ok[idx] & valid).long().cumprod(dim=1)  # 1 while the path is still accepted
        length = run.sum(dim=1)
        likelihood = (node_logp[idx] * run).sum(dim=1)
        # Longest first; among the longest, the most likely under the target.
        score = torch.where(length == length.max(), likelihood, torch.full_like(likelihood, float("-inf")))
        best = torch.argmax(score)
        return paths[best], length[best]
