"""A drafter that knows the answer: it proposes a known greedy continuation with a given accuracy.

Random heads on random models are almost never accepted. This drafter makes long accepted paths happen on
any model whose greedy continuation is known, so the decoder's mechanics (KV compaction, long commits) can
be shown and tested without trained heads: the tests use it, and so does ``spec demo --random-model``.
"""

from __future__ import annotations

from typing import Optional

import torch

from spec.protocols import CandidateKind, CandidateTree, Draft, DraftContext, DrafterTraits, SamplingParams


class OracleDrafter:
    """Knows the target's greedy continuation and proposes it with probability ``accuracy``.

    Random heads on random models are almost never accepted, which would leave long
    accepted paths and KV compaction untested. At every node whose path so far is
    the true continuation, this drafter puts the true next token on one child chosen
    at random (with probability ``accuracy``) and tokens that are certainly wrong on
    the others. ``reference`` is the full greedy sequence (prompt + continuation).
    """

    traits = DrafterTraits(candidate_kinds={CandidateKind.DETERMINISTIC})

    def __init__(self, reference: torch.Tensor, vocab_size: int, accuracy: float = 0.7,
                 max_depth: int = 8, seed: int = 0) -> None:
        self.reference = reference.flatten().tolist()
        self.vocab_size = vocab_size
        self.accuracy = accuracy
        self._max_depth = max_depth
        self._rng = torch.Generator().manual_seed(seed)

    @property
    def max_depth(self) -> int:
        return self._max_depth

    def reset(self) -> None:
        pass

    def commit(self, tokens: torch.Tensor, hidden_states: torch.Tensor) -> None:
        pass

    def _wrong_token(self, truth: Optional[int]) -> int:
        token = int(torch.randint(self.vocab_size, (1,), generator=self._rng))
        if token == truth:
            token = (token + 1) % self.vocab_size
        return token

    def propose(self, tree: CandidateTree, context: DraftContext, sampling: SamplingParams,
                generator: Optional[torch.Generator] = None) -> Draft:
        position = context.position
        on_track = context.tokens.tolist() == self.reference[: position + 1]
        tokens = [context.root_token]
        correct = [on_track]  # node i's path equals the reference so far
        chosen_child: dict[int, Optional[int]] = {}
        for node in range(1, tree.num_nodes):
            parent = tree.parents[node]
            depth = tree.depth_list[node]
            truth_index = position + depth
            truth = self.reference[truth_index] if truth_index < len(self.reference) else None
            if parent not in chosen_child:
                siblings = tree.children[parent]
                hit = correct[parent] and truth is not None and float(torch.rand(1, generator=self._rng)) < self.accuracy
                pick = int(torch.randint(len(siblings), (1,), generator=self._rng))
                chosen_child[parent] = siblings[pick] if hit else None
            if chosen_child[parent] == node:
                tokens.append(truth)
                correct.append(True)
            else:
                tokens.append(self._wrong_token(truth if correct[parent] else None))
                correct.append(False)
        return Draft(tree=tree, tokens=torch.tensor(tokens, dtype=torch.long), kind=CandidateKind.DETERMINISTIC)
