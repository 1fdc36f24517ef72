"""The baseline: one forward pass per token with a KV cache, same interface as the speculative decoder.

Written independently of the verifier and acceptors on purpose: it is the reference
the speculative decoder is tested against.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Iterable, Optional, Sequence, Union

import torch
from transformers import DynamicCache

from spec.models import cache_kwargs, model_device
from spec.pipelines.inputs import normalise_request
from spec.pipelines.outputs import ScoredGenerationOutput, Stream, check_flag, token_logprobs
from spec.protocols import GenerationOutput, StepStats
from spec.sampling import check_finite, make_generator, processed_logits
from spec.timing import active_timer, device_clock


class AutoregressiveDecoder:
    """One forward pass per token. It keeps no state between calls (each call has its own cache), so
    concurrent calls on one decoder are safe, as concurrent forward passes of the model are."""

    def __init__(self, model):
        self.model = model.eval()

    @torch.no_grad()
    def generate(
        self,
        input_ids,
        max_new_tokens: int = 32,
        eos_token_id: Optional[Union[int, Iterable[int]]] = None,
        temperature: float = 0.0,
        top_k: Optional[int] = None,
        top_p: float = 1.0,
        seed: Optional[int] = None,
        stop_sequences: Optional[Sequence[Sequence[int]]] = None,
        streamer: Any = None,
        output_logprobs: bool = False,
        stop_when: Optional[Callable[[list[int]], bool]] = None,
    ) -> GenerationOutput:
        """As ``SpeculativeDecoder.generate``: ``streamer`` gets the prompt then each token; ``output_logprobs``
        returns each token's log-probability under the processed distribution it was drawn from."""
        request = normalise_request(self.model, input_ids, max_new_tokens, eos_token_id, temperature, top_k, top_p,
                                    seed, stop_sequences, stop_when=stop_when)
        check_flag(output_logprobs, "output_logprobs")
        stream = Stream(streamer)
        try:
            return self._decode(request, stream, output_logprobs)
        finally:
            stream.end()

    def _decode(self, request, stream: Stream, output_logprobs: bool) -> GenerationOutput:
        start = time.perf_counter()
        sampling = request.sampling
        device = model_device(self.model)
        generator = make_generator(sampling, device)
        generated: list[int] = []
        logprobs: list[torch.Tensor] = []
        cache = DynamicCache()
        next_input = request.prompt.to(device)[None]
        stream.put(request.prompt)
        steps: list[StepStats] = []
        prefill_s = 0.0
        finished = request.max_new_tokens == 0
        timer = active_timer()
        while not finished and not stream.failed:
            forward_before = timer.seconds if timer else 0.0
            t0 = device_clock(device)  # on CUDA, waits for queued work so each stage's time is its own
            logits = self.model(input_ids=next_input, **cache_kwargs(self.model, cache), use_cache=True).logits[0, -1]
            t1 = device_clock(device)
            check_finite(logits)
            if sampling.is_greedy:
                token = int(logits.argmax())
            else:
                # In float64 as the acceptors do (transformers: float32): half-precision processing and
                # softmax would make the baseline's distribution drift from the speculative decoder's.
                probs = processed_logits(logits.double(), sampling).softmax(dim=-1)
                token = int(torch.multinomial(probs, 1, generator=generator))
            t2 = device_clock(device)
            if not steps:
                prefill_s = t1 - t0
            steps.append(StepStats(tree_size=1, accepted=0, emitted=1, verify_s=t1 - t0, accept_s=t2 - t1,
                                   forward_s=timer.seconds - forward_before if timer else None))
            kept, finished = request.take([token], generated)
            generated.extend(kept)
            if output_logprobs:
                # The same float64 processing as the draw above, so the same tokens are filtered.
                logprobs.append(token_logprobs(logits.double()[None], kept, sampling))
            stream.put(kept)
            next_input = torch.tensor([[token]], device=device)
        fields = dict(sequences=torch.tensor([request.prompt.tolist() + generated]),
                      prompt_length=request.prompt.numel(), steps=tuple(steps), prefill_s=prefill_s,
                      total_s=time.perf_counter() - start)
        if output_logprobs:
            return ScoredGenerationOutput(**fields, logprobs=torch.cat(logprobs) if logprobs
                                          else torch.zeros(0, dtype=torch.float64))
        return GenerationOutput(**fields)
