"""EAGLE and EAGLE-3: greedy equality on every verifier and tree kind, the drafter's cache against its
training-time twin, intermediate features against transformers, and the refusals.

The contract every drafter keeps (roots, depths, checkpoints, refusals of other models' heads) is in
test_drafter_contract.py; sampled losslessness in the grid (spec/testing/grid.py).
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from spec import GreedyAcceptor, SpeculativeDecoder, StaticTreeBuilder
from spec.apps.shipped import load_shipped, load_shipped_drafter, shipped_drafters
from spec.bench.pairing import verifier_for
from spec.drafters.draft_vocab import DraftVocabulary
from spec.drafters.eagle import EagleDrafter
from spec.drafters.eagle3 import Eagle3Drafter, default_layers
from spec.errors import ConfigurationError, IncompatibleStagesError
from spec.protocols import Draft, DraftContext, SamplingParams
from spec.testing.assertions import assert_same_tokens
from spec.testing.strategies import candidate_trees
from spec.training.eagle import target_outputs, unroll
from spec.trees import AcceptanceStats, DynamicTreeBuilder, optimal_tree, tree_from_choices
from spec.verifiers import FastTreeVerifier, TreeAttentionVerifier, make_verifier

from drafter_checks import perturb
from helpers import LLAMA_FAMILY, VOCAB, model, prompt, reference

NEW_TOKENS = 20
CHAIN = tree_from_choices([[0], [0, 0], [0, 0, 0]])


def eagle(m, seed: int = 0) -> EagleDrafter:
    drafter = EagleDrafter.from_model(m, max_depth=4, seed=seed)
    perturb(drafter.heads, seed=seed)
    return drafter


def eagle3(m, seed: int = 0, size: int = 64) -> Eagle3Drafter:
    counts = torch.rand(VOCAB, generator=torch.Generator().manual_seed(seed))
    drafter = Eagle3Drafter.from_model(m, max_depth=4, seed=seed, draft_vocab=DraftVocabulary.from_counts(counts, size))
    perturb(drafter.heads, seed=seed)
    return drafter


DRAFTERS = {"eagle": eagle, "eagle3": eagle3}


def builder_for(kind: str, tree, seed: int):
    """A static hypothesis tree, the DP-optimal tree for a random acceptance table, or an EAGLE-2 dynamic tree."""
    if kind == "static":
        return StaticTreeBuilder(tree)
    if kind == "optimal":
        g = torch.Generator().manual_seed(seed)
        rows = (torch.rand(4, 3, generator=g) * 0.3).tolist()
        return StaticTreeBuilder(optimal_tree(AcceptanceStats(probs=tuple(map(tuple, rows))), budget=8).tree)
    return DynamicTreeBuilder(depth=4, width=3, total_tokens=8)


@settings(max_examples=8)
@given(arch=st.sampled_from(LLAMA_FAMILY), name=st.sampled_from(sorted(DRAFTERS)),
       kind=st.sampled_from(["fast", "generic"]), builder=st.sampled_from(["static", "optimal", "dynamic"]),
       tree=candidate_trees(max_nodes=12, max_depth=4, max_width=3), prompt_len=st.integers(1, 16),
       seed=st.integers(0, 2**16))
def test_greedy_equals_the_models_own_decoding(arch, name, kind, builder, tree, prompt_len, seed):
    m = model(arch)
    drafter = DRAFTERS[name](m, seed=seed % 7)
    decoder = SpeculativeDecoder(m, drafter, builder_for(builder, tree, seed), verifier_for(m, drafter, kind),
                                 GreedyAcceptor())
    p = prompt(prompt_len, seed)
    out = decoder.generate(p, max_new_tokens=NEW_TOKENS)
    assert_same_tokens(out.sequences, reference(arch, p, NEW_TOKENS))


@pytest.mark.parametrize("name", sorted(DRAFTERS))
def test_greedy_equals_transformers_generate(name):
    m = model("llama")
    drafter = DRAFTERS[name](m)
    p = prompt(10, seed=5)
    out = SpeculativeDecoder(m, drafter, StaticTreeBuilder(CHAIN), verifier_for(m, drafter), GreedyAcceptor()).generate(
        p, max_new_tokens=30)
    assert_same_tokens(out.sequences, m.generate(p, max_new_tokens=30, do_sample=False))


@pytest.mark.skipif(not {"eagle", "eagle3"} <= set(shipped_drafters()), reason="shipped EAGLE heads not built")
@pytest.mark.parametrize("name", ["eagle", "eagle3"])
def test_trained_shipped_heads_equal_generate_in_float64_and_are_accepted(name):
    m, tokenizer = load_shipped(dtype=torch.float64)
    drafter = load_shipped_drafter(name, m)
    ids = tokenizer("def read_lines(path):\n    with open(path) as f:\n", return_tensors="pt").input_ids
    for kind in ("fast", "generic"):
        decoder = SpeculativeDecoder(m, drafter, StaticTreeBuilder(CHAIN), verifier_for(m, drafter, kind),
                                     GreedyAcceptor())
        out = decoder.generate(ids, max_new_tokens=24)
        assert_same_tokens(out.sequences, m.generate(ids, max_new_tokens=24, do_sample=False, eos_token_id=None))
        # Trained heads draft what the model says: more than one token per step on average.
        assert out.mean_accepted_length > 1.3, out.mean_accepted_length


@pytest.mark.parametrize("name", sorted(DRAFTERS))
def test_drafting_a_chain_is_what_training_unrolls(name):
    """The drafter's cached, depth-by-depth pass and the training-time unroll give the same confidences: what
    is trained is what drafts (positions, the committed prefix, the path above each node)."""
    m = model("llama")
    drafter = DRAFTERS[name](m)
    tokens = prompt(9, seed=3)[0]
    verifier = verifier_for(m, drafter)
    # Two steps, so the cache holds pairs committed across steps, not one prefill.
    drafter.commit(tokens[:5], verifier.prefill(tokens[:5]))
    drafter.propose(CHAIN, DraftContext(tokens=tokens[:6]), SamplingParams())
    drafter.commit(tokens[5:8], verifier.prefill(tokens[5:8]))
    draft = drafter.propose(CHAIN, DraftContext(tokens=tokens), SamplingParams())
    batch = torch.cat([tokens, draft.tokens[1:]])[None]
    features, _ = target_outputs(m, batch, tuple(drafter.heads.layers) if name == "eagle3" else ())
    with torch.no_grad():
        predicted = unroll(drafter, drafter.heads, batch, features, CHAIN.max_depth)
    t = tokens.shape[0] - 2  # the root's pair: (f_{P-1}, root)
    confidence = 0.0
    for depth, states in enumerate(predicted, start=1):
        with torch.no_grad():
            logits = drafter.logits(states[0, t])
        index = draft.tokens[depth] if name == "eagle" else (drafter.draft_vocab.d2t == draft.tokens[depth]).nonzero()[0, 0]
        confidence += float(logits.double().log_softmax(-1)[index])
        # Draft confidences are accumulated in float32 (tree_filling), hence the tolerance.
        assert abs(confidence - float(draft.log_confidence[depth])) < 1e-6


@pytest.mark.parametrize("arch", LLAMA_FAMILY)
@pytest.mark.parametrize("cls", [FastTreeVerifier, TreeAttentionVerifier])
def test_intermediate_features_equal_transformers_hidden_states(arch, cls):
    m = model(arch)
    tokens = prompt(11, seed=1)[0]
    with torch.no_grad():
        expected = m(tokens[None], output_hidden_states=True).hidden_states
    verifier = cls(m, features="layers:1,0")  # in the order named, not sorted
    prefix = verifier.prefill(tokens[:7])  # the root, tokens[7], is verified with the tree
    assert verifier.traits.features == "layers:1,0"
    torch.testing.assert_close(prefix, torch.cat([expected[1][0, :7], expected[0][0, :7]], dim=-1), rtol=0, atol=1e-10)
    verification = verifier.verify(Draft(tree=CHAIN, tokens=tokens[7:11]))  # the chain = the true next tokens
    torch.testing.assert_close(verification.hidden_states, torch.cat([expected[1][0, 7:], expected[0][0, 7:]], -1),
                               rtol=0, atol=1e-10)
    torch.testing.assert_close(verification.logits, m(tokens[None]).logits[0, 7:], rtol=0, atol=1e-10)


def test_final_features_are_unchanged_and_nothing_else_is_reported():
    m = model("llama")
    tokens = prompt(6, seed=2)[0]
    hidden = make_verifier(m).prefill(tokens)
    with torch.no_grad():
        expected = m(tokens[None], output_hidden_states=True).hidden_states[-1][0]
    assert hidden.shape == expected.shape
    torch.testing.assert_close(hidden, expected, rtol=0, atol=1e-10)


def test_eagle3_reads_three_layers_and_its_verifier_reports_them():
    assert default_layers(32) == (2, 16, 29)  # the paper's 2, L/2, L-3
    assert default_layers(6) == (1, 3, 5)
    m = model("llama")
    drafter = eagle3(m)
    assert drafter.traits.features == "layers:0,1,1"
    assert verifier_for(m, drafter).traits.features == "layers:0,1,1"
    with pytest.raises(IncompatibleStagesError, match="layers:0,1,1"):
        SpeculativeDecoder(m, drafter, StaticTreeBuilder(CHAIN), make_verifier(m), GreedyAcceptor())


def test_eagle3_proposes_draft_tokens_only():
    m = model("llama")
    drafter = eagle3(m, size=10)
    allowed = set(drafter.draft_vocab.d2t.tolist())
    decoder = SpeculativeDecoder(m, drafter, DynamicTreeBuilder(3, 3, 9), verifier_for(m, drafter), GreedyAcceptor())
    tokens = prompt(7, seed=4)
    out = decoder.generate(tokens, max_new_tokens=12)
    assert_same_tokens(out.sequences, reference("llama", tokens, 12))
    verifier = verifier_for(m, drafter)
    drafter.reset()
    drafter.commit(tokens[0, :-1], verifier.prefill(tokens[0, :-1]))
    draft = drafter.propose(tree_from_choices([[0], [1], [2], [0, 0]]), DraftContext(tokens=tokens[0]),
                            SamplingParams(temperature=1.0), torch.Generator().manual_seed(0))
    assert set(draft.tokens[1:].tolist()) <= allowed


# ---- refusals ------------------------------------------------------------------------------------------
def test_eagle3_layers_the_model_lacks_are_refused():
    with pytest.raises(ConfigurationError, match=r"layer counts \[5\].*choose layers below 2"):
        Eagle3Drafter.from_model(model("llama"), layers=[0, 1, 5])
    heads = eagle3(model("llama")).heads  # reads layers 0, 1, 1
    with pytest.raises(ConfigurationError, match="choose layers below 1"):
        Eagle3Drafter(model("llama", num_layers=1), heads)
    with pytest.raises(ConfigurationError, match="choose layers below 2"):
        make_verifier(model("llama"), features="layers:2")


def test_draft_vocabulary_maps_that_are_not_an_injection_are_refused():
    with pytest.raises(ConfigurationError, match="not an injection.*from_counts"):
        DraftVocabulary.from_maps(torch.tensor([3, 1, 3]), torch.zeros(VOCAB, dtype=torch.bool))
    with pytest.raises(ConfigurationError, match=r"\[0, 96\)"):
        DraftVocabulary.from_maps(torch.tensor([3, 100]), torch.zeros(VOCAB, dtype=torch.bool))
    t2d = torch.zeros(VOCAB, dtype=torch.bool)
    t2d[[1, 3, 7]] = True
    with pytest.raises(ConfigurationError, match="disagree on 1 tokens.*rebuild both"):
        DraftVocabulary.from_maps(torch.tensor([3, 1]), t2d)
    vocab = DraftVocabulary.from_maps(torch.tensor([3, 1, 7]), t2d)
    assert vocab.d2t.tolist() == [3, 1, 7] and torch.equal(vocab.t2d, t2d)
    # Maps edited in a drafter's heads (as a hand-made checkpoint would be) are refused when it is built.
    heads = eagle3(model("llama")).heads
    with torch.no_grad():
        heads.t2d[int(heads.d2t[0])] = False
    with pytest.raises(ConfigurationError, match="not one injection"):
        Eagle3Drafter(model("llama"), heads)


def test_eagle3_refuses_another_draft_vocabulary():
    with pytest.raises(ConfigurationError, match="train a drafter with that vocabulary"):
        eagle3(model("llama")).use_draft_vocab(DraftVocabulary(VOCAB, torch.arange(5)))
