"""Training objectives (recipes) for the loop in spec.training.loop.

Every objective takes a batch that is either a plain ``[B, T + 1]`` tensor (every token a target) or
:class:`~spec.training.data.TokenBlocks` with a loss mask. The masking rule, the same for every objective:
a prediction whose target is the token at index ``i`` of the block (the model's next token, head k's
token ``t + k + 2``, an unrolled step's token, or the feature that predicts it) counts only where
``loss_mask[i]`` is True; it is dropped from the loss, the metrics and the held-out accuracy otherwise.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from typing import Iterator, NamedTuple, Optional

import torch
from torch import nn
from torch.nn import functional as F

from spec.errors import UnsupportedError
from spec.training.data import Blocks, split_batch


def masked_mean(values: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
    """Mean of ``values`` where ``mask`` is True (0 where it is nowhere True); the plain mean without a mask.

    Masked entries are never read (selected away, not multiplied by 0), so a NaN there cannot leak in.
    """
    if mask is None:
        return values.float().mean()
    return values[mask].float().sum() / mask.sum().clamp(min=1)


def masked_loss_mean(values: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
    """:func:`masked_mean` for a loss: the same value in one process, over every process's counted positions
    under :func:`counted_over_processes` (metrics keep :func:`masked_mean`: they are each process's own)."""
    if mask is None:  # every position counts, and the loop gives every process the same number of rows
        return values.float().mean()
    return counted_mean(values[mask].float().sum(), mask.sum())


#: The number of processes whose counted positions a loss's mean is over (None: this process's only).
_PROCESSES: contextvars.ContextVar[Optional[int]] = contextvars.ContextVar("spec_training_processes", default=None)


@contextlib.contextmanager
def counted_over_processes(processes: int) -> Iterator[None]:
    """Within it, :func:`counted_mean` divides by every process's count of counted positions (the loop enters it
    around each loss when several processes train). Each process's gradient is then its sum over the global count
    (times the number of processes), and the mean of those that DDP or FSDP take is the gradient of the mean over
    all counted positions: what one process with the whole batch computes. Without it, processes holding
    different numbers of assistant tokens would weigh each other's tokens unequally."""
    token = _PROCESSES.set(processes if processes > 1 else None)
    try:
        yield
    finally:
        _PROCESSES.reset(token)


def counted_mean(total: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """A loss's mean: ``total`` (its sum over the counted positions) over ``count`` (how many), 0 where none is;
    over every process's count under :func:`counted_over_processes` (every process must then call it alike)."""
    processes = _PROCESSES.get()
    if processes is None:
        return total / count.clamp(min=1)
    import torch.distributed as dist

    count = count.detach().clone()
    dist.all_reduce(count)
    return total * processes / count.clamp(min=1)


class HeadResult(NamedTuple):
    """One head's (or unrolled step's) predictions on a batch: ``loss``, ``logits`` ``[B, L, V]``, the data's
    tokens ``targets`` ``[B, L]`` and ``mask`` ``[B, L]`` (None: every position counts)."""

    loss: torch.Tensor
    logits: torch.Tensor
    targets: torch.Tensor
    mask: Optional[torch.Tensor] = None


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

    def loss(self, module: nn.Module, batch: Blocks, step: int):
        tokens, mask = split_batch(batch)
        logits = module(input_ids=tokens[:, :-1]).logits
        return lm_loss(logits, tokens, mask), {}

    @torch.no_grad()
    def evaluate(self, module: nn.Module, blocks: Blocks) -> dict[str, float]:
        total, count = 0.0, 0
        device = next(module.parameters()).device
        for start in range(0, blocks.shape[0], self.eval_batch_size):
            tokens, mask = split_batch(blocks[start : start + self.eval_batch_size].to(device))
            logits = module(input_ids=tokens[:, :-1]).logits
            per_token = F.cross_entropy(logits.flatten(0, 1).float(), tokens[:, 1:].flatten(), reduction="none")
            keep = None if mask is None else mask[:, 1:].flatten()
            total += float(per_token.sum() if keep is None else per_token[keep].sum())
            count += per_token.numel() if keep is None else int(keep.sum())
        loss = total / max(count, 1)
        return {"loss": loss, "perplexity": math.exp(loss)}


def lm_loss(logits: torch.Tensor, tokens: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
    """Next-token cross-entropy of ``logits`` ``[B, T, V]`` against ``tokens[:, 1:]``, on masked targets only."""
    if mask is None:
        return F.cross_entropy(logits.flatten(0, 1).float(), tokens[:, 1:].flatten())
    per_token = F.cross_entropy(logits.flatten(0, 1).float(), tokens[:, 1:].flatten(), reduction="none")
    return masked_loss_mean(per_token, mask[:, 1:].flatten())


def shifted_head_targets(tokens: torch.Tensor, num_heads: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Targets for draft heads reading the hidden state at each position of ``tokens`` ``[B, T + 1]``.

    The model's own lm_head at position t predicts token t + 1; head k predicts token
    t + k + 2 (it fills depth k + 1 of the tree, one past the root). Returns
    ``targets [B, T, K]`` and ``valid [B, T, K]`` (False where t + k + 2 runs off the block).
    """
    batch, length = tokens.shape[0], tokens.shape[1] - 1
    offsets = torch.arange(num_heads, device=tokens.device) + 2  # [K]
    index = torch.arange(length, device=tokens.device)[:, None] + offsets[None, :]  # [T, K]
    valid = index < tokens.shape[1]
    targets = tokens[:, index.clamp(max=tokens.shape[1] - 1)]
    return targets, valid[None].expand(batch, -1, -1)


class FrozenBackboneObjective:
    """Base of the recipes that train draft heads on a frozen model: only ``heads`` learns."""

    def __init__(self, model: nn.Module, heads: nn.Module) -> None:
        self.model = model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.heads = heads

    def trainable(self) -> nn.Module:
        return self.heads

    def param_groups(self, module: nn.Module, lr: float):
        return [{"params": [p for p in module.parameters() if p.requires_grad]}]


class PerHeadObjective(FrozenBackboneObjective):
    """Recipes whose ``_per_head(module, batch)`` returns a :class:`HeadResult` per head: the loss is
    ``sum_k decay**k * loss_k``; evaluation reports each head's top-1 and top-k accuracy."""

    decay: float = 1.0

    def _per_head(self, module: nn.Module, batch: Blocks) -> list[HeadResult]:
        raise NotImplementedError

    def head_predictions(self, module: nn.Module, batch: Blocks) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per head: logits ``[N, V]`` and the true tokens ``[N]`` at every valid, unmasked position."""
        return [_kept(result) for result in self._per_head(module, batch)]

    def loss(self, module: nn.Module, batch: Blocks, step: int):
        return self.weighted(self._per_head(module, batch))

    def weighted(self, results: list[HeadResult]) -> tuple[torch.Tensor, dict[str, float]]:
        """``sum_k decay**k * loss_k`` and each head's top-1 accuracy on the batch's unmasked positions."""
        total = sum(self.decay ** k * r.loss for k, r in enumerate(results))
        metrics = {f"acc1_head{k}": float(masked_mean((r.logits.argmax(-1) == r.targets).float(), r.mask))
                   for k, r in enumerate(results)}
        metrics["acc1"] = metrics.get("acc1_head0", 0.0)
        return total, metrics

    @torch.no_grad()
    def evaluate(self, module: nn.Module, blocks: Blocks, top_k: int = 5) -> dict[str, float]:
        return head_accuracy(self._per_head, module, blocks, top_k)


def _kept(result: HeadResult) -> tuple[torch.Tensor, torch.Tensor]:
    if result.mask is None:
        return result.logits.flatten(0, 1), result.targets.flatten()
    return result.logits[result.mask], result.targets[result.mask]


@torch.no_grad()
def head_accuracy(per_head, module: nn.Module, blocks: Blocks, top_k: int = 5) -> dict[str, float]:
    """Per-head top-1 and top-``top_k`` accuracy on unmasked positions; ``per_head(module, batch)`` yields
    :class:`HeadResult` s."""
    device = next(module.parameters()).device
    hits1: dict[int, float] = {}
    hitsk: dict[int, float] = {}
    counts: dict[int, int] = {}
    for start in range(0, blocks.shape[0], 16):
        for k, result in enumerate(per_head(module, blocks[start : start + 16].to(device))):
            logits, targets = _kept(result)
            top = logits.topk(top_k, dim=-1).indices
            hits1[k] = hits1.get(k, 0.0) + float((top[..., 0] == targets).sum())
            hitsk[k] = hitsk.get(k, 0.0) + float((top == targets[..., None]).any(-1).sum())
            counts[k] = counts.get(k, 0) + targets.numel()
    metrics = {}
    for k in counts:
        metrics[f"head{k}_top1"] = hits1[k] / max(counts[k], 1)
        metrics[f"head{k}_top{top_k}"] = hitsk[k] / max(counts[k], 1)
    return metrics


def head_loss(logits: torch.Tensor, targets: torch.Tensor, teacher_logits: Optional[torch.Tensor] = None,
              mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Mean loss of ``logits`` ``[..., V]``: cross-entropy against the model's own distribution
    (``teacher_logits``, soft targets) when given, else against the data's tokens ``targets`` ``[...]``;
    over the positions where ``mask`` ``[...]`` is True when given."""
    if mask is None:  # the unmasked path stays the one plain-text runs (and the shipped heads) were trained with
        if teacher_logits is not None:
            return -(teacher_logits.float().softmax(-1) * logits.log_softmax(-1)).sum(-1).mean()
        return F.cross_entropy(logits.flatten(0, -2), targets.flatten())
    logits, targets = logits[mask], targets[mask]
    if teacher_logits is not None:
        per_position = -(teacher_logits[mask].float().softmax(-1) * logits.log_softmax(-1)).sum(-1)
    else:
        per_position = F.cross_entropy(logits, targets, reduction="none")
    return counted_mean(per_position.sum(), torch.tensor(per_position.numel(), device=per_position.device))


def window(mask: Optional[torch.Tensor], start: int, length: int) -> Optional[torch.Tensor]:
    """``mask[:, start : start + length]`` (the targets of a window of predictions), or None without a mask."""
    return None if mask is None else mask[:, start: start + length]


def head_windows(heads, length: int) -> Iterator[tuple[int, nn.Module, int]]:
    """``(k, head, valid)`` for each head ``k`` that has positions left in a block of ``length`` inputs: head k
    at position t guesses token t + k + 2, so positions ``0 .. valid - 1`` have a target."""
    for k, head in enumerate(heads):
        valid = length - k - 1
        if valid <= 0:
            return
        yield k, head, valid


def medusa_head_results(heads: nn.Module, hidden: torch.Tensor, base_logits: torch.Tensor, tokens: torch.Tensor,
                        soft_targets: bool, mask: Optional[torch.Tensor] = None) -> list[HeadResult]:
    """Per Medusa head k: its :class:`HeadResult` (logits ``[B, valid, V]``, targets ``[B, valid]``).

    ``hidden`` ``[B, T, H]`` and ``base_logits`` ``[B, T, V]`` are the model's over ``tokens[:, :-1]``
    (``tokens`` is ``[B, T + 1]``, ``mask`` its loss mask or None). Head k at position t guesses token
    t + k + 2; with soft targets it matches the model's own distribution for that token, which sits at
    position t + k + 1.
    """
    results = []
    for k, head, valid in head_windows(heads.heads, hidden.shape[1]):
        logits = head(hidden[:, :valid]).float()
        targets = tokens[:, k + 2: k + 2 + valid]
        teacher = base_logits[:, k + 1: k + 1 + valid] if soft_targets else None
        keep = window(mask, k + 2, valid)
        results.append(HeadResult(head_loss(logits, targets, teacher, keep), logits, targets, keep))
    return results


class MedusaObjective(PerHeadObjective):
    """Medusa-1: the backbone frozen, head k trained with cross-entropy against the token k + 2
    after its position (the token k + 1 after the root), weighted by ``decay ** k``.

    ``soft_targets=True`` is self-distillation: head k matches the backbone's own
    distribution for that token (soft cross-entropy), for when no data from the model's
    own distribution exists; pair it with text the model generated itself.
    """

    def __init__(self, model: nn.Module, heads: nn.Module, decay: float = 0.8, soft_targets: bool = False) -> None:
        super().__init__(model, heads)
        self.decay = decay
        self.soft_targets = soft_targets

    def _per_head(self, module: nn.Module, batch: Blocks) -> list[HeadResult]:
        tokens, mask = split_batch(batch)
        with torch.no_grad():
            out = self.model(input_ids=tokens[:, :-1], output_hidden_states=True)
        return medusa_head_results(module, out.hidden_states[-1], out.logits, tokens, self.soft_targets, mask)


class Medusa2Objective(MedusaObjective):
    """Medusa-2: the backbone trained jointly with the heads.

    Loss = ``lm_weight * LM loss + sum_k decay**k * head_k loss``. For the first
    ``head_warmup_steps`` steps only the heads learn (the backbone's hidden states are
    detached and the LM loss is off), so randomly initialised heads do not send large
    gradients into a good backbone; afterwards the heads keep a learning rate
    ``head_lr_multiplier`` times the backbone's (Medusa's recipe: 4x). ``evaluate``
    reports the backbone's held-out loss and perplexity, so the cost of joint training
    to the model itself is visible.
    """

    def __init__(self, model: nn.Module, heads: nn.Module, decay: float = 0.8, lm_weight: float = 1.0,
                 head_warmup_steps: int = 100, head_lr_multiplier: float = 4.0) -> None:
        self.model = model  # not frozen: it trains with the heads
        self.heads = heads
        self.decay = decay
        self.soft_targets = False
        self.lm_weight = lm_weight
        self.head_warmup_steps = head_warmup_steps
        self.head_lr_multiplier = head_lr_multiplier
        self.joint = nn.ModuleDict({"backbone": model, "heads": heads})

    def trainable(self) -> nn.Module:
        return self.joint

    def param_groups(self, module: nn.Module, lr: float):
        backbone = [p for p in module["backbone"].parameters() if p.requires_grad]
        heads = [p for p in module["heads"].parameters() if p.requires_grad]
        return [{"params": backbone, "lr": lr}, {"params": heads, "lr": lr * self.head_lr_multiplier}]

    def loss(self, module: nn.Module, batch: Blocks, step: int):
        warming_up = step < self.head_warmup_steps
        tokens, mask = split_batch(batch)
        out = module["backbone"](input_ids=tokens[:, :-1], output_hidden_states=True)
        hidden = out.hidden_states[-1]
        results = medusa_head_results(module["heads"], hidden.detach() if warming_up else hidden, out.logits, tokens,
                                      soft_targets=False, mask=mask)
        total, metrics = self.weighted(results)
        lm = lm_loss(out.logits, tokens, mask)
        if not warming_up:
            total = total + self.lm_weight * lm
        return total, {**metrics, "lm_loss": float(lm.detach())}

    def head_predictions(self, module: nn.Module, batch: Blocks) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return super().head_predictions(module["heads"], batch)

    def shard_units(self, module: nn.Module) -> list[nn.Module]:
        """FSDP groups for sharded joint training: each decoder layer of the backbone (the classes its
        ``_no_split_modules`` names) and each head (one lm_head-sized projection each); the embeddings, final
        norm and lm_head stay in the root group."""
        names = set(getattr(module["backbone"], "_no_split_modules", None) or ())
        layers = [m for m in module["backbone"].modules() if type(m).__name__ in names]
        if not layers:
            raise UnsupportedError(
                f"{type(module['backbone']).__name__} names no decoder layer class (_no_split_modules), so spec "
                "cannot tell which modules to shard one by one; FSDP is supported for transformers models that "
                "do (Llama, Qwen2, Mistral and most others).")
        return layers + list(module["heads"].heads)

    @torch.no_grad()
    def evaluate(self, module: nn.Module, blocks: Blocks, top_k: int = 5) -> dict[str, float]:
        heads_metrics = super().evaluate(module["heads"], blocks, top_k)
        lm_metrics = LanguageModelObjective(module["backbone"]).evaluate(module["backbone"], blocks)
        return {**heads_metrics, **lm_metrics}
