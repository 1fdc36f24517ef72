"""Self-distillation data: let the model write its own training text from prompts.

The model continues a batch of prompts with its KV cache, one new token per forward pass over the batch
(not the whole sequence again for every token). With ``work_dir`` each finished batch is saved, so a
killed run resumes where it stopped and a finished one is read back instead of generated again.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Optional

import torch
from safetensors.torch import load_file, save_file
from transformers import DynamicCache

from spec.errors import ConfigurationError
from spec.io import atomic_write_bytes
from spec.models import cache_kwargs, model_device
from spec.protocols import SamplingParams
from spec.sampling import processed_logits


@torch.no_grad()
def continue_batch(model, prompts: torch.Tensor, new_tokens: int, sampling: SamplingParams,
                   generator: torch.Generator) -> torch.Tensor:
    """``prompts`` ``[B, P]`` (same length, no padding) continued by ``new_tokens`` samples: ``[B, P + new]``.

    Draws come from ``generator`` on the CPU in float64, one ``multinomial`` over the batch per position,
    so the output depends on the seed and the batch, not on the device.
    """
    device = model_device(model)
    cache = DynamicCache()
    rows = [prompts.cpu()]
    step_input = prompts.to(device)
    for _ in range(new_tokens):
        logits = model(input_ids=step_input, use_cache=True, **cache_kwargs(model, cache)).logits[:, -1]
        probs = processed_logits(logits.double().cpu(), sampling).softmax(-1)
        chosen = torch.multinomial(probs, 1, generator=generator)
        rows.append(chosen)
        step_input = chosen.to(device)
    return torch.cat(rows, dim=1)


def generate_own_blocks(model, prompts: torch.Tensor, new_tokens: int, temperature: float = 1.0,
                        seed: int = 0, batch_size: int = 16, work_dir: Optional[str | os.PathLike] = None,
                        progress: bool = False) -> torch.Tensor:
    """Continue every prompt ``[N, P]`` by ``new_tokens`` sampled from the model; returns ``[N, P + new_tokens]``.

    Heads trained on these blocks (with ``MedusaObjective(soft_targets=True)``) learn the
    model's own distribution, which is what they will be asked to predict at inference,
    even when no data the model was trained on is available. ``work_dir``: where finished batches
    are kept, so a killed run resumes (the same prompts and settings only).
    """
    if new_tokens < 1 or batch_size < 1:
        raise ConfigurationError(f"new_tokens and batch_size must be >= 1, got {new_tokens} and {batch_size}.")
    sampling = SamplingParams(temperature=temperature)
    work = _work_dir(work_dir, prompts, new_tokens, temperature, seed, batch_size)
    batches = range(0, prompts.shape[0], batch_size)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=prompts.shape[0] * new_tokens, desc="self-distillation", unit="tok", dynamic_ncols=True)
    rows = []
    for index, start in enumerate(batches):
        done = None if work is None else work / f"batch-{index:06d}.safetensors"
        if done is not None and done.exists():
            rows.append(load_file(done)["tokens"])
        else:
            # One generator per batch, seeded by the batch's index: a resumed run draws what an unbroken one would.
            generator = torch.Generator().manual_seed(seed * 1_000_003 + index)
            rows.append(continue_batch(model, prompts[start: start + batch_size], new_tokens, sampling, generator))
            if done is not None:
                save_file({"tokens": rows[-1].contiguous()}, str(done.with_suffix(".tmp")))
                os.replace(done.with_suffix(".tmp"), done)
        if bar is not None:
            bar.update(rows[-1].shape[0] * new_tokens)
    if bar is not None:
        bar.close()
    return torch.cat(rows)


def _work_dir(work_dir, prompts: torch.Tensor, new_tokens: int, temperature: float, seed: int,
              batch_size: int) -> Optional[Path]:
    """The folder for this exact job (prompts and settings digested), so other jobs never reuse its batches."""
    if work_dir is None:
        return None
    key = hashlib.sha256(prompts.to(torch.long).contiguous().numpy().tobytes()
                         + json.dumps([new_tokens, temperature, seed, batch_size]).encode()).hexdigest()[:16]
    path = Path(work_dir) / f"distill-{key}"
    path.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path / "job.json", json.dumps({"prompts": list(prompts.shape), "new_tokens": new_tokens,
                                                      "temperature": temperature, "seed": seed,
                                                      "batch_size": batch_size}).encode())
    return path
