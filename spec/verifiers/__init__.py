"""Verifiers: run the target model over the cached prefix plus a candidate tree.

``make_verifier(model)`` picks ``FastTreeVerifier`` (static cache, optional compiled step)
for Llama-family models and ``TreeAttentionVerifier`` (any transformers causal LM) otherwise.
"""

from spec.verifiers.auto import VERIFIER_KINDS, make_verifier
from spec.verifiers.fast import FastTreeVerifier
from spec.verifiers.self_draft import SelfDraftState, SelfDraftVerifier
from spec.verifiers.tree_attention import TreeAttentionVerifier

__all__ = ["FastTreeVerifier", "SelfDraftState", "SelfDraftVerifier", "TreeAttentionVerifier", "VERIFIER_KINDS",
           "make_verifier"]
