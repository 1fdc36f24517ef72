"""The fast verifier (static cache, compiled step, FlexAttention) against the generic one and the model.

Greedy equality through the fast path for every head drafter on hypothesis trees in
float64; logits equal to the generic path's within each dtype's tolerance over several
verify/commit steps; the compiled step and its eager fallback; FlexAttention's block
mask against SDPA's boolean one; the static cache never reallocated; model support and
placement errors. CUDA-only checks are skipped where no GPU is visible.
"""

import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from spec import (
    CandidateTree,
    CloverDrafter,
    Draft,
    FastTreeVerifier,
    GreedyAcceptor,
    HydraDrafter,
    MedusaDrafter,
    SpeculativeDecoder,
    StaticTreeBuilder,
    TreeAttentionVerifier,
    make_verifier,
)
from spec.errors import ConfigurationError, ContextLengthError, InputError, UnsupportedError
from spec.models.placement import resolve_dtype, resolve_placement
from spec.testing.assertions import assert_same_tokens
from spec.testing.drafters import OracleDrafter
from spec.testing.models import tiny_model
from spec.testing.strategies import candidate_trees
from spec.runtime import compiled as compiled_module
from spec.runtime import unsupported_reason

from helpers import LLAMA_FAMILY, VOCAB, config_override, model, prompt, reference, verify_steps

NEW_TOKENS = 64
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def head_drafter(kind: str, m, seed: int):
    if kind == "medusa":
        drafter = MedusaDrafter.from_model(m, num_heads=4, seed=seed)
    elif kind == "hydra":
        drafter = HydraDrafter.from_model(m, num_heads=4, prefix_layer=True, seed=seed)
    else:
        drafter = CloverDrafter.from_model(m, num_heads=4, seed=seed)
    with torch.no_grad():  # untrained heads copy the lm_head; perturb them so they disagree with it
        for param in drafter.heads.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    return drafter


@pytest.mark.parametrize("arch", LLAMA_FAMILY)
@pytest.mark.parametrize("kind", ["medusa", "hydra", "clover", "oracle"])
@settings(max_examples=4)
@given(tree=candidate_trees(max_depth=4, max_nodes=24), prompt_len=st.integers(1, 20), seed=st.integers(0, 2**16))
def test_greedy_through_the_fast_path_equals_autoregressive(arch, kind, tree, prompt_len, seed):
    m = model(arch)
    p = prompt(prompt_len, seed)
    ref = reference(arch, p, NEW_TOKENS + 8)
    drafter = (OracleDrafter(ref, VOCAB, accuracy=0.8, max_depth=4, seed=seed) if kind == "oracle"
               else head_drafter(kind, m, seed))
    verifier = FastTreeVerifier(m)
    out = SpeculativeDecoder(m, drafter, StaticTreeBuilder(tree), verifier, GreedyAcceptor()).generate(
        p, max_new_tokens=NEW_TOKENS)
    assert_same_tokens(out.sequences, ref[:, : p.shape[1] + NEW_TOKENS])
    # The cache holds the prompt less its last token, plus every accepted path (root included).
    assert verifier.cached_length == p.shape[1] - 1 + sum(s.accepted + 1 for s in out.steps)
    if kind == "oracle" and tree.max_depth >= 2:
        assert out.mean_accepted_length > 1.0, "no draft was ever accepted: compaction went untested"


def test_fast_path_equals_transformers_generate():
    m = model("qwen2")
    p = prompt(7, seed=2)
    hf = m.generate(p, max_new_tokens=NEW_TOKENS, do_sample=False)
    tree = StaticTreeBuilder.from_choices([[0], [1], [0, 0], [0, 1], [1, 0], [0, 0, 0], [0, 0, 0, 0]]).tree()
    drafter = OracleDrafter(hf, VOCAB, accuracy=0.8, seed=1)
    out = SpeculativeDecoder(m, drafter, StaticTreeBuilder(tree), FastTreeVerifier(m), GreedyAcceptor()).generate(
        p, max_new_tokens=NEW_TOKENS)
    assert_same_tokens(out.sequences, hf)
    assert out.mean_accepted_length > 2.0


