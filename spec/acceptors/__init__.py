"""Acceptors: choose the path of a verified tree to keep, and sample the bonus token."""

from spec.acceptors.greedy import GreedyAcceptor, greedy_path
from spec.acceptors.rejection import RejectionSamplingAcceptor
from spec.acceptors.typical import TypicalAcceptor, typical_thresholds

__all__ = [
    "GreedyAcceptor",
    "RejectionSamplingAcceptor",
    "TypicalAcceptor",
    "greedy_path",
    "typical_thresholds",
]
