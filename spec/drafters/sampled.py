"""Draw a node's children from a draft distribution instead of taking its top-k.

Sampled candidates make rejection sampling accept more often at high temperature,
but the acceptor must then know each token's draft distribution ``q``: drafters
record, for every child, the ``q`` of its parent it was drawn from
(``Draft.draft_probs``), and the kind of draw (``Draft.kind``).
"""

from __future__ import annotations

from typing import Optional

import attrs
import torch

from spec.errors import ConfigurationError
from spec.protocols import CandidateKind, SamplingParams
from spec.randomness import Randomness, as_randomness
from spec.sampling import processed_logits

#: How a head drafter chooses candidates when sampling (temperature > 0); greedy decoding always takes the top-k.
CANDIDATE_MODES = {
    "top_k": CandidateKind.DETERMINISTIC,
    "sample_without_replacement": CandidateKind.SAMPLED_WITHOUT_REPLACEMENT,
    "sample_with_replacement": CandidateKind.SAMPLED_WITH_REPLACEMENT,
}


def check_candidate_mode(candidates: str, what: str) -> str:
    if candidates not in CANDIDATE_MODES:
        raise ConfigurationError(f"{what}: candidates must be one of {sorted(CANDIDATE_MODES)}, got {candidates!r}.")
    return candidates


@attrs.frozen(eq=False)
class CandidateSampling:
    """How this step's children are drawn: ``kind`` (a sampled kind), from ``softmax(logits / temperature)``."""

    kind: CandidateKind
    temperature: float
    randomness: Randomness

    def draft_distribution(self, logits: torch.Tensor) -> torch.Tensor:
        """``[..., V]`` float64 ``q``. Temperature only (no top-k/top-p): q keeps full support, so every
        sibling can be drawn and every token the target might want can be proposed."""
        return processed_logits(logits.double(), SamplingParams(temperature=self.temperature)).softmax(-1)


def candidate_sampling(candidates: str, sampling: SamplingParams, generator) -> Optional[CandidateSampling]:
    """The sampled draw this step uses, or None for top-k candidates (greedy decoding, or ``"top_k"``)."""
    kind = CANDIDATE_MODES[candidates]
    if kind is CandidateKind.DETERMINISTIC or sampling.is_greedy:
        return None
    return CandidateSampling(kind, sampling.temperature, as_randomness(generator))


def draw_siblings(q: torch.Tensor, count: int, kind: CandidateKind, randomness: Randomness) -> list[Optional[int]]:
    """``count`` children drawn in rank order from ``q`` ``[V]``; without replacement each draw excludes
    the earlier ones, and a child that can no longer be drawn (q exhausted) is None."""
    drawn: list[Optional[int]] = []
    for _ in range(count):
        if kind is CandidateKind.SAMPLED_WITHOUT_REPLACEMENT and not bool((q > 0).any()):
            drawn.append(None)
            continue
        token = randomness.categorical(q)
        drawn.append(token)
        if kind is CandidateKind.SAMPLED_WITHOUT_REPLACEMENT:
            q = q.clone()
            q[token] = 0.0
    return drawn
