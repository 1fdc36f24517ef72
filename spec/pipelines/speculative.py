"""The speculative decoder: wires a drafter, tree builder, verifier and acceptor.

It holds no stage logic: it runs spec/pipelines/step.py's step until the request is
done, keeps what the request allows, and records what each step cost. See docs/architecture.md.
"""

from __future__ import annotations

import time
from typing import Iterable, Optional, Sequence, Union

import torch

from spec.pipelines.inputs import normalise_request
from spec.pipelines.step import DecodeState, Stages, prefill, speculative_step
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
    ) -> GenerationOutput:
        """Continue ``input_ids`` (``[1, L]``) by up to ``max_new_tokens``; greedy when temperature is 0.

        Stops after an ``eos_token_id`` or a completed ``stop_sequences`` entry (token ids).
        """
        request = normalise_request(self.model, input_ids, max_new_tokens, eos_token_id, temperature, top_k, top_p,
                                    seed, stop_sequences, context_limit=self.verifier.max_length)
        start = time.perf_counter()
        generator = make_generator(request.sampling, self.verifier.device)
        state = DecodeState.start(request.prompt, request.max_new_tokens)
        prefill(self.drafter, self.verifier, state.sequence)
        prefill_s = time.perf_counter() - start

        steps: list[StepStats] = []
        finished = request.max_new_tokens == 0
        timer = active_timer()
        while not finished:
            forward_before = timer.seconds if timer else 0.0
            step = speculative_step(self.stages, state, request.sampling, generator,
                                    budget=request.max_new_tokens - state.num_generated)
            kept, finished = request.take(list(step.acceptance.new_tokens), state.generated())
            state.extend(kept)
            steps.append(StepStats(tree_size=step.draft.tree.num_nodes, accepted=step.acceptance.num_accepted,
                                   emitted=len(kept), draft_s=step.draft_s, verify_s=step.verify_s,
                                   accept_s=step.accept_s, commit_s=step.commit_s,
                                   forward_s=timer.seconds - forward_before if timer else None))
        return GenerationOutput(sequences=state.sequence.clone()[None], prompt_length=state.prompt_length,
                                steps=tuple(steps), prefill_s=prefill_s, total_s=time.perf_counter() - start)
