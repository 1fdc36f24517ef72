"""Exact proofs of losslessness: the acceptor's output distribution, computed by enumerating
every random choice (spec.testing.exact), equals the target's, to floating-point tolerance.

Statement checked (for one step): the tokens the step emits, continued with the target's
own sampler to ``depth + 1`` tokens, are distributed exactly as ``depth + 1`` tokens
sampled from the target. Over hypothesis-generated trees, target distributions (through
temperature / top-k / top-p), draft distributions, candidate kinds and tokens.
"""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from spec.acceptors import GreedyAcceptor, RejectionSamplingAcceptor, TypicalAcceptor, typical_thresholds
from spec.protocols import CandidateKind, Draft, SamplingParams, Verification
from spec.sampling import target_probs
from spec.testing.mutants import BROKEN_REJECTION_ACCEPTORS
from spec.testing.exact import lossless_gap
from spec.testing.strategies import candidate_trees
from spec.trees import tree_from_choices

TOLERANCE = 1e-9


class RandomLM:
    """A 'model' over a tiny vocabulary: a fixed random distribution for every prefix."""

    def __init__(self, vocab: int, seed: int, sharpness: float, sampling: SamplingParams = SamplingParams(1.0),
                 floor: float = 0.0):
        self.vocab, self.sampling, self.sharpness, self.floor = vocab, sampling, sharpness, floor
        self.generator = torch.Generator().manual_seed(seed)
        self.cache: dict[tuple, torch.Tensor] = {}

    def __call__(self, prefix: tuple) -> torch.Tensor:
        if prefix not in self.cache:
            logits = torch.randn(self.vocab, generator=self.generator, dtype=torch.float64) * self.sharpness
            if self.floor:  # a draft distribution: keep full support
                self.cache[prefix] = logits.softmax(-1) * (1 - self.floor) + self.floor / self.vocab
            else:
                self.cache[prefix] = target_probs(logits, self.sampling)
        return self.cache[prefix]


sampling_params = st.builds(
    SamplingParams,
    temperature=st.sampled_from([0.0, 0.5, 1.0, 1.7]),
    top_k=st.one_of(st.none(), st.integers(1, 4)),
    top_p=st.sampled_from([1.0, 0.9, 0.6, 0.3]),
)


@given(data=st.data(), vocab=st.integers(2, 4), seed=st.integers(0, 2**20), sampling=sampling_params,
       sharpness=st.sampled_from([0.5, 2.0, 5.0]))
def test_deterministic_candidates_are_lossless(data, vocab, seed, sampling, sharpness):
    tree = data.draw(candidate_trees(max_nodes=7, max_depth=3, max_width=3))
    tokens = data.draw(st.lists(st.integers(0, vocab - 1), min_size=tree.num_nodes - 1, max_size=tree.num_nodes - 1))
    target = RandomLM(vocab, seed, sharpness, sampling)
    gap = lossless_gap(RejectionSamplingAcceptor(), tree, CandidateKind.DETERMINISTIC, target, fixed_tokens=tokens)
    assert gap < TOLERANCE


@pytest.mark.parametrize("kind", [CandidateKind.SAMPLED_WITH_REPLACEMENT, CandidateKind.SAMPLED_WITHOUT_REPLACEMENT])
@given(data=st.data(), seed=st.integers(0, 2**20), sampling=sampling_params,
       sharpness=st.sampled_from([0.5, 2.0, 5.0]), draft_sharpness=st.sampled_from([0.3, 1.0, 3.0]))
def test_sampled_candidates_are_lossless(kind, data, seed, sampling, sharpness, draft_sharpness):
    vocab = 3
    tree = data.draw(candidate_trees(max_nodes=5, max_depth=2, max_width=3))
    target = RandomLM(vocab, seed, sharpness, sampling)
    draft = RandomLM(vocab, seed + 1, draft_sharpness, floor=0.02)
    assert lossless_gap(RejectionSamplingAcceptor(), tree, kind, target, q_fn=draft) < TOLERANCE


@pytest.mark.parametrize("kind", [CandidateKind.SAMPLED_WITH_REPLACEMENT, CandidateKind.SAMPLED_WITHOUT_REPLACEMENT])
@given(seed=st.integers(0, 2**20))
@settings(max_examples=5)
def test_deterministic_rule_is_lossless_for_sampled_candidates_too(kind, seed):
    """Ignoring q *entirely* (the top-k rule) loses efficiency, not exactness: candidates
    independent of the acceptor's coins may be tested with the deterministic rule."""

    class DeterministicRule(RejectionSamplingAcceptor):
        def walk(self, draft, p_rows, randomness):
            plain = Draft(tree=draft.tree, tokens=draft.tokens)
            return super().walk(plain, p_rows, randomness)

    tree = tree_from_choices([[0], [1], [0, 0], [0, 1]])
    target, draft = RandomLM(3, seed, 2.0), RandomLM(3, seed + 1, 1.0, floor=0.02)
    assert lossless_gap(DeterministicRule(), tree, kind, target, q_fn=draft) < TOLERANCE


# ---- mutation checks: the suite catches each classic bug ------------------------------------------
MUTATION_CASES = [
    (CandidateKind.DETERMINISTIC, [[0], [1], [2], [0, 0], [0, 1]], [0, 1, 2, 1, 3]),
    (CandidateKind.SAMPLED_WITH_REPLACEMENT, [[0], [1], [2]], None),
    (CandidateKind.SAMPLED_WITHOUT_REPLACEMENT, [[0], [1], [2]], None),
]


