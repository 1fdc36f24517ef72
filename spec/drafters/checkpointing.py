"""Save and load draft heads tied to the base model they were trained for.

Every drafter checkpoint's config records the drafter type, its hyperparameters,
the base model's :class:`ModelFingerprint` and the weights' SHA-256; loading onto a
model with another fingerprint, vocabulary or hidden size is refused, and so is a
config whose fields have the wrong types or do not match the weights' shapes.
"""

from __future__ import annotations

import math
import os
from typing import Any, Callable, Optional

import torch

from spec.errors import CheckpointError, IncompatibleDrafterError, SpecError
from spec.io import check_config_fields, load_checkpoint, save_checkpoint
from spec.io.files import is_int, is_real
from spec.models import ModelFingerprint, hidden_size, lm_head, model_placement, output_vocab_size

FORMAT_VERSION = 1


def check_model_dims(model, *, vocab_size: int, hidden: int, what: str) -> None:
    """Refuse heads whose vocabulary or hidden size differs from ``model``'s."""
    model_vocab, model_hidden = output_vocab_size(model), hidden_size(model)
    if vocab_size != model_vocab:
        raise IncompatibleDrafterError(
            f"{what} predict a vocabulary of {vocab_size} tokens but the model's lm_head has {model_vocab}; "
            "use heads trained for this model (or train new ones with `spec train`)."
        )
    if hidden != model_hidden:
        raise IncompatibleDrafterError(
            f"{what} read hidden states of size {hidden} but the model's are {model_hidden}; "
            "use heads trained for this model."
        )


def check_same_placement(model, module: torch.nn.Module, what: str) -> None:
    """Refuse heads whose dtype or device differs from the model's (a silent upcast or a device error later)."""
    weight = lm_head(model).weight
    param = next(module.parameters(), None)
    if param is None:
        return
    if param.dtype != weight.dtype or param.device != weight.device:
        raise IncompatibleDrafterError(
            f"{what} are {param.dtype} on {param.device} but the model is {weight.dtype} on {weight.device}; "
            f"move them with .to(dtype={weight.dtype}, device='{weight.device}') before building the drafter."
        )


def save_drafter(directory: str | os.PathLike, module: torch.nn.Module, drafter_type: str,
                 hyperparameters: dict[str, Any], fingerprint: ModelFingerprint,
                 draft_vocab: Optional[list[int]] = None) -> None:
    """``draft_vocab``: the token ids the heads project onto (most frequent first), when reduced; kept in the
    config as a JSON list, since the weights file holds floating-point tensors only."""
    config: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "drafter_type": drafter_type,
        "hyperparameters": hyperparameters,
        "base_model": fingerprint.to_dict(),
    }
    if draft_vocab is not None:
        config["draft_vocab"] = [int(t) for t in draft_vocab]
    save_checkpoint(directory, module.state_dict(), config)


def read_draft_vocab(config: dict[str, Any], vocab_size: int, where: str) -> Optional[list[int]]:
    """The optional ``draft_vocab`` field: distinct token ids in ``[0, vocab_size)``, or None."""
    ids = config.get("draft_vocab")
    if ids is None:
        return None
    if (not isinstance(ids, list) or not ids or not all(is_int(t) and 0 <= t < vocab_size for t in ids)
            or len(set(ids)) != len(ids)):
        raise CheckpointError(f"{where}: draft_vocab must be a non-empty list of distinct token ids in "
                              f"[0, {vocab_size}); the config is corrupt or hand-edited, save the heads again.")
    return ids


#: What each hyperparameter may hold: ("int", minimum), ("bool",), or ("float", interval) with the
#: interval written as in mathematics ("[0, 1)": 0 allowed, 1 not).
_HYPERPARAMETER_RULES: dict[str, tuple] = {
    "num_heads": ("int", 1),
    "num_layers": ("int", 0),
    "hidden_size": ("int", 1),
    "vocab_size": ("int", 1),
    "num_attention_heads": ("int", 1),
    "max_depth": ("int", 1),
    "exit_layer": ("int", 1),
    "lm_head_bias": ("bool",),
    "prefix_layer": ("bool",),
    "dropout": ("float", "[0, 1)"),
    "rms_norm_eps": ("float", "(0, 1]"),
    "threshold": ("float", "[0, 1]"),
}


