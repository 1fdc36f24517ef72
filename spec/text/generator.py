"""``TextGenerator``: text (or chat messages) in, text out, through any decoder, streaming as tokens are accepted."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, Optional, Union

import attrs
import torch

from spec.errors import CheckpointError, ConfigurationError
from spec.pipelines import AutoregressiveDecoder, SpeculativeDecoder
from spec.pipelines.outputs import check_flag
from spec.protocols import StepStats
from spec.text.tokens import StopStrings, check_stop_strings, check_tokenizer, encode_prompt

#: ``eos_token_id`` left to the model: its generation config's EOS ids, else the tokenizer's.
DEFAULT = "default"


@attrs.frozen
class TextOutput:
    """One generation: ``text`` (the new tokens decoded, special tokens skipped), ``token_ids`` (the new ids),
    ``prompt_ids``, the per-step statistics, why it stopped (``"eos"``, ``"stop_string"``, ``"length"``),
    and ``logprobs`` (``[new tokens]`` float64) when asked for."""

    text: str
    token_ids: tuple[int, ...]
    prompt_ids: tuple[int, ...]
    steps: tuple[StepStats, ...]
    finish_reason: str = attrs.field(validator=attrs.validators.in_(("eos", "stop_string", "length")))
    stop_string: Optional[str]
    total_s: float
    logprobs: Optional[torch.Tensor] = None

    @property
    def mean_accepted_length(self) -> float:
        """Tokens per verify step, the bonus included: (accepted drafts + 1) averaged over steps, the
        definition Medusa, EAGLE (tau) and Spec-Bench report. 1.0 for autoregressive decoding."""
        return sum(s.accepted + 1 for s in self.steps) / len(self.steps) if self.steps else 0.0

    @property
    def tokens_per_second(self) -> float:
        return len(self.token_ids) / self.total_s if self.total_s > 0 else float("inf")


def _eos_ids(model: Any) -> list[int]:
    """The EOS ids transformers' generate stops at: the model's generation config's (none: never stop early)."""
    config = getattr(model, "generation_config", None)
    eos = getattr(config, "eos_token_id", None)
    if eos is None:
        return []
    return [int(eos)] if isinstance(eos, int) else [int(e) for e in eos]


