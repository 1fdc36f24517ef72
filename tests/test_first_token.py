"""The first new token comes from the prefill's own pass (``PrefillsRoot``), as autoregressive decoding does: the
verifiers' ``prefill_root`` scores the last prompt token exactly as the model does, a one-token generation makes
one forward pass, and a verifier without the method still decodes losslessly the old way (the prompt's last token
verified with the first tree)."""

import pytest
import torch

from spec import AutoregressiveDecoder, GreedyAcceptor, RejectionSamplingAcceptor, SpeculativeDecoder, StaticTreeBuilder
from spec.drafters import MedusaDrafter
from spec.errors import ShapeError
from spec.protocols import prefills_root
from spec.trees import tree_from_choices
from spec.verifiers import FastTreeVerifier, TreeAttentionVerifier

from helpers import model, prompt, reference

TREE = tree_from_choices([[0], [1], [0, 0], [0, 1], [0, 0, 0]])


@pytest.mark.parametrize("arch, make", [("llama", FastTreeVerifier), ("qwen2", TreeAttentionVerifier),
                                        ("gpt2", TreeAttentionVerifier)])
def test_prefill_root_scores_the_last_token_as_the_model_does(arch, make):
    m, p = model(arch), prompt(11, seed=2)
    verifier = make(m)
    hidden, logits = verifier.prefill_root(p[0])
    with torch.no_grad():
        out = m(p, output_hidden_states=True)
    torch.testing.assert_close(logits, out.logits[0, -1], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(hidden, out.hidden_states[-1][0], rtol=1e-4, atol=1e-4)
    verifier.reset()
    assert torch.equal(verifier.prefill(p[0]), hidden)  # the same states as a plain prefill
    with pytest.raises(ShapeError, match="non-empty 1-D"):
        verifier.prefill_root(p[0, :0])


def test_the_self_draft_verifier_scores_the_last_token_as_the_model_does():
    from spec.drafters import KangarooDrafter

    m, p = model("llama"), prompt(9, seed=3)
    verifier = KangarooDrafter.from_model(m, exit_layer=1, seed=0).verifier
    _, logits = verifier.prefill_root(p[0])
    with torch.no_grad():
        torch.testing.assert_close(logits, m(p).logits[0, -1], rtol=1e-4, atol=1e-4)


class CountingVerifier:
    """Wraps a verifier and counts its forward passes; ``root`` False hides ``prefill_root``."""

    def __init__(self, inner, root: bool) -> None:
        self.inner, self.passes = inner, []
        if root:
            self.prefill_root = lambda tokens: self.passes.append("prefill_root") or inner.prefill_root(tokens)

    def __getattr__(self, name):
        if name == "prefill_root":  # not set in __init__: a verifier without it
            raise AttributeError(name)
        return getattr(self.inner, name)

    def prefill(self, tokens):
        self.passes.append("prefill")
        return self.inner.prefill(tokens)

    def verify(self, draft):
        self.passes.append("verify")
        return self.inner.verify(draft)


@pytest.mark.parametrize("root", [True, False])
def test_one_new_token_is_one_pass_and_the_old_path_still_decodes(root):
    m, p = model("llama"), prompt(10, seed=4)
    verifier = CountingVerifier(FastTreeVerifier(m), root)
    assert prefills_root(verifier) == root
    decoder = SpeculativeDecoder(m, MedusaDrafter.from_model(m, num_heads=3, seed=0), StaticTreeBuilder(TREE),
                                 verifier, GreedyAcceptor())
    out = decoder.generate(p, max_new_tokens=1)
    assert torch.equal(out.sequences, reference("llama", p, 1))
    assert verifier.passes == (["prefill_root"] if root else ["prefill", "verify"])
    verifier.passes.clear()
    out = decoder.generate(p, max_new_tokens=20)
    assert torch.equal(out.sequences, reference("llama", p, 20))
    assert verifier.passes[0] == ("prefill_root" if root else "prefill") and "prefill" not in verifier.passes[1:]
    # The first token is a step of its own (as autoregressive decoding counts its prefill): one kept token.
    assert (out.steps[0].tree_size, out.steps[0].emitted) == ((1, 1) if root else (TREE.num_nodes, out.steps[0].emitted))


def test_the_first_token_is_sampled_by_the_acceptor_from_the_prefills_logits():
    """Sampled: the same seed gives the same first token as the autoregressive decoder's draw from the same
    distribution would over many seeds; here checked exactly against a second decoder on the old path, whose first
    token is the bonus of a verified root-only tree drawn by the same acceptor from the same logits."""
    m, p = model("llama"), prompt(10, seed=5)
    drafter = MedusaDrafter.from_model(m, num_heads=3, seed=0)
    firsts = {}
    for root in (True, False):
        decoder = SpeculativeDecoder(m, drafter, StaticTreeBuilder(tree_from_choices([[0]])),
                                     CountingVerifier(FastTreeVerifier(m), root), RejectionSamplingAcceptor())
        firsts[root] = [int(decoder.generate(p, max_new_tokens=1, temperature=1.0, seed=s).new_tokens[0])
                        for s in range(12)]
    assert firsts[True] == firsts[False]
    assert len(set(firsts[True])) > 1  # really sampled


def test_setting_prefill_root_to_none_opts_a_verifier_out():
    """The grid's end-to-end distribution tests verify the prompt's last token with the first tree this way."""
    m, p = model("llama"), prompt(10, seed=6)
    verifier = FastTreeVerifier(m)
    verifier.prefill_root = None
    assert not prefills_root(verifier)
    out = SpeculativeDecoder(m, MedusaDrafter.from_model(m, num_heads=3, seed=0), StaticTreeBuilder(TREE), verifier,
                             GreedyAcceptor()).generate(p, max_new_tokens=6)
    assert torch.equal(out.sequences, reference("llama", p, 6)) and out.steps[0].tree_size == TREE.num_nodes
