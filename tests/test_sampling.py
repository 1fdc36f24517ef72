"""The target distribution p is formed exactly as transformers forms it."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from spec.errors import NonFiniteLogitsError
from spec.protocols import SamplingParams
from spec.sampling import check_finite, processed_logits, target_probs


def transformers_processed(logits, params):
    scores = logits[None].clone()
    scores = TemperatureLogitsWarper(params.temperature)(None, scores)
    if params.top_k is not None:
        scores = TopKLogitsWarper(params.top_k)(None, scores)
    if params.top_p < 1.0:
        scores = TopPLogitsWarper(params.top_p)(None, scores)
    return scores[0]


@given(
    seed=st.integers(0, 2**20),
    vocab=st.integers(2, 50),
    ties=st.booleans(),
    temperature=st.floats(0.05, 3.0),
    top_k=st.one_of(st.none(), st.integers(1, 60)),
    top_p=st.one_of(st.just(1.0), st.floats(0.01, 1.0)),
)
def test_matches_transformers_warpers(seed, vocab, ties, temperature, top_k, top_p):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(vocab, generator=g, dtype=torch.float64) * 3
    if ties:  # repeated values exercise the tie rules of top-k and top-p
        logits = logits.round()
    params = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p)
    ours = processed_logits(logits, params)
    theirs = transformers_processed(logits, params)
    assert torch.equal(torch.isinf(ours), torch.isinf(theirs))
    finite = ~torch.isinf(ours)
    torch.testing.assert_close(ours[finite], theirs[finite])


def test_greedy_is_one_hot_argmax():
    p = target_probs(torch.tensor([[0.1, 2.0, -1.0]]), SamplingParams())
    assert p.tolist() == [[0.0, 1.0, 0.0]]


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_logits_refused(bad):
    with pytest.raises(NonFiniteLogitsError):
        check_finite(torch.tensor([0.0, bad]))
    with pytest.raises(NonFiniteLogitsError):
        target_probs(torch.tensor([0.0, bad]), SamplingParams(temperature=1.0))


def test_all_minus_inf_row_refused_but_some_minus_inf_is_fine():
    check_finite(torch.tensor([0.0, float("-inf")]))
    with pytest.raises(NonFiniteLogitsError, match="entirely -inf"):
        check_finite(torch.tensor([[float("-inf"), float("-inf")]]))
