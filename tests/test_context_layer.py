"""The extra decoder layer behind Hydra++'s prefix layer and Clover's augmenting block."""

import pytest
import torch

from spec.drafters import ContextLayerCache, build_decoder_layer
from spec.errors import UnsupportedError

from drafter_checks import perturb
from helpers import model, prompt


def plain_forward(m, layer, hidden: torch.Tensor, first_position: int = 0) -> torch.Tensor:
    """The layer over ``hidden`` in one call, no cache, transformers' own causal attention (SDPA, no mask)."""
    positions = torch.arange(first_position, first_position + hidden.shape[0])[None]
    with torch.no_grad():
        return layer(hidden[None], position_ids=positions,
                     position_embeddings=m.model.rotary_emb(hidden[None], positions))[0]


def target_hidden(arch: str, length: int, **overrides) -> torch.Tensor:
    m = model(arch, **overrides)
    with torch.no_grad():
        return m(prompt(length, seed=8), output_hidden_states=True).hidden_states[-1][0]


@pytest.mark.parametrize("arch", ["llama", "qwen2", "mistral"])
def test_chunked_appends_equal_one_causal_pass(arch):
    m = model(arch)
    layer = build_decoder_layer(m, "test layer")
    perturb(layer, scale=0.1)
    assert m.config._attn_implementation == "sdpa"
    hidden = target_hidden(arch, 23)
    cache = ContextLayerCache(m, layer, "test layer")
    chunks = [cache.append(hidden[a:b]) for a, b in [(0, 0), (0, 5), (5, 6), (6, 13), (13, 14), (14, 23)]]
    torch.testing.assert_close(torch.cat(chunks), plain_forward(m, layer, hidden), rtol=1e-9, atol=1e-9)
    assert cache.length == 23 and torch.equal(cache.last_output, chunks[-1][-1])


def test_the_cache_grows_on_demand_up_to_the_context_and_no_further():
    """A cache started at 4 rows doubles as positions arrive (the outputs still equal one causal pass) and stops at
    the model's context with a ContextLengthError naming the fix."""
    from spec.errors import ContextLengthError
    from spec.models import context_length

    m = model("llama")
    layer = build_decoder_layer(m, "test layer")
    perturb(layer, scale=0.1)
    hidden = target_hidden("llama", 23)
    cache = ContextLayerCache(m, layer, "test layer", initial_rows=4)
    assert cache.cache.rows == 4
    chunks = [cache.append(hidden[a:b]) for a, b in [(0, 3), (3, 9), (9, 10), (10, 23)]]
    assert cache.cache.rows == 36  # 4 -> 9 (needed) -> 18 (doubled for 10) -> 36 (doubled for 23)
    torch.testing.assert_close(torch.cat(chunks), plain_forward(m, layer, hidden), rtol=1e-9, atol=1e-9)
    context = context_length(m)
    with pytest.raises(ContextLengthError, match="generate fewer tokens"):
        cache.append(hidden[:1].expand(context - 23 + 1, -1))


def test_untrained_layer_is_the_identity():
    m = model("qwen2")
    hidden = target_hidden("qwen2", 9)
    cache = ContextLayerCache(m, build_decoder_layer(m, "test layer"), "test layer")
    assert torch.equal(cache.append(hidden), hidden)


def test_sliding_window_is_applied():
    """With a window of 4, the last output equals the layer over only the last 4 positions (RoPE is relative)."""
    m = model("mistral", context=64)
    m.config.sliding_window = 4
    try:
        layer = build_decoder_layer(m, "test layer")
        perturb(layer, scale=0.1)
        hidden = target_hidden("mistral", 12, context=64)
        cache = ContextLayerCache(m, layer, "test layer")
        assert cache.window == 4
        cache.append(hidden[:7])
        last = cache.append(hidden[7:])[-1]
        torch.testing.assert_close(last, plain_forward(m, layer, hidden[-4:], first_position=8)[-1],
                                   rtol=1e-9, atol=1e-9)
        assert not torch.allclose(last, plain_forward(m, layer, hidden)[-1])
    finally:
        m.config.sliding_window = None


def test_other_architectures_are_refused():
    with pytest.raises(UnsupportedError, match="supported for llama, qwen2, mistral; got 'gpt2'"):
        build_decoder_layer(model("gpt2"), "test layer")


