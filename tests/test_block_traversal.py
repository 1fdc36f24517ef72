"""Block verification (chains) and traversal verification (trees): lossless, greedy at temperature 0,
and never accepting less than token-level rejection sampling (docs/block_traversal.md).

Exact: ``lossless_gap`` (each rule alone) and ``composition_gap`` (TableDrafter -> StaticTreeBuilder /
DynamicTreeBuilder -> the rule, every draft draw and acceptance coin enumerated) over hypothesis-generated
chains, trees, target and draft distributions and sampling settings; the gap must be <= 1e-9. Then the grid's
real drafters (spec.testing.grid), exactly and end to end (chi-square, fixed seeds, false-alarm rate 1e-4 per
composition). Every check is shown to catch a mutant of each rule by a wide margin. Expected accepted lengths
are computed exactly with ``enumerate_outcomes`` and compared with ``RejectionSamplingAcceptor``'s.
"""

import random

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from spec import AutoregressiveDecoder, BlockVerificationAcceptor, SpeculativeDecoder, TraversalVerificationAcceptor
from spec.acceptors import GreedyAcceptor, RejectionSamplingAcceptor
from spec.acceptors.block import is_chain
from spec.errors import UnsupportedError
from spec.protocols import CandidateKind, CandidateTree, Draft, DraftContext, SamplingParams, Verification
from spec.sampling import target_probs
from spec.testing import grid
from spec.testing.mutants import (
    BROKEN_BLOCK_ACCEPTORS,
    BROKEN_TRAVERSAL_ACCEPTORS,
    BlockBonusFromTarget,
    BlockResidualWithoutWeight,
    TraversalBonusFromTarget,
    TraversalWeightKeptAfterRejection,
)
from spec.testing.drafters import TableDrafter
from spec.testing.exact import composition_gap, draft_outcomes, enumerate_outcomes, lossless_gap
from spec.testing.strategies import candidate_trees
from spec.trees import DynamicTreeBuilder, StaticTreeBuilder, chain_tree, tree_from_choices

TOLERANCE = 1e-9
KINDS = {"top_k": CandidateKind.DETERMINISTIC,
         "sample_with_replacement": CandidateKind.SAMPLED_WITH_REPLACEMENT,
         "sample_without_replacement": CandidateKind.SAMPLED_WITHOUT_REPLACEMENT}
SAMPLED = [CandidateKind.SAMPLED_WITH_REPLACEMENT, CandidateKind.SAMPLED_WITHOUT_REPLACEMENT]
CONTEXT = DraftContext(tokens=torch.tensor([2, 1, 0]))
RULES = {"block": BlockVerificationAcceptor, "traversal": TraversalVerificationAcceptor}


class Table:
    """A fixed random vector ``[V]`` for every path: target logits, or (``floor`` > 0) a draft
    distribution with full support."""

    def __init__(self, vocab: int, seed: int, sharpness: float, sampling: SamplingParams = None, floor: float = 0.0):
        self.vocab, self.sharpness, self.sampling, self.floor = vocab, sharpness, sampling, floor
        self.generator = torch.Generator().manual_seed(seed)
        self.cache: dict[tuple, torch.Tensor] = {}

    def __call__(self, path: tuple) -> torch.Tensor:
        if path not in self.cache:
            v = torch.randn(self.vocab, generator=self.generator, dtype=torch.float64) * self.sharpness
            if self.floor:
                v = v.softmax(-1) * (1 - self.floor) + self.floor / self.vocab
            elif self.sampling is not None:
                v = target_probs(v, self.sampling)
            self.cache[path] = v
        return self.cache[path]


sampling_params = st.builds(
    SamplingParams,
    temperature=st.sampled_from([0.0, 0.5, 1.0, 1.7]),
    top_k=st.one_of(st.none(), st.integers(1, 3)),
    top_p=st.sampled_from([1.0, 0.9, 0.5]),
)


@st.composite
def drafts_for(draw, rule: str, kind: CandidateKind):
    """(tree, fixed tokens) small enough to enumerate: chains for block verification, any tree for
    traversal; sampled kinds enumerate every draft draw too, so their trees stay smaller."""
    sampled = kind is not CandidateKind.DETERMINISTIC
    if rule == "block":
        tree = chain_tree(draw(st.integers(0, 3)))
    else:
        tree = draw(candidate_trees(max_nodes=5 if sampled else 7, max_depth=3, max_width=3))
    tokens = draw(st.lists(st.integers(0, 2), min_size=tree.num_nodes - 1, max_size=tree.num_nodes - 1))
    return tree, tokens


