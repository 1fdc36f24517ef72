"""Medusa heads (Cai et al., 2024, "Medusa: Simple LLM Inference Acceleration Framework
with Multiple Decoding Heads").

Head k reads the target's last hidden state at the position before the root and
guesses the token k + 1 places after the root: residual blocks ``x + SiLU(W x + b)``
(W zero-initialised, so an untrained head starts as the model's own lm_head) and a
vocabulary projection initialised from a copy of the lm_head. Heads are independent:
head k never sees what heads < k proposed, so the top-k of head k fills every node
at depth k + 1 of the tree.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from spec.drafters.blocks import ResBlock, copy_lm_head_into_heads
from spec.drafters.base import HeadDrafter
from spec.drafters.sampled import CANDIDATE_MODES, candidate_sampling
from spec.drafters.tree_filling import fill_depth_by_depth, path_log_confidence
from spec.models import hidden_size, lm_head, output_vocab_size
from spec.protocols import CandidateKind, CandidateTree, Draft, DraftContext, SamplingParams

__all__ = ["CANDIDATE_MODES", "MedusaDrafter", "MedusaHeads", "ResBlock"]  # re-exported: they used to live here


class MedusaHeads(nn.Module):
    """``num_heads`` heads of ``num_layers`` distinct ResBlocks and a vocabulary projection each."""

    def __init__(self, hidden: int, vocab: int, num_heads: int, num_layers: int, lm_head_bias: bool = False) -> None:
        super().__init__()
        if num_heads < 1 or num_layers < 0:
            raise ValueError(f"Medusa needs num_heads >= 1 and num_layers >= 0, got {num_heads}, {num_layers}.")
        self.hidden, self.vocab = hidden, vocab
        self.num_layers = num_layers
        self.heads = nn.ModuleList(
            nn.Sequential(*[ResBlock(hidden) for _ in range(num_layers)], nn.Linear(hidden, vocab, bias=lm_head_bias))
            for _ in range(num_heads)
        )

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """``[..., H]`` -> logits ``[..., num_heads, V]``."""
        return torch.stack([head(hidden_states) for head in self.heads], dim=-2)

    def init_from_lm_head(self, lm_head: nn.Linear) -> None:
        copy_lm_head_into_heads(self.heads, lm_head)


class MedusaDrafter(HeadDrafter):
    """Drafts a tree from Medusa heads: node at depth d, rank r gets head d-1's r-th most likely token.

    ``candidates``: ``"top_k"`` (deterministic, the default), or, when sampling at
    temperature > 0, ``"sample_without_replacement"`` / ``"sample_with_replacement"``
    to draw each node's children from head d's distribution at the sampling
    temperature; the draft then carries that ``q`` for lossless acceptance.
    """

    drafter_type = "medusa"
    hyperparameter_names = frozenset({"num_heads", "num_layers", "hidden_size", "vocab_size", "lm_head_bias"})

    @classmethod
    def from_model(cls, model, num_heads: int = 4, num_layers: int = 1, seed: Optional[int] = None,
                   candidates: str = "top_k") -> "MedusaDrafter":
        """Fresh (untrained) heads for ``model``, in its dtype and on its device."""
        hyper = {"num_heads": num_heads, "num_layers": num_layers, "hidden_size": hidden_size(model),
                 "vocab_size": output_vocab_size(model),
                 "lm_head_bias": getattr(lm_head(model), "bias", None) is not None}
        return cls.fresh(model, hyper, seed, candidates)

    def hyperparameters(self) -> dict:
        return {"num_heads": self.num_heads, "num_layers": self.heads.num_layers, "hidden_size": self.heads.hidden,
                "vocab_size": self.heads.vocab, "lm_head_bias": self.heads.heads[0][-1].bias is not None}

    @classmethod
    def build_heads(cls, model, hyper: dict) -> MedusaHeads:
        return MedusaHeads(hyper["hidden_size"], hyper["vocab_size"], hyper["num_heads"], hyper["num_layers"],
                           lm_head_bias=hyper["lm_head_bias"])

    def draft(self, tree: CandidateTree, context: DraftContext, sampling: SamplingParams,
              generator: Optional[torch.Generator], hidden: torch.Tensor) -> Draft:
        device = self.heads.heads[0][-1].weight.device
        head_logits = self._head_logits(hidden, tree.max_depth)  # [depth, V] or [depth, K]
        sampled = candidate_sampling(self.candidates, sampling, generator)
        if sampled is not None:
            # Heads are independent of the drafted tokens: every node at depth d draws from head d's q.
            return fill_depth_by_depth(
                tree, context.root_token,
                lambda step, tokens: head_logits[step.depth].expand(step.nodes.shape[0], -1), device, sampled,
                self.draft_vocab)
        logprobs = head_logits.float().log_softmax(dim=-1)
        top_logprobs, top_tokens = torch.topk(logprobs, tree.max_rank + 1, dim=-1)  # [depth, k]
        if self.draft_vocab is not None:
            top_tokens = self.draft_vocab.token_ids.to(device)[top_tokens]
        depth_row = (tree.depths[1:] - 1).to(device)
        rank_col = tree.rank_index[1:].to(device)
        root = torch.tensor([context.root_token], dtype=torch.long, device=device)
        tokens = torch.cat([root, top_tokens[depth_row, rank_col]])
        node_logprob = torch.cat([torch.zeros(1, device=device), top_logprobs[depth_row, rank_col]])
        return Draft(tree=tree, tokens=tokens, kind=CandidateKind.DETERMINISTIC,
                     log_confidence=path_log_confidence(tree, node_logprob))

    def _head_logits(self, hidden: torch.Tensor, depth: int) -> torch.Tensor:
        """Heads 1..depth on the hidden state: ``[depth, V]``, or ``[depth, K]`` over the draft vocabulary,
        whose projections then run as one batched matmul."""
        if self.draft_vocab is None:
            return self.heads(hidden[None])[0, :depth]
        heads = self.heads.heads[:depth]
        bodies = torch.stack([head[:-1](hidden) for head in heads])  # [depth, H]
        return self.draft_vocab.project([head[-1] for head in heads], bodies[:, None])[:, 0]
