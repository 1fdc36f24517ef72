"""Which verifier a drafter is composed with: the one it brings, or ``make_verifier``'s choice."""

from __future__ import annotations

from typing import Optional


def verifier_for(model, drafter, kind: str = "auto", compile: Optional[bool] = None):
    """The drafter's own verifier where it brings one (Kangaroo's shares the shallow layers' work with it),
    else ``make_verifier(model, kind, compile=compile)`` reporting the hidden states the drafter reads
    (``traits.features``: EAGLE-3's intermediate layers); ``drafter`` None asks for the final ones."""
    from spec.verifiers import make_verifier

    own = None if drafter is None else drafter.traits.verifier
    if own is not None:
        return own
    features = "final" if drafter is None else drafter.traits.features
    return make_verifier(model, kind, compile=compile, features=features)


def compile_with_verifier(drafter, verifier) -> None:
    """``--compile`` names the whole step: where the verifier's step runs compiled, so does the drafter's draft
    (drafters that can: head drafters; EAGLE's and the self-drafters' run eagerly)."""
    if getattr(verifier, "compiled", False) and getattr(drafter, "compilable", False):
        drafter.compile()