def expected_accepted(acceptor, tree: CandidateTree, kind: CandidateKind, p_fn, q_fn=None, fixed_tokens=None) -> float:
    """The exact expected number of accepted candidates of one step (draft draws and coins enumerated)."""

    def one_step(randomness):
        draft = draft_outcomes(tree, 0, kind, fixed_tokens, q_fn, randomness)
        paths = [tuple(int(draft.tokens[i]) for i in tree.path_to(node)[1:]) for node in range(tree.num_nodes)]
        return acceptor.walk(draft, torch.stack([p_fn(path) for path in paths]), randomness).num_accepted

    return sum(weight * accepted for weight, accepted in enumerate_outcomes(one_step))


# ---- each rule alone, exact ---------------------------------------------------------------------------
@pytest.mark.parametrize("kind", list(CandidateKind), ids=lambda k: k.value)
@pytest.mark.parametrize("rule", list(RULES))
@given(data=st.data(), seed=st.integers(0, 2**20), sampling=sampling_params,
       sharpness=st.sampled_from([0.5, 2.0, 5.0]), draft_sharpness=st.sampled_from([0.3, 1.0, 3.0]))
def test_rule_is_lossless(rule, kind, data, seed, sampling, sharpness, draft_sharpness):
    tree, tokens = data.draw(drafts_for(rule, kind))
    target, draft = Table(3, seed, sharpness, sampling), Table(3, seed + 1, draft_sharpness, floor=0.02)
    assert lossless_gap(RULES[rule](), tree, kind, target, q_fn=draft, fixed_tokens=tokens) < TOLERANCE


@pytest.mark.parametrize("kind", list(CandidateKind), ids=lambda k: k.value)
@given(depth=st.integers(0, 4), seed=st.integers(0, 2**20), coins=st.integers(0, 2**20))
def test_traversal_is_block_verification_on_chains_coin_for_coin(kind, depth, seed, coins):
    target, head = Table(5, seed, 2.0, SamplingParams(temperature=1.0)), Table(5, seed + 1, 1.0)
    drafter = TableDrafter(head, max(depth, 1), {v: k for k, v in KINDS.items()}[kind])
    sampling = SamplingParams(temperature=1.0)
    draft = drafter.propose(chain_tree(depth), CONTEXT, sampling, torch.Generator().manual_seed(seed))
    tokens = draft.tokens.tolist()
    logits = torch.stack([torch.log(target(tuple(tokens[1:i + 1]))) for i in range(depth + 1)])
    verification = Verification(tree=draft.tree, logits=logits, hidden_states=torch.zeros(depth + 1, 1))
    block = BlockVerificationAcceptor().accept(draft, verification, sampling, torch.Generator().manual_seed(coins))
    traversal = TraversalVerificationAcceptor().accept(draft, verification, sampling,
                                                       torch.Generator().manual_seed(coins))
    assert block == traversal


# ---- composed stages, exact -------------------------------------------------------------------------
@pytest.mark.parametrize("candidates", list(KINDS))
@pytest.mark.parametrize("rule", list(RULES))
@given(data=st.data(), seed=st.integers(0, 2**20), sampling=sampling_params,
       sharpness=st.sampled_from([0.5, 2.0, 5.0]), draft_sharpness=st.sampled_from([0.3, 1.0, 3.0]))
def test_composed_stages_are_lossless(rule, candidates, data, seed, sampling, sharpness, draft_sharpness):
    """TableDrafter (the head drafters' own filling code) -> tree builder -> the rule, every draw enumerated.
    Block verification gets chains; traversal gets static trees and pruning dynamic builders."""
    sampled = candidates != "top_k"
    if rule == "block":
        builder = StaticTreeBuilder(chain_tree(data.draw(st.integers(1, 3))))
    elif data.draw(st.booleans()):
        builder = StaticTreeBuilder(data.draw(candidate_trees(max_nodes=5 if sampled else 7, max_depth=3,
                                                              max_width=3)))
    else:
        depth, width = data.draw(st.sampled_from([(1, 3), (2, 1)] + ([] if sampled else [(2, 2)])))
        builder = DynamicTreeBuilder(depth=depth, width=width, total_tokens=data.draw(st.integers(1, 3)))
    drafter = TableDrafter(Table(3, seed + 1, draft_sharpness), builder.max_depth, candidates)
    gap = composition_gap(drafter, builder, RULES[rule](), Table(3, seed, sharpness), CONTEXT, sampling)
    assert gap < TOLERANCE


