"""Which weights the heads draft with: ``float`` (as trained), ``int8`` (:meth:`HeadDrafter.quantize`), or
``auto``: int8 where the heads run on a CPU, where drafting is bound by reading their weights (measured in
docs/benchmarks.md), and float elsewhere. Verification never changes, so every choice is lossless."""

from __future__ import annotations

from typing import Any, Iterator

from spec.errors import ConfigurationError

DRAFT_WEIGHTS = ("auto", "float", "int8")


def _head_drafters(drafter: Any) -> Iterator[Any]:
    """The drafters inside ``drafter`` that can quantize: itself, or a merged drafter's sources."""
    sources = getattr(drafter, "sources", None)
    for inner in (sources.values() if isinstance(sources, dict) else (drafter,)):
        if callable(getattr(inner, "quantize", None)):
            yield inner


def apply_draft_weights(drafter: Any, weights: str) -> list[str]:
    """Quantize ``drafter``'s heads (or a merged drafter's) as ``weights`` says; returns the display names of
    the drafters now drafting in int8 (heads none of whose matrices fit the kernel stay float). A drafter
    without heads of its own (n-gram, self-draft) is left as is; ``int8`` asked of heads off the CPU raises
    ``UnsupportedError``."""
    if weights not in DRAFT_WEIGHTS:
        raise ConfigurationError(f"draft weights must be one of {', '.join(DRAFT_WEIGHTS)}; got {weights!r}.")
    quantized = []
    for inner in _head_drafters(drafter):
        on_cpu = next(inner.heads.parameters()).device.type == "cpu"
        if weights == "int8" or (weights == "auto" and on_cpu):
            if inner.quantize("int8").draft_weights == "int8":
                quantized.append(inner.display_name)
    return quantized


def draft_weights_of(drafter: Any) -> str:
    """What ``drafter``'s heads draft with, for reports: ``int8``, ``float``, ``int8+float`` (a merged drafter
    with both), or ``none`` (no heads of its own)."""
    kinds = sorted({inner.draft_weights or "float" for inner in _head_drafters(drafter)})
    return "+".join(kinds) if kinds else "none"
