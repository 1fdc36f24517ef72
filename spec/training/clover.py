"""Clover training (Xiao et al., 2024).

Teacher forcing along the true continuation: s_0 is the augmenting block's output at
position t; for depth d the attention decoder reads the embedding of token t+d (the
root for d = 1) over s_0 .. s_{d-1} and gives s_d; head d maps it (MLP + norm) through
the model's frozen lm_head to a guess of token t+d+1. The loss is Clover's: soft
cross-entropy to the base model's own distribution for that token, weighted by
``decay ** (d - 1)``.
"""

from __future__ import annotations

import torch
from torch import nn

from spec.runtime import causal_pass
from spec.training.data import Blocks, split_batch
from spec.training.objectives import HeadResult, PerHeadObjective, head_loss, window


class CloverObjective(PerHeadObjective):
    def __init__(self, model: nn.Module, drafter, decay: float = 0.8) -> None:
        super().__init__(model, drafter.heads)
        self.drafter = drafter
        self.decay = decay

    def _per_head(self, module: nn.Module, batch: Blocks) -> list[HeadResult]:
        tokens, mask = split_batch(batch)
        with torch.no_grad():
            out = self.model(input_ids=tokens[:, :-1], output_hidden_states=True)
            embeddings = self.drafter.embedding(tokens)
        num_heads = len(module.heads)
        valid = tokens.shape[1] - 1 - num_heads  # positions t whose every head has a target
        if valid <= 0:
            raise ValueError(f"Blocks of {tokens.shape[1]} tokens are too short for {num_heads} Clover heads.")
        states = [causal_pass(self.model, module.augmenting_layer, out.hidden_states[-1], "Clover augmenting block")[:, :valid]]
        lm_head = self.drafter.lm_head
        results = []
        for d in range(1, num_heads + 1):
            query = embeddings[:, d : d + valid]  # token t + d: the root, then the path
            above = torch.stack(states, dim=2)  # [B, valid, d, H]
            state = module.attention_decoder(query.flatten(0, 1), above.flatten(0, 1)).view_as(query)
            states.append(state)
            logits = lm_head(module.heads[d - 1](state)).float()
            targets = tokens[:, d + 1 : d + 1 + valid]
            keep = window(mask, d + 1, valid)
            results.append(HeadResult(head_loss(logits, targets, out.logits[:, d : d + valid], keep), logits, targets,
                                      keep))
        return results