# ---- temperature 0: greedy decoding -------------------------------------------------------------------
@st.composite
def greedy_cases(draw, chain: bool, vocab: int = 6):
    tree = chain_tree(draw(st.integers(0, 5))) if chain else draw(candidate_trees(max_nodes=12, max_depth=4,
                                                                                   max_width=3))
    logits = torch.randn(tree.num_nodes, vocab, generator=torch.Generator().manual_seed(draw(st.integers(0, 2**20))),
                         dtype=torch.float64) * 3
    argmax, tokens = logits.argmax(-1), [0]
    for node in range(1, tree.num_nodes):  # often the target's choice; siblings distinct, as top-k makes them
        taken = {tokens[s] for s in tree.children[tree.parents[node]] if s < node}
        options = [t for t in range(vocab) if t not in taken]
        want = int(argmax[tree.parents[node]])
        tokens.append(want if want in options and draw(st.booleans()) else draw(st.sampled_from(options)))
    return (Draft(tree=tree, tokens=torch.tensor(tokens)),
            Verification(tree=tree, logits=logits, hidden_states=torch.zeros(tree.num_nodes, 1)))


@pytest.mark.parametrize("rule", list(RULES))
@given(data=st.data(), coins=st.integers(0, 100))
def test_at_temperature_zero_each_rule_equals_greedy(rule, data, coins):
    draft, verification = data.draw(greedy_cases(chain=rule == "block"))
    greedy = GreedyAcceptor().accept(draft, verification, SamplingParams())
    assert RULES[rule]().accept(draft, verification, SamplingParams(), torch.Generator().manual_seed(coins)) == greedy


@pytest.mark.parametrize("rule", list(RULES))
def test_greedy_decoding_through_the_pipeline_is_the_models_own(rule):
    tree = chain_tree(2) if rule == "block" else tree_from_choices([[0], [1], [0, 0], [1, 0]])
    prompt = torch.tensor([grid.PROMPT])
    reference = AutoregressiveDecoder(grid.target_model()).generate(prompt, max_new_tokens=12).sequences
    for candidates in KINDS:
        drafter, _, verifier, acceptor = grid.build_stages(grid.GridCase("hydra++", "static", candidates,
                                                                         "temperature"), RULES[rule]())
        decoder = SpeculativeDecoder(grid.target_model(), drafter, StaticTreeBuilder(tree), verifier, acceptor)
        assert torch.equal(decoder.generate(prompt, max_new_tokens=12).sequences, reference)


# ---- acceptance: never less than token-level rejection, more on sampled drafts -------------------------
@pytest.mark.parametrize("kind", list(CandidateKind), ids=lambda k: k.value)
@pytest.mark.parametrize("rule", list(RULES))
@given(data=st.data(), seed=st.integers(0, 2**20), sharpness=st.sampled_from([0.5, 2.0, 5.0]),
       draft_sharpness=st.sampled_from([0.3, 1.0, 3.0]), temperature=st.sampled_from([0.7, 1.0, 1.5]))
def test_expected_accepted_length_is_never_below_token_level(rule, kind, data, seed, sharpness, draft_sharpness,
                                                             temperature):
    tree, tokens = data.draw(drafts_for(rule, kind))
    target = Table(3, seed, sharpness, SamplingParams(temperature=temperature))
    draft = Table(3, seed + 1, draft_sharpness, floor=0.02)
    ours = expected_accepted(RULES[rule](), tree, kind, target, draft, tokens)
    token_level = expected_accepted(RejectionSamplingAcceptor(), tree, kind, target, draft, tokens)
    assert ours >= token_level - 1e-12
    if kind is CandidateKind.DETERMINISTIC:  # a point-mass q: the same rule as token level (docs/block_traversal.md)
        assert ours == pytest.approx(token_level, abs=1e-12)


GAIN_CASES = 24


