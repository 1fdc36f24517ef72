"""Which hidden states a verifier reports: ``"final"`` or the residual streams after some layers.

A drafter declares the features its ``commit`` reads (``DrafterTraits.features``) and a verifier
is built to report exactly those (``VerifierTraits.features``); ``check_composition`` refuses a
mismatch. EAGLE-3 reads ``"layers:<low>,<mid>,<high>"``: three residual streams concatenated,
``[n, 3 * H]``. Nothing beyond the final states is computed unless a verifier is asked for it.
"""

from __future__ import annotations

import torch

from spec.errors import ConfigurationError
from spec.protocols.compat import feature_layers


def num_layers(model) -> int:
    layers = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    if layers is None:
        layers = getattr(getattr(model, "config", None), "n_layer", None)
    if layers is None:
        raise ConfigurationError(f"{type(model).__name__}'s config names no layer count (num_hidden_layers), so "
                                 "intermediate hidden states cannot be located; use features='final'.")
    return int(layers)


def check_features(model, features: str, what: str = "The verifier") -> tuple[int, ...]:
    """The layer counts ``features`` names, each checked to lie below ``model``'s layer count; ``()`` for
    ``"final"``. A malformed name or a layer the model lacks is a ConfigurationError naming the fix."""
    if features == "final":
        return ()
    layers = feature_layers(features)
    if layers is None:
        raise ConfigurationError(f"{what}: features must be 'final', 'layer:<k>' or 'layers:<a>,<b>,..', "
                                 f"got {features!r}.")
    count = num_layers(model)
    bad = [k for k in layers if not 0 <= k < count]
    if bad:
        raise ConfigurationError(
            f"{what}: features {features!r} name layer counts {bad}, but {type(model).__name__} has {count} decoder "
            f"layers, so only 0 .. {count - 1} exist as intermediate states (the last one is 'final'); choose "
            f"layers below {count}.")
    return layers


def select_features(hidden_states: tuple[torch.Tensor, ...], layers: tuple[int, ...]) -> torch.Tensor:
    """transformers' ``output_hidden_states`` tuple (batch of one) -> the named streams concatenated ``[n, k * H]``.

    ``hidden_states[k]`` is the residual stream after the first ``k`` layers for ``k`` below the layer count
    (index 0: the embeddings); only the last entry has the final norm applied.
    """
    return torch.cat([hidden_states[k][0] for k in layers], dim=-1)
