"""Candidate trees, acceptance statistics and cost curves as JSON files: written atomically, read with every field
checked."""

from __future__ import annotations

import json
import math
import os
from typing import Any, Optional

from spec.errors import ConfigurationError, InvalidTreeError, PathError
from spec.io import atomic_write_bytes, parse_json, read_json, read_text, sha256_hex
from spec.io.files import is_int, is_real
from spec.protocols import CandidateTree
from spec.trees.choices import tree_from_choices, tree_to_choices
from spec.trees.stats import AcceptanceStats

FORMAT = "spec-tree"
VERSION = 1
_FIELDS = {"format", "version", "choices", "metadata", "sha256"}


def _digest(choices: Any, metadata: Any) -> str:
    """SHA-256 of the tree's content (choices and metadata as JSON, keys sorted, no whitespace): it does
    not change when a file is re-indented, and does when a rank or a metadata value does."""
    canonical = json.dumps({"choices": choices, "metadata": metadata}, sort_keys=True, separators=(",", ":"))
    return sha256_hex(canonical.encode())


def tree_to_json(tree: CandidateTree, metadata: Optional[dict[str, Any]] = None) -> str:
    """``{"format": "spec-tree", "version": 1, "choices": [...], "metadata": {...}, "sha256": ...}``.

    ``sha256`` checksums the choices and metadata; :func:`tree_from_json` verifies it.
    """
    if metadata is not None and not isinstance(metadata, dict):
        raise InvalidTreeError(f"Tree metadata must be a dict (JSON object), got {type(metadata).__name__}.")
    body = {"choices": tree_to_choices(tree), "metadata": metadata or {}}
    try:
        body = json.loads(json.dumps(body))  # as a reader will see it: tuples as lists, keys as strings
    except (TypeError, ValueError) as exc:
        raise InvalidTreeError(f"Tree metadata must be JSON-serialisable (numbers, strings, lists, dicts): {exc}.") from exc
    return json.dumps({"format": FORMAT, "version": VERSION, **body, "sha256": _digest(body["choices"], body["metadata"])},
                      indent=1)


def _choices(value: Any, where: str) -> list[list[int]]:
    """Medusa choices exactly as written: a list of lists of JSON integers (no floats, strings or bools)."""
    if not isinstance(value, list):
        raise InvalidTreeError(f"{where}: choices must be a list of rank paths such as [[0], [1], [0, 0]], "
                               f"got {type(value).__name__}.")
    for item in value:
        if not isinstance(item, list):
            raise InvalidTreeError(f"{where}: each choice must be a list of ranks such as [0, 1], got {item!r}.")
        for rank in item:
            if not is_int(rank):
                raise InvalidTreeError(
                    f"{where}: choice {item!r} holds {rank!r}; ranks are whole numbers (0 = the top candidate), "
                    "written without quotes or decimals.")
    return value


def _tree(choices: list[list[int]], where: str) -> CandidateTree:
    try:
        return tree_from_choices(choices)
    except InvalidTreeError as exc:
        raise InvalidTreeError(f"{where}: {exc}") from exc


def tree_from_json(text: str, where: str = "The tree JSON") -> tuple[CandidateTree, dict[str, Any]]:
    """Read :func:`tree_to_json` output, or a bare Medusa choices list.

    Refuses (:class:`InvalidTreeError`) anything else: invalid JSON, ranks that are not whole numbers
    (``0.9``, ``"1"``, ``true``, ``NaN``), unknown fields, another format version, metadata that is not an
    object, and a file whose content no longer matches its recorded ``sha256``.
    """
    if not isinstance(text, str):
        raise InvalidTreeError(f"{where} must be text (str), got {type(text).__name__}.")
    data = parse_json(text, where, InvalidTreeError)
    if isinstance(data, list):  # Medusa's format: the choices alone
        return _tree(_choices(data, where), where), {}
    if not isinstance(data, dict) or data.get("format") != FORMAT or "choices" not in data:
        raise InvalidTreeError(f"{where} is not a spec tree: expected a choices list such as [[0], [1], [0, 0]] or "
                               "an object with format 'spec-tree' (what save_tree writes).")
    unknown = sorted(set(data) - _FIELDS)
    if unknown:
        raise InvalidTreeError(f"{where} has unknown field(s) {unknown}; a spec tree has only {sorted(_FIELDS)}.")
    version = data.get("version")
    if not is_int(version) or version != VERSION:
        raise InvalidTreeError(f"{where} has version {version!r}; this spec reads version {VERSION} "
                               "(write it again with save_tree).")
    metadata = data.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise InvalidTreeError(f"{where}: metadata must be a JSON object (or absent), got {type(metadata).__name__}.")
    choices = _choices(data["choices"], where)
    if "sha256" in data:
        recorded = data["sha256"]
        if recorded != _digest(choices, metadata if metadata is not None else {}):
            raise InvalidTreeError(
                f"{where} does not match the sha256 recorded when it was saved: it is corrupt or was edited. "
                "Save it again with save_tree, or, if you edited it on purpose, delete its sha256 field.")
    return _tree(choices, where), dict(metadata or {})


