"""Block verification: lossless verification of a chain of candidates, decided on the block jointly.

Sun et al., "Block Verification Accelerates Speculative Decoding" (ICLR 2025). For a
chain ``x_1 .. x_g`` with ``x_i`` drawn from ``q_i`` (the draft distribution after
``x_1 .. x_{i-1}``) and the target's ``p_i`` at the same place:

1. weights, forward: ``w_0 = 1``, ``w_i = min(1, w_{i-1} * p_i(x_i) / q_i(x_i))`` -- the
   capped likelihood ratio of the prefix ``x_1 .. x_i`` as a whole;
2. residuals: ``m_i = max(w_i * p_{i+1} - q_{i+1}, 0)``, ``rho_i = sum(m_i)``, and the
   probability of stopping at ``i`` given that no longer prefix was kept,
   ``h_i = rho_i / (1 - w_i + rho_i)`` for ``i < g``, ``h_g = w_g``;
3. backward: the accepted length ``tau`` is the largest ``i`` whose coin (probability
   ``h_i``) comes up, tried from ``g`` down to 1; 0 if none does;
4. the bonus token is drawn from ``p_{g+1}`` when the whole block is kept, else from
   ``m_tau / rho_tau``.

Unlike token-by-token verification, a prefix whose later tokens are much likelier
under the target than under the drafter can be kept even when an earlier token alone
would have been rejected: the paper proves this rule optimal (the most expected
accepted tokens) among lossless verifiers of a single draft. Deterministic candidates
are drawn from a point mass ``q_i = delta(x_i)``: then ``w_i`` is the product of
``p_i(x_i)`` and the rule is exactly token-level rejection (no gain, no loss).

The rule is defined for one chain; a tree with a branch is refused at accept time
(:class:`~spec.errors.UnsupportedError`): use a chain tree, or
:class:`~spec.acceptors.traversal.TraversalVerificationAcceptor`, which is this rule on a
chain (coin for coin) and extends it to trees. docs/block_traversal.md has the
derivation and the losslessness argument; tests/test_block_traversal.py checks it exactly.
"""

from __future__ import annotations


import torch

from spec.acceptors.rejection import normalise
from spec.acceptors.traversal import point_mass
from spec.errors import UnsupportedError
from spec.protocols import Acceptance, AcceptorTraits, CandidateKind, CandidateTree, Draft
from spec.acceptors.walking import WalkingAcceptor, capped_ratio
from spec.randomness import Randomness


def is_chain(tree: CandidateTree) -> bool:
    """Whether every node has at most one child (the root alone is a chain of length 0)."""
    return all(len(children) <= 1 for children in tree.children)


def check_chain(tree: CandidateTree, rule: str) -> None:
    if not is_chain(tree):
        branching = next(i for i, children in enumerate(tree.children) if len(children) > 1)
        raise UnsupportedError(
            f"{rule} verifies a single chain of candidates (block verification, Sun et al. 2025), but node "
            f"{branching} of this {tree.num_nodes}-node tree has {len(tree.children[branching])} children; use a "
            "chain tree (StaticTreeBuilder(spec.trees.chain_tree(depth))), or TraversalVerificationAcceptor, "
            "which is block verification on chains and extends it to trees."
        )


class BlockVerificationAcceptor(WalkingAcceptor):
    """Lossless for every candidate kind on chains; equals greedy decoding at temperature 0."""

    # On a chain each node has one child, so with and without replacement are the same single draw.
    traits = AcceptorTraits(candidate_kinds=set(CandidateKind), lossless=True)

    def check(self, draft: Draft) -> None:
        check_chain(draft.tree, type(self).__name__)  # before any work: a wrong tree is the caller's error

    # ---- the algorithm -----------------------------------------------------------------
    def walk(self, draft: Draft, p_rows: torch.Tensor, randomness: Randomness) -> Acceptance:
        """Block-verify the chain ``draft`` given the target's distributions ``p_rows`` ``[n, V]``."""
        tree = draft.tree
        check_chain(tree, type(self).__name__)
        length = tree.num_nodes - 1  # a chain in breadth-first order: node i sits at depth i
        tokens = draft.tokens.tolist()
        if draft.kind is CandidateKind.DETERMINISTIC:
            q_rows = [None] + [point_mass(tokens[i], p_rows[i - 1]) for i in range(1, length + 1)]
        else:
            q_rows = [None] + list(draft.draft_probs.to(p_rows)[1:])
        weights = [1.0]
        for i in range(1, length + 1):
            weights.append(self.weight(weights[-1], p_rows[i - 1], q_rows[i], tokens[i]))
        stop, excess = length, None
        while stop > 0:
            if stop == length:
                h = weights[length]
            else:
                excess = self.excess(weights[stop], p_rows[stop], q_rows[stop + 1])
                h = self.stop_probability(weights[stop], float(excess.sum()))
            if randomness.bernoulli(h):
                break
            stop -= 1
        if stop == length:
            bonus_from = p_rows[length]
        else:
            if stop == 0:
                excess = self.excess(1.0, p_rows[0], q_rows[1])
            bonus_from = self.bonus_distribution(normalise(excess, p_rows[stop]), p_rows[stop])
        bonus = randomness.categorical(bonus_from)
        return Acceptance(path=range(stop + 1), tokens=tokens[1:stop + 1], bonus_token=bonus)

    # ---- the steps (overridden by the mutants in spec.testing.mutants) ---------------------
    def weight(self, previous: float, p: torch.Tensor, q: torch.Tensor, x: int) -> float:
        """``w_i = min(1, w_{i-1} * p(x) / q(x))``."""
        return capped_ratio(previous, p, q, x)

    def excess(self, weight: float, p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        """``max(w * p - q, 0)``: the unnormalised residual after stopping at a prefix of weight ``w``."""
        return (weight * p - q).clamp(min=0.0)

    def stop_probability(self, weight: float, rho: float) -> float:
        """``h = rho / (1 - w + rho)``: stop here, given that no longer prefix was kept."""
        denominator = 1.0 - weight + rho
        # 0 only when w = 1 and p <= q everywhere: a longer prefix is then kept with probability 1.
        return rho / denominator if denominator > 0 else 1.0

    def bonus_distribution(self, residual: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        """What the bonus token is drawn from when the block is cut short: the residual."""
        return residual
