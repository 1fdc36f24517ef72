"""Bad input gets a typed error naming the problem and the fix."""

import math

import pytest
import torch

from spec import (
    AutoregressiveDecoder,
    Draft,
    GreedyAcceptor,
    MedusaDrafter,
    SamplingParams,
    SpeculativeDecoder,
    StaticTreeBuilder,
    Verification,
)
from spec import TreeAttentionVerifier
from spec.errors import (
    ContextLengthError,
    InputError,
    NonFiniteLogitsError,
    SamplingParamsError,
    ShapeError,
    SpecError,
    TreeTooDeepError,
)
from spec.trees import chain_tree

from helpers import model


def decoders():
    m = model("llama")
    spec_decoder = SpeculativeDecoder(m, MedusaDrafter.from_model(m, num_heads=2), StaticTreeBuilder(chain_tree(2)),
                                      TreeAttentionVerifier(m), GreedyAcceptor())
    return [spec_decoder, AutoregressiveDecoder(m)]


def test_tree_deeper_than_drafter_refused_at_construction():
    m = model("llama")
    with pytest.raises(TreeTooDeepError, match="shallower tree"):
        SpeculativeDecoder(m, MedusaDrafter.from_model(m, num_heads=2), StaticTreeBuilder(chain_tree(3)),
                           TreeAttentionVerifier(m), GreedyAcceptor())


@pytest.mark.parametrize("decoder", decoders(), ids=["speculative", "autoregressive"])
@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(input_ids=torch.zeros(1, 0, dtype=torch.long)), InputError, "empty"),
        (dict(input_ids=torch.zeros(2, 3, dtype=torch.long)), InputError, "batch size 2"),
        (dict(input_ids=torch.zeros(1, 3)), InputError, "integer"),
        (dict(input_ids=torch.tensor([[5, 96]])), InputError, r"\[0, 96\)"),
        (dict(max_new_tokens=600), ContextLengthError, "over the model's context of 512"),
        (dict(input_ids=torch.zeros(1, 500, dtype=torch.long), max_new_tokens=13), ContextLengthError, "at most 12"),
        (dict(max_new_tokens=-1), InputError, "max_new_tokens"),
        (dict(temperature=-0.5), SamplingParamsError, "temperature"),
        (dict(temperature=math.nan), SamplingParamsError, "temperature"),
        (dict(temperature=1.0, top_p=0.0), SamplingParamsError, "top_p"),
        (dict(temperature=1.0, top_p=1.5), SamplingParamsError, "top_p"),
        (dict(temperature=1.0, top_k=0), SamplingParamsError, "top_k"),
        (dict(seed=-3), SamplingParamsError, "seed"),
    ],
)
def test_generate_refuses_bad_arguments(decoder, kwargs, error, message):
    args = dict(input_ids=torch.tensor([[1, 2, 3]]), max_new_tokens=4) | kwargs
    with pytest.raises(error, match=message):
        decoder.generate(**args)
    assert issubclass(error, SpecError)


def test_greedy_acceptor_refuses_to_sample():
    decoder = decoders()[0]
    with pytest.raises(SamplingParamsError, match="RejectionSamplingAcceptor"):
        decoder.generate(torch.tensor([[1, 2]]), max_new_tokens=3, temperature=0.7)


def test_nan_logits_refused():
    tree = chain_tree(1)
    draft = Draft(tree=tree, tokens=torch.tensor([1, 2]))
    logits = torch.zeros(2, 8)
    logits[1, 3] = float("nan")
    with pytest.raises(NonFiniteLogitsError, match="NaN"):
        GreedyAcceptor().accept(draft, Verification(tree=tree, logits=logits, hidden_states=torch.zeros(2, 4)),
                                SamplingParams())


def test_types_refuse_wrong_shapes():
    tree = chain_tree(2)
    with pytest.raises(ShapeError, match="2 rows but the tree has 3"):
        Draft(tree=tree, tokens=torch.tensor([1, 2]))
    with pytest.raises(ShapeError, match="torch.int64"):
        Draft(tree=tree, tokens=torch.tensor([1.0, 2.0, 3.0]))
    with pytest.raises(ShapeError, match=r"shape \[n, V\]"):
        Verification(tree=tree, logits=torch.zeros(3), hidden_states=torch.zeros(3, 4))
    with pytest.raises(ShapeError, match="draft_probs"):
        from spec import CandidateKind
        Draft(tree=tree, tokens=torch.tensor([1, 2, 3]), kind=CandidateKind.SAMPLED_WITH_REPLACEMENT)


def test_sampling_params_valid_values():
    assert SamplingParams().is_greedy
    assert not SamplingParams(temperature=0.7, top_k=5, top_p=0.9, seed=1).is_greedy
    with pytest.raises(SamplingParamsError):
        SamplingParams(top_k=True)
