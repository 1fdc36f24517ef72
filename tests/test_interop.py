"""Published formats in and out: every fixture is written here, in the exact published layout, for tiny models."""

from __future__ import annotations

import json
import pickle

import pytest
import torch
from hypothesis import given, settings
from safetensors.torch import load_file, save_file

from spec import GreedyAcceptor, MedusaDrafter, SpeculativeDecoder, StaticTreeBuilder, TreeAttentionVerifier
from spec.drafters.draft_vocab import DraftVocabulary
from spec.errors import CheckpointError, IncompatibleDrafterError, InvalidTreeError
from spec.interop import (
    export_medusa,
    import_medusa,
    read_medusa,
    tree_for_engine,
    tree_from_token_tree,
    tree_to_token_tree,
)
from spec.testing.assertions import assert_same_tokens
from spec.testing.strategies import candidate_trees
from spec.trees import tree_from_choices, tree_to_choices

from drafter_checks import perturb
from helpers import eagle3_published_tensors, model, prompt, reference

TREE = tree_from_choices([[0], [1], [0, 0], [1, 0], [0, 0, 0]])
H, V = 32, 96


def trained_like(num_heads=3, num_layers=1, seed=0) -> MedusaDrafter:
    drafter = MedusaDrafter.from_model(model("llama"), num_heads=num_heads, num_layers=num_layers, seed=seed)
    perturb(drafter.heads, scale=0.05, seed=seed)
    return drafter


def medusa1_tensors(drafter: MedusaDrafter, shared_lm_head: bool = False) -> dict[str, torch.Tensor]:
    """FasterDecoding/Medusa's medusa_lm_head names: {h}.{l}.linear.weight/bias and {h}.{L}.weight."""
    out = {}
    for h, head in enumerate(drafter.heads.heads):
        for l, block in enumerate(head[:-1]):
            out[f"{h}.{l}.linear.weight"] = block.linear.weight.detach().clone()
            out[f"{h}.{l}.linear.bias"] = block.linear.bias.detach().clone()
        if not shared_lm_head:
            out[f"{h}.{len(head) - 1}.weight"] = head[-1].weight.detach().clone()
    return out


def write_medusa1(directory, drafter, pickled=False, declared_heads=2, shared_lm_head=False):
    directory.mkdir(parents=True, exist_ok=True)
    # The published config under-counts: it says 2 heads for a file holding more.
    (directory / "config.json").write_text(json.dumps({
        "medusa_num_heads": declared_heads, "medusa_num_layers": drafter.heads.num_layers,
        "base_model_name_or_path": "tiny-llama"}))
    tensors = medusa1_tensors(drafter, shared_lm_head)
    if pickled:
        torch.save(tensors, directory / "medusa_lm_head.pt")  # the published pickled variant, as a fixture
    else:
        save_file(tensors, str(directory / "medusa_lm_head.safetensors"))
    return directory


def greedy_equal(drafter):
    m = model("llama")
    p = prompt(8, seed=5)
    out = SpeculativeDecoder(m, drafter, StaticTreeBuilder(TREE), TreeAttentionVerifier(m), GreedyAcceptor()).generate(
        p, max_new_tokens=40)
    assert_same_tokens(out.sequences, reference("llama", p, 40))
    return out


def heads_equal(a: MedusaDrafter, b: MedusaDrafter) -> bool:
    sa, sb = a.heads.state_dict(), b.heads.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("pickled", [False, True])
def test_medusa1_heads_import_count_from_tensors_and_decode_like_the_model(tmp_path, pickled):
    original = trained_like(num_heads=3)
    imported = import_medusa(write_medusa1(tmp_path / "heads", original, pickled=pickled), model("llama"))
    assert imported.num_heads == 3  # from the tensor names, not the config's 2
    assert heads_equal(imported, original)
    greedy_equal(imported)


def test_import_export_import_gives_identical_tensors(tmp_path):
    first = import_medusa(write_medusa1(tmp_path / "in", trained_like(num_layers=2)), model("llama"))
    export_medusa(first, tmp_path / "out", layout="medusa")
    assert set(load_file(str(tmp_path / "out" / "medusa_lm_head.safetensors"))) == set(medusa1_tensors(first))
    second = import_medusa(tmp_path / "out", model("llama"))
    assert heads_equal(first, second)


