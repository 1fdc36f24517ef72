"""Losslessness of composed stages, not only of an acceptor's rule.

Exact: spec.testing.exact.composition_gap runs the real ``drafter.propose ->
tree_builder.select -> acceptor.accept`` path with every random draw enumerated, over
hypothesis-generated trees, tree builders (static, DP-optimal, dynamic), candidate kinds,
target and draft distributions; the gap to the target's own sampler must be <= 1e-9.
Then the grid of real drafters (spec.testing.grid): exact for every drafter x builder x
candidate kind, end to end (chi-square, 2000 fixed seeds, false-alarm rate 1e-4 per
composition, so at most 12 x 1e-4 = 1.2e-3 for the 12 run here) for a pairwise covering
subset; ``python -m spec.testing.grid`` runs all 90 compositions (docs/losslessness.md), and so does
``SPEC_HYPOTHESIS_PROFILE=thorough``.
Each check is shown to catch a mutant with a wide margin.
"""

import os

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from spec import MedusaDrafter, SpeculativeDecoder, StaticTreeBuilder, TreeAttentionVerifier
from spec.acceptors import GreedyAcceptor, RejectionSamplingAcceptor, TypicalAcceptor
from spec.drafters import KangarooDrafter
from spec.errors import IncompatibleStagesError, TreeTooDeepError
from spec.protocols import (
    AcceptorTraits,
    CandidateKind,
    DrafterTraits,
    DraftContext,
    SamplingParams,
    check_composition,
)
from spec.sampling import target_probs
from spec.testing import grid
from spec.testing.mutants import BonusFromTarget, SampledKindKeptAfterPruning
from spec.testing.drafters import OracleDrafter, TableDrafter
from spec.testing.exact import composition_gap
from spec.testing.strategies import candidate_trees
from spec.trees import AcceptanceStats, DynamicTreeBuilder, optimal_tree, tree_from_choices

from helpers import model

TOLERANCE = 1e-9
KINDS = {"top_k": CandidateKind.DETERMINISTIC,
         "sample_with_replacement": CandidateKind.SAMPLED_WITH_REPLACEMENT,
         "sample_without_replacement": CandidateKind.SAMPLED_WITHOUT_REPLACEMENT}
CONTEXT = DraftContext(tokens=torch.tensor([2, 1, 0]))


class RandomTable:
    """Fixed random logits ``[V]`` for every path: a target or a draft head over a tiny vocabulary."""

    def __init__(self, vocab: int, seed: int, sharpness: float):
        self.vocab, self.sharpness = vocab, sharpness
        self.generator = torch.Generator().manual_seed(seed)
        self.cache: dict[tuple, torch.Tensor] = {}

    def __call__(self, path: tuple) -> torch.Tensor:
        if path not in self.cache:
            self.cache[path] = torch.randn(self.vocab, generator=self.generator, dtype=torch.float64) * self.sharpness
        return self.cache[path]


@st.composite
def tree_builders(draw, sampled: bool):
    """A static tree, the DP-optimal tree of a random acceptance table, or a dynamic builder.
    Sampled kinds enumerate every draft draw, so their trees stay at <= 4 candidates."""
    kind = draw(st.sampled_from(["static", "optimal", "dynamic"]))
    if kind == "static":
        return StaticTreeBuilder(draw(candidate_trees(max_nodes=5 if sampled else 7, max_depth=3, max_width=3)))
    if kind == "optimal":
        probs = draw(st.lists(st.lists(st.floats(0.01, 0.45), min_size=2, max_size=2), min_size=2, max_size=2))
        return StaticTreeBuilder(optimal_tree(AcceptanceStats(probs=probs), budget=draw(st.integers(1, 4))).tree)
    depth, width = draw(st.sampled_from([(1, 2), (1, 3), (2, 1), (1, 4)] + ([] if sampled else [(2, 2)])))
    return DynamicTreeBuilder(depth=depth, width=width, total_tokens=draw(st.integers(1, depth * width)))


