"""The one per-shape cache: tensors a verifier builds once per tree shape and reuses every step."""

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
