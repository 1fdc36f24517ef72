"""Choose a head drafter's reduced draft vocabulary by measurement: the smallest that accepts as much.

Coverage of text is the wrong yardstick: on the shipped model the 512 most frequent tokens cover
only 74% of held-out tokens, yet the heads' mean accepted length is unchanged with them, because
the tokens heads get right are the frequent ones. So each candidate size is measured by what it
is for: greedy decoding of held-out prompts with the drafter's tree, counting tokens accepted per
step (a count, independent of timing noise).
"""

from __future__ import annotations

from typing import Sequence

import attrs
import torch

from spec.acceptors import GreedyAcceptor
from spec.bench.metrics import mean_accepted_tokens
from spec.drafters.draft_vocab import DraftVocabulary
from spec.errors import ConfigurationError
from spec.models import output_vocab_size
from spec.pipelines import SpeculativeDecoder
from spec.protocols import CandidateTree
from spec.trees import StaticTreeBuilder
from spec.verifiers import make_verifier


@attrs.frozen
class VocabChoice:
    vocab: DraftVocabulary | None  # None: the whole vocabulary was needed
    #: (size, mean accepted length) per size tried; size = the model's vocabulary for the unreduced heads.
    table: tuple[tuple[int, float], ...]


def mean_accepted(model, drafter, tree: CandidateTree, prompts: Sequence[torch.Tensor], max_new_tokens: int) -> float:
    decoder = SpeculativeDecoder(model, drafter, StaticTreeBuilder(tree), make_verifier(model), GreedyAcceptor())
    return mean_accepted_tokens([decoder.generate(prompt, max_new_tokens=max_new_tokens) for prompt in prompts])


def choose_draft_vocab(model, drafter, tree: CandidateTree, prompts: Sequence[torch.Tensor],
                       counted: Sequence[Sequence[int] | torch.Tensor], sizes: Sequence[int] = (256, 512, 1024, 2048),
                       tolerance: float = 0.01, max_new_tokens: int = 48) -> VocabChoice:
    """The smallest of ``sizes`` (most frequent tokens of ``counted``, the training data) whose mean accepted
    length on ``prompts`` (``[1, L]`` each, held out) is within ``tolerance`` (relative) of the unreduced
    heads'. The drafter is left with the choice applied."""
    if not 0 <= tolerance < 1:
        raise ConfigurationError(f"tolerance must be in [0, 1), got {tolerance!r}.")
    drafter.use_draft_vocab(None)
    vocab_size = output_vocab_size(model)
    full = mean_accepted(model, drafter, tree, prompts, max_new_tokens)
    table = [(vocab_size, full)]
    chosen = None
    for size in sorted(k for k in sizes if 1 <= k < vocab_size):
        vocab = DraftVocabulary.from_corpus(counted, vocab_size, size)
        length = mean_accepted(model, drafter.use_draft_vocab(vocab), tree, prompts, max_new_tokens)
        table.append((size, length))
        if length >= full * (1 - tolerance):
            chosen = vocab
            break
    drafter.use_draft_vocab(chosen)
    return VocabChoice(vocab=chosen, table=tuple(table))