sampling_params = st.builds(
    SamplingParams,
    temperature=st.sampled_from([0.5, 1.0, 1.7]),
    top_k=st.one_of(st.none(), st.integers(1, 2)),
    top_p=st.sampled_from([1.0, 0.9, 0.5]),
)


@pytest.mark.parametrize("candidates", list(KINDS))
@given(data=st.data(), seed=st.integers(0, 2**20), sampling=sampling_params,
       sharpness=st.sampled_from([0.5, 2.0, 5.0]), draft_sharpness=st.sampled_from([0.3, 1.0, 3.0]))
def test_composed_stages_are_lossless(candidates, data, seed, sampling, sharpness, draft_sharpness):
    """drafter.propose -> tree_builder.select -> RejectionSamplingAcceptor, exact, for every builder and kind."""
    builder = data.draw(tree_builders(sampled=candidates != "top_k"))
    drafter = TableDrafter(RandomTable(3, seed + 1, draft_sharpness), builder.max_depth, candidates)
    gap = composition_gap(drafter, builder, RejectionSamplingAcceptor(), RandomTable(3, seed, sharpness),
                          CONTEXT, sampling)
    assert gap < TOLERANCE


@pytest.mark.parametrize("candidates", list(KINDS))
@given(data=st.data(), seed=st.integers(0, 2**20))
def test_composed_stages_are_greedy_at_temperature_zero(candidates, data, seed):
    """Greedy and rejection acceptors reproduce the target's argmax continuation exactly (gap 0)."""
    builder = data.draw(tree_builders(sampled=False))
    drafter = TableDrafter(RandomTable(4, seed + 1, 2.0), builder.max_depth, candidates)
    for acceptor in (GreedyAcceptor(), RejectionSamplingAcceptor()):
        assert composition_gap(drafter, builder, acceptor, RandomTable(4, seed, 3.0), CONTEXT,
                               SamplingParams()) < TOLERANCE


@pytest.mark.parametrize("candidates", ["sample_with_replacement", "sample_without_replacement"])
def test_the_reported_composition_was_lossy_and_is_not(candidates):
    """Issue 15: a dynamic builder keeping one of three sampled siblings by value. The old selection
    (kind and q kept) is off by far more than rounding; the fixed one is exact."""
    target, head = RandomTable(3, 11, 2.0), RandomTable(3, 12, 1.0)
    sampling = SamplingParams(temperature=1.0)
    drafter = TableDrafter(head, 1, candidates)
    fixed = composition_gap(drafter, DynamicTreeBuilder(depth=1, width=3, total_tokens=1),
                            RejectionSamplingAcceptor(), target, CONTEXT, sampling)
    old = composition_gap(drafter, SampledKindKeptAfterPruning(depth=1, width=3, total_tokens=1),
                          RejectionSamplingAcceptor(), target, CONTEXT, sampling)
    assert fixed < TOLERANCE
    assert old > 0.01, old  # 1e7 times the tolerance


def test_a_pruned_sampled_draft_is_handed_on_as_deterministic():
    drafter = TableDrafter(RandomTable(5, 3, 1.0), 2, "sample_without_replacement")
    builder = DynamicTreeBuilder(depth=2, width=2, total_tokens=3)
    draft = drafter.propose(builder.tree(), CONTEXT, SamplingParams(temperature=1.0), torch.Generator().manual_seed(0))
    assert draft.kind is CandidateKind.SAMPLED_WITHOUT_REPLACEMENT and draft.draft_probs is not None
    kept = builder.select(draft)
    assert kept.tree.num_nodes == 4
    assert kept.kind is CandidateKind.DETERMINISTIC and kept.draft_probs is None
    # Small enough not to be pruned: the draft keeps its kind (and so the more efficient sampled rule).
    whole = DynamicTreeBuilder(depth=2, width=2, total_tokens=6).select(draft)
    assert whole is draft


# ---- the grid of real drafters ---------------------------------------------------------------------------
# The ci profile checks every drafter x builder x kind once (sampling rotated); thorough checks all 144.
THOROUGH = os.environ.get("SPEC_HYPOTHESIS_PROFILE") == "thorough"
EXACT_CASES = [c for c in (grid.all_cases() if THOROUGH else grid.rotated_cases())
               if c.drafter != "kangaroo"]