def _steps(make, m, prefix, trees_and_paths, seed):
    """Prefill, then verify/commit each (tree, path) with a verifier ``make(m)``; returns every step's logits."""
    return verify_steps(make(m), prefix, trees_and_paths, seed)


@st.composite
def step_plans(draw):
    plans = []
    for _ in range(draw(st.integers(1, 4))):
        tree = draw(candidate_trees(max_depth=4, max_nodes=20))
        node = draw(st.integers(0, tree.num_nodes - 1))
        plans.append((tree, tuple(tree.path_to(node))))
    return plans


TOLERANCE = {torch.float64: 1e-9, torch.float32: 1e-4, torch.bfloat16: 1e-1}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("arch", LLAMA_FAMILY)
@settings(max_examples=5)
@given(plan=step_plans(), prefix_len=st.integers(1, 16), seed=st.integers(0, 2**16))
def test_fast_logits_equal_generic_over_steps(arch, dtype, plan, prefix_len, seed):
    m = model(arch, dtype=dtype)
    prefix = torch.randint(0, VOCAB, (prefix_len,), generator=torch.Generator().manual_seed(seed))
    fast = _steps(FastTreeVerifier, m, prefix, plan, seed)
    generic = _steps(TreeAttentionVerifier, m, prefix, plan, seed)
    tol = TOLERANCE[dtype]
    for a, b in zip(fast, generic):
        assert a.dtype == dtype
        # bfloat16 logits of magnitude ~10 carry a rounding step of ~0.06; compare relative to the scale.
        torch.testing.assert_close(a.double(), b.double(), rtol=tol, atol=tol * max(1.0, float(b.abs().max())))


def test_flex_attention_block_mask_equals_sdpa():
    """FlexAttention (eager on CPU, slow but exact) with the tree's block mask, with and without a window."""
    tree = CandidateTree(parents=[-1, 0, 0, 1, 1, 2, 3], ranks=[0, 0, 1, 0, 1, 0, 0])
    plan = [(tree, (0, 1, 4)), (tree, (0, 2, 5)), (tree, (0,))]
    for arch, window in (("llama", None), ("mistral", 5)):
        m = model(arch, seed=4, context=64)
        prefix = torch.arange(1, 13)
        with config_override(m, sliding_window=window):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # flex_attention warns that eager mode is unfused
                flex = _steps(lambda mm: FastTreeVerifier(mm, attention="flex"), m, prefix, plan, seed=0)
            sdpa = _steps(lambda mm: FastTreeVerifier(mm, attention="sdpa"), m, prefix, plan, seed=0)
            generic = _steps(TreeAttentionVerifier, m, prefix, plan, seed=0)
        for a, b, c in zip(flex, sdpa, generic):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
            torch.testing.assert_close(a, c, rtol=1e-9, atol=1e-9)


def test_static_cache_is_never_reallocated():
    m = model("llama")
    p = prompt(9, seed=3)
    ref = reference("llama", p, NEW_TOKENS + 8)
    verifier = FastTreeVerifier(m)
    pointers = [t.data_ptr() for t in verifier.cache.tensors]
    tree = StaticTreeBuilder.from_choices([[0], [1], [0, 0], [1, 0], [0, 0, 0]]).tree()
    drafter = OracleDrafter(ref, VOCAB, accuracy=0.7, max_depth=3, seed=0)
    decoder = SpeculativeDecoder(m, drafter, StaticTreeBuilder(tree), verifier, GreedyAcceptor())
    for _ in range(2):  # a second generate reuses the same cache
        out = decoder.generate(p, max_new_tokens=NEW_TOKENS)
        assert_same_tokens(out.sequences, ref[:, : p.shape[1] + NEW_TOKENS])
        assert [t.data_ptr() for t in verifier.cache.tensors] == pointers


