"""Training text: read it, tokenise it, pack it into fixed-size blocks (:class:`TokenBlocks` when only some
tokens are targets, as in conversations; see :mod:`spec.training.chat`)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable, Iterator, Optional, Union

import attrs
import torch

from spec.errors import DataError
from spec.io.files import read_text

TextSource = Union[str, os.PathLike, Iterable[str]]


def iter_texts(source: TextSource, text_field: str = "text") -> Iterator[str]:
    """Texts from a ``.txt`` file, a ``.jsonl`` file (``text_field`` of each line), a directory of
    those, or any iterable of strings."""
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.exists():
            raise DataError(f"Training data {path} does not exist.")
        files = sorted(p for p in path.rglob("*") if p.suffix in (".txt", ".jsonl", ".py")) if path.is_dir() else [path]
        for file in files:
            if file.suffix == ".jsonl":
                for number, line in enumerate(_read(file).splitlines(), 1):
                    if not line.strip():
                        continue
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise DataError(f"{file}:{number} is not valid JSON ({exc.msg}).") from exc
                    if not isinstance(record, dict) or not isinstance(record.get(text_field), str):
                        chat = isinstance(record, dict) and ("messages" in record or "conversations" in record)
                        raise DataError(f"{file}:{number} has no string field {text_field!r}" + (
                            "; it is a conversation: read it with spec.training.chat (iter_conversations, "
                            "conversation_blocks), which `spec train` does for such files." if chat else "."))
                    yield record[text_field]
            else:
                yield _read(file)
    else:
        for item in source:
            if not isinstance(item, str):
                raise DataError(f"Training texts must be strings, got {type(item).__name__}.")
            yield item


def _read(file: Path) -> str:
    """The file as UTF-8 text; bytes that are not UTF-8 are refused, not silently replaced in the training text."""
    return read_text(file, "training data file", DataError, DataError)


def pack_blocks(texts: Iterable[str], tokenizer, block_size: int, context: int | None = None) -> torch.Tensor:
    """Tokenise ``texts``, join them with the EOS token and cut ``[num_blocks, block_size + 1]`` blocks.

    Each block carries one extra token so inputs are ``block[:-1]`` and targets
    ``block[1:]``; consecutive blocks overlap by that one token.
    """
    if block_size < 2:
        raise DataError(f"block_size must be >= 2, got {block_size}.")
    if context is not None and block_size > context:
        raise DataError(f"block_size {block_size} is over the model's context of {context}; use at most {context}.")
    separator = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    ids: list[int] = []
    for text in texts:
        if text.strip():
            ids.extend(tokenizer(text, add_special_tokens=False)["input_ids"] + separator)
    if len(ids) < block_size + 1:
        raise DataError(
            f"The data holds {len(ids)} tokens, fewer than one block of {block_size + 1}; "
            "give more text or a smaller block size."
        )
    stream = torch.tensor(ids, dtype=torch.long)
    count = (len(ids) - 1) // block_size
    starts = torch.arange(count) * block_size
    return stream[starts[:, None] + torch.arange(block_size + 1)[None, :]]


def _token_rows(instance, attribute, value):
    if not isinstance(value, torch.Tensor) or value.dim() != 2 or value.dtype != torch.long or value.shape[1] < 2:
        raise DataError(f"TokenBlocks.tokens must be an int64 tensor [N, T + 1] with T >= 1, got "
                        f"{getattr(value, 'dtype', type(value).__name__)} of shape {tuple(getattr(value, 'shape', ()))}.")


def _mask_rows(instance, attribute, value):
    if not isinstance(value, torch.Tensor) or value.dtype != torch.bool or value.shape != instance.tokens.shape:
        raise DataError(f"TokenBlocks.loss_mask must be a bool tensor shaped like tokens {tuple(instance.tokens.shape)}, "
                        f"got {getattr(value, 'dtype', type(value).__name__)} of shape "
                        f"{tuple(getattr(value, 'shape', ()))}.")


@attrs.frozen(eq=False)
class TokenBlocks:
    """Token blocks ``tokens`` ``[N, T + 1]`` and ``loss_mask`` (the same shape, bool): only a token marked True
    is ever a target (of the model, a head at any depth, or a feature regression). Rows and slices give
    ``TokenBlocks`` again, so the loop batches these exactly as it batches a plain ``[N, T + 1]`` tensor."""

    tokens: torch.Tensor = attrs.field(validator=_token_rows)
    loss_mask: torch.Tensor = attrs.field(validator=_mask_rows)

    @property
    def shape(self) -> torch.Size:
        return self.tokens.shape

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def __getitem__(self, rows) -> "TokenBlocks":
        if isinstance(rows, int):  # keep the block dimension: a lone row is a batch of one
            rows = slice(rows, rows + 1 if rows != -1 else None)
        return TokenBlocks(self.tokens[rows], self.loss_mask[rows])

    def to(self, device) -> "TokenBlocks":
        return TokenBlocks(self.tokens.to(device), self.loss_mask.to(device))

    def digest_bytes(self) -> bytes:
        return self.tokens.contiguous().cpu().numpy().tobytes() + self.loss_mask.contiguous().cpu().numpy().tobytes()


Blocks = Union[torch.Tensor, TokenBlocks]


def split_batch(batch: Blocks) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """``(tokens [B, T + 1], loss_mask [B, T + 1] or None)``; None: every token is a target (plain text)."""
    if isinstance(batch, TokenBlocks):
        return batch.tokens, batch.loss_mask
    return batch, None
