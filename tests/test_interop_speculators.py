"""The speculators format (what ``vllm serve`` reads) and EAGLE-3 through ``spec convert``: every fixture is
written here, in the exact published layout, for tiny models; exports are read back by an independent reader."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from spec import AutoregressiveDecoder, Eagle3Drafter, EagleDrafter, GreedyAcceptor, SpeculativeDecoder, StaticTreeBuilder
from spec.drafters.draft_vocab import DraftVocabulary
from spec.errors import CheckpointError, IncompatibleDrafterError, SpecError, UnsupportedError
from spec.interop import (
    detect_head_format,
    export_eagle3,
    export_speculators,
    import_eagle3,
    import_speculators,
    read_speculators_config,
)
from spec.runtime.features import select_features
from spec.testing.assertions import assert_same_tokens
from spec.trees import tree_from_choices

from drafter_checks import perturb
from helpers import eagle3_published_tensors, model, prompt

V = 96
LAYERS = 4
TREE = tree_from_choices([[0], [1], [0, 0]])


def target():
    return model("llama", num_layers=LAYERS)


def eagle3(layers=None, seed=0) -> Eagle3Drafter:
    ids = torch.randperm(V, generator=torch.Generator().manual_seed(seed))[:48]
    drafter = Eagle3Drafter.from_model(target(), max_depth=3, draft_vocab=DraftVocabulary(V, ids), layers=layers,
                                       seed=seed)
    perturb(drafter.heads, scale=0.05, seed=seed)
    return drafter


def eagle1(fc_bias=True, seed=0) -> EagleDrafter:
    drafter = EagleDrafter.from_model(target(), max_depth=3, fc_bias=fc_bias, seed=seed)
    perturb(drafter.heads, scale=0.05, seed=seed)
    return drafter


def section(kind: str, tokens: int = 3) -> dict:
    """speculators_config as speculators saves it: algorithm, one greedy proposal method, the verifier."""
    return {"algorithm": kind, "default_proposal_method": "greedy",
            "proposal_methods": [{"proposal_type": "greedy", "speculative_tokens": tokens, "verifier_accept_k": 1,
                                  "accept_tolerance": 0.0}],
            "verifier": {"name_or_path": "tiny-llama", "architectures": ["LlamaForCausalLM"]}}


def layer_config() -> dict:
    return target().config.to_dict() | {"num_hidden_layers": 1, "tie_word_embeddings": False}


def write_speculators_eagle3(directory, drafter, ids=None, **config_edits):
    """speculators' Eagle3 names: embed_tokens, fc, layers.0.* (hidden_norm inside), norm, lm_head, d2t, t2d."""
    directory.mkdir(parents=True, exist_ok=True)
    tensors = eagle3_published_tensors(drafter, "layers.0.", V)
    token_ids = drafter.heads.d2t.to(torch.long)
    tensors["embed_tokens.weight"] = target().get_input_embeddings().weight.detach().clone()
    config = {"speculators_model_type": "eagle3", "architectures": ["Eagle3Speculator"],
              "speculators_version": "0.2.0", "transformer_layer_config": layer_config(),
              "draft_vocab_size": int(token_ids.numel()), "norm_before_residual": False,
              "target_hidden_size": None, "eagle_aux_hidden_state_layer_ids": ids or list(drafter.heads.layers),
              "embed_requires_grad": False, "speculators_config": section("eagle3")} | config_edits
    (directory / "config.json").write_text(json.dumps(config, default=str))
    save_file(tensors, str(directory / "model.safetensors"))
    return directory


def write_speculators_eagle1(directory, drafter, **config_edits):
    """speculators' EagleSpeculator names: fusion_fc.* and transformer.* (no input norm: layernorms false)."""
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for k, v in drafter.heads.state_dict().items():
        name = "fusion_fc." + k[len("fc."):] if k.startswith("fc.") else "transformer." + k[len("layer."):]
        tensors[name] = v.detach().clone()
    config = {"speculators_model_type": "eagle", "architectures": ["EagleSpeculator", "LlamaDecoderLayer"],
              "transformer_layer_architecture": "LlamaDecoderLayer", "transformer_layer_config": layer_config(),
              "layernorms": False, "fusion_bias": drafter.heads.fc.bias is not None,
              "speculators_config": section("eagle")} | config_edits
    (directory / "config.json").write_text(json.dumps(config, default=str))
    save_file(tensors, str(directory / "model.safetensors"))
    return directory


