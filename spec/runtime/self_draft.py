"""Self-drafting (Kangaroo): the target's layers in two parts over one shared static cache.

A self-drafter runs the target's first ``exit_layer`` layers (the shallow part) over every
token it drafts; those are exactly the first layers of the verify pass, so its verifier runs
only the rest (the deep part) on the drafter's shallow hidden states. Both write their keys
and values into the :class:`SelfDraftState` they share: rows ``0 .. committed - 1`` hold the
committed sequence in every layer; during a step the drafter writes the shallow layers' rows
of the nodes it drafts after them, the verifier the deep layers' rows of the draft's nodes
at ``committed + node index``.

Everything else travels in the stage types: a draft carries each node's shallow state
(``Draft.node_states``) and the cache row of its shallow keys and values
(``Draft.cache_rows``), so a tree builder may prune it; :class:`SelfDraftVerifier` runs the
deep layers over the kept nodes, and ``commit`` gathers the accepted path's shallow rows
from ``cache_rows`` and its deep rows by node index. The hidden states it reports
(``prefill``, ``Verification.hidden_states``) are the shallow ones its drafter reads:
``traits.features == "layer:<exit_layer>"``.

The verifier lives here, with the state it shares, so that its drafter can build it without
importing another stage; ``spec.verifiers`` exports it with the other verifiers. Supported:
Llama-family models (``SUPPORTED_ARCHITECTURES``), whose layers run one by one.
"""

from __future__ import annotations

from typing import Optional

import torch

from spec.errors import ConfigurationError, ShapeError
from spec.models import hidden_size, output_vocab_size
from spec.protocols import Draft, Verification, VerifierTraits
from spec.runtime.attention import sdpa_attention
from spec.runtime.layers import LlamaFamilyForward
from spec.runtime.masks import in_window
from spec.runtime.paths import PendingTree, moves_rows, path_tensor
from spec.runtime.room import check_prefill_tokens, check_room
from spec.runtime.shapes import PerShape
from spec.runtime.static_cache import cache_length
from spec.timing import forward_region


class SelfDraftState:
    """The shared static cache and the number of ``committed`` tokens it holds in every layer."""

    def __init__(self, model, exit_layer: int, spare_rows: int = 256, max_length: Optional[int] = None) -> None:
        self.forward = LlamaFamilyForward(model, "Self-drafting (the model's decoder layers run one by one)",
                                          "Use TreeAttentionVerifier with another drafter.")
        num_layers = len(model.model.layers)
        if not 1 <= exit_layer < num_layers:
            raise ConfigurationError(f"exit_layer must be in [1, {num_layers - 1}] for this {num_layers}-layer model, "
                                     f"got {exit_layer}.")
        self.backbone = model.model
        self.exit_layer = exit_layer
        self.shallow = range(exit_layer)
        self.deep = range(exit_layer, num_layers)
        # Capped like FastTreeVerifier's: the model's context up to 4096 positions unless more is asked for.
        self.max_length = cache_length(self.forward.max_length, max_length, "The self-draft cache")
        if spare_rows < 1:
            raise ConfigurationError(f"spare_rows must be at least 1, got {spare_rows}.")
        self.cache = self.forward.new_cache(self.max_length + spare_rows)
        self.reset()

    def reset(self) -> None:
        # Stale rows need no clearing: a pass only attends to rows it or a commit wrote.
        self.committed = 0

    @property
    def device(self) -> torch.device:
        return self.forward.device

    @property
    def dtype(self) -> torch.dtype:
        return self.forward.dtype

    def run_layers(self, hidden: torch.Tensor, layers: range, visible: torch.Tensor,
                   depths: torch.Tensor, deepest: int) -> torch.Tensor:
        """``hidden`` ``[m, H]`` through ``layers``: the last ``m`` of this step's rows.

        ``depths`` ``[k]`` int64: every row of this step so far (a prefill's tokens count as a chain),
        at position ``committed + depth`` and cache row ``committed + index``; ``deepest``: their largest, from
        the caller's host-side tree (reading it off the device would wait for the GPU); ``visible``
        ``[m, committed + k]`` bool over the committed rows and these (the window is applied here).
        Returns the hidden states after ``layers`` ``[m, H]``.
        """
        committed, k, m = self.committed, depths.shape[0], hidden.shape[0]
        check_room(committed + deepest, self.max_length, committed + k, self.cache.rows, "self-draft verifier")
        keys = torch.cat([torch.arange(committed, device=self.device), committed + depths.to(self.device)])
        positions = keys[k - m + committed:]
        visible = visible & in_window(positions[:, None], keys[None, :], self.forward.window)
        rows = torch.arange(committed + k - m, committed + k, device=self.device)
        with forward_region():
            x = self.forward.run_layers(hidden[None], layers, positions, rows, self.cache.keys, self.cache.values,
                                        committed + k, visible, sdpa_attention)
        return x[0]


