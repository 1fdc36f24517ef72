"""The conformance kit (spec.testing.conformance) on real subjects.

It passes the project's RejectionSamplingAcceptor for every candidate kind (exact) and
transformers' own ``_speculative_sampling`` (statistical), and fails every deliberately
broken acceptor and a hand-written lossy sampler with a wide margin.

Statistical checks: fixed seeds, so the outcome is deterministic and cannot flake. The kit's
false-alarm rate is ALPHA = 1e-4 per check (Bonferroni over its scenarios): a lossless sampler
would fail with at most that probability for a random choice of seeds.
"""

from collections import Counter

import pytest
import torch

from spec.acceptors import GreedyAcceptor, RejectionSamplingAcceptor
from spec.errors import ConfigurationError, ShapeError
from spec.protocols import CandidateKind, SamplingParams
from spec.testing.mutants import BROKEN_REJECTION_ACCEPTORS, BonusFromTarget, DraftProbsIgnored
from spec.testing.conformance import (
    ConformanceCase,
    ConformanceReport,
    accept_sampler,
    check_sampler,
    format_table,
    project_reports,
    rejection_sampler,
    transformers_report,
    transformers_speculative_sampling,
)
from spec.trees import chain_tree, tree_from_choices

ALPHA = 1e-4
SAMPLED = CandidateKind.SAMPLED_WITH_REPLACEMENT


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: with several (shared) threads each op can cost milliseconds of OpenMP overhead."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def project():
    """The command's project table (exact): honest acceptors first, then the broken mutants."""
    return {r.name: r for r in project_reports(seed=0, typical_samples=0)}


# ---- the project's acceptors ------------------------------------------------------------------
def test_rejection_acceptor_passes_exactly_for_every_kind_on_chains_and_trees(project):
    report = project["RejectionSamplingAcceptor"]
    assert report.passed and report.mode == "exact" and report.gap < 1e-12, str(report)
    assert {s.kind for s in report.scenarios} == set(CandidateKind)
    assert any(len(c) == 3 for s in report.scenarios for c in s.tree.children)  # branching trees, not just chains
    assert str(report).startswith("PASS")


def test_greedy_and_rejection_pass_at_temperature_zero(project):
    for name in ("GreedyAcceptor (temperature 0)", "RejectionSamplingAcceptor (temperature 0)"):
        assert project[name].passed and project[name].gap < 1e-12, str(project[name])


@pytest.mark.parametrize("broken", BROKEN_REJECTION_ACCEPTORS, ids=lambda c: c.__name__)
def test_every_broken_acceptor_fails_exactly_with_a_margin(project, broken):
    report = project[f"broken.{broken.__name__}"]
    assert not report.passed and str(report).startswith("FAIL")
    assert report.gap > 1e-3, str(report)  # the tolerance is 1e-9: six orders of magnitude of margin


def test_the_table_lists_every_verdict(project):
    table = format_table(list(project.values()))
    assert table.count("PASS") == 3 and table.count("FAIL") == len(BROKEN_REJECTION_ACCEPTORS)


def test_broken_acceptors_fail_statistically_too():
    for broken in (BonusFromTarget, DraftProbsIgnored):
        report = check_sampler(rejection_sampler(broken()), kinds=[SAMPLED], mode="statistical", samples=1000)
        assert not report.passed and report.p_value < 1e-8, str(report)
        assert report.tv > 3 * report.tv_noise


# ---- transformers' speculative sampling ------------------------------------------------------------
def test_transformers_speculative_sampling_passes_statistically():
    report = transformers_report(samples=3000, seed=0)
    assert report.mode == "statistical" and report.samples == 6 * 3000
    assert report.passed and report.p_value > ALPHA, report.details()
    # The TV distance is what sampling noise alone gives (a bias would push it well above).
    assert all(s.tv < 2 * s.tv_noise for s in report.scenarios), report.details()


