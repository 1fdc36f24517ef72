"""Where acceptors and sampling drafters get their randomness.

They draw through this small interface rather than calling torch directly, so a test
can replace it with one that enumerates every outcome with its probability, and
compute an acceptor's output distribution exactly (see ``spec.testing.exact``).
"""

from __future__ import annotations

from typing import Optional, Protocol

import torch

from spec.errors import InputError


class Randomness(Protocol):
    def bernoulli(self, probability: float) -> bool:
        """True with the given probability (clipped to [0, 1])."""

    def categorical(self, weights: torch.Tensor) -> int:
        """An index drawn with probability proportional to ``weights`` ``[V]`` (non-negative, not all 0)."""


class TorchRandomness:
    """Draws from a ``torch.Generator`` (or torch's global RNG when None)."""

    def __init__(self, generator: Optional[torch.Generator] = None) -> None:
        self.generator = generator

    def _device(self, fallback: torch.device) -> torch.device:
        return self.generator.device if self.generator is not None else fallback

    def bernoulli(self, probability: float) -> bool:
        if probability >= 1.0:
            return True
        if probability <= 0.0:
            return False
        u = torch.rand((), generator=self.generator, device=self._device(torch.device("cpu")))
        return bool(u < probability)

    def categorical(self, weights: torch.Tensor) -> int:
        device = self._device(weights.device)
        return int(torch.multinomial(weights.to(device=device, dtype=torch.float64), 1, generator=self.generator))


def as_randomness(generator) -> Randomness:
    """What a stage draws through: ``generator`` itself when it is already a :class:`Randomness`
    (tests pass one that enumerates every outcome), else a :class:`TorchRandomness` over it."""
    if generator is None or isinstance(generator, torch.Generator):
        return TorchRandomness(generator)
    if callable(getattr(generator, "bernoulli", None)) and callable(getattr(generator, "categorical", None)):
        return generator
    raise InputError(
        f"generator must be a torch.Generator, None or a spec.randomness.Randomness, got {type(generator).__name__}."
    )
