"""End to end: sampling through the whole pipeline matches the model's exact distribution.

A tiny model with a 5-token vocabulary; the probability of every 3-token continuation is
computed from the model. Each configuration samples N = 2000 continuations (seeds
0..N-1) and runs Pearson's chi-square test. False-alarm rate: ALPHA = 1e-4 per test (a
correct sampler fails with that probability for a random choice of seeds); the seeds are
fixed, so the outcome is deterministic and CI cannot flake. The same test on the
deliberately broken acceptor BonusFromTarget gives p < ALPHA, so it has the power to
catch a real bug.
"""

import itertools
from collections import Counter
from functools import lru_cache

import pytest
import torch

from spec import MedusaDrafter, SpeculativeDecoder, StaticTreeBuilder, TreeAttentionVerifier
from spec.acceptors import RejectionSamplingAcceptor
from spec.pipelines import AutoregressiveDecoder
from spec.protocols import SamplingParams
from spec.sampling import target_probs
from spec.testing.mutants import BonusFromTarget
from spec.testing.stats import chi_square_pvalue
from spec.trees import chain_tree, tree_from_choices

from helpers import model

ALPHA = 1e-4
SAMPLES = 2000
NEW = 3
VOCAB = 5
PROMPT = torch.tensor([[1, 3, 0, 2]])
SAMPLING = dict(temperature=0.9, top_k=4, top_p=0.97)
TREES = {
    "chain2": chain_tree(2),
    "tree5": tree_from_choices([[0], [1], [2], [0, 0], [1, 0], [0, 1]]),
}


def tiny():
    return model("llama", seed=4, vocab_size=VOCAB, hidden_size=16)


@lru_cache(maxsize=None)
def exact_distribution() -> dict[tuple, float]:
    """P(continuation) for every 3-token continuation, from the model's own processed distributions."""
    m, params = tiny(), SamplingParams(**SAMPLING)
    probs: dict[tuple, float] = {(): 1.0}
    for length in range(NEW):
        prefixes = [p for p in probs if len(p) == length]
        batch = torch.cat([PROMPT.repeat(len(prefixes), 1), torch.tensor(prefixes, dtype=torch.long).view(len(prefixes), length)], 1)
        with torch.no_grad():
            p = target_probs(m(batch).logits[:, -1], params)
        for prefix, row in zip(prefixes, p):
            for token in range(VOCAB):
                probs[prefix + (token,)] = probs[prefix] * float(row[token])
    return {k: v for k, v in probs.items() if len(k) == NEW}


def sample_counts(decoder) -> Counter:
    counts = Counter()
    for seed in range(SAMPLES):
        out = decoder.generate(PROMPT, max_new_tokens=NEW, seed=seed, **SAMPLING)
        counts[tuple(out.new_tokens.tolist())] += 1
    return counts


def speculative(candidates, tree, acceptor=None):
    m = tiny()
    drafter = MedusaDrafter.from_model(m, num_heads=2, candidates=candidates, seed=0)
    with torch.no_grad():  # heads that differ from the lm_head, so q differs from p
        for param in drafter.heads.parameters():
            param.add_(torch.randn_like(param) * 0.2)
    return SpeculativeDecoder(m, drafter, StaticTreeBuilder(tree), TreeAttentionVerifier(m),
                              acceptor or RejectionSamplingAcceptor())


def test_exact_distribution_is_a_distribution():
    total = sum(exact_distribution().values())
    assert total == pytest.approx(1.0)
    assert sum(1 for v in exact_distribution().values() if v == 0) > 0  # top-k really filters


def test_autoregressive_sampler_matches_the_model():
    assert chi_square_pvalue(sample_counts(AutoregressiveDecoder(tiny())), exact_distribution()) > ALPHA


@pytest.mark.parametrize(
    "candidates, tree_name",
    [
        ("top_k", "chain2"),
        ("sample_without_replacement", "tree5"),
        ("sample_with_replacement", "tree5"),
    ],
)
def test_speculative_sampler_matches_the_model(candidates, tree_name):
    """Through the generic verifier, 5-token vocabulary, top-k + top-p + temperature at once. (The grid of
    drafters x tree builders x candidate kinds x sampling settings, through make_verifier's choice,
    is tests/test_lossless_composition.py.)"""
    decoder = speculative(candidates, TREES[tree_name])
    counts = Counter()
    accepted = []
    for seed in range(SAMPLES):
        out = decoder.generate(PROMPT, max_new_tokens=NEW, seed=seed, **SAMPLING)
        counts[tuple(out.new_tokens.tolist())] += 1
        accepted.extend(s.accepted for s in out.steps)
    assert chi_square_pvalue(counts, exact_distribution()) > ALPHA
    # The drafts were really used: candidates were accepted in a good share of the steps.
    assert sum(a > 0 for a in accepted) / len(accepted) > 0.05


def test_int8_draft_heads_sample_the_models_distribution():
    """Int8 draft weights change q, never p: sampled output is still distributed as the model's (hidden size 16,
    so every head matrix takes the int8 kernel)."""
    decoder = speculative("sample_without_replacement", TREES["tree5"])
    decoder.drafter.quantize()
    counts = sample_counts(decoder)
    assert chi_square_pvalue(counts, exact_distribution()) > ALPHA


def test_end_to_end_test_catches_a_broken_acceptor():
    decoder = speculative("top_k", TREES["tree5"], acceptor=BonusFromTarget())
    assert chi_square_pvalue(sample_counts(decoder), exact_distribution()) < ALPHA


def test_chi_square_helper_on_known_inputs():
    expected = {"a": 0.5, "b": 0.5}
    assert chi_square_pvalue(Counter(a=500, b=500), expected) == pytest.approx(1.0)
    # statistic (600-500)^2/500 * 2 = 40 with 1 dof: p = 2.5e-10
    assert chi_square_pvalue(Counter(a=600, b=400), expected) == pytest.approx(2.54e-10, rel=0.01)
    assert chi_square_pvalue(Counter(a=10, c=1), {"a": 1.0, "c": 0.0}) == 0.0
    for combo in itertools.product([0, 1], repeat=2):
        assert 0.0 <= chi_square_pvalue(Counter({combo: 5}), {combo: 1.0}) <= 1.0
