"""spec: lossless speculative decoding with draft heads, as a pipeline of swappable stages."""

from spec.acceptors import (
    BlockVerificationAcceptor,
    GreedyAcceptor,
    RejectionSamplingAcceptor,
    TraversalVerificationAcceptor,
    TypicalAcceptor,
)
from spec.drafters import (
    CloverDrafter,
    Eagle3Drafter,
    EagleDrafter,
    HydraDrafter,
    KangarooDrafter,
    MedusaDrafter,
    MergedDrafter,
    NGramDrafter,
)
from spec.drafters.draft_vocab import DraftVocabulary
from spec.pipelines import AutoregressiveDecoder, SpeculativeDecoder
from spec.protocols import (
    Acceptance,
    Acceptor,
    CandidateKind,
    CandidateTree,
    Draft,
    DraftContext,
    Drafter,
    GenerationOutput,
    SamplingParams,
    StepStats,
    TreeBuilder,
    Verification,
    Verifier,
)
from spec.trees import CostAwareTreeBuilder, DynamicTreeBuilder, StaticTreeBuilder, chain_tree, full_tree, tree_from_choices, tree_to_choices
from spec.verifiers import FastTreeVerifier, SelfDraftVerifier, TreeAttentionVerifier, make_verifier

__version__ = "0.1.0"

__all__ = [
    "Acceptance",
    "Acceptor",
    "AutoregressiveDecoder",
    "BlockVerificationAcceptor",
    "CandidateKind",
    "CandidateTree",
    "CloverDrafter",
    "Eagle3Drafter",
    "EagleDrafter",
    "Draft",
    "DraftVocabulary",
    "DraftContext",
    "Drafter",
    "GenerationOutput",
    "GreedyAcceptor",
    "HydraDrafter",
    "KangarooDrafter",
    "MedusaDrafter",
    "MergedDrafter",
    "NGramDrafter",
    "RejectionSamplingAcceptor",
    "SamplingParams",
    "SelfDraftVerifier",
    "FastTreeVerifier",
    "SpeculativeDecoder",
    "StaticTreeBuilder",
    "CostAwareTreeBuilder",
    "DynamicTreeBuilder",
    "StepStats",
    "TraversalVerificationAcceptor",
    "TreeAttentionVerifier",
    "TreeBuilder",
    "TypicalAcceptor",
    "Verification",
    "Verifier",
    "make_verifier",
    "chain_tree",
    "full_tree",
    "tree_from_choices",
    "tree_to_choices",
]
