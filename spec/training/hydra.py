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
from torch.nn import functional as F

from spec.drafters.context_layer import causal_pass
from spec.training.objectives import FrozenBackboneObjective


class HydraObjective(FrozenBackboneObjective):
    def __init__(self, model: nn.Module, drafter, teacher: bool = True, decay: float = 1.0) -> None:
        super().__init__(model, drafter.heads)
        self.drafter = drafter
        self.teacher = teacher
        self.decay = decay

    def _per_head(self, module: nn.Module, batch: torch.Tensor):
        with torch.no_grad():
            out = self.model(input_ids=batch[:, :-1], output_hidden_states=True)
            embeddings = self.drafter.embedding(batch)  # [B, T + 1, H], frozen
        hidden = out.hidden_states[-1]
        if module.prefix_layer is not None:
            hidden = causal_pass(self.model, module.prefix_layer, hidden, "Hydra++ prefix layer")
        length = hidden.shape[1]
        results = []
        for k, head in enumerate(module.heads):
            valid = length - k - 1  # positions t with t + k + 2 <= T
            if valid <= 0:
                break
            path = [embeddings[:, 1 + j : 1 + j + valid] for j in range(k + 1)]  # root .. x_k
            logits = head(torch.cat([hidden[:, :valid]] + path, dim=-1)).float()  # [B, valid, V]
            targets = batch[:, k + 2 : k + 2 + valid]
            if self.teacher:
                teacher = out.logits[:, k + 1 : k + 1 + valid].float().softmax(-1)
                loss = -(teacher * logits.log_softmax(-1)).sum(-1).mean()
            else:
                loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
            results.append((loss, logits, targets))
        return results

    def head_predictions(self, module: nn.Module, batch: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per head: logits ``[N, V]`` and the true tokens ``[N]`` at every valid position."""
        return [(logits.flatten(0, 1), targets.flatten()) for _, logits, targets in self._per_head(module, batch)]

    def loss(self, module: nn.Module, batch: torch.Tensor, step: int):
        results = self._per_head(module, batch)
        total = sum(self.decay ** k * loss for k, (loss, _, _) in enumerate(results))
        metrics = {f"acc1_head{k}": float((lg.argmax(-1) == tg).float().mean()) for k, (_, lg, tg) in enumerate(results)}
        metrics["acc1"] = metrics.get("acc1_head0", 0.0)
        return total, metrics

    @torch.no_grad()
    def evaluate(self, module: nn.Module, blocks: torch.Tensor, top_k: int = 5) -> dict[str, float]:
        return head_accuracy(self._per_head, module, blocks, top_k)


@torch.no_grad()
def head_accuracy(per_head, module: nn.Module, blocks: torch.Tensor, top_k: int = 5) -> dict[str, float]:
    """Per-head top-1 and top-``top_k`` accuracy; ``per_head(module, batch)`` yields (loss, logits, targets)."""
    device = next(module.parameters()).device
    hits1: dict[int, float] = {}
    hitsk: dict[int, float] = {}
    counts: dict[int, int] = {}
    for start in range(0, blocks.shape[0], 16):
        for k, (_, logits, targets) in enumerate(per_head(module, blocks[start : start + 16].to(device))):
            top = logits.topk(top_k, dim=-1).indices
            hits1[k] = hits1.get(k, 0.0) + float((top[..., 0] == targets).sum())
            hitsk[k] = hitsk.get(k, 0.0) + float((top == targets[..., None]).any(-1).sum())
            counts[k] = counts.get(k, 0) + targets.numel()
    metrics = {}
    for k in counts:
        metrics[f"head{k}_top1"] = hits1[k] / counts[k]
        metrics[f"head{k}_top{top_k}"] = hitsk[k] / counts[k]
    return metrics
