"""Reduced draft vocabularies: same drafts with the whole vocabulary, candidates only from the subset,
greedy output unchanged, sampling still exactly lossless."""

import pytest
import torch

from spec import AutoregressiveDecoder, GreedyAcceptor, SpeculativeDecoder, StaticTreeBuilder
from spec.drafters import CloverDrafter, HydraDrafter, MedusaDrafter
from spec.drafters.draft_vocab import DraftVocabulary
from spec.errors import ConfigurationError, IncompatibleDrafterError, InvalidTreeError
from spec.protocols import DraftContext, SamplingParams
from spec.testing import grid
from spec.testing.assertions import assert_same_tokens
from spec.trees import tree_from_choices
from spec.verifiers import make_verifier

from helpers import VOCAB, model, prompt

TREE = tree_from_choices([[0], [1], [2], [0, 0], [1, 0], [0, 1], [0, 0, 0]])
MAKERS = {
    "medusa": lambda m: MedusaDrafter.from_model(m, num_heads=3, seed=0),
    "hydra++": lambda m: HydraDrafter.hydra_plus_plus(m, num_heads=3, num_layers=1, seed=0),
    "clover": lambda m: CloverDrafter.from_model(m, num_heads=3, seed=0),
}


def primed(name, m, p):
    drafter = MAKERS[name](m)
    with torch.no_grad():
        for param in drafter.heads.parameters():  # heads that differ from the lm_head
            param.add_(torch.randn(param.shape, generator=torch.Generator().manual_seed(1), dtype=param.dtype) * 0.1)
        hidden = m(p[:, :-1], output_hidden_states=True).hidden_states[-1][0]
    drafter.reset()
    drafter.commit(p[0, :-1], hidden)
    return drafter, DraftContext(tokens=p[0])


@pytest.mark.parametrize("name", list(MAKERS))
def test_whole_vocabulary_gives_the_same_draft(name):
    m, p = model("llama"), prompt(9, seed=2)
    drafter, ctx = primed(name, m, p)
    plain = drafter.propose(TREE, ctx, SamplingParams(), None)
    drafter.use_draft_vocab(DraftVocabulary(VOCAB, torch.arange(VOCAB).flip(0)))
    reduced = drafter.propose(TREE, ctx, SamplingParams(), None)
    assert torch.equal(plain.tokens, reduced.tokens)
    torch.testing.assert_close(plain.log_confidence, reduced.log_confidence, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", list(MAKERS))
@pytest.mark.parametrize("candidates", ["top_k", "sample_with_replacement", "sample_without_replacement"])
def test_candidates_come_from_the_draft_vocabulary(name, candidates):
    m, p = model("llama"), prompt(9, seed=3)
    drafter, ctx = primed(name, m, p)
    drafter.candidates = candidates
    subset = torch.randperm(VOCAB, generator=torch.Generator().manual_seed(0))[:12]
    drafter.use_draft_vocab(DraftVocabulary(VOCAB, subset))
    for seed in range(5):
        draft = drafter.propose(TREE, ctx, SamplingParams(temperature=1.0), torch.Generator().manual_seed(seed))
        assert set(draft.tokens[1:].tolist()) <= set(subset.tolist())
        if draft.draft_probs is not None:  # q lives on the subset
            outside = torch.ones(VOCAB, dtype=torch.bool)
            outside[subset] = False
            assert float(draft.draft_probs[1:, outside].abs().sum()) == 0.0


@pytest.mark.parametrize("name", list(MAKERS))
def test_greedy_output_is_unchanged(name):
    m, p = model("llama"), prompt(8, seed=4)
    drafter = MAKERS[name](m).use_draft_vocab(DraftVocabulary.from_counts(torch.arange(VOCAB, dtype=torch.float64), 16))
    out = SpeculativeDecoder(m, drafter, StaticTreeBuilder(TREE), make_verifier(m), GreedyAcceptor()).generate(
        p, max_new_tokens=40)
    assert_same_tokens(out.sequences, AutoregressiveDecoder(m).generate(p, max_new_tokens=40).sequences)


@pytest.mark.parametrize("drafter", ["medusa", "hydra++", "clover"])
@pytest.mark.parametrize("candidates", ["top_k", "sample_with_replacement", "sample_without_replacement"])
def test_sampling_stays_exactly_lossless(drafter, candidates):
    """A 2-token draft vocabulary on the grid's 3-token model: q is 0 on one token, exact gap still ~0."""
    case = grid.GridCase(drafter, "static", candidates, "temperature")
    vocab = DraftVocabulary(grid.VOCAB, torch.tensor([2, 0]))
    assert grid.exact_gap(case, configure=lambda d: d.use_draft_vocab(vocab)) < 1e-9


def test_counts_corpus_and_coverage():
    vocab = DraftVocabulary.from_corpus([[3, 3, 1], torch.tensor([3, 1, 0, 5])], vocab_size=6, size=2)
    assert vocab.token_ids.tolist() == [3, 1]
    assert vocab.coverage([[3, 1, 2, 2]]) == 0.5
    ties = DraftVocabulary.from_counts(torch.tensor([1.0, 2.0, 2.0, 0.0]), 3)
    assert ties.token_ids.tolist() == [1, 2, 0]


def test_projection_follows_weights_changed_in_place():
    m = model("llama")
    drafter = MAKERS["medusa"](m).use_draft_vocab(DraftVocabulary(VOCAB, torch.arange(10)))
    linear = drafter.heads.heads[0][-1]
    x = torch.randn(1, 1, linear.in_features, dtype=torch.float64)
    before = drafter.draft_vocab.project([linear], x)
    with torch.no_grad():
        linear.weight.mul_(2.0)  # an optimiser step updates weights in place
    after = drafter.draft_vocab.project([linear], x)
    bias = 0.0 if linear.bias is None else linear.bias[:10]
    torch.testing.assert_close(after - bias, 2 * (before - bias))


def test_bad_draft_vocabularies_are_refused():
    with pytest.raises(ConfigurationError, match="repeat"):
        DraftVocabulary(VOCAB, torch.tensor([1, 1]))
    with pytest.raises(ConfigurationError, match=r"\[0, 96\)"):
        DraftVocabulary(VOCAB, torch.tensor([5, 96]))
    with pytest.raises(ConfigurationError, match="int64"):
        DraftVocabulary(VOCAB, torch.tensor([1.0, 2.0]))
    with pytest.raises(ConfigurationError, match="size must be"):
        DraftVocabulary.from_counts(torch.ones(4), 0)
    m = model("llama")
    with pytest.raises(IncompatibleDrafterError, match="this model's token counts"):
        MAKERS["medusa"](m).use_draft_vocab(DraftVocabulary(50, torch.arange(5)))
    narrow = MAKERS["medusa"](m).use_draft_vocab(DraftVocabulary(VOCAB, torch.arange(2)))
    p = prompt(5, seed=0)
    with pytest.raises(InvalidTreeError, match="rank 2"):
        SpeculativeDecoder(m, narrow, StaticTreeBuilder(TREE), make_verifier(m), GreedyAcceptor()).generate(
            p, max_new_tokens=4)


@pytest.mark.parametrize("name", list(MAKERS))
def test_draft_vocabulary_is_saved_with_the_heads(name, tmp_path):
    m, p = model("llama"), prompt(9, seed=2)
    drafter, ctx = primed(name, m, p)
    vocab = DraftVocabulary(VOCAB, torch.randperm(VOCAB, generator=torch.Generator().manual_seed(0))[:40])
    drafter.use_draft_vocab(vocab)
    drafter.save_pretrained(tmp_path)
    loaded = type(drafter).from_pretrained(tmp_path, m)
    assert loaded.draft_vocab is not None and torch.equal(loaded.draft_vocab.token_ids, vocab.token_ids)
    loaded.commit(p[0, :-1], m(p[:, :-1], output_hidden_states=True).hidden_states[-1][0].detach())
    assert torch.equal(loaded.propose(TREE, ctx, SamplingParams(), None).tokens,
                       drafter.propose(TREE, ctx, SamplingParams(), None).tokens)
    # Heads saved without one load without one.
    drafter.use_draft_vocab(None).save_pretrained(tmp_path / "full")
    assert type(drafter).from_pretrained(tmp_path / "full", m).draft_vocab is None


@pytest.mark.parametrize("ids", [[], [3, 3], [0, VOCAB], "0,1", [1.5]])
def test_a_corrupt_saved_draft_vocabulary_is_refused(tmp_path, ids):
    import json

    from spec.errors import CheckpointError

    m = model("llama")
    MAKERS["medusa"](m).use_draft_vocab(DraftVocabulary(VOCAB, torch.arange(8))).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["draft_vocab"] = ids
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"draft_vocab must be a non-empty list of distinct token ids"):
        MedusaDrafter.from_pretrained(tmp_path, m)


