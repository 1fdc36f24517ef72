"""Clover heads (Xiao et al., 2024, "Clover: Regressive Lightweight Speculative Decoding with
Sequential Knowledge").

Clover keeps Medusa's cheap per-depth heads but feeds each one the token drafted
before it, and re-aligns the target's hidden states for looking ahead. Our reading
of the paper, as built here:

* **Augmenting block**: one extra transformer decoder layer, of the model's own
  architecture, over the target's last hidden states at every position. It runs
  once per step (on ``commit``, over the newly committed positions, with its own
  KV cache). The target's final states are trained for the next token only; this
  trainable layer lets them be reshaped for guessing further ahead. Its output
  ``a`` at the position before the root is where drafting starts: ``s_0 = a``.
* **Regressive connection**: the head for depth d sees the token drafted at depth
  d - 1 on its path (the root for d = 1), through the model's frozen input
  embedding ``E``.
* **Attention decoder** (one, shared by all depths): the query is that token's
  embedding; the keys and values are the embedding itself and the path's states
  ``s_0 .. s_{d-1}``. Its output, added to ``s_{d-1}``, is ``s_d``, the state the node
  hands down to its children. Sequential knowledge flows down the path like an
  RNN's state, and the decoder can attend back to any earlier state on the path.
* **Heads**: head d applies its own MLP (ResBlocks) and RMSNorm to ``s_d``; the
  target's frozen lm_head turns that into logits. Clover adds no vocabulary
  projection, which is why it is much lighter than Medusa or Hydra.

The output projections of the augmenting block and of the attention decoder start
at zero, so untrained, every path state is the target's own hidden state and each
head starts from the lm_head's ranking of it (shifted only by its ResBlocks' biases).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from spec.drafters.blocks import ResBlock, project
from spec.drafters.base import HeadDrafter
from spec.runtime import ContextLayerCache, build_decoder_layer
from spec.drafters.sampled import candidate_sampling
from spec.drafters.tree_filling import DepthStep, fill_depth_by_depth
from spec.models import hidden_size, lm_head, output_vocab_size
from spec.protocols import CandidateTree, Draft, DraftContext, SamplingParams

_AUGMENTING_BLOCK = "Clover augmenting block"


class AttentionDecoder(nn.Module):
    """``s_d = s_{d-1} + O · Attn(q = Q·norm(e), k, v = K, V · [norm(e); norm(s_0 .. s_{d-1})])``.

    Multi-head attention with ``num_attention_heads`` heads over a handful of
    positions (the path), so no mask is needed: every state on the path is visible.
    """

    def __init__(self, hidden: int, num_attention_heads: int, eps: float) -> None:
        super().__init__()
        if hidden % num_attention_heads:
            raise ValueError(f"num_attention_heads {num_attention_heads} does not divide the hidden size {hidden}.")
        self.num_attention_heads = num_attention_heads
        self.token_norm = nn.RMSNorm(hidden, eps=eps)
        self.state_norm = nn.RMSNorm(hidden, eps=eps)
        self.query = nn.Linear(hidden, hidden, bias=False)
        self.key = nn.Linear(hidden, hidden, bias=False)
        self.value = nn.Linear(hidden, hidden, bias=False)
        self.output = nn.Linear(hidden, hidden, bias=False)
        nn.init.zeros_(self.output.weight)

    def forward(self, token_embedding: torch.Tensor, path_states: torch.Tensor) -> torch.Tensor:
        """``token_embedding`` ``[N, H]``, ``path_states`` ``[N, d, H]`` (``s_0`` first) -> ``s_d`` ``[N, H]``."""
        token = self.token_norm(token_embedding)[:, None]  # [N, 1, H]
        memory = torch.cat([token, self.state_norm(path_states)], dim=1)  # [N, d + 1, H]
        q, k, v = self._split(self.query(token)), self._split(self.key(memory)), self._split(self.value(memory))
        attended = nn.functional.scaled_dot_product_attention(q, k, v)  # [N, heads, 1, H / heads]
        return path_states[:, -1] + self.output(attended.transpose(1, 2).flatten(1))

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        """``[N, L, H]`` -> ``[N, heads, L, H / heads]``."""
        return x.unflatten(-1, (self.num_attention_heads, -1)).transpose(1, 2)


class CloverHeads(nn.Module):
    """The trainable part of a Clover drafter: augmenting block, attention decoder, per-head MLP + norm."""

    def __init__(self, hidden: int, num_heads: int, num_layers: int, num_attention_heads: int, eps: float,
                 augmenting_layer: nn.Module) -> None:
        super().__init__()
        if num_heads < 1 or num_layers < 0:
            raise ValueError(f"Clover needs num_heads >= 1 and num_layers >= 0, got {num_heads}, {num_layers}.")
        self.hidden, self.num_layers, self.eps = hidden, num_layers, eps
        self.augmenting_layer = augmenting_layer
        self.attention_decoder = AttentionDecoder(hidden, num_attention_heads, eps)
        self.heads = nn.ModuleList(
            nn.Sequential(*[ResBlock(hidden) for _ in range(num_layers)], nn.RMSNorm(hidden, eps=eps))
            for _ in range(num_heads)
        )


class CloverDrafter(HeadDrafter):
    """Drafts a tree with Clover heads: node at depth d, rank r gets the r-th most likely token of head d,
    whose state was built down the node's path by the attention decoder."""

    drafter_type = "clover"
    compilable = True
    hyperparameter_names = frozenset({"num_heads", "num_layers", "hidden_size", "vocab_size", "num_attention_heads",
                                      "rms_norm_eps"})

    def __init__(self, model, heads: CloverHeads, candidates: str = "top_k") -> None:
        super().__init__(model, heads, candidates)
        self.embedding = self.input_embedding(model, heads.hidden, "Clover heads")
        self.lm_head = lm_head(model)
        self._augment = ContextLayerCache(model, heads.augmenting_layer, _AUGMENTING_BLOCK)

    @classmethod
    def from_model(cls, model, num_heads: int = 4, num_layers: int = 1, seed: Optional[int] = None,
                   candidates: str = "top_k") -> "CloverDrafter":
        """Fresh (untrained) Clover heads for ``model``, in its dtype and on its device.

        The attention decoder gets the model's number of attention heads and its norms
        the model's RMSNorm epsilon.
        """
        hyper = {"num_heads": num_heads, "num_layers": num_layers, "hidden_size": hidden_size(model),
                 "vocab_size": output_vocab_size(model),
                 # Read leniently: an architecture without them is refused by build_heads with a clear message.
                 "num_attention_heads": getattr(model.config, "num_attention_heads", 1),
                 "rms_norm_eps": float(getattr(model.config, "rms_norm_eps", 1e-6))}
        return cls.fresh(model, hyper, seed, candidates)

    def hyperparameters(self) -> dict:
        return {"num_heads": self.num_heads, "num_layers": self.heads.num_layers, "hidden_size": self.heads.hidden,
                "vocab_size": output_vocab_size(self.model),
                "num_attention_heads": self.heads.attention_decoder.num_attention_heads,
                "rms_norm_eps": self.heads.eps}

    @classmethod
    def build_heads(cls, model, hyper: dict) -> CloverHeads:
        layer = build_decoder_layer(model, _AUGMENTING_BLOCK)  # first: refuses unsupported architectures
        return CloverHeads(hidden_size(model), hyper["num_heads"], hyper["num_layers"], hyper["num_attention_heads"],
                           hyper["rms_norm_eps"], layer)

    def context_layers(self) -> tuple[ContextLayerCache, ...]:
        return (self._augment,)

    def reset_context(self) -> None:
        self._augment.reset()

    def extend_context(self, hidden_states: torch.Tensor) -> None:
        self._augment.defer(hidden_states)

    def draft(self, tree: CandidateTree, context: DraftContext, sampling: SamplingParams,
              generator: Optional[torch.Generator], hidden: torch.Tensor) -> Draft:
        device = self.lm_head.weight.device
        # Row 0: s_0, the augmented state before the root; row i + 1: the state node i hands its children.
        states = torch.empty(tree.num_nodes + 1, self.heads.hidden, device=device, dtype=self.lm_head.weight.dtype)
        states[0] = self._augment.output_for(context.position)
        vocabulary = self.projection(self.lm_head)  # restricted to the draft vocabulary outside the traced function

        def next_logits(step: DepthStep, tokens: torch.Tensor) -> torch.Tensor:
            # The states above each expanding node: s_0, then those of its ancestors (root first).
            above = torch.cat([torch.zeros_like(step.paths[:, :1]), step.paths[:, :-1] + 1], dim=1)
            new_states = self.heads.attention_decoder(self.embedding(tokens[step.nodes]), states[above])
            states[step.nodes + 1] = new_states
            return project(self.heads.heads[step.depth](new_states), *vocabulary)

        return fill_depth_by_depth(tree, context.root_token, next_logits, device,
                                   candidate_sampling(self.candidates, sampling, generator), self.draft_vocab,
                                   self.compiled_fill)
