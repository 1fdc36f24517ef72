"""Compiled drafting (``drafter.compile()``): the deterministic draft compiled by inductor on the CPU is the
eager draft, token for token, over tree shapes, draft vocabularies and steps; it really runs compiled (no silent
eager fallback); greedy decoding with it is still the model's own."""

import pytest
import torch

from spec import AutoregressiveDecoder, GreedyAcceptor, SpeculativeDecoder, StaticTreeBuilder
from spec.drafters import CloverDrafter, EagleDrafter, HydraDrafter, MedusaDrafter
from spec.drafters.draft_vocab import DraftVocabulary
from spec.protocols import DraftContext, SamplingParams
from spec.testing.assertions import assert_same_tokens
from spec.trees import tree_from_choices
from spec.verifiers import make_verifier

from helpers import VOCAB, model, prompt

TREES = [
    tree_from_choices([[0], [1], [2], [0, 0], [1, 0], [0, 1], [0, 0, 0]]),
    tree_from_choices([[0], [0, 0], [0, 0, 0], [0, 1], [1]]),
]
MAKERS = {
    "medusa": lambda m: MedusaDrafter.from_model(m, num_heads=3, seed=0),
    "hydra++": lambda m: HydraDrafter.hydra_plus_plus(m, num_heads=3, num_layers=2, seed=0),
    "clover": lambda m: CloverDrafter.from_model(m, num_heads=3, seed=0),
    "eagle": lambda m: EagleDrafter.from_model(m, max_depth=3, seed=0),
}


def perturbed(drafter):
    """Heads that differ from the lm_head (fresh heads all start as copies of it)."""
    with torch.no_grad():
        for param in drafter.heads.parameters():
            param.add_(torch.randn(param.shape, generator=torch.Generator().manual_seed(1), dtype=param.dtype) * 0.1)
    return drafter


def primed_pair(name, m, p, vocab, int8=False):
    """The same heads twice, one compiled, both committed the prompt's hidden states (``int8``: both quantized)."""
    eager, compiled = perturbed(MAKERS[name](m)), perturbed(MAKERS[name](m))
    if int8:
        eager.quantize(), compiled.quantize()
    compiled.compile()
    with torch.no_grad():
        hidden = m(p[:, :-1], output_hidden_states=True).hidden_states[-1][0]
    for drafter in (eager, compiled):
        drafter.use_draft_vocab(vocab)
        drafter.reset()
        drafter.commit(p[0, :-1], hidden)
    return eager, compiled, hidden


# Each case compiles one graph per tree shape (seconds each on the CPU): every drafter once, both kinds of projection.
# int8: the heads' int8 kernel and int8 projections traced too.
@pytest.mark.parametrize("name, reduced, int8", [("medusa", True, False), ("medusa", False, False),
                                                 ("hydra++", True, False), ("clover", False, False),
                                                 ("eagle", True, False), ("eagle", False, True)])
def test_compiled_draft_is_the_eager_draft(name, reduced, int8):
    m, p = model("llama"), prompt(10, seed=5)
    vocab = DraftVocabulary(VOCAB, torch.randperm(VOCAB, generator=torch.Generator().manual_seed(2))[:20]) \
        if reduced else None
    eager, compiled, hidden = primed_pair(name, m, p, vocab, int8)
    tokens = p[0]
    for step in range(3):  # the context grows between steps (Hydra++'s and Clover's context layers)
        if step:  # the root is accepted: commit it (with a stand-in hidden state), a new root follows
            for drafter in (eager, compiled):
                drafter.commit(tokens[-1:], hidden[-step:][:1])
            tokens = torch.cat([tokens, torch.tensor([(7 * step) % VOCAB])])
        context = DraftContext(tokens=tokens)
        for tree in TREES:
            a = eager.propose(tree, context, SamplingParams(), None)
            b = compiled.propose(tree, context, SamplingParams(), None)
            assert torch.equal(a.tokens, b.tokens), (name, step, a.tokens, b.tokens)
            torch.testing.assert_close(a.log_confidence, b.log_confidence, rtol=1e-5, atol=1e-5)
    # Fell back to eager: the test would prove nothing.
    assert compiled.compiled, (compiled.compiled_fill.failure, getattr(compiled, "_compiled_flush", None))
    assert not eager.compiled


