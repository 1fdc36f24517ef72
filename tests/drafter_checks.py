"""Checks shared by the tests of drafters whose heads read the drafted path (Hydra, Clover)."""

from __future__ import annotations

from typing import Optional

import torch

from spec import (
    CandidateTree,
    Draft,
    DraftContext,
    GreedyAcceptor,
    SamplingParams,
    SpeculativeDecoder,
    StaticTreeBuilder,
    TreeAttentionVerifier,
)
from spec.testing.assertions import assert_same_tokens
from spec.testing.drafters import OracleDrafter
from spec.trees import tree_from_choices

from helpers import VOCAB, model, prompt, reference


#: Two depth-1 candidates, each with three depth-2 children: nodes 3-5 hang under node 1, 6-8 under node 2.
TWO_BRANCHES = tree_from_choices([[0], [1], [0, 0], [0, 1], [0, 2], [1, 0], [1, 1], [1, 2]])


def perturb(module: torch.nn.Module, scale: float = 0.05, seed: int = 0) -> None:
    """Add seeded noise to every weight, so untrained heads propose something other than the lm_head's guess."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.add_(torch.randn(param.shape, generator=generator, dtype=param.dtype) * scale)


def speculative(arch: str, drafter, tree: CandidateTree, acceptor=None) -> SpeculativeDecoder:
    m = model(arch)
    return SpeculativeDecoder(m, drafter, StaticTreeBuilder(tree), TreeAttentionVerifier(m),
                              acceptor or GreedyAcceptor())


def assert_greedy_equal(arch: str, drafter, tree: CandidateTree, prompt_ids: torch.Tensor, new_tokens: int) -> None:
    out = speculative(arch, drafter, tree).generate(prompt_ids, max_new_tokens=new_tokens)
    assert_same_tokens(out.sequences, reference(arch, prompt_ids, new_tokens))
    assert sum(s.emitted for s in out.steps) == new_tokens


def hidden_before_root(arch: str, tokens: torch.Tensor) -> torch.Tensor:
    """``[H]``: the target's last hidden state at the position before the root (the one that produced it)."""
    with torch.no_grad():
        return model(arch)(tokens[:-1][None], output_hidden_states=True).hidden_states[-1][0, -1]


def primed_context(drafter, arch: str, tokens: torch.Tensor) -> DraftContext:
    """Reset ``drafter``, commit ``tokens[:-1]`` with the target's hidden states, and return the context."""
    with torch.no_grad():
        hidden = model(arch)(tokens[:-1][None], output_hidden_states=True).hidden_states[-1][0]
    drafter.reset()
    drafter.commit(tokens[:-1], hidden)
    return DraftContext(tokens=tokens)


def depth_two_proposals(drafter, arch: str, tokens: torch.Tensor) -> tuple[tuple, tuple]:
    """Head 2's proposals under the top-1 and under the top-2 depth-1 candidate:
    each a pair (its top-3 tokens, their log-probabilities given the path)."""
    draft = drafter.propose(TWO_BRANCHES, primed_context(drafter, arch, tokens), SamplingParams())
    assert draft.tokens[1] != draft.tokens[2]
    conf = draft.log_confidence
    return ((draft.tokens[3:6].tolist(), conf[3:6] - conf[1]), (draft.tokens[6:9].tolist(), conf[6:9] - conf[2]))


def assert_head_two_reads_depth_one(drafter, arch: str, tokens: torch.Tensor, sequential: bool = True) -> None:
    """Head 2's proposal changes with the depth-1 token above it when ``sequential``; is identical otherwise."""
    (tokens_a, logprobs_a), (tokens_b, logprobs_b) = depth_two_proposals(drafter, arch, tokens)
    if sequential:
        assert tokens_a != tokens_b
        assert not torch.allclose(logprobs_a, logprobs_b)
    else:
        assert tokens_a == tokens_b
        torch.testing.assert_close(logprobs_a, logprobs_b, rtol=0, atol=1e-6)  # float32 cumulative sums


class RecordingDrafter:
    """Lets ``inner`` draft and keep its caches, but hands the pipeline an oracle's draft.

    Random heads are almost never accepted, so with them alone every step would
    commit the root only. The oracle's drafts are often right, so the pipeline
    commits long accepted paths to ``inner`` as well; what ``inner`` proposed at each
    step is recorded to compare with a fresh drafter afterwards.
    """

    def __init__(self, inner, oracle: OracleDrafter) -> None:
        self.inner, self.oracle = inner, oracle
        self.proposals: list[tuple[CandidateTree, DraftContext, Draft]] = []
        self.commits: list[tuple[torch.Tensor, torch.Tensor]] = []

    @property
    def max_depth(self) -> int:
        return min(self.inner.max_depth, self.oracle.max_depth)

    @property
    def traits(self):
        return self.oracle.traits  # the oracle's drafts are what the pipeline sees

    def reset(self) -> None:
        self.inner.reset()
        self.proposals.clear()
        self.commits.clear()

    def commit(self, tokens: torch.Tensor, hidden_states: torch.Tensor) -> None:
        self.inner.commit(tokens, hidden_states)
        self.commits.append((tokens.clone(), hidden_states.clone()))

    def propose(self, tree, context, sampling, generator: Optional[torch.Generator] = None):
        mine = self.inner.propose(tree, context, sampling, generator)
        if context.position > 0:  # else a root-only draft (one-token prompt): nothing to compare
            self.proposals.append((tree, context, mine))
        return self.oracle.propose(tree, context, sampling, generator)


def assert_caches_stay_consistent(arch: str, drafter, tree: CandidateTree, new_tokens: int = 64,
                                  prompt_len: int = 5, seed: int = 3) -> None:
    """After many steps with accepted paths, ``drafter`` proposes what a fresh drafter primed with the
    same committed prefix in one go proposes, at every step."""
    m = model(arch)
    p = prompt(prompt_len, seed)
    ref = reference(arch, p, new_tokens + 8)
    recorder = RecordingDrafter(drafter, OracleDrafter(ref, VOCAB, accuracy=0.9, max_depth=tree.max_depth, seed=seed))
    out = speculative(arch, recorder, tree).generate(p, max_new_tokens=new_tokens)
    assert_same_tokens(out.sequences, ref[:, : prompt_len + new_tokens])
    assert max(tokens.shape[0] for tokens, _ in recorder.commits[1:]) > 2, "no step committed an accepted path"
    assert len(recorder.proposals) > 10

    committed_hidden = torch.cat([hidden for _, hidden in recorder.commits])
    fresh = type(drafter)(m, drafter.heads)  # same weights, empty caches
    for step_tree, context, draft in recorder.proposals:
        fresh.reset()
        fresh.commit(context.tokens[:-1], committed_hidden[: context.position])
        again = fresh.propose(step_tree, context, SamplingParams())
        assert again.tokens.tolist() == draft.tokens.tolist(), f"proposals differ at position {context.position}"
        torch.testing.assert_close(again.log_confidence, draft.log_confidence, rtol=1e-9, atol=1e-9)

    # And from the target's own hidden states over the final prefix, computed in one plain forward pass.
    step_tree, context, draft = recorder.proposals[-1]
    again = fresh.propose(step_tree, primed_context(fresh, arch, context.tokens), SamplingParams())
    assert again.tokens.tolist() == draft.tokens.tolist()
