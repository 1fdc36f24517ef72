"""The one per-shape cache: tensors a verifier builds once per tree shape and reuses every step; and the
shape buckets a compiled step pads to, so that one generation shows it a bounded set of shapes."""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Generic, TypeVar

from spec.protocols import CandidateTree

T = TypeVar("T")


class PerShape(Generic[T]):
    """``cache(tree)``: ``build(tree)`` the first time, the same value after; the least recently used
    shape is dropped past ``capacity`` (dynamic trees and early exits make new shapes every step)."""

    def __init__(self, build: Callable[[CandidateTree], T], capacity: int = 64) -> None:
        self.build = build
        self.capacity = capacity
        self._values: OrderedDict[CandidateTree, T] = OrderedDict()

    def __call__(self, tree: CandidateTree) -> T:
        value = self._values.get(tree)
        if value is None:
            value = self._values[tree] = self.build(tree)
            if len(self._values) > self.capacity:
                self._values.popitem(last=False)
        else:
            self._values.move_to_end(tree)
        return value

    def __len__(self) -> int:
        return len(self._values)


TREE_BUCKETS = (8, 16, 32, 64)  # then multiples of 64


def tree_bucket(nodes: int) -> int:
    """The node count a compiled step pads a tree of ``nodes`` to: 8, 16, 32, 64, then multiples of 64.

    Dynamic trees, and every tree truncated at the end of a generation, change the node count; unpadded, each
    new count is a recompile (or a CUDA graph recorded). Padding costs the extra rows' compute, which on a GPU
    is nearly free below a few hundred rows (the pass is bound by reading the weights).
    """
    for size in TREE_BUCKETS:
        if nodes <= size:
            return size
    return -(-nodes // 64) * 64


def attend_bucket(rows: int, minimum: int = 64) -> int:
    """The attended length a compiled step rounds ``rows`` up to: ``minimum``, then four steps per doubling
    (each a multiple of ``minimum``), so padding wastes at most a quarter of the attention and a generation of
    ``L`` tokens sees about ``4 log2(L / minimum)`` lengths rather than ``L / minimum``."""
    if rows <= minimum:
        return minimum
    step = max(minimum, (1 << ((rows - 1).bit_length() - 1)) // 4)  # a quarter of the power of two below
    return -(-rows // step) * step
