"""Candidate continuations gathered as a trie, then cut to a budget and handed on as one draft.

Drafters that do not fill a fixed tree node by node (n-gram lookup, several drafters
merged) collect token paths with a score each; :meth:`TokenTrie.to_draft` keeps the
``budget`` best nodes, closed under ancestors (a child never outscores its parent:
scores are clamped, as in ``DynamicTreeBuilder``), orders siblings by score, and
returns the draft with the trie node behind each draft node.
"""

from __future__ import annotations

import math

import torch

from spec.protocols import CandidateKind, CandidateTree, Draft


class TokenTrie:
    """Node 0 is the root; every other node is a token after its parent, with a score
    (the log-confidence of its whole path; the higher the better)."""

    def __init__(self) -> None:
        self.tokens: list[int] = [-1]
        self.parents: list[int] = [-1]
        self.depths: list[int] = [0]
        self.scores: list[float] = [0.0]
        self.children: list[dict[int, int]] = [{}]

    def __len__(self) -> int:
        return len(self.tokens)

    def max_depth(self) -> int:
        return max(self.depths)

    def add_child(self, parent: int, token: int, score: float) -> int:
        """The node for ``token`` below ``parent`` with path score ``score``, created if new; a node
        proposed twice keeps its best score."""
        child = self.children[parent].get(token)
        if child is None:
            child = len(self.tokens)
            self.children[parent][token] = child
            self.tokens.append(token)
            self.parents.append(parent)
            self.depths.append(self.depths[parent] + 1)
            self.scores.append(score)
            self.children.append({})
        else:
            self.scores[child] = max(self.scores[child], score)
        return child

    def add_path(self, tokens: list[int], scores: list[float]) -> list[int]:
        """Insert ``tokens`` below the root with the path score of each prefix. Returns the trie node of each."""
        node, nodes = 0, []
        for token, score in zip(tokens, scores):
            node = self.add_child(node, token, score)
            nodes.append(node)
        return nodes

    def to_draft(self, root_token: int, budget: int, max_depth: int, device: torch.device) -> tuple[Draft, list[int]]:
        """The best ``budget`` nodes no deeper than ``max_depth`` as a deterministic draft, and the trie
        node of each draft node (root first)."""
        clamped = list(self.scores)
        for node in range(1, len(self.tokens)):  # parents precede children in insertion order
            clamped[node] = min(clamped[node], clamped[self.parents[node]])
        eligible = [n for n in range(1, len(self.tokens)) if self.depths[n] <= max_depth]
        # Ties: shallower first, so a parent always precedes its children.
        eligible.sort(key=lambda n: (-clamped[n], self.depths[n], n))
        kept = set(eligible[:max(budget, 0)])
        order, parents, ranks, frontier = [0], [-1], [0], [0]
        position = {0: 0}
        while frontier:
            nxt = []
            for node in frontier:
                kids = sorted((c for c in self.children[node].values() if c in kept),
                              key=lambda c: (-clamped[c], c))
                for rank, child in enumerate(kids):
                    position[child] = len(order)
                    order.append(child)
                    parents.append(position[node])
                    ranks.append(rank)
                nxt.extend(kids)
            frontier = nxt
        tree = CandidateTree(parents=parents, ranks=ranks)
        tokens = torch.tensor([root_token] + [self.tokens[n] for n in order[1:]], dtype=torch.long, device=device)
        confidence = torch.tensor([0.0] + [max(clamped[n], -1e30) for n in order[1:]], dtype=torch.float32,
                                  device=device)
        return Draft(tree=tree, tokens=tokens, kind=CandidateKind.DETERMINISTIC, log_confidence=confidence), order


def log_fraction(part: float, whole: float) -> float:
    return math.log(part / whole) if part > 0 and whole > 0 else float("-inf")
