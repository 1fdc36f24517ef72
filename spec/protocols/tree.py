"""The candidate tree: the shape of one speculative step.

Node 0 is the root (the last committed token, whose KV is not cached yet). Every
other node is a candidate token; ``ranks[i]`` says which candidate it is among the
children of ``parents[i]`` (rank r = "the r-th most likely token" for top-k
drafters, "the r-th sample" for sampling drafters).

Nodes are stored in breadth-first order: depths never decrease with the index and
a parent always precedes its children. That order lets drafters fill the tree
depth by depth with slices, and lets everything per shape be precomputed once as
tensors (:attr:`ancestor_mask`, :attr:`depths`, :attr:`leaf_paths`) so the hot
path never walks a Python graph.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from functools import cached_property
from typing import Any, Iterable, Sequence

import attrs
import torch

from spec.errors import InvalidTreeError


def _as_int_tuple(values: Iterable[int]) -> tuple[int, ...]:
    return tuple(int(v) for v in values)


def _check_structure(instance: "CandidateTree", attribute: "attrs.Attribute[Any]", value: tuple[int, ...]) -> None:
    parents, ranks = instance.parents, instance.ranks
    if len(parents) == 0:
        raise InvalidTreeError("A candidate tree needs at least the root node; got an empty tree.")
    if len(ranks) != len(parents):
        raise InvalidTreeError(
            f"parents has {len(parents)} entries but ranks has {len(ranks)}; give one rank per node."
        )
    if parents[0] != -1:
        raise InvalidTreeError(f"Node 0 must be the root with parent -1, got parent {parents[0]}.")
    depth = [0] * len(parents)
    seen: set[tuple[int, int]] = set()
    for i in range(1, len(parents)):
        p = parents[i]
        if not 0 <= p < i:
            raise InvalidTreeError(
                f"Node {i} has parent {p}; every non-root node needs a parent with a smaller index "
                "(nodes in breadth-first order; this also rules out cycles and disconnected nodes)."
            )
        if ranks[i] < 0:
            raise InvalidTreeError(f"Node {i} has negative rank {ranks[i]}; ranks are 0-based top-k indices.")
        if (p, ranks[i]) in seen:
            raise InvalidTreeError(f"Node {i} repeats rank {ranks[i]} among the children of node {p}.")
        seen.add((p, ranks[i]))
        depth[i] = depth[p] + 1
        if depth[i] < depth[i - 1]:
            raise InvalidTreeError(
                f"Node {i} (depth {depth[i]}) comes after node {i - 1} (depth {depth[i - 1]}); "
                "order nodes breadth-first (use CandidateTree.from_parents to sort them)."
            )


@attrs.frozen(slots=False)
class CandidateTree:
    """A rooted tree of ``num_nodes`` nodes (root included) in breadth-first order.

    Immutable and hashable, so stages can cache per-shape work keyed by the tree.
    """

    parents: tuple[int, ...] = attrs.field(converter=_as_int_tuple)
    ranks: tuple[int, ...] = attrs.field(converter=_as_int_tuple, validator=_check_structure)

    # ---- constructors -------------------------------------------------------------
    @classmethod
    def root_only(cls) -> "CandidateTree":
        return cls(parents=(-1,), ranks=(0,))

    @classmethod
    def from_parents(cls, parents: Sequence[int], ranks: Sequence[int]) -> "CandidateTree":
        """Build from nodes in any order (node 0 the root); reorders them breadth-first.

        Sibling order follows rank. Raises :class:`InvalidTreeError` on cycles or
        nodes unreachable from the root.
        """
        n = len(parents)
        if n == 0 or len(ranks) != n:
            raise InvalidTreeError("parents and ranks must be non-empty and of equal length.")
        if parents[0] != -1 or any(p == -1 for p in parents[1:]):
            raise InvalidTreeError("Exactly one root is allowed, at index 0 with parent -1.")
        children: dict[int, list[int]] = {i: [] for i in range(n)}
        for i in range(1, n):
            if not 0 <= parents[i] < n:
                raise InvalidTreeError(f"Node {i} has parent {parents[i]}, which is not a node index.")
            children[parents[i]].append(i)
        order, frontier = [0], [0]
        while frontier:
            nxt = []
            for node in frontier:
                nxt.extend(sorted(children[node], key=lambda c: ranks[c]))
            order.extend(nxt)
            frontier = nxt
        if len(order) != n:
            raise InvalidTreeError(
                f"{n - len(order)} node(s) are not reachable from the root (a cycle or a disconnected part)."
            )
        new_index = {old: new for new, old in enumerate(order)}
        return cls(
            parents=[-1] + [new_index[parents[old]] for old in order[1:]],
            ranks=[0] + [ranks[old] for old in order[1:]],
        )

    # ---- per-shape structure, computed once ------------------------------------------
    @property
    def num_nodes(self) -> int:
        return len(self.parents)

    @cached_property
    def depth_list(self) -> tuple[int, ...]:
        depth = [0] * self.num_nodes
        for i in range(1, self.num_nodes):
            depth[i] = depth[self.parents[i]] + 1
        return tuple(depth)

    @property
    def max_depth(self) -> int:
        return self.depth_list[-1]

    @property
    def max_rank(self) -> int:
        return max(self.ranks[1:], default=-1)

    @cached_property
    def children(self) -> tuple[tuple[int, ...], ...]:
        """Children of each node, in rank order."""
        kids: list[list[int]] = [[] for _ in range(self.num_nodes)]
        for i in range(1, self.num_nodes):
            kids[self.parents[i]].append(i)
        return tuple(tuple(sorted(k, key=lambda c: self.ranks[c])) for k in kids)

    @cached_property
    def leaves(self) -> tuple[int, ...]:
        return tuple(i for i, kids in enumerate(self.children) if not kids)

    def path_to(self, node: int) -> tuple[int, ...]:
        """Node indices from the root down to ``node``, both included."""
        path = []
        while node != -1:
            path.append(node)
            node = self.parents[node]
        return tuple(reversed(path))

    @cached_property
    def depths(self) -> torch.Tensor:
        """``[num_nodes]`` int64: depth of each node (root 0); the position offset in the verify pass."""
        return torch.tensor(self.depth_list, dtype=torch.long)

    @cached_property
    def parent_index(self) -> torch.Tensor:
        """``[num_nodes]`` int64 parents, the root's clamped to 0 (use with a ``node > 0`` mask)."""
        return torch.tensor([max(p, 0) for p in self.parents], dtype=torch.long)

    @cached_property
    def rank_index(self) -> torch.Tensor:
        """``[num_nodes]`` int64 ranks."""
        return torch.tensor(self.ranks, dtype=torch.long)

    @cached_property
    def ancestor_mask(self) -> torch.Tensor:
        """``[num_nodes, num_nodes]`` bool: ``[i, j]`` is True when j is i or an ancestor of i.

        Row i is what node i may attend to inside the tree: the tree-attention mask.
        """
        mask = torch.eye(self.num_nodes, dtype=torch.bool)
        parents = self.parent_index
        # Breadth-first order: each depth is one contiguous block whose parents all sit in earlier
        # blocks, so a block inherits its parents' rows in one op (dynamic trees build this every step).
        for d in range(1, self.max_depth + 1):
            start, end = bisect_left(self.depth_list, d), bisect_right(self.depth_list, d)
            mask[start:end] |= mask[parents[start:end]]
        return mask

    @cached_property
    def leaf_paths(self) -> torch.Tensor:
        """``[num_leaves, max_depth + 1]`` int64 root-to-leaf node indices, right-padded with -1."""
        n = self.num_nodes
        on_path = self.ancestor_mask[list(self.leaves)]  # [leaves, n]
        # A parent's index is below its child's, so a path's nodes in index order run root to leaf:
        # sort each row's path nodes first (by index), the rest after, and keep depth + 1 columns.
        index = torch.arange(n).expand_as(on_path)
        ordered = torch.where(on_path, index, index + n).sort(dim=1).values[:, : self.max_depth + 1]
        return torch.where(ordered < n, ordered, torch.full_like(ordered, -1))

    # ---- derived trees ---------------------------------------------------------------
    def subtree(self, keep: Iterable[int]) -> "CandidateTree":
        """The tree restricted to ``keep`` (must contain the root and be closed under parents)."""
        kept = sorted(set(int(k) for k in keep))
        if not kept or kept[0] != 0:
            raise InvalidTreeError("A subtree must keep the root (node 0).")
        index = {old: new for new, old in enumerate(kept)}
        for old in kept[1:]:
            if self.parents[old] not in index:
                raise InvalidTreeError(f"Node {old} is kept but its parent {self.parents[old]} is not.")
        return CandidateTree(
            parents=[-1] + [index[self.parents[old]] for old in kept[1:]],
            ranks=[0] + [self.ranks[old] for old in kept[1:]],
        )

    def truncated(self, max_depth: int) -> "CandidateTree":
        """The tree without nodes deeper than ``max_depth`` (cached per depth)."""
        if max_depth >= self.max_depth:
            return self
        return self._truncations(max(max_depth, 0))

    @cached_property
    def _truncation_cache(self) -> dict[int, "CandidateTree"]:
        return {}

    def _truncations(self, depth: int) -> "CandidateTree":
        cache = self._truncation_cache
        if depth not in cache:
            cache[depth] = self.subtree(i for i, d in enumerate(self.depth_list) if d <= depth)
        return cache[depth]

    def __repr__(self) -> str:
        return f"CandidateTree(num_nodes={self.num_nodes}, max_depth={self.max_depth})"
