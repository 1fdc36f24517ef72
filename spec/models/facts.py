"""Read a causal LM's vocabulary, hidden size, context and dtype the same way in every stage."""

from __future__ import annotations

import functools
import inspect

import torch

from spec.errors import UnsupportedError


def lm_head(model) -> torch.nn.Module:
    """The model's output embedding (lm_head); every stage reads it through here."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None or not hasattr(head, "weight"):
        raise UnsupportedError(
            f"{type(model).__name__} has no output embedding (lm_head); spec needs a causal LM with one."
        )
    return head


def output_vocab_size(model) -> int:
    """Rows of the lm_head: the size of the logits (may exceed the tokenizer's vocabulary)."""
    return lm_head(model).weight.shape[0]


def hidden_size(model) -> int:
    """Width of the last hidden state, i.e. the lm_head's input size."""
    return lm_head(model).weight.shape[1]


def context_length(model) -> int:
    """The most positions the model accepts (``max_position_embeddings``, or ``n_positions`` for GPT-2)."""
    config = model.config
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    raise UnsupportedError(
        f"Cannot tell the context length of {type(model).__name__}: its config has no max_position_embeddings; "
        "set config.max_position_embeddings."
    )


def model_dtype(model) -> torch.dtype:
    return lm_head(model).weight.dtype


def model_device(model) -> torch.device:
    """Where the logits come out: the lm_head's device (the last stage of a model split across devices)."""
    return lm_head(model).weight.device


def model_placement(model) -> dict:
    """``{"device": ..., "dtype": ...}`` of the lm_head, for ``module.to(**model_placement(model))``."""
    weight = lm_head(model).weight
    return {"device": weight.device, "dtype": weight.dtype}


@functools.lru_cache(maxsize=None)
def _cache_keyword(forward) -> str:
    return "cache" if "cache" in inspect.signature(forward).parameters else "past_key_values"


def cache_kwargs(module, cache) -> dict:
    """``{"cache": cache}`` or ``{"past_key_values": cache}``, whichever ``module.forward`` takes.

    transformers 5.x renamed ``past_key_values`` to ``cache`` (the old name warns, and goes in 5.40).
    """
    return {_cache_keyword(type(module).forward): cache}
