"""Reading the tensors of a published checkpoint file, and writing safetensors ones.

Published heads come as safetensors or as pickled ``.pt``/``.bin`` state dicts. A pickle can run
arbitrary code when loaded, so it is opened only through torch's restricted loader
(``torch.load(weights_only=True)``), which rebuilds tensors and plain containers and refuses
anything else; what it refuses is a :class:`CheckpointError`. ``spec`` never writes a pickle.
"""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes

from spec.errors import CheckpointError
from spec.io.atomic import atomic_write_bytes
from spec.io.files import PICKLE_SUFFIXES, read_bytes, read_json


def read_tensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """``{name: tensor}`` of a ``.safetensors`` file, or of a pickled state dict through the restricted loader."""
    path = Path(path)
    data = read_bytes(path, "weights file", CheckpointError)
    if path.suffix in PICKLE_SUFFIXES:
        try:
            state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError, AttributeError, ValueError, TypeError) as error:
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise CheckpointError(
                f"{path} is a pickle that torch's restricted loader refuses ({first}); it may run code when "
                "unpickled, so it is not opened. Ask its publisher for safetensors, or convert it with a tool "
                "you trust in a sandbox.") from error
        if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
            state = state["state_dict"]
        if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                  for k, v in state.items()):
            raise CheckpointError(f"{path} does not hold a state dict (names to tensors); it is not a heads file.")
        return dict(state)
    try:
        return load_safetensors_bytes(data)
    except (SafetensorError, ValueError) as error:
        raise CheckpointError(f"{path} is not a valid safetensors file ({error}); it is truncated or corrupt, "
                              "download or export it again.") from error


def write_safetensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor]) -> None:
    """Write ``tensors`` (contiguous CPU copies) to ``path`` as safetensors, atomically."""
    atomic_write_bytes(path, save_safetensors_bytes({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}))


def read_config(directory: Path) -> dict:
    """A published heads directory's ``config.json`` as a dict; {} when it has none."""
    path = directory / "config.json"
    if not path.exists():
        return {}
    data = read_json(path, "heads config", CheckpointError, CheckpointError)
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} must hold a JSON object.")
    return data


def first_file(directory: Path, names: tuple[str, ...], what: str) -> Path:
    """The first of ``names`` present in ``directory`` (layouts publish e.g. safetensors or a pickle)."""
    for name in names:
        if (directory / name).exists():
            return directory / name
    raise CheckpointError(f"{directory} has no {what} (looked for {', '.join(names)}).")
