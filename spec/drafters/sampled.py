"""Draw a tree's candidates from draft distributions instead of taking the top-k.

Sampled candidates make rejection sampling accept more often at high temperature,
but the acceptor must then know each token's draft distribution ``q``: this module
returns it per node, with the kind of draw, for ``Draft.draft_probs``.
"""

from __future__ import annotations

import torch

from spec.protocols import CandidateKind, CandidateTree
from spec.randomness import Randomness


def draw_children(tree: CandidateTree, child_q: torch.Tensor, kind: CandidateKind,
                  randomness: Randomness) -> tuple[list[int], list[int]]:
    """Sample every node's children from ``child_q[parent]`` ``[n, V]`` (rows of leaves unused).

    Children are drawn in rank order; without replacement each draw excludes the
    earlier ones. Returns (token per node with the root's slot set to -1, nodes kept):
    when ``q`` has fewer tokens than a node has children, the extra children (and
    their subtrees) are dropped, since they cannot be drawn.
    """
    tokens = [-1] * tree.num_nodes
    kept = [True] * tree.num_nodes
    for parent, children in enumerate(tree.children):
        if not children:
            continue
        if not kept[parent]:
            for child in children:
                kept[child] = False
            continue
        q = child_q[parent]
        for child in children:
            if kind is CandidateKind.SAMPLED_WITHOUT_REPLACEMENT and not bool((q > 0).any()):
                kept[child] = False
                continue
            token = randomness.categorical(q)
            tokens[child] = token
            if kind is CandidateKind.SAMPLED_WITHOUT_REPLACEMENT:
                q = q.clone()
                q[token] = 0.0
    # Descendants of dropped nodes are dropped too (parents precede children).
    for node in range(1, tree.num_nodes):
        kept[node] = kept[node] and kept[tree.parents[node]]
    return tokens, [i for i in range(tree.num_nodes) if kept[i]]
