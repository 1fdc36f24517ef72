"""Long runs, repeated calls, stop conditions and non-finite logits."""

import copy
import os

import pytest
import torch

from spec import (
    AutoregressiveDecoder,
    GreedyAcceptor,
    MedusaDrafter,
    RejectionSamplingAcceptor,
    SpeculativeDecoder,
    StaticTreeBuilder,
    TreeAttentionVerifier,
)
from spec.errors import InputError, NonFiniteLogitsError
from spec.testing.assertions import assert_same_tokens
from spec.testing.drafters import OracleDrafter
from spec.trees import tree_from_choices

from helpers import VOCAB, model, prompt, reference

TREE = tree_from_choices([[0], [1], [0, 0], [0, 1], [0, 0, 0], [0, 0, 0, 0]])


def decoder_for(m, drafter, acceptor=None):
    return SpeculativeDecoder(m, drafter, StaticTreeBuilder(TREE), TreeAttentionVerifier(m), acceptor or GreedyAcceptor())


@pytest.mark.slow
def test_4096_tokens_stay_identical_to_autoregressive():
    """No KV-cache drift over thousands of commits."""
    m = model("llama", seed=5, context=4200)
    p = prompt(8, seed=3)
    ref = AutoregressiveDecoder(m).generate(p, max_new_tokens=4096).sequences
    out = decoder_for(m, OracleDrafter(ref, VOCAB, accuracy=0.8, seed=1)).generate(p, max_new_tokens=4096)
    assert_same_tokens(out.sequences, ref)
    assert out.mean_accepted_length > 1.5


def _rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def test_200_calls_keep_memory_flat_and_results_independent():
    """Bound: resident memory grows by less than 25 MB between call 20 and call 200."""
    m = model("qwen2")
    decoder = decoder_for(m, MedusaDrafter.from_model(m, num_heads=4, seed=0), RejectionSamplingAcceptor())
    p = prompt(6, seed=8)
    first_greedy = decoder.generate(p, max_new_tokens=24).sequences
    first_sampled = decoder.generate(p, max_new_tokens=24, temperature=1.0, seed=5).sequences
    baseline = None
    for call in range(200):
        decoder.generate(prompt(5 + call % 7, seed=call), max_new_tokens=16, temperature=0.8 * (call % 2), seed=call)
        if call == 19:
            baseline = _rss_mb()
    growth = _rss_mb() - baseline
    assert growth < 25, f"resident memory grew by {growth:.1f} MB over 180 calls"
    assert torch.equal(decoder.generate(p, max_new_tokens=24).sequences, first_greedy)
    assert torch.equal(decoder.generate(p, max_new_tokens=24, temperature=1.0, seed=5).sequences, first_sampled)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_stop_sequences_stop_exactly_and_match_autoregressive(arch):
    m = model(arch)
    p = prompt(5, seed=12)
    ref = reference(arch, p, 80)
    continuation = ref[0, p.shape[1]:].tolist()
    stop = continuation[30:33]
    end = next(i + 3 for i in range(len(continuation)) if continuation[i:i + 3] == stop)
    spec_out = decoder_for(m, OracleDrafter(ref, VOCAB, accuracy=0.9, seed=0)).generate(
        p, max_new_tokens=80, stop_sequences=[[VOCAB - 1, VOCAB - 1, VOCAB - 1, VOCAB - 1], stop])
    ar_out = AutoregressiveDecoder(m).generate(p, max_new_tokens=80, stop_sequences=[stop])
    assert spec_out.new_tokens.tolist() == continuation[:end]
    assert_same_tokens(spec_out.sequences, ar_out.sequences)
    with pytest.raises(InputError, match="stop sequence is empty"):
        AutoregressiveDecoder(m).generate(p, max_new_tokens=4, stop_sequences=[[]])


