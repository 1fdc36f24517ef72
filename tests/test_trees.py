import networkx as nx
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from spec.errors import InvalidTreeError
from spec.protocols import CandidateTree
from spec.testing.strategies import candidate_trees
from spec.trees import chain_tree, full_tree, tree_from_choices, tree_to_choices


def as_graph(tree: CandidateTree) -> nx.DiGraph:
    graph = nx.DiGraph()
    graph.add_node(0)
    graph.add_edges_from((tree.parents[i], i) for i in range(1, tree.num_nodes))
    return graph


def test_medusa_choices_example():
    tree = tree_from_choices([[0], [0, 0], [1], [0, 1]])
    assert tree.parents == (-1, 0, 0, 1, 1)
    assert tree.ranks == (0, 0, 1, 0, 1)
    assert tree.depth_list == (0, 1, 1, 2, 2)
    assert tree.leaves == (2, 3, 4)
    assert tree.leaf_paths.tolist() == [[0, 2, -1], [0, 1, 3], [0, 1, 4]]


@given(candidate_trees())
def test_structure_matches_networkx(tree):
    graph = as_graph(tree)
    assert nx.is_arborescence(graph)
    depth = nx.shortest_path_length(graph, 0)
    assert tree.depths.tolist() == [depth[i] for i in range(tree.num_nodes)]
    for i in range(tree.num_nodes):
        expected = nx.ancestors(graph, i) | {i}
        assert set(torch.nonzero(tree.ancestor_mask[i]).flatten().tolist()) == expected
    leaves = {n for n in graph if graph.out_degree(n) == 0}
    assert set(tree.leaves) == leaves
    for row, leaf in zip(tree.leaf_paths.tolist(), tree.leaves):
        assert [n for n in row if n >= 0] == nx.shortest_path(graph, 0, leaf)


@given(candidate_trees())
def test_choices_round_trip(tree):
    assert tree_from_choices(tree_to_choices(tree)) == tree


@given(candidate_trees(), st.integers(0, 5))
def test_truncated_keeps_shallow_nodes(tree, depth):
    cut = tree.truncated(depth)
    assert cut.max_depth == min(depth, tree.max_depth)
    kept = [c for c in tree_to_choices(tree) if len(c) <= depth]
    assert tree_to_choices(cut) == kept


def test_chain_and_full():
    assert tree_to_choices(chain_tree(3)) == [[0], [0, 0], [0, 0, 0]]
    assert full_tree(2, 3).num_nodes == 1 + 3 + 9
    assert chain_tree(0) == CandidateTree.root_only()


@pytest.mark.parametrize(
    "parents, ranks, message",
    [
        ([], [], "empty"),
        ([0], [0], "root"),
        ([-1, 0, 2], [0, 0, 1], "parent"),  # parent after child
        ([-1, 0, 0], [0, 1, 1], "repeats rank"),
        ([-1, 0, 1, 0], [0, 0, 0, 1], "breadth-first"),
        ([-1, 0], [0, -1], "negative rank"),
        ([-1, 0], [0], "one rank per node"),
    ],
)
def test_malformed_trees_refused(parents, ranks, message):
    with pytest.raises(InvalidTreeError, match=message):
        CandidateTree(parents=parents, ranks=ranks)


@pytest.mark.parametrize(
    "choices, message",
    [
        ([[0, 0]], "no parent"),
        ([[0], [0]], "more than once"),
        ([[0], [-1]], "negative"),
        ([[]], "empty"),
        (["ab"], "list of ranks"),
    ],
)
def test_malformed_choices_refused(choices, message):
    with pytest.raises(InvalidTreeError, match=message):
        tree_from_choices(choices)


def test_from_parents_refuses_cycles_and_disconnected_nodes():
    with pytest.raises(InvalidTreeError, match="not reachable"):
        CandidateTree.from_parents([-1, 2, 1], [0, 0, 0])  # 1 <-> 2 cycle
    with pytest.raises(InvalidTreeError, match="Exactly one root"):
        CandidateTree.from_parents([-1, -1], [0, 0])


def test_from_parents_sorts_breadth_first():
    tree = CandidateTree.from_parents([-1, 2, 0, 0], [0, 0, 1, 0])
    assert tree_to_choices(tree) == [[0], [1], [1, 0]]