def test_shared_lm_head_variant_uses_the_models_lm_head(tmp_path):
    original = trained_like(num_heads=3)
    imported = import_medusa(write_medusa1(tmp_path / "heads", original, shared_lm_head=True), model("llama"))
    for head in imported.heads.heads:
        assert torch.equal(head[-1].weight, model("llama").get_output_embeddings().weight)
    greedy_equal(imported)


def vllm_head_logits(directory, hidden: torch.Tensor) -> list[torch.Tensor]:
    """An independent reader of vLLM's Medusa layout: its config and tensor names, its block arithmetic."""
    config = json.loads((directory / "config.json").read_text())
    tensors = load_file(str(directory / "model.safetensors"))
    out = []
    for h in range(config["num_heads"]):
        x = hidden
        for l in range(config["num_hidden_layers"]):
            weight = tensors[f"blocks.{h}.layers.{l}.weight"]
            bias = tensors[f"blocks.{h}.layers.{l}.bias"] if config.get("medusa_fc_bias") else None
            x = x + torch.nn.functional.silu(torch.nn.functional.linear(x, weight, bias))
        logits = tensors[f"lm_heads.{h}.weight"] @ x
        if config["truncated_vocab_size"] < config["vocab_size"]:
            full = torch.full((config["vocab_size"],), float("-inf"), dtype=logits.dtype)
            full[tensors["token_map"]] = logits
            logits = full
        out.append(logits)
    return out


@pytest.mark.parametrize("draft_vocab", [None, 40])
def test_vllm_export_read_back_by_an_independent_reader_equals_the_original(tmp_path, draft_vocab):
    drafter = trained_like(num_heads=3, num_layers=2)
    if draft_vocab:
        drafter.use_draft_vocab(DraftVocabulary(vocab_size=V, token_ids=torch.randperm(V)[:draft_vocab]))
    export_medusa(drafter, tmp_path / "vllm", layout="vllm-medusa")
    hidden = torch.randn(H, dtype=torch.float64)
    theirs = vllm_head_logits(tmp_path / "vllm", hidden)
    with torch.no_grad():
        ours = drafter.heads(hidden)
    for h, logits in enumerate(theirs):
        if draft_vocab:
            ids = drafter.draft_vocab.token_ids
            torch.testing.assert_close(logits[ids], ours[h][ids])
            assert torch.isinf(logits).sum() == V - draft_vocab
        else:
            torch.testing.assert_close(logits, ours[h])
    again = import_medusa(tmp_path / "vllm", model("llama"))
    assert (again.draft_vocab is None) == (draft_vocab is None)
    if draft_vocab:
        assert torch.equal(again.draft_vocab.token_ids, drafter.draft_vocab.token_ids)
    greedy_equal(again)


def test_vllm_drops_block_biases_without_medusa_fc_bias(tmp_path):
    drafter = trained_like(num_heads=2)
    export_medusa(drafter, tmp_path / "vllm", layout="vllm-medusa")
    config = json.loads((tmp_path / "vllm" / "config.json").read_text())
    config["medusa_fc_bias"] = False
    (tmp_path / "vllm" / "config.json").write_text(json.dumps(config))
    imported = import_medusa(tmp_path / "vllm", model("llama"))
    assert all(torch.count_nonzero(block.linear.bias) == 0 for head in imported.heads.heads for block in head[:-1])


def test_medusa2_full_checkpoint_heads_bind_to_their_own_base_model_only(tmp_path):
    m = model("llama")
    drafter = trained_like(num_heads=2)
    state = {k: v.detach().clone() for k, v in m.state_dict().items()}
    state.update({f"medusa_head.{k}": v for k, v in medusa1_tensors(drafter).items()})
    directory = tmp_path / "medusa2"
    directory.mkdir()
    save_file(state, str(directory / "model.safetensors"))
    (directory / "config.json").write_text(json.dumps({"model_type": "llama", "medusa_num_heads": 1,
                                                       "medusa_num_layers": 1}))
    assert heads_equal(import_medusa(directory, m), drafter)
    with pytest.raises(IncompatibleDrafterError, match="lm_head differs"):
        import_medusa(directory, model("llama", seed=1))