def test_compile_failure_falls_back_to_eager(monkeypatch):
    m = model("llama")
    prefix = torch.arange(3, 11)
    tree = CandidateTree(parents=[-1, 0, 0, 1], ranks=[0, 0, 1, 0])
    plan = [(tree, (0, 1, 3)), (tree, (0, 2))]
    eager = _steps(lambda mm: FastTreeVerifier(mm, compile=False), m, prefix, plan, seed=1)

    def refuse(fn, **kwargs):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(compiled_module.torch, "compile", refuse)
    with pytest.warns(RuntimeWarning, match="no compiler here"):
        verifier = FastTreeVerifier(m, compile=True)
    assert not verifier.compiled
    with pytest.warns(RuntimeWarning, match="no compiler here"):
        refused = _steps(lambda mm: FastTreeVerifier(mm, compile=True), m, prefix, plan, seed=1)
    for a, b in zip(eager, refused):
        torch.testing.assert_close(a, b, rtol=0, atol=0)

    # A compiled function that fails when called (a backend error at the first shape) also falls back.
    def broken_at_call(fn, **kwargs):
        def call(*args):
            raise RuntimeError("backend failed")
        return call

    monkeypatch.setattr(compiled_module.torch, "compile", broken_at_call)
    with pytest.warns(RuntimeWarning, match="backend failed"):
        fallback = _steps(lambda mm: FastTreeVerifier(mm, compile=True), m, prefix, plan, seed=1)
    for a, b in zip(eager, fallback):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_compiled_step_blames_the_compiler_only_when_eager_succeeds():
    calls = []
    step = compiled_module.CompiledStep(lambda x: x + 1, enabled=False, on_fallback=lambda: calls.append("fallback"))
    assert step(1) == 2 and not step.compiled

    def compiled_raising(error):
        def call(*args):
            raise error
        return call

    # The compiled call fails, eager succeeds: the compiler was at fault -> eager from now on, hook called once.
    step = compiled_module.CompiledStep(lambda x: x + 1, enabled=False, on_fallback=lambda: calls.append("fallback"))
    step._compiled = compiled_raising(RuntimeError("inductor broke"))
    with pytest.warns(RuntimeWarning, match="inductor broke"):
        assert step(1) == 2
    assert not step.compiled and calls == ["fallback"]

    # Both fail: the caller's error propagates and compilation stays on.
    def bad_input(x):
        raise ValueError("bad input")

    step = compiled_module.CompiledStep(bad_input, enabled=False)
    step._compiled = compiled_raising(ValueError("bad input"))
    with pytest.raises(ValueError, match="bad input"):
        step(1)
    assert step.compiled

    # Running out of memory is not the compiler's fault either.
    step = compiled_module.CompiledStep(lambda x: x, enabled=False)
    step._compiled = compiled_raising(torch.OutOfMemoryError("out of memory"))
    with pytest.raises(torch.OutOfMemoryError):
        step(1)
    assert step.compiled


def test_padded_attention_and_long_prefixes_under_a_compiled_step(monkeypatch):
    """Compiled steps attend over the prefix rounded up to 64 rows; FlexAttention works in 128-row blocks.

    Dynamo's ``eager`` backend traces the step like inductor does (same padding, same block masks) without
    generating code, so this runs in seconds; a prefix of 200 tokens crosses block boundaries.
    """
    real_compile = torch.compile
    monkeypatch.setattr(compiled_module.torch, "compile",
                        lambda fn, **kwargs: real_compile(fn, backend="eager", dynamic=kwargs.get("dynamic")))
    tree = CandidateTree(parents=[-1, 0, 0, 1, 1, 2, 3], ranks=[0, 0, 1, 0, 1, 0, 0])
    plan = [(tree, (0, 1, 4)), (tree, (0, 2, 5)), (tree, (0,)), (tree, (0, 1, 3, 6))] * 4
    for arch, window in (("llama", None), ("mistral", 130)):
        m = model(arch, seed=6, context=512)
        prefix = torch.randint(0, VOCAB, (200,), generator=torch.Generator().manual_seed(0))
        with config_override(m, sliding_window=window), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            generic = _steps(TreeAttentionVerifier, m, prefix, plan, seed=3)
            for attention in ("sdpa", "flex"):
                verifier = FastTreeVerifier(m, compile=True, attention=attention)
                fast = _steps(lambda mm: verifier, m, prefix, plan, seed=3)
                assert verifier.compiled, verifier._step.failure
                for a, b in zip(fast, generic):
                    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


