"""Training text: read it, tokenise it, pack it into fixed-size blocks."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable, Iterator, Union

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
                        raise DataError(f"{file}:{number} has no string field {text_field!r}.")
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
