"""Kangaroo: self-drafting with shallow layers + adapter, double early exit, no duplicated work."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from spec import AutoregressiveDecoder, GreedyAcceptor, SpeculativeDecoder, StaticTreeBuilder
from spec.drafters.kangaroo import KangarooDrafter
from spec.errors import (ConfigurationError, IncompatibleDrafterError, IncompatibleStagesError, ShapeError,
                         UnsupportedError)
from spec.protocols import (Acceptance, AcceptorTraits, CandidateKind, Draft, DraftContext, DrafterTraits,
                            SamplingParams, check_composition)
from spec.trees import DynamicTreeBuilder, full_tree
from spec.verifiers import make_verifier
from spec.testing.assertions import assert_same_tokens
from spec.testing.strategies import candidate_trees
from spec.trees import chain_tree, tree_from_choices

from helpers import model, prompt

LAYERS = 4


def deep_model(arch):
    return model(arch, num_layers=LAYERS)


def decoder(m, drafter, tree, acceptor=None):
    return SpeculativeDecoder(m, drafter, StaticTreeBuilder(tree), drafter.verifier, acceptor or GreedyAcceptor())


def perturbed(m, exit_layer, threshold, seed=0):
    drafter = KangarooDrafter.from_model(m, exit_layer=exit_layer, threshold=threshold, seed=seed)
    with torch.no_grad():
        for p in drafter.adapter.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return drafter


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@settings(max_examples=8)
@given(exit_layer=st.integers(1, LAYERS - 1), threshold=st.sampled_from([0.0, 0.05, 0.2, 0.6, 1.0]),
       tree=st.one_of(st.integers(1, 5).map(chain_tree), candidate_trees(max_nodes=12, max_depth=4, max_width=3)),
       seed=st.integers(0, 1000))
def test_greedy_equals_autoregressive(arch, exit_layer, threshold, tree, seed):
    m = deep_model(arch)
    p = prompt(1 + seed % 9, seed=seed)
    out = decoder(m, perturbed(m, exit_layer, threshold, seed), tree).generate(p, max_new_tokens=48)
    assert_same_tokens(out.sequences, AutoregressiveDecoder(m).generate(p, max_new_tokens=48).sequences)


def test_early_exit_really_stops_drafting():
    m = deep_model("llama")
    p = prompt(6, seed=3)
    strict = decoder(m, perturbed(m, 2, threshold=1.0), chain_tree(5)).generate(p, max_new_tokens=40)
    assert all(step.tree_size <= 2 for step in strict.steps)  # root + at most one drafted token
    loose = decoder(m, perturbed(m, 2, threshold=0.0), chain_tree(5)).generate(p, max_new_tokens=40)
    # The full draft length every step, except where the remaining budget truncates the tree; the first token is
    # drawn from the prefill (a root-only step).
    assert (loose.steps[0].tree_size, loose.steps[0].emitted) == (1, 1)
    produced = 1
    for step in loose.steps[1:]:
        assert step.tree_size == min(6, 40 - produced)
        produced += step.emitted


def test_sliding_window_model_greedy_equals_autoregressive():
    """Mistral with a window shorter than the prompt: drafting, verification and prefill all apply it."""
    m = model("mistral", seed=2, num_layers=LAYERS, context=128)
    m.config.sliding_window = 5
    try:
        p = prompt(14, seed=5)
        tree = tree_from_choices([[0], [1], [0, 0], [1, 0], [0, 0, 0], [0, 0, 0, 0]])
        out = decoder(m, perturbed(m, 2, threshold=0.0), tree).generate(p, max_new_tokens=40)
        assert_same_tokens(out.sequences, AutoregressiveDecoder(m).generate(p, max_new_tokens=40).sequences)
        assert max(s.tree_size for s in out.steps) > 4  # deep trees: windowed keys inside the tree too
    finally:
        m.config.sliding_window = None


def test_every_token_passes_every_layer_exactly_once_per_step():
    m = deep_model("qwen2")
    counts = [0] * LAYERS
    # The MLP, not the layer module: the self-draft state runs each layer's parts itself (static cache).
    hooks = [layer.mlp.register_forward_pre_hook(lambda mod, args, i=i: counts.__setitem__(i, counts[i] + args[0].shape[1]))
             for i, layer in enumerate(m.model.layers)]
    try:
        drafter = perturbed(m, 2, threshold=0.1)
        p = prompt(9, seed=4)
        out = decoder(m, drafter, tree_from_choices([[0], [1], [0, 0], [1, 0], [0, 0, 0]])).generate(p, max_new_tokens=40)
    finally:
        for hook in hooks:
            hook.remove()
    expected = (p.shape[1] - 1) + sum(step.tree_size for step in out.steps)
    assert counts == [expected] * LAYERS, (counts, expected)


class AcceptLongestChain:
    """Accepts every drafted token of a chain (wrong output, but exercises the all-accepted commit)."""

    traits = AcceptorTraits(candidate_kinds={CandidateKind.DETERMINISTIC}, lossless=False)

    def accept(self, draft, verification, sampling, generator=None):
        path = draft.tree.path_to(draft.tree.num_nodes - 1)
        return Acceptance(path=path, tokens=draft.tokens[list(path[1:])].tolist(),
                          bonus_token=int(verification.logits[path[-1]].argmax()))


def test_caches_hold_exactly_the_committed_sequence_even_when_everything_is_accepted():
    m = deep_model("llama")
    drafter = perturbed(m, 1, threshold=0.0)
    p = prompt(5, seed=7)
    out = decoder(m, drafter, chain_tree(3), AcceptLongestChain()).generate(p, max_new_tokens=30)
    assert max(s.accepted for s in out.steps) == 3
    committed = out.sequences[0, :-1]  # the last token is the next root, not cached yet
    fresh = KangarooDrafter(type(drafter.verifier)(m, 1), drafter.adapter, 0.0)
    hidden = fresh.verifier.prefill(committed)
    fresh.commit(committed, hidden)
    n = committed.numel()
    assert drafter.state.committed == fresh.state.committed == n
    for a, b in zip(drafter.state.cache.tensors, fresh.state.cache.tensors):
        torch.testing.assert_close(a[:, :n], b[:, :n], rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(drafter._adapter_cache.layers[0].keys, fresh._adapter_cache.layers[0].keys,
                               rtol=1e-9, atol=1e-9)


def test_save_load_round_trip_and_refusals(tmp_path):
    m = deep_model("llama")
    drafter = perturbed(m, 2, threshold=0.4)
    drafter.save_pretrained(tmp_path)
    loaded = KangarooDrafter.from_pretrained(tmp_path, m)
    assert loaded.state.exit_layer == 2 and loaded.threshold == 0.4
    for (name, a), (_, b) in zip(drafter.adapter.state_dict().items(), loaded.adapter.state_dict().items()):
        assert torch.equal(a, b), name
    with pytest.raises(IncompatibleDrafterError):
        KangarooDrafter.from_pretrained(tmp_path, model("llama", seed=5, num_layers=LAYERS))
    with pytest.raises(ConfigurationError, match="exit_layer"):
        KangarooDrafter.from_model(m, exit_layer=LAYERS)
    with pytest.raises(UnsupportedError, match="llama, qwen2, mistral"):
        KangarooDrafter.from_model(model("gpt2"), exit_layer=1)
    assert drafter.num_parameters < sum(p.numel() for p in m.model.layers[0].parameters())


def test_tree_measurements_work_with_a_self_drafter():
    from spec.bench import measure_acceptance, measure_draft_costs

    m = deep_model("qwen2")
    drafter = perturbed(m, 2, threshold=0.0)
    costs = measure_draft_costs(drafter, drafter.verifier, prompt(6, seed=1)[0], [1, 2, 3], width=2, repeats=2)
    assert set(costs) == {1, 2, 3} and all(c > 0 for c in costs.values())
    stats = measure_acceptance(m, drafter, drafter.verifier, [prompt(6, seed=2)], depth=2, width=2, max_new_tokens=16)
    assert stats.depth == 2 and stats.samples > 0


@pytest.mark.parametrize("arch", ["llama", "mistral"])
def test_pruned_drafts_give_the_models_own_greedy_output(arch):
    """A dynamic builder prunes each full drafted tree to a few nodes; the verifier resumes from the kept ones."""
    m = deep_model(arch)
    drafter = perturbed(m, 2, threshold=0.0)
    assert drafter.traits.prunable
    builder = DynamicTreeBuilder(depth=3, width=3, total_tokens=4)
    p = prompt(7, seed=11)
    out = SpeculativeDecoder(m, drafter, builder, drafter.verifier, GreedyAcceptor()).generate(p, max_new_tokens=40)
    with torch.no_grad():
        expected = m.generate(p, max_new_tokens=40, do_sample=False)
    assert_same_tokens(out.sequences, expected)
    assert all(step.tree_size <= 5 for step in out.steps)  # pruned: root + 4 of the template's 39 nodes
    assert max(step.accepted for step in out.steps) >= 1  # kept nodes were verified and accepted


def test_a_pruned_draft_is_verified_at_its_kept_nodes():
    """The logits at every kept node equal the model's own, though pruning moved nodes away from their drafting rows."""
    m = deep_model("qwen2")
    drafter = perturbed(m, 1, threshold=0.0)
    p = prompt(6, seed=2)[0]
    hidden = drafter.verifier.prefill(p[:-1])
    drafter.commit(p[:-1], hidden)
    draft = drafter.propose(full_tree(2, 3), DraftContext(tokens=p), SamplingParams(), None)
    keep = [0, 2, 3, 9, 10]  # node 1 dropped: later nodes sit in rows past their index
    pruned = draft.select_nodes(keep)
    assert pruned.cache_rows.tolist() == [p.numel() - 1 + node for node in keep]
    assert torch.equal(pruned.node_states, draft.node_states[keep])
    assert torch.equal(draft.select_nodes(keep[::-1]).cache_rows, pruned.cache_rows)  # fields follow the tree's order
    verification = drafter.verifier.verify(pruned)
    with torch.no_grad():
        for node in range(pruned.tree.num_nodes):
            path = list(pruned.tree.path_to(node))
            own = m(torch.cat([p, pruned.tokens[path[1:]]])[None]).logits[0, -1]
            torch.testing.assert_close(verification.logits[node], own, rtol=1e-9, atol=1e-9)
    # Commit old node 9 (pruned node 3): its shallow rows were drafted at 2 and 9, its deep rows verified at 1 and 3.
    path = pruned.tree.path_to(3)
    drafter.verifier.commit(path)
    committed = torch.cat([p, pruned.tokens[list(path[1:])]])
    fresh = type(drafter.verifier)(m, 1)
    fresh.prefill(committed)
    n = committed.numel()
    assert drafter.state.committed == fresh.state.committed == n
    for a, b in zip(drafter.state.cache.tensors, fresh.state.cache.tensors):
        torch.testing.assert_close(a[:, :n], b[:, :n], rtol=1e-9, atol=1e-9)


