"""Acceptors: choose the path of a verified tree to keep, and sample the bonus token."""

from spec.acceptors.block import BlockVerificationAcceptor
from spec.acceptors.greedy import GreedyAcceptor, greedy_path
from spec.acceptors.rejection import RejectionSamplingAcceptor
from spec.acceptors.traversal import TraversalVerificationAcceptor
from spec.acceptors.typical import TypicalAcceptor, typical_thresholds

__all__ = [
    "BlockVerificationAcceptor",
    "GreedyAcceptor",
    "RejectionSamplingAcceptor",
    "TraversalVerificationAcceptor",
    "TypicalAcceptor",
    "greedy_path",
    "typical_thresholds",
]