def gain_cases(rule: str):
    """Fixed sampled cases at least two deep (one-deep drafts gain nothing: the first level is token-level)."""
    rng = random.Random(23)
    trees = [chain_tree(2), chain_tree(3)] if rule == "block" else [
        tree_from_choices([[0], [0, 0], [0, 1]]), tree_from_choices([[0], [1], [0, 0]]),
        tree_from_choices([[0], [1], [0, 0], [1, 0]]), tree_from_choices([[0], [0, 0], [0, 0, 0]])]
    for i in range(GAIN_CASES):
        yield (trees[i % len(trees)], SAMPLED[i % 2], Table(3, 1000 + i, rng.choice([0.5, 2.0]),
                                                            SamplingParams(temperature=rng.choice([0.7, 1.0]))),
               Table(3, 2000 + i, rng.choice([0.3, 1.0, 3.0]), floor=0.02))


@pytest.mark.parametrize("rule", list(RULES))
def test_sampled_drafts_two_deep_accept_strictly_more(rule):
    """Stated fraction: on these 24 fixed sampled cases at least two deep, every one accepts strictly more
    than token level (> 1e-9 expected tokens); docs/block_traversal.md reports the gains."""
    higher = 0
    for tree, kind, target, draft in gain_cases(rule):
        ours = expected_accepted(RULES[rule](), tree, kind, target, draft)
        token_level = expected_accepted(RejectionSamplingAcceptor(), tree, kind, target, draft)
        assert ours >= token_level - 1e-12
        higher += ours > token_level + 1e-9
    assert higher == GAIN_CASES, f"{higher} of {GAIN_CASES}"


# ---- the mutants are caught by the exact check ------------------------------------------------------------
MUTATION_TREES = {"block": (chain_tree(2), [0, 1]), "traversal": (tree_from_choices([[0], [1], [0, 0]]), [0, 1, 1])}


@pytest.mark.parametrize("broken", BROKEN_BLOCK_ACCEPTORS + BROKEN_TRAVERSAL_ACCEPTORS, ids=lambda c: c.__name__)
def test_each_broken_rule_is_caught_exactly(broken):
    rule = "block" if issubclass(broken, BlockVerificationAcceptor) else "traversal"
    tree, tokens = MUTATION_TREES[rule]
    for kind in broken.breaks_kinds:
        target, draft = Table(3, 5, 1.0, SamplingParams(temperature=1.0)), Table(3, 6, 3.0, floor=0.02)
        assert lossless_gap(broken(), tree, kind, target, q_fn=draft, fixed_tokens=tokens) > 1e-3, kind
        assert lossless_gap(RULES[rule](), tree, kind, target, q_fn=draft, fixed_tokens=tokens) < TOLERANCE


# ---- refusals and declarations ------------------------------------------------------------------------------
def test_block_verification_refuses_a_tree_naming_the_rule_and_the_fix():
    drafter, _, verifier, _ = grid.build_stages(grid.GridCase("medusa", "static", "top_k", "temperature"))
    decoder = SpeculativeDecoder(grid.target_model(), drafter, StaticTreeBuilder(tree_from_choices([[0], [1]])),
                                 verifier, BlockVerificationAcceptor())
    with pytest.raises(UnsupportedError, match="BlockVerificationAcceptor verifies a single chain.*node 0.*"
                                                "chain_tree.*TraversalVerificationAcceptor"):
        decoder.generate(torch.tensor([grid.PROMPT]), max_new_tokens=3, temperature=1.0, seed=0)
    assert is_chain(chain_tree(3)) and is_chain(CandidateTree.root_only())


@pytest.mark.parametrize("rule", list(RULES))
def test_every_candidate_kind_composes_and_is_lossless(rule):
    """Both rules are proven for every kind (deterministic candidates as a point-mass q), so no drafter
    configuration is refused: Medusa top-k and sampled candidates both compose."""
    assert RULES[rule].traits.candidate_kinds == frozenset(CandidateKind) and RULES[rule].traits.lossless
    for candidates in KINDS:
        drafter, _, verifier, acceptor = grid.build_stages(grid.GridCase("medusa", "static", candidates,
                                                                         "temperature"), RULES[rule]())
        decoder = SpeculativeDecoder(grid.target_model(), drafter, StaticTreeBuilder(chain_tree(2)), verifier,
                                     acceptor)
        assert decoder.lossless


