"""A tree builder that returns the same tree every step."""

from __future__ import annotations

from typing import Sequence

import attrs

from spec.protocols import CandidateTree, Draft, TreeBuilderTraits
from spec.trees.choices import tree_from_choices


@attrs.frozen
class StaticTreeBuilder:
    """Always the same ``tree``; ``select`` keeps the draft as it is."""

    fixed_tree: CandidateTree = attrs.field(validator=attrs.validators.instance_of(CandidateTree))
    traits = TreeBuilderTraits()  # never prunes: any drafter, any candidate kind

    @classmethod
    def from_choices(cls, choices: Sequence[Sequence[int]]) -> "StaticTreeBuilder":
        return cls(tree_from_choices(choices))

    @property
    def max_depth(self) -> int:
        return self.fixed_tree.max_depth

    def tree(self) -> CandidateTree:
        return self.fixed_tree

    def select(self, draft: Draft) -> Draft:
        return draft
