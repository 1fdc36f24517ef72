"""Choose the candidate tree that maximises the expected number of tokens a step gains.

A tree's expected gain is ``1 + sum over candidate nodes of the product of p(depth, rank)
along its path`` (the bonus token plus every candidate's chance of being accepted;
the same convention as ``GenerationOutput.mean_accepted_length``). Budgets count
candidate nodes: a budget of ``m`` verifies ``m + 1`` tokens (the root too).

* :func:`greedy_tree` (Medusa): repeatedly add the frontier node with the largest path
  probability. Built as a networkx DiGraph.
* :func:`optimal_tree` (Sequoia-style dynamic programming): the best tree of exactly ``m``
  candidates with depth <= ``L``, for any table (ranks need not be ordered), with the
  whole curve of best expected gain against budget.
"""

from __future__ import annotations

import heapq
from functools import lru_cache

import attrs
import networkx as nx

from spec.errors import ConfigurationError, InvalidTreeError
from spec.protocols import CandidateTree
from spec.trees.graph import tree_from_graph
from spec.trees.stats import AcceptanceStats


def expected_accepted_length(tree: CandidateTree, stats: AcceptanceStats) -> float:
    """``1 + sum_nodes prod_{path} p(depth, rank)``: expected tokens gained by one step on ``tree``."""
    path_prob = [1.0] * tree.num_nodes
    for node in range(1, tree.num_nodes):
        path_prob[node] = path_prob[tree.parents[node]] * stats.prob(tree.depth_list[node], tree.ranks[node])
    return 1.0 + sum(path_prob[1:])


def _check_budget(budget: int, max_depth: int) -> None:
    if budget < 1:
        raise ConfigurationError(f"The node budget must be >= 1 candidate, got {budget}.")
    if max_depth < 1:
        raise ConfigurationError(f"The tree depth must be >= 1, got {max_depth}.")


def _depth_limit(stats: AcceptanceStats, max_depth: int | None) -> int:
    """``max_depth`` (None: the table's depth) capped by the table; anything but a whole number >= 1 is refused."""
    if max_depth is None:
        return stats.depth
    if isinstance(max_depth, bool) or not isinstance(max_depth, int) or max_depth < 1:
        raise ConfigurationError(f"max_depth must be None (the statistics' depth) or a whole number >= 1, "
                                 f"got {max_depth!r}.")
    return min(max_depth, stats.depth)


def greedy_tree(stats: AcceptanceStats, budget: int, max_depth: int | None = None) -> CandidateTree:
    """Medusa's construction: add the frontier node of largest path probability, ``budget`` times."""
    max_depth = _depth_limit(stats, max_depth)
    _check_budget(budget, max_depth)
    graph = nx.DiGraph()
    graph.add_node(0, rank=0, depth=0, value=1.0)
    frontier: list[tuple[float, int, int, int]] = []  # (-value, parent, rank, tiebreak)
    counter = 0

    def push_children(node: int) -> None:
        nonlocal counter
        depth = graph.nodes[node]["depth"] + 1
        if depth > max_depth:
            return
        for rank in range(stats.width):
            value = graph.nodes[node]["value"] * stats.prob(depth, rank)
            heapq.heappush(frontier, (-value, counter, node, rank))
            counter += 1

    push_children(0)
    while graph.number_of_nodes() <= budget and frontier:
        neg_value, _, parent, rank = heapq.heappop(frontier)
        node = graph.number_of_nodes()
        graph.add_node(node, rank=rank, depth=graph.nodes[parent]["depth"] + 1, value=-neg_value)
        graph.add_edge(parent, node)
        push_children(node)
    return tree_from_graph(graph)


@attrs.frozen
class OptimalTrees:
    """The DP's answer: ``tree`` for the requested budget, and ``curve[m]`` = best expected
    gain with exactly ``m`` candidates (``curve[0] = 1``: the bonus token alone)."""

    tree: CandidateTree
    expected_length: float
    curve: tuple[float, ...]


def optimal_tree(stats: AcceptanceStats, budget: int, max_depth: int | None = None) -> OptimalTrees:
    """The tree of exactly ``budget`` candidates and depth <= ``max_depth`` maximising expected gain."""
    max_depth = _depth_limit(stats, max_depth)
    _check_budget(budget, max_depth)
    width = stats.width

    @lru_cache(maxsize=None)
    def forest(depth: int, m: int) -> tuple[float, tuple]:
        """Best (value, choice) for ``m`` nodes hung below one node at ``depth - 1``; children at ``depth``."""
        if m == 0:
            return 0.0, ()
        if depth > max_depth:
            return float("-inf"), ()
        return ranks(depth, 0, m)

    @lru_cache(maxsize=None)
    def ranks(depth: int, rank: int, m: int) -> tuple[float, tuple]:
        """Best way to spend ``m`` nodes on subtrees of ranks ``rank..width-1`` at ``depth``."""
        if m == 0:
            return 0.0, ()
        if rank == width:
            return float("-inf"), ()
        best = ranks(depth, rank + 1, m)  # skip this rank
        p = stats.prob(depth, rank)
        for size in range(1, m + 1):  # this rank's subtree gets `size` nodes, itself included
            below, _ = forest(depth + 1, size - 1)
            rest, _ = ranks(depth, rank + 1, m - size)
            value = p * (1.0 + below) + rest
            if value > best[0] + 1e-15:
                best = (value, ((rank, size),))
        return best

    def build(depth: int, m: int, prefix: tuple[int, ...], out: list[list[int]]) -> None:
        rank = 0
        while m > 0:
            value, choice = ranks(depth, rank, m)
            if not choice:
                raise InvalidTreeError("No tree fits this budget and depth (the table is too narrow).")
            (r, size), = choice
            out.append(list(prefix + (r,)))
            build(depth + 1, size - 1, prefix + (r,), out)
            m -= size
            rank = r + 1

    capacity = sum(width ** d for d in range(1, max_depth + 1))
    if budget > capacity:
        raise ConfigurationError(
            f"A budget of {budget} candidates does not fit in depth {max_depth} with {width} ranks "
            f"(at most {capacity}); raise the depth or lower the budget."
        )
    curve = tuple(1.0 + forest(1, m)[0] for m in range(budget + 1))
    choices: list[list[int]] = []
    build(1, budget, (), choices)
    from spec.trees.choices import tree_from_choices

    tree = tree_from_choices(choices)
    return OptimalTrees(tree=tree, expected_length=curve[budget], curve=curve)
