"""Verifiers: run the target model over the cached prefix plus a candidate tree.

``make_verifier(model)`` picks ``FastTreeVerifier`` (static cache, optional compiled step)
for Llama-family models and ``TreeAttentionVerifier`` (any transformers causal LM) otherwise.
``SelfDraftVerifier`` (Kangaroo's, paired with its drafter) lives in ``spec.runtime.self_draft``
with the cache it shares, so that the drafter builds it without importing this package.
"""

from spec.runtime import SelfDraftState, SelfDraftVerifier
from spec.verifiers.auto import VERIFIER_KINDS, make_verifier
from spec.verifiers.fast import FastTreeVerifier
from spec.verifiers.tree_attention import TreeAttentionVerifier

__all__ = ["FastTreeVerifier", "SelfDraftState", "SelfDraftVerifier", "TreeAttentionVerifier", "VERIFIER_KINDS",
           "make_verifier"]
