"""Training checkpoints that survive being killed at any moment.

A checkpoint is a directory ``step-NNNNNNNN/`` holding the trainable weights and the
optimizer's tensors (safetensors), the RNG state, and a JSON file with everything
else. It is written under a temporary name and renamed when complete; only then is
the ``latest`` pointer (one small file, itself replaced atomically) moved to it.
A reader follows ``latest``, so it never sees a half-written checkpoint; a run killed
mid-write leaves only a ``.tmp`` directory, which is ignored and cleaned up.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Optional

import torch
from safetensors.torch import load_file, save_file

from spec.errors import CheckpointError
from spec.io import atomic_write_bytes
from spec.io.checkpoint import MANIFEST_NAME, manifest_bytes, verify_manifest
from spec.io.files import child_path

LATEST = "latest"


def _flatten_optimizer(state: dict) -> tuple[dict[str, torch.Tensor], Any]:
    """Split an optimizer state_dict into tensors (for safetensors) and a JSON skeleton."""
    tensors: dict[str, torch.Tensor] = {}

    def walk(value, key):
        if isinstance(value, torch.Tensor):
            tensors[key] = value.detach().cpu().contiguous().clone()
            return {"__tensor__": key}
        if isinstance(value, dict):
            return {"__dict__": [[str(k), isinstance(k, int), walk(v, f"{key}.{k}")] for k, v in value.items()]}
        if isinstance(value, (list, tuple)):
            return {"__list__": [walk(v, f"{key}.{i}") for i, v in enumerate(value)]}
        return value

    return tensors, walk(state, "opt")


def _unflatten_optimizer(skeleton: Any, tensors: dict[str, torch.Tensor]):
    if isinstance(skeleton, dict) and "__tensor__" in skeleton:
        return tensors[skeleton["__tensor__"]]
    if isinstance(skeleton, dict) and "__dict__" in skeleton:
        return {(int(k) if is_int else k): _unflatten_optimizer(v, tensors) for k, is_int, v in skeleton["__dict__"]}
    if isinstance(skeleton, dict) and "__list__" in skeleton:
        return [_unflatten_optimizer(v, tensors) for v in skeleton["__list__"]]
    return skeleton


def save_training_checkpoint(run_dir: str | os.PathLike, step: int, weights: dict[str, torch.Tensor],
                             optimizer: torch.optim.Optimizer, scheduler, state: dict[str, Any],
                             keep: int = 2) -> Path:
    run_dir = Path(run_dir)
    final = run_dir / f"step-{step:08d}"
    tmp = run_dir / f"step-{step:08d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({k: v.detach().cpu().contiguous().clone() for k, v in weights.items()}, tmp / "weights.safetensors")
    opt_tensors, opt_skeleton = _flatten_optimizer(optimizer.state_dict())
    opt_tensors["rng.torch"] = torch.get_rng_state()
    save_file(opt_tensors, tmp / "optimizer.safetensors")
    meta = {"step": step, "optimizer": opt_skeleton, "scheduler": scheduler.state_dict() if scheduler else None,
            "state": state}
    (tmp / "state.json").write_text(json.dumps(meta))
    # SHA-256 of every file, checked at load: a flipped byte is refused, not trained on.
    (tmp / MANIFEST_NAME).write_bytes(manifest_bytes(tmp, ["weights.safetensors", "optimizer.safetensors",
                                                           "state.json"]))
    for file in tmp.iterdir():
        with open(file, "rb") as handle:
            os.fsync(handle.fileno())
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    atomic_write_bytes(run_dir / LATEST, final.name.encode())
    old = sorted(p for p in run_dir.glob("step-*") if p.is_dir() and p.suffix != ".tmp" and p != final)
    for stale in old[: max(len(old) - (keep - 1), 0)]:
        shutil.rmtree(stale, ignore_errors=True)
    return final


def latest_checkpoint(run_dir: str | os.PathLike) -> Optional[Path]:
    run_dir = Path(run_dir)
    pointer = run_dir / LATEST
    if not pointer.exists():
        return None
    # The pointer names a checkpoint inside run_dir, never a path elsewhere.
    path = child_path(run_dir, pointer.read_text().strip(), "checkpoint named by the latest pointer", CheckpointError)
    if not (path / "state.json").exists():
        raise CheckpointError(f"{pointer} points to {path}, which is incomplete; delete {pointer} to start over.")
    return path


def load_training_checkpoint(path: Path, optimizer: torch.optim.Optimizer, scheduler) -> tuple[int, dict, dict]:
    """Restore optimizer, scheduler and RNG; returns ``(step, weights, state)``.

    Checkpoints written with a manifest are checked against it first (older ones load as before)."""
    verify_manifest(path)
    try:
        meta = json.loads((path / "state.json").read_text())
        weights = load_file(path / "weights.safetensors")
        opt_tensors = load_file(path / "optimizer.safetensors")
    except Exception as exc:  # any unreadable part means the checkpoint cannot be trusted
        raise CheckpointError(f"Training checkpoint {path} is unreadable ({exc}).") from exc
    torch.set_rng_state(opt_tensors.pop("rng.torch"))
    optimizer.load_state_dict(_unflatten_optimizer(meta["optimizer"], opt_tensors))
    if scheduler is not None and meta["scheduler"] is not None:
        scheduler.load_state_dict(meta["scheduler"])
    return meta["step"], weights, meta["state"]
