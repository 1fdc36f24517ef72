"""Clover heads: structure, sequential dependence, greedy equality, augmenting-block cache, checkpoints."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from spec import CloverDrafter, SamplingParams
from spec.errors import UnsupportedError
from spec.testing.strategies import candidate_trees
from spec.trees import tree_from_choices

from drafter_checks import (
    TWO_BRANCHES,
    assert_caches_stay_consistent,
    assert_greedy_equal,
    assert_head_two_reads_depth_one,
    hidden_before_root,
    perturb,
    primed_context,
)
from helpers import model, prompt

NEW_TOKENS = 64
H, V = 32, 96


def clover(arch: str, seed: int = 0, num_heads: int = 4, scale: float = 0.05) -> CloverDrafter:
    drafter = CloverDrafter.from_model(model(arch), num_heads=num_heads, seed=seed)
    perturb(drafter.heads, scale=scale, seed=seed)
    return drafter


def test_untrained_heads_rank_tokens_as_the_lm_head():
    """Zero-initialised output projections: every head reads h itself, and the frozen lm_head ranks."""
    m = model("llama")
    drafter = CloverDrafter.from_model(m, num_heads=3, num_layers=0)
    tree = tree_from_choices([[0], [1], [0, 0], [1, 0], [0, 0, 0]])
    tokens = prompt(9, seed=4)[0]
    context = primed_context(drafter, "llama", tokens)
    draft = drafter.propose(tree, context, SamplingParams())
    top = m.get_output_embeddings()(hidden_before_root("llama", tokens)).topk(2).indices.tolist()
    assert draft.tokens.tolist() == [tokens[-1], top[0], top[1], top[0], top[0], top[0]]


def test_parameter_counts_exclude_the_frozen_lm_head():
    m = model("llama")
    heads, layers = 3, 2
    decoder_layer = sum(p.numel() for p in m.model.layers[0].parameters())
    attention_decoder = 2 * H + 4 * H * H  # two norms, q/k/v/o
    per_head = layers * (H * H + H) + H  # ResBlocks + norm; no vocabulary projection
    drafter = CloverDrafter.from_model(m, num_heads=heads, num_layers=layers)
    assert drafter.num_parameters == decoder_layer + attention_decoder + heads * per_head
    owned = {p.data_ptr() for p in drafter.heads.parameters()}
    assert all(p.data_ptr() not in owned for p in m.parameters())


def test_head_two_depends_on_the_depth_one_token():
    tokens = prompt(8, seed=2)[0]
    drafter = clover("llama", seed=1, scale=0.1)
    assert_head_two_reads_depth_one(drafter, "llama", tokens)
    # Through the regressive connection head 1 reads the root.
    other_root = tokens.clone()
    other_root[-1] = (other_root[-1] + 1) % V
    a = drafter.propose(TWO_BRANCHES, primed_context(drafter, "llama", tokens), SamplingParams())
    b = drafter.propose(TWO_BRANCHES, primed_context(drafter, "llama", other_root), SamplingParams())
    assert not torch.allclose(a.log_confidence[1:3], b.log_confidence[1:3])


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@settings(max_examples=8)
@given(tree=candidate_trees(max_depth=4, max_nodes=16), prompt_len=st.integers(1, 16), seed=st.integers(0, 2**16))
def test_greedy_equals_autoregressive(arch, tree, prompt_len, seed):
    assert_greedy_equal(arch, clover(arch, seed), tree, prompt(prompt_len, seed), NEW_TOKENS)


def test_greedy_equals_autoregressive_on_mistral():
    tree = tree_from_choices([[0], [1], [2], [0, 0], [0, 1], [1, 0], [0, 0, 0], [0, 0, 0, 0]])
    assert_greedy_equal("mistral", clover("mistral", seed=5), tree, prompt(7, seed=5), NEW_TOKENS)


def test_augmenting_block_cache_stays_in_step_over_a_long_generation():
    tree = tree_from_choices([[0], [1], [0, 0], [0, 1], [1, 0], [0, 0, 0], [0, 0, 0, 0]])
    assert_caches_stay_consistent("llama", clover("llama", seed=7), tree)


def test_augmenting_block_needs_a_supported_architecture():
    with pytest.raises(UnsupportedError, match="llama, qwen2, mistral"):
        CloverDrafter.from_model(model("gpt2"))


