"""EAGLE drafter (Li et al., 2024, "EAGLE: Speculative Sampling Requires Rethinking Feature Uncertainty";
EAGLE-2's dynamic trees: "EAGLE-2: Faster Inference of Language Models with Dynamic Draft Trees").

EAGLE drafts at the feature level: it predicts the target's next last-layer hidden state
(the *feature*) and reads tokens off it with the target's own lm_head. The input at drafter
position t is the pair of the feature ``f_t`` (which produced token ``x_{t+1}``) and that token:

    z_t = fc([E(x_{t+1}) ; f_t])          (2H -> H, optional bias; E: the model's frozen embedding)
    f̂_{t+1} = DecoderLayer(z_t)            (one layer of the model's own architecture, causal over the
                                          pairs, its first block without an input norm)
    logits for x_{t+2} = lm_head(f̂_{t+1})  (the model's frozen lm_head, shared)

Committed positions use the target's true features; further down a tree a node's feature is its
parent's prediction ``f̂``. The drafter keeps the layer's KV cache across steps
(:class:`spec.runtime.draft_layer.DraftLayerCache`): at each step the pairs newly committed along
the accepted path (the target's features from ``commit`` with the tokens that followed them, the
last one the root) are appended first, so the keys the tree nodes computed from predicted features
are never kept, as in EAGLE's own implementation. The tree is then filled depth by depth, each depth
one batched pass over the nodes with children: top-k per node (deterministic) or siblings drawn from
``softmax(logits / T)`` (sampled kinds), with each node's cumulative path log-probability as its
confidence, so ``DynamicTreeBuilder`` (EAGLE-2) prunes the same drafts.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from spec.drafters.base import HeadDrafter
from spec.drafters.blocks import project
from spec.drafters.sampled import candidate_sampling
from spec.drafters.tree_filling import DepthStep, fill_depth_by_depth
from spec.errors import ShapeError
from spec.models import hidden_size, lm_head, output_vocab_size
from spec.protocols import CandidateTree, Draft, DraftContext, SamplingParams
from spec.runtime import build_decoder_layer
from spec.runtime.compiled import CompiledStep
from spec.runtime.shapes import attend_bucket
from spec.runtime.draft_layer import DraftLayerCache, causal_rows, check_draft_room, tree_visibility

_LAYER = "EAGLE draft layer"


class EagleHeads(nn.Module):
    """The trainable part of an EAGLE drafter: ``fc`` (2H -> H) and one decoder layer without an input norm.

    ``forward_layer(z, attention)`` runs the layer given how to attend (cached or teacher-forced).
    ``max_depth``: how deep a tree the drafter fills (it has one layer for every depth).
    """

    def __init__(self, layer: nn.Module, hidden: int, vocab: int, max_depth: int, fc_bias: bool) -> None:
        super().__init__()
        if max_depth < 1:
            raise ValueError(f"EAGLE needs max_depth >= 1, got {max_depth}.")
        if not isinstance(fc_bias, bool):
            raise ValueError(f"fc_bias must be true or false, got {fc_bias!r}.")
        self.hidden, self.vocab, self.max_depth = hidden, vocab, max_depth
        self.fc = nn.Linear(2 * hidden, hidden, bias=fc_bias)
        # EAGLE's first (only) block has no input norm: fc's output goes straight into attention.
        layer.input_layernorm = nn.Identity()
        self.layer = layer
        # fc starts as "take the feature" (an identity on its second half), so with the layer's
        # residual projections at zero the untrained drafter predicts f̂_{t+1} = f_t.
        with torch.no_grad():
            if not self.fc.weight.is_meta:
                self.fc.weight.zero_()
                self.fc.weight[:, hidden:] = torch.eye(hidden, dtype=self.fc.weight.dtype)

    def read(self, features: torch.Tensor) -> torch.Tensor:
        """The target's features ``[..., H]`` as a pair's feature: as they are (EAGLE-3 fuses its layers here)."""
        return features

    def step(self, embedded: torch.Tensor, features: torch.Tensor, attention) -> torch.Tensor:
        """Pairs (``E(x)``, ``f``) ``[..., H]`` each -> predicted features ``[..., H]``; ``attention(h)`` runs the
        layer's attention on its input ``h`` (cached when drafting, teacher-forced when training)."""
        z = self.fc(torch.cat([embedded, features], dim=-1))
        x = z + attention(self.layer.input_layernorm(z))
        return x + self.layer.mlp(self.layer.post_attention_layernorm(x))


