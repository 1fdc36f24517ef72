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

The layers run on the fast verifier's machinery (``LlamaFamilyForward`` over a
``StaticKVCache``): drafted nodes' shallow keys and values are written at their rows
after the committed ones, the deep layers' at the same rows during ``verify``, and
``commit`` gathers the accepted path's rows into place in every layer.
"""

from __future__ import annotations

from typing import Optional

import torch

from spec.errors import ConfigurationError, InputError, ShapeError, UnsupportedError
from spec.models import context_length
from spec.protocols import Draft, Verification, VerifierTraits
from spec.timing import forward_region
from spec.verifiers.attention import sdpa_attention
from spec.verifiers.llama_family import LlamaFamilyForward, unsupported_reason
from spec.verifiers.paths import PendingTree, moves_rows
from spec.verifiers.support import check_supported

SUPPORTED = ("llama", "qwen2", "mistral")


def additive_mask(visible: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``[q, k]`` bool (True = may attend) -> ``[1, 1, q, k]`` additive mask."""
    mask = torch.zeros(visible.shape, dtype=dtype, device=visible.device)
    return mask.masked_fill_(~visible, torch.finfo(dtype).min)[None, None]


class SelfDraftState:
    """What the self-drafter and its verifier share for one sequence.

    ``cache``: the target's static KV cache, all layers; ``committed``: committed tokens cached
    in every layer. During a step, ``node_hidden`` holds the shallow hidden state of each tree
    node drafted so far (breadth-first, root first), and layers ``< exit_layer`` also hold their
    keys and values at rows ``committed + node index``.
    """

    def __init__(self, model, exit_layer: int, spare_rows: int = 256) -> None:
        check_supported(model)
        model_type = getattr(model.config, "model_type", None)
        reason = unsupported_reason(model)
        if reason is not None:
            raise UnsupportedError(
                f"Self-drafting runs the model's decoder layers one by one, supported for {', '.join(SUPPORTED)}; "
                f"got {model_type!r} ({reason}). Use TreeAttentionVerifier with another drafter."
            )
        num_layers = len(model.model.layers)
        if not 1 <= exit_layer < num_layers:
            raise ConfigurationError(f"exit_layer must be in [1, {num_layers - 1}] for this {num_layers}-layer model, "
                                     f"got {exit_layer}.")
        self.model = model
        self.backbone = model.model
        self.forward = LlamaFamilyForward(model)
        self.exit_layer = exit_layer
        self.dtype = self.forward.dtype
        self.cache = self.forward.new_cache(self.forward.max_length + spare_rows)
        self.reset()

    def reset(self) -> None:
        # Stale rows need no clearing: a pass only attends to rows it or a commit wrote.
        self.committed = 0
        self.node_hidden: list[torch.Tensor] = []
        self.node_ancestors: list[list[int]] = []  # per drafted node: indices (in node order) of its path
        self.node_depths: list[int] = []
        self.committed_shallow: Optional[torch.Tensor] = None  # shallow states of the positions last committed

    @property
    def device(self) -> torch.device:
        return self.forward.device

    def run_layers(self, hidden: torch.Tensor, layers: range, visible: torch.Tensor, positions: torch.Tensor,
                   first_row: int) -> torch.Tensor:
        """``hidden`` ``[m, H]`` through ``layers``, caching at rows ``first_row ..``; ``visible`` ``[m, attend]`` bool."""
        m = hidden.shape[0]
        if first_row + m > self.cache.rows:
            raise InputError(f"The self-draft cache has {self.cache.rows} rows and this step needs "
                             f"{first_row + m}; use a smaller tree or a larger spare_rows.")
        rows = torch.arange(first_row, first_row + m, device=self.device)
        visible = self._windowed(visible, positions)
        with forward_region():
            x = self.forward.run_layers(hidden[None], layers, positions, rows, self.cache.keys, self.cache.values,
                                        visible.shape[1], visible, sdpa_attention)
        return x[0]

    @torch.no_grad()
    def draft_nodes(self, tokens: list[int], ancestors: list[list[int]], depths: list[int]) -> torch.Tensor:
        """Run the shallow layers over new tree nodes (breadth-first, after those already drafted).

        ``ancestors[i]``: node indices of node i's path (root first, itself last). Returns their
        shallow hidden states ``[m, H]`` and records them for ``verify``.
        """
        start, m = len(self.node_hidden), len(tokens)
        embeddings = self.forward.embed(torch.tensor(tokens, device=self.device))
        visible = torch.zeros(m, self.committed + start + m, dtype=torch.bool, device=self.device)
        visible[:, : self.committed] = True
        for row, path in enumerate(ancestors):
            visible[row, [self.committed + node for node in path]] = True
        if self.committed + max(depths) >= self.forward.max_length:
            raise InputError(f"Drafting at position {self.committed + max(depths)} is past the model's context of "
                             f"{self.forward.max_length}; use a shallower tree near the end of the context.")
        positions = torch.tensor([self.committed + d for d in depths], device=self.device)
        self.node_depths.extend(depths)
        hidden = self.run_layers(embeddings, range(self.exit_layer), visible, positions, self.committed + start)
        self.node_hidden.extend(hidden)
        self.node_ancestors.extend(ancestors)
        return hidden

    def _windowed(self, visible: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Hide keys further back than a sliding window (committed rows sit at their own position)."""
        window = self.forward.window
        if window is None:
            return visible
        attend = visible.shape[1]
        key_positions = torch.arange(attend, device=self.device)
        tree_rows = attend - self.committed
        if tree_rows > 0 and self.node_depths:  # else a prefill: new rows sit at their own position too
            # Rows after the committed ones hold tree nodes, at committed + depth.
            depths = torch.tensor(self.node_depths[:tree_rows], device=self.device)
            key_positions[self.committed:] = self.committed + depths
        return visible & ((positions[:, None] - key_positions[None, :]) < window)


class SelfDraftVerifier:
    """Runs layers ``exit_layer ..`` over the shallow states the self-drafter left, then norm and lm_head."""

    traits = VerifierTraits(needs_paired_drafter=True)  # reads the KangarooDrafter's per-node state

    def __init__(self, model, exit_layer: int, spare_rows: int = 256) -> None:
        self.model = model.eval()
        self.state = SelfDraftState(model, exit_layer, spare_rows)
        self._pending = PendingTree()

    @property
    def max_length(self) -> int:
        return context_length(self.model)

    def reset(self) -> None:
        self.state.reset()
        self._pending = PendingTree()

    @torch.no_grad()
    def prefill(self, tokens: torch.Tensor) -> torch.Tensor:
        state = self.state
        m = tokens.shape[0]
        hidden_size = self.model.get_output_embeddings().weight.shape[1]
        if m == 0:
            state.committed_shallow = torch.empty(0, hidden_size, dtype=state.dtype, device=state.device)
            return state.committed_shallow
        if state.committed + m > self.max_length:
            raise InputError(f"Prefilling {m} tokens after {state.committed} is past the model's context of "
                             f"{self.max_length}; shorten the prompt.")
        positions = torch.arange(state.committed, state.committed + m, device=state.device)
        causal = torch.ones(m, state.committed + m, dtype=torch.bool, device=state.device).tril(state.committed)
        x = state.forward.embed(tokens.to(state.device))
        shallow = state.run_layers(x, range(state.exit_layer), causal, positions, state.committed)
        deep = state.run_layers(shallow, range(state.exit_layer, len(state.backbone.layers)), causal, positions,
                                state.committed)
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
        self._pending.check_free("verify")
        visible = torch.ones(tree.num_nodes, state.committed + tree.num_nodes, dtype=torch.bool, device=state.device)
        visible[:, state.committed:] = tree.ancestor_mask.to(state.device)
        positions = state.committed + tree.depths.to(state.device)
        shallow = torch.stack(state.node_hidden)
        deep = state.run_layers(shallow, range(state.exit_layer, len(state.backbone.layers)), visible, positions,
                                state.committed)
        hidden = state.backbone.norm(deep[None])[0]
        self._pending.hold(tree)
        return Verification(tree=tree, logits=self.model.lm_head(hidden), hidden_states=hidden)

    def commit(self, path: tuple[int, ...]) -> None:
        state = self.state
        path = self._pending.release(path)
        start, keep = state.committed, len(path)
        if moves_rows(path):
            state.cache.compact(start, torch.tensor(path, device=state.device) + start)
        state.committed_shallow = torch.stack([state.node_hidden[i] for i in path])
        state.committed += keep
        state.node_hidden, state.node_ancestors, state.node_depths = [], [], []