def _check_hyperparameters(hyper: dict[str, Any], drafter_type: str, where: str) -> None:
    """Refuse hyperparameters of the wrong JSON type or out of range, naming the field and the rule."""
    for name in sorted(hyper):
        value, rule = hyper[name], _HYPERPARAMETER_RULES.get(name)
        if rule is None:
            continue
        if rule[0] == "int":
            low = rule[1]  # stricter minimums are the heads' own (their builder refuses)
            if not is_int(value) or value < low:
                raise CheckpointError(f"{where}: {name} must be an integer >= {low}, got {value!r}; "
                                      "the config is corrupt or hand-edited, save the heads again.")
        elif rule[0] == "bool":
            if not isinstance(value, bool):
                raise CheckpointError(f"{where}: {name} must be true or false, got {value!r}; "
                                      "the config is corrupt or hand-edited, save the heads again.")
        else:
            interval = rule[1]
            low, high = (float(v) for v in interval[1:-1].split(","))
            inside = (is_real(value) and math.isfinite(value)
                      and (low <= value if interval[0] == "[" else low < value)
                      and (value <= high if interval[-1] == "]" else value < high))
            if not inside:
                raise CheckpointError(f"{where}: {name} must be a number in {interval}, got {value!r}; "
                                      "the config is corrupt or hand-edited, save the heads again.")


def _fingerprint(data: Any, where: str) -> ModelFingerprint:
    fields = {"architecture": str, "vocab_size": int, "hidden_size": int, "num_layers": int, "probe": list}
    if not isinstance(data, dict) or set(data) != set(fields):
        raise CheckpointError(f"{where}: base_model must be an object with fields {sorted(fields)} (a model "
                              "fingerprint); the config is corrupt, save the heads again.")
    for name, kind in fields.items():
        value = data[name]
        ok = is_int(value) and value >= 0 if kind is int else isinstance(value, kind)
        if not ok:
            raise CheckpointError(f"{where}: base_model.{name} must be {'an integer' if kind is int else kind.__name__}, "
                                  f"got {value!r}; the config is corrupt, save the heads again.")
    if not all(is_real(v) and math.isfinite(v) for v in data["probe"]):
        raise CheckpointError(f"{where}: base_model.probe must hold finite numbers; the config is corrupt, "
                              "save the heads again.")
    return ModelFingerprint.from_dict(data)


def _expected_shapes(build: Callable[[dict[str, Any]], torch.nn.Module], hyper: dict[str, Any],
                     where: str) -> dict[str, tuple[int, ...]]:
    """The tensor shapes a module built from ``hyper`` has, computed on the meta device (nothing allocated)."""
    try:
        with torch.device("meta"):
            module = build(hyper)
    except (ValueError, SpecError) as error:  # hyperparameters the heads themselves refuse
        raise CheckpointError(f"{where}: {error} The config is corrupt; save the heads again.") from error
    return {name: tuple(t.shape) for name, t in module.state_dict().items()}


def _check_against_model(hyper: dict[str, Any], drafter_type: str, model, directory, where: str) -> None:
    """Hyperparameters that must agree with the model itself (besides the fingerprint)."""
    if "vocab_size" in hyper or "hidden_size" in hyper:
        check_model_dims(model, vocab_size=hyper.get("vocab_size", output_vocab_size(model)),
                         hidden=hyper.get("hidden_size", hidden_size(model)), what=f"The heads in {directory}")
    if "exit_layer" in hyper:
        layers = getattr(model.config, "num_hidden_layers", None)
        if layers is not None and hyper["exit_layer"] >= layers:
            raise CheckpointError(f"{where}: exit_layer {hyper['exit_layer']} is not below the model's {layers} "
                                  "layers; these heads were saved for a deeper model.")


