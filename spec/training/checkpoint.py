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
import warnings
from pathlib import Path
from typing import Any, Optional, Protocol

import torch
from safetensors.torch import load_file, save_file

from spec.errors import CheckpointError
from spec.io import atomic_write_bytes
from spec.io.checkpoint import MANIFEST_NAME, manifest_bytes, verify_manifest
from spec.io.files import child_path

LATEST = "latest"


class OptimizerState(Protocol):
    """What a checkpoint saves and restores of an optimizer: a torch optimizer, or
    :class:`spec.training.sharding.FullOptimizerState` (the full state of one over a sharded module)."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state_dict: dict[str, Any]) -> None: ...


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
                             optimizer: OptimizerState, scheduler, state: dict[str, Any],
                             keep: int = 2) -> Path:
    run_dir = Path(run_dir)
    final = run_dir / f"step-{step:08d}"
    tmp = run_dir / f"step-{step:08d}.tmp"
    try:
        return _write_checkpoint(run_dir, tmp, final, step, weights, optimizer, scheduler, state, keep)
    except OSError as error:  # a full disk, a read-only folder: the previous checkpoint stays the latest
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(
            f"Could not write the training checkpoint {final.name} in {run_dir}: {error.strerror or error}. "
            "Free disk space (or fix the folder's permissions) and resume; the previous checkpoint is intact."
        ) from error


def _write_checkpoint(run_dir: Path, tmp: Path, final: Path, step: int, weights: dict[str, torch.Tensor],
                      optimizer: OptimizerState, scheduler, state: dict[str, Any], keep: int) -> Path:
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


def load_training_checkpoint(path: Path, optimizer: OptimizerState, scheduler) -> tuple[int, dict, dict]:
    """Restore optimizer, scheduler and RNG; returns ``(step, weights, state)``.

    Everything is read and checked before anything is restored, so a refused checkpoint leaves the optimizer
    as it was. Checkpoints written with a manifest are checked against it first (older ones load as before)."""
    verify_manifest(path)
    try:
        meta = json.loads((path / "state.json").read_text())
        weights = load_file(path / "weights.safetensors")
        opt_tensors = load_file(path / "optimizer.safetensors")
    except Exception as exc:  # any unreadable part means the checkpoint cannot be trusted
        raise CheckpointError(f"Training checkpoint {path} is unreadable ({exc}).") from exc
    missing = [k for k in ("step", "optimizer", "scheduler", "state") if not isinstance(meta, dict) or k not in meta]
    if missing or not isinstance(meta["step"], int) or "rng.torch" not in opt_tensors:
        raise CheckpointError(f"Training checkpoint {path} is incomplete (state.json lacks {missing or ['a step']}).")
    saved_optimizer = optimizer.state_dict()
    try:
        optimizer.load_state_dict(_unflatten_optimizer(meta["optimizer"], opt_tensors))
        if scheduler is not None and meta["scheduler"] is not None:
            scheduler.load_state_dict(meta["scheduler"])
    except (ValueError, KeyError, RuntimeError, TypeError) as exc:
        optimizer.load_state_dict(saved_optimizer)
        raise CheckpointError(f"Training checkpoint {path} does not fit this run's optimizer ({exc}); resume with "
                              "the options the run was started with, or use a new --out.") from exc
    torch.set_rng_state(opt_tensors.pop("rng.torch"))
    return meta["step"], weights, meta["state"] or {}


def load_trained_weights(run_dir: str | os.PathLike, module: torch.nn.Module) -> int:
    """Load the weights of ``run_dir``'s latest checkpoint (checked against its manifest) into ``module``;
    returns its step. For a run trained sharded: its checkpoints hold the whole module."""
    path = latest_checkpoint(run_dir)
    if path is None:
        raise CheckpointError(f"{run_dir} holds no training checkpoint; train there first.")
    verify_manifest(path)
    module.load_state_dict(load_file(path / "weights.safetensors"))
    return int(json.loads((path / "state.json").read_text())["step"])


def load_latest_intact(run_dir: str | os.PathLike, optimizer: OptimizerState,
                       scheduler) -> Optional[tuple[int, dict, dict]]:
    """The newest checkpoint of ``run_dir`` that loads, restored into ``optimizer`` and ``scheduler``.

    A corrupt or incomplete latest checkpoint (a kill, a flipped byte) is skipped with a warning and the
    previous one is used; None when the run has no checkpoint; a CheckpointError when none is intact.
    """
    run_dir = Path(run_dir)
    candidates = []
    try:
        latest = latest_checkpoint(run_dir)
        if latest is not None:
            candidates.append(latest)
    except CheckpointError as error:
        warnings.warn(f"{error} Falling back to an earlier checkpoint.", stacklevel=2)
    candidates += sorted((p for p in run_dir.glob("step-*") if p.is_dir() and p.suffix != ".tmp"
                          and p not in candidates), reverse=True)
    problems = []
    for path in candidates:
        try:
            loaded = load_training_checkpoint(path, optimizer, scheduler)
        except CheckpointError as error:
            problems.append(str(error))
            warnings.warn(f"Skipping the training checkpoint {path.name}: {error}", stacklevel=2)
            continue
        return loaded
    if problems:
        raise CheckpointError(f"No intact training checkpoint in {run_dir}: {' | '.join(problems)}. "
                              "Start over with --no-resume (or a new --out).")
    return None