def test_exact_mode_refuses_a_sampler_that_uses_the_global_rng():
    state = torch.get_rng_state()
    with pytest.raises(ConfigurationError, match="global RNG"):
        check_sampler(transformers_speculative_sampling, tree_shapes=[chain_tree(1)], kinds=[SAMPLED])
    assert torch.equal(state, torch.get_rng_state())  # and leaves the caller's RNG as it was


def test_transformers_adapter_refuses_trees():
    report = check_sampler(transformers_speculative_sampling, tree_shapes=[tree_from_choices([[0], [1]])],
                           kinds=[SAMPLED], mode="statistical", samples=10)
    assert not report.passed and "chain" in report.errors[0]


# ---- lossy and malformed samplers ------------------------------------------------------------------
def accept_every_candidate(case, randomness):
    """Lossy: takes the first leaf's whole path, then a bonus from the target there."""
    leaf = case.tree.leaves[0]
    return [case.tokens[i] for i in case.tree.path_to(leaf)[1:]] + [randomness.categorical(case.target_probs[leaf])]


def test_a_lossy_sampler_fails():
    report = check_sampler(accept_every_candidate, tree_shapes="tree")
    assert not report.passed and report.gap > 1e-2 and not report.errors


def test_a_sampler_that_crashes_or_emits_too_much_fails_with_the_reason():
    def crashes(case, randomness):
        raise RuntimeError("boom")

    def too_long(case, randomness):
        return list(case.tokens) + [0]  # root + every candidate + one: depth + 2 tokens

    report = check_sampler(crashes, tree_shapes=[chain_tree(1)], kinds=[SAMPLED])
    assert not report.passed and report.gap is None and "RuntimeError: boom" in str(report)
    report = check_sampler(too_long, tree_shapes=[chain_tree(1)], kinds=[SAMPLED], mode="statistical", samples=5)
    assert not report.passed and "emitted 3 tokens" in report.errors[0]


def test_the_greedy_acceptor_is_not_lossless_when_sampling():
    report = check_sampler(accept_sampler(GreedyAcceptor(), SamplingParams()), tree_shapes=[chain_tree(1)],
                           kinds=[CandidateKind.DETERMINISTIC])
    assert not report.passed and report.gap > 1e-2


# ---- the vLLM-style adapter from docs/conformance.md ---------------------------------------------------
def batched_rejection_sample(draft_token_ids, draft_probs, target_probs, bonus_token_ids):
    """A chain sampler in vLLM's batched style: ``[B, k]`` drafts, ``[B, k, V]`` q, ``[B, k + 1, V]`` p,
    ``[B]`` bonus tokens pre-sampled from ``p[:, k]``; returns ``[B, k + 1]`` with -1 after the end."""
    batch, k = draft_token_ids.shape
    out = torch.full((batch, k + 1), -1, dtype=torch.long)
    for b in range(batch):
        for i in range(k):
            x = int(draft_token_ids[b, i])
            if torch.rand(()) < target_probs[b, i, x] / draft_probs[b, i, x]:
                out[b, i] = x
                continue
            residual = (target_probs[b, i] - draft_probs[b, i]).clamp(min=0)
            out[b, i] = int(torch.multinomial(residual / residual.sum(), 1))
            break
        else:
            out[b, k] = bonus_token_ids[b]
    return out


def batched_adapter(case, randomness):  # as in docs/conformance.md
    if not case.is_chain or case.kind is CandidateKind.DETERMINISTIC:
        raise ValueError("a chain of sampled candidates only")
    p = case.target_probs.float()[None]  # [1, k + 1, V]
    q = case.draft_probs[1:].float()[None]  # [1, k, V]
    draft = torch.tensor(case.tokens[1:])[None]  # [1, k]
    bonus = torch.multinomial(p[0, -1], 1)  # [1], drawn from p after the whole chain
    out = batched_rejection_sample(draft, q, p, bonus)[0]
    return out[out >= 0].tolist()


def test_the_documented_batched_adapter_passes():
    report = check_sampler(batched_adapter, kinds=[SAMPLED], mode="statistical", samples=1000)
    assert report.passed, report.details()


