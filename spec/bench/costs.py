"""The hardware's costs, for sizing trees: seconds per verify pass by tree size, per draft by depth, and
the rest of a step (accepting, committing) for the stages at hand.

They time the stage protocols only (spec/trees/hardware.py turns the curves into a tree size).
"""

from __future__ import annotations

import statistics
import time
from typing import Iterable, Sequence

import torch

from spec.pipelines.step import DecodeState, Stages, prefill, speculative_step
from spec.protocols import CandidateTree, Draft, DraftContext, Drafter, SamplingParams, Verifier
from spec.trees import CostAwareTreeBuilder, StaticTreeBuilder, chain_tree, full_tree


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


def measure_step_overhead(stages: Stages, prompts: Sequence[torch.Tensor], max_new_tokens: int = 32,
                          repeats: int = 2) -> float:
    """Median seconds per step outside the verify pass (drafting, tree building, accepting, both commits)
    for these stages, greedy, over ``prompts`` (``[L]`` each). The first pass over the prompts is a warm-up."""
    overheads = []
    for attempt in range(repeats + 1):
        for prompt in prompts:
            state = DecodeState.start(prompt, max_new_tokens)
            prefill(stages.drafter, stages.verifier, state.sequence)
            while state.num_generated < max_new_tokens:
                start = time.perf_counter()
                step = speculative_step(stages, state, SamplingParams(), None,
                                        budget=max_new_tokens - state.num_generated)
                new = list(step.acceptance.new_tokens)[: max_new_tokens - state.num_generated]
                state.extend(new)
                _sync(stages.verifier.device)
                if attempt:
                    overheads.append(time.perf_counter() - start - step.verify_s)
    stages.verifier.reset()
    stages.drafter.reset()
    return statistics.median(overheads)


def cost_aware_builder(stages: Stages, template: CandidateTree, prompts: Sequence[torch.Tensor],
                       max_new_tokens: int = 32, repeats: int = 2) -> CostAwareTreeBuilder:
    """A ``CostAwareTreeBuilder`` over ``template`` with this machine's costs for these stages' verifier
    and drafter: the verify curve up to the template's size and the per-step overhead with it."""
    top = template.num_nodes
    sizes = sorted({n for n in (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128) if n < top} | {top})
    verify = measure_verify_costs(stages.verifier, sizes, prompts[0], repeats=repeats + 1)
    measuring = Stages(stages.drafter, StaticTreeBuilder(template), stages.verifier, stages.acceptor)
    overhead = measure_step_overhead(measuring, prompts, max_new_tokens, repeats)
    return CostAwareTreeBuilder(template, verify, overhead)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