def same_heads(a, b) -> bool:
    sa, sb = a.heads.state_dict(), b.heads.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def decodes_like_the_model(drafter):
    from spec.bench.pairing import verifier_for

    m = target()
    p = prompt(8, seed=5)
    decoder = SpeculativeDecoder(m, drafter, StaticTreeBuilder(TREE), verifier_for(m, drafter), GreedyAcceptor())
    assert_same_tokens(decoder.generate(p, max_new_tokens=16).sequences,
                       AutoregressiveDecoder(m).generate(p, max_new_tokens=16).sequences)


# ---- import: the published layout decodes like the model; export -> import is the identity ---------------------
def test_speculators_eagle3_imports_decodes_like_the_model_and_round_trips(tmp_path):
    original = eagle3()
    imported = import_speculators(write_speculators_eagle3(tmp_path / "theirs", original), target())
    assert isinstance(imported, Eagle3Drafter) and imported.heads.max_depth == 3  # speculative_tokens
    assert same_heads(imported, original) and torch.equal(imported.heads.d2t, original.heads.d2t)
    decodes_like_the_model(imported)
    export_speculators(imported, tmp_path / "ours")
    assert detect_head_format(tmp_path / "ours") == "speculators"
    assert same_heads(import_speculators(tmp_path / "ours", target()), original)


@pytest.mark.parametrize("fc_bias", [True, False])
def test_speculators_eagle1_imports_decodes_like_the_model_and_round_trips(tmp_path, fc_bias):
    original = eagle1(fc_bias)
    imported = import_speculators(write_speculators_eagle1(tmp_path / "theirs", original), target())
    assert type(imported) is EagleDrafter and same_heads(imported, original)
    decodes_like_the_model(imported)
    export_speculators(imported, tmp_path / "ours")
    assert same_heads(import_speculators(tmp_path / "ours", target()), original)


# ---- export: read back by an independent reader (json + safetensors, the engines' arithmetic) -------------------
def rms(x, weight, eps):
    return weight * (x / torch.sqrt((x * x).mean() + eps))


