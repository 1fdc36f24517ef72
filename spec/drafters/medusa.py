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

from typing import Optional, Union

import torch
from torch import nn

from spec.drafters.blocks import ResBlock, copy_lm_head_into_heads, head_body
from spec.drafters.base import HeadDrafter
from spec.drafters.draft_vocab import stacked_projection
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


#: Vocabulary projections of several heads: stacked ``[L, K, H]`` (``[L, K]`` biases), or one tensor per head.
Projections = Union[torch.Tensor, tuple[torch.Tensor, ...]]


def head_logits(heads: nn.ModuleList, hidden: torch.Tensor, weight: Projections,
                bias: Optional[Projections]) -> torch.Tensor:
    """Heads ``0 .. L-1`` on ``hidden`` ``[H]`` through their projections ``weight`` -> logits ``[L, K]``; stacked
    projections run as one batched matmul."""
    bodies = [head_body(heads[d], hidden) for d in range(len(weight))]
    if isinstance(weight, torch.Tensor):
        return stacked_projection(torch.stack(bodies)[:, None], weight, bias)[:, 0]
    return torch.stack([nn.functional.linear(body.to(w.dtype), w, None if bias is None else bias[d])
                        for d, (body, w) in enumerate(zip(bodies, weight))])


def medusa_top_k(heads: nn.ModuleList, hidden: torch.Tensor, root: torch.Tensor, depth_row: torch.Tensor,
                 rank_col: torch.Tensor, weight: Projections, bias: Optional[Projections],
                 token_ids: Optional[torch.Tensor], k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The deterministic Medusa draft as a pure tensor function (what ``compile()`` compiles): node ``j >= 1``
    gets rank ``rank_col[j - 1]`` of head ``depth_row[j - 1]``'s top-``k``. ``root`` ``[1]``; returns every
    node's token ``[n]`` and its draft log-probability ``[n]`` (root 0)."""
    logprobs = head_logits(heads, hidden, weight, bias).float().log_softmax(dim=-1)
    top_logprobs, top_tokens = torch.topk(logprobs, k, dim=-1)  # [depth, k]
    if token_ids is not None:
        top_tokens = token_ids[top_tokens]
    tokens = torch.cat([root, top_tokens[depth_row, rank_col]])
    node_logprob = torch.cat([torch.zeros(1, device=logprobs.device), top_logprobs[depth_row, rank_col]])
    return tokens, node_logprob


class MedusaDrafter(HeadDrafter):
    """Drafts a tree from Medusa heads: node at depth d, rank r gets head d-1's r-th most likely token.

    ``candidates``: ``"top_k"`` (deterministic, the default), or, when sampling at
    temperature > 0, ``"sample_without_replacement"`` / ``"sample_with_replacement"``
    to draw each node's children from head d's distribution at the sampling
    temperature; the draft then carries that ``q`` for lossless acceptance.
    """

    drafter_type = "medusa"
    top_k_function = staticmethod(medusa_top_k)
    compilable = True
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
        sampled = candidate_sampling(self.candidates, sampling, generator)
        if sampled is not None:
            # Heads are independent of the drafted tokens: every node at depth d draws from head d's q.
            head_logits = self._head_logits(hidden, tree.max_depth)  # [depth, V] or [depth, K]
            return fill_depth_by_depth(
                tree, context.root_token,
                lambda step, tokens: head_logits[step.depth].expand(step.nodes.shape[0], -1), device, sampled,
                self.draft_vocab)
        weight, bias = self._projections(tree.max_depth)
        token_ids = None if self.draft_vocab is None else self.draft_vocab.token_ids.to(device)
        depth_row, rank_col = (tree.depths[1:] - 1).to(device), tree.rank_index[1:].to(device)
        root = torch.full((1,), context.root_token, dtype=torch.long, device=device)
        fill = medusa_top_k if self.compiled_fill is None else self.compiled_fill
        tokens, node_logprob = fill(self.heads.heads, hidden, root, depth_row, rank_col, weight, bias, token_ids,
                                    tree.max_rank + 1)
        return Draft(tree=tree, tokens=tokens, kind=CandidateKind.DETERMINISTIC,
                     log_confidence=path_log_confidence(tree, node_logprob))

    def _projections(self, depth: int) -> tuple[Projections, Optional[Projections]]:
        """Heads 1..depth's vocabulary projections: restricted to the draft vocabulary, stacked ``[depth, K, H]``
        (bias ``[depth, K]`` or None; cached), so one batched matmul projects them all; without one, each head's
        own ``[V, H]`` weight (stacking them would copy every full-vocabulary projection)."""
        linears = [self.heads.heads[d][-1] for d in range(depth)]
        if self.draft_vocab is not None:
            return self.draft_vocab.weights(linears)
        biases = tuple(lin.bias for lin in linears)
        return tuple(lin.weight for lin in linears), None if biases[0] is None else biases

    def _head_logits(self, hidden: torch.Tensor, depth: int) -> torch.Tensor:
        """Heads 1..depth on the hidden state: ``[depth, V]``, or ``[depth, K]`` over the draft vocabulary."""
        weight, bias = self._projections(depth)
        return head_logits(self.heads.heads, hidden, weight, bias)
