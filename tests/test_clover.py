"""Clover heads: structure, sequential dependence, greedy equality, augmenting-block cache, checkpoints."""

import copy
import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from spec import CloverDrafter, DraftContext, HydraDrafter, SamplingParams
from spec.errors import CheckpointError, IncompatibleDrafterError, InputError, TreeTooDeepError, UnsupportedError
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


def test_save_load_round_trip_is_bit_identical(tmp_path):
    drafter = clover("qwen2", seed=1)
    drafter.save_pretrained(tmp_path)
    loaded = CloverDrafter.from_pretrained(tmp_path, model("qwen2"))
    saved, restored = drafter.heads.state_dict(), loaded.heads.state_dict()
    assert saved.keys() == restored.keys() and any(k.startswith("augmenting_layer.") for k in saved)
    for name in saved:
        assert torch.equal(saved[name], restored[name]), name
    tokens = prompt(10, seed=1)[0]
    a = drafter.propose(TWO_BRANCHES, primed_context(drafter, "qwen2", tokens), SamplingParams())
    b = loaded.propose(TWO_BRANCHES, primed_context(loaded, "qwen2", tokens), SamplingParams())
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.log_confidence, b.log_confidence)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["drafter_type"] == "clover" and config["base_model"]["architecture"] == "Qwen2ForCausalLM"
    assert config["hyperparameters"] == {"num_heads": 4, "num_layers": 1, "hidden_size": H, "vocab_size": V,
                                         "num_attention_heads": 4, "rms_norm_eps": 1e-6}


def test_loading_onto_another_model_is_refused(tmp_path):
    CloverDrafter.from_model(model("llama"), num_heads=2).save_pretrained(tmp_path)
    with pytest.raises(IncompatibleDrafterError, match="weights differ"):
        CloverDrafter.from_pretrained(tmp_path, model("llama", seed=1))
    with pytest.raises(IncompatibleDrafterError, match="vocabulary"):
        CloverDrafter.from_pretrained(tmp_path, model("llama", vocab_size=128))
    with pytest.raises(IncompatibleDrafterError, match="hidden"):
        CloverDrafter.from_pretrained(tmp_path, model("llama", hidden_size=48))
    with pytest.raises(CheckpointError, match="holds a 'clover' drafter"):
        HydraDrafter.from_pretrained(tmp_path, model("llama"))
    CloverDrafter.from_pretrained(tmp_path, copy.deepcopy(model("llama")).to(torch.float32))


def test_heads_built_for_another_model_are_refused():
    heads = CloverDrafter.from_model(model("llama"), num_heads=2).heads
    with pytest.raises(IncompatibleDrafterError, match="hidden"):
        CloverDrafter(model("llama", hidden_size=48), heads)


def test_augmenting_block_needs_a_supported_architecture():
    with pytest.raises(UnsupportedError, match="llama, qwen2, mistral"):
        CloverDrafter.from_model(model("gpt2"))


def test_misuse_is_refused():
    drafter = clover("llama", num_heads=2)
    context = primed_context(drafter, "llama", torch.tensor([1, 2, 3]))
    with pytest.raises(TreeTooDeepError, match="2 heads"):
        drafter.propose(tree_from_choices([[0], [0, 0], [0, 0, 0]]), context, SamplingParams())
    drafter.commit(torch.tensor([3]), hidden_before_root("llama", context.tokens)[None])  # one position more than the context has
    with pytest.raises(InputError, match="call drafter.commit"):
        drafter.propose(TWO_BRANCHES, context, SamplingParams())
    drafter.reset()
    root_only = drafter.propose(TWO_BRANCHES, DraftContext(tokens=torch.tensor([7])), SamplingParams())
    assert root_only.tokens.tolist() == [7] and root_only.tree.num_nodes == 1
