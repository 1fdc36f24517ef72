"""The fast verifier: static KV cache, per-shape buffers on the device, an optionally compiled step.

Same protocol and same results as :class:`TreeAttentionVerifier`, built for a step
whose cost outside the forward pass is close to nothing:

* keys and values live in one preallocated :class:`StaticKVCache`; ``commit`` moves the
  accepted path's rows into place (a gather and a copy per layer's keys and values), and
  nothing is ever reallocated or concatenated;
* per tree shape, the ancestor matrix, depths, row offsets and accepted-path indices are
  built once on the device; a step adds the prefix length to them there, with no
  host-device synchronisation (verify and commit read nothing back; docs/architecture.md counts every stage's);
* the verify pass is one function of tensors (``LlamaFamilyForward``), compiled with
  ``torch.compile`` when asked (CUDA graphs on GPU via ``mode="reduce-overhead"``), with
  an eager fallback;
* attention is ``sdpa`` with a boolean mask, or FlexAttention with a block mask from the
  tree's ancestors on block tensors kept per layout (the CUDA default when compiling).

Llama-family models only (Llama, Qwen2, Mistral); ``make_verifier`` picks the generic
verifier for everything else.
"""

from __future__ import annotations

from typing import Optional

import attrs
import torch

from spec.errors import ConfigurationError
from spec.models import hidden_size, output_vocab_size
from spec.protocols import CandidateTree, Draft, Verification, VerifierTraits
from spec.runtime.attention import ATTENTION_KINDS, KERNELS, causal_attention, mask_builders, sdpa_mask
from spec.runtime.compiled import CompiledStep
from spec.runtime.features import check_features
from spec.runtime.layers import LlamaFamilyForward
from spec.runtime.masks import causal, in_window
from spec.runtime.paths import PendingTree, moves_rows, path_tensor
from spec.runtime.room import check_prefill_tokens, check_room
from spec.runtime.shapes import PerShape, attend_bucket, tree_bucket
from spec.runtime.static_cache import DEFAULT_MAX_LENGTH, cache_length, compact_rows
from spec.timing import forward_region


@attrs.frozen
class TreeBuffers:
    """One tree shape's device tensors: ``ancestors`` ``[n, n]`` bool (window applied), ``depths`` and
    ``offsets`` ``[n]`` int64 (``offsets`` = 0 .. n-1, the tree's cache rows above the prefix)."""

    ancestors: torch.Tensor
    depths: torch.Tensor
    offsets: torch.Tensor


