"""spec's EAGLE and EAGLE-3 heads in the speculators format (what ``vllm serve`` reads), and back.

A speculators checkpoint is a ``config.json`` beside ``model.safetensors``. The config names the algorithm
(``speculators_model_type``: ``"eagle"`` or ``"eagle3"``), the draft layer's own transformers config
(``transformer_layer_config``, a one-layer ``LlamaConfig`` dict) and a ``speculators_config`` section:
``algorithm``, ``proposal_methods`` (one ``{"proposal_type": "greedy", "speculative_tokens": n, ...}``),
``default_proposal_method`` and ``verifier`` (``name_or_path``, ``architectures``). vLLM takes the method
and ``num_speculative_tokens`` from it and builds the draft model from ``transformer_layer_config``.

EAGLE-3 adds ``draft_vocab_size``, ``target_hidden_size``, ``norm_before_residual`` and
``eagle_aux_hidden_state_layer_ids`` at the top level; its tensors are ``embed_tokens.weight`` (the
verifier's embedding), ``fc.weight``, ``layers.0.*`` (with ``hidden_norm``), ``norm.weight``,
``lm_head.weight``, ``d2t`` and ``t2d``. EAGLE-1 adds ``transformer_layer_architecture``, ``layernorms``
and ``fusion_bias``; its tensors are ``fusion_fc.*`` and ``transformer.*``.

The field and tensor names were read from the speculators and vLLM sources (cited in docs/interop.md);
no code of theirs is used. Import binds the heads to the model given, as the other layouts do.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional

import attrs
import torch

from spec.drafters import Eagle3Drafter, EagleDrafter
from spec.errors import CheckpointError, IncompatibleDrafterError, UnsupportedError
from spec.interop.eagle import (
    check_embedding,
    eagle3_from_state,
    eagle_from_state,
    engine_layer_ids,
    layers_from_engine_ids,
    vocabulary_maps,
)
from spec.interop.tensors import first_file, read_config, read_tensors, write_safetensors
from spec.io.atomic import replace_directory

SPECULATORS_TYPES = ("eagle", "eagle3")
#: Saved by speculators' training beside the heads but not part of them (its loss's frozen verifier copies).
_TRAINING_ONLY = ("verifier_norm.weight", "verifier_lm_head.weight")


@attrs.frozen
class SpeculatorsConfig:
    """What spec reads from a speculators ``config.json``, checked once so the importers work on typed fields.

    ``speculative_tokens``: the first proposal method's chain length (vLLM's default ``num_speculative_tokens``);
    ``aux_layer_ids``: EAGLE-3's ids as written (None: the engines' default); the flags are the layout's own.
    """

    model_type: str
    speculative_tokens: int
    verifier: Optional[str]
    layer_config: dict
    aux_layer_ids: Optional[tuple[int, ...]] = None
    fusion_bias: Optional[bool] = None
    layernorms: bool = False
    norm_before_residual: bool = False
    norm_before_fc: bool = False
    draft_vocab_size: Optional[int] = None
    target_hidden_size: Optional[int] = None


def _field(config: dict, key: str, kind, where: str, default: Any = attrs.NOTHING):
    if key not in config or config[key] is None:
        if default is attrs.NOTHING:
            raise CheckpointError(f"{where} has no {key!r}; it is not a complete speculators config. Export it "
                                  "again (spec convert heads ... --to speculators).")
        return default
    value = config[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise CheckpointError(f"{where}: {key!r} must be a {names}, got {value!r}.")
    return value


def read_speculators_config(directory: str | os.PathLike) -> SpeculatorsConfig:
    """The speculators config of ``directory``; a missing or malformed field is a CheckpointError naming it."""
    directory = Path(directory)
    config = read_config(directory)
    where = str(directory / "config.json")
    if not config:
        raise CheckpointError(f"{directory} has no config.json; a speculators checkpoint keeps its layout there.")
    kind = _field(config, "speculators_model_type", str, where)
    if kind not in SPECULATORS_TYPES:
        raise UnsupportedError(f"{where}: speculators_model_type {kind!r} is not one spec reads; it reads "
                               f"{', '.join(SPECULATORS_TYPES)} (EAGLE-1 and EAGLE-3 heads).")
    section = _field(config, "speculators_config", dict, where)
    inner = f"{where} speculators_config"
    methods = _field(section, "proposal_methods", list, inner)
    if not methods or not isinstance(methods[0], dict):
        raise CheckpointError(f"{inner}: proposal_methods must list at least one proposal method (an object).")
    tokens = _field(methods[0], "speculative_tokens", int, f"{inner} proposal_methods[0]")
    if tokens < 1:
        raise CheckpointError(f"{inner}: speculative_tokens must be at least 1, got {tokens}.")
    verifier = _field(section, "verifier", dict, inner)
    name = _field(verifier, "name_or_path", str, f"{inner} verifier", None)
    layer_config = _field(config, "transformer_layer_config", dict, where)
    layer_count = layer_config.get("num_hidden_layers", 1)
    if layer_count != 1:
        raise UnsupportedError(f"{where}: transformer_layer_config has {layer_count} layers; spec's EAGLE heads "
                               "have one decoder layer, so only one-layer speculators heads can be read.")
    ids = _field(config, "eagle_aux_hidden_state_layer_ids", list, where, None)
    return SpeculatorsConfig(
        model_type=kind, speculative_tokens=tokens, verifier=name, layer_config=layer_config,
        aux_layer_ids=None if ids is None else tuple(ids),
        fusion_bias=_field(config, "fusion_bias", bool, where, None),
        layernorms=_field(config, "layernorms", bool, where, False),
        # vLLM takes a missing norm_before_residual as true; speculators' own default is false. Say it.
        norm_before_residual=_field(config, "norm_before_residual", bool, where, kind == "eagle3"),
        norm_before_fc=_field(config, "norm_before_fc", bool, where, False),
        draft_vocab_size=_field(config, "draft_vocab_size", int, where, None),
        target_hidden_size=_field(config, "target_hidden_size", int, where, None))


def import_speculators(directory: str | os.PathLike, model, max_depth: Optional[int] = None,
                       candidates: str = "top_k"):
    """An :class:`EagleDrafter` or :class:`Eagle3Drafter` for ``model`` from a speculators checkpoint.

    ``max_depth``: how deep the drafter may draft (default: the config's ``speculative_tokens``). Variants spec's
    heads cannot compute (extra layernorms, norm before the residual or before fc) are refused, naming the field.
    """
    directory = Path(directory)
    config = read_speculators_config(directory)
    where = str(directory / "config.json")
    path = first_file(directory, ("model.safetensors",), "speculators weights file (model.safetensors)")
    tensors = read_tensors(path)
    depth = config.speculative_tokens if max_depth is None else max_depth
    hidden = model.get_output_embeddings().weight.shape[1]
    width = config.layer_config.get("hidden_size")
    if width is not None and width != hidden:
        raise IncompatibleDrafterError(f"{where}: transformer_layer_config's hidden_size is {width} but the model's "
                                       f"is {hidden}; these heads were trained for another model.")
    for name in _TRAINING_ONLY:
        tensors.pop(name, None)
    check_embedding(tensors, "embed_tokens.weight", model, str(path))
    if config.model_type == "eagle":
        if config.layernorms:
            raise UnsupportedError(f"{where}: layernorms is true (the HASS/TTT variant with extra norms), which "
                                   "spec's EAGLE heads do not have; only layernorms: false heads can be read.")
        head = tensors.pop("lm_head.weight", None)  # the verifier's, when saved attached: must be this model's
        if head is not None and not torch.equal(head.to(model.get_output_embeddings().weight),
                                                model.get_output_embeddings().weight):
            raise IncompatibleDrafterError(f"{path}: its lm_head differs from the model's; these EAGLE heads were "
                                           "trained for another model.")
        state = {_eagle_ours(k): v for k, v in tensors.items()}
        if config.fusion_bias is not None and config.fusion_bias != ("fc.bias" in state):
            raise CheckpointError(f"{where} says fusion_bias={config.fusion_bias} but {path} "
                                  f"{'lacks' if config.fusion_bias else 'holds'} fusion_fc.bias; the files come from "
                                  "different saves.")
        return eagle_from_state(state, model, str(path), _eagle_theirs, depth, candidates)
    if config.norm_before_residual:
        raise UnsupportedError(f"{where}: norm_before_residual is true (or missing, which vLLM reads as true): the "
                               "layer's residual is the normalised feature, while spec's EAGLE-3 layer keeps it "
                               "unnormalised. Only norm_before_residual: false heads can be read.")
    if config.norm_before_fc or "input_norm.weight" in tensors:
        raise UnsupportedError(f"{where}: these heads normalise the fused features before fc (norm_before_fc, "
                               "input_norm), which spec's EAGLE-3 heads do not; they cannot be read.")
    if "d2t" not in tensors or "t2d" not in tensors:
        raise CheckpointError(f"{path} has no d2t/t2d vocabulary maps; speculators' EAGLE-3 heads carry both.")
    d2t, t2d = tensors.pop("d2t"), tensors.pop("t2d")
    if config.draft_vocab_size is not None and config.draft_vocab_size != d2t.numel():
        raise CheckpointError(f"{where} says draft_vocab_size={config.draft_vocab_size} but d2t in {path} has "
                              f"{d2t.numel()} entries; the files come from different saves.")
    if config.target_hidden_size is not None and config.target_hidden_size != hidden:
        raise IncompatibleDrafterError(f"{where}: target_hidden_size is {config.target_hidden_size} but the model's "
                                       f"hidden size is {hidden}; these heads were trained for another model.")
    layers = None if config.aux_layer_ids is None else layers_from_engine_ids(list(config.aux_layer_ids), model, where)
    state = {_eagle3_ours(k): v for k, v in tensors.items()}
    return eagle3_from_state(state, d2t, t2d, layers, model, str(path), _eagle3_theirs, depth, candidates)


def export_speculators(drafter, directory: str | os.PathLike, verifier: Optional[str] = None,
                       with_embedding: bool = True) -> Path:
    """Write an :class:`EagleDrafter`'s or :class:`Eagle3Drafter`'s heads as a speculators checkpoint.

    ``verifier``: the base model's name or path for ``speculators_config.verifier.name_or_path`` (default the
    model's own ``_name_or_path``). ``with_embedding``: EAGLE-3 files carry the verifier's embedding as
    speculators saves it (vLLM otherwise shares the target's). ``speculative_tokens`` is the heads' depth.
    """
    model = drafter.model
    _check_llama(model)
    heads = drafter.heads
    base = model.config.to_dict()
    name = verifier or base.get("_name_or_path") or None
    layer_config = {k: v for k, v in base.items()
                    if k not in ("architectures", "_name_or_path", "auto_map", "transformers_version")}
    layer_config.update(num_hidden_layers=1, tie_word_embeddings=False)
    section = {"algorithm": None, "default_proposal_method": "greedy",
               "proposal_methods": [{"proposal_type": "greedy", "speculative_tokens": int(heads.max_depth),
                                     "verifier_accept_k": 1, "accept_tolerance": 0.0}],
               "verifier": {"name_or_path": None if name is None else str(name),
                            "architectures": list(base.get("architectures") or [type(model).__name__])}}
    if isinstance(drafter, Eagle3Drafter):
        ids, fc = engine_layer_ids(heads)
        tensors = {_eagle3_theirs(k): v for k, v in heads.state_dict().items()}
        tensors["fc.weight"] = fc
        tensors.update(vocabulary_maps(heads))
        if with_embedding:
            tensors["embed_tokens.weight"] = model.get_input_embeddings().weight
        section["algorithm"] = "eagle3"
        config = {"speculators_model_type": "eagle3", "architectures": ["Eagle3Speculator"],
                  "transformer_layer_config": layer_config, "draft_vocab_size": int(heads.d2t.numel()),
                  "target_hidden_size": int(heads.hidden), "norm_before_residual": False, "norm_before_fc": False,
                  "eagle_aux_hidden_state_layer_ids": ids, "speculators_config": section}
    elif isinstance(drafter, EagleDrafter):
        layer_class = type(heads.layer).__name__
        tensors = {_eagle_theirs(k): v for k, v in heads.state_dict().items()}
        section["algorithm"] = "eagle"
        config = {"speculators_model_type": "eagle", "architectures": ["EagleSpeculator", layer_class],
                  "transformer_layer_architecture": layer_class, "transformer_layer_config": layer_config,
                  "layernorms": False, "fusion_bias": heads.fc.bias is not None, "speculators_config": section}
    else:
        raise UnsupportedError(f"The speculators format holds EAGLE and EAGLE-3 heads; these are "
                               f"{drafter.drafter_type} heads.")
    with replace_directory(directory, ("config.json", "model.safetensors"), "exported heads directory") as staging:
        write_safetensors(staging / "model.safetensors", tensors)
        (staging / "config.json").write_text(json.dumps(config, indent=2, default=str) + "\n")
    return Path(directory)


def _check_llama(model) -> None:
    # speculators and vLLM build the draft layer as a Llama decoder layer from transformer_layer_config;
    # another architecture's layer (Qwen2's q/k/v biases, say) would load into the wrong module.
    kind = getattr(model.config, "model_type", None)
    if kind != "llama":
        raise UnsupportedError(f"The speculators format builds the draft layer as a Llama decoder layer, but this "
                               f"model is {kind!r}; export these heads in EAGLE's own layout (--to eagle/eagle3).")


# EAGLE-1: speculators' EagleSpeculator names fc "fusion_fc" and its decoder layer "transformer".
def _eagle_ours(name: str) -> str:
    if name.startswith("fusion_fc."):
        return "fc." + name[len("fusion_fc."):]
    return "layer." + name[len("transformer."):] if name.startswith("transformer.") else name


def _eagle_theirs(name: str) -> str:
    if name.startswith("fc."):
        return "fusion_fc." + name[len("fc."):]
    return "transformer." + name[len("layer."):] if name.startswith("layer.") else name


# EAGLE-3: speculators keeps the decoder layer (hidden_norm included) under layers.0.
def _eagle3_ours(name: str) -> str:
    if name == "layers.0.hidden_norm.weight":
        return "hidden_norm.weight"
    return "layer." + name[len("layers.0."):] if name.startswith("layers.0.") else name


def _eagle3_theirs(name: str) -> str:
    if name == "hidden_norm.weight":
        return "layers.0.hidden_norm.weight"
    return "layers.0." + name[len("layer."):] if name.startswith("layer.") else name
