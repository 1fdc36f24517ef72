"""EAGLE-1 heads in their published layout, to and from ``EagleDrafter``.

The layout (SafeAILab/EAGLE): ``config.json``, a ``LlamaConfig`` of one layer with a ``bias`` flag for
``fc``; the tensors ``fc.weight`` ``[H, 2H]`` (and ``fc.bias`` ``[H]`` when ``bias``), ``layers.0.self_attn.*``,
``layers.0.mlp.*``, ``layers.0.post_attention_layernorm.weight`` (the layer has no input norm) and,
optionally, ``embed_tokens.weight`` ``[V, H]``, a copy of the base model's embedding; in
``model.safetensors`` or the pickled ``pytorch_model.bin`` (read through the restricted loader only).

Import binds the heads to the model given: every tensor must have the shape that model's layer has, and
an ``embed_tokens.weight`` in the file must equal the model's own embedding (else the heads were trained
for another model). EAGLE-3's layout follows below; the speculators format is in ``spec.interop.speculators``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from spec.drafters import EagleDrafter
from spec.errors import CheckpointError, ConfigurationError, IncompatibleDrafterError
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
    check_embedding(tensors, "embed_tokens.weight", model, str(path))
    fc_bias = "fc.bias" in tensors
    if "bias" in config and bool(config["bias"]) != fc_bias:
        raise CheckpointError(f"{directory}/config.json says bias={config['bias']} but {path} "
                              f"{'holds' if fc_bias else 'lacks'} fc.bias; the files come from different saves.")
    return eagle_from_state({_ours(k): v for k, v in tensors.items()}, model, str(path), _theirs, max_depth,
                            candidates)


def eagle_from_state(state: dict[str, torch.Tensor], model, where: str, describe, max_depth: int = 5,
                     candidates: str = "top_k") -> EagleDrafter:
    """An :class:`EagleDrafter` for ``model`` from tensors already renamed to spec's names; ``describe`` turns
    one of spec's names back into the file's for messages. Shared by the SafeAILab and speculators layouts."""
    drafter = EagleDrafter.from_model(model, max_depth=max_depth, fc_bias="fc.bias" in state, candidates=candidates)
    return load_heads(drafter, state, where, describe, "EAGLE-1's layout")


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


#: How a config's aux layer ids count. "boundary": id k is the stream after k layers, entering layer k (vLLM,
#: speculators, EAGLE-3's own default tuple, spec's layers:k). "output": id k is decoder layer k's output, i.e.
#: the stream after k + 1 layers (SGLang adds 1 to explicit ids, so SpecForge-trained configs write them so).
ID_CONVENTIONS = ("boundary", "output")


def _check_convention(convention: str) -> None:
    if convention not in ID_CONVENTIONS:
        raise ConfigurationError(f"The aux layer id convention must be one of {', '.join(ID_CONVENTIONS)}, got "
                                 f"{convention!r}.")


def layers_from_engine_ids(ids, model, where: str, convention: str = "boundary") -> tuple[int, ...]:
    """EAGLE-3's ``eagle_aux_hidden_state_layer_ids`` (as SafeAILab's code, vLLM, SGLang and speculators use them)
    as spec's layer counts, in the order the fused features are concatenated.

    The engines and spec count the same thing: id ``k`` is the residual stream entering decoder layer ``k``
    (0: the embeddings), which is transformers' ``hidden_states[k]`` and spec's ``layers:k``; so ids carry over
    unchanged. What differs is the order: the engines append a layer's state as their layer loop passes it,
    so ``fc``'s column blocks follow the ids in ascending order whatever order the list is written in, while
    spec concatenates in its list's order; the ids are therefore sorted. vLLM and speculators also accept id
    ``L`` (the last layer's output before the final norm), which spec's verifiers do not report: refused.
    ``convention="output"`` reads ids written for SGLang, which count layer outputs (``k`` -> ``k + 1``).
    """
    from spec.errors import UnsupportedError
    from spec.runtime.features import num_layers

    _check_convention(convention)
    if not isinstance(ids, (list, tuple)) or not ids or not all(
            isinstance(k, int) and not isinstance(k, bool) for k in ids):
        raise CheckpointError(f"{where}: eagle_aux_hidden_state_layer_ids must be a non-empty list of whole "
                              f"numbers, got {ids!r}.")
    if len(set(ids)) != len(ids):
        raise CheckpointError(f"{where}: eagle_aux_hidden_state_layer_ids {list(ids)} repeats a layer; the engines "
                              "capture each layer once, so the file and its fc disagree.")
    if convention == "output":
        ids = [k + 1 for k in ids]
    count = num_layers(model)
    if count in ids:
        raise UnsupportedError(
            f"{where}: eagle_aux_hidden_state_layer_ids {list(ids)} include {count}, the output of the model's last "
            f"layer before its final norm; spec's verifiers report the streams entering layers 0 .. {count - 1} "
            "only, so these heads cannot be fed. Use heads trained on lower layers.")
    bad = [k for k in ids if not 0 <= k < count]
    if bad:
        raise IncompatibleDrafterError(f"{where}: eagle_aux_hidden_state_layer_ids {list(ids)} name layers {bad} "
                                       f"but the model has {count}; these heads were trained for another model.")
    return tuple(sorted(ids))


def engine_layer_ids(heads, where: str = "This EAGLE-3 drafter",
                     convention: str = "boundary") -> tuple[list[int], torch.Tensor]:
    """``(ids, fc.weight)`` as the engines read them: the layers ascending and fc's column blocks permuted to
    match (the inverse of :func:`layers_from_engine_ids`). A layer fused twice cannot be written: the engines
    capture each layer once, so their fc would be narrower than the file's."""
    from spec.errors import UnsupportedError

    layers = list(heads.layers)
    if len(set(layers)) != len(layers):
        raise UnsupportedError(
            f"{where} fuses layers {layers}, one of them twice; EAGLE-3's engines capture each layer once and "
            "could not feed it. Train heads on distinct layers (a model of at least 3 layers).")
    _check_convention(convention)
    if convention == "output" and 0 in layers:
        raise UnsupportedError(f"{where} reads the embeddings (layer count 0), which is no layer's output; write "
                               "its ids in the boundary convention.")
    order = sorted(range(len(layers)), key=layers.__getitem__)
    hidden = heads.hidden
    weight = heads.fc.weight.detach()
    blocks = [weight[:, j * hidden:(j + 1) * hidden] for j in order]
    shift = 1 if convention == "output" else 0
    return [layers[j] - shift for j in order], torch.cat(blocks, dim=1)


def eagle3_from_state(state: dict[str, torch.Tensor], d2t: torch.Tensor, t2d: torch.Tensor, layers, model,
                      where: str, describe, max_depth: int = 5, candidates: str = "top_k"):
    """An :class:`Eagle3Drafter` for ``model`` from tensors already renamed to spec's names (``state``) and the
    vocabulary maps; ``describe`` turns one of spec's names back into the file's for messages. Shared by the
    SafeAILab and speculators layouts, which differ in names only."""
    from spec.drafters import Eagle3Drafter
    from spec.drafters.draft_vocab import DraftVocabulary

    d2t, t2d = d2t.to(torch.long), t2d.to(torch.bool)
    vocab = model.get_output_embeddings().weight.shape[0]
    if t2d.numel() != vocab:
        raise IncompatibleDrafterError(f"{where}: t2d covers {t2d.numel()} tokens but the model has {vocab}; these "
                                       "EAGLE-3 heads were trained for another model.")
    try:
        draft_vocab = DraftVocabulary(vocab_size=vocab, token_ids=torch.arange(d2t.numel()) + d2t)
    except ConfigurationError as error:
        raise CheckpointError(f"{where}: d2t is not a valid injection into the model's vocabulary ({error})") from error
    if not torch.equal(draft_vocab.t2d.cpu(), t2d):
        raise CheckpointError(f"{where}: t2d does not mark exactly the tokens d2t maps to; the maps are inconsistent.")
    drafter = Eagle3Drafter.from_model(model, max_depth=max_depth, draft_vocab=draft_vocab, layers=layers,
                                       candidates=candidates)
    return load_heads(drafter, state, where, describe, "EAGLE-3's layout for this model")


def load_heads(drafter, state: dict[str, torch.Tensor], where: str, describe, layout: str):
    """Load ``state`` (spec's names) into ``drafter.heads``: exactly the expected tensors (else ``CheckpointError``
    naming ``layout``), each of the shape this model needs (else ``IncompatibleDrafterError``)."""
    expected = drafter.heads.state_dict()
    unknown = sorted(set(state) - set(expected))
    missing = sorted(set(expected) - set(state))
    if unknown or missing:
        raise CheckpointError(f"{where} is not {layout}: unexpected {[describe(k) for k in unknown][:5]}, "
                              f"missing {[describe(k) for k in missing][:5]}.")
    for name, tensor in state.items():
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise IncompatibleDrafterError(f"{where}: {describe(name)} is {tuple(tensor.shape)} but this model needs "
                                           f"{tuple(expected[name].shape)}; these heads were trained for another model.")
    drafter.heads.load_state_dict({k: v.to(expected[k]) for k, v in state.items()})
    return drafter


def check_embedding(tensors: dict[str, torch.Tensor], name: str, model, where: str) -> None:
    """Drop ``tensors[name]`` (a published copy of the base model's embedding), refusing one that differs."""
    embedding = tensors.pop(name, None)
    weight = model.get_input_embeddings().weight
    if embedding is not None and (embedding.shape != weight.shape or not torch.equal(embedding.to(weight), weight)):
        raise IncompatibleDrafterError(f"{where}: its {name.split('.')[0]} differ from the model's embedding; these "
                                       "heads were trained for another model.")


def import_eagle3(directory: str | os.PathLike, model, max_depth: int = 5, layers=None,
                  candidates: str = "top_k", id_convention: str = "boundary"):
    """An :class:`Eagle3Drafter` for ``model`` from published EAGLE-3 heads.

    ``layers``: the target layers the heads fuse, in spec's convention and fc's column order; default the
    config's ``eagle_aux_hidden_state_layer_ids`` (top level, as vLLM reads it, or under ``eagle_config``, as
    EAGLE-3's own configs put it) through :func:`layers_from_engine_ids`, else
    :func:`spec.drafters.eagle3.default_layers`, which is the engines' default ``(2, L // 2, L - 3)`` wherever
    that names three distinct layers. ``id_convention``: how the config counts (:data:`ID_CONVENTIONS`; "output"
    for heads trained with SGLang/SpecForge, whose ids count layer outputs). ``d2t``/``t2d`` must describe one
    injection of the draft vocabulary into the model's; anything else is refused.
    """
    directory = Path(directory)
    path = first_file(directory, ("model.safetensors", "pytorch_model.bin"), "EAGLE-3 weights file")
    tensors = read_tensors(path)
    config = read_config(directory)
    if "d2t" not in tensors or "t2d" not in tensors:
        raise CheckpointError(f"{path} has no d2t/t2d vocabulary maps; it is not EAGLE-3's layout.")
    d2t, t2d = tensors.pop("d2t"), tensors.pop("t2d")
    check_embedding(tensors, "embed_tokens.weight", model, str(path))
    if layers is None:
        nested = config.get("eagle_config") if isinstance(config.get("eagle_config"), dict) else {}
        ids = config.get("eagle_aux_hidden_state_layer_ids") or nested.get("eagle_aux_hidden_state_layer_ids")
        if ids is not None:
            layers = layers_from_engine_ids(ids, model, f"{directory}/config.json", id_convention)
    ours = {}
    for name, tensor in tensors.items():
        if name == "midlayer.hidden_norm.weight":
            ours["hidden_norm.weight"] = tensor
        elif name.startswith("midlayer."):
            ours["layer." + name[len("midlayer."):]] = tensor
        else:
            ours[name] = tensor
    return eagle3_from_state(ours, d2t, t2d, layers, model, str(path), _eagle3_theirs, max_depth, candidates)


def export_eagle3(drafter, directory: str | os.PathLike, id_convention: str = "boundary") -> Path:
    """Write an :class:`Eagle3Drafter`'s heads in EAGLE-3's layout (``config.json`` + ``model.safetensors``).

    The layers go out ascending with fc's columns permuted to match (:func:`engine_layer_ids`), and in both
    places engines look for them: top-level ``eagle_aux_hidden_state_layer_ids`` (vLLM) and ``eagle_config``;
    ``id_convention="output"`` writes them for SGLang (each one less, as it adds 1 back).
    """
    heads = drafter.heads
    ids, fc = engine_layer_ids(heads, convention=id_convention)
    tensors = {_eagle3_theirs(k): v for k, v in heads.state_dict().items()}
    tensors["fc.weight"] = fc
    tensors.update(vocabulary_maps(heads))
    config = drafter.model.config.to_dict()
    config.update(num_hidden_layers=1, draft_vocab_size=int(heads.d2t.numel()), target_hidden_size=heads.hidden,
                  architectures=["LlamaForCausalLMEagle3"], eagle_aux_hidden_state_layer_ids=ids,
                  eagle_config={"eagle_aux_hidden_state_layer_ids": ids})
    with replace_directory(directory, ("config.json", "model.safetensors"), "exported heads directory") as staging:
        write_safetensors(staging / "model.safetensors", tensors)
        (staging / "config.json").write_text(json.dumps(config, indent=2, default=str) + "\n")
    return Path(directory)


def vocabulary_maps(heads) -> dict[str, torch.Tensor]:
    """EAGLE-3's ``d2t`` (int64 offsets: target id = index + d2t) and ``t2d`` (bool membership) for ``heads``."""
    token_ids = heads.d2t.to(torch.long).cpu()
    t2d = torch.zeros(heads.vocab, dtype=torch.bool)
    t2d[token_ids] = True
    return {"d2t": token_ids - torch.arange(token_ids.numel()), "t2d": t2d}
