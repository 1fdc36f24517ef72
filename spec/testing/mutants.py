"""Honest stages with one classic bug each, to prove the tests catch the bugs they are meant to catch.

Each mutant carries ``breaks_kinds``: the candidate kinds on which its bug changes the
output distribution (on the others it behaves exactly like the honest stage), so a test
knows where it must be caught without matching mutants by name.
"""

from __future__ import annotations

import torch

from spec.acceptors.block import BlockVerificationAcceptor
from spec.acceptors.rejection import RejectionSamplingAcceptor, normalise
from spec.acceptors.traversal import TraversalVerificationAcceptor
from spec.protocols import CandidateKind, Draft
from spec.protocols.compat import ALL_KINDS, SAMPLED_KINDS
from spec.trees.dynamic import DynamicTreeBuilder


# ---- the classic rejection-sampling bugs (each must be caught by the losslessness suite) -------------


class ResidualNotRenormalised(RejectionSamplingAcceptor):
    """Bug: after a rejection the residual is not renormalised (so later siblings are under-accepted)."""

    breaks_kinds = ALL_KINDS

    def after_rejection(self, residual, q, x, kind):
        if kind is CandidateKind.DETERMINISTIC:
            return residual.index_fill(0, torch.tensor([x]), 0.0), q
        return (residual - q).clamp(min=0.0), q


class RejectedSiblingNotRemoved(RejectionSamplingAcceptor):
    """Bug: a rejected candidate stays possible (deterministic: r(x) kept; without replacement: x kept in q)."""

    # With replacement nothing is removed from q, by design: the rule is the honest one there.
    breaks_kinds = frozenset({CandidateKind.DETERMINISTIC, CandidateKind.SAMPLED_WITHOUT_REPLACEMENT})

    def after_rejection(self, residual, q, x, kind):
        if kind is CandidateKind.DETERMINISTIC:
            return residual, q
        return normalise((residual - q).clamp(min=0.0), residual), q


class BonusFromTarget(RejectionSamplingAcceptor):
    """Bug: after rejections the bonus is drawn from p instead of the residual."""

    breaks_kinds = ALL_KINDS

    def bonus_distribution(self, residual, p):
        return p


class DraftProbsIgnored(RejectionSamplingAcceptor):
    """Bug: the drafter's q is not used; the ratio test and residual assume a uniform q.

    (Treating sampled candidates with the *deterministic* rule is not this bug: that
    rule is lossless for any candidates independent of the acceptor's coins, only
    less efficient. tests/test_lossless_exact.py proves that too.)
    """

    breaks_kinds = SAMPLED_KINDS  # deterministic candidates carry no q to ignore

    def _uniform(self, q):
        return None if q is None else torch.full_like(q, 1.0 / q.numel())

    def acceptance_probability(self, residual, q, x, kind):
        return super().acceptance_probability(residual, self._uniform(q), x, kind)

    def after_rejection(self, residual, q, x, kind):
        return super().after_rejection(residual, self._uniform(q), x, kind)


class DraftProbsIgnoredInResidual(RejectionSamplingAcceptor):
    """Bug: the ratio test uses q, but the residual after a rejection forgets it (zeroes x instead)."""

    breaks_kinds = SAMPLED_KINDS

    def after_rejection(self, residual, q, x, kind):
        return super().after_rejection(residual, q, x, CandidateKind.DETERMINISTIC)[0], q


BROKEN_REJECTION_ACCEPTORS = (
    ResidualNotRenormalised,
    RejectedSiblingNotRemoved,
    BonusFromTarget,
    DraftProbsIgnored,
    DraftProbsIgnoredInResidual,
)


# ---- tree builders ----------------------------------------------------------------------------------
class SampledKindKeptAfterPruning(DynamicTreeBuilder):
    """Bug (issue 15): a value-based selection keeps the survivors' sampled kind and q, so the acceptor
    treats siblings kept for their own confidence as independent draws from q."""

    breaks_kinds = SAMPLED_KINDS

    def select(self, draft: Draft) -> Draft:
        keep = self.kept_nodes(draft)
        if keep is None:
            return draft
        return draft.select_nodes(keep)  # the bug: no kind=DETERMINISTIC, so q and the sampled kind survive


BROKEN_TREE_BUILDERS = (SampledKindKeptAfterPruning,)


# ---- block and traversal verification (issue 23) -----------------------------------------------------


class BlockBonusFromTarget(BlockVerificationAcceptor):
    """Bug: a block cut short draws its bonus from p instead of the residual ``max(w p - q, 0)``
    (the residual correction skipped)."""

    breaks_kinds = ALL_KINDS

    def bonus_distribution(self, residual, p):
        return p


class BlockResidualWithoutWeight(BlockVerificationAcceptor):
    """Bug: the residual and the stop probability use the token-level ``max(p - q, 0)``, forgetting
    the weight ``w`` of the prefix kept so far."""

    breaks_kinds = ALL_KINDS

    def excess(self, weight, p, q):
        return super().excess(1.0, p, q)


class TraversalBonusFromTarget(TraversalVerificationAcceptor):
    """Bug: the node the traversal stops at draws its bonus from p instead of its residual."""

    breaks_kinds = ALL_KINDS

    def bonus_distribution(self, residual, p):
        return p


class TraversalWeightKeptAfterRejection(TraversalVerificationAcceptor):
    """Bug: a node keeps its weight after one of its children is rejected (as if acceptance were
    decided token by token), instead of ``rho / (1 - alpha + rho)``."""

    breaks_kinds = ALL_KINDS

    def after_rejection(self, alpha, residual, q, x, kind, running_q):
        _, residual, running_q = super().after_rejection(alpha, residual, q, x, kind, running_q)
        return alpha, residual, running_q


BROKEN_BLOCK_ACCEPTORS = (BlockBonusFromTarget, BlockResidualWithoutWeight)
BROKEN_TRAVERSAL_ACCEPTORS = (TraversalBonusFromTarget, TraversalWeightKeptAfterRejection)
