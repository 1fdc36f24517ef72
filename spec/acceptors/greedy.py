"""Greedy acceptance: keep the longest path on which every candidate is the target's argmax."""

from __future__ import annotations

from typing import Optional

import torch

from spec.errors import SamplingParamsError
from spec.protocols import Acceptance, AcceptorTraits, CandidateKind, Draft, SamplingParams, Verification
from spec.sampling import check_finite


def greedy_path(draft: Draft, target_tokens: torch.Tensor) -> tuple[int, ...]:
    """The longest root-to-node path whose candidates all equal the target's choice at their parent.

    ``target_tokens``: ``[n]`` the token the target picks after each node. Ties between
    equally long paths go to the first leaf in breadth-first order (lower ranks).
    """
    tree = draft.tree
    if tree.num_nodes == 1:
        return (0,)
    # matches[i]: node i's candidate is what the target chose after its parent (root counts as matched).
    matches = draft.tokens.to(target_tokens.device) == target_tokens[tree.parent_index.to(target_tokens.device)]
    matches[0] = True
    paths = tree.leaf_paths.to(target_tokens.device)  # [leaves, depth + 1], -1 padded
    on_path = torch.where(paths >= 0, matches[paths.clamp(min=0)], torch.zeros_like(paths, dtype=torch.bool))
    accepted_len = on_path.long().cumprod(dim=1).sum(dim=1)  # nodes accepted along each leaf path, root included
    best = int(torch.argmax(accepted_len))  # first maximum
    return tuple(paths[best, : int(accepted_len[best])].tolist())


class GreedyAcceptor:
    """Accepts exactly what greedy decoding of the target would produce."""

    traits = AcceptorTraits(candidate_kinds=set(CandidateKind), lossless=True)  # any candidates: it compares argmaxes

    def accept(
        self,
        draft: Draft,
        verification: Verification,
        sampling: SamplingParams,
        generator: Optional[torch.Generator] = None,
    ) -> Acceptance:
        if not sampling.is_greedy:
            raise SamplingParamsError(
                f"GreedyAcceptor only decodes greedily (temperature=0), got temperature={sampling.temperature}; "
                "use RejectionSamplingAcceptor to sample."
            )
        check_finite(verification.logits)
        target_tokens = verification.logits.argmax(dim=-1)  # [n]
        path = greedy_path(draft, target_tokens)
        tokens = draft.tokens[list(path[1:])].tolist()
        return Acceptance(path=path, tokens=tokens, bonus_token=int(target_tokens[path[-1]]))
