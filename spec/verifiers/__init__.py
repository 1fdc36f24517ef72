"""Verifiers: run the target model over the cached prefix plus a candidate tree."""

from spec.verifiers.self_draft import SelfDraftState, SelfDraftVerifier
from spec.verifiers.tree_attention import TreeAttentionVerifier

__all__ = ["SelfDraftState", "SelfDraftVerifier", "TreeAttentionVerifier"]
