"""Test drafters: stages that make long accepted paths happen on random models (``OracleDrafter`` lives in
:mod:`spec.drafters.oracle`, the demo uses it too) or that draft from a fixed table."""

from __future__ import annotations

import torch

from spec.drafters.oracle import OracleDrafter
from spec.drafters.sampled import CANDIDATE_MODES, candidate_sampling, check_candidate_mode
from spec.drafters.tree_filling import fill_depth_by_depth
from spec.protocols import CandidateKind, CandidateTree, Draft, DraftContext, DrafterTraits, SamplingParams

__all__ = ["OracleDrafter", "TableDrafter"]


class TableDrafter:
    """A drafter whose head output after any path is given by a function: ``logits_fn(path)`` ``[V]``.

    ``path`` is the tuple of tokens after the root down to the node being expanded. It fills
    trees with the head drafters' own code (:func:`spec.drafters.tree_filling.fill_depth_by_depth`):
    top-k candidates, or, with ``candidates`` ``"sample_with_replacement"`` /
    ``"sample_without_replacement"``, children drawn from ``softmax(logits / temperature)``.
    Exact losslessness tests use it with tiny vocabularies and hypothesis-generated tables.
    """

    def __init__(self, logits_fn, max_depth: int, candidates: str = "top_k") -> None:
        self.logits_fn = logits_fn
        self._max_depth = max_depth
        self.candidates = check_candidate_mode(candidates, "TableDrafter")

    @property
    def max_depth(self) -> int:
        return self._max_depth

    @property
    def traits(self) -> DrafterTraits:
        return DrafterTraits(candidate_kinds={CandidateKind.DETERMINISTIC, CANDIDATE_MODES[self.candidates]},
                             log_confidence=True)

    def reset(self) -> None:
        pass

    def commit(self, tokens: torch.Tensor, hidden_states: torch.Tensor) -> None:
        pass

    def propose(self, tree: CandidateTree, context: DraftContext, sampling: SamplingParams, generator=None) -> Draft:
        def next_logits(step, tokens: torch.Tensor) -> torch.Tensor:
            rows = tokens[step.paths].tolist()
            return torch.stack([self.logits_fn(tuple(row[1:])).double() for row in rows])

        return fill_depth_by_depth(tree, context.root_token, next_logits, torch.device("cpu"),
                                   candidate_sampling(self.candidates, sampling, generator))