def test_heads_for_another_model_are_refused(tmp_path):
    directory = write_medusa1(tmp_path / "heads", trained_like())
    with pytest.raises(IncompatibleDrafterError, match="hidden size"):
        import_medusa(directory, model("llama", hidden_size=48))
    with pytest.raises(IncompatibleDrafterError, match="tokens"):
        import_medusa(directory, model("llama", vocab_size=128))


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))  # unpickling would create the marker file


def test_a_malicious_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    directory = tmp_path / "heads"
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps({"medusa_num_heads": 1, "medusa_num_layers": 1}))
    (directory / "medusa_lm_head.pt").write_bytes(pickle.dumps({"0.0.linear.weight": _Payload(str(marker))}))
    with pytest.raises(CheckpointError, match="restricted loader refuses"):
        import_medusa(directory, model("llama"))
    assert not marker.exists()
    (directory / "medusa_lm_head.pt").write_bytes(pickle.dumps(_Payload(str(marker))))
    with pytest.raises(CheckpointError, match="restricted loader refuses"):
        read_medusa(directory)
    assert not marker.exists()


def test_incomplete_or_foreign_files_are_refused(tmp_path):
    tensors = medusa1_tensors(trained_like(num_heads=2))
    del tensors["1.0.linear.weight"]
    directory = tmp_path / "broken"
    directory.mkdir()
    save_file(tensors, str(directory / "medusa_lm_head.safetensors"))
    with pytest.raises(CheckpointError, match="head 1"):
        read_medusa(directory)
    save_file({"model.embed_tokens.weight": torch.zeros(2, 2)}, str(directory / "medusa_lm_head.safetensors"))
    with pytest.raises(CheckpointError, match="not a Medusa head tensor"):
        read_medusa(directory)


@settings(max_examples=25)
@given(tree=candidate_trees(max_nodes=20, max_depth=5, max_width=4))
def test_trees_round_trip_through_every_engines_settings(tree):
    assert tree_from_token_tree(tree_to_token_tree(tree)) == tree
    assert tree_from_choices(tree_for_engine(tree, "medusa")["config"]["medusa_choices"]) == tree
    vllm = tree_for_engine(tree, "vllm", method="eagle3")["config"]
    assert vllm["num_speculative_tokens"] == tree.num_nodes - 1 and vllm["method"] == "eagle3"
    assert tree_from_token_tree(vllm["speculative_token_tree"]) == tree
    chain = tree_for_engine(tree, "vllm", method="medusa")["config"]
    assert chain["num_speculative_tokens"] == tree.max_depth and "speculative_token_tree" not in chain
    for engine in ("trtllm-medusa", "trtllm-eagle"):
        config = tree_for_engine(tree, engine)["config"]["speculative_config"]
        choices = config["medusa_choices" if engine == "trtllm-medusa" else "eagle_choices"]
        assert tree_from_choices(choices) == tree and config["max_draft_len"] == tree.num_nodes - 1
    sglang = tree_for_engine(tree, "sglang")["config"]
    assert sglang["--speculative-num-steps"] == tree.max_depth
    assert sglang["--speculative-num-draft-tokens"] == tree.num_nodes
    assert sglang["--speculative-eagle-topk"] == max(len(c) for c in tree.children)


def test_a_token_tree_that_is_not_a_literal_is_refused():
    with pytest.raises(InvalidTreeError, match="literal"):
        tree_from_token_tree("__import__('os').system('true')")
    assert tree_to_choices(tree_from_token_tree("[(0,), (0, 0)]")) == [[0], [0, 0]]


