"""Checks and normalisation of ``generate`` arguments, shared by every decoder."""

from __future__ import annotations

import numbers
from collections.abc import Iterable
from typing import Any, Callable, Optional, Sequence, Union

import attrs
import numpy as np
import torch

from spec.errors import ContextLengthError, InputError, SamplingParamsError
from spec.models import context_length, model_dtype, output_vocab_size
from spec.protocols import SamplingParams


#: torch generators take a 64-bit seed.
MAX_SEED = 2**64
#: Logits at most this large (in magnitude) must survive division by the temperature without overflowing.
LOGIT_BOUND = 100.0


@attrs.frozen
class GenerateRequest:
    prompt: torch.Tensor  # [L] int64 on the CPU
    max_new_tokens: int
    eos_token_ids: frozenset[int]
    sampling: SamplingParams
    stop_sequences: tuple[tuple[int, ...], ...] = ()
    #: Called with the generated ids after each token; True ends generation after that token (kept). The text
    #: pipeline matches stop strings on decoded text through it, which token-id stop sequences cannot express.
    stop_when: Optional[Callable[[list[int]], bool]] = None

    def take(self, candidates: list[int], generated: list[int]) -> tuple[list[int], bool]:
        """The prefix of ``candidates`` to emit after ``generated``, and whether generation is over.

        Stops after the first EOS token, after the first completed stop sequence (it is
        kept, as transformers keeps stop strings), after the first token ``stop_when`` accepts,
        or when ``max_new_tokens`` is reached.
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
            if self.stop_when is not None and self.stop_when(tail):
                return kept, True
        return kept, len(generated) + len(kept) >= self.max_new_tokens


def _integer(value: Any, what: str, error=InputError) -> int:
    """``value`` as an int when it is one: a Python or NumPy integer, or a 0-d integer tensor (not a bool)."""
    if isinstance(value, torch.Tensor) and value.dim() == 0 and not value.dtype.is_floating_point \
            and not value.dtype.is_complex and value.dtype != torch.bool:
        return int(value)
    if isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_)):
        return int(value)
    raise error(f"{what} must be an integer, got {value!r} ({type(value).__name__}).")


def _real(value: Any, what: str, error=SamplingParamsError) -> float:
    """``value`` as a float when it is a real number: Python or NumPy, or a 0-d floating/integer tensor; not a bool
    or a string."""
    if isinstance(value, torch.Tensor) and value.dim() == 0 and value.dtype != torch.bool and not value.dtype.is_complex:
        return float(value)
    if isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_)):
        return float(value)
    raise error(f"{what} must be a number, got {value!r} ({type(value).__name__}).")


def _token_ids(value: Any, what: str, vocab: int) -> tuple[int, ...]:
    """One or more token ids from an integer-like or a 1-d sequence of them, each in ``[0, vocab)``."""
    if isinstance(value, (str, bytes)):
        raise InputError(f"{what} must be token ids (integers), not text {value!r}; encode it with the tokenizer "
                         "first (e.g. tokenizer.convert_tokens_to_ids or tokenizer.encode).")
    if isinstance(value, dict):
        raise InputError(f"{what} must be a token id or a list of token ids, got a dict.")
    if isinstance(value, torch.Tensor) and value.dim() == 0 or isinstance(value, (numbers.Number, np.generic)):
        items = [value]
    elif isinstance(value, torch.Tensor):
        if value.dim() != 1:
            raise InputError(f"{what} must be a token id or a 1-d list of token ids, got a tensor of shape "
                             f"{tuple(value.shape)}.")
        items = list(value)
    else:
        try:
            items = list(value)
        except TypeError:
            raise InputError(f"{what} must be a token id or a list of token ids, got {value!r} "
                             f"({type(value).__name__}).") from None
    ids = tuple(_integer(item, f"Each token id in {what}", InputError) for item in items)
    for token in ids:
        if not 0 <= token < vocab:
            raise InputError(f"{what} holds token id {token}, outside the model's vocabulary [0, {vocab}); "
                             "use ids from this model's tokenizer.")
    return ids


def _prompt(input_ids: Any) -> torch.Tensor:
    if input_ids is None or isinstance(input_ids, (str, bytes)):
        raise InputError(f"input_ids must be token ids (a tensor or list of integers), got {input_ids!r}; "
                         "encode text with the tokenizer first, e.g. tokenizer(text, return_tensors='pt').input_ids.")
    try:
        ids = torch.as_tensor(input_ids)
    except (TypeError, ValueError, RuntimeError, OverflowError) as exc:
        raise InputError(f"input_ids cannot be read as a tensor of token ids ({exc}); pass a [1, length] tensor or "
                         "a list of integers (rows of equal length).") from exc
    if ids.device.type == "meta":
        raise InputError("input_ids is on the meta device and holds no values; pass real token ids.")
    if ids.dim() == 2:
        if ids.shape[0] != 1:
            raise InputError(
                f"input_ids has batch size {ids.shape[0]}; spec decodes one sequence at a time. "
                "Call generate once per sequence."
            )
        ids = ids[0]
    if ids.dim() != 1:
        raise InputError(f"input_ids must have shape [1, length] or [length], got {tuple(ids.shape)}.")
    if ids.numel() == 0:
        raise InputError("The prompt is empty; give at least one token (for example the BOS token).")
    if ids.dtype.is_floating_point or ids.dtype.is_complex or ids.dtype == torch.bool:
        raise InputError(f"input_ids must hold integer token ids, got dtype {ids.dtype}; convert with .long().")
    return ids.to(torch.long)


def _min_temperature(model) -> float:
    """The smallest temperature > 0 the model's logits survive being divided by: logits up to
    ``LOGIT_BOUND`` in size must stay finite in the logits' dtype."""
    dtype = model_dtype(model) if model_dtype(model).is_floating_point else torch.float32
    return LOGIT_BOUND / torch.finfo(dtype).max


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
    stop_when: Optional[Callable[[list[int]], bool]] = None,
) -> GenerateRequest:
    """Check every ``generate`` argument and put it in one canonical form, before any work.

    Integers may be Python or NumPy integers or 0-d integer tensors; numbers (temperature, top_p) may
    be any real number but not a bool or a string. Token ids (prompt, ``eos_token_id``, stop sequences)
    must lie in the model's vocabulary.
    """
    temperature = _real(temperature, "temperature")
    top_p = _real(top_p, "top_p")
    top_k = None if top_k is None else _integer(top_k, "top_k (None for no limit)", SamplingParamsError)
    seed = None if seed is None else _integer(seed, "seed (None for torch's global generator)", SamplingParamsError)
    if seed is not None and seed >= MAX_SEED:
        raise SamplingParamsError(f"seed must be below 2**64 (torch's generators take 64 bits), got {seed}.")
    sampling = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
    if 0 < temperature < _min_temperature(model):
        dtype = model_dtype(model)
        raise SamplingParamsError(
            f"temperature {temperature!r} is so small that dividing {dtype} logits by it overflows (the smallest "
            f"usable for this model is {_min_temperature(model):.3g}); use temperature=0 for greedy decoding, which "
            "is what such a temperature means.")
    ids = _prompt(input_ids)
    vocab = output_vocab_size(model)
    if int(ids.min()) < 0 or int(ids.max()) >= vocab:
        raise InputError(f"Prompt token ids must be in [0, {vocab}); got values from {int(ids.min())} to {int(ids.max())}.")
    max_new_tokens = _integer(max_new_tokens, "max_new_tokens (an integer >= 0)")
    if max_new_tokens < 0:
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
    eos = frozenset() if eos_token_id is None else frozenset(_token_ids(eos_token_id, "eos_token_id", vocab))
    stops = []
    if stop_sequences is not None:
        if isinstance(stop_sequences, (str, bytes)) or not isinstance(stop_sequences, (Iterable, torch.Tensor)):
            raise InputError(f"stop_sequences must be a list of token-id lists, e.g. [[13, 13]], got "
                             f"{stop_sequences!r}.")
        if isinstance(stop_sequences, torch.Tensor) and stop_sequences.dim() != 2:
            raise InputError(f"stop_sequences as a tensor must be 2-d [count, length], got shape "
                             f"{tuple(stop_sequences.shape)}.")
        for seq in stop_sequences:
            if isinstance(seq, (numbers.Number, np.generic)) or (isinstance(seq, torch.Tensor) and seq.dim() == 0):
                raise InputError(f"Each stop sequence must be a list of token ids, got the single id {seq!r}; "
                                 f"write [[{seq!r}]] to stop on that token (or pass it as eos_token_id).")
            seq = _token_ids(seq, "a stop sequence", vocab)
            if not seq:
                raise InputError("A stop sequence is empty; give at least one token id per stop sequence.")
            stops.append(seq)
    if stop_when is not None and not callable(stop_when):
        raise InputError(f"stop_when must be a callable taking the generated token ids and returning a bool, got "
                         f"{stop_when!r}.")
    return GenerateRequest(ids.to(torch.long).cpu(), max_new_tokens, eos, sampling, tuple(stops), stop_when)
