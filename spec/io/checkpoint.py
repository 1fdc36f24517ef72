"""Save and load ``config.json`` + ``model.safetensors`` directories.

Writes go to a temporary file in the same directory, are fsynced and then renamed
over the target, so a crash mid-save leaves the old file or the new one, never a
half-written one. Loading reads safetensors only: a pickled checkpoint (``.bin``,
``.pt``...) can run arbitrary code when unpickled, so it is refused, not opened.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes

from spec.errors import CheckpointError

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` so readers see the old content or the new, never a mix."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o644)  # mkstemp's 0600 would make shared or installed files unreadable to others
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def save_checkpoint(directory: str | os.PathLike, tensors: dict[str, torch.Tensor], config: dict[str, Any]) -> Path:
    """Write ``tensors`` as safetensors and ``config`` as JSON into ``directory``.

    The weights are written before the config, so a directory with a config always
    has the weights that config describes.
    """
    directory = Path(directory)
    # Clone: safetensors refuses tensors that share storage (tied weights) or are non-contiguous.
    flat = {name: t.detach().to("cpu").contiguous().clone() for name, t in tensors.items()}
    atomic_write_bytes(directory / WEIGHTS_NAME, save_safetensors_bytes(flat))
    atomic_write_bytes(directory / CONFIG_NAME, (json.dumps(config, indent=2, sort_keys=True) + "\n").encode())
    return directory


def load_checkpoint(directory: str | os.PathLike) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Read a directory written by :func:`save_checkpoint`; returns ``(config, tensors)`` on the CPU."""
    directory = Path(directory)
    if not directory.exists():
        raise CheckpointError(f"Checkpoint directory {directory} does not exist; check the path.")
    if not directory.is_dir():
        raise CheckpointError(f"{directory} is not a directory; pass the directory that save_pretrained wrote.")
    weights, config_path = directory / WEIGHTS_NAME, directory / CONFIG_NAME
    if not weights.exists():
        pickled = sorted(p.name for p in directory.iterdir() if p.suffix in PICKLE_SUFFIXES)
        if pickled:
            raise CheckpointError(
                f"{directory} holds only pickled weights ({', '.join(pickled)}); spec never unpickles files, "
                "since that can run arbitrary code. Convert them to safetensors with a tool you trust."
            )
        raise CheckpointError(f"{directory} has no {WEIGHTS_NAME}; it is not a spec checkpoint.")
    if not config_path.exists():
        raise CheckpointError(f"{directory} has no {CONFIG_NAME}; it is not a spec checkpoint.")
    try:
        config = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{config_path} is not valid JSON ({exc}); the file is corrupt, save it again.") from exc
    if not isinstance(config, dict):
        raise CheckpointError(f"{config_path} must hold a JSON object, got {type(config).__name__}.")
    try:
        tensors = load_safetensors_bytes(weights.read_bytes())
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise CheckpointError(
            f"{weights} is not a readable safetensors file ({exc}); it is truncated or corrupt, save it again."
        ) from exc
    return config, tensors


def check_config_fields(
    config: dict[str, Any], required: Iterable[str], optional: Iterable[str] = (), *, where: str = "config"
) -> None:
    """Refuse configs with missing or unknown fields, naming them."""
    required, optional = set(required), set(optional)
    missing = sorted(required - config.keys())
    unknown = sorted(config.keys() - required - optional)
    if missing:
        raise CheckpointError(f"{where} is missing field(s) {missing}; it was not written by this version of spec.")
    if unknown:
        raise CheckpointError(
            f"{where} has unknown field(s) {unknown}; expected only {sorted(required | optional)}."
        )
