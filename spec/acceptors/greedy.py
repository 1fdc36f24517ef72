"""Greedy acceptance: keep the longest path on which every candidate is the target's argmax.

The whole decision runs on the logits' device, and its result (path, tokens, bonus token and whether
the logits were finite) comes back to the host in one ``tolist``: on CUDA each read of a device tensor
blocks the host, and reading per node (an ``int`` per path entry, two checks for non-finite logits)
cost seven synchronisations a step. The tree's index tensors are copied to the device once per shape.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Optional

import torch

from spec.errors import SamplingParamsError
from spec.protocols import Acceptance, AcceptorTraits, CandidateKind, CandidateTree, Draft, SamplingParams, Verification
from spec.sampling import check_finite, nonfinite_rows


@lru_cache(maxsize=64)  # thread-safe, unlike a dict shared by the decoders of several threads
def tree_indices(tree: CandidateTree, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The tree's ``parent_index`` ``[n]`` and ``leaf_paths`` ``[leaves, depth + 1]`` on ``device``."""
    return tree.parent_index.to(device), tree.leaf_paths.to(device)


def _best_path(draft: Draft, target_tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """On the device: the best leaf path's nodes ``[depth + 1]`` (-1 padded) and its accepted length (a 0-d tensor)."""
    parent_index, paths = tree_indices(draft.tree, target_tokens.device)
    # matches[i]: node i's candidate is what the target chose after its parent (root counts as matched).
    matches = draft.tokens.to(target_tokens.device) == target_tokens[parent_index]
    matches[0] = True
    on_path = torch.where(paths >= 0, matches[paths.clamp(min=0)], torch.zeros_like(paths, dtype=torch.bool))
    accepted_len = on_path.long().cumprod(dim=1).sum(dim=1)  # nodes accepted along each leaf path, root included
    best = torch.argmax(accepted_len)  # first maximum
    return paths[best], accepted_len[best]


def greedy_path(draft: Draft, target_tokens: torch.Tensor) -> tuple[int, ...]:
    """The longest root-to-node path whose candidates all equal the target's choice at their parent.

    ``target_tokens``: ``[n]`` the token the target picks after each node. Ties between
    equally long paths go to the first leaf in breadth-first order (lower ranks).
    """
    if draft.tree.num_nodes == 1:
        return (0,)
    row, length = _best_path(draft, target_tokens)
    values = torch.cat([length[None], row]).tolist()  # one read
    return tuple(values[1: 1 + values[0]])


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
        logits = verification.logits
        # One pass gives the target's choices and check_finite's conditions (evaluated on the device, read with
        # the result below): max returns the first maximal index, as argmax does, and propagates NaN.
        row_max, target_tokens = logits.max(dim=-1)  # [n], [n]
        bad = nonfinite_rows(row_max)
        if draft.tree.num_nodes == 1:
            row, length = torch.zeros(1, dtype=torch.long, device=logits.device), torch.ones((), dtype=torch.long,
                                                                                              device=logits.device)
        else:
            row, length = _best_path(draft, target_tokens)
        nodes = row.clamp(min=0)
        tokens = draft.tokens.to(logits.device)
        # [bad, length, path (padded), candidate at each path node, target's choice after each path node]
        values = torch.cat([bad.long()[None], length[None], row, tokens[nodes], target_tokens[nodes]]).tolist()
        if values[0]:
            check_finite(logits)  # raises the typed error naming what is wrong
        width = row.shape[0]
        length = values[1]
        path = tuple(values[2: 2 + length])
        candidates = values[2 + width: 2 + width + length]
        bonus = values[2 + 2 * width + length - 1]
        return Acceptance(path=path, tokens=candidates[1:], bonus_token=bonus)
