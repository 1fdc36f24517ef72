"""Kangaroo adapter training (Liu et al., 2024): make ``lm_head(adapter(h_shallow))`` match the full
model's next-token distribution at the same position (soft cross-entropy), the backbone frozen."""

from __future__ import annotations

import torch
from torch import nn

from spec.runtime.masks import additive_mask
from spec.training.data import Blocks, split_batch
from spec.training.objectives import HeadResult, PerHeadObjective, head_loss, window


class KangarooObjective(PerHeadObjective):
    def __init__(self, model: nn.Module, drafter) -> None:
        super().__init__(model, drafter.adapter)
        self.drafter = drafter

    def _per_head(self, module: nn.Module, batch: Blocks) -> list[HeadResult]:
        tokens, mask = split_batch(batch)
        with torch.no_grad():
            out = self.model(input_ids=tokens[:, :-1], output_hidden_states=True)
        # hidden_states[0] is the embedding output, so [exit_layer] is after the first exit_layer layers.
        shallow = out.hidden_states[self.drafter.state.exit_layer]
        length = shallow.shape[1]
        positions = torch.arange(length, device=tokens.device)[None].expand(tokens.shape[0], -1)
        causal = torch.ones(length, length, dtype=torch.bool, device=tokens.device).tril()
        rotary = self.drafter.state.backbone.rotary_emb(shallow, positions)
        adapted = module(shallow, additive_mask(causal, shallow.dtype), positions, rotary, None)
        logits = self.model.lm_head(adapted).float()
        # The target's own greedy choice is what a greedy step must guess; position t guesses token t + 1, so
        # it counts where that token is one to learn.
        greedy = out.logits.argmax(-1)
        keep = window(mask, 1, length)
        return [HeadResult(head_loss(logits, greedy, out.logits, keep), logits, greedy, keep)]
