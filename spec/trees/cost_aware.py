"""Size every step's tree by what it buys: expected tokens per second of the whole step.

A static tree pays the same verify cost every step, whether the drafter is sure of a long
path (code that repeats) or has nothing (a fresh identifier). On a device whose verify cost
grows with the tree (a CPU: ``c(16)`` is about twice ``c(1)``), the right size changes every
step. This builder hands the drafter a fixed template and keeps, of what comes back, the
subtree that maximises::

    (1 + sum of the kept nodes' acceptance probabilities) / (overhead + c(kept + 1))

The numerator is the expected number of tokens the step yields (each node adds the
probability that its whole path is accepted; the bonus token is the 1); the denominator is
the step's seconds: the verify pass over the kept tokens plus everything else a step costs
the drafter at hand (drafting the template, accepting, committing), measured. A child never
scores above its parent, so the best subtree of ``n`` nodes is the ``n`` best nodes and the
search is a scan over prefix lengths.

The acceptance probability of a node is read from ``Draft.log_confidence``; a drafter whose
confidence is a measured acceptance rate (``MergedDrafter``, also around a single source)
is calibrated, a head's softmax probability is only an estimate. Pruning is by value, so a
sampled draft is always handed on as deterministic candidates, even when every node is kept:
the decision to keep them all depended on the draws' values too (the property test that
enumerates every draw found the bias when a whole draft kept its sampled kind).
"""

from __future__ import annotations

from typing import Optional

import attrs
import numpy as np
import torch

from spec.protocols import CandidateKind, CandidateTree, Draft, TreeBuilderTraits
from spec.trees.dynamic import subtree_scores
from spec.trees.hardware import check_cost_curve, check_seconds


def _curve(instance, attribute, value) -> None:
    check_cost_curve(value, f"CostAwareTreeBuilder.{attribute.name}", zero_allowed=False)


def _seconds(instance, attribute, value) -> None:
    check_seconds(value, f"CostAwareTreeBuilder.{attribute.name}")


def best_size(probabilities: np.ndarray, step_seconds: np.ndarray) -> int:
    """How many of the candidates to keep: ``probabilities`` ``[m]`` in the order they would be kept
    (non-increasing down any path), ``step_seconds`` ``[m + 1]`` the cost of a step keeping ``0..m``.
    Ties go to the smaller tree."""
    expected = 1.0 + np.concatenate([[0.0], np.cumsum(probabilities)])
    return int(np.argmax(expected / step_seconds))


@attrs.define
class CostAwareTreeBuilder:
    """``template``: the tree the drafter fills (its largest useful shape). ``verify_costs``: measured
    seconds per verify pass by tree tokens, root included (``spec.bench.measure_verify_costs``).
    ``overhead_s``: measured seconds per step outside the verify pass (``spec.bench.measure_step_overhead``)."""

    template: CandidateTree
    verify_costs: dict[int, float] = attrs.field(validator=_curve)
    overhead_s: float = attrs.field(default=0.0, validator=_seconds)
    _seconds_by_size: Optional[np.ndarray] = attrs.field(default=None, init=False, repr=False)
    traits = TreeBuilderTraits(prunes=True, needs_log_confidence=True, selects_by_value=True)

    @property
    def max_depth(self) -> int:
        return self.template.max_depth

    def tree(self) -> CandidateTree:
        return self.template

    def step_seconds(self, sizes: int) -> np.ndarray:
        """``[sizes]``: predicted seconds of a step keeping ``0 .. sizes - 1`` candidates."""
        if self._seconds_by_size is None or self._seconds_by_size.shape[0] < sizes:
            points = sorted(self.verify_costs.items())
            tokens = np.arange(1, max(sizes, self.template.num_nodes) + 1, dtype=np.float64)
            verify = np.interp(tokens, [p[0] for p in points], [p[1] for p in points])
            # A bigger tree never verifies faster; a measured bump above a later point is noise.
            verify = np.minimum.accumulate(verify[::-1])[::-1]
            self._seconds_by_size = self.overhead_s + verify
        return self._seconds_by_size[:sizes]

    def select(self, draft: Draft) -> Draft:
        keep = self.kept_nodes(draft)
        if keep is None and draft.kind is CandidateKind.DETERMINISTIC:
            return draft
        # Even a draft kept whole was kept because of its values (a confident draw keeps more nodes), so
        # its sampled candidates are no longer plain draws from q: always hand on deterministic candidates.
        return draft.select_nodes(keep if keep is not None else list(range(draft.tree.num_nodes)),
                                  kind=CandidateKind.DETERMINISTIC)

    def kept_nodes(self, draft: Draft) -> "list[int] | None":
        """The nodes ``select`` keeps (root first, a subtree), or None when it keeps them all."""
        score = subtree_scores(draft, "CostAwareTreeBuilder")
        order = torch.sort(score, descending=True, stable=True).indices
        probabilities = score[order[1:]].clamp(max=0.0).exp().numpy()
        kept = best_size(probabilities, self.step_seconds(draft.tree.num_nodes))
        if kept == draft.tree.num_nodes - 1:
            return None
        return order[: kept + 1].sort().values.tolist()
