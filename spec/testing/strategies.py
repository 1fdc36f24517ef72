"""Hypothesis strategies for candidate trees (needs the ``dev`` extra)."""

from __future__ import annotations

from hypothesis import strategies as st

from spec.protocols import CandidateTree


@st.composite
def candidate_trees(draw, max_nodes: int = 24, max_depth: int = 4, max_width: int = 4) -> CandidateTree:
    """Random valid trees: each new node hangs under a random node shallower than ``max_depth``,
    with a random rank not yet used among its siblings (ranks need not be contiguous)."""
    num_nodes = draw(st.integers(min_value=1, max_value=max_nodes))
    parents, ranks, depths = [-1], [0], [0]
    used: dict[int, set[int]] = {0: set()}
    for node in range(1, num_nodes):
        open_parents = [p for p in range(node) if depths[p] < max_depth and len(used[p]) < max_width]
        if not open_parents:
            break
        parent = draw(st.sampled_from(open_parents))
        rank = draw(st.sampled_from([r for r in range(max_width) if r not in used[parent]]))
        used[parent].add(rank)
        used[node] = set()
        parents.append(parent)
        ranks.append(rank)
        depths.append(depths[parent] + 1)
    return CandidateTree.from_parents(parents, ranks)
