"""Reading files spec is given, and the rules on which paths it trusts (docs/errors.md, "What spec trusts").

* A path a caller passes (an argument, a command-line option) is read as given; nothing else is
  looked up: no model hub, no search path.
* A *name* is not a path: shipped model names, drafter names and the file names a file refers to (a
  sharded model's index, a manifest) must be plain names that stay inside their directory
  (:func:`plain_name`, :func:`child_path`); ``..``, separators and absolute paths are refused, and so
  is a symbolic link that leads out of the directory.
* Files are read as text, JSON or safetensors, never unpickled; JSON that nests too deeply or holds
  numbers Python cannot read is refused, not crashed on.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable

from spec.errors import CheckpointError, PathError, SpecError

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")

ErrorType = Callable[[str], SpecError]


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def is_sha256_hex(value: Any) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)


def read_bytes(path: str | os.PathLike, what: str, path_error: ErrorType = PathError) -> bytes:
    """The bytes of the file ``path``; ``path_error`` when it is missing, a directory, or unreadable."""
    path = Path(path)
    if not path.exists():
        raise path_error(f"The {what} {path} does not exist; check the path.")
    if path.is_dir():
        raise path_error(f"The {what} {path} is a directory, not a file; give the file itself.")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise path_error(f"Cannot read the {what} {path}: {exc.strerror or exc}; check its permissions.") from exc


def decode_text(data: bytes, where: str, content_error: ErrorType) -> str:
    """UTF-8 text (a leading byte-order mark is dropped); ``content_error`` for other encodings."""
    try:
        return data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        raise content_error(f"{where} is not UTF-8 text (byte {exc.start} is {data[exc.start:exc.start + 1]!r}); "
                            "save it as UTF-8.") from exc


def read_text(path: str | os.PathLike, what: str, path_error: ErrorType, content_error: ErrorType) -> str:
    """UTF-8 text of ``path``: ``path_error`` when it cannot be read, ``content_error`` when it is not UTF-8."""
    return decode_text(read_bytes(path, what, path_error), f"The {what} {path}", content_error)


def parse_json(text: str, where: str, content_error: ErrorType) -> Any:
    """``json.loads`` with every failure as ``content_error`` naming ``where``."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise content_error(f"{where} is not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno}); "
                            "fix the file or write it again.") from exc
    except RecursionError as exc:
        raise content_error(f"{where} nests JSON arrays or objects too deeply to read; "
                            "it was not written by spec, write it again.") from exc
    except ValueError as exc:  # e.g. an integer with more digits than Python converts
        raise content_error(f"{where} holds a value that cannot be read ({exc}); write the file again.") from exc


def read_json(path: str | os.PathLike, what: str, path_error: ErrorType, content_error: ErrorType) -> Any:
    """JSON from ``path``: ``path_error`` when it cannot be read, ``content_error`` for bad content."""
    return parse_json(read_text(path, what, path_error, content_error), f"The {what} {path}", content_error)


def is_int(value: Any) -> bool:
    """A JSON integer: an int that is not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_real(value: Any) -> bool:
    """A JSON number: an int or float that is not a bool (may be NaN or infinite)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# ---- names that must stay inside their directory -----------------------------------------------
def plain_name(name: Any, what: str, error: ErrorType = PathError, hint: str = "") -> str:
    """``name`` if it is a plain file or directory name: no separator, not ``.``/``..``, not absolute."""
    if (not isinstance(name, str) or not name or name in (".", "..") or "/" in name or "\\" in name
            or "\x00" in name or os.path.isabs(name)):
        raise error(f"{name!r} is not a valid {what}: it must be a plain name, not a path{hint}.")
    return name


def child_path(directory: str | os.PathLike, name: Any, what: str, error: ErrorType = PathError) -> Path:
    """``directory / name`` for a plain ``name``, refusing a symbolic link that leads out of ``directory``."""
    directory = Path(directory)
    path = directory / plain_name(name, what, error, hint=f" inside {directory}")
    inside(directory, path, what, error)
    return path


def inside(directory: Path, path: Path, what: str, error: ErrorType = PathError) -> Path:
    """Refuse ``path`` when, after following symbolic links, it is not inside ``directory``."""
    real_dir, real = Path(os.path.realpath(directory)), Path(os.path.realpath(path))
    if real != real_dir and real_dir not in real.parents:
        raise error(f"The {what} {path} leads outside {directory} (to {real}); spec reads only files inside the "
                    "directory it was given. Copy the file into the directory instead of linking it.")
    return path


# ---- transformers model directories ------------------------------------------------------------
def check_model_directory(path: str | os.PathLike, what: str = "model directory",
                          need_tokenizer: bool = False) -> Path:
    """A local transformers model directory holding safetensors weights, checked before loading.

    Refuses a missing path or a file (:class:`PathError`), and a directory without ``config.json`` or
    safetensors weights, with only pickled weights, or whose shard index names files outside it
    (:class:`CheckpointError`). spec loads models from local directories only, never from a hub.
    """
    path = Path(path)
    if not path.exists():
        raise PathError(f"The {what} {path} does not exist; spec loads models from local directories only "
                        "(no model hub). Check the path, or download the model first.")
    if not path.is_dir():
        raise PathError(f"The {what} {path} is a file; give the directory holding config.json and "
                        "model.safetensors.")
    if not (path / "config.json").is_file():
        raise CheckpointError(f"The {what} {path} has no config.json; it is not a transformers model directory "
                              "(save one with model.save_pretrained).")
    index = path / "model.safetensors.index.json"
    if (path / "model.safetensors").is_file():
        inside(path, path / "model.safetensors", "weights file", CheckpointError)
    elif index.is_file():
        data = read_json(index, "safetensors index", CheckpointError, CheckpointError)
        weight_map = data.get("weight_map") if isinstance(data, dict) else None
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(f"{index} has no weight_map object; the index is corrupt, save the model again.")
        for shard in sorted(set(weight_map.values()), key=str):
            shard_path = child_path(path, shard, "weight shard named in the index", CheckpointError)
            if not shard_path.is_file():
                raise CheckpointError(f"{index} names the shard {shard!r}, which is missing; save the model again.")
    else:
        pickled = sorted(p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES)
        if pickled:
            raise CheckpointError(
                f"The {what} {path} holds only pickled weights ({', '.join(pickled)}); spec never unpickles "
                "files, since that can run arbitrary code. Convert them to safetensors with a tool you trust "
                "(model.save_pretrained(..., safe_serialization=True) where you trust the files).")
        raise CheckpointError(f"The {what} {path} has no model.safetensors (or sharded safetensors); "
                              "save the model with model.save_pretrained(..., safe_serialization=True).")
    if need_tokenizer and not any((path / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json")):
        raise CheckpointError(f"The {what} {path} has no tokenizer (tokenizer.json); save the tokenizer next to the "
                              "model with tokenizer.save_pretrained.")
    return path

