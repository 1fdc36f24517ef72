"""Count host<-device conversions per pipeline stage, on any device (the CPU included).

On CUDA every one of these conversions (``item``, ``tolist``, ``bool``/``int``/``float``/``index`` of a
tensor, ``cpu``, ``numpy``) blocks the host until the GPU has caught up, so their count bounds a step's
synchronisations from above. On the CPU nothing blocks, but the calls happen all the same, so a test can
budget them where no GPU is visible. Conversions of tensors that live on the host by design (a tree's
parent list) are counted too: the count is an upper bound, and a budget that holds on it holds on CUDA.

Uploads are counted apart: ``torch.tensor``/``torch.as_tensor`` calls, and indexing a tensor with a Python
list (``t[[0, 2]]`` copies the list to the tensor's device first). On CUDA a copy from pageable host memory
waits for the stream too, so a budget keeps them out of the steady state.
"""

from __future__ import annotations

from collections import Counter
from contextlib import contextmanager
from typing import Iterator

import pytest
import torch

CONVERSIONS = ("item", "tolist", "__bool__", "__int__", "__float__", "__index__", "cpu", "numpy")
UPLOADS = ("tensor", "as_tensor", "list_index")


class SyncCounter:
    """``counts[(stage, kind)]``: conversions (``kind`` a method name) and uploads seen while ``stage`` ran."""

    def __init__(self) -> None:
        self.counts: Counter = Counter()
        self.stage = "outside"

    def per_stage(self, steps: int, kinds: tuple[str, ...] = CONVERSIONS) -> dict[str, float]:
        totals: Counter = Counter()
        for (stage, kind), count in self.counts.items():
            if kind in kinds:
                totals[stage] += count
        return {stage: count / steps for stage, count in sorted(totals.items())}

    @contextmanager
    def in_stage(self, stage: str) -> Iterator[None]:
        outer, self.stage = self.stage, stage
        try:
            yield
        finally:
            self.stage = outer

    def wrap(self, obj, method: str, stage: str) -> None:
        """Attribute calls of ``obj.method`` (an instance attribute shadows the class's) to ``stage``."""
        original = getattr(obj, method)

        def staged(*args, **kwargs):
            with self.in_stage(stage):
                return original(*args, **kwargs)

        object.__setattr__(obj, method, staged)  # frozen attrs stages too: this instance only, for the test


@contextmanager
def counting_conversions() -> Iterator[SyncCounter]:
    """Patch ``torch.Tensor``'s conversions and ``torch.tensor``/``as_tensor`` with counting wrappers."""
    counter = SyncCounter()
    monkeypatch = pytest.MonkeyPatch()

    def counted(owner, name: str):
        original = getattr(owner, name)

        def wrapper(*args, **kwargs):
            counter.counts[(counter.stage, name)] += 1
            return original(*args, **kwargs)

        monkeypatch.setattr(owner, name, wrapper)

    for name in CONVERSIONS:
        counted(torch.Tensor, name)
    for name in ("tensor", "as_tensor"):
        counted(torch, name)
    getitem = torch.Tensor.__getitem__

    def indexed(self, index):
        if isinstance(index, list) or (isinstance(index, tuple) and any(isinstance(i, list) for i in index)):
            counter.counts[(counter.stage, "list_index")] += 1
        return getitem(self, index)

    monkeypatch.setattr(torch.Tensor, "__getitem__", indexed)
    try:
        yield counter
    finally:
        monkeypatch.undo()