# ---- ConformanceCase validation and arguments ----------------------------------------------------------
def _case(**overrides):
    tree = tree_from_choices([[0], [1]])
    q = torch.tensor([[0.0, 0.0, 0.0], [0.5, 0.3, 0.2], [0.5, 0.3, 0.2]], dtype=torch.float64)
    fields = dict(tree=tree, kind=SAMPLED, tokens=(0, 1, 2), draft_probs=q,
                  target_probs=torch.full((3, 3), 1 / 3, dtype=torch.float64))
    fields.update(overrides)
    return ConformanceCase(**fields)


def test_a_valid_case_converts_to_a_draft():
    case = _case(tokens=torch.tensor([0, 1, 2]))
    assert case.tokens == (0, 1, 2) and case.vocab == 3 and case.depth == 1 and not case.is_chain
    assert case.draft().kind is SAMPLED and case.draft().tokens.tolist() == [0, 1, 2]
    assert _case(kind=CandidateKind.DETERMINISTIC, draft_probs=None).draft().draft_probs is None


@pytest.mark.parametrize("overrides, message", [
    (dict(tokens=(0, 1)), "tokens has 2 entries"),
    (dict(tokens=(0, 1, 3)), "outside the vocabulary"),
    (dict(target_probs=torch.full((2, 3), 1 / 3, dtype=torch.float64)), r"shape \[3, V\]"),
    (dict(target_probs=torch.full((3, 3), 1 / 3)), "float64"),
    (dict(target_probs=torch.full((3, 3), 0.5, dtype=torch.float64)), "not a distribution"),
    (dict(draft_probs=None), "needs draft_probs"),
    (dict(draft_probs=torch.full((3, 4), 0.25, dtype=torch.float64)), r"shape \[3, 3\]"),
    (dict(draft_probs=torch.tensor([[0, 0, 0], [0.5, 0.5, 0], [0.5, 0.5, 0]], dtype=torch.float64)),
     "probability 0 under the q"),
    (dict(draft_probs=torch.tensor([[0, 0, 0], [0.5, 0.3, 0.2], [0.2, 0.3, 0.5]], dtype=torch.float64)),
     "share one draft_probs row"),
    (dict(draft_probs=torch.tensor([[0, 0, 0], [0.5, 0.3, 0.3], [0.5, 0.3, 0.3]], dtype=torch.float64)),
     "row 1 is not a distribution"),
])
def test_invalid_cases_are_refused(overrides, message):
    with pytest.raises(ShapeError, match=message):
        _case(**overrides)


@pytest.mark.parametrize("kwargs, message", [
    (dict(mode="approximate"), "mode"),
    (dict(vocab=1), "vocab"),
    (dict(tree_shapes="forest"), "tree_shapes"),
    (dict(kinds=[]), "kinds"),
    (dict(alpha=0.0), "alpha"),
    (dict(mode="statistical", samples=0), "samples"),
    (dict(tree_shapes=[tree_from_choices([[0], [1], [2]])], vocab=2), "children"),
])
def test_invalid_arguments_are_refused(kwargs, message):
    with pytest.raises(ConfigurationError, match=message):
        check_sampler(rejection_sampler(RejectionSamplingAcceptor()), **kwargs)


def test_statistical_mode_is_deterministic_and_restores_the_global_rng():
    state = torch.get_rng_state()
    kwargs = dict(tree_shapes=[chain_tree(2)], kinds=[SAMPLED], mode="statistical", samples=200, seed=3)
    first = check_sampler(rejection_sampler(RejectionSamplingAcceptor()), **kwargs)
    second = check_sampler(rejection_sampler(RejectionSamplingAcceptor()), **kwargs)
    assert isinstance(first, ConformanceReport) and first.p_value == second.p_value and first.tv == second.tv
    assert torch.equal(state, torch.get_rng_state())
    assert Counter(s.samples for s in first.scenarios) == Counter({200: 2})
