"""The forward pass of a Llama-family model over a static KV cache, using the model's own modules.

Llama, Qwen2 and Mistral share one decoder layer: RMSNorm, attention with rotary
embeddings and grouped KV heads, RMSNorm, gated MLP, each with a residual. This
runs that layer from the model's own submodules (so weights are shared, not copied,
and norms, MLP and projections are exactly the model's), but writes keys and values
straight into a :class:`StaticKVCache` and takes its attention mask and kernel as
arguments. Everything a step needs is a tensor argument, so one step can be compiled.

Rotary embeddings are looked up in a table computed once by the model's own rotary
module: each position's angles are computed independently, so the table's rows are
bit-identical to what the model computes on the fly.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch

from spec.errors import UnsupportedError
from spec.models import context_length, model_dtype
from spec.runtime import support
from spec.runtime.masks import shared_window
from spec.runtime.static_cache import StaticKVCache

# Rotary variants the fast path's precomputed table reproduces: angles that depend only on the position.
# (Which models no verifier can run exactly, e.g. 'longrope' past its original length, is support.py's rule.)
POSITION_ONLY_ROPE = ("default", "linear", "llama3", "yarn")


def unsupported_reason(model) -> Optional[str]:
    """Why its layers cannot run here one by one, or None when they can (no verifier can: ``support.unsupported_reason``)."""
    shared = support.unsupported_reason(model)
    if shared is not None:
        return shared
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in support.SUPPORTED_ARCHITECTURES:
        return f"model type {model_type!r} is not one of {', '.join(support.SUPPORTED_ARCHITECTURES)}"
    backbone = getattr(model, "model", None)
    needed = ("embed_tokens", "layers", "norm", "rotary_emb")
    if backbone is None or not all(hasattr(backbone, name) for name in needed) or not hasattr(model, "lm_head"):
        return f"{type(model).__name__} does not have the usual model.{{{', '.join(needed)}}} and lm_head modules"
    devices = {str(d) for d in (getattr(model, "hf_device_map", None) or {}).values()}
    devices |= {str(p.device) for p in model.parameters()}
    if len(devices) > 1 or "meta" in devices:
        return f"the model is split across devices or offloaded ({', '.join(sorted(devices))})"
    rope = getattr(backbone.rotary_emb, "rope_type", "default")
    if rope not in POSITION_ONLY_ROPE:
        return f"rotary embeddings of type {rope!r} depend on the sequence length"
    try:
        shared_window(config)
    except UnsupportedError as error:
        return str(error)
    for layer in backbone.layers:
        attention = getattr(layer, "self_attn", None)
        if not all(hasattr(attention, name) for name in ("q_proj", "k_proj", "v_proj", "o_proj", "head_dim")):
            return f"decoder layer {type(layer).__name__} has no standard q/k/v/o projections"
    return None


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding of ``x`` ``[1, heads, n, d]`` with ``cos``/``sin`` ``[1, 1, n, d]`` (rotate-half layout)."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


# attention(q [1, heads, n, d], k, v [1, kv_heads, attend, d], mask, scale, gqa) -> [1, heads, n, d].
# ``gqa`` (kv_heads < heads) comes from the config, not the tensors' shapes: a compiled step shared by models of
# other head counts sees symbolic head dims, and SDPA's enable_gqa takes a Python bool only.
AttentionKernel = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, object, float, bool], torch.Tensor]


class LlamaFamilyForward:
    """Runs ``model`` over new tokens on top of a static cache; see the module docstring."""

    def __init__(self, model, user: str = "The fast verifier",
                 instead: str = "Use TreeAttentionVerifier (make_verifier picks it automatically).") -> None:
        support.check_supported(model)  # refusals no verifier can avoid, with their own advice
        reason = unsupported_reason(model)
        if reason is not None:
            raise UnsupportedError(f"{user} cannot run this model: {reason}. {instead}")
        backbone = model.model
        config = model.config
        self.embed = backbone.embed_tokens
        self.layers = list(backbone.layers)
        self.norm = backbone.norm
        self.lm_head = model.lm_head
        self.window = shared_window(config)
        self.max_length = context_length(model)
        attention = self.layers[0].self_attn
        self.head_dim = attention.head_dim
        self.scale = float(getattr(attention, "scaling", self.head_dim ** -0.5))
        self.kv_heads = config.num_key_value_heads
        self.gqa = bool(config.num_attention_heads != config.num_key_value_heads)
        self.dtype = model_dtype(model)
        self.device = self.embed.weight.device
        positions = torch.arange(self.max_length, device=self.device)[None]
        probe = torch.zeros(1, dtype=self.dtype, device=self.device)
        with torch.no_grad():
            cos, sin = backbone.rotary_emb(probe, positions)
        self.cos, self.sin = cos[0], sin[0]  # [max_length, head_dim]

    def new_cache(self, rows: int) -> StaticKVCache:
        return StaticKVCache(len(self.layers), self.kv_heads, self.head_dim, rows, self.dtype, self.device)

    def __call__(self, tokens: torch.Tensor, positions: torch.Tensor, rows: torch.Tensor, keys: list[torch.Tensor],
                 values: list[torch.Tensor], attend: int, mask,
                 attention: AttentionKernel, capture: tuple[int, ...] = (),
                 logits: bool | str = True) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Run ``tokens`` ``[n]`` at ``positions`` ``[n]``, writing their keys and values at cache ``rows`` ``[n]``.

        ``keys``, ``values``: the cache's per-layer ``[kv_heads, rows, d]`` tensors, updated in place;
        attention reads their first ``attend`` rows under ``mask``. Returns final hidden states ``[n, H]``
        (after the last norm, as transformers reports them) and logits ``[n, V]``.

        ``capture``: layer counts ``k`` (each below the layer count); when given, the first result is
        instead the residual streams after the first ``k`` layers, concatenated in that order
        ``[n, len(capture) * H]`` (``"layers:<a>,<b>,.."`` features). The layers then run in segments
        between the captured counts; with nothing to capture the loop is the plain one.

        ``logits=False``: skip the lm_head and return None for the logits (a prefill discards them, and for a
        long prompt they are the largest tensor of the pass: prompt length x vocabulary); ``logits="last"``: the
        last token's only ``[1, V]`` (a prefill that draws the first new token).
        """
        if logits == "last":
            head = lambda hidden: self.lm_head(hidden[-1:])  # noqa: E731
        else:
            head = self.lm_head if logits else (lambda hidden: None)
        x = self.embed(tokens)[None]
        if not capture:
            x = self.run_layers(x, range(len(self.layers)), positions, rows, keys, values, attend, mask, attention)
            hidden = self.norm(x)[0]
            return hidden, head(hidden)
        captured: dict[int, torch.Tensor] = {}
        done = 0
        for k in sorted(set(capture)):
            x = self.run_layers(x, range(done, k), positions, rows, keys, values, attend, mask, attention)
            captured[k], done = x[0], k
        x = self.run_layers(x, range(done, len(self.layers)), positions, rows, keys, values, attend, mask, attention)
        return torch.cat([captured[k] for k in capture], dim=-1), head(self.norm(x)[0])

    def run_layers(self, x: torch.Tensor, layers: range, positions: torch.Tensor, rows: torch.Tensor,
                   keys: list[torch.Tensor], values: list[torch.Tensor], attend: int, mask,
                   attention: AttentionKernel) -> torch.Tensor:
        """Residual stream ``x`` ``[1, n, H]`` through decoder ``layers`` (a self-drafter runs them in two parts)."""
        n = x.shape[1]
        cos = self.cos[positions][None, None].to(x.dtype)
        sin = self.sin[positions][None, None].to(x.dtype)
        for index in layers:
            layer = self.layers[index]
            attn = layer.self_attn
            h = layer.input_layernorm(x)
            q = attn.q_proj(h).view(1, n, -1, self.head_dim).transpose(1, 2)
            k = attn.k_proj(h).view(1, n, -1, self.head_dim).transpose(1, 2)
            v = attn.v_proj(h).view(1, n, -1, self.head_dim).transpose(1, 2)
            q, k = rotate(q, cos, sin), rotate(k, cos, sin)
            keys[index].index_copy_(1, rows, k[0])
            values[index].index_copy_(1, rows, v[0])
            out = attention(q, keys[index][:, :attend][None], values[index][:, :attend][None], mask, self.scale,
                            self.gqa)
            x = x + attn.o_proj(out.transpose(1, 2).reshape(1, n, -1))
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        return x
