"""The model `spec` trains and ships, so speculative decoding can be seen working offline.

    from spec.apps.shipped import load_shipped
    model, tokenizer = load_shipped()          # "spec-py-tiny", float32, CPU

Rebuild everything from scratch with ``spec build-model`` (see ``build.py``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import torch

from spec.errors import CheckpointError, ConfigurationError

ROOT = Path(__file__).parent
DEFAULT = "spec-py-tiny"


def shipped_names() -> list[str]:
    return sorted(p.name for p in ROOT.iterdir() if (p / "config.json").exists() and (p / "model.safetensors").exists())


def _check_name(name, what: str = "shipped model name") -> str:
    """A shipped name is a plain name of an entry under the package's shipped folder, never a path."""
    from spec.io import plain_name

    return plain_name(name, what, CheckpointError,
                      hint=f" (shipped: {shipped_names() or 'none'}; load a model from a directory with "
                      "transformers' from_pretrained instead)")


def shipped_path(name: str = DEFAULT) -> Path:
    path = ROOT / _check_name(name)
    if not (path / "model.safetensors").is_file():
        available = shipped_names()
        raise CheckpointError(
            f"No shipped model named {name!r} in {ROOT}; available: {available or 'none'}. "
            "Rebuild it with `spec build-model --export`."
        )
    return path


def load_shipped(name: str = DEFAULT, dtype: str | torch.dtype = torch.float32, device: str | torch.device = "cpu"):
    """``(model, tokenizer)`` from the package, offline (never touches a model hub).

    ``device`` and ``dtype`` may be ``"auto"`` (see ``spec.models.placement``).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from spec.models.placement import resolve_placement

    device, dtype = resolve_placement(device, dtype)
    path = shipped_path(name)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, local_files_only=True, use_safetensors=True)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    return model.to(device).eval(), tokenizer


def resolve_model_path(name_or_path: str) -> Path:
    """A shipped model's name, or a directory path, to a directory (only a plain name can be a shipped one)."""
    if name_or_path in shipped_names():
        return ROOT / name_or_path
    return Path(name_or_path)


def heldout_prompts(name: str = DEFAULT, limit: Optional[int] = None) -> list[str]:
    """Code snippets from held-out standard-library modules (never trained on), for demos and benchmarks.

    ``limit``: at most this many (None: all of them).
    """
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise ConfigurationError(f"limit must be None (all prompts) or an integer >= 0, got {limit!r}.")
    path = shipped_path(name) / "heldout_prompts.jsonl"
    prompts = [json.loads(line)["prompt"] for line in path.read_text().splitlines() if line.strip()]
    return prompts if limit is None else prompts[:limit]


def training_facts(name: str = DEFAULT) -> dict:
    return json.loads((shipped_path(name) / "training.json").read_text())


def shipped_drafters(name: str = DEFAULT) -> list[str]:
    heads = shipped_path(name) / "heads"
    return sorted(p.name for p in heads.iterdir() if (p / "config.json").exists()) if heads.exists() else []


def load_shipped_drafter(drafter: str, model, name: str = DEFAULT):
    """The shipped heads of ``drafter`` for the shipped ``model``."""
    from spec.registry import DRAFTERS

    # Only a registered name can reach the file system (it is never a path such as "../medusa").
    if drafter not in DRAFTERS or not (shipped_path(name) / "heads" / drafter / "config.json").exists():
        raise CheckpointError(f"No shipped {drafter!r} heads; shipped: {shipped_drafters(name) or 'none'}.")
    return DRAFTERS[drafter].drafter.from_pretrained(shipped_path(name) / "heads" / drafter, model)


def load_shipped_tree(drafter: str, name: str = DEFAULT):
    """The tree optimised for ``drafter``'s measured acceptance on this CPU."""
    from spec.trees import load_tree

    path = shipped_path(name) / "trees" / f"{_check_name(drafter, 'drafter name')}.json"
    if not path.exists():
        raise CheckpointError(f"No shipped tree for {drafter!r} at {path}.")
    return load_tree(path)[0]
