"""Hydra / Hydra++ training (Ankner et al., 2024).

Teacher forcing: at every position t of a block, head k reads the frozen model's hidden
state h_t (through the prefix layer for Hydra++) and the input embeddings of the true
tokens t+1 .. t+k+1 (the root and the path above it), and predicts token t+k+2.
Hydra++'s teacher loss replaces the data token by the base model's own distribution
for that token (soft cross-entropy), which is what the heads must match at inference.
"""

from __future__ import annotations

import torch
from torch import nn

from spec.runtime import causal_pass
from spec.training.data import Blocks, split_batch
from spec.training.objectives import HeadResult, PerHeadObjective, head_loss, head_windows, window


class HydraObjective(PerHeadObjective):
    def __init__(self, model: nn.Module, drafter, teacher: bool = True, decay: float = 1.0) -> None:
        super().__init__(model, drafter.heads)
        self.drafter = drafter
        self.teacher = teacher
        self.decay = decay

    def _per_head(self, module: nn.Module, batch: Blocks) -> list[HeadResult]:
        tokens, mask = split_batch(batch)
        with torch.no_grad():
            out = self.model(input_ids=tokens[:, :-1], output_hidden_states=True)
            embeddings = self.drafter.embedding(tokens)  # [B, T + 1, H], frozen
        hidden = out.hidden_states[-1]
        if module.prefix_layer is not None:
            hidden = causal_pass(self.model, module.prefix_layer, hidden, "Hydra++ prefix layer")
        results = []
        for k, head, valid in head_windows(module.heads, hidden.shape[1]):
            path = [embeddings[:, 1 + j : 1 + j + valid] for j in range(k + 1)]  # root .. x_k
            logits = head(torch.cat([hidden[:, :valid]] + path, dim=-1)).float()  # [B, valid, V]
            targets = tokens[:, k + 2 : k + 2 + valid]
            teacher = out.logits[:, k + 1 : k + 1 + valid] if self.teacher else None
            keep = window(mask, k + 2, valid)
            results.append(HeadResult(head_loss(logits, targets, teacher, keep), logits, targets, keep))
        return results
