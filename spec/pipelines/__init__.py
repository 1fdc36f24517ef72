"""Pipelines: wire stages into decoders with a transformers-like ``generate``."""

from spec.pipelines.autoregressive import AutoregressiveDecoder
from spec.pipelines.speculative import SpeculativeDecoder

__all__ = ["AutoregressiveDecoder", "SpeculativeDecoder"]
