"""Pick the verifier for a model: the fast path where it applies, the generic one elsewhere."""

from __future__ import annotations

from typing import Optional

from spec.errors import ConfigurationError
from spec.runtime import unsupported_reason
from spec.verifiers.fast import FastTreeVerifier
from spec.verifiers.tree_attention import TreeAttentionVerifier

VERIFIER_KINDS = ("auto", "fast", "generic")


def make_verifier(model, kind: str = "auto", *, compile: Optional[bool] = None, attention: str = "auto",
                  max_length: Optional[int] = None, spare_rows: int = 256, features: str = "final"):
    """``kind``: ``"auto"`` (fast for Llama-family models, generic otherwise), ``"fast"`` or ``"generic"``.

    The other arguments go to :class:`FastTreeVerifier`: its static cache holds ``max_length``
    (default: the model's context capped at 4096) plus ``spare_rows`` positions, allocated up front;
    pass a larger ``max_length`` (up to the model's context) for longer sequences. Asking for ``"fast"`` on a model it cannot run
    raises ``UnsupportedError`` naming the reason. ``features``: the hidden states the verifier reports
    (``"final"``, or the intermediate layers a drafter declares in ``traits.features``, e.g. EAGLE-3's).
    """
    if kind not in VERIFIER_KINDS:
        raise ConfigurationError(f"verifier kind must be one of {VERIFIER_KINDS}, got {kind!r}.")
    if kind == "generic" or (kind == "auto" and unsupported_reason(model) is not None):
        return TreeAttentionVerifier(model, features=features)
    return FastTreeVerifier(model, compile=compile, attention=attention, max_length=max_length, spare_rows=spare_rows,
                            features=features)