def save_tree(path: str | os.PathLike, tree: CandidateTree, metadata: Optional[dict[str, Any]] = None) -> None:
    """Write ``tree`` as JSON (with a checksum), atomically: a crash leaves the old file or the new one."""
    atomic_write_bytes(path, tree_to_json(tree, metadata).encode())


def load_tree(path: str | os.PathLike) -> tuple[CandidateTree, dict[str, Any]]:
    """``(tree, metadata)`` from a file :func:`save_tree` wrote, or a Medusa choices list.

    A missing path or a directory is a :class:`PathError`; anything wrong inside the file an
    :class:`InvalidTreeError`.
    """
    text = read_text(path, "tree file", PathError, InvalidTreeError)
    return tree_from_json(text, f"The tree file {path}")


def load_stats(path: str | os.PathLike) -> AcceptanceStats:
    """:class:`AcceptanceStats` from a file its ``save`` wrote, every field checked (typed errors only)."""
    where = f"The acceptance statistics file {path}"
    data = read_json(path, "acceptance statistics file", PathError, ConfigurationError)
    if not isinstance(data, dict) or data.get("format") != "spec-acceptance-stats":
        raise ConfigurationError(f"{where} is not a spec acceptance-statistics file (format field missing); "
                                 "write one with AcceptanceStats.save or spec.bench.measure_acceptance.")
    probs = data.get("probs")
    if (not isinstance(probs, list) or not probs
            or not all(isinstance(row, list) and row and all(is_real(p) for p in row) for row in probs)):
        raise ConfigurationError(f"{where}: probs must be a non-empty list of non-empty lists of numbers "
                                 "(probs[depth][rank]).")
    samples = data.get("samples", 0)
    if not is_int(samples) or samples < 0:
        raise ConfigurationError(f"{where}: samples must be a whole number >= 0, got {samples!r}.")
    drafter, model = data.get("drafter", ""), data.get("model")
    if not isinstance(drafter, str) or (model is not None and not isinstance(model, dict)):
        raise ConfigurationError(f"{where}: drafter must be a string and model an object (or null).")
    return AcceptanceStats(probs=probs, drafter=drafter, model=model, samples=samples)


def load_cost_curve(path: str | os.PathLike) -> dict[int, float]:
    """A verify-cost curve ``{"tree tokens": seconds}``: keys whole numbers >= 1, values finite seconds > 0."""
    where = f"The cost curve {path}"
    data = read_json(path, "cost curve", PathError, ConfigurationError)
    if not isinstance(data, dict) or not data:
        raise ConfigurationError(f"{where} must be a non-empty JSON object {{\"tree tokens\": seconds}}, "
                                 'e.g. {"1": 0.010, "16": 0.018}.')
    curve = {}
    for key, seconds in data.items():
        if not key.isdigit() or int(key) < 1:
            raise ConfigurationError(f"{where}: key {key!r} is not a whole number of tree tokens >= 1.")
        if not is_real(seconds) or not math.isfinite(seconds) or seconds <= 0:
            raise ConfigurationError(f"{where}: the cost for {key} tokens is {seconds!r}; costs are measured "
                                     "seconds, finite and > 0 (measure them with spec.bench.measure_verify_costs).")
        curve[int(key)] = float(seconds)
    return curve
