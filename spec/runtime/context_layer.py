"""One extra decoder layer of the model's own architecture, run over the target's hidden states.

Hydra++'s prefix attention layer and Clover's augmenting block are both this: a
transformer layer that reads the target's last-layer hidden state at every
committed position and attends over all of them, so the heads see a summary of
the whole context rather than one position's state.

The layer's weights (:func:`build_decoder_layer`) belong to the drafter's
checkpoint; its KV cache (:class:`ContextLayerCache`) is runtime state kept in step
with the target's through ``Drafter.commit``: each commit appends the newly
committed positions, so the cache always holds exactly the committed sequence and
the output at the last committed position (the one whose hidden state produced
the root) is what the heads read. Drafters hand it the committed states with
:meth:`ContextLayerCache.defer`: the layer runs over them only when the heads next
need its output, so a generation that never drafts (one new token, or a budget that
leaves no room for a candidate) never pays for a pass over the prompt.

A step commits at most a tree's depth plus one positions. :meth:`ContextLayerCache.compile`
runs such passes through one compiled graph, padded to that count (as EAGLE's commit pass
is): run eagerly, the layer's few dozen small operations per step cost more than their
arithmetic on a small model.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn
from torch.nn import functional as F

from spec.errors import InputError, ShapeError
from spec.runtime.compiled import CompiledStep
from spec.runtime.draft_layer import DraftLayerCache, _backbone, causal_rows
from spec.runtime.masks import additive_mask, causal, layer_window
from spec.runtime.shapes import attend_bucket


def build_decoder_layer(model, what: str) -> nn.Module:
    """A fresh decoder layer like ``model``'s own, in its dtype and on its device, starting as the identity.

    Linear weights are drawn as the model's init does (normal, ``initializer_range``);
    the two projections that write into the residual stream (attention output and
    MLP down projection) start at zero, so until trained the layer passes its input
    through unchanged and the drafter behaves as it would without it.
    """
    backbone = _backbone(model, what)
    template = backbone.layers[0]
    layer = type(template)(model.config, layer_idx=0)
    std = getattr(model.config, "initializer_range", 0.02)
    with torch.no_grad():
        for module in layer.modules():
            if isinstance(module, nn.Linear):
                module.weight.normal_(0.0, std)
                if module.bias is not None:
                    module.bias.zero_()
        layer.self_attn.o_proj.weight.zero_()
        layer.mlp.down_proj.weight.zero_()
    if layer.self_attn.o_proj.weight.is_meta:  # built only to size a checkpoint: there is nothing to move
        return layer
    weight = template.self_attn.q_proj.weight
    return layer.to(device=weight.device, dtype=weight.dtype)


class ContextLayerCache:
    """Runs ``layer`` over committed hidden states chunk by chunk, with its own KV cache.

    ``append(hidden)`` processes positions ``length .. length + m - 1`` attending to
    everything before them (and within the model's sliding window, if any); the
    result equals one causal pass over the whole sequence. The layer is run by hand on
    a :class:`~spec.runtime.draft_layer.DraftLayerCache` (a buffer plus a position, grown on
    demand, the rotary table computed once) rather than through transformers' layer with a
    ``DynamicCache``, whose per-call mask, rotary and concatenation of the whole cache cost
    about a tenth of a Hydra++ or Clover step on a small model.
    """

    def __init__(self, model, layer: nn.Module, what: str, initial_rows: int = 1024) -> None:
        self.layer = layer
        self.what = what
        # Only committed positions are written (no tree scratch rows): no spare rows.
        self.cache = DraftLayerCache(model, layer.self_attn, what, spare_rows=0, initial_rows=initial_rows)
        self.window = self.cache.window
        self.pad: Optional[int] = None
        self._compiled: Optional[CompiledStep] = None
        self.reset()

    def compile(self, pad: Optional[int]) -> None:
        """Run each pass of at most ``pad`` positions compiled, padded to ``pad`` rows (a step's most committed
        positions), attending over rows rounded up to :func:`attend_bucket`, so a generation compiles a few graphs
        rather than one per step. Longer passes (the prompt) run eagerly. ``None``: every pass eager."""
        if pad is not None and pad < 1:
            raise InputError(f"A compiled context layer pads each pass to at least one position, got pad={pad}.")
        self.pad = pad
        self._compiled = None if pad is None else CompiledStep(self._append_padded, enabled=True, what="drafter")

    @property
    def compiled(self) -> bool:
        """Whether short passes run compiled (false after a fallback to eager)."""
        return self._compiled is not None and self._compiled.compiled

    def reset(self) -> None:
        self.cache.reset()
        self.last_output: Optional[torch.Tensor] = None
        self._deferred: list[torch.Tensor] = []
        self._deferred_rows = 0

    def defer(self, hidden_states: torch.Tensor) -> None:
        """Hidden states ``[m, H]`` at the next ``m`` positions, run by the next :meth:`output_for` (not now)."""
        if hidden_states.dim() != 2:
            raise ShapeError(f"commit takes hidden states of shape [m, H], got {tuple(hidden_states.shape)}.")
        if hidden_states.shape[0]:
            self._deferred.append(hidden_states)
            self._deferred_rows += hidden_states.shape[0]

    @torch.no_grad()
    def append(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """Hidden states ``[m, H]`` at the next ``m`` positions -> the layer's outputs there ``[m, H]``."""
        if hidden_states.dim() != 2:
            raise ShapeError(f"commit takes hidden states of shape [m, H], got {tuple(hidden_states.shape)}.")
        m = hidden_states.shape[0]
        if m == 0:
            return hidden_states
        weight = self.layer.self_attn.q_proj.weight
        x = hidden_states.to(device=weight.device, dtype=weight.dtype)
        positions = torch.arange(self.length, self.length + m, device=weight.device)
        visible = torch.ones(m, self.length + m, dtype=torch.bool, device=weight.device).tril(self.length)
        out = self._layer(x, positions, visible)
        self.cache.committed += m
        self.last_output = out[-1]
        return out

    @torch.no_grad()
    def _run(self, hidden_states: torch.Tensor) -> None:
        """:meth:`append`, through the compiled padded pass where the positions fit it."""
        m, start, pad = hidden_states.shape[0], self.length, self.pad
        if self._compiled is None or pad is None or m > pad or start + pad > self.cache.max_rows:
            self.append(hidden_states)
            return
        # Padding rows write keys and values past the committed ones; the next pass overwrites them before any
        # row attends to them (each pass writes its rows, then attends causally).
        self.cache.reserve(start + pad)
        weight = self.layer.self_attn.q_proj.weight
        x = F.pad(hidden_states.to(device=weight.device, dtype=weight.dtype), (0, 0, 0, pad - m))
        self.last_output = self._compiled(x, torch.tensor(start, device=weight.device),
                                          torch.tensor([m - 1], device=weight.device),
                                          min(attend_bucket(start + pad), self.cache.rows))
        self.cache.committed += m

    def _append_padded(self, x: torch.Tensor, start: torch.Tensor, last: torch.Tensor, width: int) -> torch.Tensor:
        """Hidden states ``[pad, H]`` at positions ``start`` ``[]`` onwards, attending over rows ``0 .. width - 1``
        -> the output at row ``last`` ``[1]`` of them ``[H]`` (what :meth:`compile` compiles)."""
        positions = start + torch.arange(x.shape[0], device=x.device)
        return self._layer(x, positions, causal_rows(positions, width)).index_select(0, last)[0]

    def _layer(self, x: torch.Tensor, positions: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
        """``x`` ``[n, H]`` at ``positions`` ``[n]`` (also their cache rows) through the layer, attending where
        ``visible`` ``[n, rows]`` -> ``[n, H]``: the decoder layer of the supported (Llama-family) architectures,
        pre-norm attention and MLP with residuals."""
        layer = self.layer
        x = x + self.cache.run(layer.self_attn, layer.input_layernorm(x), positions, positions, visible)
        return x + layer.mlp(layer.post_attention_layernorm(x))

    @property
    def length(self) -> int:
        """Committed positions the layer has run over (its cache's committed rows)."""
        return self.cache.committed

    @property
    def pending(self) -> int:
        """Committed positions handed to :meth:`defer` that the layer has not run over yet."""
        return self._deferred_rows

    def output_for(self, position: int) -> torch.Tensor:
        """The output at the last committed position, checked to be the one before the root at ``position``;
        runs the layer over the deferred positions first (one pass for all of them)."""
        if self._deferred_rows and self.length + self._deferred_rows == position:
            deferred = self._deferred[0] if len(self._deferred) == 1 else torch.cat(self._deferred)
            self._deferred, self._deferred_rows = [], 0
            self._run(deferred)
        if self.length != position or self.last_output is None:
            raise InputError(
                f"The {self.what} has seen {self.length + self._deferred_rows} committed positions but the root is "
                f"at position "
                f"{position}; call drafter.commit(tokens, hidden_states) after the prefill and after every step "
                "(SpeculativeDecoder does), and drafter.reset() before a new sequence."
            )
        return self.last_output


def causal_pass(model, layer: nn.Module, hidden_states: torch.Tensor, what: str) -> torch.Tensor:
    """The layer over whole sequences ``[B, T, H]`` at once, with gradients: the training-time twin of
    :class:`ContextLayerCache` (same causal, windowed attention; no cache)."""
    rotary = _backbone(model, what).rotary_emb
    positions = torch.arange(hidden_states.shape[1], device=hidden_states.device)
    mask = additive_mask(causal(positions, positions, layer_window(model.config, 0)), hidden_states.dtype)
    position_ids = positions[None].expand(hidden_states.shape[0], -1)
    out = layer(hidden_states, attention_mask=mask, position_ids=position_ids,
                position_embeddings=rotary(hidden_states, position_ids))
    return out[0] if isinstance(out, tuple) else out
