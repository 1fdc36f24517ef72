"""What each stage needs and offers, declared on the stage and checked when stages are composed.

Every stage carries a ``traits`` value. :func:`check_composition` reads the four and
either refuses the combination with an :class:`~spec.errors.IncompatibleStagesError`
that names both stages and the fix, or returns what the composition is: the candidate
kinds that reach the acceptor and whether the output is distributed exactly as the
target's sampler (it is unless the acceptor itself is declared lossy, e.g. typical
acceptance). Nothing here is discovered with ``getattr``: a stage without ``traits``
is refused with a message saying what to declare.
"""

from __future__ import annotations

from typing import Any, Optional

import attrs

from spec.errors import IncompatibleStagesError, TreeTooDeepError
from spec.protocols.types import CandidateKind

SAMPLED_KINDS = frozenset({CandidateKind.SAMPLED_WITH_REPLACEMENT, CandidateKind.SAMPLED_WITHOUT_REPLACEMENT})
ALL_KINDS = frozenset(CandidateKind)


def _kinds(instance: Any, attribute: "attrs.Attribute[Any]", value: Any) -> None:
    if not value or not all(isinstance(k, CandidateKind) for k in value):
        raise IncompatibleStagesError(
            f"{type(instance).__name__}.{attribute.name} must be a non-empty set of CandidateKind, got {value!r}."
        )


def feature_layers(value: str) -> Optional[tuple[int, ...]]:
    """The layer counts named by a features value: ``"layer:<k>"`` -> ``(k,)``, ``"layers:<a>,<b>,.."`` ->
    ``(a, b, ..)``; None for ``"final"`` or anything malformed (:func:`_features` refuses those)."""
    name, _, ks = value.partition(":") if isinstance(value, str) else ("", "", "")
    parts = ks.split(",")
    if name == "layer" and ks.isdigit():
        return (int(ks),)
    if name == "layers" and parts and all(p.isdigit() for p in parts):
        return tuple(int(p) for p in parts)
    return None


def _features(instance: Any, attribute: "attrs.Attribute[Any]", value: Any) -> None:
    """Hidden states are named ``"final"`` (the last layer after the final norm, as transformers reports
    them), ``"layer:<k>"`` (the residual stream after the first ``k`` decoder layers, before any norm: what
    transformers reports as ``hidden_states[k]`` for ``k`` below the layer count) or ``"layers:<a>,<b>,.."``
    (several such streams concatenated in that order, ``[n, count * H]``: EAGLE-3's low, middle and high
    layers)."""
    if not (value == "final" or feature_layers(value) is not None):
        raise IncompatibleStagesError(
            f"{type(instance).__name__}.{attribute.name} must be 'final', 'layer:<k>' or 'layers:<a>,<b>,..', "
            f"got {value!r}."
        )


@attrs.frozen
class DrafterTraits:
    """``candidate_kinds``: every kind of draft it may return, at any sampling setting.
    ``log_confidence``: it fills ``Draft.log_confidence`` (dynamic tree builders prune by it).
    ``prunable``: a tree builder may drop nodes from its drafts. False when state outside
    the draft is keyed by node (per-node work must travel in the draft, as ``Draft.node_states``).
    ``verifier``: the one verifier it must be composed with (self-drafting shares work with it).
    ``features``: the hidden states its ``commit`` reads (see :func:`_features`).
    ``reads_hidden_states``: False for drafters that draft from the tokens alone (n-gram lookup); any
    verifier's hidden states suit them, and ``features`` is not checked."""

    candidate_kinds: frozenset[CandidateKind] = attrs.field(converter=frozenset, validator=_kinds)
    log_confidence: bool = False
    prunable: bool = True
    verifier: Optional[Any] = attrs.field(default=None, eq=False)
    features: str = attrs.field(default="final", validator=_features)
    reads_hidden_states: bool = True


@attrs.frozen
class TreeBuilderTraits:
    """``prunes``: ``select`` may drop nodes of the draft. ``needs_log_confidence``: ``select``
    reads ``Draft.log_confidence``. ``selects_by_value``: whether a node survives depends on the
    drafted tokens themselves (their confidence). Survivors of such a selection are no longer
    draws from ``q``, so ``select`` hands them on as deterministic candidates
    (docs/losslessness.md, "Pruned sampled drafts")."""

    prunes: bool = False
    needs_log_confidence: bool = False
    selects_by_value: bool = False

    def kinds_after_select(self, kinds: frozenset[CandidateKind]) -> frozenset[CandidateKind]:
        if self.selects_by_value and kinds & SAMPLED_KINDS:
            # A draft small enough is returned unpruned and keeps its kind; a pruned one turns deterministic.
            return frozenset(kinds) | {CandidateKind.DETERMINISTIC}
        return frozenset(kinds)


