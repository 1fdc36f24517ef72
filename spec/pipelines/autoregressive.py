"""The baseline: one forward pass per token with a KV cache, same interface as the speculative decoder.

Written independently of the verifier and acceptors on purpose: it is the reference
the speculative decoder is tested against.
"""

from __future__ import annotations

import time
from typing import Iterable, Optional, Sequence, Union

import torch
from transformers import DynamicCache

from spec.models import cache_kwargs, model_device
from spec.pipelines.inputs import normalise_request
from spec.protocols import GenerationOutput, StepStats
from spec.sampling import check_finite, make_generator, processed_logits
from spec.timing import active_timer


class AutoregressiveDecoder:
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
    ) -> GenerationOutput:
        request = normalise_request(self.model, input_ids, max_new_tokens, eos_token_id, temperature, top_k, top_p,
                                    seed, stop_sequences)
        start = time.perf_counter()
        sampling = request.sampling
        device = model_device(self.model)
        generator = make_generator(sampling, device)
        generated: list[int] = []
        cache = DynamicCache()
        next_input = request.prompt.to(device)[None]
        steps: list[StepStats] = []
        prefill_s = 0.0
        finished = request.max_new_tokens == 0
        timer = active_timer()
        while not finished:
            forward_before = timer.seconds if timer else 0.0
            t0 = time.perf_counter()
            logits = self.model(input_ids=next_input, **cache_kwargs(self.model, cache), use_cache=True).logits[0, -1]
            t1 = time.perf_counter()
            check_finite(logits)
            if sampling.is_greedy:
                token = int(logits.argmax())
            else:
                probs = processed_logits(logits, sampling).softmax(dim=-1)
                token = int(torch.multinomial(probs, 1, generator=generator))
            t2 = time.perf_counter()
            if not steps:
                prefill_s = t1 - t0
            steps.append(StepStats(tree_size=1, accepted=0, emitted=1, verify_s=t1 - t0, accept_s=t2 - t1,
                                   forward_s=timer.seconds - forward_before if timer else None))
            kept, finished = request.take([token], generated)
            generated.extend(kept)
            next_input = torch.tensor([[token]], device=device)
        return GenerationOutput(sequences=torch.tensor([request.prompt.tolist() + generated]), prompt_length=request.prompt.numel(),
                                steps=tuple(steps), prefill_s=prefill_s, total_s=time.perf_counter() - start)
