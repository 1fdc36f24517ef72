"""Drafters: propose a candidate token for every node of a tree.

``MedusaDrafter`` (independent heads), ``HydraDrafter`` (heads that read the drafted
path; Hydra++ with options) and ``CloverDrafter`` (regressive attention decoder over
the path, augmenting block) all implement the same ``Drafter`` protocol, so each is
a one-line swap for the others. ``KangarooDrafter`` self-drafts with the model's own
shallow layers and must be paired with its ``SelfDraftVerifier`` (``drafter.verifier``),
the one deliberate coupling between stages: they share the shallow layers' work.
``NGramDrafter`` proposes continuations of earlier occurrences of the context's last
tokens (prompt lookup, as a tree); ``MergedDrafter`` fills one tree from several
drafters by their measured acceptance. ``EagleDrafter`` (EAGLE-1) and ``Eagle3Drafter`` (EAGLE-3)
draft with one decoder layer over (token, feature) pairs and a KV cache of their own; EAGLE-3 reads
three of the target's layers (its verifier reports them: ``traits.features``). Head drafters can draft with
int8 copies of their weights on a CPU (``quantize()``, ``apply_draft_weights``). See docs/drafters.md.
"""

from spec.drafters.blocks import ProjectedResBlock, ResBlock
from spec.drafters.clover import AttentionDecoder, CloverDrafter, CloverHeads
from spec.drafters.draft_vocab import DraftVocabulary
from spec.drafters.draft_weights import DRAFT_WEIGHTS, apply_draft_weights, draft_weights_of
from spec.drafters.eagle import EagleDrafter, EagleHeads
from spec.drafters.eagle3 import Eagle3Drafter, Eagle3Heads
from spec.drafters.hydra import HydraDrafter, HydraHeads
from spec.drafters.kangaroo import KangarooAdapter, KangarooDrafter
from spec.drafters.medusa import MedusaDrafter, MedusaHeads
from spec.drafters.merged import MergedDrafter
from spec.drafters.ngram import NGramDrafter
from spec.runtime import SUPPORTED_ARCHITECTURES, ContextLayerCache, build_decoder_layer

__all__ = [
    "DRAFT_WEIGHTS",
    "SUPPORTED_ARCHITECTURES",
    "AttentionDecoder",
    "CloverDrafter",
    "CloverHeads",
    "ContextLayerCache",
    "DraftVocabulary",
    "Eagle3Drafter",
    "Eagle3Heads",
    "EagleDrafter",
    "EagleHeads",
    "HydraDrafter",
    "HydraHeads",
    "KangarooAdapter",
    "KangarooDrafter",
    "MedusaDrafter",
    "MedusaHeads",
    "MergedDrafter",
    "NGramDrafter",
    "ProjectedResBlock",
    "ResBlock",
    "apply_draft_weights",
    "draft_weights_of",
    "build_decoder_layer",
]
