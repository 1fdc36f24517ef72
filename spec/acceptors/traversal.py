"""Traversal verification: lossless tree verification from the leaves up, with sequence-level acceptance.

Weng et al., "Traversal Verification for Speculative Tree Decoding" (NeurIPS 2025),
traverse the draft tree depth-first, children in rank order, and decide at the *leaves*:
a node is tested only once all its children have been rejected, and accepting it
accepts its whole path from the root. Every node carries

* a **weight** ``alpha`` in [0, 1]: the probability, averaged over the part of the draft
  below it, that its path is accepted. The root's is 1; a child's is
  ``min(1, alpha_parent * r_parent(x) / q_parent(x))`` -- a capped likelihood ratio of the
  whole path, not of one token;
* a **residual** ``r``: the distribution the next token must have if the walk stops at
  this node (initially ``p``, the target's distribution there);
* the draft distribution ``q`` its next child was drawn from (siblings drawn without
  replacement remove the earlier ones from it).

When a child drawing token ``x`` is rejected its parent becomes

    m = max(alpha * r - q, 0),   rho = sum(m),
    r <- m / rho,   alpha <- rho / (1 - alpha + rho),   q <- q without x (without replacement)

and when a node has no child left it is accepted with probability ``alpha``; the bonus
token is then drawn from its residual ``r``. The root's weight stays 1, so the walk
always ends. On a chain this is block verification (``spec.acceptors.block``) coin for
coin.

Deterministic candidates (top-k heads, pruned drafts) are the special case of a point
mass: each child is "drawn" from ``q = delta(x)``. Then ``alpha_child = alpha * r(x)``,
the residual is ``r`` with ``x`` removed, and ``alpha <- alpha (1 - r(x)) / (1 - alpha r(x))``.

docs/block_traversal.md derives the rule and proves it lossless for every candidate
kind (the conditions: each sibling's ``q`` is the law it was drawn from given the draft
above and beside it, and the draft is independent of the acceptor's coins);
tests/test_block_traversal.py checks it exactly. The steps are small overridable
methods so ``spec.testing.mutants`` can build the bugs the tests must catch.
"""

from __future__ import annotations

from typing import Optional

import attrs
import torch

from spec.acceptors.rejection import normalise
from spec.acceptors.walking import WalkingAcceptor, capped_ratio, set_entry
from spec.protocols import Acceptance, AcceptorTraits, CandidateKind, Draft
from spec.randomness import Randomness


@attrs.define
class NodeState:
    """What the walk knows at a node on the current path: its weight, residual, the q of its next child,
    and how many of its children it has tried."""

    alpha: float
    residual: torch.Tensor
    q: Optional[torch.Tensor]
    tried: int = 0


def point_mass(x: int, like: torch.Tensor) -> torch.Tensor:
    """``delta(x)`` ``[V]``: the law of a deterministic candidate."""
    return set_entry(torch.zeros_like(like), x, 1.0)


class TraversalVerificationAcceptor(WalkingAcceptor):
    """Lossless for every candidate kind on any tree; equals greedy decoding at temperature 0;
    block verification on chains."""

    traits = AcceptorTraits(candidate_kinds=set(CandidateKind), lossless=True)

    # ---- the algorithm -----------------------------------------------------------------
    def walk(self, draft: Draft, p_rows: torch.Tensor, randomness: Randomness) -> Acceptance:
        """Traverse ``draft`` given the target's distributions ``p_rows`` ``[n, V]``."""
        tree, kind = draft.tree, draft.kind
        q_rows = draft.draft_probs.to(p_rows) if draft.draft_probs is not None else None
        tokens = draft.tokens.tolist()
        state = {0: self._enter(0, 1.0, tree, p_rows, q_rows, kind)}
        path = [0]
        while True:
            node = path[-1]
            here = state[node]
            children = tree.children[node]
            if here.tried < len(children):  # descend into the next child, in rank order
                child = children[here.tried]
                here.tried += 1
                alpha = self.child_weight(here.alpha, here.residual, self._q(here, tokens[child], kind),
                                          tokens[child])
                state[child] = self._enter(child, alpha, tree, p_rows, q_rows, kind)
                path.append(child)
                continue
            # Every child rejected (or none): the node's own test. The root's weight is 1 by construction.
            if node == 0 or randomness.bernoulli(here.alpha):
                bonus = randomness.categorical(self.bonus_distribution(here.residual, p_rows[node]))
                return Acceptance(path=path, tokens=[tokens[i] for i in path[1:]], bonus_token=bonus)
            path.pop()
            parent = state[path[-1]]
            x = tokens[node]
            parent.alpha, parent.residual, parent.q = self.after_rejection(
                parent.alpha, parent.residual, self._q(parent, x, kind), x, kind, parent.q)
            del state[node]

    @staticmethod
    def _enter(node: int, alpha: float, tree, p_rows: torch.Tensor, q_rows: Optional[torch.Tensor],
               kind: CandidateKind) -> NodeState:
        children = tree.children[node]
        q = q_rows[children[0]] if children and kind is not CandidateKind.DETERMINISTIC else None
        return NodeState(alpha=alpha, residual=p_rows[node], q=q)

    @staticmethod
    def _q(state: NodeState, x: int, kind: CandidateKind) -> torch.Tensor:
        """The law the child with token ``x`` was drawn from: the running ``q``, or ``delta(x)``."""
        return point_mass(x, state.residual) if kind is CandidateKind.DETERMINISTIC else state.q

    # ---- the steps (overridden by the mutants in spec.testing.mutants) ---------------------
    def child_weight(self, alpha: float, residual: torch.Tensor, q: torch.Tensor, x: int) -> float:
        """``min(1, alpha * r(x) / q(x))``: the weight of the path extended by ``x``."""
        return capped_ratio(alpha, residual, q, x)

    def after_rejection(self, alpha: float, residual: torch.Tensor, q: torch.Tensor, x: int, kind: CandidateKind,
                        running_q: Optional[torch.Tensor]) -> tuple[float, torch.Tensor, Optional[torch.Tensor]]:
        """A node's weight, residual and running ``q`` after its child with token ``x`` (drawn from ``q``)
        was rejected."""
        excess = (alpha * residual - q).clamp(min=0.0)
        rho = float(excess.sum())
        denominator = 1.0 - alpha + rho
        # denominator 0 means alpha = 1 and r <= q everywhere: the rejection had probability 0.
        new_alpha = rho / denominator if denominator > 0 else alpha
        if kind is CandidateKind.SAMPLED_WITHOUT_REPLACEMENT:
            running_q = normalise(set_entry(running_q, x), running_q)
        return min(1.0, new_alpha), normalise(excess, residual), running_q

    def bonus_distribution(self, residual: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        """What the bonus token is drawn from at the node the walk stops at: its residual."""
        return residual
