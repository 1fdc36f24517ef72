"""CostAwareTreeBuilder: each step keeps the subtree with the most expected tokens per second, and stays lossless."""

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from spec import AutoregressiveDecoder, GreedyAcceptor, MedusaDrafter, SpeculativeDecoder, StaticTreeBuilder
from spec.acceptors import RejectionSamplingAcceptor
from spec.bench import cost_aware_builder
from spec.drafters import MergedDrafter, NGramDrafter
from spec.errors import ConfigurationError, ShapeError
from spec.pipelines.step import Stages
from spec.protocols import CandidateKind, Draft, DraftContext, SamplingParams
from spec.testing import grid
from spec.testing.assertions import assert_same_tokens
from spec.testing.drafters import TableDrafter
from spec.testing.exact import composition_gap
from spec.testing.mutants import BonusFromTarget
from spec.testing.strategies import candidate_trees
from spec.trees import CostAwareTreeBuilder, full_tree, tree_from_choices
from spec.trees.cost_aware import best_size
from spec.verifiers import make_verifier

from helpers import VOCAB, LogitsTable, model

TEMPLATE = tree_from_choices([[0], [1], [0, 0], [1, 0], [0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0]])


def rate(tree, probs, keep, builder) -> float:
    """The builder's objective for keeping ``keep`` (root included): expected tokens per predicted second."""
    return (1 + sum(probs[n] for n in keep if n)) / builder.step_seconds(tree.num_nodes)[len(keep) - 1]


def subtrees(tree):
    """Every node set containing the root and closed under taking parents."""
    for mask in itertools.product([False, True], repeat=tree.num_nodes - 1):
        keep = [0] + [n + 1 for n, k in enumerate(mask) if k]
        if all(tree.parents[n] in keep for n in keep[1:]):
            yield keep


cost_curves = st.dictionaries(st.integers(1, 10), st.floats(1e-4, 1e-1), min_size=1, max_size=5)


@given(probs=st.lists(st.floats(0, 1), max_size=12), seconds=st.lists(st.floats(1e-4, 1.0), min_size=13, max_size=13))
def test_best_size_is_the_best_prefix(probs, seconds):
    probs = sorted(probs, reverse=True)
    steps = np.array(seconds[: len(probs) + 1])
    values = [(1 + sum(probs[:n])) / steps[n] for n in range(len(probs) + 1)]
    assert best_size(np.array(probs), steps) == values.index(max(values))


@settings(max_examples=60)
@given(tree=candidate_trees(max_nodes=8, max_depth=3, max_width=3), data=st.data(), curve=cost_curves,
       overhead=st.floats(0, 0.05))
def test_kept_nodes_are_the_best_subtree_of_all(tree, data, curve, overhead):
    """Brute force over every subtree: none has a higher expected rate than the kept one."""
    conf = torch.tensor([0.0] + data.draw(st.lists(st.floats(-6, 0), min_size=tree.num_nodes - 1,
                                                   max_size=tree.num_nodes - 1)), dtype=torch.float32)
    draft = Draft(tree=tree, tokens=torch.arange(tree.num_nodes), log_confidence=conf)
    builder = CostAwareTreeBuilder(tree, curve, overhead)
    keep = builder.kept_nodes(draft) or list(range(tree.num_nodes))
    assert keep[0] == 0 and all(tree.parents[n] in keep for n in keep[1:])  # a subtree
    # The objective's probabilities: clamped down each path (a child is never likelier than its parent).
    probs = [1.0] * tree.num_nodes
    for n in range(1, tree.num_nodes):
        probs[n] = min(math.exp(float(conf[n])), probs[tree.parents[n]])
    best = max(rate(tree, probs, s, builder) for s in subtrees(tree))
    assert rate(tree, probs, keep, builder) >= best * (1 - 1e-6)
    kept = builder.select(draft)
    assert kept.tree.num_nodes == len(keep)


