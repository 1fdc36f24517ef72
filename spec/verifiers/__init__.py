"""Verifiers: run the target model over the cached prefix plus a candidate tree."""

from spec.verifiers.tree_attention import TreeAttentionVerifier

__all__ = ["TreeAttentionVerifier"]