class TextGenerator:
    """A decoder with its tokenizer: ``generate("text")`` or ``generate([{"role": "user", ...}])`` -> ``TextOutput``.

    ``decoder``: a ``SpeculativeDecoder`` or ``AutoregressiveDecoder`` for ``decoder.model``. Thread safety is
    the decoder's: a speculative decoder refuses a second concurrent call (``ConcurrentUseError``).
    """

    def __init__(self, decoder: Union[SpeculativeDecoder, AutoregressiveDecoder], tokenizer: Any):
        if not isinstance(decoder, (SpeculativeDecoder, AutoregressiveDecoder)):
            raise ConfigurationError(f"decoder must be a SpeculativeDecoder or AutoregressiveDecoder, got "
                                     f"{type(decoder).__name__}.")
        check_tokenizer(tokenizer, decoder.model)
        self.decoder = decoder
        self.tokenizer = tokenizer
        self.model = decoder.model

    @classmethod
    def from_pretrained(cls, model: Union[str, os.PathLike, Any], *, tokenizer: Any = None,
                        drafter: Union[None, str, os.PathLike, Any] = None, tree: Any = None,
                        verifier: str = "auto", compile: Optional[bool] = None, acceptor: Any = None,
                        device: Union[str, torch.device] = "cpu", dtype: Union[str, torch.dtype] = torch.float32,
                        draft_weights: str = "auto") -> "TextGenerator":
        """Build from a model directory (or a loaded model and its ``tokenizer``) and any drafter.

        ``drafter``: None (autoregressive), a ``Drafter`` object, a heads directory saved with
        ``save_pretrained``, or the name of one under ``<model>/heads/`` (the layout ``spec build-model`` and
        the shipped model use; its tree is then ``<model>/trees/<name>.json``). ``tree``: a ``CandidateTree``,
        Medusa choices, a tree JSON path or a tree builder; default the one next to named heads, else a chain
        as deep as the drafter drafts. ``acceptor``: default ``RejectionSamplingAcceptor`` (greedy at
        temperature 0, lossless sampling above). ``draft_weights``: ``spec.drafters.apply_draft_weights`` (auto:
        heads loaded here draft with int8 copies of their weights on a CPU; a ``Drafter`` object passed in is
        left as built unless ``"int8"`` is asked). Everything is loaded from local files only.
        """
        directory = None
        if isinstance(model, (str, os.PathLike)):
            from transformers import AutoModelForCausalLM, AutoTokenizer

            from spec.io import check_model_directory
            from spec.models.placement import resolve_placement

            directory = check_model_directory(model, "model directory")
            device, dtype = resolve_placement(device, dtype)
            model = AutoModelForCausalLM.from_pretrained(directory, dtype=dtype, local_files_only=True,
                                                         use_safetensors=True).to(device).eval()
            if tokenizer is None:
                tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
        if tokenizer is None:
            raise ConfigurationError("A loaded model needs its tokenizer: pass tokenizer=... (or give the model's "
                                     "directory, which holds it).")
        check_tokenizer(tokenizer, model)
        if drafter is None:
            if tree is not None:
                raise ConfigurationError("tree= shapes a speculative decoder's drafts; give a drafter too, or drop it.")
            return cls(AutoregressiveDecoder(model), tokenizer)
        from spec.drafters import DRAFT_WEIGHTS, apply_draft_weights

        if draft_weights not in DRAFT_WEIGHTS:  # before any loading
            raise ConfigurationError(f"draft_weights must be one of {', '.join(DRAFT_WEIGHTS)}; got {draft_weights!r}.")
        loaded_here = isinstance(drafter, (str, os.PathLike))
        drafter, default_tree = load_drafter(drafter, model, directory)
        if loaded_here or draft_weights != "auto":
            apply_draft_weights(drafter, draft_weights)
        builder = tree_builder(tree if tree is not None else default_tree, drafter)
        from spec.acceptors import RejectionSamplingAcceptor
        from spec.bench.pairing import compile_with_verifier, verifier_for

        paired = verifier_for(model, drafter, verifier, compile)
        compile_with_verifier(drafter, paired)
        decoder = SpeculativeDecoder(model, drafter, builder, paired,
                                     acceptor if acceptor is not None else RejectionSamplingAcceptor())
        return cls(decoder, tokenizer)

    def encode(self, prompt: Any, add_generation_prompt: bool = True) -> list[int]:
        """The prompt's token ids (a string, or chat messages through the chat template)."""
        return encode_prompt(self.tokenizer, prompt, add_generation_prompt)

    def generate(self, prompt: Any, max_new_tokens: int = 256, *, stop_strings: Optional[Iterable[str]] = None,
                 eos_token_id: Any = DEFAULT, temperature: float = 0.0, top_k: Optional[int] = None,
                 top_p: float = 1.0, seed: Optional[int] = None, streamer: Any = None,
                 return_logprobs: bool = False, add_generation_prompt: bool = True,
                 skip_special_tokens: bool = True) -> TextOutput:
        """Continue ``prompt`` (a string, or chat messages rendered with the chat template) and decode.

        Stops at the model's EOS (``eos_token_id``: ``"default"`` = its generation config's, as transformers'
        generate stops; None = never), after the token that completes a ``stop_strings`` entry (matched on
        decoded text across token boundaries; kept in ``text``, as transformers keeps it), or after
        ``max_new_tokens``. ``streamer`` (transformers' ``put``/``end``: ``TextStreamer``,
        ``TextIteratorStreamer``) receives the prompt ids, then each step's accepted tokens as they are accepted.
        ``return_logprobs``: ``TextOutput.logprobs``, each new token's log-probability under the target's
        processed distribution (temperature/top-k/top-p; the raw softmax when greedy), in float64.
        """
        for flag, name in ((return_logprobs, "return_logprobs"), (add_generation_prompt, "add_generation_prompt"),
                           (skip_special_tokens, "skip_special_tokens")):
            check_flag(flag, name)
        ids = self.encode(prompt, add_generation_prompt)
        stops = StopStrings(self.tokenizer, check_stop_strings(stop_strings)) if stop_strings is not None else None
        eos = _eos_ids(self.model) if isinstance(eos_token_id, str) and eos_token_id == DEFAULT \
            else eos_token_id
        out = self.decoder.generate(torch.tensor([ids]), max_new_tokens=max_new_tokens, eos_token_id=eos,
                                    temperature=temperature, top_k=top_k, top_p=top_p, seed=seed,
                                    streamer=streamer, output_logprobs=return_logprobs,
                                    stop_when=stops if stops and stops.strings else None)
        new = out.new_tokens.tolist()
        eos_set = set() if eos is None else ({int(eos)} if isinstance(eos, int) else {int(e) for e in eos})
        if new and new[-1] in eos_set:
            reason = "eos"
        elif stops is not None and stops.matched is not None:
            reason = "stop_string"
        else:
            reason = "length"
        return TextOutput(text=self.tokenizer.decode(new, skip_special_tokens=skip_special_tokens),
                          token_ids=tuple(new), prompt_ids=tuple(ids), steps=out.steps, finish_reason=reason,
                          stop_string=stops.matched if stops is not None else None, total_s=out.total_s,
                          logprobs=getattr(out, "logprobs", None))


