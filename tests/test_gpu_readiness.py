"""What a first GPU run would trip over (issue 24), checked on the CPU.

* The compiled path is really compiled: inductor on a model whose head_dim (16) its kernels
  take, ``verifier.compiled`` true, no fallback warning, logits equal to the generic path's;
  and a fallback (including Dynamo's recompile limit) makes ``compiled`` false and warns
  with the whole error.
"""

import os
import warnings

import pytest
import torch

from spec import CandidateTree, Draft, FastTreeVerifier, TreeAttentionVerifier
from spec.runtime import compiled as compiled_module
from spec.testing.models import tiny_model

from helpers import VOCAB, verify_steps

# 4 heads of 16: the smallest head_dim inductor's FlexAttention lowering takes (the suite's models have 8).
HEAD_DIM_16 = dict(vocab_size=VOCAB, hidden_size=64)

SMALL = CandidateTree(parents=[-1, 0, 0, 1], ranks=[0, 0, 1, 0])
LARGE = CandidateTree(parents=[-1, 0, 0, 1, 1, 2, 3, 5], ranks=[0, 0, 1, 0, 1, 0, 0, 0])
CHAIN = CandidateTree(parents=[-1, 0, 1], ranks=[0, 0, 0])
WIDE = CandidateTree(parents=[-1, 0, 0, 0, 1, 1], ranks=[0, 0, 1, 2, 0, 1])


def assert_really_compiled(model, attention: str, prefix: torch.Tensor, plan) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        verifier = FastTreeVerifier(model, compile=True, attention=attention)
        compiled = verify_steps(verifier, prefix, plan)
    fallbacks = [str(w.message) for w in caught if "torch.compile failed" in str(w.message)]
    assert not fallbacks, fallbacks
    assert verifier.compiled and verifier._step.failure is None, verifier._step.failure
    generic = verify_steps(TreeAttentionVerifier(model), prefix, plan)
    for a, b in zip(compiled, generic):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_compiled_path_is_really_compiled_and_equals_generic():
    """Inductor (C++ on the CPU) over trees and commits; one layer keeps the compile to a few seconds."""
    m = tiny_model("llama", seed=5, dtype=torch.float32, num_layers=1, **HEAD_DIM_16)
    plan = [(SMALL, (0, 1, 3)), (SMALL, (0,)), (SMALL, (0, 2)), (SMALL, (0, 1))]
    assert_really_compiled(m, "sdpa", torch.arange(2, 20), plan)


# FlexAttention compiled by inductor on a CPU takes about 40 s; its run belongs to the thorough profile (the
# CUDA path is where flex is the default, and the CUDA tests cover it when a GPU is there).
THOROUGH = os.environ.get("SPEC_HYPOTHESIS_PROFILE") == "thorough"


@pytest.mark.slow
@pytest.mark.parametrize("attention", ["sdpa", pytest.param("flex", marks=pytest.mark.skipif(
    not THOROUGH, reason="CPU FlexAttention compile (~40 s): SPEC_HYPOTHESIS_PROFILE=thorough runs it"))])
def test_compiled_path_over_tree_sizes_and_blocks(attention):
    """Both kernels compiled by inductor, four tree sizes, a prefix crossing 64-row buckets and a 128-row block."""
    m = tiny_model("llama", seed=5, dtype=torch.float32, num_layers=2, **HEAD_DIM_16)
    plan = [(SMALL, (0, 1, 3)), (LARGE, (0, 2, 5, 7)), (CHAIN, (0, 1, 2)), (WIDE, (0, 1, 4))] * 4
    prefix = torch.randint(0, VOCAB, (100,), generator=torch.Generator().manual_seed(1))
    assert_really_compiled(m, attention, prefix, plan)