class EagleDrafter(HeadDrafter):
    """Drafts a tree with EAGLE: one decoder layer over (token, feature) pairs, depth by depth."""

    drafter_type = "eagle"
    # Compiled, every pass attends over the rows in use rounded up to a bucket (rows past the tree hidden) and reads
    # the committed count from a tensor, so the shapes change a few times per doubling of the sequence, not every
    # step; the commit's few pairs are padded to a fixed count. Eager, passes attend over the rows in use only.
    compilable = True
    hyperparameter_names = frozenset({"hidden_size", "vocab_size", "max_depth", "fc_bias"})

    def __init__(self, model, heads: EagleHeads, candidates: str = "top_k") -> None:
        super().__init__(model, heads, candidates)
        self.embedding = self.input_embedding(model, heads.hidden, "EAGLE")
        self.lm_head = lm_head(model)
        self._cache = DraftLayerCache(model, heads.layer.self_attn, _LAYER)
        self._pending: list[torch.Tensor] = []
        self._root_prediction: Optional[torch.Tensor] = None
        self._compiled_flush: Optional[CompiledStep] = None

    @classmethod
    def from_model(cls, model, max_depth: int = 5, fc_bias: bool = False, seed: Optional[int] = None,
                   candidates: str = "top_k") -> "EagleDrafter":
        """Fresh (untrained) EAGLE heads for ``model``: untrained, they predict that the feature stays the same."""
        hyper = {"hidden_size": hidden_size(model), "vocab_size": output_vocab_size(model), "max_depth": max_depth,
                 "fc_bias": fc_bias}
        return cls.fresh(model, hyper, seed, candidates)

    def hyperparameters(self) -> dict:
        return {"hidden_size": self.heads.hidden, "vocab_size": self.heads.vocab, "max_depth": self.heads.max_depth,
                "fc_bias": self.heads.fc.bias is not None}

    @classmethod
    def build_heads(cls, model, hyper: dict) -> EagleHeads:
        layer = build_decoder_layer(model, _LAYER)  # first: refuses unsupported architectures
        return EagleHeads(layer, hyper["hidden_size"], hyper["vocab_size"], hyper["max_depth"], hyper["fc_bias"])

    @property
    def num_heads(self) -> int:
        """One layer serves every depth; ``max_depth`` is how deep it is allowed to draft."""
        return self.heads.max_depth

    def compile(self, enabled: bool = True):
        """``HeadDrafter.compile``, and the pass over each step's newly committed pairs too (padded to
        ``max_depth + 1`` pairs, the most a step commits; a longer one, such as the prompt, runs eagerly)."""
        super().compile(enabled)
        self._compiled_flush = CompiledStep(self._flush_padded, enabled=True, what="drafter") if enabled else None
        return self

    @property
    def compiled(self) -> bool:
        return super().compiled and self._compiled_flush is not None and self._compiled_flush.compiled

    # ---- the drafter's own cache --------------------------------------------------------------
    def reset_context(self) -> None:
        self._cache.reset()
        self._pending = []
        self._root_prediction: Optional[torch.Tensor] = None

    def extend_context(self, hidden_states: torch.Tensor) -> None:
        # The token each feature is paired with (the one it produced) is known only at the next propose.
        self._pending.append(hidden_states)

    def run_pairs(self, tokens: torch.Tensor, features: torch.Tensor, positions: torch.Tensor, rows: torch.Tensor,
                  visible: torch.Tensor) -> torch.Tensor:
        """Pairs ``(x, f)`` ``[m]``, ``[m, H]`` through the layer over the cache -> predicted features ``[m, H]``."""
        attn = self.heads.layer.self_attn
        return self.heads.step(self.embedding(tokens), features,
                               lambda h: self._cache.run(attn, h, positions, rows, visible))

    def vocabulary(self) -> Optional[tuple[torch.Tensor, Optional[torch.Tensor]]]:
        """The projection :meth:`logits` reads: the lm_head restricted to the draft vocabulary, looked up once per
        draft outside the traced function (the lookup checks a cache, which a compiled graph cannot)."""
        return self.projection(self.lm_head)

    def logits(self, predicted: torch.Tensor,
               vocabulary: Optional[tuple[torch.Tensor, Optional[torch.Tensor]]] = None) -> torch.Tensor:
        """Predicted features ``[N, H]`` -> logits ``[N, V]`` (``[N, K]`` with a draft vocabulary)."""
        return project(predicted, *(self.vocabulary() if vocabulary is None else vocabulary))

    def _flush(self, context: DraftContext, static: bool) -> torch.Tensor:
        """Append the committed pairs not yet in the cache; returns the prediction at the root's pair ``[H]``.
        ``static``: through the compiled pass when the pairs fit its padding."""
        weight = self.heads.fc.weight
        start, end = self._cache.committed, context.position
        if not self._pending and start == end and self._root_prediction is not None:
            return self._root_prediction  # proposing again without a commit in between
        features = torch.cat(self._pending).to(device=weight.device, dtype=weight.dtype)
        m = end - start
        if features.shape[0] != m:
            raise ShapeError(f"The EAGLE drafter holds {features.shape[0]} new features for {m} new pairs; "
                             "commit every token the verifier caches, and reset before a new sequence.")
        tokens = context.tokens[start + 1: end + 1].to(weight.device)  # the token each feature produced
        pad = self.heads.max_depth + 1
        if static and self._compiled_flush is not None and m <= pad:
            # Padding pairs write rows end .. start + pad - 1: the root's scratch row and tree rows, which this
            # step's nodes overwrite before anything reads them.
            check_draft_room(self._cache, start + pad, 0)
            last = torch.tensor([m - 1], device=weight.device)
            prediction = self._compiled_flush(torch.nn.functional.pad(tokens, (0, pad - m)),
                                              torch.nn.functional.pad(features, (0, 0, 0, pad - m)),
                                              torch.tensor(start, device=weight.device), last,
                                              min(attend_bucket(start + pad), self._cache.rows))
        else:
            check_draft_room(self._cache, end, 0)
            rows = torch.arange(start, end, device=weight.device)
            prediction = self.run_pairs(tokens, self.heads.read(features), rows, rows, causal_rows(rows, end))[-1]
        self._cache.committed, self._pending = end, []
        self._root_prediction = prediction
        return prediction

    def _flush_padded(self, tokens: torch.Tensor, features: torch.Tensor, start: torch.Tensor,
                      last: torch.Tensor, width: int) -> torch.Tensor:
        """The committed pairs padded to a fixed count ``[p]``, ``[p, F]`` from row ``start`` ``[]``, attending
        over rows ``0 .. width - 1`` -> the prediction at pair ``last`` ``[1]`` ``[H]`` (what :meth:`compile`
        compiles)."""
        rows = start + torch.arange(tokens.shape[0], device=tokens.device)
        out = self.run_pairs(tokens, self.heads.read(features), rows, rows, causal_rows(rows, width))
        return out.index_select(0, last)[0]

    def draft(self, tree: CandidateTree, context: DraftContext, sampling: SamplingParams,
              generator: Optional[torch.Generator], hidden: torch.Tensor) -> Draft:
        device = self.heads.fc.weight.device
        sampled = candidate_sampling(self.candidates, sampling, generator)
        static = sampled is None and self.compiled_fill is not None
        root_prediction = self._flush(context, static)
        committed = self._cache.committed  # = context.position: pairs 0 .. position - 1
        check_draft_room(self._cache, committed, tree.num_nodes)
        # Compiled: attend over the rows in use rounded up to a bucket, so the shapes change only a few times
        # per doubling of the sequence (each bucket one compile).
        width = committed + tree.num_nodes
        if static:
            width = min(attend_bucket(width), self._cache.rows)
        base = torch.tensor(committed, device=device)
        # Row 0: the root pair's prediction; row j: node j's (filled as depths are run).
        predicted = torch.empty(tree.num_nodes, self.heads.hidden, device=device, dtype=root_prediction.dtype)
        predicted[0] = root_prediction
        parents = torch.tensor(tree.parents, device=device)
        ancestors = tree.ancestor_mask.to(device)
        vocabulary = self.vocabulary()

        def next_logits(step: DepthStep, tokens: torch.Tensor) -> torch.Tensor:
            if step.depth > 0:
                nodes = step.nodes
                # A node's pair sits one position past its parent's: position - 1 + depth.
                positions = (base + (step.depth - 1)).expand(nodes.shape[0])
                predicted[nodes] = self.run_pairs(tokens[nodes], predicted[parents[nodes]], positions, base + nodes,
                                                  tree_visibility(ancestors[nodes], base, width))
            return self.logits(predicted[step.nodes], vocabulary)

        return fill_depth_by_depth(tree, context.root_token, next_logits, device, sampled, self.draft_vocab,
                                   self.compiled_fill)
