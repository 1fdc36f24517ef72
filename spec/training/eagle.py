"""EAGLE and EAGLE-3 training on the frozen target, with its features computed online (nothing dumped).

Both run the drafter's layer over whole blocks: at position t the pair (``f_t``, ``x_{t+1}``) predicts
the next feature and, through the logits, ``x_{t+2}``. :func:`unroll` then feeds the drafter its own
predictions for further steps, as drafting a chain does: at step j the query at t holds
(``ô_{j-1,t}``, ``x_{t+j+1}``) at position ``t + j`` and attends to the step-0 pairs at positions
``<= t`` (the committed prefix: the target's own features) and to its own chain's pairs of steps
``1 .. j`` at index t (the tree path above it), exactly what it sees when drafting a tree.

* :class:`EagleObjective` (EAGLE-1): step 0 only, teacher-forced, with uniform noise on the input
  features (EAGLE's augmentation against feature error); loss = SmoothL1(``ô_t``, ``f_{t+1}``) +
  ``w_cls`` x cross-entropy of ``lm_head(ô_t)`` against the target's own next-token distribution at
  ``t + 1`` (the paper: ``w_cls = 0.1``).
* :class:`Eagle3Objective` (EAGLE-3's training-time test): ``steps`` unrolled steps, no feature loss;
  step j's loss is the cross-entropy against the target's distribution restricted to the draft vocabulary
  (renormalised), on positions whose target argmax is a draft token, weighted ``decay ** j`` (0.8 in
  the paper's code).

With a loss mask (conversations), index t of step j counts only where its token ``x_{t+j+2}`` is one to
learn; EAGLE-1's feature target ``f_{t+1}`` is the state that predicts ``x_{t+2}``, so it follows the same
mask.

Evaluation (``evaluate``) unrolls both drafters ``max_depth`` steps on held-out blocks and reports each
depth's top-1 / top-5 accuracy against the data's tokens, as the other drafters' objectives do.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn
from torch.nn import functional as F

from spec.runtime.draft_layer import attend, qkv, rotary_table
from spec.training.data import Blocks, split_batch
from spec.training.objectives import HeadResult, PerHeadObjective, counted_mean, masked_loss_mean, masked_mean, window


def target_outputs(model: nn.Module, batch: torch.Tensor, layers: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """The frozen target over ``batch[:, :-1]`` ``[B, T]``: features ``[B, T, F]`` (the final hidden states, or
    the ``layers``' residual streams concatenated) and logits ``[B, T, V]``."""
    with torch.no_grad():
        out = model(input_ids=batch[:, :-1], output_hidden_states=True)
    if not layers:
        return out.hidden_states[-1], out.logits
    return torch.cat([out.hidden_states[k] for k in layers], dim=-1), out.logits


def unroll(drafter, heads: nn.Module, batch: torch.Tensor, features: torch.Tensor, steps: int,
           noise: float = 0.0) -> list[torch.Tensor]:
    """The drafter over whole blocks for ``steps`` steps (see the module docstring); returns each step's
    predictions ``[B, T, H]`` (index t of step j predicts ``x_{t+j+2}``).

    ``features`` ``[B, T, F]``: the target's at positions ``0 .. T-1``; ``noise``: width of the uniform noise
    added to them (training only). Tokens past the block are clamped to its last one; their predictions are
    never scored.
    """
    length = batch.shape[1] - 1
    device = batch.device
    index = torch.arange(length, device=device)
    attn = heads.layer.self_attn
    dtype = heads.fc.weight.dtype
    if noise > 0:
        features = features + (torch.rand_like(features) - 0.5) * noise
    g = heads.read(features.to(dtype))
    keys: list[torch.Tensor] = []
    values: list[torch.Tensor] = []
    causal = index[None, :] <= index[:, None]  # [T, T]: step-0 pairs at positions <= t
    diagonal = torch.eye(length, dtype=torch.bool, device=device)  # later steps: the same chain only
    outputs = []
    for j in range(steps):
        tokens = batch[:, (index + j + 1).clamp(max=length)]  # x_{t+j+1}
        cos, sin = rotary_table(drafter.model, (index + j)[None], dtype, "EAGLE draft layer")

        def attention(h: torch.Tensor) -> torch.Tensor:
            q, k, v = qkv(attn, h, cos, sin)
            keys.append(k)
            values.append(v)
            visible = torch.cat([causal] + [diagonal] * (len(keys) - 1), dim=1)[None]  # [1, T, (j + 1) T]
            return attend(attn, q, torch.cat(keys, dim=2), torch.cat(values, dim=2), visible)

        g = heads.step(drafter.embedding(tokens), g, attention)
        outputs.append(g)
    return outputs


class _EagleFamilyObjective(PerHeadObjective):
    def __init__(self, model: nn.Module, drafter, steps: int, decay: float) -> None:
        super().__init__(model, drafter.heads)
        self.drafter = drafter
        self.steps = steps
        self.decay = decay
        self.layers: tuple[int, ...] = ()

    def logits(self, heads: nn.Module, predicted: torch.Tensor) -> torch.Tensor:
        """Predictions ``[..., H]`` -> logits over the whole vocabulary ``[..., V]``."""
        raise NotImplementedError

    def _per_head(self, module: nn.Module, batch: Blocks) -> list[HeadResult]:
        """Per unrolled step (evaluation): (0, logits ``[B, valid, V]``, data tokens ``[B, valid]``, mask)."""
        tokens, mask = split_batch(batch)
        features, _ = target_outputs(self.model, tokens, self.layers)
        results = []
        for j, predicted in enumerate(unroll(self.drafter, module, tokens, features, self.drafter.max_depth)):
            valid = tokens.shape[1] - 2 - j  # index t predicts x_{t+j+2}
            if valid <= 0:
                break
            logits = self.logits(module, predicted[:, :valid]).float()
            results.append(HeadResult(torch.zeros(()), logits, tokens[:, j + 2: j + 2 + valid],
                                      window(mask, j + 2, valid)))
        return results


class EagleObjective(_EagleFamilyObjective):
    """EAGLE-1: feature regression (SmoothL1) + ``w_cls`` x soft cross-entropy, noisy input features."""

    def __init__(self, model: nn.Module, drafter, w_cls: float = 0.1, noise: float = 0.2) -> None:
        super().__init__(model, drafter, steps=1, decay=1.0)
        self.w_cls = w_cls
        self.noise = noise

    def logits(self, heads: nn.Module, predicted: torch.Tensor) -> torch.Tensor:
        return self.drafter.lm_head(predicted)

    def loss(self, module: nn.Module, batch: Blocks, step: int):
        tokens, mask = split_batch(batch)
        features, target_logits = target_outputs(self.model, tokens, ())
        predicted = unroll(self.drafter, module, tokens, features, 1, self.noise)[0]
        valid = tokens.shape[1] - 2  # index t predicts f_{t+1} and x_{t+2}
        keep = window(mask, 2, valid)
        predicted = predicted[:, :valid]
        if keep is None:  # the unmasked path stays the one plain-text runs (and the shipped heads) were trained with
            regression = F.smooth_l1_loss(predicted.float(), features[:, 1: 1 + valid].float())
        else:
            regression = masked_loss_mean(F.smooth_l1_loss(predicted.float(), features[:, 1: 1 + valid].float(),
                                                           reduction="none").mean(-1), keep)
        logits = self.logits(module, predicted).float()
        teacher = target_logits[:, 1: 1 + valid].float().softmax(-1)
        classification = masked_loss_mean(-(teacher * logits.log_softmax(-1)).sum(-1), keep)
        total = regression + self.w_cls * classification
        accuracy = float(masked_mean((logits.argmax(-1) == tokens[:, 2: 2 + valid]).float(), keep))
        return total, {"regression": float(regression.detach()), "classification": float(classification.detach()),
                       "acc1": accuracy}


class Eagle3Objective(_EagleFamilyObjective):
    """EAGLE-3's training-time test: ``steps`` unrolled steps, cross-entropy on the draft vocabulary."""

    def __init__(self, model: nn.Module, drafter, steps: Optional[int] = None, decay: float = 0.8) -> None:
        super().__init__(model, drafter, steps=steps or drafter.max_depth, decay=decay)
        self.layers = tuple(drafter.heads.layers)

    def logits(self, heads: nn.Module, predicted: torch.Tensor) -> torch.Tensor:
        return self.drafter.draft_vocab.to_full(heads.logits(predicted))

    def loss(self, module: nn.Module, batch: Blocks, step: int):
        tokens, data_mask = split_batch(batch)
        features, target_logits = target_outputs(self.model, tokens, self.layers)
        d2t = module.d2t
        total = torch.zeros((), device=tokens.device)
        metrics = {}
        for j, predicted in enumerate(unroll(self.drafter, module, tokens, features, self.steps)):
            valid = tokens.shape[1] - 2 - j
            if valid <= 0:
                break
            teacher_logits = target_logits[:, j + 1: j + 1 + valid].float()
            keep = window(data_mask, j + 2, valid)
            # Positions whose target argmax the draft vocabulary cannot propose teach nothing useful.
            mask = module.t2d[teacher_logits.argmax(-1)]
            mask = (mask if keep is None else mask & keep).float()
            teacher = teacher_logits[..., d2t].softmax(-1)
            logits = module.logits(predicted[:, :valid]).float()
            per_position = -(teacher * logits.log_softmax(-1)).sum(-1)
            loss = counted_mean((per_position * mask).sum(), mask.sum())
            total = total + self.decay ** j * loss
            hits = d2t[logits.argmax(-1)] == teacher_logits.argmax(-1)
            metrics[f"acc1_head{j}"] = float(masked_mean(hits.float(), keep))
        metrics["acc1"] = metrics.get("acc1_head0", 0.0)
        return total, metrics
