"""Verify a whole candidate tree in one forward pass of any transformers causal LM.

The tree's tokens are fed as one sequence on top of the cached prefix. Two things
make that a tree rather than a sequence:

* a 4D additive attention mask: every node sees the whole prefix and, inside the
  tree, only itself and its ancestors (``CandidateTree.ancestor_mask``);
* position ids ``cached_length + depth``: siblings share a position, as they are
  alternative tokens for the same slot.

transformers passes a 4D mask straight to the attention kernels (eager and SDPA)
and appends the tree's keys and values to the ``DynamicCache``. ``commit`` then
moves the accepted path's entries into place and drops the rest, so the cache
always holds exactly the committed sequence.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Optional

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from spec.errors import InputError, ShapeError, UnsupportedError
from spec.models import cache_kwargs, context_length, model_dtype
from spec.protocols import CandidateTree, Draft, Verification, VerifierTraits
from spec.verifiers.paths import PendingTree, moves_rows
from spec.verifiers.support import check_supported


class TreeAttentionVerifier:
    """The generic verifier: correct for every model whose attention honours a 4D mask.

    Tested on the architectures in ``docs/architectures.md``. Models with sliding-window
    attention get the window applied in the mask, since our cache keeps every position;
    models whose layers mix sliding and full attention get one mask per attention type.
    Models whose attention a tree's positions cannot express (ALiBi, row-indexed local
    windows, length-dependent rotary scaling: ``spec.verifiers.support``) are refused here.
    """

    traits = VerifierTraits()  # verifies any drafter's drafts

    MAX_CACHED_SHAPES = 64

    def __init__(self, model) -> None:
        check_supported(model)
        self.model = model.eval()
        self._dtype = model_dtype(model)
        self._window: Optional[int] = getattr(model.config, "sliding_window", None) or None
        layer_types = set(getattr(model.config, "layer_types", None) or ())
        if layer_types == {"full_attention"}:
            self._window = None
        # transformers takes {attention type: mask} when layers differ (e.g. Qwen2 with max_window_layers).
        self._mixed = self._window is not None and len(layer_types) > 1
        # Bounded: dynamic trees and early exits make new shapes every step.
        self._tree_masks: OrderedDict[CandidateTree, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        self.reset()

    # ---- Verifier protocol -------------------------------------------------------------
    @property
    def max_length(self) -> int:
        return context_length(self.model)

    @property
    def cached_length(self) -> int:
        """Number of committed tokens whose keys and values are cached."""
        return self._cached

    def reset(self) -> None:
        self._cache = DynamicCache()
        self._cached = 0
        self._pending = PendingTree()

    @torch.no_grad()
    def prefill(self, tokens: torch.Tensor) -> torch.Tensor:
        """Cache ``tokens`` ``[m]``; returns last-layer hidden states ``[m, H]``."""
        if tokens.dim() != 1:
            raise ShapeError(f"prefill takes a 1-D tensor of token ids, got shape {tuple(tokens.shape)}.")
        self._pending.check_free("prefill")
        m = tokens.shape[0]
        if m == 0:
            return torch.empty(0, self.model.get_output_embeddings().weight.shape[1], dtype=self._dtype,
                               device=self._device)
        self._check_room(self._cached + m - 1)
        positions = torch.arange(self._cached, self._cached + m, device=self._device)
        out = self.model(
            input_ids=tokens.to(self._device)[None],
            position_ids=positions[None],
            **cache_kwargs(self.model, self._cache),
            use_cache=True,
            output_hidden_states=True,
        )
        self._check_cache_layers()
        self._cached += m
        return out.hidden_states[-1][0]

    @torch.no_grad()
    def verify(self, draft: Draft) -> Verification:
        self._pending.check_free("verify")
        tree = draft.tree
        self._check_room(self._cached + tree.max_depth)
        tree_mask, depths = self._tree_buffers(tree)
        mask = self._full_mask(tree_mask, depths, self._window)
        if self._mixed:
            mask = {"sliding_attention": mask, "full_attention": self._full_mask(tree_mask, depths, None)}
        out = self.model(
            input_ids=draft.tokens.to(self._device)[None],
            attention_mask=mask,
            position_ids=(self._cached + depths)[None],
            **cache_kwargs(self.model, self._cache),
            use_cache=True,
            output_hidden_states=True,
        )
        self._check_cache_layers()
        self._pending.hold(tree)
        return Verification(tree=tree, logits=out.logits[0], hidden_states=out.hidden_states[-1][0])

    def commit(self, path: tuple[int, ...]) -> None:
        path = self._pending.release(path)
        start, keep = self._cached, len(path)
        rows = torch.tensor(path, device=self._device) + start if moves_rows(path) else None
        for layer in self._cache.layers:
            for name in ("keys", "values"):
                full = getattr(layer, name)
                if rows is not None:
                    # Gather first: the destination rows overlap the source rows.
                    full[:, :, start : start + keep] = full.index_select(2, rows)
                setattr(layer, name, full[:, :, : start + keep])
        self._cached += keep

    # ---- helpers ---------------------------------------------------------------------------
    @property
    def _device(self) -> torch.device:
        return self.model.get_output_embeddings().weight.device

    def _tree_buffers(self, tree: CandidateTree) -> tuple[torch.Tensor, torch.Tensor]:
        """Per tree shape, once: the additive tree mask ``[n, n]`` and depths ``[n]`` on the device."""
        buffers = self._tree_masks.get(tree)
        if buffers is None:
            additive = torch.zeros(tree.num_nodes, tree.num_nodes, dtype=self._dtype)
            additive.masked_fill_(~tree.ancestor_mask, torch.finfo(self._dtype).min)
            buffers = (additive.to(self._device), tree.depths.to(self._device))
            self._tree_masks[tree] = buffers
            if len(self._tree_masks) > self.MAX_CACHED_SHAPES:
                self._tree_masks.popitem(last=False)
        else:
            self._tree_masks.move_to_end(tree)
        return buffers

    def _full_mask(self, tree_mask: torch.Tensor, depths: torch.Tensor, window: Optional[int]) -> torch.Tensor:
        """``[1, 1, n, cached + n]``: the whole prefix visible (or its last ``window`` positions), the tree by ancestry."""
        n, cached = tree_mask.shape[0], self._cached
        mask = torch.zeros(n, cached + n, dtype=self._dtype, device=self._device)
        mask[:, cached:] = tree_mask
        if window is not None and cached + int(depths[-1]) >= window:
            query_pos = (cached + depths)[:, None]
            key_pos = torch.arange(cached, device=self._device)[None, :]
            mask[:, :cached].masked_fill_(query_pos - key_pos >= window, torch.finfo(self._dtype).min)
            # Inside the tree too, should the window be shorter than the tree is deep.
            mask[:, cached:].masked_fill_(depths[:, None] - depths[None, :] >= window, torch.finfo(self._dtype).min)
        return mask[None, None]

    def _check_room(self, last_position: int) -> None:
        if last_position >= self.max_length:
            raise InputError(
                f"Position {last_position} is past the model's context of {self.max_length} tokens; "
                "shorten the prompt or max_new_tokens (the pipelines check this before generating)."
            )

    def _check_cache_layers(self) -> None:
        for layer in self._cache.layers:
            if type(layer) is not DynamicLayer:
                raise UnsupportedError(
                    f"{type(self.model).__name__} uses a {type(layer).__name__} cache layer; "
                    "TreeAttentionVerifier supports models with plain DynamicCache layers (full attention)."
                )
