"""Facts about Hugging Face causal LMs that several stages need, read one way everywhere."""

from spec.models.facts import (
    cache_kwargs,
    context_length,
    hidden_size,
    lm_head,
    model_device,
    model_dtype,
    model_placement,
    output_vocab_size,
)
from spec.models.fingerprint import ModelFingerprint

__all__ = ["ModelFingerprint", "cache_kwargs", "context_length", "hidden_size", "lm_head", "model_device", "model_dtype",
           "model_placement", "output_vocab_size"]