def heads_names(directory: str | os.PathLike) -> list[str]:
    """The heads saved under ``<directory>/heads/<name>/`` (the layout spec build-model writes)."""
    heads = Path(directory) / "heads"
    return sorted(p.name for p in heads.iterdir() if (p / "config.json").is_file()) if heads.is_dir() else []


def load_drafter(drafter: Any, model: Any, directory: Optional[Path]) -> tuple[Any, Any]:
    """A drafter and the tree saved with it (None: none saved). ``drafter``: an object (taken as it is), a
    heads directory, or the name of one under ``<directory>/heads/`` (its tree: ``<directory>/trees/<name>.json``)."""
    if not isinstance(drafter, (str, os.PathLike)):
        return drafter, None
    from spec.io import read_json
    from spec.registry import DRAFTERS

    path, tree_path = Path(drafter), None
    named = directory is not None and isinstance(drafter, str) and "/" not in drafter and os.sep not in drafter \
        and (directory / "heads" / drafter / "config.json").is_file()
    if named:
        path = directory / "heads" / drafter
        tree_path = directory / "trees" / f"{drafter}.json"
    if not (path / "config.json").is_file():
        where = f"; heads under {directory / 'heads'}: {sorted(p.name for p in (directory / 'heads').iterdir())}" \
            if directory is not None and (directory / "heads").is_dir() else ""
        raise CheckpointError(f"The drafter {str(drafter)!r} is neither a heads directory (with config.json) nor the "
                              f"name of one under the model directory's heads/{where}; save heads with "
                              "save_pretrained, or pass a Drafter object.")
    config = read_json(path / "config.json", "heads config", CheckpointError, CheckpointError)
    kind = config.get("drafter_type") if isinstance(config, dict) else None
    if kind not in DRAFTERS:
        raise CheckpointError(f"{path}/config.json names drafter_type {kind!r}; spec loads "
                              f"{', '.join(sorted(DRAFTERS))}.")
    loaded = DRAFTERS[kind].drafter.from_pretrained(path, model)
    return loaded, (tree_path if tree_path is not None and tree_path.is_file() else None)


def tree_builder(tree: Any, drafter: Any) -> Any:
    """A tree builder from a tree, Medusa choices, a tree JSON path or a builder; None: a chain as deep as
    ``drafter`` drafts."""
    from spec.trees import CandidateTree, StaticTreeBuilder, chain_tree, load_tree, tree_from_choices

    if tree is None:
        return StaticTreeBuilder(chain_tree(drafter.max_depth))
    if isinstance(tree, CandidateTree):
        return StaticTreeBuilder(tree)
    if isinstance(tree, (str, os.PathLike)):
        return StaticTreeBuilder(load_tree(tree)[0])
    if isinstance(tree, (list, tuple)):
        return StaticTreeBuilder(tree_from_choices(tree))
    if callable(getattr(tree, "tree", None)) and callable(getattr(tree, "select", None)):
        return tree  # a tree builder already
    raise ConfigurationError(f"tree must be a CandidateTree, Medusa choices, a tree JSON path or a tree builder, "
                             f"got {type(tree).__name__}.")
