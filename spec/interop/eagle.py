"""EAGLE-1 heads in their published layout, to and from ``EagleDrafter``.

The layout (SafeAILab/EAGLE): ``config.json``, a ``LlamaConfig`` of one layer with a ``bias`` flag for
``fc``; the tensors ``fc.weight`` ``[H, 2H]`` (and ``fc.bias`` ``[H]`` when ``bias``), ``layers.0.self_attn.*``,
``layers.0.mlp.*``, ``layers.0.post_attention_layernorm.weight`` (the layer has no input norm) and,
optionally, ``embed_tokens.weight`` ``[V, H]``, a copy of the base model's embedding; in
``model.safetensors`` or the pickled ``pytorch_model.bin`` (read through the restricted loader only).

Import binds the heads to the model given: every tensor must have the shape that model's layer has, and
an ``embed_tokens.weight`` in the file must equal the model's own embedding (else the heads were trained
for another model). EAGLE-3's layout follows below; the speculators format is not read yet (docs/interop.md).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from spec.drafters import EagleDrafter
from spec.errors import CheckpointError, IncompatibleDrafterError
from spec.interop.tensors import first_file, read_config, read_tensors, write_safetensors
from spec.io.atomic import replace_directory


def _ours(name: str) -> str:
    return "layer." + name[len("layers.0."):] if name.startswith("layers.0.") else name


def _theirs(name: str) -> str:
    return "layers.0." + name[len("layer."):] if name.startswith("layer.") else name


def import_eagle(directory: str | os.PathLike, model, max_depth: int = 5, candidates: str = "top_k") -> EagleDrafter:
    """An :class:`EagleDrafter` for ``model`` from published EAGLE-1 heads; mismatches are refused, naming them."""
    directory = Path(directory)
    path = first_file(directory, ("model.safetensors", "pytorch_model.bin"), "EAGLE weights file")
    tensors = read_tensors(path)
    config = read_config(directory)
    embedding = tensors.pop("embed_tokens.weight", None)
    if embedding is not None and not torch.equal(embedding.to(model.get_input_embeddings().weight),
                                                 model.get_input_embeddings().weight):
        raise IncompatibleDrafterError(f"{path}: its embed_tokens differ from the model's embedding; these EAGLE heads "
                                       "were trained for another model.")
    fc_bias = "fc.bias" in tensors
    if "bias" in config and bool(config["bias"]) != fc_bias:
        raise CheckpointError(f"{directory}/config.json says bias={config['bias']} but {path} "
                              f"{'holds' if fc_bias else 'lacks'} fc.bias; the files come from different saves.")
    drafter = EagleDrafter.from_model(model, max_depth=max_depth, fc_bias=fc_bias, candidates=candidates)
    expected = drafter.heads.state_dict()
    found = {_ours(k): v for k, v in tensors.items()}
    unknown = sorted(set(found) - set(expected))
    missing = sorted(set(expected) - set(found))
    if unknown or missing:
        raise CheckpointError(f"{path} is not EAGLE-1's layout: unexpected {[_theirs(k) for k in unknown][:5]}, "
                              f"missing {[_theirs(k) for k in missing][:5]}.")
    for name, tensor in found.items():
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise IncompatibleDrafterError(
                f"{path}: {_theirs(name)} is {tuple(tensor.shape)} but this model's layer needs "
                f"{tuple(expected[name].shape)}; these EAGLE heads were trained for another model.")
    drafter.heads.load_state_dict({k: v.to(expected[k]) for k, v in found.items()})
    return drafter


def export_eagle(drafter: EagleDrafter, directory: str | os.PathLike) -> Path:
    """Write ``drafter``'s heads in EAGLE-1's layout (``config.json`` + ``model.safetensors``)."""
    config = drafter.model.config.to_dict()
    config.update(num_hidden_layers=1, bias=drafter.heads.fc.bias is not None,
                  architectures=["LlamaForCausalLM"], torch_dtype=str(drafter.heads.fc.weight.dtype).split(".")[-1])
    tensors = {_theirs(k): v for k, v in drafter.heads.state_dict().items()}
    with replace_directory(directory, ("config.json", "model.safetensors"), "exported heads directory") as staging:
        write_safetensors(staging / "model.safetensors", tensors)
        (staging / "config.json").write_text(json.dumps(config, indent=2, default=str) + "\n")
    return Path(directory)


# ---- EAGLE-3 ---------------------------------------------------------------------------------------------------
# SafeAILab's EAGLE-3 layout: fc.weight [H, 3H], midlayer.* (q/k/v read 2H; hidden_norm beside the two layer
# norms), norm.weight, lm_head.weight [K, H], d2t [K] int64 offsets (target id = index + d2t), t2d [V] bool.
_EAGLE3_OURS = {"hidden_norm.weight": "midlayer.hidden_norm.weight"}


def _eagle3_theirs(name: str) -> str:
    if name in _EAGLE3_OURS:
        return _EAGLE3_OURS[name]
    return "midlayer." + name[len("layer."):] if name.startswith("layer.") else name


def import_eagle3(directory: str | os.PathLike, model, max_depth: int = 5, layers=None,
                  candidates: str = "top_k"):
    """An :class:`Eagle3Drafter` for ``model`` from published EAGLE-3 heads.

    ``layers``: the target layers the heads fuse; default the config's ``eagle_aux_hidden_state_layer_ids``,
    else :func:`spec.drafters.eagle3.default_layers`. ``d2t``/``t2d`` must describe one injection of the
    draft vocabulary into the model's; anything else is refused.
    """
    from spec.drafters import Eagle3Drafter
    from spec.drafters.draft_vocab import DraftVocabulary
    from spec.errors import ConfigurationError

    directory = Path(directory)
    path = first_file(directory, ("model.safetensors", "pytorch_model.bin"), "EAGLE-3 weights file")
    tensors = read_tensors(path)
    config = read_config(directory)
    if "d2t" not in tensors or "t2d" not in tensors:
        raise CheckpointError(f"{path} has no d2t/t2d vocabulary maps; it is not EAGLE-3's layout.")
    d2t, t2d = tensors.pop("d2t").to(torch.long), tensors.pop("t2d").to(torch.bool)
    token_ids = torch.arange(d2t.numel()) + d2t
    vocab = model.get_output_embeddings().weight.shape[0]
    if t2d.numel() != vocab:
        raise IncompatibleDrafterError(f"{path}: t2d covers {t2d.numel()} tokens but the model has {vocab}; these "
                                       "EAGLE-3 heads were trained for another model.")
    try:
        draft_vocab = DraftVocabulary(vocab_size=vocab, token_ids=token_ids)
    except ConfigurationError as error:
        raise CheckpointError(f"{path}: d2t is not a valid injection into the model's vocabulary ({error})") from error
    if not torch.equal(draft_vocab.t2d.cpu(), t2d):
        raise CheckpointError(f"{path}: t2d does not mark exactly the tokens d2t maps to; the maps are inconsistent.")
    tensors.pop("embed_tokens.weight", None)
    if layers is None:
        layers = (config.get("eagle_config") or {}).get("eagle_aux_hidden_state_layer_ids")
    drafter = Eagle3Drafter.from_model(model, max_depth=max_depth, draft_vocab=draft_vocab, layers=layers,
                                       candidates=candidates)
    expected = drafter.heads.state_dict()
    theirs = {_eagle3_theirs(k): k for k in expected}
    unknown = sorted(set(tensors) - set(theirs))
    missing = sorted(set(theirs) - set(tensors))
    if unknown or missing:
        raise CheckpointError(f"{path} is not EAGLE-3's layout for this model: unexpected {unknown[:5]}, "
                              f"missing {missing[:5]}.")
    state = {}
    for name, ours in theirs.items():
        if tuple(tensors[name].shape) != tuple(expected[ours].shape):
            raise IncompatibleDrafterError(f"{path}: {name} is {tuple(tensors[name].shape)} but this model needs "
                                           f"{tuple(expected[ours].shape)}; these heads were trained for another model.")
        state[ours] = tensors[name].to(expected[ours])
    drafter.heads.load_state_dict(state)
    return drafter


def export_eagle3(drafter, directory: str | os.PathLike) -> Path:
    """Write an :class:`Eagle3Drafter`'s heads in EAGLE-3's layout (``config.json`` + ``model.safetensors``)."""
    heads = drafter.heads
    tensors = {_eagle3_theirs(k): v for k, v in heads.state_dict().items()}
    token_ids = heads.d2t.to(torch.long).cpu()
    tensors["d2t"] = token_ids - torch.arange(token_ids.numel())
    t2d = torch.zeros(heads.vocab, dtype=torch.bool)
    t2d[token_ids] = True
    tensors["t2d"] = t2d
    config = drafter.model.config.to_dict()
    config.update(num_hidden_layers=1, draft_vocab_size=int(token_ids.numel()), target_hidden_size=heads.hidden,
                  architectures=["LlamaForCausalLMEagle3"],
                  eagle_config={"eagle_aux_hidden_state_layer_ids": list(heads.layers)})
    with replace_directory(directory, ("config.json", "model.safetensors"), "exported heads directory") as staging:
        write_safetensors(staging / "model.safetensors", tensors)
        (staging / "config.json").write_text(json.dumps(config, indent=2, default=str) + "\n")
    return Path(directory)
