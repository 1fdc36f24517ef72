"""Save and load draft heads tied to the base model they were trained for.

Every drafter checkpoint's config records the drafter type, its hyperparameters,
and the base model's :class:`ModelFingerprint`; loading onto a model with another
fingerprint, vocabulary or hidden size is refused.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from spec.errors import CheckpointError, IncompatibleDrafterError
from spec.io import check_config_fields, load_checkpoint, save_checkpoint
from spec.models import ModelFingerprint, hidden_size, output_vocab_size

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
    weight = model.get_output_embeddings().weight
    param = next(module.parameters(), None)
    if param is None:
        return
    if param.dtype != weight.dtype or param.device != weight.device:
        raise IncompatibleDrafterError(
            f"{what} are {param.dtype} on {param.device} but the model is {weight.dtype} on {weight.device}; "
            f"move them with .to(dtype={weight.dtype}, device='{weight.device}') before building the drafter."
        )


def save_drafter(directory: str | os.PathLike, module: torch.nn.Module, drafter_type: str,
                 hyperparameters: dict[str, Any], fingerprint: ModelFingerprint) -> None:
    config = {
        "format_version": FORMAT_VERSION,
        "drafter_type": drafter_type,
        "hyperparameters": hyperparameters,
        "base_model": fingerprint.to_dict(),
    }
    save_checkpoint(directory, module.state_dict(), config)


def load_drafter(directory: str | os.PathLike, model, drafter_type: str,
                 hyperparameter_names: set[str]) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Read a drafter checkpoint for ``model``; returns ``(hyperparameters, state_dict)``.

    Tensors come back in the model's dtype and on its device.
    """
    config, tensors = load_checkpoint(directory)
    where = f"{directory}/config.json"
    check_config_fields(config, {"format_version", "drafter_type", "hyperparameters", "base_model"}, where=where)
    if config["format_version"] != FORMAT_VERSION:
        raise CheckpointError(f"{where} has format_version {config['format_version']}; this spec reads {FORMAT_VERSION}.")
    if config["drafter_type"] != drafter_type:
        raise CheckpointError(
            f"{directory} holds a {config['drafter_type']!r} drafter, not {drafter_type!r}; load it with that class."
        )
    hyper = config["hyperparameters"]
    if not isinstance(hyper, dict):
        raise CheckpointError(f"{where}: hyperparameters must be a JSON object.")
    check_config_fields(hyper, hyperparameter_names, where=f"{where} hyperparameters")
    try:
        saved = ModelFingerprint.from_dict(config["base_model"])
    except TypeError as exc:
        raise CheckpointError(f"{where}: base_model is not a valid model fingerprint ({exc}).") from exc
    check_model_dims(model, vocab_size=saved.vocab_size, hidden=saved.hidden_size, what=f"The heads in {directory}")
    problem = saved.mismatch(ModelFingerprint.of(model))
    if problem is not None:
        raise IncompatibleDrafterError(
            f"The heads in {directory} were trained for another model ({saved.architecture}): {problem}. "
            "Use heads trained for this exact model, or train new ones."
        )
    weight = model.get_output_embeddings().weight
    return hyper, {k: v.to(device=weight.device, dtype=weight.dtype) for k, v in tensors.items()}


def load_state_strict(module: torch.nn.Module, state: dict[str, torch.Tensor], directory) -> None:
    """``load_state_dict`` that reports missing, unexpected or misshapen tensors as a CheckpointError."""
    expected = module.state_dict()
    missing = sorted(expected.keys() - state.keys())
    unexpected = sorted(state.keys() - expected.keys())
    wrong = sorted(k for k in expected.keys() & state.keys() if expected[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        raise CheckpointError(
            f"{directory}/model.safetensors does not match its config: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}, wrong shape {wrong[:5]}."
        )
    module.load_state_dict(state)