# ---- the grid's real drafters: exact, then end to end -------------------------------------------------------
def chain_builder(depth, width, total_tokens):
    """Passed as the grid's dynamic-builder class: a chain as deep as the grid's trees."""
    return StaticTreeBuilder(chain_tree(depth))


def grid_case(rule: str, drafter: str, builder: str, candidates: str, sampling: str):
    """(case, builder_class) for the grid helpers: block verification always gets a chain."""
    if rule == "block":
        return grid.GridCase(drafter, "dynamic", candidates, sampling), chain_builder
    return grid.GridCase(drafter, builder, candidates, sampling), None


EXACT = [("block", "medusa", "-", "sample_with_replacement", "temperature"),
         ("block", "hydra++", "-", "sample_without_replacement", "top_p"),
         ("block", "clover", "-", "top_k", "top_k"),
         ("traversal", "medusa", "static", "sample_without_replacement", "top_k"),
         ("traversal", "hydra++", "optimal", "sample_with_replacement", "temperature"),
         ("traversal", "clover", "static", "sample_with_replacement", "top_p"),
         ("traversal", "hydra++", "dynamic", "top_k", "temperature")]


@pytest.mark.parametrize("args", EXACT, ids=lambda a: "/".join(a))
def test_grid_composition_is_exactly_lossless(args):
    case, builder_class = grid_case(*args)
    assert grid.exact_gap(case, acceptor=RULES[args[0]](), builder_class=builder_class) < TOLERANCE


@pytest.mark.parametrize("broken", BROKEN_BLOCK_ACCEPTORS + BROKEN_TRAVERSAL_ACCEPTORS, ids=lambda c: c.__name__)
def test_grid_exact_check_catches_each_rules_mutants(broken):
    rule = "block" if issubclass(broken, BlockVerificationAcceptor) else "traversal"
    case, builder_class = grid_case(rule, "medusa", "static", "sample_with_replacement", "temperature")
    assert grid.exact_gap(case, acceptor=broken(), builder_class=builder_class) > 1e-3


# Every drafter each rule supports, end to end (Kangaroo only with its own verifier, top-k candidates).
END_TO_END = [("block", "medusa", "-", "sample_with_replacement", "temperature"),
              ("block", "hydra++", "-", "sample_without_replacement", "top_p"),
              ("block", "clover", "-", "sample_with_replacement", "top_k"),
              ("block", "kangaroo", "-", "top_k", "temperature"),
              ("traversal", "medusa", "static", "sample_without_replacement", "top_k"),
              ("traversal", "hydra++", "optimal", "sample_with_replacement", "temperature"),
              ("traversal", "clover", "dynamic", "sample_with_replacement", "top_p"),
              ("traversal", "kangaroo", "static", "top_k", "top_p")]
SAMPLES = 600  # per composition; a false alarm still has probability grid.ALPHA (fixed seeds: deterministic)


@pytest.mark.parametrize("args", END_TO_END, ids=lambda a: "/".join(a))
def test_grid_composition_samples_the_models_distribution(args):
    case, builder_class = grid_case(*args)
    p_value, mean_accepted = grid.chi_square(case, SAMPLES, acceptor=RULES[args[0]](), builder_class=builder_class)
    assert p_value > grid.ALPHA, p_value
    assert mean_accepted > 1.05  # the drafts were really used


@pytest.mark.parametrize("broken, args", [
    (BlockResidualWithoutWeight, ("block", "medusa", "-", "sample_with_replacement", "temperature")),
    (BlockBonusFromTarget, ("block", "clover", "-", "top_k", "temperature")),
    (TraversalWeightKeptAfterRejection, ("traversal", "medusa", "static", "sample_with_replacement", "temperature")),
    (TraversalBonusFromTarget, ("traversal", "hydra++", "static", "sample_without_replacement", "temperature")),
], ids=lambda a: a.__name__ if isinstance(a, type) else "/".join(a))
def test_grid_end_to_end_check_catches_each_rules_mutants(broken, args):
    case, builder_class = grid_case(*args)
    p_value, _ = grid.chi_square(case, SAMPLES, acceptor=broken(), builder_class=builder_class)
    assert p_value < 1e-8, p_value  # far below the test's threshold grid.ALPHA, not borderline