@attrs.frozen
class VerifierTraits:
    """``needs_paired_drafter``: it only verifies drafts of the drafter that shares its state
    (the drafter names it in ``DrafterTraits.verifier``). ``features``: the hidden states it reports
    from ``prefill`` and in ``Verification.hidden_states`` (see :func:`_features`)."""

    needs_paired_drafter: bool = False
    features: str = attrs.field(default="final", validator=_features)


@attrs.frozen
class AcceptorTraits:
    """``candidate_kinds``: the kinds its rule is defined for. ``lossless``: for every one of
    them, the output is distributed exactly as the target's own sampler (greedy acceptors:
    exactly the target's greedy decoding)."""

    candidate_kinds: frozenset[CandidateKind] = attrs.field(converter=frozenset, validator=_kinds)
    lossless: bool = True


@attrs.frozen
class Composition:
    """What a valid combination of stages is: the kinds reaching the acceptor, and whether it is lossless."""

    candidate_kinds: frozenset[CandidateKind]
    lossless: bool


def _name(stage: Any) -> str:
    return type(stage).__name__


def _traits(stage: Any, role: str, cls: type) -> Any:
    traits = getattr(stage, "traits", None)  # a protocol member; only its absence is reported here
    if not isinstance(traits, cls):
        raise IncompatibleStagesError(
            f"The {role} {_name(stage)} does not declare its traits; give it a `traits` attribute or property "
            f"returning a spec.protocols.{cls.__name__} (what it needs and offers), so compositions can be checked."
        )
    return traits


def check_composition(drafter: Any, tree_builder: Any, verifier: Any, acceptor: Any) -> Composition:
    """Refuse a combination of stages that cannot work or would not be what it claims; describe it otherwise."""
    d = _traits(drafter, "drafter", DrafterTraits)
    t = _traits(tree_builder, "tree builder", TreeBuilderTraits)
    v = _traits(verifier, "verifier", VerifierTraits)
    a = _traits(acceptor, "acceptor", AcceptorTraits)
    D, T, V, A = _name(drafter), _name(tree_builder), _name(verifier), _name(acceptor)
    if tree_builder.max_depth > drafter.max_depth:
        raise TreeTooDeepError(
            f"The tree builder {T} makes trees {tree_builder.max_depth} deep but the drafter {D} fills at most "
            f"{drafter.max_depth} depths; use a shallower tree or a drafter with more heads."
        )
    if t.needs_log_confidence and not d.log_confidence:
        raise IncompatibleStagesError(
            f"{T} prunes by Draft.log_confidence, which {D} does not provide; use a StaticTreeBuilder with {D}, "
            "or a drafter that reports per-node confidence."
        )
    if t.prunes and not d.prunable:
        raise IncompatibleStagesError(
            f"{T} prunes drafts, but {D}'s drafts cannot be pruned (its verifier reuses the drafting work "
            f"node by node); use a StaticTreeBuilder with {D}."
        )
    if d.verifier is not None and verifier is not d.verifier:
        raise IncompatibleStagesError(
            f"{D} must be composed with its own verifier ({_name(d.verifier)}, `drafter.verifier`), got {V}; "
            "pass verifier=drafter.verifier."
        )
    if v.needs_paired_drafter and d.verifier is not verifier:
        raise IncompatibleStagesError(
            f"{V} only verifies drafts of the drafter that shares its state, and {D} is not that drafter; "
            f"use make_verifier(model) with {D}, or the self-drafter whose `verifier` this is."
        )
    if d.reads_hidden_states and d.features != v.features:
        raise IncompatibleStagesError(
            f"{D} reads the target's {d.features!r} hidden states but {V} reports {v.features!r} ones; "
            "compose it with a verifier that reports what it reads (a self-drafter: its own `drafter.verifier`)."
        )
    kinds = t.kinds_after_select(d.candidate_kinds)
    unsupported = kinds - a.candidate_kinds
    if unsupported:
        names = ", ".join(sorted(k.value for k in unsupported))
        raise IncompatibleStagesError(
            f"{D} (through {T}) can produce {names} candidates, which {A} is not defined for "
            f"(it takes {', '.join(sorted(k.value for k in a.candidate_kinds))}); use RejectionSamplingAcceptor, "
            "or configure the drafter for a kind this acceptor takes."
        )
    return Composition(candidate_kinds=kinds, lossless=a.lossless)