def one_pair(tensors, prefix, h, residual, cfg):
    """One decoder layer on a single position (its attention sees only itself: softmax over one key is 1, so
    rotary does not matter): residual + o_proj(v_proj(h), each KV head shared by its query heads), then the MLP."""
    heads, kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    v = (tensors[prefix + "self_attn.v_proj.weight"] @ h).view(kv, -1).repeat_interleave(heads // kv, dim=0)
    x = residual + tensors[prefix + "self_attn.o_proj.weight"] @ v.flatten()
    y = rms(x, tensors[prefix + "post_attention_layernorm.weight"], cfg["rms_norm_eps"])
    act = torch.nn.functional.silu(tensors[prefix + "mlp.gate_proj.weight"] @ y) * (tensors[prefix + "mlp.up_proj.weight"] @ y)
    return x + tensors[prefix + "mlp.down_proj.weight"] @ act


def captured_inputs(m, ids, layers):
    """What vLLM and EAGLE-3's own code capture as aux layer k: the residual stream entering decoder layer k."""
    seen = {}

    def hook(k):
        def grab(module, args, kwargs):
            seen[k] = (kwargs["hidden_states"] if "hidden_states" in kwargs else args[0])[0]
        return grab

    handles = [m.model.layers[k].register_forward_pre_hook(hook(k), with_kwargs=True) for k in layers]
    try:
        with torch.no_grad():
            out = m(ids, output_hidden_states=True)
    finally:
        for handle in handles:
            handle.remove()
    return seen, out.hidden_states


def spec_first_pair_logits(drafter, tokens, features):
    drafter.reset_context()
    with torch.no_grad():
        predicted = drafter.run_pairs(tokens[1:2], drafter.heads.read(features[0:1]), torch.tensor([0]),
                                      torch.tensor([0]), torch.ones(1, 1, dtype=torch.bool))
        return drafter.logits(predicted)[0]


def test_eagle3_export_read_by_an_independent_reader_equals_the_drafter(tmp_path):
    # Layers written out of order: spec concatenates in its order, the engines in ascending layer order.
    drafter = eagle3(layers=(3, 1, 2))
    export_speculators(drafter, tmp_path / "out", verifier="org/base")
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    tensors = load_file(str(tmp_path / "out" / "model.safetensors"))
    # The fields vLLM's speculators config reader takes.
    assert config["speculators_model_type"] == "eagle3" and config["norm_before_residual"] is False
    assert config["speculators_config"]["proposal_methods"][0]["speculative_tokens"] == 3
    assert config["speculators_config"]["verifier"]["name_or_path"] == "org/base"
    assert config["draft_vocab_size"] == 48 and config["target_hidden_size"] == 32
    assert config["eagle_aux_hidden_state_layer_ids"] == [1, 2, 3]
    cfg = config["transformer_layer_config"]
    assert cfg["num_hidden_layers"] == 1 and cfg["model_type"] == "llama" and cfg["vocab_size"] == V
    assert tensors["d2t"].dtype == torch.int64 and tensors["t2d"].dtype == torch.bool

    m, ids = target(), prompt(2, seed=3)
    seen, hidden_states = captured_inputs(m, ids, config["eagle_aux_hidden_state_layer_ids"])
    for k in (1, 2, 3):  # spec's layers:k is the engines' aux layer k: no shift
        torch.testing.assert_close(seen[k], select_features(hidden_states, (k,)), rtol=0, atol=0)
    aux = torch.cat([seen[k][0] for k in sorted(config["eagle_aux_hidden_state_layer_ids"])])
    g = tensors["fc.weight"] @ aux
    e = tensors["embed_tokens.weight"][ids[0, 1]]
    eps = cfg["rms_norm_eps"]
    h = torch.cat([rms(e, tensors["layers.0.input_layernorm.weight"], eps),
                   rms(g, tensors["layers.0.hidden_norm.weight"], eps)])
    x = one_pair(tensors, "layers.0.", h, g, cfg)  # norm_before_residual false: the residual is g itself
    theirs = tensors["lm_head.weight"] @ rms(x, tensors["norm.weight"], eps)
    assert torch.equal(torch.arange(48) + tensors["d2t"], drafter.heads.d2t)

    ours = spec_first_pair_logits(drafter, ids[0], select_features(hidden_states, drafter.heads.layers))
    torch.testing.assert_close(theirs, ours)
    again = import_speculators(tmp_path / "out", m)
    assert again.heads.layers == (1, 2, 3)  # ascending, fc's columns permuted with them
    torch.testing.assert_close(spec_first_pair_logits(again, ids[0], select_features(hidden_states, (1, 2, 3))), ours)


def test_eagle1_export_read_by_an_independent_reader_equals_the_drafter(tmp_path):
    drafter = eagle1(fc_bias=True)
    export_speculators(drafter, tmp_path / "out")
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    tensors = load_file(str(tmp_path / "out" / "model.safetensors"))
    assert config["speculators_model_type"] == "eagle" and config["layernorms"] is False
    assert config["fusion_bias"] is True and config["transformer_layer_architecture"] == "LlamaDecoderLayer"
    assert "transformer.input_layernorm.weight" not in tensors
    m, ids = target(), prompt(2, seed=3)
    with torch.no_grad():
        final = m(ids, output_hidden_states=True).hidden_states[-1][0]
    e = m.get_input_embeddings().weight[ids[0, 1]]
    z = tensors["fusion_fc.weight"] @ torch.cat([e, final[0]]) + tensors["fusion_fc.bias"]
    x = one_pair(tensors, "transformer.", z, z, config["transformer_layer_config"])
    theirs = m.get_output_embeddings().weight @ x
    torch.testing.assert_close(theirs, spec_first_pair_logits(drafter, ids[0], final).detach())


# ---- the EAGLE-3 layer-id convention -----------------------------------------------------------------------------
def test_layer_ids_carry_over_sorted_and_the_last_layers_output_is_refused(tmp_path):
    original = eagle3(layers=(1, 2, 3))
    directory = write_speculators_eagle3(tmp_path / "unsorted", original, ids=[3, 1, 2])
    assert import_speculators(directory, target()).heads.layers == (1, 2, 3)
    with pytest.raises(UnsupportedError, match="before its final norm"):
        import_speculators(write_speculators_eagle3(tmp_path / "last", original, ids=[1, 2, LAYERS]), target())
    with pytest.raises(CheckpointError, match="repeats a layer"):
        import_speculators(write_speculators_eagle3(tmp_path / "twice", original, ids=[1, 1, 2]), target())
    with pytest.raises(IncompatibleDrafterError, match="another model"):
        import_speculators(write_speculators_eagle3(tmp_path / "deep", original, ids=[1, 2, 30]), target())
    # SafeAILab's layout: the same ids, top level or under eagle_config, and the same sorted export.
    export_eagle3(eagle3(layers=(3, 1, 2)), tmp_path / "safeailab")
    written = json.loads((tmp_path / "safeailab" / "config.json").read_text())
    assert written["eagle_aux_hidden_state_layer_ids"] == written["eagle_config"]["eagle_aux_hidden_state_layer_ids"] == [1, 2, 3]
    assert import_eagle3(tmp_path / "safeailab", target()).heads.layers == (1, 2, 3)


def test_sglang_output_convention_ids_are_shifted_by_one(tmp_path):
    # SGLang/SpecForge configs count layer outputs: id k is the stream after k + 1 layers.
    drafter = eagle3(layers=(1, 2, 3))
    export_eagle3(drafter, tmp_path / "sglang", id_convention="output")
    assert json.loads((tmp_path / "sglang" / "config.json").read_text())["eagle_aux_hidden_state_layer_ids"] == [0, 1, 2]
    assert import_eagle3(tmp_path / "sglang", target(), id_convention="output").heads.layers == (1, 2, 3)
    assert import_eagle3(tmp_path / "sglang", target()).heads.layers == (0, 1, 2)  # read as boundaries: other layers
    with pytest.raises(UnsupportedError, match="no layer's output"):
        export_eagle3(eagle3(layers=(0, 1, 2)), tmp_path / "embeddings", id_convention="output")
    with pytest.raises(UnsupportedError, match="before its final norm"):  # output of the last layer: id L after +1
        import_eagle3(export_eagle3(drafter, tmp_path / "b"), target(), id_convention="output")


def test_a_drafter_fusing_one_layer_twice_cannot_be_exported(tmp_path):
    m = model("llama", num_layers=2)
    drafter = Eagle3Drafter.from_model(m, max_depth=2)  # (0, 1, 1): two layers cannot give three
    with pytest.raises(UnsupportedError, match="distinct layers"):
        export_speculators(drafter, tmp_path / "out")


# ---- malformed configs: typed errors naming the field and the fix -----------------------------------------------
def _without(path):
    def edit(config):
        *outer, last = path
        for key in outer:
            config = config[key]
        del config[last]
    return edit


def _set(path, value):
    def edit(config):
        *outer, last = path
        for key in outer:
            config = config[key]
        config[last] = value
    return edit


@pytest.mark.parametrize("edit, error, message", [
    (_without(["speculators_config"]), CheckpointError, "no 'speculators_config'"),
    (_set(["speculators_config", "proposal_methods"], []), CheckpointError, "at least one proposal method"),
    (_set(["speculators_config", "proposal_methods", 0, "speculative_tokens"], "3"), CheckpointError,
     "'speculative_tokens' must be a int"),
    (_without(["transformer_layer_config"]), CheckpointError, "no 'transformer_layer_config'"),
    (_set(["speculators_model_type"], "mlp_speculator"), UnsupportedError, "not one spec reads"),
    (_set(["transformer_layer_config", "num_hidden_layers"], 2), UnsupportedError, "one decoder layer"),
])
def test_malformed_speculators_configs_are_refused_naming_the_field(tmp_path, edit, error, message):
    directory = write_speculators_eagle3(tmp_path / "heads", eagle3())
    config = json.loads((directory / "config.json").read_text())
    edit(config)
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(error, match=message):
        read_speculators_config(directory)


@pytest.mark.parametrize("writer, edits, error, message", [
    ("eagle3", {"norm_before_residual": True}, UnsupportedError, "norm_before_residual"),
    ("eagle3", {"draft_vocab_size": 7}, CheckpointError, "draft_vocab_size=7"),
    ("eagle3", {"target_hidden_size": 64}, IncompatibleDrafterError, "target_hidden_size"),
    ("eagle", {"layernorms": True}, UnsupportedError, "layernorms"),
    ("eagle", {"fusion_bias": False}, CheckpointError, "fusion_bias=False"),
])
def test_variants_spec_cannot_compute_are_refused(tmp_path, writer, edits, error, message):
    if writer == "eagle3":
        directory = write_speculators_eagle3(tmp_path / "heads", eagle3(), **edits)
    else:
        directory = write_speculators_eagle1(tmp_path / "heads", eagle1(fc_bias=True), **edits)
    with pytest.raises(error, match=message):
        import_speculators(directory, target())


def test_heads_for_another_model_and_other_architectures_are_refused(tmp_path):
    directory = write_speculators_eagle3(tmp_path / "heads", eagle3())
    with pytest.raises(IncompatibleDrafterError, match="hidden_size"):
        import_speculators(directory, model("llama", num_layers=LAYERS, hidden_size=48))
    with pytest.raises(IncompatibleDrafterError, match="embed_tokens differ"):
        import_speculators(directory, model("llama", num_layers=LAYERS, seed=1))
    qwen = EagleDrafter.from_model(model("qwen2"), max_depth=2)
    with pytest.raises(UnsupportedError, match="Llama decoder layer"):
        export_speculators(qwen, tmp_path / "qwen")


# ---- spec convert ------------------------------------------------------------------------------------------------
def test_spec_convert_moves_eagle3_heads_through_every_layout(tmp_path):
    from spec.apps.cli import main
    from spec.apps.shipped import load_shipped, load_shipped_drafter

    m, _ = load_shipped()
    shipped = load_shipped_drafter("eagle3", m)
    shipped.save_pretrained(tmp_path / "spec")
    assert main(["convert", "heads", str(tmp_path / "spec"), str(tmp_path / "eagle3"), "--to", "eagle3"]) == 0
    assert main(["convert", "heads", str(tmp_path / "eagle3"), str(tmp_path / "vllm"), "--to", "speculators",
                 "--verifier", "org/spec-py-tiny"]) == 0
    config = json.loads((tmp_path / "vllm" / "config.json").read_text())
    assert config["speculators_config"]["verifier"]["name_or_path"] == "org/spec-py-tiny"
    assert main(["convert", "heads", str(tmp_path / "vllm"), str(tmp_path / "back")]) == 0  # told from the files
    assert same_heads(Eagle3Drafter.from_pretrained(tmp_path / "back", m), shipped)
    assert main(["convert", "heads", str(tmp_path / "eagle3"), str(tmp_path / "x"), "--from", "eagle3",
                 "--to", "eagle"]) == 2  # EAGLE-3 heads are not EAGLE-1 heads: a typed refusal


def test_spec_convert_moves_eagle1_heads_through_speculators(tmp_path):
    from spec.apps.cli import main
    from spec.apps.shipped import load_shipped, load_shipped_drafter

    m, _ = load_shipped()
    shipped = load_shipped_drafter("eagle", m)
    shipped.save_pretrained(tmp_path / "spec")
    assert main(["convert", "heads", str(tmp_path / "spec"), str(tmp_path / "vllm"), "--to", "speculators"]) == 0
    assert main(["convert", "heads", str(tmp_path / "vllm"), str(tmp_path / "back"), "--from", "speculators"]) == 0
    assert same_heads(EagleDrafter.from_pretrained(tmp_path / "back", m), shipped)
    load_shipped_drafter("medusa", m).save_pretrained(tmp_path / "medusa")
    assert main(["convert", "heads", str(tmp_path / "medusa"), str(tmp_path / "y"), "--to", "speculators"]) == 2
    assert issubclass(UnsupportedError, SpecError)