class FastTreeVerifier:
    """A Verifier for Llama-family models; see the module docstring.

    ``compile``: None (default) compiles on CUDA only; True or False forces it.
    ``attention``: ``"auto"`` (FlexAttention when compiling on CUDA, else SDPA), ``"sdpa"`` or ``"flex"``.
    ``spare_rows``: cache rows past the context for a tree's scratch entries near the context's end.
    ``max_length``: the longest sequence (prompt + new tokens) the static cache holds. By default the model's
    context capped at ``DEFAULT_MAX_LENGTH`` (4096): the cache is allocated up front, and a model's full context
    (128K for Llama 3) would cost about 17 GB per verifier for an 8B model, for generations that rarely need
    it. Pass any length up to the model's context to ask for more (or less); a request that does not fit is
    refused before its first step with a ``ContextLengthError`` naming the verifier's cache.
    ``features``: the hidden states it reports (``"final"``, or ``"layers:<a>,<b>,.."`` for a drafter that
    reads intermediate layers, e.g. EAGLE-3); only what is asked for is computed.
    ``pad_trees``: a compiled step pads each tree to 8/16/32/64/... nodes so it sees few shapes; None (default)
    pads with CUDA graphs only (on a CPU the padded rows are real compute and inductor's one dynamic-shape
    graph serves every size).
    ``compile_commit``: compile the commit's compaction too (``compact_rows``); None (default) with CUDA graphs
    only, where it turns two kernel launches per layer's keys and values into one graph launch (on a CPU inductor
    saves no launches worth a compile).
    """

    PAD_TO = 64  # compiled steps attend over a multiple of this many rows, so shapes repeat
    DEFAULT_MAX_LENGTH = DEFAULT_MAX_LENGTH  # the default cache length when the model's context is longer

    def __init__(self, model, *, compile: Optional[bool] = None, attention: str = "auto", spare_rows: int = 256,
                 max_length: Optional[int] = None, features: str = "final", pad_trees: Optional[bool] = None,
                 compile_commit: Optional[bool] = None) -> None:
        self.model = model.eval()
        self.forward = LlamaFamilyForward(model)
        # Verifies any drafter's drafts; reports the hidden states the drafter reads.
        self._capture = check_features(model, features, "FastTreeVerifier")
        self.traits = VerifierTraits(features=features)
        device = self.forward.device
        if attention not in ("auto",) + ATTENTION_KINDS:
            raise ConfigurationError(f"attention must be 'auto' or one of {ATTENTION_KINDS}, got {attention!r}.")
        if spare_rows < 1:
            raise ConfigurationError(f"spare_rows must be at least 1, got {spare_rows}.")
        compile = device.type == "cuda" if compile is None else bool(compile)
        chosen = attention == "auto"
        if chosen:
            attention = "flex" if compile and device.type == "cuda" else "sdpa"
        self.attention = attention
        self._max_length = cache_length(self.forward.max_length, max_length, "FastTreeVerifier")
        self.cache = self.forward.new_cache(self._max_length + spare_rows)
        self._cuda_graphs = compile and device.type == "cuda"
        # Padding a compiled step's tree to a bucket bounds the shapes (CUDA graphs record one per shape), and
        # the extra rows are nearly free on a GPU. On a CPU they are real compute (a 1-node step padded to 8
        # costs about 1.4x), while inductor compiles one dynamic-shape graph for all sizes: pad on CUDA only.
        self._pad_trees = self._cuda_graphs if pad_trees is None else bool(pad_trees)
        if self._cuda_graphs:
            # CUDA graphs need the cache at a fixed address. The rotary tables too: the step reads them as graph
            # inputs, and a CUDA graph copies every input not marked static into its own buffers on each replay
            # (the whole [max_length, head_dim] cos and sin tables, every step).
            for tensor in self.cache.tensors + [self.forward.cos, self.forward.sin]:
                torch._dynamo.mark_static_address(tensor)
        # Eager FlexAttention is unfused and slow: if compiling fails, an automatic choice falls back to SDPA.
        # Unpadded (a CPU), tree sizes and prefix lengths change every step: compile SDPA steps for dynamic shapes
        # at once rather than once static and again, seconds into a generation, when the second shape arrives.
        # (Inductor's CPU FlexAttention kernel does not build with dynamic shapes: it keeps the default.)
        self._step = CompiledStep(self._verify_pass, enabled=compile,
                                  mode="reduce-overhead" if device.type == "cuda" else None,
                                  dynamic=True if not self._pad_trees and attention == "sdpa" else None,
                                  on_fallback=(lambda: setattr(self, "attention", "sdpa")) if chosen else None)
        self._masks = mask_builders()  # FlexAttention's block tensors kept per layout, not rebuilt every step
        compile_commit = self._cuda_graphs if compile_commit is None else bool(compile_commit)
        self._commit_step = CompiledStep(compact_rows, enabled=compile_commit,
                                         mode="reduce-overhead" if device.type == "cuda" else None,
                                         what="verifier's commit")
        self._base: Optional[torch.Tensor] = None  # [1]: the verified tree's first cache row, on the device
        self._buffers = PerShape(self._tree_buffers)
        self._padded = PerShape(self._padded_buffers)
        self.reset()

    # ---- Verifier protocol -------------------------------------------------------------
    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def device(self) -> torch.device:
        return self.forward.device

    @property
    def vocab_size(self) -> int:
        return output_vocab_size(self.model)

    @property
    def cached_length(self) -> int:
        return self._cached

    @property
    def compiled(self) -> bool:
        return self._step.compiled

    def reset(self) -> None:
        # Stale rows need no clearing: a pass only attends to rows it or a commit wrote.
        self._cached = 0
        self._pending = PendingTree()

    @torch.no_grad()
    def prefill(self, tokens: torch.Tensor) -> torch.Tensor:
        """Cache ``tokens`` ``[m]``; returns their hidden states ``[m, H]`` (``[m, k * H]`` for ``k`` captured layers)."""
        return self._prefill(tokens, False)[0]

    @torch.no_grad()
    def prefill_root(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``prefill``, and the next-token logits after the last token ``[V]`` (``PrefillsRoot``)."""
        hidden, logits = self._prefill(tokens, "last")
        return hidden, logits[0]

    def _prefill(self, tokens: torch.Tensor, logits) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        check_prefill_tokens(tokens, scored=bool(logits))
        self._pending.check_free("prefill")
        m, start, device = tokens.shape[0], self._cached, self.forward.device
        if m == 0:
            width = hidden_size(self.model) * max(len(self._capture), 1)
            return torch.empty(0, width, dtype=self.forward.dtype, device=device), None
        check_room(start + m - 1, self._max_length, start + m, self.cache.rows)
        offsets = torch.arange(m, device=device)
        positions = offsets + start
        # Prompts vary in length, so the prefill runs eagerly with SDPA; only the verify step is compiled.
        if start == 0 and self.forward.window is None:
            mask, kernel = None, causal_attention  # no mask: SDPA's fused causal kernels apply
        else:
            chain = causal(offsets, offsets, self.forward.window)
            mask, kernel = sdpa_mask(chain, start, start + m, positions, self.forward.window), KERNELS["sdpa"]
        with forward_region():
            hidden, scores = self.forward(tokens.to(device), positions, positions, self.cache.keys,
                                          self.cache.values, start + m, mask, kernel, self._capture, logits=logits)
        self._cached += m
        return hidden, scores

    @torch.no_grad()
    def verify(self, draft: Draft) -> Verification:
        self._pending.check_free("verify")
        tree, start = draft.tree, self._cached
        n = tree.num_nodes
        check_room(start + tree.max_depth, self._max_length, start + n, self.cache.rows)
        buffers = self._buffers(tree)
        positions = buffers.depths + start
        rows = buffers.offsets + start
        tokens = draft.tokens.to(self.forward.device)
        attend = start + n
        if self._step.compiled:
            # A compiled step sees a bounded set of shapes (each new one a recompile, or a CUDA graph recorded):
            # the tree padded to a bucket, the rows attended to rounded up geometrically (shape_buckets).
            width = tree_bucket(n) if self._pad_trees else n
            if width > n and start + width <= self.cache.rows:  # near the cache's end, run unpadded
                buffers = self._padded(tree)
                positions, rows = buffers.depths + start, buffers.offsets + start
                tokens = torch.nn.functional.pad(tokens, (0, width - n))
            attend = min(attend_bucket(start + buffers.offsets.shape[0], self.PAD_TO), self.cache.rows)
        mask = self._masks[self.attention](buffers.ancestors, start, attend, positions, self.forward.window)
        with forward_region():
            if self._cuda_graphs:
                torch.compiler.cudagraph_mark_step_begin()
            hidden, logits = self._step(tokens, positions, rows, self.cache.keys, self.cache.values, attend, mask)
            hidden, logits = hidden[:n], logits[:n]  # padding nodes' outputs dropped
            if self._cuda_graphs and self._step.compiled:
                # A graph replay reuses its output memory; the drafter and acceptor hold these across steps.
                hidden, logits = hidden.clone(), logits.clone()
        self._pending.hold(tree)
        self._base = rows[:1]  # = the prefix length (offsets start at 0): commit's compaction reads it there
        return Verification(tree=tree, logits=logits, hidden_states=hidden)

    def commit(self, path: tuple[int, ...]) -> None:
        path = self._pending.release(path)
        if moves_rows(path):
            offsets = path_tensor(path, self.forward.device)
            if self._commit_step.compiled:
                if self._cuda_graphs:
                    torch.compiler.cudagraph_mark_step_begin()
                self._commit_step(self.cache.tensors, offsets, self._base)
            else:
                self.cache.compact(self._cached, offsets + self._cached)
        self._cached += len(path)

    # ---- helpers ---------------------------------------------------------------------------
    def _verify_pass(self, tokens, positions, rows, keys, values, attend, mask):
        return self.forward(tokens, positions, rows, keys, values, attend, mask, KERNELS[self.attention],
                            self._capture)

    def _padded_buffers(self, tree: CandidateTree) -> TreeBuffers:
        """``_tree_buffers`` with padding nodes up to ``tree_bucket(n)``: each sees the prefix and itself only (a
        row with nothing visible would be NaN), sits at the root's position, and writes a scratch row past the
        tree; no real node sees them and commit never moves their rows."""
        real, n = self._buffers(tree), tree.num_nodes
        width = tree_bucket(n)
        ancestors = torch.eye(width, dtype=torch.bool, device=real.ancestors.device)
        ancestors[:n, :n] = real.ancestors
        depths = torch.zeros(width, dtype=torch.int64, device=real.depths.device)
        depths[:n] = real.depths
        return TreeBuffers(ancestors=ancestors, depths=depths, offsets=torch.arange(width, device=depths.device))

    def _tree_buffers(self, tree: CandidateTree) -> TreeBuffers:
        device, depths = self.forward.device, tree.depths.to(torch.int64)
        ancestors = tree.ancestor_mask & in_window(depths[:, None], depths[None, :], self.forward.window)
        return TreeBuffers(ancestors=ancestors.to(device), depths=depths.to(device),
                           offsets=torch.arange(tree.num_nodes, device=device))