def test_deferred_positions_run_when_the_output_is_read_and_equal_one_causal_pass():
    """defer() only records; output_for() runs every deferred position in one pass, with the same result as eager
    appends, and a root that does not follow the committed positions is still refused by name."""
    from spec.errors import InputError

    m = model("llama")
    layer = build_decoder_layer(m, "test layer")
    perturb(layer, scale=0.1)
    hidden = target_hidden("llama", 23)
    cache = ContextLayerCache(m, layer, "test layer")
    cache.defer(hidden[:9])
    cache.defer(hidden[9:9])
    cache.defer(hidden[9:10])
    assert cache.length == 0 and cache.pending == 10  # nothing has run yet
    with pytest.raises(InputError, match="has seen 10 committed positions but the root is at position 11"):
        cache.output_for(11)
    first = cache.output_for(10)
    assert cache.length == 10 and cache.pending == 0
    cache.defer(hidden[10:])
    last = cache.output_for(23)
    expected = plain_forward(m, layer, hidden)
    torch.testing.assert_close(first, expected[9], rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(last, expected[-1], rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name", ["clover", "hydra++"])
def test_a_generation_that_never_drafts_never_runs_the_context_layer(name):
    """One new token needs no candidates (the prefill draws it): the drafter's layer never runs over the prompt (it
    would cost a sixth of the prefill here), nor for two (the second step has room for no candidate), and the output
    is still the model's own; three tokens do draft, and run it once."""
    from spec import AutoregressiveDecoder, GreedyAcceptor, SpeculativeDecoder, StaticTreeBuilder
    from spec.drafters import CloverDrafter, HydraDrafter
    from spec.trees import tree_from_choices
    from spec.verifiers import make_verifier

    m, p = model("llama"), prompt(12, seed=3)
    drafter = (CloverDrafter.from_model(m, num_heads=2, seed=0) if name == "clover"
               else HydraDrafter.hydra_plus_plus(m, num_heads=2, num_layers=1, seed=0))
    cache = drafter._augment if name == "clover" else drafter._prefix
    runs = []
    original = cache.append
    cache.append = lambda hidden: runs.append(hidden.shape[0]) or original(hidden)
    decoder = SpeculativeDecoder(m, drafter, StaticTreeBuilder(tree_from_choices([[0], [1], [0, 0]])),
                                 make_verifier(m), GreedyAcceptor())
    out = decoder.generate(p, max_new_tokens=1)
    assert torch.equal(out.sequences, AutoregressiveDecoder(m).generate(p, max_new_tokens=1).sequences)
    assert runs == [] and cache.pending == 12  # the whole prompt, committed by the prefill: deferred
    decoder.generate(p, max_new_tokens=2)
    assert runs == []
    decoder.generate(p, max_new_tokens=3)
    assert runs == [12]  # the prompt, in one pass, for the first (and only) draft


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_compiled_padded_passes_equal_one_causal_pass(arch):
    """``compile(pad)``: passes of at most ``pad`` positions run through one compiled graph padded to ``pad`` rows;
    the prompt and a longer commit run eagerly; the outputs are one causal pass's, also where the cache grows
    between passes and where a padded pass would run past the context."""
    from spec.models import context_length

    m = model(arch)
    layer = build_decoder_layer(m, "test layer")
    perturb(layer, scale=0.1)
    context = context_length(m)
    hidden = target_hidden(arch, context)
    cache = ContextLayerCache(m, layer, "test layer", initial_rows=8)
    cache.compile(pad=4)
    compiled_passes = []
    run = cache._compiled

    def counting(*args):
        compiled_passes.append(args[0].shape[0])
        return run(*args)

    cache._compiled = counting
    # The prompt (eager), step-sized commits (compiled; the cache grows past 8 and 16 rows), a 6-position commit
    # (eager), then commits at the end of the context, where the padding would not fit (eager).
    bounds = [0, 9, 10, 14, 16, 17, 23, 24, 27, context - 6, context - 2, context - 1, context]
    reference = plain_forward(m, layer, hidden)
    for a, b in zip(bounds, bounds[1:]):
        cache.defer(hidden[a:b])
        torch.testing.assert_close(cache.output_for(b), reference[b - 1], rtol=1e-5, atol=1e-5)
    # 9-10, 10-14, 14-16, 16-17, 23-24, 24-27 and context-6 to context-2; not the two after it
    assert compiled_passes == [4] * 7
    assert cache._compiled is counting and run.compiled  # no fallback to eager


def test_compile_refuses_a_pad_below_one():
    from spec.errors import InputError

    m = model("llama")
    with pytest.raises(InputError, match="at least one position"):
        ContextLayerCache(m, build_decoder_layer(m, "test layer"), "test layer").compile(pad=0)
