"""Stage protocols and the typed values that pass between stages."""

from spec.protocols.compat import (
    AcceptorTraits,
    Composition,
    DrafterTraits,
    TreeBuilderTraits,
    VerifierTraits,
    check_composition,
)
from spec.protocols.stages import Acceptor, Drafter, PrefillsRoot, TreeBuilder, Verifier, prefills_root
from spec.protocols.tree import CandidateTree
from spec.protocols.types import (
    Acceptance,
    CandidateKind,
    Draft,
    DraftContext,
    GenerationOutput,
    SamplingParams,
    StepStats,
    Verification,
)

__all__ = [
    "Acceptance",
    "Acceptor",
    "AcceptorTraits",
    "Composition",
    "DrafterTraits",
    "TreeBuilderTraits",
    "VerifierTraits",
    "check_composition",
    "CandidateKind",
    "CandidateTree",
    "Draft",
    "DraftContext",
    "Drafter",
    "GenerationOutput",
    "SamplingParams",
    "StepStats",
    "TreeBuilder",
    "Verification",
    "Verifier",
    "PrefillsRoot",
    "prefills_root",
]
