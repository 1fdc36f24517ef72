"""The four stage protocols. A stage depends on these and on the types, never on another stage.

One step, batch of one (see docs/architecture.md):

    tree = tree_builder.tree()                          # shape of this step
    draft = drafter.propose(tree, context, sampling, g)  # a token per node
    draft = tree_builder.select(draft)                  # static: unchanged; dynamic: pruned
    verification = verifier.verify(draft)               # target logits at every node
    acceptance = acceptor.accept(draft, verification, sampling, g)
    verifier.commit(acceptance.path)                    # keep the accepted path's KV only
    drafter.commit(tokens, hidden_states)               # the drafter's one channel to hidden states

``spec/pipelines/step.py`` runs exactly this, once, for every caller.

Each stage declares what it needs and offers in ``traits`` (spec/protocols/compat.py);
``check_composition`` refuses combinations that cannot work before the first step.
"""

from __future__ import annotations

from typing import Optional, Protocol, runtime_checkable

import torch

from spec.protocols.compat import AcceptorTraits, DrafterTraits, TreeBuilderTraits, VerifierTraits
from spec.protocols.tree import CandidateTree
from spec.protocols.types import Acceptance, Draft, DraftContext, SamplingParams, Verification


@runtime_checkable
class TreeBuilder(Protocol):
    """Chooses the shape of each step's candidate tree."""

    @property
    def traits(self) -> TreeBuilderTraits:
        """Whether ``select`` prunes, and by what."""

    @property
    def max_depth(self) -> int:
        """The deepest tree this builder will ever return."""

    def tree(self) -> CandidateTree:
        """The tree the drafter should fill this step."""

    def select(self, draft: Draft) -> Draft:
        """Prune a filled draft (dynamic trees); a static builder returns it unchanged."""


@runtime_checkable
class Drafter(Protocol):
    """Proposes a token for every node of a tree."""

    @property
    def traits(self) -> DrafterTraits:
        """The candidate kinds it produces, whether its drafts carry confidences and may be pruned."""

    @property
    def max_depth(self) -> int:
        """The deepest tree this drafter can fill (its number of heads, for head drafters)."""

    def reset(self) -> None:
        """Forget all state: a new sequence starts."""

    def propose(
        self,
        tree: CandidateTree,
        context: DraftContext,
        sampling: SamplingParams,
        generator: Optional[torch.Generator],
    ) -> Draft:
        """Fill ``tree`` (or a subtree of it, e.g. on early exit) with candidate tokens.

        ``generator`` is a ``torch.Generator``, None (torch's global RNG) or any
        ``spec.randomness.Randomness``; sampling drafters draw through
        ``spec.randomness.as_randomness(generator)`` so exact tests can enumerate the draws.
        """

    def commit(self, tokens: torch.Tensor, hidden_states: torch.Tensor) -> None:
        """Tokens ``[m]`` now committed to the target's KV cache, with its hidden states ``[m, H]``.

        Called after the prefill and after every step, in sequence order: the drafter's one
        channel to the target's hidden states (the last one committed produced the next root).
        Drafters that read none ignore it.
        """


@runtime_checkable
class Verifier(Protocol):
    """Runs the target model over the cached prefix plus a tree."""

    @property
    def traits(self) -> VerifierTraits:
        """Whether it only verifies drafts of a paired (self-)drafter."""

    @property
    def max_length(self) -> int:
        """Positions ``0 .. max_length - 1`` may be used: the model's context, or less if the verifier's cache is smaller."""

    @property
    def device(self) -> torch.device:
        """Where its logits and hidden states live (the sampler's generator is made there)."""

    @property
    def vocab_size(self) -> int:
        """Columns of its logits: the model's output vocabulary."""

    def reset(self) -> None:
        """Drop the KV cache."""

    def prefill(self, tokens: torch.Tensor) -> torch.Tensor:
        """Cache ``tokens`` ``[m]`` (may be empty); return their hidden states ``[m, H]``."""

    def verify(self, draft: Draft) -> Verification:
        """One forward over root + tree with tree attention, on top of the cache."""

    def commit(self, path: tuple[int, ...]) -> None:
        """Keep the KV entries of the nodes in ``path`` (root first) from the last verify; drop the rest."""


@runtime_checkable
class PrefillsRoot(Protocol):
    """A verifier that can also score the prefill's last token (optional; all of spec's do).

    With it the pipeline caches the whole prompt in one pass and draws the first new token from that pass, as
    autoregressive decoding does; without it the prompt's last token is verified with the first tree, which costs
    a one-new-token generation a second forward pass."""

    def prefill_root(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Cache ``tokens`` ``[m]`` (``m >= 1``); return their hidden states ``[m, H]`` (as ``prefill``) and the
        next-token logits after the last one ``[V]``."""


def prefills_root(verifier: object) -> bool:
    """Whether ``verifier`` implements :class:`PrefillsRoot`. Setting ``prefill_root = None`` on an instance opts it
    out (Python's convention for blocking a protocol method), e.g. to verify the prompt's last token with the first
    tree (``spec.testing.grid`` does, so that every new token of its short generations comes from a tree)."""
    return callable(getattr(verifier, "prefill_root", None))


@runtime_checkable
class Acceptor(Protocol):
    """Decides which path of the verified tree to keep, and samples the bonus token."""

    @property
    def traits(self) -> AcceptorTraits:
        """The candidate kinds its rule is defined for, and whether it is lossless."""

    def accept(
        self,
        draft: Draft,
        verification: Verification,
        sampling: SamplingParams,
        generator: Optional[torch.Generator],
    ) -> Acceptance:
        ...
