"""Candidate trees: construction, interchange formats and tree builders."""

from spec.protocols.tree import CandidateTree
from spec.trees.choices import chain_tree, full_tree, tree_from_choices, tree_to_choices
from spec.trees.static import StaticTreeBuilder

__all__ = ["CandidateTree", "StaticTreeBuilder", "chain_tree", "full_tree", "tree_from_choices", "tree_to_choices"]