def test_each_heads_slice_is_cached_once():
    """Hydra projects one head at a time: every head keeps its own slice instead of evicting the others'."""
    m = model("llama")
    drafter = MAKERS["hydra++"](m).use_draft_vocab(DraftVocabulary(VOCAB, torch.arange(10)))
    linears = [head[-1] for head in drafter.heads.heads]
    first = [drafter.draft_vocab.weights([lin])[0] for lin in linears]
    again = [drafter.draft_vocab.weights([lin])[0] for lin in linears]
    assert all(a is b for a, b in zip(first, again))


def test_draft_vocabulary_size_is_chosen_by_measured_acceptance():
    from spec.bench.draft_vocab import choose_draft_vocab

    m = model("llama")
    drafter = MAKERS["medusa"](m)
    prompts = [prompt(6, seed=s) for s in range(2)]
    counted = [prompt(40, seed=s)[0] for s in range(10, 20)]
    loose = choose_draft_vocab(m, drafter, TREE, prompts, counted, sizes=(48, 16), tolerance=0.99, max_new_tokens=8)
    assert [size for size, _ in loose.table] == [VOCAB, 16]  # smallest first; stops at the first good enough
    assert loose.vocab is not None and loose.vocab.size == 16 and drafter.draft_vocab is loose.vocab
    strict = choose_draft_vocab(m, drafter, TREE, prompts, counted, sizes=(48, 16), tolerance=0.0, max_new_tokens=8)
    full = strict.table[0][1]
    assert drafter.draft_vocab is strict.vocab
    assert all(length < full for _, length in strict.table[1:-1])  # every size passed over accepted less
    assert strict.vocab is None or strict.table[-1][1] >= full


def test_shipped_heads_carry_their_measured_draft_vocabulary():
    from spec.apps.shipped import load_shipped, load_shipped_drafter, shipped_drafters

    if "medusa" not in shipped_drafters():
        pytest.skip("no shipped model")
    m, _ = load_shipped()
    sizes = {name: load_shipped_drafter(name, m).draft_vocab_size for name in ("medusa", "hydra", "clover")}
    assert sizes == {"medusa": 1024, "hydra": 1024, "clover": 512}  # spec build-model --draft-vocab-only
