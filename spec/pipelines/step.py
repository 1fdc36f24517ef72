"""One speculative step, and the decode state it advances: the only place the four stages meet.

Read top to bottom, a step is (batch of one)::

    tree = tree_builder.tree()                                    # this step's shape
    draft = tree_builder.select(drafter.propose(tree, context))   # a token per node (pruned if dynamic)
    verification = verifier.verify(draft)                         # target logits at every node
    acceptance = acceptor.accept(draft, verification)             # the kept path + bonus token
    verifier.commit(path); drafter.commit(tokens, hidden)         # keep the accepted path only

``generate``, acceptance measurement (spec/bench/acceptance.py) and the drafter contract
tests all run this function, so they cannot drift apart.
"""

from __future__ import annotations

from typing import Optional

import attrs
import torch

from spec.errors import IncompatibleStagesError, InputError
from spec.protocols import (
    Acceptance,
    Acceptor,
    CandidateTree,
    Composition,
    Draft,
    DraftContext,
    Drafter,
    prefills_root,
    SamplingParams,
    TreeBuilder,
    Verification,
    Verifier,
    check_composition,
)
from spec.runtime.paths import path_tensor
from spec.timing import device_clock


@attrs.define
class DecodeState:
    """A sequence being decoded: a token buffer allocated once, and how much of it is filled.

    ``tokens``: ``[capacity]`` int64 on the CPU; ``tokens[:length]`` holds the prompt and every token
    emitted so far, the next root last. Steps append in place, as gpt-fast's cache does, instead of
    rebuilding a tensor per step.
    """

    tokens: torch.Tensor
    length: int
    prompt_length: int

    @classmethod
    def start(cls, prompt: torch.Tensor, max_new_tokens: int) -> "DecodeState":
        """``prompt`` ``[L]`` (L >= 1) with room for ``max_new_tokens`` more."""
        if prompt.dim() != 1 or prompt.numel() == 0:
            raise InputError(f"A decode starts from a non-empty 1-D prompt, got shape {tuple(prompt.shape)}.")
        tokens = torch.empty(prompt.numel() + max_new_tokens, dtype=torch.long)
        tokens[: prompt.numel()] = prompt
        return cls(tokens=tokens, length=prompt.numel(), prompt_length=prompt.numel())

    @property
    def sequence(self) -> torch.Tensor:
        """``[length]``: the prompt and the emitted tokens, the next root last (a view: no copy)."""
        return self.tokens[: self.length]

    @property
    def num_generated(self) -> int:
        return self.length - self.prompt_length

    @property
    def room(self) -> int:
        """How many more tokens fit in the buffer."""
        return self.tokens.numel() - self.length

    def generated(self) -> list[int]:
        return self.tokens[self.prompt_length: self.length].tolist()

    def extend(self, new_tokens: list[int]) -> None:
        if len(new_tokens) > self.room:
            raise InputError(f"{len(new_tokens)} tokens do not fit: the buffer has room for {self.room}.")
        self.tokens[self.length: self.length + len(new_tokens)] = torch.tensor(new_tokens, dtype=torch.long)
        self.length += len(new_tokens)


@attrs.frozen
class Stages:
    """The four stages of a speculative decoder, checked to compose (spec/protocols/compat.py)."""

    drafter: Drafter
    tree_builder: TreeBuilder
    verifier: Verifier
    acceptor: Acceptor
    composition: Composition = attrs.field(init=False)

    @composition.default
    def _check(self) -> Composition:
        # Refuses combinations that cannot work, before the first step.
        return check_composition(self.drafter, self.tree_builder, self.verifier, self.acceptor)


@attrs.frozen
class StepResult:
    """What one step drafted, verified and kept, and the seconds each part took."""

    draft: Draft
    verification: Verification
    acceptance: Acceptance
    draft_s: float
    verify_s: float
    accept_s: float
    commit_s: float


def prefill(drafter: Drafter, verifier: Verifier, sequence: torch.Tensor) -> None:
    """Start ``sequence`` ``[L]``: cache every token but the root (the last), which is verified with the first tree."""
    verifier.reset()
    drafter.reset()
    cached = sequence[:-1]
    drafter.commit(cached, verifier.prefill(cached))


def prefill_scoring_root(drafter: Drafter, verifier: Verifier, sequence: torch.Tensor) -> Optional[Verification]:
    """Start ``sequence`` ``[L]`` in one pass where the verifier can (``PrefillsRoot``): cache every token and
    return the verification of the root-only tree at the last one (its logits ``[1, V]``), from which
    :func:`first_token` draws the first new token; that token is the next root. Otherwise :func:`prefill`, and None."""
    if not prefills_root(verifier):
        prefill(drafter, verifier, sequence)
        return None
    verifier.reset()
    drafter.reset()
    hidden, logits = verifier.prefill_root(sequence)
    drafter.commit(sequence, hidden)
    return Verification(tree=CandidateTree.root_only(), logits=logits[None], hidden_states=hidden[-1:])


def first_token(stages: Stages, state: DecodeState, verification: Verification, sampling: SamplingParams,
                generator: Optional[torch.Generator]) -> StepResult:
    """The acceptor's bonus token for the root-only tree the prefill scored (no draft, no verify pass, nothing to
    commit: the prefill cached the root): the first new token, drawn as every later bonus token is."""
    device = verification.logits.device
    t0 = device_clock(device)
    draft = Draft(tree=verification.tree, tokens=state.sequence[-1:].to(device), log_confidence=torch.zeros(1, device=device))
    acceptance = stages.acceptor.accept(draft, verification, sampling, generator)
    return StepResult(draft=draft, verification=verification, acceptance=acceptance, draft_s=0.0, verify_s=0.0,
                      accept_s=device_clock(device) - t0, commit_s=0.0)


def speculative_step(stages: Stages, state: DecodeState, sampling: SamplingParams,
                     generator: Optional[torch.Generator], budget: int) -> StepResult:
    """Draft, verify, accept and commit once; ``budget`` (>= 1) caps the tokens this step may yield.

    The caller appends ``acceptance.new_tokens`` (or the prefix it keeps) to ``state``.
    """
    device = stages.verifier.device
    t0 = device_clock(device)  # on CUDA each boundary waits for the stage's kernels (spec.timing.device_clock)
    # A step yields at most depth + 1 tokens; drafting deeper than the budget is wasted work.
    tree = stages.tree_builder.tree().truncated(budget - 1)
    draft = stages.tree_builder.select(stages.drafter.propose(tree, DraftContext(tokens=state.sequence), sampling,
                                                              generator))
    if draft.kind not in stages.composition.candidate_kinds:
        raise IncompatibleStagesError(
            f"{type(stages.drafter).__name__} returned {draft.kind.value} candidates but its traits declare "
            f"only {sorted(k.value for k in stages.drafter.traits.candidate_kinds)}; fix its traits.")
    t1 = device_clock(device)
    verification = stages.verifier.verify(draft)
    t2 = device_clock(device)
    acceptance = stages.acceptor.accept(draft, verification, sampling, generator)
    t3 = device_clock(device)
    stages.verifier.commit(acceptance.path)
    hidden = verification.hidden_states
    stages.drafter.commit(draft.tokens.index_select(0, path_tensor(acceptance.path, draft.tokens.device)),
                          hidden.index_select(0, path_tensor(acceptance.path, hidden.device)))
    return StepResult(draft=draft, verification=verification, acceptance=acceptance, draft_s=t1 - t0,
                      verify_s=t2 - t1, accept_s=t3 - t2, commit_s=device_clock(device) - t3)
