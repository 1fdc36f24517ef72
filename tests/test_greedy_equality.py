"""Greedy speculative decoding is token-identical to the model's own greedy decoding.

Checked against our AutoregressiveDecoder and against transformers' generate, over
hypothesis-generated trees, prompts and drafters, on four architectures in float64.
"""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from spec import (
    GreedyAcceptor,
    MedusaDrafter,
    SpeculativeDecoder,
    StaticTreeBuilder,
    TreeAttentionVerifier,
)
from spec.testing.assertions import assert_same_tokens
from spec.testing.broken import OverAcceptingAcceptor
from spec.testing.drafters import OracleDrafter
from spec.testing.strategies import candidate_trees

from helpers import ARCHS, VOCAB, model, prompt, reference

NEW_TOKENS = 128


def speculative(arch, drafter, tree, acceptor=None):
    m = model(arch)
    return SpeculativeDecoder(m, drafter, StaticTreeBuilder(tree), TreeAttentionVerifier(m), acceptor or GreedyAcceptor())


@pytest.mark.parametrize("arch", ARCHS)
def test_autoregressive_equals_transformers_generate(arch):
    p = prompt(9, seed=1)
    hf = model(arch).generate(p, max_new_tokens=NEW_TOKENS, do_sample=False)
    assert_same_tokens(reference(arch, p, NEW_TOKENS), hf)


@pytest.mark.parametrize("arch", ARCHS)
@given(tree=candidate_trees(max_depth=4), prompt_len=st.integers(1, 24), seed=st.integers(0, 2**16),
       num_layers=st.integers(0, 2))
def test_medusa_greedy_equals_autoregressive(arch, tree, prompt_len, seed, num_layers):
    m = model(arch)
    p = prompt(prompt_len, seed)
    drafter = MedusaDrafter.from_model(m, num_heads=4, num_layers=num_layers, seed=seed)
    # Random ResBlock weights, so heads propose something other than the lm_head's guess.
    with torch.no_grad():
        for param in drafter.heads.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    out = speculative(arch, drafter, tree).generate(p, max_new_tokens=NEW_TOKENS)
    assert_same_tokens(out.sequences, reference(arch, p, NEW_TOKENS))
    assert sum(s.emitted for s in out.steps) == NEW_TOKENS


@pytest.mark.parametrize("arch", ARCHS)
@given(tree=candidate_trees(max_depth=6, max_nodes=30), prompt_len=st.integers(1, 24), seed=st.integers(0, 2**16),
       accuracy=st.floats(0.5, 1.0))
def test_oracle_greedy_equals_autoregressive_and_generate(arch, tree, prompt_len, seed, accuracy):
    """Drafts that are often right: long accepted paths and many KV compactions."""
    m = model(arch)
    p = prompt(prompt_len, seed)
    ref = reference(arch, p, NEW_TOKENS + 8)
    drafter = OracleDrafter(ref, VOCAB, accuracy=accuracy, max_depth=6, seed=seed)
    out = speculative(arch, drafter, tree).generate(p, max_new_tokens=NEW_TOKENS)
    assert_same_tokens(out.sequences, ref[:, : p.shape[1] + NEW_TOKENS])
    assert_same_tokens(out.sequences, m.generate(p, max_new_tokens=NEW_TOKENS, do_sample=False), "vs generate")
    if tree.max_depth >= 2 and accuracy >= 0.6:
        assert out.mean_accepted_length > 1.0, "the oracle's drafts were never accepted"


@pytest.mark.parametrize("arch", ARCHS)
def test_equals_transformers_generate_with_accepted_drafts(arch):
    m = model(arch)
    p = prompt(5, seed=7)
    hf = m.generate(p, max_new_tokens=NEW_TOKENS, do_sample=False)
    tree = StaticTreeBuilder.from_choices([[0], [1], [0, 0], [0, 1], [0, 0, 0], [0, 0, 0, 0]]).tree()
    drafter = OracleDrafter(hf, VOCAB, accuracy=0.8, seed=3)
    out = speculative(arch, drafter, tree).generate(p, max_new_tokens=NEW_TOKENS)
    assert_same_tokens(out.sequences, hf)
    assert out.mean_accepted_length > 2.0


def test_over_accepting_acceptor_is_caught():
    """A wrong acceptor (accepts one candidate too many) makes the equality check fail."""
    arch = "llama"
    p = prompt(6, seed=11)
    ref = reference(arch, p, NEW_TOKENS + 8)
    tree = StaticTreeBuilder.from_choices([[0], [1], [0, 0], [1, 0], [0, 0, 0]]).tree()
    drafter = OracleDrafter(ref, VOCAB, accuracy=0.7, max_depth=3, seed=0)
    broken = speculative(arch, drafter, tree, acceptor=OverAcceptingAcceptor(GreedyAcceptor()))
    out = broken.generate(p, max_new_tokens=NEW_TOKENS)
    with pytest.raises(AssertionError, match="differ at position"):
        assert_same_tokens(out.sequences, ref[:, : p.shape[1] + NEW_TOKENS])


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_eos_stops_exactly_and_budget_is_never_exceeded(arch):
    p = prompt(4, seed=5)
    ref = reference(arch, p, 64)
    continuation = ref[0, p.shape[1]:].tolist()
    eos = continuation[20]
    stop = continuation.index(eos) + 1  # first occurrence
    drafter = OracleDrafter(ref, VOCAB, accuracy=1.0, max_depth=5, seed=0)
    tree = StaticTreeBuilder.from_choices([[0], [0, 0], [0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0, 0]]).tree()
    out = speculative(arch, drafter, tree).generate(p, max_new_tokens=64, eos_token_id=eos)
    assert out.new_tokens.tolist() == continuation[:stop]
    for budget in (1, 2, 7, 13):
        out = speculative(arch, drafter, tree).generate(p, max_new_tokens=budget)
        assert out.new_tokens.tolist() == continuation[:budget]
