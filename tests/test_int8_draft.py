"""Int8 draft weights (``HeadDrafter.quantize``, ``spec.runtime.int8``): the int8 product is the dequantized one,
matrices the kernel cannot take stay float, checkpoints stay float, and decoding with quantized heads is still
exactly the model's own (greedy here and against ``generate``; sampled: tests/test_lossless_e2e.py)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from spec import GreedyAcceptor, SpeculativeDecoder, StaticTreeBuilder
from spec.bench.pairing import verifier_for
from spec.drafters import (
    CloverDrafter,
    DraftVocabulary,
    Eagle3Drafter,
    EagleDrafter,
    HydraDrafter,
    MedusaDrafter,
    MergedDrafter,
    NGramDrafter,
    apply_draft_weights,
    draft_weights_of,
)
from spec.errors import ConfigurationError, UnsupportedError
from spec.runtime.int8 import Int8Linear, int8_linear, int8_supported, quantize_linears, quantize_rows
from spec.testing.assertions import assert_same_tokens
from spec.testing.strategies import candidate_trees
from spec.trees import tree_from_choices

from drafter_checks import perturb
from helpers import LLAMA_FAMILY, VOCAB, model, prompt, reference

NEW_TOKENS = 20
MAKERS = {
    "medusa": lambda m, s: MedusaDrafter.from_model(m, num_heads=3, seed=s),
    "hydra": lambda m, s: HydraDrafter.from_model(m, num_heads=3, seed=s),
    "hydra++": lambda m, s: HydraDrafter.hydra_plus_plus(m, num_heads=3, num_layers=2, seed=s),
    "clover": lambda m, s: CloverDrafter.from_model(m, num_heads=3, seed=s),
    "eagle": lambda m, s: EagleDrafter.from_model(m, max_depth=3, seed=s),
    "eagle3": lambda m, s: Eagle3Drafter.from_model(m, max_depth=3, seed=s, draft_vocab=DraftVocabulary.from_counts(
        torch.rand(VOCAB, generator=torch.Generator().manual_seed(s)), 48)),
}


def drafter(name: str, m, seed: int = 0, quantized: bool = True):
    made = MAKERS[name](m, seed)
    perturb(made.heads, scale=0.1, seed=seed)  # heads that differ from the lm_head copy they start as
    return made.quantize() if quantized else made


@settings(max_examples=20)
@given(rows=st.integers(1, 40), n=st.integers(1, 70), k=st.integers(1, 6).map(lambda i: 16 * i),
       seed=st.integers(0, 2**16), scale=st.sampled_from([1e-3, 1.0, 50.0]))
def test_int8_product_is_the_dequantized_product(rows, n, k, seed, scale):
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(n, k, generator=g) * scale
    matrix = quantize_rows(weight)
    # Rounding to nearest: each entry within half its row's step (plus the bfloat16 scale's own rounding).
    step = weight.abs().amax(1, keepdim=True) / 127
    assert torch.all((matrix.dequantize() - weight).abs() <= 0.5 * step + 0.01 * weight.abs() + 1e-12)
    x, bias = torch.randn(rows, k, generator=g), torch.randn(n, generator=g)
    expected = x.bfloat16().float() @ matrix.dequantize().t() + bias
    got = int8_linear(x, matrix, bias)
    assert got.dtype == x.dtype and got.shape == (rows, n)
    # The kernel multiplies in bfloat16: a relative error of a few bfloat16 steps of the largest term.
    tolerance = 2e-2 * (x.abs() @ matrix.dequantize().abs().t()).amax() + 1e-6
    assert (got - expected).abs().max() <= tolerance
    # Leading batch dimensions go through the same product; scales are per row, so quantizing a row subset (a draft
    # vocabulary's tokens, as HeadDrafter.projection does) gives those rows of the whole matrix's product.
    index = torch.randperm(n, generator=g)[: max(1, n // 2)]
    torch.testing.assert_close(int8_linear(x[None], quantize_rows(weight[index]))[0], int8_linear(x, matrix)[:, index])


def test_an_all_zero_row_and_unsupported_matrices():
    weight = torch.randn(4, 32)
    weight[2] = 0
    matrix = quantize_rows(weight)
    assert torch.all(matrix.values[2] == 0) and torch.isfinite(matrix.scales.float()).all()
    # The kernel is silently wrong unless the input width is a multiple of 16: those stay float.
    for bad in (torch.randn(4, 24), torch.randn(4, 8), torch.randn(32), torch.randn(4, 32, dtype=torch.float64)[:, :0],
                torch.randn(4, 32, device="meta"), torch.zeros(4, 32, dtype=torch.long)):
        assert not int8_supported(bad)
        with pytest.raises(UnsupportedError, match="multiple of 16"):
            quantize_rows(bad)
    net = nn.Sequential(nn.Linear(32, 24), nn.ReLU(), nn.Linear(24, 16), nn.Sequential(nn.Linear(16, 16)))
    assert quantize_linears(net) == 2
    assert isinstance(net[0], Int8Linear) and type(net[2]) is nn.Linear and isinstance(net[3][0], Int8Linear)
    assert quantize_linears(net) == 0  # already quantized


def test_int8_linear_keeps_the_float_weights_and_follows_edits():
    float_linear = nn.Linear(32, 8)
    state = {k: v.clone() for k, v in float_linear.state_dict().items()}
    layer = Int8Linear(float_linear)
    assert layer.weight is float_linear.weight and layer.bias is float_linear.bias
    assert set(layer.state_dict()) == set(state)  # the int8 copy is not saved: checkpoints stay float
    x = torch.randn(3, 32)
    with torch.no_grad():
        before = layer(x)
        torch.testing.assert_close(before, float_linear(x), rtol=3e-2, atol=3e-2)
        layer.weight.mul_(-1)  # an in-place edit: the int8 copy is re-made
        torch.testing.assert_close(layer(x), -before + 2 * layer.bias, rtol=1e-2, atol=1e-2)
    with pytest.raises(UnsupportedError, match="train"):
        layer(x)  # grad enabled and a trainable weight: refused


@settings(max_examples=10)
@given(arch=st.sampled_from(LLAMA_FAMILY), name=st.sampled_from(sorted(MAKERS)),
       kind=st.sampled_from(["fast", "generic"]), tree=candidate_trees(max_nodes=10, max_depth=3, max_width=3),
       prompt_len=st.integers(1, 16), seed=st.integers(0, 2**16))
def test_quantized_heads_decode_exactly_the_models_greedy_output(arch, name, kind, tree, prompt_len, seed):
    m = model(arch)
    heads = drafter(name, m, seed % 5)
    assert heads.draft_weights == "int8" and any(isinstance(x, Int8Linear) for x in heads.heads.modules())
    decoder = SpeculativeDecoder(m, heads, StaticTreeBuilder(tree), verifier_for(m, heads, kind), GreedyAcceptor())
    p = prompt(prompt_len, seed)
    assert_same_tokens(decoder.generate(p, max_new_tokens=NEW_TOKENS).sequences, reference(arch, p, NEW_TOKENS))


@pytest.mark.parametrize("name", ["hydra++", "eagle3"])
def test_quantized_heads_equal_transformers_generate_and_draft_like_the_float_heads(name):
    m, p = model("llama"), prompt(12, seed=3)
    tree = tree_from_choices([[0], [1], [0, 0], [1, 0], [0, 0, 0]])
    outputs = {}
    for quantized in (False, True):
        heads = drafter(name, m, quantized=quantized)
        decoder = SpeculativeDecoder(m, heads, StaticTreeBuilder(tree), verifier_for(m, heads), GreedyAcceptor())
        outputs[quantized] = decoder.generate(p, max_new_tokens=30)
        assert_same_tokens(outputs[quantized].sequences, m.generate(p, max_new_tokens=30, do_sample=False))
    # The int8 product differs from float32 by about a bfloat16 step, so the heads' choices are nearly always the
    # same and so is what the target accepts (a near-tie may flip a candidate: not required to be equal).
    float_steps, int8_steps = (len(outputs[q].steps) for q in (False, True))
    assert abs(float_steps - int8_steps) <= 2, (float_steps, int8_steps)


def test_checkpoints_of_quantized_heads_are_the_float_checkpoints(tmp_path):
    m = model("llama")
    heads = drafter("eagle", m, quantized=False)
    heads.save_pretrained(tmp_path / "float")
    heads.quantize().save_pretrained(tmp_path / "int8")
    for file in ("config.json", "model.safetensors"):
        assert (tmp_path / "float" / file).read_bytes() == (tmp_path / "int8" / file).read_bytes()
    assert EagleDrafter.from_pretrained(tmp_path / "int8", m).draft_weights is None  # loads as float


def test_apply_draft_weights_and_its_errors():
    m = model("llama")
    merged = MergedDrafter({"ngram": NGramDrafter(max_depth=3), "medusa": drafter("medusa", m, quantized=False)})
    assert draft_weights_of(merged) == "float"
    assert apply_draft_weights(merged, "float") == [] and draft_weights_of(merged) == "float"
    assert apply_draft_weights(merged, "auto") == ["Medusa"] and draft_weights_of(merged) == "int8"  # CPU: int8
    assert draft_weights_of(NGramDrafter(max_depth=3)) == "none"
    assert apply_draft_weights(NGramDrafter(max_depth=3), "int8") == []  # no heads: nothing to quantize
    with pytest.raises(ConfigurationError, match="auto, float, int8"):
        apply_draft_weights(merged, "int4")
    from spec.apps.options import DRAFT_WEIGHT_CHOICES
    from spec.drafters import DRAFT_WEIGHTS

    assert DRAFT_WEIGHT_CHOICES == DRAFT_WEIGHTS  # the CLI's spelling (kept import-free) is the library's
    with pytest.raises(ConfigurationError, match="int8"):
        drafter("medusa", m, quantized=False).quantize("int4")
    off_cpu = drafter("medusa", m, quantized=False)
    off_cpu.heads.to("meta")
    with pytest.raises(UnsupportedError, match="CPU only"):
        off_cpu.quantize()


def test_int8_projections_are_made_once_per_weight_and_again_after_an_edit():
    m = model("llama")
    hydra = drafter("hydra", m)
    hydra.use_draft_vocab(DraftVocabulary(VOCAB, torch.arange(0, VOCAB, 2)))
    linears = [hydra.heads.heads[d][-1] for d in range(hydra.num_heads)]
    first = [hydra.projection(linear)[0] for linear in linears]
    # Every depth's projection stays cached while the others are used (a step asks for all of them).
    assert all(hydra.projection(linear)[0] is matrix for linear, matrix in zip(linears, first))
    assert first[0].values.shape == (VOCAB // 2, m.config.hidden_size)
    torch.testing.assert_close(first[0].dequantize(), linears[0].weight[::2].detach().float(), atol=0.02, rtol=0.02)
    with torch.no_grad():
        linears[0].weight.mul_(2)  # training-style in-place edit: the sliced rows and their int8 copy are re-made
    again = hydra.projection(linears[0])[0]
    assert again is not first[0]
    torch.testing.assert_close(again.dequantize(), linears[0].weight[::2].detach().float(), atol=0.04, rtol=0.02)