def test_spec_convert_round_trips_the_shipped_heads_and_prints_engine_settings(tmp_path, capsys):
    from spec.apps.cli import main
    from spec.apps.shipped import load_shipped, load_shipped_drafter, shipped_path

    m, _ = load_shipped()
    load_shipped_drafter("medusa", m).save_pretrained(tmp_path / "spec")
    assert main(["convert", "heads", str(tmp_path / "spec"), str(tmp_path / "vllm"), "--from", "spec",
                 "--to", "vllm-medusa"]) == 0
    assert main(["convert", "heads", str(tmp_path / "vllm"), str(tmp_path / "back")]) == 0
    back, original = MedusaDrafter.from_pretrained(tmp_path / "back", m), MedusaDrafter.from_pretrained(tmp_path / "spec", m)
    # The shipped heads carry a reduced draft vocabulary, which vLLM's layout keeps as token_map with the
    # projections truncated to it: the round trip keeps the map, the blocks, and the projections on the map.
    ids = original.draft_vocab.token_ids
    assert torch.equal(back.draft_vocab.token_ids, ids)
    for a, b in zip(back.heads.heads, original.heads.heads):
        assert all(torch.equal(x, y) for x, y in zip(a[:-1].state_dict().values(), b[:-1].state_dict().values()))
        assert torch.equal(a[-1].weight[ids], b[-1].weight[ids])
    capsys.readouterr()
    tree_file = shipped_path() / "trees" / "medusa.json"
    assert main(["convert", "tree", str(tree_file), "--to", "trtllm-medusa", "--heads", "h"]) == 0
    printed = capsys.readouterr().out
    assert '"decoding_type": "Medusa"' in printed and "trtllm-serve" in printed
    assert main(["convert", "heads", str(tmp_path / "nowhere"), str(tmp_path / "x")]) == 2  # a typed refusal


# ---- EAGLE-1 -----------------------------------------------------------------------------------------------
def trained_eagle(seed=0, fc_bias=True):
    from spec import EagleDrafter

    drafter = EagleDrafter.from_model(model("llama"), max_depth=3, fc_bias=fc_bias, seed=seed)
    perturb(drafter.heads, scale=0.05, seed=seed)
    return drafter


def write_eagle1(directory, drafter, pickled=False, with_embedding=True):
    """SafeAILab/EAGLE's names: fc.*, layers.0.* (no input norm), embed_tokens.weight; a one-layer LlamaConfig."""
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {("layers.0." + k[len("layer."):] if k.startswith("layer.") else k): v.detach().clone()
               for k, v in drafter.heads.state_dict().items()}
    if with_embedding:
        tensors["embed_tokens.weight"] = model("llama").get_input_embeddings().weight.detach().clone()
    config = model("llama").config.to_dict() | {"num_hidden_layers": 1, "bias": drafter.heads.fc.bias is not None}
    (directory / "config.json").write_text(json.dumps(config, default=str))
    if pickled:
        torch.save(tensors, directory / "pytorch_model.bin")
    else:
        save_file(tensors, str(directory / "model.safetensors"))
    return directory


@pytest.mark.parametrize("pickled, fc_bias", [(False, True), (True, False)])
def test_eagle1_heads_import_and_decode_like_the_model(tmp_path, pickled, fc_bias):
    from spec.interop.eagle import import_eagle

    original = trained_eagle(fc_bias=fc_bias)
    imported = import_eagle(write_eagle1(tmp_path / "eagle", original, pickled=pickled), model("llama"), max_depth=3)
    assert (imported.heads.fc.bias is not None) == fc_bias
    saved, loaded = original.heads.state_dict(), imported.heads.state_dict()
    assert saved.keys() == loaded.keys() and all(torch.equal(saved[k], loaded[k]) for k in saved)
    greedy_equal(imported)


def test_eagle1_export_import_round_trip_and_refusals(tmp_path):
    from spec.interop.eagle import export_eagle, import_eagle

    original = trained_eagle()
    export_eagle(original, tmp_path / "out")
    assert "layers.0.post_attention_layernorm.weight" in load_file(str(tmp_path / "out" / "model.safetensors"))
    assert json.loads((tmp_path / "out" / "config.json").read_text())["num_hidden_layers"] == 1
    again = import_eagle(tmp_path / "out", model("llama"), max_depth=3)
    assert all(torch.equal(a, b) for a, b in zip(original.heads.state_dict().values(), again.heads.state_dict().values()))
    write_eagle1(tmp_path / "theirs", original)
    with pytest.raises(IncompatibleDrafterError, match="embed_tokens differ"):
        import_eagle(tmp_path / "theirs", model("llama", seed=1))
    with pytest.raises(IncompatibleDrafterError, match="trained for another model"):
        import_eagle(write_eagle1(tmp_path / "no-embed", original, with_embedding=False), model("llama", hidden_size=48))


