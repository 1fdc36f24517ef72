"""Which published layout a heads directory holds, told from its files (``spec convert heads --from auto``)."""

from __future__ import annotations

import os
from pathlib import Path

from safetensors import SafetensorError, safe_open

from spec.interop.tensors import read_config

#: What ``detect_head_format`` can answer; "medusa-auto" leaves the Medusa variants to ``read_medusa``.
DETECTED = ("spec", "speculators", "eagle3", "eagle", "medusa-auto")


def detect_head_format(directory: str | os.PathLike) -> str:
    """The layout of ``directory``: its config's marker fields first (they are cheap and unambiguous), then the
    tensor names of a safetensors file (read from its header only); anything else is left to the Medusa reader,
    which tells its three layouts apart and refuses what none of them is."""
    directory = Path(directory)
    config = read_config(directory)
    if "speculators_model_type" in config:
        return "speculators"
    if "drafter_type" in config:
        return "spec"
    if "draft_vocab_size" in config:
        return "eagle3"
    if any(key in config for key in ("medusa_num_heads", "num_heads")):
        return "medusa-auto"
    path = directory / "model.safetensors"
    if path.is_file():
        try:
            with safe_open(str(path), framework="pt") as handle:
                keys = set(handle.keys())
        except (SafetensorError, OSError, ValueError):
            return "medusa-auto"  # the reader that runs next names the problem
        if "d2t" in keys:
            return "eagle3"
        if "fc.weight" in keys:
            return "eagle"
    return "medusa-auto"
