"""What a benchmark can run: our decoders and the transformers baselines a user would otherwise use."""

from __future__ import annotations

import time
from typing import Any, Optional, Protocol

import attrs
import torch

from spec.models import model_device
from spec.protocols import GenerationOutput


@attrs.frozen
class MethodRun:
    new_tokens: torch.Tensor  # [new] int64
    seconds: float
    output: Optional[GenerationOutput] = None  # per-step statistics, for our decoders


class Method(Protocol):
    name: str

    def run(self, prompt: torch.Tensor, max_new_tokens: int, sampling: dict[str, Any]) -> MethodRun:
        ...


@attrs.define
class DecoderMethod:
    """A ``SpeculativeDecoder`` or ``AutoregressiveDecoder``."""

    name: str
    decoder: Any

    def run(self, prompt, max_new_tokens, sampling):
        out = self.decoder.generate(prompt, max_new_tokens=max_new_tokens, **sampling)
        return MethodRun(new_tokens=out.new_tokens, seconds=out.total_s, output=out)


@attrs.define
class TransformersMethod:
    """``model.generate`` with fixed extra arguments: plain greedy, prompt lookup, or assisted generation."""

    name: str
    model: Any
    generate_kwargs: dict[str, Any] = attrs.field(factory=dict)

    @classmethod
    def greedy(cls, model) -> "TransformersMethod":
        return cls("transformers_generate", model)

    @classmethod
    def prompt_lookup(cls, model, num_tokens: int = 10) -> "TransformersMethod":
        return cls("transformers_prompt_lookup", model, {"prompt_lookup_num_tokens": num_tokens})

    @classmethod
    def assisted(cls, model, assistant) -> "TransformersMethod":
        return cls("transformers_assisted", model, {"assistant_model": assistant})

    def run(self, prompt, max_new_tokens, sampling):
        kwargs = dict(self.generate_kwargs)
        if sampling.get("seed") is not None:
            torch.manual_seed(sampling["seed"])  # generate draws from the global RNG
        kwargs["eos_token_id"] = sampling.get("eos_token_id")
        temperature = sampling.get("temperature", 0.0)
        if temperature > 0:
            kwargs.update(do_sample=True, temperature=temperature, top_k=sampling.get("top_k") or 0,
                          top_p=sampling.get("top_p", 1.0))
        else:
            kwargs.update(do_sample=False)
        device = model_device(self.model)
        ids = prompt.to(device)
        start = time.perf_counter()
        with torch.no_grad():
            out = self.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                      min_new_tokens=0, pad_token_id=self.model.generation_config.pad_token_id or 0,
                                      **kwargs)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        return MethodRun(new_tokens=out[0, prompt.shape[1]:].cpu(), seconds=seconds)