def test_cost_decides_the_size():
    draft = Draft(tree=full_tree(2, 2), tokens=torch.arange(7),
                  log_confidence=torch.tensor([0.0, -0.1, -2.0, -0.3, -0.2, -3.0, -2.5]))
    flat = CostAwareTreeBuilder(full_tree(2, 2), {1: 0.01, 64: 0.01})
    assert flat.select(draft) is draft  # verifying more costs nothing: keep every candidate
    steep = CostAwareTreeBuilder(full_tree(2, 2), {1: 0.01, 2: 0.1})
    assert steep.select(draft).tree.num_nodes == 1  # a second token costs 10x: verify the root alone
    # In between: node 1 (p 0.90), then its children (0.74, 0.82) are worth 2 ms each; node 2 (0.14) is not.
    middle = CostAwareTreeBuilder(full_tree(2, 2), {1: 0.010, 8: 0.024}, overhead_s=0.002)
    kept = middle.select(draft)
    assert kept.tokens.tolist() == [0, 1, 3, 4] and kept.kind is CandidateKind.DETERMINISTIC
    # A bump in the measured curve is noise: a bigger tree never predicts a cheaper step.
    bumpy = CostAwareTreeBuilder(full_tree(2, 2), {1: 0.010, 2: 0.030, 4: 0.012, 8: 0.016})
    seconds = bumpy.step_seconds(7)
    assert all(np.diff(seconds) >= 0) and seconds[1] == pytest.approx(0.012)  # 2 tokens: not above 4 tokens


def test_bad_costs_and_drafts_are_refused():
    for curve in ({}, {1: 0.0}, {1: float("nan")}, {0: 0.01}, {1: -1.0}, {"1": 0.01}):
        with pytest.raises(ConfigurationError, match="verify_costs.*measured seconds"):
            CostAwareTreeBuilder(TEMPLATE, curve)
    with pytest.raises(ConfigurationError, match="overhead_s.*measured seconds"):
        CostAwareTreeBuilder(TEMPLATE, {1: 0.01}, overhead_s=float("inf"))
    with pytest.raises(ShapeError, match="CostAwareTreeBuilder needs Draft.log_confidence"):
        CostAwareTreeBuilder(TEMPLATE, {1: 0.01}).select(Draft(tree=TEMPLATE, tokens=torch.arange(9)))


