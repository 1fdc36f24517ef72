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

from typing import Optional

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from spec.errors import UnsupportedError
from spec.models import cache_kwargs, context_length, hidden_size, model_device, model_dtype, output_vocab_size
from spec.protocols import Draft, Verification, VerifierTraits
from spec.runtime.features import check_features, select_features
from spec.runtime.masks import additive_mask, in_window, model_windows
from spec.runtime.paths import PendingTree, moves_rows, path_tensor
from spec.runtime.room import check_prefill_tokens, check_room
from spec.runtime.shapes import PerShape
from spec.runtime.support import check_supported


class TreeAttentionVerifier:
    """The generic verifier: correct for every model whose attention honours a 4D mask.

    Tested on the architectures in ``docs/architectures.md``. Models with sliding-window
    attention get the window applied in the mask, since our cache keeps every position;
    models whose layers mix sliding and full attention get one mask per attention type.
    Models whose attention a tree's positions cannot express (ALiBi, row-indexed local
    windows, length-dependent rotary scaling: ``spec.runtime.support``) are refused here.
    ``features``: the hidden states it reports (``"final"``, or ``"layers:<a>,<b>,.."``: transformers'
    ``hidden_states[a], hidden_states[b], ..`` concatenated).
    """

    def __init__(self, model, features: str = "final") -> None:
        check_supported(model)
        # Verifies any drafter's drafts; reports the hidden states the drafter reads.
        self._layers = check_features(model, features, "TreeAttentionVerifier")
        self.traits = VerifierTraits(features=features)
        self.model = model.eval()
        self._dtype = model_dtype(model)
        windows = model_windows(model.config)
        self._window: Optional[int] = next((w for w in windows if w is not None), None)
        # transformers takes {attention type: mask} when layers differ (e.g. Qwen2 with max_window_layers).
        self._mixed = len(windows) > 1
        self._tree_buffers = PerShape(lambda tree: (tree.ancestor_mask.to(self.device), tree.depths.to(self.device)))
        self.reset()

    # ---- Verifier protocol -------------------------------------------------------------
    @property
    def max_length(self) -> int:
        return context_length(self.model)

    @property
    def device(self) -> torch.device:
        return model_device(self.model)

    @property
    def vocab_size(self) -> int:
        return output_vocab_size(self.model)

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
        """Cache ``tokens`` ``[m]``; returns their hidden states ``[m, H]`` (``[m, k * H]`` for ``k`` layers)."""
        return self._prefill(tokens, False)[0]

    @torch.no_grad()
    def prefill_root(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``prefill``, and the next-token logits after the last token ``[V]`` (``PrefillsRoot``)."""
        return self._prefill(tokens, True)

    def _prefill(self, tokens: torch.Tensor, with_logits: bool) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        check_prefill_tokens(tokens, scored=with_logits)
        self._pending.check_free("prefill")
        m = tokens.shape[0]
        if m == 0:
            width = hidden_size(self.model) * max(len(self._layers), 1)
            return torch.empty(0, width, dtype=self._dtype, device=self.device), None
        check_room(self._cached + m - 1, self.max_length)
        positions = torch.arange(self._cached, self._cached + m, device=self.device)
        out = self.model(
            input_ids=tokens.to(self.device)[None],
            position_ids=positions[None],
            **cache_kwargs(self.model, self._cache),
            use_cache=True,
            output_hidden_states=True,
        )
        self._check_cache_layers()
        self._cached += m
        return self._features(out.hidden_states), out.logits[0, -1] if with_logits else None

    @torch.no_grad()
    def verify(self, draft: Draft) -> Verification:
        self._pending.check_free("verify")
        tree = draft.tree
        check_room(self._cached + tree.max_depth, self.max_length)
        ancestors, depths = self._tree_buffers(tree)
        mask = self._full_mask(ancestors, depths, self._window)
        if self._mixed:
            mask = {"sliding_attention": mask, "full_attention": self._full_mask(ancestors, depths, None)}
        out = self.model(
            input_ids=draft.tokens.to(self.device)[None],
            attention_mask=mask,
            position_ids=(self._cached + depths)[None],
            **cache_kwargs(self.model, self._cache),
            use_cache=True,
            output_hidden_states=True,
        )
        self._check_cache_layers()
        self._pending.hold(tree)
        return Verification(tree=tree, logits=out.logits[0], hidden_states=self._features(out.hidden_states))

    def commit(self, path: tuple[int, ...]) -> None:
        path = self._pending.release(path)
        start, keep = self._cached, len(path)
        rows = path_tensor(path, self.device) + start if moves_rows(path) else None  # the index copied once per path
        for layer in self._cache.layers:
            for name in ("keys", "values"):
                full = getattr(layer, name)
                if rows is not None:
                    # Gather first: the destination rows overlap the source rows.
                    full[:, :, start : start + keep] = full.index_select(2, rows)
                setattr(layer, name, full[:, :, : start + keep])
        self._cached += keep

    # ---- helpers ---------------------------------------------------------------------------
    def _features(self, hidden_states: tuple[torch.Tensor, ...]) -> torch.Tensor:
        return hidden_states[-1][0] if not self._layers else select_features(hidden_states, self._layers)

    def _full_mask(self, ancestors: torch.Tensor, depths: torch.Tensor, window: Optional[int]) -> torch.Tensor:
        """``[1, 1, n, cached + n]``: the whole prefix visible (or its last ``window`` positions), the tree by ancestry."""
        n, cached = ancestors.shape[0], self._cached
        visible = torch.ones(n, cached + n, dtype=torch.bool, device=self.device)
        visible[:, cached:] = ancestors
        if window is not None:
            positions = cached + depths
            keys = torch.cat([torch.arange(cached, device=self.device), positions])
            visible &= in_window(positions[:, None], keys[None, :], window)
        return additive_mask(visible, self._dtype)

    def _check_cache_layers(self) -> None:
        for layer in self._cache.layers:
            if type(layer) is not DynamicLayer:
                raise UnsupportedError(
                    f"{type(self.model).__name__} uses a {type(layer).__name__} cache layer; "
                    "TreeAttentionVerifier supports models with plain DynamicCache layers (full attention)."
                )
