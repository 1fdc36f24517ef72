"""Hydra and Hydra++ heads: structure, sequential dependence, greedy equality, caches, checkpoints."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from spec import GreedyAcceptor, HydraDrafter, MedusaDrafter, SamplingParams
from spec.drafters import ProjectedResBlock, ResBlock
from spec.errors import UnsupportedError
from spec.testing.assertions import assert_same_tokens
from spec.testing.broken import OverAcceptingAcceptor
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
    speculative,
)
from helpers import model, prompt, reference

NEW_TOKENS = 64
H, V = 32, 96


def hydra(arch: str, plus_plus: bool, seed: int = 0, num_heads: int = 4, scale: float = 0.05) -> HydraDrafter:
    m = model(arch)
    if plus_plus:
        drafter = HydraDrafter.hydra_plus_plus(m, num_heads=num_heads, num_layers=2, seed=seed)
    else:
        drafter = HydraDrafter.from_model(m, num_heads=num_heads, seed=seed)
    perturb(drafter.heads, scale=scale, seed=seed)
    return drafter


def test_heads_read_the_path_and_start_as_the_lm_head():
    m = model("llama")
    drafter = HydraDrafter.from_model(m, num_heads=3, num_layers=2)
    for k, head in enumerate(drafter.heads.heads):
        assert isinstance(head[0], ProjectedResBlock) and head[0].linear.in_features == (k + 2) * H
        assert isinstance(head[1], ResBlock) and len(head) == 3
        assert torch.equal(head[-1].weight, m.get_output_embeddings().weight)
        assert head[-1].weight.data_ptr() != m.get_output_embeddings().weight.data_ptr()
    # Untrained with one block, every head is exactly lm_head(h), with or without the prefix layer.
    tree = tree_from_choices([[0], [1], [0, 0], [1, 0], [0, 0, 0]])
    tokens = prompt(9, seed=4)[0]
    for drafter in (HydraDrafter.from_model(m, num_heads=3), HydraDrafter.hydra_plus_plus(m, num_heads=3, num_layers=1)):
        context = primed_context(drafter, "llama", tokens)
        draft = drafter.propose(tree, context, SamplingParams())
        logprobs = m.get_output_embeddings()(hidden_before_root("llama", tokens)).log_softmax(-1)
        top = logprobs.topk(2)
        assert draft.tokens.tolist() == [tokens[-1], top.indices[0], top.indices[1], top.indices[0], top.indices[0],
                                         top.indices[0]]
        torch.testing.assert_close(draft.log_confidence, torch.stack([
            0 * top.values[0], top.values[0], top.values[1], 2 * top.values[0], top.values[0] + top.values[1],
            3 * top.values[0]]).float(), rtol=1e-6, atol=1e-6)


def test_parameter_counts():
    m = model("llama")
    heads, layers = 3, 2
    per_head = [(k + 2) * H * H + (k + 2) * H * H + H + (layers - 1) * (H * H + H) + V * H for k in range(heads)]
    assert HydraDrafter.from_model(m, num_heads=heads, num_layers=layers).num_parameters == sum(per_head)
    decoder_layer = sum(p.numel() for p in m.model.layers[0].parameters())
    plus_plus = HydraDrafter.hydra_plus_plus(m, num_heads=heads, num_layers=layers)
    assert plus_plus.num_parameters == sum(per_head) + decoder_layer
    # Frozen model parts are not the drafter's: the embedding is read, not owned.
    owned = {p.data_ptr() for p in plus_plus.heads.parameters()}
    assert all(p.data_ptr() not in owned for p in m.parameters())


@pytest.mark.parametrize("plus_plus", [False, True], ids=["hydra", "hydra++"])
def test_head_two_depends_on_the_depth_one_token(plus_plus):
    """Unlike Medusa's, Hydra's depth-2 proposals change with the depth-1 candidate above them."""
    tokens = prompt(8, seed=2)[0]
    # Seed and scale where the change reaches the top-3 tokens, not only their probabilities.
    drafter = hydra("llama", plus_plus, seed=1, scale=0.1)
    assert_head_two_reads_depth_one(drafter, "llama", tokens)
    medusa = MedusaDrafter.from_model(model("llama"), num_heads=2, seed=1)
    perturb(medusa.heads, scale=0.1, seed=1)
    assert_head_two_reads_depth_one(medusa, "llama", tokens, sequential=False)
    # The root is the first token on every path, so head 1 reads it too.
    other_root = tokens.clone()
    other_root[-1] = (other_root[-1] + 1) % V
    a = drafter.propose(TWO_BRANCHES, primed_context(drafter, "llama", tokens), SamplingParams())
    b = drafter.propose(TWO_BRANCHES, primed_context(drafter, "llama", other_root), SamplingParams())
    assert not torch.allclose(a.log_confidence[1:3], b.log_confidence[1:3])


@pytest.mark.parametrize("plus_plus", [False, True], ids=["hydra", "hydra++"])
@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@settings(max_examples=8)
@given(tree=candidate_trees(max_depth=4, max_nodes=16), prompt_len=st.integers(1, 16), seed=st.integers(0, 2**16))
def test_greedy_equals_autoregressive(arch, plus_plus, tree, prompt_len, seed):
    assert_greedy_equal(arch, hydra(arch, plus_plus, seed), tree, prompt(prompt_len, seed), NEW_TOKENS)


@pytest.mark.parametrize("arch, plus_plus", [("mistral", True), ("gpt2", False)])
def test_greedy_equals_autoregressive_other_architectures(arch, plus_plus):
    tree = tree_from_choices([[0], [1], [2], [0, 0], [0, 1], [1, 0], [0, 0, 0], [0, 0, 0, 0]])
    assert_greedy_equal(arch, hydra(arch, plus_plus, seed=5), tree, prompt(7, seed=5), NEW_TOKENS)


def test_over_accepting_acceptor_is_caught():
    p = prompt(6, seed=11)
    tree = tree_from_choices([[0], [1], [0, 0], [1, 0], [0, 0, 0]])
    out = speculative("llama", hydra("llama", True), tree, OverAcceptingAcceptor(GreedyAcceptor())).generate(p, 32)
    with pytest.raises(AssertionError, match="differ at position"):
        assert_same_tokens(out.sequences, reference("llama", p, 32))


def test_prefix_layer_cache_stays_in_step_over_a_long_generation():
    tree = tree_from_choices([[0], [1], [0, 0], [0, 1], [1, 0], [0, 0, 0], [0, 0, 0, 0]])
    assert_caches_stay_consistent("qwen2", hydra("qwen2", True, seed=7), tree)


def test_prefix_layer_needs_a_supported_architecture():
    with pytest.raises(UnsupportedError, match="llama, qwen2, mistral"):
        HydraDrafter.hydra_plus_plus(model("gpt2"))


def test_dropout_acts_in_training_only():
    drafter = HydraDrafter.from_model(model("llama"), num_heads=2, num_layers=2, dropout=0.5, seed=0)
    perturb(drafter.heads)
    assert not drafter.heads.training
    tokens = prompt(6, seed=0)[0]
    first = drafter.propose(TWO_BRANCHES, primed_context(drafter, "llama", tokens), SamplingParams())
    again = drafter.propose(TWO_BRANCHES, primed_context(drafter, "llama", tokens), SamplingParams())
    assert torch.equal(first.log_confidence, again.log_confidence)
    x = torch.randn(4, 2 * H, dtype=torch.float64)
    block = drafter.heads.heads[0][0].train()
    assert not torch.equal(block(x), block(x))
