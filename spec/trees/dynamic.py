"""Dynamic trees (EAGLE-2 style): reshape the tree every step from the drafter's own confidence.

``tree()`` hands the drafter a fixed template (every rank < ``width`` at every depth
<= ``depth``); the drafter fills it and reports each node's cumulative draft
log-probability (``Draft.log_confidence``). ``select`` keeps the ``total_tokens``
candidates with the highest confidence. A child's cumulative log-probability cannot
exceed its parent's (rounding aside: scores are clamped to the parent's), and ties
go to shallower nodes, so the kept set is always a subtree. Per step this is a few
tensor ops and a top-k; no graph code.

Sampled drafts: a pruned draft is handed on as deterministic candidates (its ``q``
dropped), because survivors chosen by their own confidence are not draws from ``q``
any more; see docs/losslessness.md, "Pruned sampled drafts".
"""

from __future__ import annotations

import attrs
import torch

from spec.errors import ConfigurationError, ShapeError
from spec.protocols import CandidateKind, CandidateTree, Draft, TreeBuilderTraits
from spec.trees.choices import full_tree


def _positive(instance, attribute, value):
    if value < 1:
        raise ConfigurationError(f"DynamicTreeBuilder.{attribute.name} must be >= 1, got {value}.")


@attrs.define
class DynamicTreeBuilder:
    depth: int = attrs.field(validator=_positive)
    width: int = attrs.field(validator=_positive)
    total_tokens: int = attrs.field(validator=_positive)  # candidates kept per step (root not counted)
    _template: CandidateTree = attrs.field(init=False, repr=False)
    traits = TreeBuilderTraits(prunes=True, needs_log_confidence=True, selects_by_value=True)

    def __attrs_post_init__(self) -> None:
        self._template = full_tree(self.depth, self.width)

    @property
    def max_depth(self) -> int:
        return self.depth

    def tree(self) -> CandidateTree:
        return self._template

    def select(self, draft: Draft) -> Draft:
        keep = self.kept_nodes(draft)
        if keep is None:
            return draft
        # Survivors were kept for their own values (their confidence), so sampled siblings are no longer
        # independent draws from q and the sampled rule would be biased. The deterministic rule is lossless
        # for any candidates chosen without the acceptor's coins: hand them on as deterministic.
        return draft.select_nodes(keep, kind=CandidateKind.DETERMINISTIC)

    def kept_nodes(self, draft: Draft) -> "list[int] | None":
        """The nodes ``select`` keeps (root first, a subtree), or None when the draft is small enough as it is."""
        score = subtree_scores(draft, "DynamicTreeBuilder")
        if draft.tree.num_nodes - 1 <= self.total_tokens:
            return None
        return torch.topk(score, self.total_tokens + 1).indices.sort().values.tolist()


def subtree_scores(draft: Draft, who: str) -> torch.Tensor:
    """``[n]`` float64 scores from ``draft.log_confidence`` under which every top-k is a subtree.

    A child is clamped to its parent's score (rounding aside, a cumulative log-probability cannot
    exceed its parent's), ties go to shallower nodes, and the root scores ``inf``.
    """
    if draft.log_confidence is None:
        raise ShapeError(
            f"{who} needs Draft.log_confidence (per-node cumulative draft log-probability); "
            "this drafter does not provide it — use a static tree builder with it."
        )
    tree = draft.tree
    score = draft.log_confidence.double().cpu()
    parents = tree.parent_index
    for _ in range(tree.max_depth):  # clamp to the parent's score, one level per pass
        score = torch.minimum(score, score[parents])
    score = score - tree.depths.double() * 1e-9  # ties: shallower first, so parents precede children
    score[0] = float("inf")  # the root always stays
    return score
