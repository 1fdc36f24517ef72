"""Held-out evaluation of draft heads, in the format the tree builders read."""

from __future__ import annotations

import torch
from torch import nn

from spec.trees.stats import AcceptanceStats


@torch.no_grad()
def acceptance_table(objective, module: nn.Module, blocks: torch.Tensor, width: int = 4,
                     name: str = "", model_fingerprint: dict | None = None) -> AcceptanceStats:
    """``probs[k][r]``: how often head k's rank-r token is the true token on held-out ``blocks``.

    Teacher forcing puts the true path above every position, which is the "given its parent
    was accepted" condition of ``AcceptanceStats``; against the data rather than the model's
    own greedy choice (use ``spec.bench.measure_acceptance`` for that).
    """
    device = next(module.parameters()).device
    hits: torch.Tensor | None = None
    counts: torch.Tensor | None = None
    for start in range(0, blocks.shape[0], 16):
        predictions = objective.head_predictions(module, blocks[start : start + 16].to(device))
        if hits is None:
            hits = torch.zeros(len(predictions), width, dtype=torch.float64)
            counts = torch.zeros(len(predictions), dtype=torch.float64)
        for k, (logits, targets) in enumerate(predictions):
            top = logits.topk(width, dim=-1).indices  # [N, width]
            hits[k] += (top == targets[:, None]).double().sum(0).cpu()
            counts[k] += targets.numel()
    return AcceptanceStats(probs=(hits / counts.clamp(min=1)[:, None]).tolist(), drafter=name,
                           model=model_fingerprint, samples=int(counts[0]))
