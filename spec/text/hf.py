"""``model.generate(..., custom_generate=spec.text.CUSTOM_GENERATE, trust_remote_code=True, drafter=...)``.

transformers (5.x) runs ``<path>/custom_generate/generate.py``'s ``generate(model, **generate_arguments)``
instead of its own decoding when ``custom_generate`` names a local directory holding one. The shipped
``spec/text/custom_generate/generate.py`` only forwards here, so the logic is ordinary, tested library code.
"""

from __future__ import annotations

import os
from typing import Any, Optional

import torch

from spec.errors import InputError, UnsupportedError

#: The directory to pass as ``custom_generate`` (it holds ``custom_generate/generate.py``).
CUSTOM_GENERATE = os.path.dirname(os.path.abspath(__file__))

# Arguments transformers always forwards (None unless the caller set them); spec cannot honour them, so a set
# one is refused rather than ignored.
_REFUSED_WHEN_SET = ("logits_processor", "prefix_allowed_tokens_fn", "synced_gpus", "assistant_model",
                     "negative_prompt_ids", "negative_prompt_attention_mask")


def _setting(name: str, kwargs: dict, config: Any, default: Any = None) -> Any:
    """A generation setting as transformers resolves it: the keyword, else the generation config's value."""
    if kwargs.get(name) is not None:
        return kwargs.pop(name)
    kwargs.pop(name, None)
    value = getattr(config, name, None) if config is not None else None
    return default if value is None else value


def generate(model, inputs: Optional[torch.Tensor] = None, *, drafter: Any = None, tree: Any = None,
             acceptor: Any = None, verifier: str = "auto", tokenizer: Any = None, streamer: Any = None,
             stopping_criteria: Any = None, generation_config: Any = None, seed: Optional[int] = None,
             **kwargs: Any) -> torch.Tensor:
    """Decode with spec; returns ``[1, prompt + new]`` ids like ``model.generate``.

    ``drafter``: a ``Drafter`` for ``model`` (None: spec's autoregressive decoder). ``tree``: a
    ``CandidateTree``, Medusa choices or a tree builder (default: a chain as deep as the drafter drafts).
    ``max_new_tokens``, ``do_sample``/``temperature``/``top_k``/``top_p``, ``eos_token_id`` and
    ``stop_strings`` (with ``tokenizer=``) are read from the keywords or the model's generation config, as
    transformers reads them; ``streamer`` receives tokens as they are accepted; ``seed`` seeds sampling.
    """
    from spec.pipelines import AutoregressiveDecoder, SpeculativeDecoder
    from spec.text.generator import tree_builder
    from spec.text.tokens import StopStrings, check_stop_strings

    input_ids = kwargs.pop("input_ids", None) if inputs is None else inputs
    if input_ids is None:
        raise InputError("model.generate(custom_generate=spec) needs the prompt's input_ids (a [1, L] tensor).")
    mask = kwargs.pop("attention_mask", None)
    if mask is not None and not bool(torch.as_tensor(mask).bool().all()):
        raise UnsupportedError("spec decodes one unpadded sequence: the attention_mask masks some tokens. Drop the "
                               "padding (and the mask), one generate call per sequence.")
    config = generation_config if generation_config is not None else getattr(model, "generation_config", None)
    max_new_tokens = _setting("max_new_tokens", kwargs, config, 20)
    do_sample = _setting("do_sample", kwargs, config, False)
    temperature = float(_setting("temperature", kwargs, config, 1.0)) if do_sample else 0.0
    top_k = _setting("top_k", kwargs, config, None) if do_sample else None
    top_k = None if top_k == 0 else top_k  # transformers' 0 means no top-k filtering
    top_p = float(_setting("top_p", kwargs, config, 1.0)) if do_sample else 1.0
    for name in ("temperature", "top_k", "top_p"):
        kwargs.pop(name, None)
    eos = _setting("eos_token_id", kwargs, config, None)
    stop_strings = _setting("stop_strings", kwargs, config, None)
    if kwargs.pop("max_length", None) is not None:
        raise UnsupportedError("spec's custom_generate takes max_new_tokens, not max_length; pass max_new_tokens.")
    if stopping_criteria:
        raise UnsupportedError("spec's custom_generate does not run transformers StoppingCriteria; use "
                               "eos_token_id or stop_strings (with tokenizer=).")
    for name in _REFUSED_WHEN_SET:
        if kwargs.pop(name, None):
            raise UnsupportedError(f"spec's custom_generate does not support {name}; drop it.")
    kwargs.pop("use_model_defaults", None)  # the generation config is read as transformers reads it, below
    for name in ("pad_token_id", "bos_token_id", "return_dict_in_generate", "output_scores", "num_beams"):
        value = kwargs.pop(name, None)
        if name == "num_beams" and value not in (None, 1):
            raise UnsupportedError("spec decodes one beam; drop num_beams.")
        if name == "return_dict_in_generate" and value:
            raise UnsupportedError("spec's custom_generate returns the ids tensor; for statistics and logprobs use "
                                   "spec.text.TextGenerator or SpeculativeDecoder.generate.")
    if kwargs:
        raise UnsupportedError(f"spec's custom_generate does not take {', '.join(sorted(kwargs))}; it takes drafter, "
                               "tree, acceptor, verifier, tokenizer, streamer, seed, max_new_tokens, do_sample, "
                               "temperature, top_k, top_p, eos_token_id, stop_strings.")
    stops = None
    if stop_strings is not None:
        if tokenizer is None:
            raise InputError("stop_strings are matched on decoded text: pass tokenizer= too, as transformers asks.")
        stops = StopStrings(tokenizer, check_stop_strings(stop_strings))
    if drafter is None:
        decoder = AutoregressiveDecoder(model)
    else:
        from spec.acceptors import GreedyAcceptor, RejectionSamplingAcceptor
        from spec.bench.pairing import verifier_for

        decoder = SpeculativeDecoder(model, drafter, tree_builder(tree, drafter), verifier_for(model, drafter, verifier),
                                     acceptor or (GreedyAcceptor() if temperature == 0 else RejectionSamplingAcceptor()))
    out = decoder.generate(input_ids, max_new_tokens=max_new_tokens, eos_token_id=eos, temperature=temperature,
                           top_k=top_k, top_p=top_p, seed=seed, streamer=streamer,
                           stop_when=stops if stops is not None and stops.strings else None)
    return out.sequences.to(torch.as_tensor(input_ids).device)