def test_the_self_draft_verifier_needs_the_drafts_node_states():
    m = deep_model("llama")
    drafter = perturbed(m, 1, threshold=0.0)
    drafter.verifier.prefill(prompt(4, seed=0)[0])
    with pytest.raises(ShapeError, match="node_states and cache_rows"):
        drafter.verifier.verify(Draft(tree=chain_tree(1), tokens=torch.tensor([1, 2])))


def test_features_a_drafter_reads_must_be_what_the_verifier_reports():
    m = deep_model("llama")
    drafter = perturbed(m, 2, threshold=0.0)
    assert drafter.traits.features == drafter.verifier.traits.features == "layer:2"
    assert make_verifier(m).traits.features == "final"

    class ReadsShallowStates:  # a drafter reading layer-2 states, composed with a verifier reporting final ones
        traits = DrafterTraits(candidate_kinds={CandidateKind.DETERMINISTIC}, features="layer:2")
        max_depth = 2

    with pytest.raises(IncompatibleStagesError, match="ReadsShallowStates reads .*'layer:2'.*FastTreeVerifier "
                                                      "reports 'final'"):
        check_composition(ReadsShallowStates(), StaticTreeBuilder(chain_tree(2)), make_verifier(m), GreedyAcceptor())
    with pytest.raises(IncompatibleStagesError, match="features must be 'final'"):
        DrafterTraits(candidate_kinds={CandidateKind.DETERMINISTIC}, features="last")
