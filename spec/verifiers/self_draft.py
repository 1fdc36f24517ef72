"""Verification that reuses a self-drafter's shallow layers (Kangaroo).

A self-drafter (``KangarooDrafter``) runs the target's own first ``exit_layer`` layers
over every token it drafts. Those are exactly the first layers of the verify pass, so
running them again would waste the work: the drafter leaves each tree node's shallow
hidden state, and the shallow layers' keys and values, in a :class:`SelfDraftState`
it shares with this verifier, and ``verify`` runs only layers ``exit_layer ..`` on top.

That sharing is why this needs its own verifier: the generic ``TreeAttentionVerifier``
runs the whole model from token ids. Both keep the same protocol, so pipelines,
acceptors and tests treat them alike. Supported: Llama-family models (Llama, Qwen2,
Mistral), whose decoder layers can be run one by one.
"""

from __future__ import annotations

from typing import Optional

import torch
from transformers import DynamicCache

from spec.errors import ConfigurationError, InputError, ShapeError, UnsupportedError
from spec.models import context_length, model_dtype
from spec.protocols import Draft, Verification

SUPPORTED = ("llama", "qwen2", "mistral")


def additive_mask(visible: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``[q, k]`` bool (True = may attend) -> ``[1, 1, q, k]`` additive mask."""
    mask = torch.zeros(visible.shape, dtype=dtype, device=visible.device)
    return mask.masked_fill_(~visible, torch.finfo(dtype).min)[None, None]


class SelfDraftState:
    """What the self-drafter and its verifier share for one sequence.

    ``cache``: the target's KV cache, all layers; ``committed``: committed tokens cached in
    every layer. During a step, ``node_hidden`` holds the shallow hidden state of each tree
    node drafted so far (breadth-first, root first), and layers ``< exit_layer`` also hold
    their keys and values, in the same order, after the committed ones.
    """

    def __init__(self, model, exit_layer: int) -> None:
        model_type = getattr(model.config, "model_type", None)
        backbone = getattr(model, "model", None)
        if model_type not in SUPPORTED or backbone is None or not hasattr(backbone, "layers"):
            raise UnsupportedError(
                f"Self-drafting runs the model's decoder layers one by one, supported for {', '.join(SUPPORTED)}; "
                f"got {model_type!r}. Use TreeAttentionVerifier with another drafter."
            )
        num_layers = len(backbone.layers)
        if not 1 <= exit_layer < num_layers:
            raise ConfigurationError(f"exit_layer must be in [1, {num_layers - 1}] for this {num_layers}-layer model, "
                                     f"got {exit_layer}.")
        self.model = model
        self.backbone = backbone
        self.exit_layer = exit_layer
        self.dtype = model_dtype(model)
        self.reset()

    def reset(self) -> None:
        self.cache = DynamicCache()
        self.committed = 0
        self.node_hidden: list[torch.Tensor] = []
        self.node_ancestors: list[list[int]] = []  # per drafted node: indices (in node order) of its path
        self.node_depths: list[int] = []
        self.committed_shallow: Optional[torch.Tensor] = None  # shallow states of the positions last committed

    @property
    def device(self) -> torch.device:
        return self.backbone.embed_tokens.weight.device

    def run_layers(self, hidden: torch.Tensor, layers: range, visible: torch.Tensor,
                   positions: torch.Tensor) -> torch.Tensor:
        """``hidden`` ``[m, H]`` through ``layers`` with cache; ``visible`` ``[m, cached + m]`` bool."""
        x = hidden[None]
        position_ids = positions[None]
        mask = additive_mask(visible, x.dtype)
        rotary = self.backbone.rotary_emb(x, position_ids)
        for index in layers:
            out = self.backbone.layers[index](x, attention_mask=mask, position_ids=position_ids,
                                              past_key_values=self.cache, use_cache=True, position_embeddings=rotary)
            x = out[0] if isinstance(out, tuple) else out
        return x[0]

    @torch.no_grad()
    def draft_nodes(self, tokens: list[int], ancestors: list[list[int]], depths: list[int]) -> torch.Tensor:
        """Run the shallow layers over new tree nodes (breadth-first, after those already drafted).

        ``ancestors[i]``: node indices of node i's path (root first, itself last). Returns their
        shallow hidden states ``[m, H]`` and records them for ``verify``.
        """
        start, m = len(self.node_hidden), len(tokens)
        embeddings = self.backbone.embed_tokens(torch.tensor(tokens, device=self.device))
        visible = torch.zeros(m, self.committed + start + m, dtype=torch.bool, device=self.device)
        visible[:, : self.committed] = True
        for row, path in enumerate(ancestors):
            visible[row, [self.committed + node for node in path]] = True
        positions = torch.tensor([self.committed + d for d in depths], device=self.device)
        hidden = self.run_layers(embeddings, range(self.exit_layer), visible, positions)
        self.node_hidden.extend(hidden)
        self.node_ancestors.extend(ancestors)
        self.node_depths.extend(depths)
        return hidden


class SelfDraftVerifier:
    """Runs layers ``exit_layer ..`` over the shallow states the self-drafter left, then norm and lm_head."""

    def __init__(self, model, exit_layer: int) -> None:
        self.model = model.eval()
        self.state = SelfDraftState(model, exit_layer)
        self._pending = 0

    @property
    def max_length(self) -> int:
        return context_length(self.model)

    def reset(self) -> None:
        self.state.reset()
        self._pending = 0

    @torch.no_grad()
    def prefill(self, tokens: torch.Tensor) -> torch.Tensor:
        state = self.state
        m = tokens.shape[0]
        hidden_size = self.model.get_output_embeddings().weight.shape[1]
        if m == 0:
            state.committed_shallow = torch.empty(0, hidden_size, dtype=state.dtype, device=state.device)
            return state.committed_shallow
        positions = torch.arange(state.committed, state.committed + m, device=state.device)
        causal = torch.ones(m, state.committed + m, dtype=torch.bool, device=state.device).tril(state.committed)
        x = state.backbone.embed_tokens(tokens.to(state.device))
        shallow = state.run_layers(x, range(state.exit_layer), causal, positions)
        deep = state.run_layers(shallow, range(state.exit_layer, len(state.backbone.layers)), causal, positions)
        state.committed += m
        state.committed_shallow = shallow
        return state.backbone.norm(deep[None])[0]

    @torch.no_grad()
    def verify(self, draft: Draft) -> Verification:
        state = self.state
        tree = draft.tree
        if len(state.node_hidden) != tree.num_nodes:
            raise ShapeError(
                f"The self-drafter left {len(state.node_hidden)} drafted nodes but the draft has {tree.num_nodes}; "
                "a SelfDraftVerifier verifies drafts of the KangarooDrafter sharing its state."
            )
        if self._pending:
            raise InputError("verify() called while a verified tree awaits commit(); commit the accepted path first.")
        visible = torch.ones(tree.num_nodes, state.committed + tree.num_nodes, dtype=torch.bool, device=state.device)
        visible[:, state.committed:] = tree.ancestor_mask.to(state.device)
        positions = state.committed + tree.depths.to(state.device)
        shallow = torch.stack(state.node_hidden)
        deep = state.run_layers(shallow, range(state.exit_layer, len(state.backbone.layers)), visible, positions)
        hidden = state.backbone.norm(deep[None])[0]
        self._pending = tree.num_nodes
        return Verification(tree=tree, logits=self.model.lm_head(hidden), hidden_states=hidden)

    def commit(self, path: tuple[int, ...]) -> None:
        state = self.state
        if not self._pending:
            raise InputError("commit() called with no verified tree pending; call verify() first.")
        start, keep = state.committed, len(path)
        rows = torch.tensor(path, device=state.device) + start
        for layer in state.cache.layers:
            for name in ("keys", "values"):
                full = getattr(layer, name)
                full[:, :, start : start + keep] = full.index_select(2, rows)
                setattr(layer, name, full[:, :, : start + keep])
        state.committed_shallow = torch.stack([state.node_hidden[i] for i in path])
        state.committed += keep
        state.node_hidden, state.node_ancestors, state.node_depths = [], [], []
        self._pending = 0
