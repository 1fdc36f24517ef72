"""What every head drafter shares: the model it drafts for and a module ``heads`` with one head per depth."""

from __future__ import annotations

from typing import Optional

from spec.drafters.draft_vocab import DraftVocabulary
from spec.drafters.sampled import CANDIDATE_MODES
from spec.errors import IncompatibleDrafterError
from spec.models import ModelFingerprint, output_vocab_size
from spec.protocols import CandidateKind, DrafterTraits


class HeadDrafter:
    """Base of Medusa, Hydra and Clover: subclasses set ``self.model`` and ``self.heads`` (``heads.heads``
    holds one module per tree depth) and ``self.candidates`` (a key of ``CANDIDATE_MODES``)."""

    candidates: str = "top_k"
    draft_vocab: Optional[DraftVocabulary] = None

    def use_draft_vocab(self, vocab: Optional[DraftVocabulary]):
        """Project the heads onto ``vocab``'s tokens only (None: the whole vocabulary again). Returns self."""
        if vocab is not None:
            if vocab.vocab_size != output_vocab_size(self.model):
                raise IncompatibleDrafterError(
                    f"This draft vocabulary indexes a {vocab.vocab_size}-token vocabulary but the model has "
                    f"{output_vocab_size(self.model)}; build it from this model's token counts.")
        self.draft_vocab = vocab
        return self

    @property
    def draft_vocab_size(self) -> int:
        return output_vocab_size(self.model) if self.draft_vocab is None else self.draft_vocab.size

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
