"""Checks and normalisation of ``generate`` arguments, shared by every decoder."""

from __future__ import annotations

from typing import Iterable, Optional, Sequence, Union

import attrs
import torch

from spec.errors import ContextLengthError, InputError
from spec.models import context_length, output_vocab_size
from spec.protocols import SamplingParams


@attrs.frozen
class GenerateRequest:
    prompt: torch.Tensor  # [L] int64 on the CPU
    max_new_tokens: int
    eos_token_ids: frozenset[int]
    sampling: SamplingParams
    stop_sequences: tuple[tuple[int, ...], ...] = ()

    def take(self, candidates: list[int], generated: list[int]) -> tuple[list[int], bool]:
        """The prefix of ``candidates`` to emit after ``generated``, and whether generation is over.

        Stops after the first EOS token, after the first completed stop sequence (it is
        kept, as transformers keeps stop strings), or when ``max_new_tokens`` is reached.
        """
        room = self.max_new_tokens - len(generated)
        kept: list[int] = []
        for token in candidates[:room]:
            kept.append(token)
            if token in self.eos_token_ids:
                return kept, True
            tail = generated + kept
            if any(len(tail) >= len(s) and tuple(tail[-len(s):]) == s for s in self.stop_sequences):
                return kept, True
        return kept, len(generated) + len(kept) >= self.max_new_tokens


def normalise_request(
    model,
    input_ids,
    max_new_tokens: int,
    eos_token_id: Optional[Union[int, Iterable[int]]],
    temperature: float,
    top_k: Optional[int],
    top_p: float,
    seed: Optional[int],
    stop_sequences: Optional[Sequence[Sequence[int]]] = None,
    context_limit: Optional[int] = None,
) -> GenerateRequest:
    sampling = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
    ids = torch.as_tensor(input_ids)
    if ids.dim() == 2:
        if ids.shape[0] != 1:
            raise InputError(
                f"input_ids has batch size {ids.shape[0]}; spec decodes one sequence at a time. "
                "Call generate once per sequence."
            )
        ids = ids[0]
    if ids.dim() != 1:
        raise InputError(f"input_ids must have shape [1, length] or [length], got {tuple(ids.shape)}.")
    if ids.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
        raise InputError(f"input_ids must hold integer token ids, got dtype {ids.dtype}.")
    if ids.numel() == 0:
        raise InputError("The prompt is empty; give at least one token (for example the BOS token).")
    vocab = output_vocab_size(model)
    if int(ids.min()) < 0 or int(ids.max()) >= vocab:
        raise InputError(f"Prompt token ids must be in [0, {vocab}); got values from {int(ids.min())} to {int(ids.max())}.")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise InputError(f"max_new_tokens must be an integer >= 0, got {max_new_tokens!r}.")
    limit = context_length(model)
    where = "the model's context"
    if context_limit is not None and context_limit < limit:
        limit, where = context_limit, f"the verifier's cache (the model's context is {limit})"
    if ids.numel() + max_new_tokens > limit:
        raise ContextLengthError(
            f"The prompt ({ids.numel()} tokens) plus max_new_tokens ({max_new_tokens}) is "
            f"{ids.numel() + max_new_tokens} tokens, over {where} of {limit}; "
            f"shorten the prompt or ask for at most {max(limit - ids.numel(), 0)} new tokens."
        )
    if eos_token_id is None:
        eos = frozenset()
    elif isinstance(eos_token_id, int):
        eos = frozenset([eos_token_id])
    else:
        eos = frozenset(int(t) for t in eos_token_id)
    stops = []
    for seq in stop_sequences or ():
        seq = tuple(int(t) for t in seq)
        if not seq:
            raise InputError("A stop sequence is empty; give at least one token id per stop sequence.")
        stops.append(seq)
    return GenerateRequest(ids.to(torch.long).cpu(), max_new_tokens, eos, sampling, tuple(stops))
