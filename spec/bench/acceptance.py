"""How often a drafter's candidates are the target's choice, by depth and rank: the decoder plus a recorder.

``measure_acceptance`` greedy-decodes with a full ``width``-ary tree through the ordinary
``SpeculativeDecoder``; a :class:`RecordingAcceptor` wrapped around the greedy acceptor counts,
for every node on the accepted path, whether each child was the target's choice. The tree
optimiser (spec/trees/optimize.py) turns those rates into trees.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from spec.acceptors import GreedyAcceptor
from spec.models import ModelFingerprint
from spec.pipelines import SpeculativeDecoder
from spec.protocols import Acceptance, Acceptor, AcceptorTraits, Draft, Drafter, SamplingParams, Verification, Verifier
from spec.trees import AcceptanceStats, StaticTreeBuilder, full_tree


class RecordingAcceptor:
    """Accepts as ``inner`` does, and records which ranks at which depths matched the target's argmax.

    ``hits``: ``[depth, width]``, children of an on-path node whose token was the target's choice there;
    ``opportunities``: ``[depth]``, on-path nodes with children at that depth.
    """

    def __init__(self, inner: Acceptor, depth: int, width: int) -> None:
        self.inner = inner
        self.hits = torch.zeros(depth, width, dtype=torch.float64)
        self.opportunities = torch.zeros(depth, dtype=torch.float64)

    @property
    def traits(self) -> AcceptorTraits:
        return self.inner.traits

    def accept(self, draft: Draft, verification: Verification, sampling: SamplingParams,
               generator: Optional[torch.Generator]) -> Acceptance:
        acceptance = self.inner.accept(draft, verification, sampling, generator)
        target = verification.logits.argmax(-1).tolist()
        drafted = draft.tokens.tolist()
        tree = draft.tree
        for node in acceptance.path:
            children = tree.children[node]
            if not children:
                continue
            depth = tree.depth_list[children[0]] - 1
            self.opportunities[depth] += 1
            for child in children:
                if drafted[child] == target[node]:
                    self.hits[depth, tree.ranks[child]] += 1
        return acceptance

    @property
    def probs(self) -> torch.Tensor:
        """``[depth, width]`` acceptance rate of each rank given its parent was accepted."""
        return self.hits / self.opportunities.clamp(min=1)[:, None]


@torch.no_grad()
def measure_acceptance(model, drafter: Drafter, verifier: Verifier, prompts: Sequence[torch.Tensor],
                       depth: int, width: int, max_new_tokens: int = 64, name: str = "") -> AcceptanceStats:
    """Greedy-decode each prompt with a full ``width``-ary tree of ``depth``; per-depth, per-rank acceptance."""
    recorder = RecordingAcceptor(GreedyAcceptor(), depth, width)
    decoder = SpeculativeDecoder(model, drafter, StaticTreeBuilder(full_tree(depth, width)), verifier, recorder)
    for prompt in prompts:
        decoder.generate(prompt.reshape(1, -1), max_new_tokens=max_new_tokens)
    return AcceptanceStats(probs=recorder.probs.tolist(), drafter=name or type(drafter).__name__,
                           model=ModelFingerprint.of(model).to_dict(), samples=int(recorder.opportunities[0]))
