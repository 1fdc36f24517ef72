"""Conversation data: JSONL with ``messages`` (role/content) or ShareGPT ``conversations`` (from/value),
rendered with the tokenizer's chat template, with a loss mask on the assistant's tokens.

Where the assistant's tokens are: for the i-th message, if it is the assistant's, the conversation up to it
is rendered with ``add_generation_prompt=True`` (what the model reads before it starts writing) and up to
and including it; the tokens between those two renderings are the assistant's (its content and its
end-of-turn marker, not the header the template writes before it). This works for any template, with or
without ``{% generation %}`` markers, as long as rendering a conversation's first messages gives a token
prefix of rendering all of them; that is checked for every turn and a template that breaks it (e.g. one
that rewrites earlier turns) is refused with :class:`ChatTemplateError` rather than trained on a mask that
is off by some tokens.

Blocks: each conversation gets its own blocks (cut like text, one token of overlap, the last one padded)
and no block ever holds two conversations. Attention is causal, so a conversation's tokens never see the
padding after them, and the padding is never a target; no attention mask or position ids are needed, and
the frozen target's features at a token depend on that conversation's earlier tokens only.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, Sequence, Union

import torch

from spec.errors import DataError, TokenizerError
from spec.training.data import TokenBlocks, _read

Message = dict[str, str]
ROLES = ("system", "user", "assistant")
#: ShareGPT's ``from`` values (and the plain role names some exports use there) -> chat-template roles.
SHAREGPT_ROLES = {"human": "user", "gpt": "assistant", "system": "system", "user": "user", "assistant": "assistant"}
CONVERSATION_KEYS = ("messages", "conversations")


class ConversationError(DataError):
    """A conversation that cannot be trained on: empty, a turn with an unknown role or without string content,
    or no assistant turn (nothing in it would be a target)."""


class ChatTemplateError(TokenizerError):
    """The tokenizer has no chat template, or its template does not render a conversation's first messages as
    a token prefix of the whole, so the assistant's tokens cannot be located."""


ConversationSource = Union[str, os.PathLike, Iterable[Any]]


def conversation_from_record(record: Any, where: str = "a conversation") -> list[Message]:
    """``record``: ``{"messages": [{"role", "content"}...]}``, ``{"conversations": [{"from", "value"}...]}`` (ShareGPT:
    human/gpt/system) or a bare list of ``{"role", "content"}``; returns ``[{"role", "content"}...]`` with the
    roles ``system``/``user``/``assistant``."""
    if isinstance(record, list):
        turns, role_key, content_key, roles = record, "role", "content", {r: r for r in ROLES}
    elif isinstance(record, dict) and "messages" in record:
        turns, role_key, content_key, roles = record["messages"], "role", "content", {r: r for r in ROLES}
    elif isinstance(record, dict) and "conversations" in record:
        turns, role_key, content_key, roles = record["conversations"], "from", "value", SHAREGPT_ROLES
    else:
        raise ConversationError(f"{where} has neither a 'messages' list (role/content) nor a ShareGPT "
                                "'conversations' list (from/value); give one of them.")
    if not isinstance(turns, list):
        raise ConversationError(f"{where}: the turns must be a JSON list, got {type(turns).__name__}.")
    if not turns:
        raise ConversationError(f"{where} is an empty conversation; drop it or give it its turns.")
    messages = []
    for number, turn in enumerate(turns):
        if not isinstance(turn, dict) or not isinstance(turn.get(content_key), str):
            raise ConversationError(f"{where}, turn {number}: needs a string {content_key!r} (and {role_key!r}), got "
                                    f"{turn!r:.80}.")
        role = roles.get(turn.get(role_key))  # type: ignore[arg-type]
        if role is None:
            raise ConversationError(
                f"{where}, turn {number}: unknown {role_key} {turn.get(role_key)!r}; use one of {sorted(roles)}"
                + (" (ShareGPT: human -> user, gpt -> assistant)" if role_key == "from" else "")
                + ", or drop turns of other kinds (tools, functions) from the data.")
        messages.append({"role": role, "content": turn[content_key]})
    if not any(m["role"] == "assistant" for m in messages):
        raise ConversationError(f"{where} has no assistant turn, so none of its tokens would be trained on; drop it "
                                "or add the assistant's reply.")
    return messages


