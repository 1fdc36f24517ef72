"""Tiny random-initialised causal LMs for tests: they live in :mod:`spec.models.tiny` (the demo uses them
too); re-exported here where tests have always found them."""

from spec.models.tiny import ARCHITECTURES, model_from_config, tiny_config, tiny_model

__all__ = ["ARCHITECTURES", "model_from_config", "tiny_config", "tiny_model"]
