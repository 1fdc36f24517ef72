"""Which models a tree verifier can reproduce exactly: the one place that rule lives.

Verifying a tree in one forward pass puts a node at position ``cached + depth`` but stores it
in cache row ``cached + index`` (siblings share a position, rows are breadth-first), and runs
all of the tree's positions in one pass. That equals the model's own one-token-at-a-time
decoding only if the model's attention depends on a token's position, never on its row or
on how long the forward pass is. Three kinds of model break that, and every verifier refuses
them at construction (``check_supported``) rather than return a silently different output:

* **length-dependent rotary scaling**: transformers' rotary type ``longrope`` (Phi-3 128k-style
  configs) rotates every position of a pass with its *long* factors once the pass reaches past
  ``original_max_position_embeddings``, with its short factors otherwise. A tree's deepest node
  reaches that length before the tokens on its path do in one-token decoding, so the shallower
  nodes get the wrong angles. (``dynamic`` NTK scaling rescales only past
  ``max_position_embeddings``, never within the context, so it is exact; a ``longrope`` config
  whose original length covers the whole context never switches either.)
* **row-indexed local windows** (and causal masks): GPT-Neo slices its causal and local-window
  masks from a buffer by cache row, not by position, so tree nodes stored past their depth see
  the wrong keys, and a tree near the end of the context, whose rows run past it, overruns the
  buffer (even with global layers only).
* **ALiBi** (Bloom, MPT, Falcon with ``alibi=True``): the bias of a key is built from its row
  (counted along a 2D attention mask, or over the cache), which cannot express a tree's
  positions; transformers rejects the tree's 4D mask outright where it needs the 2D one.

``SUPPORTED_ARCHITECTURES`` is the one list of model types whose decoder layers spec runs itself
(the fast verifier, self-drafting, drafters' context layers); ``spec.runtime.layers.unsupported_reason``
starts from the rule above and adds the layer runner's own limits.
"""

from __future__ import annotations

from typing import Iterator, Optional

from spec.errors import UnsupportedError

#: ``config.model_type`` values whose decoder layers spec builds and runs layer by layer.
SUPPORTED_ARCHITECTURES = ("llama", "qwen2", "mistral")
ALIBI_MODEL_TYPES = ("bloom", "mpt")  # always ALiBi; Falcon uses it when config.alibi is set
ROW_INDEXED_MASK_MODEL_TYPES = ("gpt_neo",)
NO_SPECULATION = "decode it without speculation (transformers' model.generate gives the model's own output)"


def _rope_settings(model) -> Iterator[tuple[str, dict]]:
    """Every (rotary type, its parameters) the model's config or rotary modules use."""
    config = model.config
    params = getattr(config, "rope_parameters", None) or {}
    entries = [params] if "rope_type" in params else [p for p in params.values() if isinstance(p, dict)]
    for entry in entries:
        if isinstance(entry.get("rope_type"), str):
            yield entry["rope_type"], entry
    # The modules too: they are what runs (and a rotary module may have been swapped or changed).
    for module in model.modules():
        kind = getattr(module, "rope_type", None)
        for name in (kind.values() if isinstance(kind, dict) else [kind]):
            if isinstance(name, str):
                yield name, params if "rope_type" in params else {}


def _length_dependent_rope(model) -> Optional[str]:
    config = model.config
    context = getattr(config, "max_position_embeddings", None)
    for kind, params in _rope_settings(model):
        if kind != "longrope":
            continue
        original = params.get("original_max_position_embeddings") or getattr(
            config, "original_max_position_embeddings", None)
        if original is None or context is None or original < context:
            reach = f"original_max_position_embeddings ({original})" if original else "its original length"
            return (f"length-dependent rotary scaling: rotary type 'longrope' switches every position of a forward "
                    f"pass to its long factors once the pass reaches past {reach}, which a tree's deepest nodes do "
                    "while its shallower ones, decoded one at a time, would still get the short factors, so "
                    f"verification would differ from the model's own decoding (its context is {context}); "
                    f"{NO_SPECULATION}, or use a rotary type whose angles depend on the position only (default, "
                    "linear, llama3, yarn)")
    return None


def _row_indexed_windows(model) -> Optional[str]:
    config = model.config
    if getattr(config, "model_type", None) not in ROW_INDEXED_MASK_MODEL_TYPES:
        return None
    layers = list(getattr(config, "attention_layers", None) or ())
    window = getattr(config, "window_size", None)
    overrun = "a tree near the end of the context, whose rows run past it, overruns the mask buffer"
    if "local" in layers:
        return (f"row-indexed local windows: {config.model_type} slices its local-window (window_size={window}) and "
                "causal attention masks from a buffer by cache row, not by position, so tree nodes (stored in rows "
                f"past their depth) would see the wrong keys, and {overrun}; {NO_SPECULATION}")
    return (f"row-indexed causal masks: {config.model_type} slices its causal attention masks from a buffer by cache "
            f"row, not by position, so {overrun} (transformers raises mid-forward); {NO_SPECULATION}")


def _alibi(model) -> Optional[str]:
    config = model.config
    model_type = getattr(config, "model_type", None)
    attn_config = getattr(config, "attn_config", None)
    if not (model_type in ALIBI_MODEL_TYPES or getattr(config, "alibi", False) is True
            or getattr(attn_config, "alibi", False) is True):
        return None
    return (f"ALiBi: {model_type} biases each key by its cache row (counted along a 2D attention mask, or over the "
            "cache), not by a position the verifier can set, so a tree's nodes (siblings share a position, not a row) "
            "would get the wrong biases (or transformers rejects the tree's 4D mask); "
            f"{NO_SPECULATION}, or speculate on a model with rotary or learned position embeddings")


def unsupported_reason(model) -> Optional[str]:
    """Why no tree verifier can reproduce ``model``'s own decoding exactly, or None when they can.

    The reason names the feature (ALiBi, row-indexed local windows, length-dependent rotary
    scaling), why it breaks tree verification, and what to do instead.
    """
    if getattr(model, "config", None) is None:
        return None
    for check in (_alibi, _row_indexed_windows, _length_dependent_rope):
        reason = check(model)
        if reason is not None:
            return reason
    return None


def check_supported(model) -> None:
    """Raise ``UnsupportedError`` (at a verifier's construction) when :func:`unsupported_reason` gives one."""
    reason = unsupported_reason(model)
    if reason is not None:
        raise UnsupportedError(f"No spec verifier can verify trees on {type(model).__name__} exactly: {reason}.")