@pytest.mark.slow
def test_compiled_commit_compaction_is_really_compiled_and_equals_eager():
    """The commit's compaction as one compiled function (one CUDA graph launch on a GPU instead of two kernels per
    layer's keys and values), here by inductor on the CPU with the verify step eager: same logits over paths of
    every length, and the cache rows a compiled commit leaves equal to an eager one's."""
    m = tiny_model("llama", seed=5, dtype=torch.float32, num_layers=2, **HEAD_DIM_16)
    plan = [(LARGE, (0, 2, 5, 7)), (SMALL, (0, 2)), (LARGE, (0, 1, 4)), (WIDE, (0, 3)), (LARGE, (0, 2, 5, 7)),
            (SMALL, (0, 1, 3)), (WIDE, (0, 1, 5))]
    prefix = torch.randint(0, VOCAB, (30,), generator=torch.Generator().manual_seed(2))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        compiled = FastTreeVerifier(m, compile=False, compile_commit=True)
        outputs = verify_steps(compiled, prefix, plan)
    assert not [w for w in caught if "torch.compile failed" in str(w.message)]
    assert compiled._commit_step.compiled and compiled._commit_step.failure is None
    eager = FastTreeVerifier(m, compile=False)
    assert not eager._commit_step.compiled  # the default off CUDA graphs
    for a, b in zip(outputs, verify_steps(eager, prefix, plan)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    length = compiled.cached_length
    for a, b in zip(compiled.cache.tensors, eager.cache.tensors):
        assert torch.equal(a[:, :length], b[:, :length])


def test_fallback_warns_with_the_whole_error_and_compiled_tells_the_truth(monkeypatch, request):
    """Dynamo's recompile limit: with fullgraph=False it silently ran eagerly while ``compiled`` said True."""
    real_compile = torch.compile
    modes = []

    def eager_backend(fn, **kwargs):
        modes.append(kwargs)
        return real_compile(fn, backend="eager", dynamic=kwargs.get("dynamic"), fullgraph=kwargs["fullgraph"])

    monkeypatch.setattr(compiled_module.torch, "compile", eager_backend)

    def double(x):  # a code object of its own: no other test's compiled entries count towards its limit
        return x * 2

    step = compiled_module.CompiledStep(double, enabled=True)
    assert torch._dynamo.config.recompile_limit >= compiled_module.RECOMPILE_LIMIT  # raised for shared step code
    # A limit this test's second shape exceeds. config.patch, not monkeypatch: monkeypatch's restore leaves a
    # Dynamo config entry hidden ("recompile_limit does not exist") for every later test.
    limit = torch._dynamo.config.patch(recompile_limit=1)
    limit.__enter__()
    request.addfinalizer(lambda: limit.__exit__(None, None, None))
    assert modes == [{"mode": None, "dynamic": None, "fullgraph": True}]
    assert torch.equal(step(torch.ones(2)), torch.full((2,), 2.0)) and step.compiled
    with pytest.warns(RuntimeWarning) as caught:
        assert torch.equal(step(torch.ones(3)), torch.full((3,), 2.0))  # a new shape: a recompile past the limit
    assert not step.compiled
    message = str(caught[0].message)
    assert "FailOnRecompileLimitHit" in message and "recompile limit" in message.lower(), message
    assert step.failure is not None and step.failure in message

    # A multi-line error keeps every line (it used to keep the first only).
    step = compiled_module.CompiledStep(lambda x: x, enabled=False)

    def broken(*args):
        raise RuntimeError("inductor lowering failed\nhead_dim must be >= 16\n(see above)")

    step._compiled = broken
    with pytest.warns(RuntimeWarning, match="(?s)lowering failed.*head_dim must be >= 16.*see above"):
        step(1)
    assert "head_dim must be >= 16" in step.failure


# ---- host<-device conversions per stage -------------------------------------------------------------------

# Per step, after warm-up, in the default Medusa + greedy pipeline on the fast verifier (measured: the same on
# CPU and, by construction, on CUDA). Before issue 24 the acceptor made 7 conversions and 1 list-index upload a
# step (plus 2 tree copies), and the step's drafter commit 2 list-index uploads.
SYNC_BUDGET = {
    # conversions, uploads
    "drafter.propose": (1, 1),  # int() of the root on the host-side token buffer (no sync); the root to the device
    "verifier.verify": (0, 0),
    "acceptor.accept": (1, 0),  # one tolist: path, tokens, bonus and the finiteness check together
    "verifier.commit": (0, 0.2),  # a path's index tensor the first time it is accepted, then cached
    "drafter.commit": (0, 0),
    "step": (0, 0.2),  # the glue in speculative_step: a path's index tensor the first time it is seen
    "state.extend": (0, 1),  # the host-side token buffer (torch.tensor on the CPU: no device involved)
}


def test_host_syncs_per_stage_stay_within_budget():
    from spec import GreedyAcceptor, MedusaDrafter, SamplingParams, StaticTreeBuilder, make_verifier
    from spec.pipelines.step import DecodeState, Stages, prefill, speculative_step
    from sync_counter import UPLOADS, counting_conversions

    from helpers import model, prompt

    m = model("llama")
    stages = Stages(MedusaDrafter.from_model(m, num_heads=3, seed=0),
                    StaticTreeBuilder.from_choices([[0], [1], [0, 0], [0, 1], [1, 0], [0, 0, 0]]), make_verifier(m),
                    GreedyAcceptor())
    state = DecodeState.start(prompt(8, seed=0)[0], 200)
    prefill(stages.drafter, stages.verifier, state.sequence)
    sampling = SamplingParams()

    def step(counter=None):
        result = speculative_step(stages, state, sampling, None, budget=8)
        if counter is None:
            state.extend(list(result.acceptance.new_tokens))
        else:
            with counter.in_stage("state.extend"):
                state.extend(list(result.acceptance.new_tokens))

    for _ in range(4):  # warm-up: per-shape buffers, plans, first paths
        step()
    steps = 20
    with counting_conversions() as counter:
        for obj, method, stage in ((stages.drafter, "propose", "drafter.propose"),
                                   (stages.drafter, "commit", "drafter.commit"),
                                   (stages.verifier, "verify", "verifier.verify"),
                                   (stages.verifier, "commit", "verifier.commit"),
                                   (stages.acceptor, "accept", "acceptor.accept")):
            counter.wrap(obj, method, stage)
        for _ in range(steps):
            with counter.in_stage("step"):
                step(counter)
    conversions, uploads = counter.per_stage(steps), counter.per_stage(steps, UPLOADS)
    assert set(conversions) | set(uploads) <= set(SYNC_BUDGET), (conversions, uploads)
    for stage, (max_conversions, max_uploads) in SYNC_BUDGET.items():
        assert conversions.get(stage, 0) <= max_conversions, (stage, conversions, counter.counts)
        assert uploads.get(stage, 0) <= max_uploads, (stage, uploads, counter.counts)
    assert conversions["acceptor.accept"] == 1  # the counter sees what it should


def test_greedy_acceptor_reads_once_and_still_refuses_non_finite_logits():
    from spec import GreedyAcceptor, SamplingParams, Verification
    from spec.errors import NonFiniteLogitsError

    tree = CandidateTree(parents=[-1, 0, 0, 1], ranks=[0, 0, 1, 0])
    draft = Draft(tree=tree, tokens=torch.tensor([7, 3, 5, 2]))
    logits = torch.zeros(4, VOCAB)
    logits[0, 3] = logits[1, 2] = logits[3, 9] = 1.0  # root -> 3 (node 1) -> 2 (node 3) -> bonus 9
    accept = lambda lg: GreedyAcceptor().accept(draft, Verification(tree=tree, logits=lg, hidden_states=torch.zeros(4, 8)), SamplingParams())  # noqa: E731
    acceptance = accept(logits)
    assert (acceptance.path, acceptance.tokens, acceptance.bonus_token) == ((0, 1, 3), (3, 2), 9)
    single = CandidateTree(parents=[-1], ranks=[0])
    one = GreedyAcceptor().accept(Draft(tree=single, tokens=torch.tensor([7])),
                                  Verification(tree=single, logits=logits[3:], hidden_states=torch.zeros(1, 8)),
                                  SamplingParams())
    assert (one.path, one.tokens, one.bonus_token) == ((0,), (), 9)
    for bad, message in ((float("nan"), "NaN or \\+inf"), (float("inf"), "NaN or \\+inf")):
        broken = logits.clone()
        broken[2, 4] = bad
        with pytest.raises(NonFiniteLogitsError, match=message):
            accept(broken)
    broken = logits.clone()
    broken[2] = float("-inf")
    with pytest.raises(NonFiniteLogitsError, match="entirely -inf"):
        accept(broken)


# ---- stage timings synchronise on CUDA ---------------------------------------------------------------------


@pytest.mark.parametrize("cuda", [False, True], ids=["cpu", "cuda-simulated"])
def test_stage_timings_synchronise_once_per_boundary_on_cuda_only(monkeypatch, cuda):
    """Without a sync, draft/verify would record kernel launches and accept would absorb the GPU's work."""
    from spec import AutoregressiveDecoder, GreedyAcceptor, MedusaDrafter, StaticTreeBuilder, make_verifier
    from spec import timing
    from spec.pipelines.speculative import SpeculativeDecoder

    from helpers import model, prompt

    synced = []
    monkeypatch.setattr(timing.torch.cuda, "synchronize", lambda device=None: synced.append(device))
    if cuda:  # the model stays on the CPU: only the device check is forced
        monkeypatch.setattr(timing, "needs_synchronise", lambda device: True)
    m = model("llama")
    decoder = SpeculativeDecoder(m, MedusaDrafter.from_model(m, num_heads=3, seed=0),
                                 StaticTreeBuilder.from_choices([[0], [1], [0, 0]]), make_verifier(m), GreedyAcceptor())
    out = decoder.generate(prompt(5, seed=1), max_new_tokens=12)
    # Five boundaries a step: before drafting, after drafting, verifying, accepting and committing; two for the
    # first token, drawn from the prefill (before and after accepting).
    assert synced == ([torch.device("cpu")] * (5 * (len(out.steps) - 1) + 2) if cuda else [])
    synced.clear()
    baseline = AutoregressiveDecoder(m).generate(prompt(5, seed=1), max_new_tokens=6)
    assert len(synced) == (3 * len(baseline.steps) if cuda else 0)  # before and after the forward, after choosing


# ---- memory: a capped default cache, counted in the bench ---------------------------------------------------


def test_static_cache_defaults_to_a_capped_length_and_can_ask_for_more():
    from spec import GreedyAcceptor, SpeculativeDecoder, StaticTreeBuilder
    from spec.drafters.oracle import OracleDrafter
    from spec.errors import ContextLengthError

    long_context = tiny_model("llama", seed=0, vocab_size=VOCAB, context=8192)
    capped = FastTreeVerifier(long_context, spare_rows=16)
    assert capped.max_length == FastTreeVerifier.DEFAULT_MAX_LENGTH == 4096
    assert capped.cache.rows == 4096 + 16
    full = FastTreeVerifier(long_context, max_length=8192, spare_rows=16)  # asked for: the whole context
    assert full.max_length == 8192 and full.cache.rows == 8192 + 16
    assert full.cache.nbytes == capped.cache.nbytes * (8192 + 16) // (4096 + 16)
    short = tiny_model("llama", seed=0, vocab_size=VOCAB, context=512)
    assert FastTreeVerifier(short).max_length == 512  # a shorter context is not padded up
    tree = StaticTreeBuilder.from_choices([[0], [1]])
    decoder = SpeculativeDecoder(long_context, OracleDrafter(torch.zeros(1, 8, dtype=torch.long), VOCAB), tree,
                                 capped, GreedyAcceptor())
    with pytest.raises(ContextLengthError, match="verifier's cache .* of 4096"):
        decoder.generate(torch.zeros(1, 4000, dtype=torch.long), max_new_tokens=100)


def test_kangaroo_self_draft_cache_is_capped_like_the_verifiers_and_can_ask_for_more():
    from spec import GreedyAcceptor, KangarooDrafter, SpeculativeDecoder, StaticTreeBuilder
    from spec.errors import ConfigurationError, ContextLengthError

    long_context = tiny_model("llama", seed=0, vocab_size=VOCAB, context=8192)
    capped = KangarooDrafter.from_model(long_context, exit_layer=1, seed=0)
    assert capped.verifier.max_length == capped.state.max_length == 4096
    assert capped.state.cache.rows == 4096 + 256
    full = KangarooDrafter.from_model(long_context, exit_layer=1, seed=0, max_length=8192)
    assert full.verifier.max_length == 8192 and full.state.cache.rows == 8192 + 256
    short = tiny_model("llama", seed=0, vocab_size=VOCAB, context=512)
    assert KangarooDrafter.from_model(short, exit_layer=1, seed=0).verifier.max_length == 512
    with pytest.raises(ConfigurationError, match="max_length must be in \\[1, 512\\]"):
        KangarooDrafter.from_model(short, exit_layer=1, seed=0, max_length=1024)
    decoder = SpeculativeDecoder(long_context, capped, StaticTreeBuilder.from_choices([[0], [0, 0]]),
                                 capped.verifier, GreedyAcceptor())
    with pytest.raises(ContextLengthError, match="4096"):
        decoder.generate(torch.zeros(1, 4000, dtype=torch.long), max_new_tokens=100)
    # Within the cap it decodes as before: greedy output equal to the model's own.
    from spec import AutoregressiveDecoder

    ids = torch.arange(1, 9)[None]
    out = decoder.generate(ids, max_new_tokens=12)
    assert torch.equal(out.sequences, AutoregressiveDecoder(long_context).generate(ids, max_new_tokens=12).sequences)


def test_prefill_skips_the_logits_it_would_discard(monkeypatch):
    m = tiny_model("llama", seed=0, vocab_size=VOCAB)
    verifier = FastTreeVerifier(m)
    calls = []
    monkeypatch.setattr(verifier.forward, "lm_head", lambda hidden: calls.append(hidden.shape) or m.lm_head(hidden))
    verifier.prefill(torch.arange(1, 30))
    assert calls == []
    verifier.verify(Draft(tree=SMALL, tokens=torch.arange(4)))
    assert calls == [torch.Size([4, 32])]


def test_bench_peak_memory_counts_the_static_cache():
    from spec import AutoregressiveDecoder, GreedyAcceptor, MedusaDrafter, SpeculativeDecoder, StaticTreeBuilder
    from spec.bench.methods import DecoderMethod
    from spec.bench.runner import run_benchmark

    m = tiny_model("llama", seed=0, vocab_size=VOCAB)
    verifier = FastTreeVerifier(m)
    decoder = SpeculativeDecoder(m, MedusaDrafter.from_model(m, num_heads=2), StaticTreeBuilder.from_choices([[0]]),
                                 verifier, GreedyAcceptor())
    report = run_benchmark([DecoderMethod("baseline", AutoregressiveDecoder(m)), DecoderMethod("fast", decoder)],
                           [torch.arange(1, 6)], max_new_tokens=4, repeats=1, warmup=0, profile_overhead=False)
    fast = next(r for r in report.methods if r.name == "fast")
    assert fast.peak_memory_mb >= verifier.cache.nbytes / 2**20 > 0


# ---- the baseline samples in float64 -----------------------------------------------------------------------


def test_autoregressive_baseline_samples_from_float64_probabilities(monkeypatch):
    """Like the acceptors (transformers uses float32): a bfloat16 model's logits are upcast before processing."""
    from spec import AutoregressiveDecoder
    from spec.pipelines import autoregressive

    m = tiny_model("llama", seed=0, vocab_size=VOCAB, dtype=torch.bfloat16)
    seen = []
    real_processed, real_multinomial = autoregressive.processed_logits, torch.multinomial
    monkeypatch.setattr(autoregressive, "processed_logits",
                        lambda logits, sampling: seen.append(("process", logits.dtype)) or real_processed(logits,
                                                                                                           sampling))
    monkeypatch.setattr(autoregressive.torch, "multinomial",
                        lambda probs, *a, **k: seen.append(("draw", probs.dtype)) or real_multinomial(probs, *a, **k))
    out = AutoregressiveDecoder(m).generate(torch.arange(1, 6)[None], max_new_tokens=4, temperature=0.8, top_p=0.9,
                                            seed=0, output_logprobs=True)
    assert out.new_tokens.numel() == 4
    assert seen and all(dtype == torch.float64 for _, dtype in seen), seen
    assert {kind for kind, _ in seen} == {"process", "draw"}


# ---- bounded shapes under a compiled step ------------------------------------------------------------------


def test_a_compiled_step_sees_a_bounded_set_of_shapes(monkeypatch):
    """Tree sizes and prefix lengths vary every step; padded, the step's input shapes fall into few buckets.

    ``torch.compile`` is replaced by a recorder (the padding applies whenever the step counts as compiled), so
    this runs eagerly in a second; the outputs must equal the unpadded eager verifier's.
    """
    from spec.runtime.shapes import attend_bucket, tree_bucket

    shapes = set()

    def recording(fn, **kwargs):
        def call(tokens, positions, rows, keys, values, attend, mask):
            shapes.add((tokens.shape[0], attend, tuple(mask.shape)))
            return fn(tokens, positions, rows, keys, values, attend, mask)
        return call

    monkeypatch.setattr(compiled_module.torch, "compile", recording)
    m = tiny_model("llama", seed=3, vocab_size=VOCAB, context=1024)
    g = torch.Generator().manual_seed(0)
    plan = []
    for _ in range(120):  # a random tree a step (1 to 24 nodes, chains and bushes), a random accepted path
        n = int(torch.randint(1, 25, (1,), generator=g))
        parents = [-1] + [int(torch.randint(0, i, (1,), generator=g)) for i in range(1, n)]
        ranks, seen = [], {}
        for p in parents:
            ranks.append(seen.get(p, 0))
            seen[p] = seen.get(p, 0) + 1
        tree = CandidateTree.from_parents(parents, ranks)
        plan.append((tree, tuple(tree.path_to(int(torch.randint(0, n, (1,), generator=g))))))
    prefix = torch.randint(0, VOCAB, (20,), generator=g)
    padded = FastTreeVerifier(m, compile=True, pad_trees=True)  # the default on CUDA only
    assert padded.compiled
    outputs = verify_steps(padded, prefix, plan, seed=4)
    eager = verify_steps(FastTreeVerifier(m, compile=False), prefix, plan, seed=4)
    for a, b in zip(outputs, eager):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
    length = padded.cached_length
    assert length > 200  # the prefix grew across several attention buckets
    sizes = {tree_bucket(n) for n in range(1, 25)}
    lengths = {attend_bucket(r) for r in range(1, length + 32)}
    assert {s[0] for s in shapes} <= sizes and {s[1] for s in shapes} <= lengths
    # Unpadded, every tree size (24) in every 64-row prefix bucket would be a shape of its own.
    assert len(shapes) <= len(sizes) * len(lengths) <= 3 * 8, shapes


def test_grouped_query_attention_folded_into_the_query_axis_equals_grouped_sdpa():
    """What the SDPA kernel does on CUDA for grouped KV heads (no K/V copy), checked on the CPU against SDPA's own
    grouped attention, with a tree mask, a prefix and 1 to 4 query heads per KV head."""
    from spec.runtime.attention import folded_gqa_attention

    g = torch.Generator().manual_seed(0)
    for kv_heads, groups, n, attend in [(2, 4, 5, 37), (1, 3, 1, 9), (4, 1, 7, 20)]:
        q = torch.randn(1, kv_heads * groups, n, 16, generator=g, dtype=torch.float64)
        k, v = (torch.randn(1, kv_heads, attend, 16, generator=g, dtype=torch.float64) for _ in range(2))
        visible = torch.rand(n, attend, generator=g) < 0.6
        visible[:, 0] = True  # every row sees something
        expected = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=visible[None, None],
                                                                    scale=0.25, enable_gqa=True)
        torch.testing.assert_close(folded_gqa_attention(q, k, v, visible, 0.25), expected, rtol=1e-12, atol=1e-12)