class SelfDraftVerifier:
    """Runs layers ``exit_layer ..`` over the shallow states in a self-drafter's draft, then norm and lm_head."""

    def __init__(self, model, exit_layer: int, spare_rows: int = 256, max_length: Optional[int] = None) -> None:
        """``max_length``: the longest sequence the shared static cache holds; by default the model's context
        capped at 4096 (``spec.runtime.static_cache.DEFAULT_MAX_LENGTH``), any length up to the context if asked."""
        self.model = model.eval()
        self.state = SelfDraftState(model, exit_layer, spare_rows, max_length)
        # Verified only with its paired drafter: they share the cache's shallow rows.
        self.traits = VerifierTraits(needs_paired_drafter=True, features=f"layer:{exit_layer}")
        self.reset()

    @property
    def max_length(self) -> int:
        return self.state.max_length

    @property
    def device(self) -> torch.device:
        return self.state.device

    @property
    def vocab_size(self) -> int:
        return output_vocab_size(self.model)

    def reset(self) -> None:
        self.state.reset()
        self._pending = PendingTree()
        self._shallow_rows: Optional[torch.Tensor] = None
        # A tree's ancestor matrix [n, n] and depths [n] on the device, copied once per shape (pruned trees vary).
        self._tree_buffers = PerShape(lambda tree: (tree.ancestor_mask.to(self.device), tree.depths.to(self.device)))

    @torch.no_grad()
    def prefill(self, tokens: torch.Tensor) -> torch.Tensor:
        """Cache ``tokens`` ``[m]`` in every layer; returns their shallow states ``[m, H]`` (``traits.features``)."""
        return self._prefill(tokens, False)[0]

    @torch.no_grad()
    def prefill_root(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``prefill``, and the next-token logits after the last token ``[V]`` (``PrefillsRoot``)."""
        return self._prefill(tokens, True)

    def _prefill(self, tokens: torch.Tensor, with_logits: bool) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        check_prefill_tokens(tokens, scored=with_logits)
        self._pending.check_free("prefill")
        state, m = self.state, tokens.shape[0]
        if m == 0:
            return torch.empty(0, hidden_size(self.model), dtype=state.dtype, device=state.device), None
        chain = torch.arange(m, device=state.device)
        causal = torch.ones(m, state.committed + m, dtype=torch.bool, device=state.device).tril(state.committed)
        shallow = state.run_layers(state.forward.embed(tokens.to(state.device)), state.shallow, causal, chain, m - 1)
        deep = state.run_layers(shallow, state.deep, causal, chain, m - 1)
        state.committed += m
        if not with_logits:
            return shallow, None
        return shallow, self.model.lm_head(state.backbone.norm(deep[-1:][None])[0])[0]

    @torch.no_grad()
    def verify(self, draft: Draft) -> Verification:
        state, tree = self.state, draft.tree
        if draft.node_states is None or draft.cache_rows is None:
            raise ShapeError("A SelfDraftVerifier verifies drafts of its own KangarooDrafter, which carry "
                             "node_states and cache_rows (the shallow layers' work per node); this draft has none. "
                             "Pass verifier=drafter.verifier with that drafter, and prune with Draft.select_nodes.")
        self._pending.check_free("verify")
        rows = draft.cache_rows.to(state.device)
        lowest, highest = torch.stack([rows.min(), rows.max()]).tolist()  # one read
        if lowest < state.committed or highest >= state.cache.rows:
            raise ShapeError(f"Draft.cache_rows must be rows this step drafted into ({state.committed} .. "
                             f"{state.cache.rows - 1}), got {rows.tolist()}; was the draft made for another step?")
        ancestors, depths = self._tree_buffers(tree)
        visible = torch.cat([ancestors.new_ones(tree.num_nodes, state.committed), ancestors], dim=1)
        shallow = draft.node_states.to(device=state.device, dtype=state.dtype)
        deep = state.run_layers(shallow, state.deep, visible, depths, tree.max_depth)
        logits = self.model.lm_head(state.backbone.norm(deep[None])[0])
        self._pending.hold(tree)
        self._shallow_rows = rows
        return Verification(tree=tree, logits=logits, hidden_states=shallow)

    def commit(self, path: tuple[int, ...]) -> None:
        state = self.state
        path = self._pending.release(path)
        start, nodes = state.committed, path_tensor(path, state.device)
        # Shallow and deep layers hold a node at different rows: where it was drafted, where it was verified.
        state.cache.compact(start, self._shallow_rows[nodes], state.shallow)
        if moves_rows(path):
            state.cache.compact(start, nodes + start, state.deep)
        state.committed += len(path)
