"""Self-distillation data: let the model write its own training text from prompts."""

from __future__ import annotations

import torch

from spec.models import model_device
from spec.sampling import processed_logits
from spec.protocols import SamplingParams


@torch.no_grad()
def generate_own_blocks(model, prompts: torch.Tensor, new_tokens: int, temperature: float = 1.0,
                        seed: int = 0, batch_size: int = 16) -> torch.Tensor:
    """Continue every prompt ``[N, P]`` by ``new_tokens`` sampled from the model; returns ``[N, P + new_tokens]``.

    Heads trained on these blocks (with ``MedusaObjective(soft_targets=True)``) learn the
    model's own distribution, which is what they will be asked to predict at inference,
    even when no data the model was trained on is available.
    """
    generator = torch.Generator().manual_seed(seed)
    device = model_device(model)
    sampling = SamplingParams(temperature=temperature)
    rows = []
    for start in range(0, prompts.shape[0], batch_size):
        seq = prompts[start : start + batch_size].to(device)
        for _ in range(new_tokens):
            # Full recompute keeps this simple; self-distillation data is made once, offline.
            logits = model(input_ids=seq).logits[:, -1].double().cpu()
            probs = processed_logits(logits, sampling).softmax(-1)
            nxt = torch.multinomial(probs, 1, generator=generator).to(device)
            seq = torch.cat([seq, nxt], dim=1)
        rows.append(seq.cpu())
    return torch.cat(rows)
