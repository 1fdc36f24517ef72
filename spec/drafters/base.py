"""What every head drafter shares: the model it drafts for and a module ``heads`` with one head per depth."""

from __future__ import annotations

from spec.drafters.sampled import CANDIDATE_MODES
from spec.models import ModelFingerprint
from spec.protocols import CandidateKind, DrafterTraits


class HeadDrafter:
    """Base of Medusa, Hydra and Clover: subclasses set ``self.model`` and ``self.heads`` (``heads.heads``
    holds one module per tree depth) and ``self.candidates`` (a key of ``CANDIDATE_MODES``)."""

    candidates: str = "top_k"

    @property
    def traits(self) -> DrafterTraits:
        return DrafterTraits(candidate_kinds={CandidateKind.DETERMINISTIC, CANDIDATE_MODES[self.candidates]},
                             log_confidence=True)

    @property
    def fingerprint(self) -> ModelFingerprint:
        """The base model's fingerprint, read now (so it follows a backbone changed by training)."""
        return ModelFingerprint.of(self.model)

    @property
    def num_parameters(self) -> int:
        """Parameters of the drafter's own module (the model's embeddings and lm_head are not counted)."""
        return sum(p.numel() for p in self.heads.parameters())

    @property
    def num_heads(self) -> int:
        return len(self.heads.heads)

    @property
    def max_depth(self) -> int:
        return self.num_heads
