"""The hardware's costs, for sizing trees: seconds per verify pass by tree size, and per draft by depth.

Both time the stage protocols only (spec/trees/hardware.py turns the curves into a tree size).
"""

from __future__ import annotations

import statistics
import time
from typing import Iterable

import torch

from spec.pipelines.step import prefill
from spec.protocols import CandidateTree, Draft, DraftContext, Drafter, SamplingParams, Verifier
from spec.trees import chain_tree, full_tree


def measure_verify_costs(verifier: Verifier, sizes: Iterable[int], prefix: torch.Tensor,
                         repeats: int = 5) -> dict[int, float]:
    """Median seconds of one verify pass over ``n`` tree tokens (root included) on top of ``prefix``.

    The tree is the root plus ``n - 1`` siblings: the cost depends on the token count, not the shape.
    """
    curve = {}
    for n in sizes:
        tree = CandidateTree(parents=[-1] + [0] * (n - 1), ranks=list(range(n)))
        draft = Draft(tree=tree, tokens=torch.zeros(n, dtype=torch.long))
        times = []
        for attempt in range(repeats + 1):
            verifier.reset()
            verifier.prefill(prefix)
            _sync(verifier.device)
            start = time.perf_counter()
            verifier.verify(draft)
            _sync(verifier.device)
            if attempt:  # the first pass is a warm-up
                times.append(time.perf_counter() - start)
            verifier.commit((0,))
        curve[n] = statistics.median(times)
    return curve


def measure_draft_costs(drafter: Drafter, verifier: Verifier, prefix: torch.Tensor, depths: Iterable[int],
                        width: int = 1, repeats: int = 5) -> dict[int, float]:
    """Median seconds of ``drafter.propose`` for a ``width``-ary tree of each depth.

    The state is rebuilt before every (untimed) call, since self-drafters share the verifier's cache.
    """
    costs = {}
    for depth in depths:
        tree = full_tree(depth, width) if width > 1 else chain_tree(depth)
        times = []
        for attempt in range(repeats + 1):
            prefill(drafter, verifier, prefix)
            start = time.perf_counter()
            drafter.propose(tree, DraftContext(tokens=prefix), SamplingParams(), None)
            if attempt:
                times.append(time.perf_counter() - start)
        costs[depth] = statistics.median(times)
    verifier.reset()
    drafter.reset()
    return costs


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
