"""What a first GPU run would trip over (issue 24), checked on the CPU.

* The compiled path is really compiled: inductor on a model whose head_dim (16) its kernels
  take, ``verifier.compiled`` true, no fallback warning, logits equal to the generic path's;
  and a fallback (including Dynamo's recompile limit) makes ``compiled`` false and warns
  with the whole error.
"""

import warnings

import pytest
import torch

from spec import CandidateTree, Draft, FastTreeVerifier, TreeAttentionVerifier
from spec.runtime import compiled as compiled_module
from spec.testing.models import tiny_model

from helpers import VOCAB

# 4 heads of 16: the smallest head_dim inductor's FlexAttention lowering takes (the suite's models have 8).
HEAD_DIM_16 = dict(vocab_size=VOCAB, hidden_size=64)

SMALL = CandidateTree(parents=[-1, 0, 0, 1], ranks=[0, 0, 1, 0])
LARGE = CandidateTree(parents=[-1, 0, 0, 1, 1, 2, 3, 5], ranks=[0, 0, 1, 0, 1, 0, 0, 0])
CHAIN = CandidateTree(parents=[-1, 0, 1], ranks=[0, 0, 0])
WIDE = CandidateTree(parents=[-1, 0, 0, 0, 1, 1], ranks=[0, 0, 1, 2, 0, 1])


def run_steps(verifier, prefix: torch.Tensor, plan, seed: int = 0) -> list[torch.Tensor]:
    """Prefill, then verify/commit each (tree, path); every step's logits (prefill's hidden states first)."""
    g = torch.Generator().manual_seed(seed)
    outputs = [verifier.prefill(prefix)]
    for tree, path in plan:
        tokens = torch.randint(0, VOCAB, (tree.num_nodes,), generator=g)
        outputs.append(verifier.verify(Draft(tree=tree, tokens=tokens)).logits)
        verifier.commit(path)
    return outputs


def assert_really_compiled(model, attention: str, prefix: torch.Tensor, plan) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        verifier = FastTreeVerifier(model, compile=True, attention=attention)
        compiled = run_steps(verifier, prefix, plan)
    fallbacks = [str(w.message) for w in caught if "torch.compile failed" in str(w.message)]
    assert not fallbacks, fallbacks
    assert verifier.compiled and verifier._step.failure is None, verifier._step.failure
    generic = run_steps(TreeAttentionVerifier(model), prefix, plan)
    for a, b in zip(compiled, generic):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_compiled_path_is_really_compiled_and_equals_generic():
    """Inductor (C++ on the CPU) over trees and commits; one layer keeps the compile to a few seconds."""
    m = tiny_model("llama", seed=5, dtype=torch.float32, num_layers=1, **HEAD_DIM_16)
    plan = [(SMALL, (0, 1, 3)), (SMALL, (0,)), (SMALL, (0, 2)), (SMALL, (0, 1))]
    assert_really_compiled(m, "sdpa", torch.arange(2, 20), plan)


@pytest.mark.slow
@pytest.mark.parametrize("attention", ["sdpa", "flex"])
def test_compiled_path_over_tree_sizes_and_blocks(attention):
    """Both kernels compiled by inductor, four tree sizes, a prefix crossing 64-row buckets and a 128-row block."""
    m = tiny_model("llama", seed=5, dtype=torch.float32, num_layers=2, **HEAD_DIM_16)
    plan = [(SMALL, (0, 1, 3)), (LARGE, (0, 2, 5, 7)), (CHAIN, (0, 1, 2)), (WIDE, (0, 1, 4))] * 4
    prefix = torch.randint(0, VOCAB, (100,), generator=torch.Generator().manual_seed(1))
    assert_really_compiled(m, attention, prefix, plan)


def test_fallback_warns_with_the_whole_error_and_compiled_tells_the_truth(monkeypatch):
    """Dynamo's recompile limit: with fullgraph=False it silently ran eagerly while ``compiled`` said True."""
    real_compile = torch.compile
    modes = []

    def eager_backend(fn, **kwargs):
        modes.append(kwargs)
        return real_compile(fn, backend="eager", dynamic=kwargs.get("dynamic"), fullgraph=kwargs["fullgraph"])

    monkeypatch.setattr(compiled_module.torch, "compile", eager_backend)
    monkeypatch.setattr(torch._dynamo.config, "recompile_limit", 1)

    def double(x):  # a code object of its own: no other test's compiled entries count towards its limit
        return x * 2

    step = compiled_module.CompiledStep(double, enabled=True)
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
