"""Every stage conforms to its protocol: checked statically by mypy (strict, run by .ci/run after the
tests; see pyproject's [tool.mypy]) and at run time by the same functions below.

The typed functions are the static check: each returns its stages as the protocol type, so a stage
whose methods or properties drift from spec/protocols/stages.py fails type checking.
"""

from __future__ import annotations

from typing import Any

from spec import (
    BlockVerificationAcceptor,
    CloverDrafter,
    Eagle3Drafter,
    EagleDrafter,
    FastTreeVerifier,
    GreedyAcceptor,
    HydraDrafter,
    KangarooDrafter,
    MedusaDrafter,
    MergedDrafter,
    NGramDrafter,
    RejectionSamplingAcceptor,
    SelfDraftVerifier,
    StaticTreeBuilder,
    TraversalVerificationAcceptor,
    TreeAttentionVerifier,
    TypicalAcceptor,
    chain_tree,
)
from spec.protocols import Acceptor, Drafter, TreeBuilder, Verifier
from spec.trees import DynamicTreeBuilder

from helpers import model


def drafters(target: Any) -> list[Drafter]:
    medusa = MedusaDrafter.from_model(target, num_heads=2)
    return [medusa, HydraDrafter.from_model(target, num_heads=2), HydraDrafter.hydra_plus_plus(target, num_heads=2),
            CloverDrafter.from_model(target, num_heads=2), KangarooDrafter.from_model(target, exit_layer=1),
            NGramDrafter(), MergedDrafter([NGramDrafter(), medusa]), EagleDrafter.from_model(target, max_depth=2),
            Eagle3Drafter.from_model(target, max_depth=2)]


def tree_builders() -> list[TreeBuilder]:
    return [StaticTreeBuilder(chain_tree(2)), DynamicTreeBuilder(depth=2, width=2, total_tokens=3)]


def verifiers(target: Any) -> list[Verifier]:
    return [TreeAttentionVerifier(target), FastTreeVerifier(target), SelfDraftVerifier(target, exit_layer=1),
            FastTreeVerifier(target, features="layers:0,1,1"), TreeAttentionVerifier(target, features="layers:0,1")]


def acceptors() -> list[Acceptor]:
    return [GreedyAcceptor(), RejectionSamplingAcceptor(), TypicalAcceptor(), BlockVerificationAcceptor(),
            TraversalVerificationAcceptor()]


def test_every_stage_is_an_instance_of_its_protocol() -> None:
    target = model("llama")
    stages: list[tuple[list[Any], type]] = [(drafters(target), Drafter), (tree_builders(), TreeBuilder),
                                            (verifiers(target), Verifier), (acceptors(), Acceptor)]
    for group, protocol in stages:
        for stage in group:
            assert isinstance(stage, protocol), f"{type(stage).__name__} is not a {protocol.__name__}"
