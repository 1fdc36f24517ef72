"""Candidate trees as networkx graphs (for building and inspecting; never on the hot path)."""

from __future__ import annotations

import networkx as nx

from spec.errors import InvalidTreeError
from spec.protocols import CandidateTree


def tree_to_graph(tree: CandidateTree) -> nx.DiGraph:
    """A DiGraph with edges parent -> child and node attributes ``rank`` and ``depth``."""
    graph = nx.DiGraph()
    for node in range(tree.num_nodes):
        graph.add_node(node, rank=tree.ranks[node], depth=tree.depth_list[node])
    graph.add_edges_from((tree.parents[n], n) for n in range(1, tree.num_nodes))
    return graph


def tree_from_graph(graph: nx.DiGraph) -> CandidateTree:
    """The candidate tree of a rooted DiGraph whose nodes carry a ``rank`` attribute (the root's is ignored)."""
    if graph.number_of_nodes() == 0:
        raise InvalidTreeError("The graph is empty; a tree needs at least its root.")
    if not nx.is_directed_acyclic_graph(graph):
        raise InvalidTreeError(f"The graph has a cycle: {nx.find_cycle(graph)}.")
    roots = [n for n in graph if graph.in_degree(n) == 0]
    if len(roots) != 1:
        raise InvalidTreeError(f"A tree has exactly one root (a node with no parent); this graph has {len(roots)}.")
    if not nx.is_arborescence(graph):
        raise InvalidTreeError("The graph is not a tree: some node has several parents or is disconnected.")
    order = [roots[0]] + [n for n in graph if n != roots[0]]
    index = {n: i for i, n in enumerate(order)}
    parents = [-1] + [index[next(iter(graph.predecessors(n)))] for n in order[1:]]
    missing = [n for n in order[1:] if "rank" not in graph.nodes[n]]
    if missing:
        raise InvalidTreeError(f"Nodes {missing[:5]} have no 'rank' attribute.")
    ranks = [0] + [int(graph.nodes[n]["rank"]) for n in order[1:]]
    return CandidateTree.from_parents(parents, ranks)
