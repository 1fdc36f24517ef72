"""Self-distillation data: let the model write its own training text from prompts.

The model continues a batch of prompts with its KV cache, one new token per forward pass over the batch
(not the whole sequence again for every token). With ``work_dir`` each finished batch is saved, so a
killed run resumes where it stopped and a finished one is read back instead of generated again.

Conversations (:func:`generate_own_conversations`): the model writes the first assistant turn itself, given
what precedes it (system and user messages, rendered with the chat template's generation prompt); its reply is
cut after its first end-of-turn token and only the reply is a target. Later turns are dropped: the user's next
message answered the original reply, not the model's.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Iterable, Optional, Sequence

import torch
from safetensors.torch import load_file, save_file
from transformers import DynamicCache

from spec.errors import ConfigurationError, DataError
from spec.io import atomic_write_bytes
from spec.models import cache_kwargs, context_length, model_device
from spec.protocols import SamplingParams
from spec.sampling import processed_logits
from spec.training.chat import ConversationError, Message, first_prompts, pad_id_of, sequence_blocks
from spec.training.data import TokenBlocks


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


def generate_own_conversations(model, tokenizer, conversations: Iterable[Sequence[Message]], new_tokens: int,
                               block_size: int, temperature: float = 1.0, seed: int = 0, batch_size: int = 16,
                               work_dir: Optional[str | os.PathLike] = None, progress: bool = False,
                               stop_token_ids: Optional[Sequence[int]] = None) -> TokenBlocks:
    """Self-distillation for conversations: per conversation, the prompt before its first assistant turn
    continued by at most ``new_tokens`` of the model's own tokens, cut after the first of ``stop_token_ids``
    (default: the tokenizer's and the model's EOS); blocks of ``block_size`` with the loss mask on the reply.

    Prompts of one length are batched together (the cached generator takes no padding); ``work_dir`` makes the
    run resumable as in :func:`generate_own_blocks`.
    """
    prompts = first_prompts(list(conversations), tokenizer)
    stops = set(stop_token_ids) if stop_token_ids is not None else _eos_ids(model, tokenizer)
    if not stops:
        raise ConfigurationError("Neither the tokenizer nor the model names an EOS token, so the model's replies "
                                 "could not be cut at the end of its turn; pass stop_token_ids (e.g. the id of the "
                                 "template's end-of-turn marker).")
    context = context_length(model)
    groups: dict[int, list[int]] = {}
    for number, prompt in enumerate(prompts):
        if not prompt:
            raise ConversationError(f"conversation {number} renders to no prompt tokens before its first reply; "
                                    "give it the user turn the reply answers.")
        if context is not None and len(prompt) + new_tokens > context:
            raise DataError(f"conversation {number}: its prompt ({len(prompt)} tokens) and {new_tokens} new tokens "
                            f"exceed the model's context of {context}; lower the new tokens or drop the conversation.")
        groups.setdefault(len(prompt), []).append(number)
    replies: dict[int, list[int]] = {}
    for length, members in sorted(groups.items()):
        # Each length gets its own seed, so groups do not replay one another's draws.
        rows = generate_own_blocks(model, torch.tensor([prompts[i] for i in members]), new_tokens, temperature,
                                   seed=seed * 65_537 + length, batch_size=batch_size, work_dir=work_dir,
                                   progress=progress)
        for number, row in zip(members, rows[:, length:].tolist()):
            cut = next((i + 1 for i, token in enumerate(row) if token in stops), len(row))
            replies[number] = row[:cut]
    sequences = ((prompts[i] + replies[i], [False] * len(prompts[i]) + [True] * len(replies[i]))
                 for i in range(len(prompts)))
    return sequence_blocks(sequences, block_size, pad_id_of(tokenizer))


def _eos_ids(model, tokenizer) -> set[int]:
    ids: set[int] = set()
    for value in (getattr(tokenizer, "eos_token_id", None),
                  getattr(getattr(model, "generation_config", None), "eos_token_id", None),
                  getattr(getattr(model, "config", None), "eos_token_id", None)):
        for item in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(item, int):
                ids.add(item)
    return ids
