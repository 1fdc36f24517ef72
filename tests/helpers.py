"""Shared fixtures-as-functions: tiny models are cached per (arch, seed) so tests stay fast."""

from contextlib import contextmanager
from functools import lru_cache

import torch

from spec import AutoregressiveDecoder
from spec.testing.models import tiny_model

ARCHS = ("llama", "qwen2", "mistral", "gpt2")
LLAMA_FAMILY = ("llama", "qwen2", "mistral")  # what the fast verifier runs
VOCAB = 96


@lru_cache(maxsize=None)
def model(arch: str, seed: int = 0, **overrides):
    return tiny_model(arch, seed=seed, **({"vocab_size": VOCAB} | overrides))


def prompt(length: int, seed: int) -> torch.Tensor:
    return torch.randint(0, VOCAB, (1, length), generator=torch.Generator().manual_seed(seed))


@lru_cache(maxsize=256)
def _reference(arch: str, prompt_key: tuple, max_new_tokens: int) -> torch.Tensor:
    return AutoregressiveDecoder(model(arch)).generate(torch.tensor([prompt_key]), max_new_tokens).sequences


def reference(arch: str, prompt_ids: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
    """The model's own greedy continuation (cached)."""
    return _reference(arch, tuple(prompt_ids.flatten().tolist()), max_new_tokens)


@contextmanager
def config_override(m, **values):
    """Set ``m.config`` attributes for the block and restore them even when the block fails:
    ``model(...)`` is cached and shared, so a leaked setting would change other tests."""
    missing = object()
    saved = {key: getattr(m.config, key, missing) for key in values}
    for key, value in values.items():
        setattr(m.config, key, value)
    try:
        yield m
    finally:
        for key, value in saved.items():
            if value is missing:
                delattr(m.config, key)
            else:
                setattr(m.config, key, value)