@pytest.mark.slow
def test_compiled_step_equals_eager():
    """torch.compile (inductor, C++ on the CPU) over trees of several shapes and growing prefixes."""
    m = tiny_model("llama", seed=5, dtype=torch.float32, vocab_size=VOCAB)
    prefix = torch.arange(2, 30)
    small = CandidateTree(parents=[-1, 0, 0, 1], ranks=[0, 0, 1, 0])
    large = CandidateTree(parents=[-1, 0, 0, 1, 1, 2, 3, 5], ranks=[0, 0, 1, 0, 1, 0, 0, 0])
    plan = [(small, (0, 1, 3)), (large, (0, 2, 5, 7)), (small, (0,)), (large, (0, 1, 4)), (large, (0, 1, 3, 6))] * 8
    verifier = FastTreeVerifier(m, compile=True)
    compiled = _steps(lambda mm: verifier, m, prefix, plan, seed=2)
    assert verifier.compiled, verifier._step.failure
    eager = _steps(lambda mm: FastTreeVerifier(mm, compile=False), m, prefix, plan, seed=2)
    for a, b in zip(compiled, eager):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_make_verifier_picks_the_path_per_model():
    assert isinstance(make_verifier(model("llama")), FastTreeVerifier)
    assert isinstance(make_verifier(model("gpt2")), TreeAttentionVerifier)
    assert isinstance(make_verifier(model("llama"), "generic"), TreeAttentionVerifier)
    with pytest.raises(UnsupportedError, match="gpt2"):
        make_verifier(model("gpt2"), "fast")
    with pytest.raises(ConfigurationError, match="verifier kind"):
        make_verifier(model("llama"), "fastest")
    with pytest.raises(ConfigurationError, match="attention"):
        FastTreeVerifier(model("llama"), attention="triton")
    mixed = tiny_model("qwen2", seed=0, vocab_size=VOCAB)
    mixed.config.layer_types = ["full_attention", "sliding_attention"]
    mixed.config.sliding_window = 8
    assert "mix" in unsupported_reason(mixed)
    assert isinstance(make_verifier(mixed), TreeAttentionVerifier)
    split = tiny_model("llama", seed=0, vocab_size=VOCAB)
    split.model.layers[1].to("meta")  # as if offloaded: the fast path runs layers itself, without accelerate's hooks
    assert "split across devices" in unsupported_reason(split)
    dynamic = tiny_model("llama", seed=0, vocab_size=VOCAB)
    dynamic.model.rotary_emb.rope_type = "dynamic"  # NTK scaling that depends on the sequence length
    assert "sequence length" in unsupported_reason(dynamic)
    with pytest.raises(UnsupportedError, match="sequence length"):
        FastTreeVerifier(dynamic)


