"""The verifier's outputs at every node equal a plain forward pass over prefix + that node's path.

Every test runs on the generic verifier (all architectures) and on the fast one
(Llama-family architectures).
"""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from spec import CandidateTree, Draft, FastTreeVerifier, TreeAttentionVerifier
from spec.errors import InputError, ShapeError
from spec.testing.strategies import candidate_trees

from helpers import ARCHS, LLAMA_FAMILY, VOCAB, config_override, model

CASES = [(arch, TreeAttentionVerifier) for arch in ARCHS] + [(arch, FastTreeVerifier) for arch in LLAMA_FAMILY]
IDS = [f"{arch}-{cls.__name__}" for arch, cls in CASES]


@pytest.mark.parametrize("arch,make", CASES, ids=IDS)
@settings(max_examples=6)
@given(tree=candidate_trees(max_nodes=16), prefix_len=st.integers(0, 12), seed=st.integers(0, 2**16))
def test_tree_logits_equal_path_forward(arch, make, tree, prefix_len, seed):
    m = model(arch)
    g = torch.Generator().manual_seed(seed)
    prefix = torch.randint(0, VOCAB, (prefix_len,), generator=g)
    tokens = torch.randint(0, VOCAB, (tree.num_nodes,), generator=g)
    verifier = make(m)
    hidden = verifier.prefill(prefix)
    verification = verifier.verify(Draft(tree=tree, tokens=tokens))
    with torch.no_grad():
        for node in range(tree.num_nodes):
            seq = torch.cat([prefix, tokens[list(tree.path_to(node))]])
            out = m(seq[None], output_hidden_states=True)
            torch.testing.assert_close(verification.logits[node], out.logits[0, -1], rtol=1e-9, atol=1e-9)
            torch.testing.assert_close(verification.hidden_states[node], out.hidden_states[-1][0, -1],
                                       rtol=1e-9, atol=1e-9)
        if prefix_len:
            full = m(prefix[None], output_hidden_states=True).hidden_states[-1][0]
            torch.testing.assert_close(hidden, full, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("arch,make", CASES, ids=IDS)
def test_commit_leaves_cache_of_the_accepted_path(arch, make):
    """After committing a path, verifying the next tree equals a forward over prefix + path."""
    m = model(arch)
    tree = CandidateTree(parents=[-1, 0, 0, 2, 2, 4], ranks=[0, 0, 1, 0, 1, 0])
    prefix = torch.arange(5, 10)
    tokens = torch.tensor([11, 12, 13, 14, 15, 16])
    verifier = make(m)
    verifier.prefill(prefix)
    verifier.verify(Draft(tree=tree, tokens=tokens))
    path = (0, 2, 4, 5)  # not a prefix of the node order: exercises the gather
    verifier.commit(path)
    assert verifier.cached_length == len(prefix) + len(path)
    follow = torch.tensor([20, 21, 22])
    chain = CandidateTree(parents=[-1, 0, 1], ranks=[0, 0, 0])
    result = verifier.verify(Draft(tree=chain, tokens=follow))
    expected_seq = torch.cat([prefix, tokens[list(path)], follow])
    with torch.no_grad():
        expected = m(expected_seq[None]).logits[0, -3:]
    torch.testing.assert_close(result.logits, expected, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("make", [TreeAttentionVerifier, FastTreeVerifier])
def test_protocol_misuse_is_refused(make):
    verifier = make(model("llama"))
    with pytest.raises(InputError, match="no verified tree"):
        verifier.commit((0,))
    verifier.prefill(torch.tensor([1, 2]))
    verifier.verify(Draft(tree=CandidateTree.root_only(), tokens=torch.tensor([3])))
    with pytest.raises(InputError, match="awaits commit"):
        verifier.verify(Draft(tree=CandidateTree.root_only(), tokens=torch.tensor([3])))
    verifier.commit([0])  # a list is as good as a tuple
    tree = CandidateTree(parents=[-1, 0, 0, 1], ranks=[0, 0, 1, 0])
    verifier.verify(Draft(tree=tree, tokens=torch.tensor([4, 5, 6, 7])))
    for bad in ((), (1,), (0, 3), (0, 2, 3), (0, 1, 9)):  # not one root-to-node branch of the tree
        with pytest.raises(ShapeError, match="one branch"):
            verifier.commit(bad)
    verifier.commit((0, 1, 3))
    assert verifier.cached_length == 2 + 1 + 3


@pytest.mark.parametrize("make", [TreeAttentionVerifier, FastTreeVerifier])
def test_sliding_window_is_applied_in_the_mask(make):
    """Mistral with a short window: tree verification equals the model's own windowed forward."""
    m = model("mistral", seed=3, context=64)
    with config_override(m, sliding_window=4):
        # SDPA, not eager: transformers' eager attention takes its softmax in float32 even for a float64 model.
        prefix = torch.arange(2, 12)
        tree = CandidateTree(parents=[-1, 0, 0, 1], ranks=[0, 0, 1, 0])
        tokens = torch.tensor([30, 31, 32, 33])
        verifier = make(m)
        hidden = verifier.prefill(prefix)
        result = verifier.verify(Draft(tree=tree, tokens=tokens))
        with torch.no_grad():
            for node in range(tree.num_nodes):
                seq = torch.cat([prefix, tokens[list(tree.path_to(node))]])
                torch.testing.assert_close(result.logits[node], m(seq[None]).logits[0, -1], rtol=1e-9, atol=1e-9)
            # The prefill (10 tokens, longer than the window) is windowed too.
            torch.testing.assert_close(hidden, m(prefix[None], output_hidden_states=True).hidden_states[-1][0],
                                       rtol=1e-9, atol=1e-9)


def test_layers_mixing_sliding_and_full_attention_get_a_mask_each():
    """Qwen2 with max_window_layers: layer 0 full attention, layer 1 a 4-token window; prefix longer than that."""
    import transformers

    from spec import make_verifier
    from spec.testing.models import tiny_config

    config = transformers.Qwen2Config(**{**tiny_config("qwen2", vocab_size=VOCAB).to_dict(), "use_sliding_window": True,
                                          "sliding_window": 4, "max_window_layers": 1, "layer_types": None})
    assert set(config.layer_types) == {"full_attention", "sliding_attention"}
    torch.manual_seed(0)
    m = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float64).eval()
    with torch.no_grad():
        for param in m.parameters():
            if param.dim() == 2:
                param.normal_(0, 0.15)
    verifier = make_verifier(m)
    assert isinstance(verifier, TreeAttentionVerifier)  # the fast path refuses mixed layers
    prefix = torch.arange(2, 14)
    tree = CandidateTree(parents=[-1, 0, 0, 1, 3], ranks=[0, 0, 1, 0, 0])
    tokens = torch.tensor([30, 31, 32, 33, 34])
    verifier.prefill(prefix)
    result = verifier.verify(Draft(tree=tree, tokens=tokens))
    with torch.no_grad():
        for node in range(tree.num_nodes):
            seq = torch.cat([prefix, tokens[list(tree.path_to(node))]])
            torch.testing.assert_close(result.logits[node], m(seq[None]).logits[0, -1], rtol=1e-9, atol=1e-9)