def repetitive_prompt(seed: int, length: int = 30) -> torch.Tensor:
    motif = torch.randint(0, VOCAB, (6,), generator=torch.Generator().manual_seed(seed))
    return motif.repeat(length // 6 + 1)[:length][None]


def test_greedy_output_equals_transformers_generate_and_trees_shrink():
    """Lookup merged with heads, pruned by cost every step: identical to generate, and smaller trees when unsure."""
    m = model("llama")
    p = repetitive_prompt(1)
    expected = m.generate(p, max_new_tokens=96, do_sample=False)
    drafter = MergedDrafter({"ngram": NGramDrafter(), "medusa": MedusaDrafter.from_model(m, num_heads=3, seed=0)})
    # A verify pass costing 1 ms more per token over a 5 ms base: worth a node only if it is likely enough.
    builder = CostAwareTreeBuilder(TEMPLATE, {1: 0.005, 9: 0.013}, overhead_s=0.001)
    out = SpeculativeDecoder(m, drafter, builder, make_verifier(m), GreedyAcceptor()).generate(p, max_new_tokens=96)
    assert_same_tokens(out.sequences, expected)
    sizes = [s.tree_size for s in out.steps]
    assert min(sizes) < TEMPLATE.num_nodes and out.mean_accepted_length > 2.0, (sizes, out.mean_accepted_length)
    # Rates are judged against the target's tokens, so the looping lookup is trusted although nodes were pruned.
    assert drafter.rates()["ngram"][0] > 0.6 > drafter.rates()["medusa"][0]


@pytest.mark.parametrize("candidates", ["top_k", "sample_with_replacement", "sample_without_replacement"])
@given(seed=st.integers(0, 2**16), temperature=st.sampled_from([0.6, 1.0, 1.5]), curve=cost_curves,
       overhead=st.floats(0, 0.05), merged=st.booleans())
def test_cost_aware_compositions_are_exactly_lossless(candidates, seed, temperature, curve, overhead, merged):
    """Every draft and acceptance coin enumerated: the emitted distribution equals the target's sampler."""
    table = TableDrafter(LogitsTable(3, seed + 1, 1.0), 2, candidates)
    drafter = MergedDrafter([table, NGramDrafter(max_depth=2)]) if merged else table
    builder = CostAwareTreeBuilder(tree_from_choices([[0], [1], [0, 0]]), curve, overhead)
    gap = composition_gap(drafter, builder, RejectionSamplingAcceptor(), LogitsTable(3, seed, 2.0),
                          DraftContext(tokens=torch.tensor([2, 1, 0, 2])), SamplingParams(temperature=temperature))
    assert gap < 1e-9


def test_a_sampled_draft_kept_whole_is_handed_on_as_deterministic():
    """Found by the test above: keeping every node of a confident draw, and only then, with its sampled kind
    biases the sampled rule (the draws were chosen by value). The old rule is off; the fixed one is exact."""

    class KeepsWholeDraftsSampled(CostAwareTreeBuilder):
        def select(self, draft):
            keep = self.kept_nodes(draft)
            return draft if keep is None else draft.select_nodes(keep, kind=CandidateKind.DETERMINISTIC)

    def gap(builder_class):
        drafter = TableDrafter(LogitsTable(3, 1, 1.0), 2, "sample_with_replacement")
        builder = builder_class(full_tree(2, 2), {1: 0.00390625, 2: 0.0078125})
        return composition_gap(drafter, builder, RejectionSamplingAcceptor(), LogitsTable(3, 0, 2.0),
                               DraftContext(tokens=torch.tensor([2, 1, 0, 2])), SamplingParams(temperature=0.6))

    assert gap(CostAwareTreeBuilder) < 1e-9
    assert gap(KeepsWholeDraftsSampled) > 1e-4


def sampled_counts(acceptor):
    m = grid.target_model()
    medusa = MedusaDrafter.from_model(m, num_heads=2, seed=0, candidates="sample_without_replacement")
    builder = CostAwareTreeBuilder(full_tree(2, 2), {1: 0.005, 7: 0.011}, overhead_s=0.001)
    return grid.decoder_chi_square(
        SpeculativeDecoder(m, MergedDrafter([NGramDrafter(), medusa]), builder, make_verifier(m), acceptor))


def test_cost_aware_decoder_samples_the_models_distribution():
    """2000 fixed seeds, chi-square, false-alarm rate 1e-4; the same check catches BonusFromTarget."""
    p_value, mean_accepted = sampled_counts(RejectionSamplingAcceptor())
    assert p_value > grid.ALPHA and mean_accepted > 1.05
    assert sampled_counts(BonusFromTarget())[0] < grid.ALPHA * 1e-2  # measured 1e-7: 1000x below the threshold


def test_cost_aware_builder_measures_this_machine():
    m = model("llama")
    drafter = MergedDrafter({"ngram": NGramDrafter(), "medusa": MedusaDrafter.from_model(m, num_heads=3, seed=0)})
    stages = Stages(drafter, StaticTreeBuilder(TEMPLATE), make_verifier(m), GreedyAcceptor())
    builder = cost_aware_builder(stages, TEMPLATE, [repetitive_prompt(2)[0]], max_new_tokens=8, repeats=1)
    assert builder.template is TEMPLATE and builder.overhead_s > 0
    assert set(builder.verify_costs) == {1, 2, 4, 8, 9} and all(v > 0 for v in builder.verify_costs.values())
    out = SpeculativeDecoder(m, drafter, builder, make_verifier(m), GreedyAcceptor()).generate(
        repetitive_prompt(3), max_new_tokens=16)
    assert_same_tokens(out.sequences, AutoregressiveDecoder(m).generate(repetitive_prompt(3), 16).sequences)