def _jsonl_files(path: Path) -> list[Path]:
    if not path.exists():
        raise DataError(f"Training data {path} does not exist.")
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in (".txt", ".jsonl", ".py"))
    else:
        files = [path]
    others = [f for f in files if f.suffix != ".jsonl"]
    if others:
        raise DataError(f"Conversation data is JSONL, but {others[0]} is not a .jsonl file; keep plain text and "
                        "conversations in separate folders and train on one kind.")
    return files


def _records(file: Path) -> Iterator[tuple[str, Any]]:
    for number, line in enumerate(_read(file).splitlines(), 1):
        if not line.strip():
            continue
        try:
            yield f"{file}:{number}", json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{file}:{number} is not valid JSON ({exc.msg}).") from exc


def iter_conversations(source: ConversationSource) -> Iterator[list[Message]]:
    """Conversations from a ``.jsonl`` file (one per line: ``messages`` or ShareGPT ``conversations``), a directory
    of them, or any iterable of such records (dicts) or message lists; each checked (see
    :func:`conversation_from_record`)."""
    if isinstance(source, (str, os.PathLike)):
        for file in _jsonl_files(Path(source)):
            for where, record in _records(file):
                yield conversation_from_record(record, where)
    else:
        for number, record in enumerate(source):
            yield conversation_from_record(record, f"conversation {number}")


def is_conversation_data(source: Union[str, os.PathLike]) -> bool:
    """Whether ``source`` (a file or directory) is conversation JSONL: its first ``.jsonl`` record has a
    ``messages`` or ``conversations`` key. Plain text, ``.py`` files and ``text`` JSONL are not."""
    path = Path(source)
    files = sorted(p for p in path.rglob("*.jsonl")) if path.is_dir() else [path]
    for file in files:
        if file.suffix != ".jsonl" or not file.is_file():
            continue
        for _, record in _records(file):
            return isinstance(record, dict) and any(key in record for key in CONVERSATION_KEYS)
    return False


def _check_template(tokenizer) -> None:
    if not getattr(tokenizer, "chat_template", None):
        raise ChatTemplateError("Conversation data is rendered with the tokenizer's chat template, and this tokenizer "
                                "has none; set tokenizer.chat_template (a Jinja template; for `spec train`, "
                                "'chat_template' in the model's tokenizer_config.json or chat_template.jinja), "
                                "or train on plain text.")


def _render(tokenizer, messages: Sequence[Message], add_generation_prompt: bool) -> list[int]:
    try:
        text = tokenizer.apply_chat_template(list(messages), add_generation_prompt=add_generation_prompt,
                                             tokenize=False)
    except Exception as error:  # jinja raises its own types (raise_exception in templates, undefined names)
        raise ChatTemplateError(f"The chat template failed on {len(messages)} message(s) ({error}); fix the "
                                "conversation (e.g. the role order this template expects) or the template.") from error
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def render_conversation(tokenizer, messages: Sequence[Message], where: str = "a conversation"
                        ) -> tuple[list[int], list[bool]]:
    """The conversation's tokens under the tokenizer's chat template and, per token, whether the assistant
    wrote it (see the module docstring for how, and the prefix property checked on the way)."""
    _check_template(tokenizer)
    ids = _render(tokenizer, messages, add_generation_prompt=False)
    mask = [False] * len(ids)
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = _prompt(tokenizer, messages, i, where)
        through = _render(tokenizer, messages[: i + 1], add_generation_prompt=False)
        if through[: len(before)] != before or ids[: len(through)] != through:
            raise ChatTemplateError(
                f"{where}: the chat template does not render the first {i} message(s) (with the generation prompt) "
                f"and the first {i + 1} as token prefixes of the whole conversation, so the assistant's tokens in "
                f"turn {i} cannot be located. Use a template that renders each turn the same whatever follows it "
                "(templates that rewrite earlier turns, e.g. drop past reasoning, do not), or train on plain text.")
        mask[len(before): len(through)] = [True] * (len(through) - len(before))
    return ids, mask


