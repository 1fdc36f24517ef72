"""The speculative decoder: wires a drafter, tree builder, verifier and acceptor.

It holds no stage logic: it runs spec/pipelines/step.py's step until the request is
done, keeps what the request allows, and records what each step cost. See docs/architecture.md.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Iterable, Optional, Sequence, Union

import torch

from spec.pipelines.inputs import normalise_request
from spec.pipelines.outputs import ScoredGenerationOutput, Stream, check_flag, exclusive, token_logprobs
from spec.pipelines.step import DecodeState, Stages, first_token, prefill_scoring_root, speculative_step
from spec.protocols import Acceptor, Drafter, GenerationOutput, StepStats, TreeBuilder, Verifier
from spec.sampling import make_generator
from spec.timing import active_timer


class SpeculativeDecoder:
    """``generate`` like transformers, one verify pass per step over a tree of candidates."""

    def __init__(self, model, drafter: Drafter, tree_builder: TreeBuilder, verifier: Verifier, acceptor: Acceptor):
        self.model = model
        self.stages = Stages(drafter, tree_builder, verifier, acceptor)  # refuses stages that do not compose

    drafter = property(lambda self: self.stages.drafter)
    tree_builder = property(lambda self: self.stages.tree_builder)
    verifier = property(lambda self: self.stages.verifier)
    acceptor = property(lambda self: self.stages.acceptor)
    composition = property(lambda self: self.stages.composition)

    @property
    def lossless(self) -> bool:
        """Whether the output is distributed exactly as the model's own sampler (greedy: identical to it)."""
        return self.composition.lossless

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
        """Continue ``input_ids`` (``[1, L]``) by up to ``max_new_tokens``; greedy when temperature is 0.

        Stops after an ``eos_token_id``, a completed ``stop_sequences`` entry (token ids), or a token after
        which ``stop_when(generated_ids)`` is true. ``streamer`` (transformers' ``put``/``end`` interface)
        gets the prompt, then each step's kept tokens as soon as they are accepted; if it raises, generation
        stops and ``StreamerError`` is raised. ``output_logprobs``: return a ``ScoredGenerationOutput`` whose
        ``logprobs`` are the emitted tokens' log-probabilities under the target's processed distribution,
        read from the verification's logits along the accepted path.

        One call at a time: a second call while one runs (another thread, or from inside the streamer) on
        this decoder or on stages another decoder is running raises ``ConcurrentUseError``.
        """
        request = normalise_request(self.model, input_ids, max_new_tokens, eos_token_id, temperature, top_k, top_p,
                                    seed, stop_sequences, context_limit=self.verifier.max_length, stop_when=stop_when)
        check_flag(output_logprobs, "output_logprobs")
        stream = Stream(streamer)
        with exclusive(f"This {type(self).__name__}", (self.drafter, self.verifier)):
            try:
                output = self._decode(request, stream, output_logprobs)
            finally:
                stream.end()  # also on an abort, so a consumer iterating a TextIteratorStreamer is released
        return output

    def _decode(self, request, stream: Stream, output_logprobs: bool) -> GenerationOutput:
        start = time.perf_counter()
        generator = make_generator(request.sampling, self.verifier.device)
        state = DecodeState.start(request.prompt, request.max_new_tokens)
        stream.put(request.prompt)
        finished = request.max_new_tokens == 0
        # One pass over the prompt that also gives the first new token, where the verifier can score it (as
        # autoregressive decoding does); otherwise the prompt's last token is the first tree's root.
        scored = None if finished else prefill_scoring_root(self.drafter, self.verifier, state.sequence)
        prefill_s = time.perf_counter() - start

        steps: list[StepStats] = []
        logprobs: list[torch.Tensor] = []
        timer = active_timer()
        while not finished and not stream.failed:
            forward_before = timer.seconds if timer else 0.0
            if scored is not None:
                step = first_token(self.stages, state, scored, request.sampling, generator)
                scored = None
            else:
                step = speculative_step(self.stages, state, request.sampling, generator,
                                        budget=request.max_new_tokens - state.num_generated)
            kept, finished = request.take(list(step.acceptance.new_tokens), state.generated())
            state.extend(kept)
            if output_logprobs:
                # Row i of the path's logits is the target's distribution for new token i (the bonus last).
                logprobs.append(token_logprobs(step.verification.logits[list(step.acceptance.path)], kept,
                                               request.sampling))
            steps.append(StepStats(tree_size=step.draft.tree.num_nodes, accepted=step.acceptance.num_accepted,
                                   emitted=len(kept), draft_s=step.draft_s, verify_s=step.verify_s,
                                   accept_s=step.accept_s, commit_s=step.commit_s,
                                   forward_s=timer.seconds - forward_before if timer else None))
            stream.put(kept)
        fields = dict(sequences=state.sequence.clone()[None], prompt_length=state.prompt_length, steps=tuple(steps),
                      prefill_s=prefill_s, total_s=time.perf_counter() - start)
        if output_logprobs:
            return ScoredGenerationOutput(**fields, logprobs=torch.cat(logprobs) if logprobs
                                          else torch.zeros(0, dtype=torch.float64))
        return GenerationOutput(**fields)
