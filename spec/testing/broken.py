"""A wrapper that breaks any acceptor, to prove a test catches an acceptor that accepts too much.

The mutants (each an honest stage with one classic bug) are in ``spec.testing.mutants``.
"""

from __future__ import annotations

from typing import Optional

import torch

from spec.protocols import Acceptance, Acceptor, AcceptorTraits, Draft, SamplingParams, Verification


class OverAcceptingAcceptor:
    """Wraps an acceptor and also accepts the first child of its last accepted node, right or wrong."""

    def __init__(self, inner: Acceptor) -> None:
        self.inner = inner
        self.traits = AcceptorTraits(candidate_kinds=inner.traits.candidate_kinds, lossless=False)  # by design

    def accept(self, draft: Draft, verification: Verification, sampling: SamplingParams,
               generator: Optional[torch.Generator] = None) -> Acceptance:
        honest = self.inner.accept(draft, verification, sampling, generator)
        children = draft.tree.children[honest.path[-1]]
        if not children:
            return honest
        extra = children[0]
        return Acceptance(
            path=honest.path + (extra,),
            tokens=honest.tokens + (int(draft.tokens[extra]),),
            bonus_token=int(verification.logits[extra].argmax()),
        )
