"""Count host<-device conversions per pipeline stage, on any device (the CPU included).

On CUDA every one of these conversions (``item``, ``tolist``, ``bool``/``int``/``float``/``index`` of a
tensor, ``cpu``, ``numpy``) blocks the host until the GPU has caught up, so their count bounds a step's
synchronisations from above. On the CPU nothing blocks, but the calls happen all the same, so a test can
budget them where no GPU is visible. Conversions of tensors that live on the host by design (a tree's
parent list) are counted too: the count is an upper bound, and a budget that holds on it holds on CUDA.

Uploads are counted apart: ``torch.tensor``/``torch.as_tensor`` calls, and indexing a tensor with a Python
list (``t[[0, 2]]``, read or assigned, copies the list to the tensor's device first). On CUDA a copy from pageable
host memory waits for the stream too, so a budget keeps them out of the steady state.
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

        try:
            object.__setattr__(obj, method, staged)  # frozen attrs stages too: this instance only, for the test
        except AttributeError:  # slotted (attrs frozen slots): a subclass of its own for this instance
            cls = type(obj)
            object.__setattr__(obj, "__class__", type(cls.__name__, (cls,), {"__slots__": (), method:
                                                                             lambda self, *a, **k: staged(*a, **k)}))


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
    setitem = torch.Tensor.__setitem__

    def assigned(self, index, value):  # t[[0, 2]] = v copies the list to the device too
        if isinstance(index, list) or (isinstance(index, tuple) and any(isinstance(i, list) for i in index)):
            counter.counts[(counter.stage, "list_index")] += 1
        return setitem(self, index, value)

    monkeypatch.setattr(torch.Tensor, "__setitem__", assigned)
    try:
        yield counter
    finally:
        monkeypatch.undo()


STAGES = (("drafter", "propose", "drafter.propose"), ("drafter", "commit", "drafter.commit"),
          ("verifier", "verify", "verifier.verify"), ("verifier", "commit", "verifier.commit"),
          ("acceptor", "accept", "acceptor.accept"))


def count_steps(stages, prompt: torch.Tensor, sampling, steps: int, warmup: int = 4, seed: int = 0,
                budget: int = 8, detail: bool = False):
    """Conversions and uploads per stage per step over ``steps`` speculative steps of ``stages`` after ``warmup``
    (per-shape buffers built, first paths seen), from ``prompt`` ``[m]``; ``step`` is speculative_step's glue.
    ``detail``: instead, counts per step by (stage, kind)."""
    from spec.pipelines.step import DecodeState, prefill, speculative_step

    state = DecodeState.start(prompt, steps * (budget + 1) + warmup * (budget + 1) + 8)
    prefill(stages.drafter, stages.verifier, state.sequence)
    generator = torch.Generator().manual_seed(seed)

    def step(counter=None):
        result = speculative_step(stages, state, sampling, generator, budget=budget)
        if counter is None:
            state.extend(list(result.acceptance.new_tokens))
        else:
            with counter.in_stage("state.extend"):
                state.extend(list(result.acceptance.new_tokens))

    for _ in range(warmup):
        step()
    with counting_conversions() as counter:
        for owner, method, stage in STAGES:
            counter.wrap(getattr(stages, owner), method, stage)
        for _ in range(steps):
            with counter.in_stage("step"):
                step(counter)
    if detail:  # (stage, kind) -> count per step
        return {key: count / steps for key, count in sorted(counter.counts.items())}
    return counter.per_stage(steps), counter.per_stage(steps, UPLOADS)
