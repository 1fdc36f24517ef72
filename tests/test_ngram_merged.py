"""N-gram lookup and merged drafters: what they propose, greedy equality, losslessness when sampling."""


import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from spec import AutoregressiveDecoder, GreedyAcceptor, MedusaDrafter, SpeculativeDecoder, StaticTreeBuilder
from spec.acceptors import RejectionSamplingAcceptor
from spec.drafters import KangarooDrafter, MergedDrafter, NGramDrafter
from spec.errors import ConfigurationError
from spec.protocols import CandidateKind, DraftContext, SamplingParams
from spec.testing import grid
from spec.testing.assertions import assert_same_tokens
from spec.testing.mutants import BonusFromTarget
from spec.testing.drafters import TableDrafter
from spec.testing.exact import composition_gap
from spec.trees import chain_tree, full_tree, tree_from_choices
from spec.verifiers import make_verifier

from helpers import VOCAB, LogitsTable, model

TREE = tree_from_choices([[0], [1], [0, 0], [1, 0], [0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0]])


def context(tokens):
    return DraftContext(tokens=torch.tensor(tokens))


def test_continuations_of_the_longest_suffix_most_recent_first():
    d = NGramDrafter(max_ngram=3)
    tokens = [1, 2, 3, 9, 1, 2, 3, 7, 5, 2, 3]
    # [2, 3] occurs twice earlier; [5, 2, 3] never: the 2-gram wins, most recent occurrence first.
    assert d.continuations(tokens, 3) == [[7, 5, 2], [9, 1, 2]]
    assert d.continuations([4, 5, 6], 3) == []
    # Near the end a continuation is cut short; the suffix itself is never its own match.
    assert d.continuations([8, 8, 8], 4) == [[8]]  # [8, 8] at 0..1 only; 2..3 is the suffix


def test_index_grows_with_the_sequence_and_restarts_on_a_new_one():
    grown, fresh = NGramDrafter(), NGramDrafter()
    tokens = torch.randint(0, 5, (60,), generator=torch.Generator().manual_seed(1)).tolist()
    for end in range(2, 60, 7):
        assert grown.continuations(tokens[:end], 4) == NGramDrafter().continuations(tokens[:end], 4)
    assert grown.continuations([3, 1, 3], 2) == fresh.continuations([3, 1, 3], 2) == [[1, 3]]


def test_draft_is_a_trie_of_continuations_scored_by_support():
    tokens = [1, 2, 3, 9, 1, 2, 3, 7, 1, 2, 3, 7]
    # Suffix [3, 7] -> continuations [1, 2, 3, 7] (once). Suffix of 3 tokens [2, 3, 7] -> same.
    draft = NGramDrafter().propose(full_tree(4, 2), context(tokens), SamplingParams(), None)
    assert draft.tokens.tolist() == [7, 1, 2, 3, 7]
    assert draft.kind is CandidateKind.DETERMINISTIC
    tokens = [1, 2, 3, 9, 1, 2, 3, 7, 1, 2, 3]
    draft = NGramDrafter().propose(full_tree(3, 2), context(tokens), SamplingParams(), None)
    assert draft.tree.children[0] == (1, 2) and sorted(draft.tokens[[1, 2]].tolist()) == [7, 9]
    assert torch.allclose(draft.log_confidence[1:], torch.log(torch.tensor(0.5)))
    # The budget is the given tree's size, the depth its depth.
    small = NGramDrafter().propose(chain_tree(2), context(tokens), SamplingParams(), None)
    assert small.tree.num_nodes <= 3 and small.tree.max_depth <= 2


def test_bad_settings_are_refused():
    with pytest.raises(ConfigurationError, match="min_ngram"):
        NGramDrafter(max_ngram=1, min_ngram=2)
    with pytest.raises(ConfigurationError, match="max_matches"):
        NGramDrafter(max_matches=0)
    with pytest.raises(ConfigurationError, match="at least one"):
        MergedDrafter([])
    m = model("llama")
    with pytest.raises(ConfigurationError, match="KangarooDrafter.*whole"):
        MergedDrafter([NGramDrafter(), KangarooDrafter.from_model(m, exit_layer=1, max_depth=2, seed=0)])


