"""The speculative decoder: wires a drafter, tree builder, verifier and acceptor.

It holds no stage logic: each step asks the stages in turn, appends what the
acceptor kept, and records what the step cost. See docs/architecture.md.
"""

from __future__ import annotations

import time
from typing import Iterable, Optional, Sequence, Union

import torch

from spec.errors import IncompatibleStagesError
from spec.pipelines.inputs import normalise_request
from spec.protocols import (
    Acceptor,
    DraftContext,
    Drafter,
    GenerationOutput,
    StepStats,
    TreeBuilder,
    Verifier,
    check_composition,
)
from spec.sampling import make_generator
from spec.timing import active_timer


class SpeculativeDecoder:
    """``generate`` like transformers, one verify pass per step over a tree of candidates."""

    def __init__(self, model, drafter: Drafter, tree_builder: TreeBuilder, verifier: Verifier, acceptor: Acceptor):
        # Refuses combinations that cannot work, before the first step (spec/protocols/compat.py).
        self.composition = check_composition(drafter, tree_builder, verifier, acceptor)
        self.model = model
        self.drafter = drafter
        self.tree_builder = tree_builder
        self.verifier = verifier
        self.acceptor = acceptor

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
        sampling = request.sampling
        generator = make_generator(sampling, self.model.get_output_embeddings().weight.device)
        prompt = request.prompt
        out: list[int] = prompt.tolist()
        generated: list[int] = []
        steps: list[StepStats] = []

        self.verifier.reset()
        self.drafter.reset()
        # The root (last prompt token) is verified with the first tree, so its KV is not cached yet.
        hidden = self.verifier.prefill(prompt[:-1])
        self.drafter.commit(prompt[:-1], hidden)
        prev_hidden = hidden[-1] if hidden.shape[0] else None
        prefill_s = time.perf_counter() - start

        finished = request.max_new_tokens == 0
        timer = active_timer()
        while not finished:
            forward_before = timer.seconds if timer else 0.0
            t0 = time.perf_counter()
            # A step yields at most depth + 1 tokens; drafting deeper than needed is wasted work.
            tree = self.tree_builder.tree().truncated(request.max_new_tokens - len(generated) - 1)
            context = DraftContext(tokens=torch.tensor(out + generated), prev_hidden=prev_hidden)
            draft = self.tree_builder.select(self.drafter.propose(tree, context, sampling, generator))
            if draft.kind not in self.composition.candidate_kinds:
                raise IncompatibleStagesError(
                    f"{type(self.drafter).__name__} returned {draft.kind.value} candidates but its traits declare "
                    f"only {sorted(k.value for k in self.drafter.traits.candidate_kinds)}; fix its traits.")
            t1 = time.perf_counter()
            verification = self.verifier.verify(draft)
            t2 = time.perf_counter()
            acceptance = self.acceptor.accept(draft, verification, sampling, generator)
            t3 = time.perf_counter()
            self.verifier.commit(acceptance.path)
            path = list(acceptance.path)
            self.drafter.commit(draft.tokens[path], verification.hidden_states[path])
            prev_hidden = verification.hidden_states[path[-1]]
            t4 = time.perf_counter()

            kept, finished = request.take(list(acceptance.new_tokens), generated)
            generated.extend(kept)
            steps.append(StepStats(tree_size=draft.tree.num_nodes, accepted=acceptance.num_accepted,
                                   emitted=len(kept), draft_s=t1 - t0, verify_s=t2 - t1, accept_s=t3 - t2,
                                   commit_s=t4 - t3, forward_s=timer.seconds - forward_before if timer else None))
        return GenerationOutput(sequences=torch.tensor([out + generated]), prompt_length=prompt.numel(), steps=tuple(steps),
                                prefill_s=prefill_s, total_s=time.perf_counter() - start)
