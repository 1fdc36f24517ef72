"""Text to token ids and back: the tokenizer checks, chat templates and stop strings on decoded text."""

from __future__ import annotations

from typing import Any, Iterable, Optional, Sequence

from spec.errors import InputError, TokenizerError
from spec.models import output_vocab_size

#: A chat: ``[{"role": "user", "content": "..."}, ...]``, as transformers' chat templates take it.
Messages = Sequence[dict]


def check_tokenizer(tokenizer: Any, model: Any) -> None:
    """Refuse a tokenizer that can produce ids the model has no logits for (it belongs to another model).

    A model with more logits than the tokenizer has tokens is fine (vocabularies are often padded)."""
    if not callable(getattr(tokenizer, "decode", None)) or not callable(tokenizer):
        raise TokenizerError(f"tokenizer must be a transformers tokenizer (callable, with decode), got "
                             f"{type(tokenizer).__name__}.")
    size, vocab = len(tokenizer), output_vocab_size(model)
    if size > vocab:
        raise TokenizerError(f"The tokenizer has {size} tokens but the model predicts {vocab}; it belongs to another "
                             "model. Load the tokenizer saved with this model.")


def _check_messages(messages: Any) -> list[dict]:
    checked = []
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str) \
                or not isinstance(message.get("content"), str):
            raise InputError(f"Chat message {index} is {message!r}; each message must be a dict with string 'role' "
                             "and 'content', e.g. {'role': 'user', 'content': 'Hello'}.")
        checked.append(message)
    if not checked:
        raise InputError("The chat has no messages; give at least one {'role': 'user', 'content': ...}.")
    return checked


def encode_prompt(tokenizer: Any, prompt: Any, add_generation_prompt: bool = True) -> list[int]:
    """Token ids for ``prompt``: a string (tokenized as ``tokenizer(prompt)`` is, special tokens included), or
    chat messages rendered with the tokenizer's chat template (``add_generation_prompt``: end with the
    assistant's header, so the model answers)."""
    if isinstance(prompt, str):
        ids = list(tokenizer(prompt).input_ids)
    elif isinstance(prompt, (list, tuple)):
        messages = _check_messages(prompt)
        if not getattr(tokenizer, "chat_template", None):
            raise TokenizerError("Chat messages need a chat template, and this tokenizer has none; pass the text "
                                 "itself as a string, or set tokenizer.chat_template (a Jinja template).")
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tokenize=False)
        # The template writes any BOS itself; adding special tokens again would double it.
        ids = list(tokenizer(text, add_special_tokens=False).input_ids)
    else:
        raise InputError(f"prompt must be a string or a list of chat messages ({{'role': ..., 'content': ...}}), got "
                         f"{type(prompt).__name__}; for token ids use the decoder's generate directly.")
    if not ids:
        raise InputError(f"The prompt {prompt!r} tokenizes to no tokens; give some text.")
    return ids


def check_stop_strings(stop_strings: Optional[Iterable[str]]) -> tuple[str, ...]:
    if stop_strings is None:
        return ()
    if isinstance(stop_strings, str):
        stop_strings = [stop_strings]
    try:
        strings = tuple(stop_strings)
    except TypeError:
        raise InputError(f"stop_strings must be a string or a list of strings, got {stop_strings!r}.") from None
    for string in strings:
        if not isinstance(string, str):
            raise InputError(f"Each stop string must be text, got {string!r} ({type(string).__name__}); for token "
                             "ids use eos_token_id or the decoder's stop_sequences.")
        if not string:
            raise InputError("A stop string is empty; it would stop before any text. Give non-empty stop strings.")
    return strings


class StopStrings:
    """``stop_when`` for the decoders: true once the decoded generated text contains a stop string.

    Matched on decoded text, so a stop string may span token boundaries, start inside one token and end
    inside another; generation stops after the token that completes it, and that token is kept (with any text
    it has past the stop string), as transformers' ``stop_strings`` does. Special tokens are decoded as text,
    as transformers matches them. Only the tail of the generated ids is decoded each time: a byte-level
    token carries at least one byte and a character at most four, so ``4 * longest + 4`` tokens hold every
    placement of a stop string that ends in the newest token.
    """

    def __init__(self, tokenizer: Any, strings: Sequence[str]):
        self.tokenizer = tokenizer
        self.strings = check_stop_strings(strings)
        self.window = 4 * max((len(s) for s in self.strings), default=0) + 4
        self.matched: Optional[str] = None

    def __call__(self, generated: list[int]) -> bool:
        text = self.tokenizer.decode(generated[-self.window:], skip_special_tokens=False)
        for string in self.strings:
            if string in text:
                self.matched = string
                return True
        return False