def test_sampled_candidates_stay_eager_and_lossless_inputs_unchanged():
    """Sampled candidates draw on the host and are not compiled: the same generator gives the same draft."""
    m, p = model("llama"), prompt(10, seed=6)
    eager, compiled, _ = primed_pair("hydra++", m, p, None)
    for drafter in (eager, compiled):
        drafter.candidates = "sample_without_replacement"
    context, sampling = DraftContext(tokens=p[0]), SamplingParams(temperature=0.8)
    a = eager.propose(TREES[0], context, sampling, torch.Generator().manual_seed(3))
    b = compiled.propose(TREES[0], context, sampling, torch.Generator().manual_seed(3))
    assert torch.equal(a.tokens, b.tokens)
    assert torch.equal(a.draft_probs, b.draft_probs)


def test_greedy_decoding_with_a_compiled_drafter_is_the_models_own():
    m, p = model("llama"), prompt(8, seed=7)
    drafter = perturbed(MAKERS["clover"](m)).compile()
    out = SpeculativeDecoder(m, drafter, StaticTreeBuilder(TREES[0]), make_verifier(m), GreedyAcceptor()).generate(
        p, max_new_tokens=30)
    assert_same_tokens(out.sequences, AutoregressiveDecoder(m).generate(p, max_new_tokens=30).sequences)
    assert drafter.compiled


def test_compile_can_be_turned_off_again():
    m = model("llama")
    drafter = MAKERS["medusa"](m).compile()
    assert drafter.compiled_fill is not None
    assert not drafter.compile(False).compiled and drafter.compiled_fill is None


def test_the_step_is_compiled_as_a_whole_where_it_can_be():
    """--compile (or a +compile verifier) compiles the head drafters' draft with the verifier's step (EAGLE's with
    its commit pass), and a merged drafter compiles the sources that can be."""
    from types import SimpleNamespace

    from spec.bench.pairing import compile_with_verifier
    from spec.drafters import MergedDrafter, NGramDrafter

    m = model("llama")
    medusa = MAKERS["medusa"](m)
    compile_with_verifier(medusa, SimpleNamespace(compiled=False))
    assert medusa.compiled_fill is None
    compile_with_verifier(medusa, SimpleNamespace(compiled=True))
    assert medusa.compiled_fill is not None

    eagle = EagleDrafter.from_model(m, max_depth=3, seed=0)
    compile_with_verifier(eagle, SimpleNamespace(compiled=True))
    assert eagle.compiled_fill is not None and eagle._compiled_flush is not None
    assert not eagle.compile(False).compiled and eagle._compiled_flush is None

    hydra = MAKERS["hydra++"](m)
    merged = MergedDrafter({"ngram": NGramDrafter(), "hydra": hydra})
    compile_with_verifier(merged, SimpleNamespace(compiled=True))
    assert hydra.compiled_fill is not None


def test_greedy_decoding_with_a_compiled_eagle3_drafter_is_the_models_own():
    """EAGLE-3's compiled draft over a growing cache (each step's commit padded, attended rows bucketed), with a
    prompt longer than the padding (the eager commit pass) and steps that commit 1 .. depth + 1 pairs."""
    from spec.bench.pairing import verifier_for
    from spec.drafters import Eagle3Drafter

    m, p = model("llama"), prompt(9, seed=4)
    drafter = perturbed(Eagle3Drafter.from_model(m, max_depth=3, seed=0)).compile()
    out = SpeculativeDecoder(m, drafter, StaticTreeBuilder(TREES[0]), verifier_for(m, drafter),
                             GreedyAcceptor()).generate(p, max_new_tokens=40)
    assert_same_tokens(out.sequences, AutoregressiveDecoder(m).generate(p, max_new_tokens=40).sequences)
    assert drafter.compiled, (drafter.compiled_fill.failure, drafter._compiled_flush.failure)
