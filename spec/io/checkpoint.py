"""Save and load ``config.json`` + ``model.safetensors`` directories.

Saving writes both files into a temporary sibling directory and swaps it in as a whole
(:func:`spec.io.atomic.replace_directory`), so a crash at any point leaves the old checkpoint or
the new one, never the new weights beside the old config. The config records the SHA-256 of the
weights file (``weights_sha256``); loading verifies it, so a flipped byte or a file changed after
saving is refused (:class:`IntegrityError`). Checkpoints written before checksums existed (no
``weights_sha256``) still load. Loading reads safetensors only: a pickled checkpoint (``.bin``,
``.pt``...) can run arbitrary code when unpickled, so it is refused, not opened. Weights must be
floating point and finite.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes

from spec.errors import CheckpointError, IntegrityError
from spec.io import atomic
from spec.io.atomic import readable_directory, replace_directory
from spec.io.files import (
    PICKLE_SUFFIXES,
    child_path,
    decode_text,
    inside,
    is_sha256_hex,
    parse_json,
    read_bytes,
    sha256_hex,
)

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CHECKSUM_FIELD = "weights_sha256"
MANIFEST_NAME = "manifest.json"
#: safetensors dtypes of floating-point weights (anything else is not a weight spec saved).
FLOAT_DTYPES = ("F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2")
_MAX_HEADER = 100 * 2**20

#: ``{tensor name: (safetensors dtype, shape)}`` as the file's header declares them.
Header = dict[str, tuple[str, tuple[int, ...]]]


def save_checkpoint(directory: str | os.PathLike, tensors: dict[str, torch.Tensor], config: dict[str, Any]) -> Path:
    """Write ``tensors`` as safetensors and ``config`` (plus the weights' SHA-256) as JSON into ``directory``.

    The directory is replaced as a whole; other files already in it are kept.
    """
    directory = Path(directory)
    # Clone: safetensors refuses tensors that share storage (tied weights) or are non-contiguous.
    flat = {name: t.detach().to("cpu").contiguous().clone() for name, t in tensors.items()}
    weights = save_safetensors_bytes(flat)
    config = {**config, CHECKSUM_FIELD: sha256_hex(weights)}
    text = json.dumps(config, indent=2, sort_keys=True) + "\n"
    with replace_directory(directory, owned={WEIGHTS_NAME, CONFIG_NAME}, what="checkpoint directory") as staging:
        # Weights first: a directory with a config always has the weights that config describes.
        atomic._write_file(staging / WEIGHTS_NAME, weights)
        atomic._write_file(staging / CONFIG_NAME, text.encode())
    return directory


def checkpoint_directory(directory: str | os.PathLike) -> Path:
    """The existing directory to read ``directory`` from (or the copy an interrupted save left)."""
    directory = Path(directory)
    found = readable_directory(directory)
    if found is None:
        raise CheckpointError(f"Checkpoint directory {directory} does not exist; check the path.")
    if not found.is_dir():
        raise CheckpointError(f"{directory} is not a directory; pass the directory that save_pretrained wrote.")
    return found


def read_checkpoint_config(directory: Path) -> dict[str, Any]:
    """``config.json`` of a checkpoint directory, as a JSON object."""
    path = directory / CONFIG_NAME
    if not path.exists():
        raise CheckpointError(f"{directory} has no {CONFIG_NAME}; it is not a spec checkpoint.")
    inside(directory, path, "config file", CheckpointError)
    where = f"{path}"
    text = decode_text(read_bytes(path, "config file", CheckpointError), where, CheckpointError)
    config = parse_json(text, where, CheckpointError)
    if not isinstance(config, dict):
        raise CheckpointError(f"{path} must hold a JSON object, got {type(config).__name__}.")
    return config


def safetensors_header(data: bytes, where: str) -> Header:
    """The tensor names, dtypes and shapes a safetensors file declares, read without loading any tensor."""
    corrupt = f"{where} is not a readable safetensors file"
    if len(data) < 8:
        raise CheckpointError(f"{corrupt} (only {len(data)} bytes); it is truncated or corrupt, save it again.")
    (size,) = struct.unpack("<Q", data[:8])
    if size > min(len(data) - 8, _MAX_HEADER):
        raise CheckpointError(f"{corrupt} (its header claims {size} bytes); it is truncated or corrupt, save it again.")
    try:
        header = json.loads(data[8 : 8 + size].decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise CheckpointError(f"{corrupt} (unreadable header); it is truncated or corrupt, save it again.") from exc
    if not isinstance(header, dict):
        raise CheckpointError(f"{corrupt} (header is not an object); it is truncated or corrupt, save it again.")
    out: Header = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        if (not isinstance(entry, dict) or not isinstance(entry.get("dtype"), str)
                or not isinstance(entry.get("shape"), list)
                or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in entry["shape"])):
            raise CheckpointError(f"{corrupt} (bad entry for {name!r}); it is truncated or corrupt, save it again.")
        out[name] = (entry["dtype"], tuple(entry["shape"]))
    return out


def load_checkpoint(directory: str | os.PathLike,
                    check: Optional[Callable[[dict[str, Any], Header], None]] = None
                    ) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Read a directory written by :func:`save_checkpoint`; returns ``(config, tensors)`` on the CPU.

    In order: the config is read; the weights' SHA-256 is checked against the one recorded (when there
    is one); the safetensors header is read and every tensor must be floating point; ``check(config,
    header)`` may refuse the checkpoint before any tensor is built (e.g. shapes that do not match the
    config); then the tensors are loaded and must be finite. The checksum field is not in the config
    returned.
    """
    directory = checkpoint_directory(directory)
    weights = directory / WEIGHTS_NAME
    if not weights.exists() and not weights.is_symlink():
        pickled = sorted(p.name for p in directory.iterdir() if p.suffix in PICKLE_SUFFIXES)
        if pickled:
            raise CheckpointError(
                f"{directory} holds only pickled weights ({', '.join(pickled)}); spec never unpickles files, "
                "since that can run arbitrary code. Convert them to safetensors with a tool you trust."
            )
        raise CheckpointError(f"{directory} has no {WEIGHTS_NAME}; it is not a spec checkpoint.")
    config = read_checkpoint_config(directory)
    inside(directory, weights, "weights file", CheckpointError)
    data = read_bytes(weights, "weights file", CheckpointError)
    recorded = config.pop(CHECKSUM_FIELD, None)
    if recorded is not None:
        if not is_sha256_hex(recorded):
            raise IntegrityError(f"{directory / CONFIG_NAME}: {CHECKSUM_FIELD} must be 64 lowercase hex digits, got "
                                 f"{recorded!r}; the config is corrupt, save the checkpoint again.")
        actual = sha256_hex(data)
        if actual != recorded:
            raise IntegrityError(
                f"{weights} does not match the SHA-256 recorded in {CONFIG_NAME} when it was saved (recorded "
                f"{recorded[:12]}..., file {actual[:12]}...): it is truncated or corrupt, or was changed after "
                "saving. Save the checkpoint again (or restore the file from a good copy).")
    header = safetensors_header(data, str(weights))
    wrong = sorted(name for name, (dtype, _) in header.items() if dtype not in FLOAT_DTYPES)
    if wrong:
        raise IntegrityError(f"{weights} holds non-floating-point tensors ({', '.join(f'{n}: {header[n][0]}' for n in wrong[:5])}); "
                             "spec saves weights as floating point, so the file is not one it wrote. Save it again.")
    if check is not None:
        check(config, header)
    try:
        tensors = load_safetensors_bytes(data)
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise CheckpointError(
            f"{weights} is not a readable safetensors file ({exc}); it is truncated or corrupt, save it again."
        ) from exc
    bad = sorted(name for name, t in tensors.items() if not bool(torch.isfinite(t).all()))
    if bad:
        raise IntegrityError(f"{weights} holds NaN or infinite values in {', '.join(bad[:5])}"
                             f"{' and more' if len(bad) > 5 else ''}; the weights are broken (training diverged?). "
                             "Use an earlier checkpoint or retrain.")
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


# ---- manifests: checksums for a directory of files (e.g. a training checkpoint) ----------------------
def manifest_bytes(directory: str | os.PathLike, names: Iterable[str]) -> bytes:
    """``manifest.json`` content recording the SHA-256 of each named file in ``directory``."""
    directory = Path(directory)
    files = {name: sha256_hex((directory / name).read_bytes()) for name in sorted(names)}
    return (json.dumps({"format": "spec-manifest", "version": 1, "sha256": files}, indent=1) + "\n").encode()


def verify_manifest(directory: str | os.PathLike, required: bool = False) -> None:
    """Check every file a ``manifest.json`` in ``directory`` lists against its recorded SHA-256.

    No manifest passes unless ``required`` (directories written before manifests existed).
    """
    directory = Path(directory)
    path = directory / MANIFEST_NAME
    if not path.exists():
        if required:
            raise IntegrityError(f"{directory} has no {MANIFEST_NAME}; it is incomplete, write it again.")
        return
    where = str(path)
    data = parse_json(decode_text(read_bytes(path, "manifest", CheckpointError), where, IntegrityError), where,
                      IntegrityError)
    files = data.get("sha256") if isinstance(data, dict) and data.get("format") == "spec-manifest" else None
    if not isinstance(files, dict):
        raise IntegrityError(f"{path} is not a spec manifest; write the directory again.")
    for name, recorded in files.items():
        file = child_path(directory, name, "file named in the manifest", IntegrityError)
        if not is_sha256_hex(recorded):
            raise IntegrityError(f"{path}: the checksum of {name!r} is not 64 hex digits; write the directory again.")
        if not file.is_file():
            raise IntegrityError(f"{file} is listed in {path} but missing; the directory is incomplete.")
        if sha256_hex(file.read_bytes()) != recorded:
            raise IntegrityError(f"{file} does not match the SHA-256 in {path}: it is corrupt or was changed "
                                 "after saving. Use another checkpoint or write it again.")
