"""What the decoders report besides the tokens, and the guards around one ``generate`` call.

- ``token_logprobs``: the log-probability of each emitted token under the target's processed distribution,
  the one spec.sampling forms for sampling (so the speculative and autoregressive decoders agree on it).
- ``Stream``: feeds a transformers-style streamer (``put``/``end``) and turns its failure into a
  ``StreamerError`` after the decoder has stopped cleanly.
- ``exclusive``: refuses a second ``generate`` on stages that are already decoding (``ConcurrentUseError``).
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Any, Iterator, Optional, Sequence

import attrs
import torch

from spec.errors import ConcurrentUseError, InputError, ShapeError, StreamerError
from spec.protocols import GenerationOutput, SamplingParams
from spec.sampling import check_finite, processed_logits


@attrs.frozen
class ScoredGenerationOutput(GenerationOutput):
    """A ``GenerationOutput`` with ``logprobs``: ``[new tokens]`` float64, the log-probability of each emitted
    token under the target's distribution at that position (see ``token_logprobs``)."""

    logprobs: torch.Tensor = attrs.field(kw_only=True)

    def __attrs_post_init__(self) -> None:
        if self.logprobs.shape != self.new_tokens.shape:
            raise ShapeError(f"logprobs has shape {tuple(self.logprobs.shape)} for {self.new_tokens.numel()} new "
                             "tokens; give one log-probability per emitted token.")


def token_logprobs(logits: torch.Tensor, tokens: Sequence[int], sampling: SamplingParams) -> torch.Tensor:
    """``[len(tokens)]`` float64: ``log p(tokens[i])`` with ``logits[i]`` ``[n, V]`` the target's logits before it.

    ``p`` is the distribution sampling draws from: spec.sampling's ``processed_logits`` (temperature, top-k,
    top-p, in the logits' own dtype, so the same tokens are filtered as when sampling), normalised in float64.
    Greedy decoding applies no processing: ``p`` is then the softmax of the raw logits (what transformers'
    ``compute_transition_scores`` reports for greedy search), not the one-hot the argmax picks from.
    """
    rows = logits[: len(tokens)]
    check_finite(rows)
    scores = rows if sampling.is_greedy else processed_logits(rows, sampling)
    log_p = scores.double().log_softmax(dim=-1)
    index = torch.tensor(list(tokens), dtype=torch.long, device=log_p.device)[:, None]
    return log_p.gather(-1, index)[:, 0].cpu()


def check_flag(value: Any, name: str) -> bool:
    """A yes/no argument must be a bool: ``"no"`` or ``1`` are not silently taken as true."""
    if not isinstance(value, bool):
        raise InputError(f"{name} must be True or False, got {value!r} ({type(value).__name__}).")
    return value


class Stream:
    """A transformers streamer (anything with ``put(tensor)`` and ``end()``), or none.

    ``put`` receives ``[1, k]`` int64 CPU tensors: the prompt first (``TextStreamer(skip_prompt=True)`` skips
    it), then the tokens each step keeps, several at a time, as transformers' assisted decoding does.
    The first exception the streamer raises is kept; the decoder checks ``failed`` after each step and stops.
    """

    def __init__(self, streamer: Any):
        if streamer is not None and not (callable(getattr(streamer, "put", None))
                                         and callable(getattr(streamer, "end", None))):
            raise InputError(f"streamer must have put(token_ids) and end() methods (e.g. transformers' TextStreamer "
                             f"or TextIteratorStreamer), got {type(streamer).__name__}.")
        self.streamer = streamer
        self.error: Optional[BaseException] = None
        self.ended = False

    @property
    def failed(self) -> bool:
        return self.error is not None

    def put(self, tokens: Sequence[int] | torch.Tensor) -> None:
        if self.streamer is None or self.failed or len(tokens) == 0:
            return
        ids = torch.as_tensor(tokens, dtype=torch.long).reshape(1, -1).cpu()
        try:
            self.streamer.put(ids)
        except Exception as exc:  # noqa: BLE001 -- any streamer failure aborts generation, re-raised typed below
            self.error = exc

    def end(self) -> None:
        """Call ``end()`` once (also after the streamer failed, so a consumer waiting on a
        ``TextIteratorStreamer`` is released), then raise ``StreamerError`` if the streamer failed."""
        if self.streamer is not None and not self.ended:
            self.ended = True
            try:
                self.streamer.end()
            except Exception as exc:  # noqa: BLE001
                self.error = self.error or exc
        if self.error is not None:
            raise StreamerError(
                f"The streamer {type(self.streamer).__name__} raised {type(self.error).__name__}: {self.error}. "
                "Generation stopped after the tokens it had received and the decoder can be used again; fix the "
                "streamer (its exception is this error's __cause__).") from self.error


# Stages being decoded right now, by id(): stages hold one sequence's caches, so two generate calls on the
# same drafter, verifier or tree builder (one decoder in two threads, two decoders sharing a drafter object,
# or a streamer calling generate again) would corrupt each other. ids are unique while the objects live,
# and they live at least as long as the call that registered them.
_BUSY: set[int] = set()
_BUSY_LOCK = threading.Lock()


@contextmanager
def exclusive(owner: str, stages: Sequence[Any]) -> Iterator[None]:
    """Hold ``stages`` for one ``generate``; raise ``ConcurrentUseError`` if any is already held."""
    keys = {id(stage) for stage in stages}
    with _BUSY_LOCK:
        if keys & _BUSY:
            busy = [type(stage).__name__ for stage in stages if id(stage) in _BUSY]
            raise ConcurrentUseError(
                f"{owner} is already generating (its {', '.join(busy)} hold another sequence's caches): called "
                "again from another thread or from inside a streamer before the first call returned. spec refuses "
                "rather than interleave two sequences in one cache. Give each thread its own decoder, with its own "
                "drafter and verifier objects (they may share the model and the heads' weights), or wait for the "
                "first call to return.")
        _BUSY.update(keys)
    try:
        yield
    finally:
        with _BUSY_LOCK:
            _BUSY.difference_update(keys)