@pytest.mark.parametrize("case", EXACT_CASES, ids=lambda c: c.name)
def test_grid_composition_is_exactly_lossless(case):
    assert grid.exact_gap(case) < TOLERANCE


@pytest.mark.parametrize("drafter", ["medusa", "hydra++", "clover", "eagle3"])
def test_grid_exact_check_catches_the_old_dynamic_selection(drafter):
    case = grid.GridCase(drafter, "dynamic", "sample_with_replacement", "temperature")
    assert grid.exact_gap(case, builder_class=SampledKindKeptAfterPruning) > 1e-3


#: End to end, the ci profile runs one case per EAGLE drafter (a pruned sampled draft; a sampled draft on the
#: reduced vocabulary); their other covering cases are marked slow to keep the suite's time budget (their exact
#: one-step checks above cover every builder x kind).
EAGLE_CI = {"eagle/dynamic/sample_without_replacement/top_p", "eagle3/optimal/sample_with_replacement/top_k"}


def _end_to_end_cases() -> list:
    if THOROUGH:
        return grid.all_cases()
    return [pytest.param(c, marks=pytest.mark.slow) if c.drafter.startswith("eagle") and c.name not in EAGLE_CI
            else c for c in grid.covering_cases()]


@pytest.mark.parametrize("case", _end_to_end_cases(), ids=lambda c: c.name)
def test_grid_composition_samples_the_models_distribution(case):
    p_value, mean_accepted = grid.chi_square(case)
    assert p_value > grid.ALPHA, p_value
    assert mean_accepted > 1.05  # the drafts were really used: candidates accepted in over 5% of steps


@pytest.mark.parametrize("mutant, case", [
    ("builder", grid.GridCase("hydra++", "dynamic", "sample_with_replacement", "top_p")),
    ("acceptor", grid.GridCase("clover", "static", "top_k", "top_p")),
], ids=["old-dynamic-selection", "bonus-from-target"])
def test_grid_end_to_end_check_catches_mutants_with_a_margin(mutant, case):
    if mutant == "builder":
        p_value, _ = grid.chi_square(case, builder_class=SampledKindKeptAfterPruning)
    else:
        p_value, _ = grid.chi_square(case, acceptor=BonusFromTarget())
    assert p_value < grid.ALPHA * 1e-4, p_value  # far below the test's threshold, not borderline


def test_every_grid_composition_is_accepted_by_the_stages():
    for case in grid.all_cases():
        grid.make_decoder(case)


# ---- compatibility rules, one test each ------------------------------------------------------------------
def medusa(candidates="top_k"):
    return MedusaDrafter.from_model(model("llama"), num_heads=2, seed=0, candidates=candidates)


def kangaroo():
    return KangarooDrafter.from_model(model("llama"), exit_layer=1, max_depth=2, seed=0)


def test_rule_tree_deeper_than_the_drafter():
    with pytest.raises(TreeTooDeepError, match="StaticTreeBuilder.*MedusaDrafter"):
        check_composition(medusa(), StaticTreeBuilder(tree_from_choices([[0], [0, 0], [0, 0, 0]])),
                          TreeAttentionVerifier(model("llama")), GreedyAcceptor())


def test_rule_pruning_needs_confidences():
    oracle = OracleDrafter(torch.arange(10), 96, max_depth=2)
    with pytest.raises(IncompatibleStagesError, match="DynamicTreeBuilder.*log_confidence.*OracleDrafter"):
        check_composition(oracle, DynamicTreeBuilder(2, 2, 3), TreeAttentionVerifier(model("llama")),
                          GreedyAcceptor())


class UnprunableDrafter(OracleDrafter):
    """Keeps state keyed by node outside its drafts, so a builder must not drop nodes."""

    @property
    def traits(self) -> DrafterTraits:
        return DrafterTraits(candidate_kinds={CandidateKind.DETERMINISTIC}, log_confidence=True, prunable=False)


