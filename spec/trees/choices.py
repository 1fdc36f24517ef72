"""Medusa-style "choices": a tree written as the list of rank paths of its nodes.

``[[0], [0, 0], [1], [0, 1]]`` is the root's top-1 and top-2 children, and the
top-1 and top-2 grandchildren under the top-1 child. Every prefix of a path must
itself be a path (that is what makes it a tree). The same format is used by
Medusa's ``medusa_choices.py`` and TensorRT-LLM's ``medusa_choices``.
"""

from __future__ import annotations

from typing import Sequence

from spec.errors import InvalidTreeError
from spec.protocols.tree import CandidateTree

Choices = list[list[int]]


def tree_from_choices(choices: Sequence[Sequence[int]]) -> CandidateTree:
    """The candidate tree for ``choices`` (root added; any order accepted)."""
    paths = []
    for item in choices:
        if isinstance(item, (str, bytes)) or not hasattr(item, "__len__"):
            raise InvalidTreeError(f"Each choice must be a list of ranks, got {item!r}.")
        path = tuple(int(r) for r in item)
        if not path:
            raise InvalidTreeError("A choice path is empty; the root is implicit, list only its descendants.")
        if any(r < 0 for r in path):
            raise InvalidTreeError(f"Choice {list(path)} has a negative rank; ranks are 0-based top-k indices.")
        paths.append(path)
    if len(set(paths)) != len(paths):
        dup = next(p for p in paths if paths.count(p) > 1)
        raise InvalidTreeError(f"Choice {list(dup)} appears more than once.")
    known = set(paths)
    for path in paths:
        if len(path) > 1 and path[:-1] not in known:
            raise InvalidTreeError(
                f"Choice {list(path)} has no parent {list(path[:-1])}; add every prefix of a path."
            )
    ordered = sorted(paths, key=lambda p: (len(p), p))
    index = {(): 0}
    parents, ranks = [-1], [0]
    for i, path in enumerate(ordered, start=1):
        index[path] = i
        parents.append(index[path[:-1]])
        ranks.append(path[-1])
    return CandidateTree(parents=parents, ranks=ranks)


def tree_to_choices(tree: CandidateTree) -> Choices:
    """The choices list of ``tree`` (breadth-first, siblings by rank)."""
    rank_paths: list[tuple[int, ...]] = [()]
    for i in range(1, tree.num_nodes):
        rank_paths.append(rank_paths[tree.parents[i]] + (tree.ranks[i],))
    return [list(p) for p in rank_paths[1:]]


def chain_tree(depth: int) -> CandidateTree:
    """A single path of ``depth`` top-1 candidates (classic speculative decoding)."""
    if depth < 0:
        raise InvalidTreeError(f"A chain's depth must be >= 0, got {depth}.")
    return CandidateTree(parents=[-1] + list(range(depth)), ranks=[0] * (depth + 1))


def with_chain(tree: CandidateTree, depth: int) -> CandidateTree:
    """``tree`` plus a rank-0 chain down to ``depth``: room for a long lookup path beside the heads' tree."""
    choices = {tuple(c) for c in tree_to_choices(tree)} | {(0,) * d for d in range(1, depth + 1)}
    return tree_from_choices(sorted(choices, key=lambda c: (len(c), c)))


def full_tree(depth: int, width: int) -> CandidateTree:
    """Every rank < ``width`` at every depth <= ``depth`` (width**depth leaves)."""
    if depth < 0 or width < 1:
        raise InvalidTreeError(f"full_tree needs depth >= 0 and width >= 1, got depth={depth}, width={width}.")
    choices: Choices = []
    frontier: Choices = [[]]
    for _ in range(depth):
        frontier = [p + [r] for p in frontier for r in range(width)]
        choices.extend(frontier)
    return tree_from_choices(choices)
