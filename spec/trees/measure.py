"""Measure a drafter's acceptance statistics on the target model, and the hardware's costs.

Both use the stage protocols only: ``measure_acceptance`` runs its own greedy loop
(prefill, propose on a full tree, verify, follow the target's argmax, commit), so
it needs no acceptor or pipeline; the cost functions time a verifier and a drafter.
"""

from __future__ import annotations

import statistics
import time
from typing import Iterable, Sequence

import torch

from spec.models import ModelFingerprint
from spec.protocols import CandidateTree, Draft, DraftContext, Drafter, SamplingParams, Verifier
from spec.trees.choices import chain_tree, full_tree
from spec.trees.stats import AcceptanceStats


@torch.no_grad()
def measure_acceptance(model, drafter: Drafter, verifier: Verifier, prompts: Sequence[torch.Tensor],
                       depth: int, width: int, max_new_tokens: int = 64, name: str = "") -> AcceptanceStats:
    """Greedy-decode each prompt with a full ``width``-ary tree of ``depth`` and count, for every
    node whose parent was accepted, whether the candidate of each rank was the target's choice."""
    tree = full_tree(depth, width)
    hits = torch.zeros(depth, width, dtype=torch.float64)
    opportunities = torch.zeros(depth, dtype=torch.float64)
    greedy = SamplingParams()
    for prompt in prompts:
        tokens = prompt.flatten().tolist()
        verifier.reset()
        drafter.reset()
        hidden = verifier.prefill(torch.tensor(tokens[:-1]))
        drafter.commit(torch.tensor(tokens[:-1]), hidden)
        prev_hidden = hidden[-1] if hidden.shape[0] else None
        generated = 0
        while generated < max_new_tokens:
            step_tree = tree.truncated(max_new_tokens - generated - 1)
            draft = drafter.propose(step_tree, DraftContext(tokens=torch.tensor(tokens), prev_hidden=prev_hidden),
                                    greedy, None)
            verification = verifier.verify(draft)
            target = verification.logits.argmax(-1).tolist()
            drafted = draft.tokens.tolist()
            node, path = 0, [0]
            while True:
                children = draft.tree.children[node]
                if children:
                    opportunities[draft.tree.depth_list[children[0]] - 1] += 1
                nxt = None
                for child in children:
                    if drafted[child] == target[node]:
                        hits[draft.tree.depth_list[child] - 1, draft.tree.ranks[child]] += 1
                        nxt = nxt if nxt is not None else child
                if nxt is None:
                    break
                node = nxt
                path.append(node)
            verifier.commit(tuple(path))
            drafter.commit(draft.tokens[path], verification.hidden_states[path])
            prev_hidden = verification.hidden_states[path[-1]]
            new = [drafted[n] for n in path[1:]] + [target[path[-1]]]
            tokens.extend(new)
            generated += len(new)
    probs = hits / opportunities.clamp(min=1)[:, None]
    return AcceptanceStats(probs=probs.tolist(), drafter=name or type(drafter).__name__,
                           model=ModelFingerprint.of(model).to_dict(), samples=int(opportunities[0]))


def measure_verify_costs(verifier: Verifier, sizes: Iterable[int], prefix: torch.Tensor,
                         repeats: int = 5) -> dict[int, float]:
    """Median seconds of one verify pass over ``n`` tree tokens (root included) on top of ``prefix``.

    The tree is the root plus ``n - 1`` siblings: the cost depends on the token count, not the shape.
    """
    curve = {}
    device = verifier.model.get_output_embeddings().weight.device
    for n in sizes:
        tree = CandidateTree(parents=[-1] + [0] * (n - 1), ranks=list(range(n)))
        draft = Draft(tree=tree, tokens=torch.zeros(n, dtype=torch.long))
        times = []
        for attempt in range(repeats + 1):
            verifier.reset()
            verifier.prefill(prefix)
            _sync(device)
            start = time.perf_counter()
            verifier.verify(draft)
            _sync(device)
            if attempt:  # the first pass is a warm-up
                times.append(time.perf_counter() - start)
            verifier.commit((0,))
        curve[n] = statistics.median(times)
    return curve


def measure_draft_costs(drafter: Drafter, verifier: Verifier, prefix: torch.Tensor, depths: Iterable[int],
                        width: int = 1, repeats: int = 5) -> dict[int, float]:
    """Median seconds of ``drafter.propose`` for a ``width``-ary tree of each depth.

    The state is rebuilt before every (untimed) call, since self-drafters write into the verifier's state.
    """
    costs = {}
    for depth in depths:
        tree = full_tree(depth, width) if width > 1 else chain_tree(depth)
        times = []
        for attempt in range(repeats + 1):
            verifier.reset()
            drafter.reset()
            hidden = verifier.prefill(prefix[:-1])
            drafter.commit(prefix[:-1], hidden)
            context = DraftContext(tokens=prefix, prev_hidden=hidden[-1] if hidden.shape[0] else None)
            start = time.perf_counter()
            drafter.propose(tree, context, SamplingParams(), None)
            if attempt:
                times.append(time.perf_counter() - start)
        costs[depth] = statistics.median(times)
    verifier.reset()
    drafter.reset()
    return costs


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