def _prompt(tokenizer, messages: Sequence[Message], i: int, where: str) -> list[int]:
    """What the model reads before writing message ``i``: the messages before it, with the generation prompt."""
    if i == 0:
        raise ConversationError(f"{where} starts with the assistant's turn, so there is nothing it answers (and no "
                                "prompt to render before it); drop that turn or give the user turn before it.")
    return _render(tokenizer, messages[:i], add_generation_prompt=True)


def pad_id_of(tokenizer) -> int:
    """The id padding is written with. Any id would do (padding is never attended to by a real token, nor a
    target); the tokenizer's pad, else EOS, else 0, so the blocks read naturally."""
    for name in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, name, None)
        if isinstance(value, int):
            return value
    return 0


def sequence_blocks(sequences: Iterable[tuple[Sequence[int], Sequence[bool]]], block_size: int,
                    pad_id: int = 0) -> TokenBlocks:
    """Blocks ``[N, block_size + 1]`` with loss masks from ``(ids, mask)`` sequences, each sequence its own blocks.

    A sequence is cut like :func:`~spec.training.data.pack_blocks` cuts the text stream (blocks start every
    ``block_size`` tokens and overlap by one); its last block is padded with ``pad_id`` (mask False). Blocks
    with no target to learn (no True after their first token) are dropped.
    """
    if block_size < 2:
        raise DataError(f"block_size must be >= 2, got {block_size}.")
    rows: list[torch.Tensor] = []
    masks: list[torch.Tensor] = []
    for ids, mask in sequences:
        if len(ids) != len(mask):
            raise DataError(f"A sequence has {len(ids)} tokens but {len(mask)} mask entries; give one per token.")
        ids_t = torch.as_tensor(list(ids), dtype=torch.long)
        mask_t = torch.as_tensor(list(mask), dtype=torch.bool)
        for start in range(0, max(len(ids) - 1, 0), block_size):
            chunk, keep = ids_t[start: start + block_size + 1], mask_t[start: start + block_size + 1]
            if not bool(keep[1:].any()):
                continue
            pad = block_size + 1 - chunk.shape[0]
            rows.append(torch.cat([chunk, torch.full((pad,), pad_id, dtype=torch.long)]))
            masks.append(torch.cat([keep, torch.zeros(pad, dtype=torch.bool)]))
    if not rows:
        raise DataError("The data holds no token to train on (no assistant token after a block's first); give "
                        "conversations with assistant replies.")
    return TokenBlocks(torch.stack(rows), torch.stack(masks))


def conversation_blocks(conversations: Iterable[Sequence[Message]], tokenizer, block_size: int,
                        context: Optional[int] = None) -> TokenBlocks:
    """Conversations (from :func:`iter_conversations`) rendered with the tokenizer's chat template, cut into
    blocks of ``block_size`` inputs, one conversation per block, the loss mask on the assistant's tokens."""
    if block_size < 2:
        raise DataError(f"block_size must be >= 2, got {block_size}.")
    if context is not None and block_size > context:
        raise DataError(f"block_size {block_size} is over the model's context of {context}; use at most {context}.")
    _check_template(tokenizer)
    rendered = (render_conversation(tokenizer, messages, f"conversation {number}")
                for number, messages in enumerate(conversations))
    return sequence_blocks(rendered, block_size, pad_id_of(tokenizer))


def first_prompts(conversations: Iterable[Sequence[Message]], tokenizer) -> list[list[int]]:
    """Per conversation, what the model reads before its first assistant turn: the messages before it rendered
    with the generation prompt (self-distillation lets the model write that turn itself)."""
    _check_template(tokenizer)
    prompts = []
    for number, messages in enumerate(conversations):
        first = next((i for i, m in enumerate(messages) if m["role"] == "assistant"), None)
        if first is None:
            raise ConversationError(f"conversation {number} has no assistant turn, so there is no reply for the "
                                    "model to write; drop it or add the assistant's reply.")
        prompts.append(_prompt(tokenizer, messages, first, f"conversation {number}"))
    return prompts
