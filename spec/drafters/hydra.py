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

import os
from typing import Optional

import torch
from torch import nn

from spec.drafters.blocks import ProjectedResBlock, ResBlock, copy_lm_head_into_heads
from spec.drafters.base import HeadDrafter
from spec.drafters.checkpointing import (
    check_model_dims,
    check_same_placement,
    load_drafter,
    load_state_strict,
    save_drafter,
)
from spec.drafters.context_layer import ContextLayerCache, build_decoder_layer
from spec.drafters.sampled import candidate_sampling, check_candidate_mode
from spec.drafters.tree_filling import DepthStep, check_tree_fits, fill_depth_by_depth, root_only_draft
from spec.errors import ShapeError, UnsupportedError
from spec.models import hidden_size, output_vocab_size
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
    _hyperparameters = {"num_heads", "num_layers", "hidden_size", "vocab_size", "lm_head_bias", "prefix_layer",
                        "dropout"}

    def __init__(self, model, heads: HydraHeads, candidates: str = "top_k") -> None:
        check_model_dims(model, vocab_size=heads.vocab, hidden=heads.hidden, what="These Hydra heads")
        check_same_placement(model, heads, "These Hydra heads")
        embedding = model.get_input_embeddings()
        if embedding is None or embedding.weight.shape[1] != heads.hidden:
            raise UnsupportedError(
                f"Hydra heads read the model's input embeddings alongside its hidden states, so their widths must "
                f"match; {type(model).__name__}'s input embedding is not {heads.hidden} wide."
            )
        self.candidates = check_candidate_mode(candidates, "HydraDrafter")
        self.model = model
        self.heads = heads.eval()  # dropout is for training; drafting is deterministic
        self.embedding = embedding
        self._prefix = None if heads.prefix_layer is None else ContextLayerCache(model, heads.prefix_layer, _PREFIX_LAYER)

    @classmethod
    def from_model(cls, model, num_heads: int = 4, num_layers: int = 1, prefix_layer: bool = False,
                   dropout: float = 0.0, seed: Optional[int] = None, candidates: str = "top_k") -> "HydraDrafter":
        """Fresh (untrained) Hydra heads for ``model``, in its dtype and on its device.

        Untrained, every head is the model's lm_head applied to h (or, with the
        prefix layer, to h passed through an identity-initialised layer).
        """
        lm_head = model.get_output_embeddings()
        if seed is not None:
            torch.manual_seed(seed)
        layer = build_decoder_layer(model, _PREFIX_LAYER) if prefix_layer else None
        heads = HydraHeads(hidden_size(model), output_vocab_size(model), num_heads, num_layers, dropout,
                           lm_head_bias=getattr(lm_head, "bias", None) is not None, prefix_layer=layer)
        heads.to(device=lm_head.weight.device, dtype=lm_head.weight.dtype)
        heads.init_from_lm_head(lm_head)
        return cls(model, heads, candidates)

    @classmethod
    def hydra_plus_plus(cls, model, num_heads: int = 4, num_layers: int = 4, dropout: float = 0.0,
                        seed: Optional[int] = None, candidates: str = "top_k") -> "HydraDrafter":
        """Fresh Hydra++ heads: the prefix layer and deeper (4-block) heads."""
        return cls.from_model(model, num_heads, num_layers, prefix_layer=True, dropout=dropout, seed=seed,
                              candidates=candidates)

    # ---- checkpoints ----------------------------------------------------------------------
    def save_pretrained(self, directory: str | os.PathLike) -> None:
        hyper = {
            "num_heads": self.num_heads,
            "num_layers": self.heads.num_layers,
            "hidden_size": self.heads.hidden,
            "vocab_size": self.heads.vocab,
            "lm_head_bias": self.heads.heads[0][-1].bias is not None,
            "prefix_layer": self.heads.prefix_layer is not None,
            "dropout": self.heads.dropout,
        }
        save_drafter(directory, self.heads, self.drafter_type, hyper, self.fingerprint)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, model, candidates: str = "top_k") -> "HydraDrafter":
        hyper, state = load_drafter(directory, model, cls.drafter_type, cls._hyperparameters)
        layer = build_decoder_layer(model, _PREFIX_LAYER) if hyper["prefix_layer"] else None
        heads = HydraHeads(hyper["hidden_size"], hyper["vocab_size"], hyper["num_heads"], hyper["num_layers"],
                           hyper["dropout"], lm_head_bias=hyper["lm_head_bias"], prefix_layer=layer)
        weight = model.get_output_embeddings().weight
        heads.to(device=weight.device, dtype=weight.dtype)
        load_state_strict(heads, state, directory)
        return cls(model, heads, candidates)

    # ---- Drafter protocol ----------------------------------------------------------------
    def reset(self) -> None:
        if self._prefix is not None:
            self._prefix.reset()

    def commit(self, tokens: torch.Tensor, hidden_states: torch.Tensor) -> None:
        if tokens.shape[0] != hidden_states.shape[0]:
            raise ShapeError(f"commit got {tokens.shape[0]} tokens but {hidden_states.shape[0]} hidden states.")
        if self._prefix is not None:
            self._prefix.append(hidden_states)

    @torch.no_grad()
    def propose(self, tree: CandidateTree, context: DraftContext, sampling: SamplingParams,
                generator: Optional[torch.Generator] = None) -> Draft:
        check_tree_fits(tree, self.num_heads, self.draft_vocab_size, "Hydra drafter")
        weight = self.heads.heads[0][-1].weight
        if context.prev_hidden is None or tree.num_nodes == 1:
            # No hidden state yet (one-token prompt): nothing to draft from this step.
            return root_only_draft(context.root_token, weight.device)
        if self._prefix is not None:
            h = self._prefix.output_for(context.position)
        else:
            h = context.prev_hidden.to(device=weight.device, dtype=weight.dtype)

        def next_logits(step: DepthStep, tokens: torch.Tensor) -> torch.Tensor:
            path_embeddings = self.embedding(tokens[step.paths]).flatten(1)  # [N, (depth + 1) * H]
            inputs = torch.cat([h.expand(path_embeddings.shape[0], -1), path_embeddings], dim=1)
            head = self.heads.heads[step.depth]
            if self.draft_vocab is None:
                return head(inputs)
            return self.draft_vocab.project([head[-1]], head[:-1](inputs)[None])[0]

        return fill_depth_by_depth(tree, context.root_token, next_logits, weight.device,
                                   candidate_sampling(self.candidates, sampling, generator), self.draft_vocab)