def load_drafter(directory: str | os.PathLike, model, drafter_type: str, hyperparameter_names: set[str],
                 build: Callable[[dict[str, Any]], torch.nn.Module]
                 ) -> tuple[dict[str, Any], dict[str, torch.Tensor], Optional[list[int]]]:
    """Read a drafter checkpoint for ``model``; returns ``(hyperparameters, state_dict, draft_vocab)``, the last
    the token ids of a reduced draft vocabulary saved with the heads (None when there is none).

    Everything is checked before any tensor or module is built: the config's fields and their types,
    the weights' checksum, that the heads belong to ``model`` (sizes and fingerprint), and that the
    tensors in the safetensors header have exactly the names and shapes the hyperparameters imply (a
    config claiming 150 heads beside weights for 2 is refused without allocating 150). Loaded weights
    must be finite. Tensors come back in the model's dtype and on its device. ``build(hyper)`` makes the
    drafter's module (it is called on the meta device to learn the expected tensor shapes).
    """
    where = f"{directory}/config.json"
    result: dict[str, Any] = {}

    def check(config: dict[str, Any], header) -> None:
        check_config_fields(config, {"format_version", "drafter_type", "hyperparameters", "base_model"},
                            optional={"draft_vocab"}, where=where)
        version = config["format_version"]
        if not is_int(version) or version != FORMAT_VERSION:
            raise CheckpointError(f"{where} has format_version {version!r}; this spec reads {FORMAT_VERSION} "
                                  "(save the heads again with this version).")
        kind = config["drafter_type"]
        if not isinstance(kind, str):
            raise CheckpointError(f"{where}: drafter_type must be a string such as {drafter_type!r}, got {kind!r}.")
        if kind != drafter_type:
            raise CheckpointError(
                f"{directory} holds a {kind!r} drafter, not {drafter_type!r}; load it with that class."
            )
        hyper = config["hyperparameters"]
        if not isinstance(hyper, dict):
            raise CheckpointError(f"{where}: hyperparameters must be a JSON object.")
        check_config_fields(hyper, hyperparameter_names, where=f"{where} hyperparameters")
        _check_hyperparameters(hyper, drafter_type, where)
        saved = _fingerprint(config["base_model"], where)
        check_model_dims(model, vocab_size=saved.vocab_size, hidden=saved.hidden_size, what=f"The heads in {directory}")
        problem = saved.mismatch(ModelFingerprint.of(model))
        if problem is not None:
            raise IncompatibleDrafterError(
                f"The heads in {directory} were trained for another model ({saved.architecture}): {problem}. "
                "Use heads trained for this exact model, or train new ones."
            )
        _check_against_model(hyper, drafter_type, model, directory, where)
        found = {name: shape for name, (_, shape) in header.items()}
        _refuse_mismatch(_expected_shapes(build, hyper, where), found, directory)
        result["hyper"] = hyper
        result["draft_vocab"] = read_draft_vocab(config, saved.vocab_size, where)  # refused before any tensor is read

    _, tensors = load_checkpoint(directory, check)
    return result["hyper"], {k: v.to(**model_placement(model)) for k, v in tensors.items()}, result["draft_vocab"]


def _refuse_mismatch(expected: dict[str, tuple[int, ...]], found: dict[str, tuple[int, ...]], directory) -> None:
    missing = sorted(expected.keys() - found.keys())
    unexpected = sorted(found.keys() - expected.keys())
    wrong = sorted(k for k in expected.keys() & found.keys() if tuple(expected[k]) != tuple(found[k]))
    if missing or unexpected or wrong:
        raise CheckpointError(
            f"{directory}/model.safetensors does not match its config: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}, wrong shape {wrong[:5]}. The config and weights come from different "
            "saves; save the heads again."
        )


def load_state_strict(module: torch.nn.Module, state: dict[str, torch.Tensor], directory) -> None:
    """``load_state_dict`` that reports missing, unexpected or misshapen tensors as a CheckpointError."""
    _refuse_mismatch({k: tuple(v.shape) for k, v in module.state_dict().items()},
                     {k: tuple(v.shape) for k, v in state.items()}, directory)
    module.load_state_dict(state)