def test_context_end_and_cache_limits():
    m = model("llama", context=32)
    tree = StaticTreeBuilder.from_choices([[0], [1], [2], [0, 0], [1, 0], [0, 0, 0]]).tree()  # 7 nodes, depth 3
    # 28 cached + depth 3 = position 31, the last one; the tree's 7 rows run past the context into spare rows.
    verifier = FastTreeVerifier(m)
    verifier.prefill(torch.arange(28))
    verifier.verify(Draft(tree=tree, tokens=torch.arange(7)))
    verifier.commit((0, 2, 5))
    with pytest.raises(InputError, match="past the verifier's context"):
        verifier.verify(Draft(tree=tree, tokens=torch.arange(7)))
    tight = FastTreeVerifier(m, spare_rows=2)
    tight.prefill(torch.arange(28))
    with pytest.raises(InputError, match="spare_rows"):
        tight.verify(Draft(tree=tree, tokens=torch.arange(7)))
    # A verifier with a smaller cache than the model's context: the pipeline refuses up front.
    capped = FastTreeVerifier(m, max_length=16)
    decoder = SpeculativeDecoder(m, OracleDrafter(torch.zeros(1, 64, dtype=torch.long), VOCAB), StaticTreeBuilder(tree),
                                 capped, GreedyAcceptor())
    with pytest.raises(ContextLengthError, match="verifier's cache .* of 16"):
        decoder.generate(prompt(10, seed=0), max_new_tokens=10)
    with pytest.raises(ConfigurationError, match="max_length"):
        FastTreeVerifier(m, max_length=64)


def test_placement_is_automatic_and_overridable():
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("bfloat16", torch.device("cpu")) == torch.bfloat16
    assert resolve_placement("cpu", "float64") == (torch.device("cpu"), torch.float64)
    with pytest.raises(ConfigurationError, match="float16 is not supported on cpu"):
        resolve_dtype(torch.float16, torch.device("cpu"))
    with pytest.raises(ConfigurationError, match="Unknown dtype"):
        resolve_dtype("fp8", torch.device("cpu"))
    if not torch.cuda.is_available():
        assert resolve_placement()[0] == torch.device("cpu")
        with pytest.raises(ConfigurationError, match="no CUDA GPU"):
            resolve_placement("cuda")


@CUDA
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("compile", [False, True])
def test_cuda_fast_path_equals_generic(dtype, compile):
    m = tiny_model("llama", seed=0, dtype=dtype, vocab_size=VOCAB).cuda()
    prefix = torch.arange(1, 40)
    tree = CandidateTree(parents=[-1, 0, 0, 1, 1, 2, 3], ranks=[0, 0, 1, 0, 1, 0, 0])
    plan = [(tree, (0, 1, 4)), (tree, (0, 2, 5)), (tree, (0,)), (tree, (0, 1, 3, 6))] * 3
    fast = _steps(lambda mm: FastTreeVerifier(mm, compile=compile), m, prefix, plan, seed=0)
    generic = _steps(TreeAttentionVerifier, m, prefix, plan, seed=0)
    for a, b in zip(fast, generic):
        torch.testing.assert_close(a.float(), b.float(), rtol=5e-2, atol=5e-2 * max(1.0, float(b.abs().max())))


@CUDA
@pytest.mark.parametrize("compile", [False, True])
def test_cuda_step_has_no_host_device_synchronisation(compile):
    """After a warm-up (compilation, per-shape buffers, path indices), verify + commit never block the host."""
    m = tiny_model("llama", seed=0, dtype=torch.bfloat16, vocab_size=VOCAB).cuda()
    tree = CandidateTree(parents=[-1, 0, 0, 1, 1, 2, 3], ranks=[0, 0, 1, 0, 1, 0, 0])
    tokens = torch.arange(tree.num_nodes, device="cuda")
    verifier = FastTreeVerifier(m, compile=compile)
    verifier.prefill(torch.arange(1, 11, device="cuda"))  # short: every step stays in one 64-row bucket
    paths = [(0, 1, 4), (0, 2, 5), (0,)]
    for path in paths * 3:  # warm-up
        verifier.verify(Draft(tree=tree, tokens=tokens))
        verifier.commit(path)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for path in paths:
            verifier.verify(Draft(tree=tree, tokens=tokens))
            verifier.commit(path)
    finally:
        torch.cuda.set_sync_debug_mode("default")
