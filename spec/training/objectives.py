"""Training objectives (recipes) for the loop in spec.training.loop."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


class LanguageModelObjective:
    """Next-token cross-entropy for a causal LM (pretraining the shipped base model)."""

    def __init__(self, model: nn.Module, eval_batch_size: int = 16) -> None:
        self.model = model
        self.eval_batch_size = eval_batch_size

    def trainable(self) -> nn.Module:
        return self.model

    def param_groups(self, module: nn.Module, lr: float):
        # No weight decay on norms and biases (1-D parameters), the usual GPT recipe.
        decay = [p for p in module.parameters() if p.requires_grad and p.dim() >= 2]
        no_decay = [p for p in module.parameters() if p.requires_grad and p.dim() < 2]
        return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]

    def loss(self, module: nn.Module, batch: torch.Tensor, step: int):
        logits = module(input_ids=batch[:, :-1]).logits
        loss = F.cross_entropy(logits.flatten(0, 1).float(), batch[:, 1:].flatten())
        return loss, {}

    def evaluate(self, module: nn.Module, blocks: torch.Tensor) -> dict[str, float]:
        total, count = 0.0, 0
        device = next(module.parameters()).device
        for start in range(0, blocks.shape[0], self.eval_batch_size):
            batch = blocks[start : start + self.eval_batch_size].to(device)
            logits = module(input_ids=batch[:, :-1]).logits
            total += float(F.cross_entropy(logits.flatten(0, 1).float(), batch[:, 1:].flatten(), reduction="sum"))
            count += batch[:, 1:].numel()
        loss = total / count
        return {"loss": loss, "perplexity": math.exp(loss)}