def test_rule_unprunable_drafts_are_not_pruned():
    d = UnprunableDrafter(torch.arange(10), 96, max_depth=2)
    with pytest.raises(IncompatibleStagesError, match="DynamicTreeBuilder prunes.*UnprunableDrafter.*cannot be pruned"):
        SpeculativeDecoder(model("llama"), d, DynamicTreeBuilder(2, 2, 3), TreeAttentionVerifier(model("llama")),
                           GreedyAcceptor())


def test_rule_self_drafter_needs_its_own_verifier():
    with pytest.raises(IncompatibleStagesError, match="KangarooDrafter must be composed with its own verifier"):
        SpeculativeDecoder(model("llama"), kangaroo(), StaticTreeBuilder(tree_from_choices([[0], [1]])),
                           TreeAttentionVerifier(model("llama")), GreedyAcceptor())


def test_rule_paired_verifier_needs_its_drafter():
    with pytest.raises(IncompatibleStagesError, match="SelfDraftVerifier only verifies.*MedusaDrafter"):
        SpeculativeDecoder(model("llama"), medusa(), StaticTreeBuilder(tree_from_choices([[0], [1]])),
                           kangaroo().verifier, GreedyAcceptor())


class DeterministicOnlyAcceptor(RejectionSamplingAcceptor):
    traits = AcceptorTraits(candidate_kinds={CandidateKind.DETERMINISTIC})


@pytest.mark.parametrize("builder", [StaticTreeBuilder(tree_from_choices([[0], [1]])), DynamicTreeBuilder(2, 2, 3)],
                         ids=["static", "dynamic"])
def test_rule_acceptor_must_take_every_kind_that_reaches_it(builder):
    """Even a pruning builder lets sampled drafts through when they are small enough: still refused."""
    with pytest.raises(IncompatibleStagesError, match="sampled_without_replacement.*DeterministicOnlyAcceptor"):
        check_composition(medusa("sample_without_replacement"), builder, TreeAttentionVerifier(model("llama")),
                          DeterministicOnlyAcceptor())
    check_composition(medusa("top_k"), builder, TreeAttentionVerifier(model("llama")), DeterministicOnlyAcceptor())


def test_rule_stages_must_declare_traits():
    class Undeclared:
        max_depth = 2

    with pytest.raises(IncompatibleStagesError, match="drafter Undeclared does not declare its traits"):
        check_composition(Undeclared(), StaticTreeBuilder(tree_from_choices([[0]])),
                          TreeAttentionVerifier(model("llama")), GreedyAcceptor())


def test_lossless_is_declared_and_only_typical_is_lossy():
    tree = StaticTreeBuilder(tree_from_choices([[0], [1]]))
    verifier = TreeAttentionVerifier(model("llama"))
    assert SpeculativeDecoder(model("llama"), medusa(), tree, verifier, RejectionSamplingAcceptor()).lossless
    assert SpeculativeDecoder(model("llama"), medusa(), tree, verifier, GreedyAcceptor()).lossless
    assert not SpeculativeDecoder(model("llama"), medusa(), tree, verifier, TypicalAcceptor()).lossless


def test_a_drafter_returning_an_undeclared_kind_is_stopped_at_the_first_step():
    class Liar(MedusaDrafter):
        @property
        def traits(self):
            return super().traits.__class__(candidate_kinds={CandidateKind.DETERMINISTIC}, log_confidence=True)

    m = model("llama")
    liar = Liar(m, medusa().heads, candidates="sample_with_replacement")
    decoder = SpeculativeDecoder(m, liar, StaticTreeBuilder(tree_from_choices([[0], [1]])),
                                 TreeAttentionVerifier(m), RejectionSamplingAcceptor())
    with pytest.raises(IncompatibleStagesError, match="returned sampled_with_replacement candidates"):
        decoder.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=4, temperature=1.0, seed=0)


def test_target_table_is_a_distribution_under_every_sampling():
    # Guards the harness itself: what composition_gap compares against sums to 1.
    for sampling in (SamplingParams(temperature=0.5, top_k=1), SamplingParams(temperature=1.7, top_p=0.5)):
        p = target_probs(RandomTable(3, 0, 2.0)(()), sampling)
        assert float(p.sum()) == pytest.approx(1.0)