def test_eos_and_budget_exact_under_medusa_and_sampling():
    m = model("mistral")
    p = prompt(4, seed=2)
    decoder = decoder_for(m, MedusaDrafter.from_model(m, num_heads=4, seed=1), RejectionSamplingAcceptor())
    for seed in range(20):
        out = decoder.generate(p, max_new_tokens=9, temperature=1.0, seed=seed)
        assert out.new_tokens.numel() == 9
        eos = int(out.new_tokens[3])
        cut = decoder.generate(p, max_new_tokens=9, temperature=1.0, seed=seed, eos_token_id=eos)
        first = out.new_tokens.tolist().index(eos)
        assert cut.new_tokens.tolist() == out.new_tokens.tolist()[: first + 1]


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_logits_from_the_model_are_refused(bad):
    m = copy.deepcopy(model("llama"))
    with torch.no_grad():
        m.lm_head.weight[5, 0] = bad
    for decoder in (decoder_for(m, MedusaDrafter.from_model(m, num_heads=4)), AutoregressiveDecoder(m)):
        with pytest.raises(NonFiniteLogitsError, match="NaN or \\+inf"):
            decoder.generate(prompt(4, seed=1), max_new_tokens=4)


@pytest.mark.parametrize("kind", ["medusa", "hydra", "clover"])
def test_heads_in_another_dtype_are_refused(kind):
    from spec import CloverDrafter, HydraDrafter
    from spec.errors import IncompatibleDrafterError

    m = model("llama")
    cls = {"medusa": MedusaDrafter, "hydra": HydraDrafter, "clover": CloverDrafter}[kind]
    heads = cls.from_model(m, num_heads=2).heads.to(torch.float32)
    with pytest.raises(IncompatibleDrafterError, match="torch.float32 on cpu but the model is torch.float64"):
        cls(m, heads)


def test_nothing_is_ever_unpickled(tmp_path, monkeypatch):
    """Every loader in spec reads safetensors/JSON: make unpickling fail loudly and load everything."""
    import pickle

    from spec import CloverDrafter, HydraDrafter
    from spec.training.checkpoint import latest_checkpoint, load_training_checkpoint, save_training_checkpoint
    from spec.trees import AcceptanceStats, load_tree, save_tree, tree_from_choices

    m = model("qwen2")
    for cls in (MedusaDrafter, HydraDrafter, CloverDrafter):
        cls.from_model(m, num_heads=2).save_pretrained(tmp_path / cls.__name__)
    layer = torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(layer.parameters())
    save_training_checkpoint(tmp_path / "run", 1, layer.state_dict(), optimizer, None, {})
    AcceptanceStats(probs=[[0.5]]).save(tmp_path / "stats.json")
    save_tree(tmp_path / "tree.json", tree_from_choices([[0]]))

    def refuse(*args, **kwargs):
        raise AssertionError("something tried to unpickle")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    for cls in (MedusaDrafter, HydraDrafter, CloverDrafter):
        cls.from_pretrained(tmp_path / cls.__name__, m)
    load_training_checkpoint(latest_checkpoint(tmp_path / "run"), torch.optim.AdamW(layer.parameters()), None)
    AcceptanceStats.load(tmp_path / "stats.json")
    load_tree(tmp_path / "tree.json")


@pytest.mark.parametrize("kind", ["medusa", "hydra", "clover"])
def test_eos_inside_an_accepted_path_stops_exactly_under_every_drafter(kind):
    """EOS and max_new_tokens are exact whatever the drafter and tree (long accepted paths: the oracle tests)."""
    from spec import CloverDrafter, HydraDrafter

    m = model("llama")
    p = prompt(4, seed=21)
    ref = reference("llama", p, 60)[0, p.shape[1]:].tolist()
    eos = ref[40]
    stop = ref.index(eos) + 1
    cls = {"medusa": MedusaDrafter, "hydra": HydraDrafter, "clover": CloverDrafter}[kind]
    for tree in (TREE, tree_from_choices([[0], [0, 0], [0, 0, 0]])):
        decoder = SpeculativeDecoder(m, cls.from_model(m, num_heads=4, seed=0), StaticTreeBuilder(tree),
                                     TreeAttentionVerifier(m), GreedyAcceptor())
        out = decoder.generate(p, max_new_tokens=60, eos_token_id=eos)
        assert out.new_tokens.tolist() == ref[:stop]
        for budget in (1, 5, 17):
            assert decoder.generate(p, max_new_tokens=budget).new_tokens.tolist() == ref[:budget]