def test_spec_convert_moves_eagle_heads_both_ways(tmp_path):
    from spec.apps.cli import main
    from spec.apps.shipped import load_shipped, load_shipped_drafter

    m, _ = load_shipped()
    load_shipped_drafter("eagle", m).save_pretrained(tmp_path / "spec")
    assert main(["convert", "heads", str(tmp_path / "spec"), str(tmp_path / "eagle"), "--from", "spec",
                 "--to", "eagle"]) == 0
    assert main(["convert", "heads", str(tmp_path / "eagle"), str(tmp_path / "back"), "--from", "eagle"]) == 0
    assert main(["convert", "heads", str(tmp_path / "spec"), str(tmp_path / "x"), "--from", "spec",
                 "--to", "vllm-medusa"]) == 2  # EAGLE heads are not Medusa heads: a typed refusal


# ---- EAGLE-3 -----------------------------------------------------------------------------------------------
def trained_eagle3(seed=0):
    from spec import Eagle3Drafter

    vocab = DraftVocabulary(vocab_size=V, token_ids=torch.randperm(V, generator=torch.Generator().manual_seed(seed))[:48])
    drafter = Eagle3Drafter.from_model(model("llama", num_layers=4), max_depth=3, draft_vocab=vocab, seed=seed)
    perturb(drafter.heads, scale=0.05, seed=seed)
    return drafter


def write_eagle3(directory, drafter):
    """SafeAILab's EAGLE-3 names: fc, midlayer.* (with hidden_norm), norm, lm_head [K, H], d2t offsets, t2d mask."""
    directory.mkdir(parents=True, exist_ok=True)
    tensors = eagle3_published_tensors(drafter, "midlayer.", V)
    ids = drafter.heads.d2t
    (directory / "config.json").write_text(json.dumps({"draft_vocab_size": int(ids.numel()), "target_hidden_size": H,
                                                       "num_hidden_layers": 1}))
    save_file(tensors, str(directory / "model.safetensors"))
    return directory


def test_eagle3_heads_import_decode_like_the_model_and_round_trip(tmp_path):
    from spec import AutoregressiveDecoder, Eagle3Drafter
    from spec.bench.pairing import verifier_for
    from spec.interop.eagle import export_eagle3, import_eagle3

    m = model("llama", num_layers=4)
    original = trained_eagle3()
    imported = import_eagle3(write_eagle3(tmp_path / "theirs", original), m, max_depth=3,
                             layers=list(original.heads.layers))
    assert torch.equal(imported.heads.d2t, original.heads.d2t)
    assert all(torch.equal(a, b) for a, b in zip(original.heads.state_dict().values(), imported.heads.state_dict().values()))
    p = prompt(8, seed=5)
    tree = tree_from_choices([[0], [1], [0, 0]])
    decoder = SpeculativeDecoder(m, imported, StaticTreeBuilder(tree), verifier_for(m, imported), GreedyAcceptor())
    ref = AutoregressiveDecoder(m).generate(p, max_new_tokens=30).sequences
    assert_same_tokens(decoder.generate(p, max_new_tokens=30).sequences, ref)
    export_eagle3(imported, tmp_path / "ours")
    again = import_eagle3(tmp_path / "ours", m, max_depth=3)  # layers from the exported config
    assert isinstance(again, Eagle3Drafter) and list(again.heads.layers) == list(original.heads.layers)


def test_eagle3_maps_that_are_not_an_injection_are_refused(tmp_path):
    from spec.interop.eagle import import_eagle3

    directory = write_eagle3(tmp_path / "bad", trained_eagle3())
    tensors = load_file(str(directory / "model.safetensors"))
    tensors["d2t"][1] = tensors["d2t"][0] - 1  # two draft tokens onto the same target token
    save_file(tensors, str(directory / "model.safetensors"))
    with pytest.raises(CheckpointError, match="not a valid injection"):
        import_eagle3(directory, model("llama", num_layers=4))
    with pytest.raises(IncompatibleDrafterError, match="another model"):
        import_eagle3(write_eagle3(tmp_path / "ok", trained_eagle3()), model("llama", num_layers=4, vocab_size=128))