def gap_or_crash(acceptor, kind, choices, tokens, seed):
    # A peaked q: some bugs (a drawn token left in q) only matter when q is far from uniform.
    target, draft = RandomLM(4, seed, 1.0), RandomLM(4, seed + 1, 3.0, floor=0.02)
    try:
        return lossless_gap(acceptor, tree_from_choices(choices), kind, target, q_fn=draft, fixed_tokens=tokens)
    except ValueError:  # the bug produced something that is not a distribution
        return float("inf")


@pytest.mark.parametrize("broken", BROKEN_REJECTION_ACCEPTORS, ids=lambda c: c.__name__)
def test_each_broken_acceptor_is_caught(broken):
    applicable = [case for case in MUTATION_CASES if case[0] in broken.breaks_kinds]
    assert applicable
    for kind, choices, tokens in applicable:
        gaps = [gap_or_crash(broken(), kind, choices, tokens, seed) for seed in range(3)]
        assert max(gaps) > 1e-3, f"{broken.__name__} not caught for {kind.value}: gaps {gaps}"
        honest = [gap_or_crash(RejectionSamplingAcceptor(), kind, choices, tokens, seed) for seed in range(3)]
        assert max(honest) < TOLERANCE


# ---- temperature 0 and typical acceptance -----------------------------------------------------------
@st.composite
def drafts_and_logits(draw, vocab=8):
    tree = draw(candidate_trees(max_nodes=12, max_depth=4, max_width=3))
    seed = draw(st.integers(0, 2**20))
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(tree.num_nodes, vocab, generator=g, dtype=torch.float64) * 3
    argmax = logits.argmax(-1)
    tokens = [0]
    for node in range(1, tree.num_nodes):
        # Often the target's choice so paths get long; siblings distinct, as top-k drafters make them.
        taken = {tokens[s] for s in tree.children[tree.parents[node]] if s < node}
        options = [t for t in range(vocab) if t not in taken]
        want = int(argmax[tree.parents[node]])
        tokens.append(want if want in options and draw(st.booleans()) else draw(st.sampled_from(options)))
    draft = Draft(tree=tree, tokens=torch.tensor(tokens))
    return draft, Verification(tree=tree, logits=logits, hidden_states=torch.zeros(tree.num_nodes, 2))


@given(drafts_and_logits(), st.integers(0, 100))
def test_at_temperature_zero_rejection_and_typical_equal_greedy(case, seed):
    draft, verification = case
    greedy = GreedyAcceptor().accept(draft, verification, SamplingParams())
    g = torch.Generator().manual_seed(seed)
    assert RejectionSamplingAcceptor().accept(draft, verification, SamplingParams(), g) == greedy
    assert TypicalAcceptor().accept(draft, verification, SamplingParams(), g) == greedy


@given(drafts_and_logits(), st.floats(0.01, 0.5), st.floats(0.05, 1.0), st.sampled_from([0.7, 1.0, 1.5]))
def test_typical_admits_exactly_what_the_formula_admits(case, epsilon, delta, temperature):
    draft, verification = case
    acceptor = TypicalAcceptor(epsilon=epsilon, delta=delta)
    sampling = SamplingParams(temperature=temperature)
    p = target_probs(verification.logits, sampling)
    admitted = acceptor.admitted(draft, p)
    for node in range(1, draft.tree.num_nodes):
        parent_p = p[draft.tree.parents[node]]
        entropy = -sum(float(x) * float(torch.log(x)) for x in parent_p if x > 0)
        threshold = min(epsilon, delta * torch.exp(torch.tensor(-entropy)).item())
        assert bool(admitted[node]) == (float(parent_p[draft.tokens[node]]) > threshold)
    path = acceptor.typical_path(draft, p)
    assert all(admitted[n] for n in path)
    # No admitted path is longer than the one chosen.
    longest = max(len(draft.tree.path_to(leaf)) for leaf in range(draft.tree.num_nodes)
                  if all(admitted[n] for n in draft.tree.path_to(leaf)))
    assert len(path) == longest


@given(drafts_and_logits(), st.integers(0, 100))
def test_typical_with_epsilon_to_zero_accepts_every_possible_candidate(case, seed):
    draft, verification = case
    sampling = SamplingParams(temperature=1.0, top_k=3)
    p = target_probs(verification.logits, sampling)
    out = TypicalAcceptor(epsilon=1e-300).accept(draft, verification, sampling, torch.Generator().manual_seed(seed))
    possible = [n for n in range(draft.tree.num_nodes)
                if all(p[draft.tree.parents[m], draft.tokens[m]] > 0 for m in draft.tree.path_to(n)[1:])]
    assert len(out.path) == max(len(draft.tree.path_to(n)) for n in possible)


def test_typical_thresholds_shape_and_values():
    p = torch.tensor([[1.0, 0.0], [0.5, 0.5]], dtype=torch.float64)
    t = typical_thresholds(p, epsilon=0.09, delta=0.3)
    assert t[0] == pytest.approx(0.09) and t[1] == pytest.approx(min(0.09, 0.3 * 0.5))