def repetitive_prompt(seed: int, length: int = 24) -> torch.Tensor:
    """A prompt that repeats a motif, as code and logs do."""
    motif = torch.randint(0, VOCAB, (6,), generator=torch.Generator().manual_seed(seed))
    return motif.repeat(length // 6 + 1)[:length][None]


def merged(m, seed=0):
    medusa = MedusaDrafter.from_model(m, num_heads=3, seed=seed)
    return MergedDrafter({"ngram": NGramDrafter(), "medusa": medusa})


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@settings(max_examples=4)
@given(seed=st.integers(0, 50), which=st.sampled_from(["ngram", "merged"]))
def test_greedy_output_equals_the_models_own(arch, seed, which):
    m = model(arch)
    p = repetitive_prompt(seed)
    drafter = NGramDrafter() if which == "ngram" else merged(m, seed)
    out = SpeculativeDecoder(m, drafter, StaticTreeBuilder(TREE), make_verifier(m), GreedyAcceptor()).generate(
        p, max_new_tokens=48)
    assert_same_tokens(out.sequences, AutoregressiveDecoder(m).generate(p, max_new_tokens=48).sequences)


def test_greedy_output_equals_transformers_generate_and_lookup_pays_off():
    m = model("llama")
    p = repetitive_prompt(1, length=30)  # a prompt after which this random model's greedy output loops
    expected = m.generate(p, max_new_tokens=128, do_sample=False)
    for drafter in (NGramDrafter(), merged(m)):
        out = SpeculativeDecoder(m, drafter, StaticTreeBuilder(TREE), make_verifier(m), GreedyAcceptor()).generate(
            p, max_new_tokens=128)
        assert_same_tokens(out.sequences, expected)
        assert out.mean_accepted_length > 2.5, out.mean_accepted_length  # measured 3.1 (n-gram), 3.3 (merged)


def test_merged_drafter_learns_which_source_to_trust():
    m = model("llama")
    drafter = merged(m)
    SpeculativeDecoder(m, drafter, StaticTreeBuilder(TREE), make_verifier(m), GreedyAcceptor()).generate(
        repetitive_prompt(1, length=30), max_new_tokens=128)
    rates = drafter.rates()
    # Untrained Medusa heads are rarely right at depth 1; the looping continuation is found by lookup.
    assert rates["ngram"][0] > 0.6 > rates["medusa"][0], rates


# ---- losslessness when sampling -------------------------------------------------------------------------
@pytest.mark.parametrize("candidates", ["top_k", "sample_with_replacement", "sample_without_replacement"])
@given(seed=st.integers(0, 2**16), temperature=st.sampled_from([0.6, 1.0, 1.5]),
       tokens=st.lists(st.integers(0, 2), min_size=3, max_size=9))
def test_merged_composition_is_exactly_lossless(candidates, seed, temperature, tokens):
    """A sampled head merged with lookup: the merge turns it into deterministic candidates, exactly lossless."""
    drafter = MergedDrafter([TableDrafter(LogitsTable(3, seed + 1, 1.0), 2, candidates), NGramDrafter(max_depth=2)])
    builder = StaticTreeBuilder(tree_from_choices([[0], [1], [0, 0]]))
    gap = composition_gap(drafter, builder, RejectionSamplingAcceptor(), LogitsTable(3, seed, 2.0), context(tokens),
                          SamplingParams(temperature=temperature, top_k=2))
    assert gap < 1e-9


def sampled_counts(acceptor):
    m = grid.target_model()
    medusa = MedusaDrafter.from_model(m, num_heads=2, seed=0, candidates="sample_without_replacement")
    return grid.decoder_chi_square(SpeculativeDecoder(m, MergedDrafter([NGramDrafter(), medusa]),
                                                      StaticTreeBuilder(tree_from_choices([[0], [1], [0, 0]])),
                                                      make_verifier(m), acceptor))


def test_merged_drafter_samples_the_models_distribution():
    """2000 fixed seeds, chi-square, false-alarm rate 1e-4; the same check catches BonusFromTarget."""
    p_value, mean_accepted = sampled_counts(RejectionSamplingAcceptor())
    assert p_value > grid.ALPHA and mean_accepted > 1.05
    assert sampled_counts(BonusFromTarget())[0] < grid.ALPHA * 1e-4


def test_merged_drafter_asks_for_the_hidden_states_its_sources_read():
    """Lookup reads no hidden states; merged with EAGLE-3 the merge reads EAGLE-3's layers, and the verifier
    chosen for it reports them: greedy output still equals the model's own."""
    from spec.bench.pairing import verifier_for
    from spec.drafters import Eagle3Drafter
    from spec.errors import IncompatibleStagesError

    m = model("llama")
    eagle3 = Eagle3Drafter.from_model(m, max_depth=3, seed=0)
    drafter = MergedDrafter({"ngram": NGramDrafter(), "eagle3": eagle3})
    assert drafter.traits.features == eagle3.traits.features != "final"
    assert not NGramDrafter().traits.reads_hidden_states and MergedDrafter([NGramDrafter()]).traits.features == "final"
    p = repetitive_prompt(2)
    out = SpeculativeDecoder(m, drafter, StaticTreeBuilder(TREE), verifier_for(m, drafter), GreedyAcceptor()).generate(
        p, max_new_tokens=32)
    assert_same_tokens(out.sequences, AutoregressiveDecoder(m).generate(p, max_new_tokens=32).sequences)
    # Lookup alone composes with a verifier reporting any features.
    SpeculativeDecoder(m, NGramDrafter(), StaticTreeBuilder(TREE), verifier_for(m, eagle3), GreedyAcceptor())
    with pytest.raises(IncompatibleStagesError, match="hidden states"):
        SpeculativeDecoder(m, drafter, StaticTreeBuilder(TREE), make_verifier(m), GreedyAcceptor())
    with pytest.raises(ConfigurationError, match="read different hidden states"):
        MergedDrafter({"medusa": MedusaDrafter.from_model(m, num_heads=2, seed=0), "eagle3": eagle3})
