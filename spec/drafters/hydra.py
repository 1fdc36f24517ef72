"""Hydra heads (Ankner et al., 2024, "Hydra: Sequentially-Dependent Draft Heads for Medusa Decoding").

Medusa's heads guess every depth from one hidden state, blind to what the heads
above them chose. A Hydra head also reads the tokens drafted on its path: the head
for depth d (1-based) sees

    [h ; E(root) ; E(x_1) ; ... ; E(x_{d-1})]        ((d + 1) * H features)

where h is the target's hidden state at the position before the root and E the
model's own, frozen input embedding. Its first block is a ResBlock over that
concatenation with a learned residual projection down to H, then come further
distinct ResBlocks and its own vocabulary projection (initialised from the lm_head).
So the tree is filled depth by depth, each head called once per depth on all the
nodes it expands.

Hydra++ (same paper) is this class with options:

* ``prefix_layer``: one decoder layer of the model's own architecture over the
  target's hidden states at every committed position (its own KV cache, kept in
  step through ``commit``); its output at the position before the root replaces h,
  so the heads see the whole context, not one position;
* ``num_layers``: deeper heads (Hydra++ uses 4 ResBlocks per head);
* ``dropout``: on each block's SiLU branch, active in training mode only.

Hydra++'s other change, distilling from the base model's distribution instead of
the data, is a training objective, not an architecture, so it has no switch here.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from spec.drafters.blocks import ProjectedResBlock, ResBlock, copy_lm_head_into_heads, head_body, project
from spec.drafters.base import HeadDrafter
from spec.runtime import ContextLayerCache, build_decoder_layer
from spec.drafters.sampled import candidate_sampling
from spec.drafters.tree_filling import DepthStep, fill_depth_by_depth
from spec.models import hidden_size, lm_head, output_vocab_size
from spec.protocols import CandidateTree, Draft, DraftContext, SamplingParams

_PREFIX_LAYER = "Hydra++ prefix layer"


class HydraHeads(nn.Module):
    """The trainable part of a Hydra drafter: ``num_heads`` heads and, for Hydra++, the prefix layer.

    Head k (0-based, drafting depth k + 1) maps ``(k + 2) * hidden`` features to
    vocabulary logits: a :class:`ProjectedResBlock`, ``num_layers - 1`` ResBlocks, a
    vocabulary projection.
    """

    def __init__(self, hidden: int, vocab: int, num_heads: int, num_layers: int, dropout: float = 0.0,
                 lm_head_bias: bool = False, prefix_layer: Optional[nn.Module] = None) -> None:
        super().__init__()
        if num_heads < 1 or num_layers < 1:
            raise ValueError(
                f"Hydra needs num_heads >= 1 and num_layers >= 1 (the first block reads the token embeddings), "
                f"got {num_heads}, {num_layers}."
            )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}.")
        self.hidden, self.vocab = hidden, vocab
        self.num_layers, self.dropout = num_layers, dropout
        self.heads = nn.ModuleList(
            nn.Sequential(
                ProjectedResBlock((k + 2) * hidden, hidden, dropout),
                *[ResBlock(hidden, dropout) for _ in range(num_layers - 1)],
                nn.Linear(hidden, vocab, bias=lm_head_bias),
            )
            for k in range(num_heads)
        )
        self.prefix_layer = prefix_layer

    def init_from_lm_head(self, lm_head: nn.Linear) -> None:
        copy_lm_head_into_heads(self.heads, lm_head)


class HydraDrafter(HeadDrafter):
    """Drafts a tree with Hydra (or Hydra++) heads: node at depth d, rank r gets the r-th most likely
    token of head d given the hidden state and the tokens on the node's path."""

    drafter_type = "hydra"
    compilable = True
    hyperparameter_names = frozenset({"num_heads", "num_layers", "hidden_size", "vocab_size", "lm_head_bias",
                                      "prefix_layer", "dropout"})

    def __init__(self, model, heads: HydraHeads, candidates: str = "top_k") -> None:
        super().__init__(model, heads, candidates)
        self.embedding = self.input_embedding(model, heads.hidden, "Hydra heads")
        self._prefix = None if heads.prefix_layer is None else ContextLayerCache(model, heads.prefix_layer, _PREFIX_LAYER)

    @classmethod
    def from_model(cls, model, num_heads: int = 4, num_layers: int = 1, prefix_layer: bool = False,
                   dropout: float = 0.0, seed: Optional[int] = None, candidates: str = "top_k") -> "HydraDrafter":
        """Fresh (untrained) Hydra heads for ``model``, in its dtype and on its device.

        Untrained, every head is the model's lm_head applied to h (or, with the
        prefix layer, to h passed through an identity-initialised layer).
        """
        hyper = {"num_heads": num_heads, "num_layers": num_layers, "hidden_size": hidden_size(model),
                 "vocab_size": output_vocab_size(model), "prefix_layer": prefix_layer, "dropout": dropout,
                 "lm_head_bias": getattr(lm_head(model), "bias", None) is not None}
        return cls.fresh(model, hyper, seed, candidates)

    @classmethod
    def hydra_plus_plus(cls, model, num_heads: int = 4, num_layers: int = 4, dropout: float = 0.0,
                        seed: Optional[int] = None, candidates: str = "top_k") -> "HydraDrafter":
        """Fresh Hydra++ heads: the prefix layer and deeper (4-block) heads."""
        return cls.from_model(model, num_heads, num_layers, prefix_layer=True, dropout=dropout, seed=seed,
                              candidates=candidates)

    def hyperparameters(self) -> dict:
        return {"num_heads": self.num_heads, "num_layers": self.heads.num_layers, "hidden_size": self.heads.hidden,
                "vocab_size": self.heads.vocab, "lm_head_bias": self.heads.heads[0][-1].bias is not None,
                "prefix_layer": self.heads.prefix_layer is not None, "dropout": self.heads.dropout}

    @classmethod
    def build_heads(cls, model, hyper: dict) -> HydraHeads:
        layer = build_decoder_layer(model, _PREFIX_LAYER) if hyper["prefix_layer"] else None
        return HydraHeads(hyper["hidden_size"], hyper["vocab_size"], hyper["num_heads"], hyper["num_layers"],
                          hyper["dropout"], lm_head_bias=hyper["lm_head_bias"], prefix_layer=layer)

    def context_layers(self) -> tuple[ContextLayerCache, ...]:
        return () if self._prefix is None else (self._prefix,)

    def reset_context(self) -> None:
        if self._prefix is not None:
            self._prefix.reset()

    def extend_context(self, hidden_states: torch.Tensor) -> None:
        if self._prefix is not None:
            self._prefix.defer(hidden_states)

    def draft(self, tree: CandidateTree, context: DraftContext, sampling: SamplingParams,
              generator: Optional[torch.Generator], hidden: torch.Tensor) -> Draft:
        weight = self.heads.heads[0][-1].weight
        if self._prefix is not None:
            h = self._prefix.output_for(context.position)
        else:
            h = hidden.to(device=weight.device, dtype=weight.dtype)

        heads = self.heads.heads
        # Each depth's vocabulary projection, restricted to the draft vocabulary outside the traced function.
        projections = [self.projection(heads[d][-1]) for d in range(tree.max_depth)]

        def next_logits(step: DepthStep, tokens: torch.Tensor) -> torch.Tensor:
            path_embeddings = self.embedding(tokens[step.paths]).flatten(1)  # [N, (depth + 1) * H]
            inputs = torch.cat([h.expand(path_embeddings.shape[0], -1), path_embeddings], dim=1)
            return project(head_body(heads[step.depth], inputs), *projections[step.depth])

        return fill_depth_by_depth(tree, context.root_token, next_logits, weight.device,
                                   candidate_sampling(self.candidates, sampling, generator), self.draft_vocab,
                                   self.compiled_fill)
