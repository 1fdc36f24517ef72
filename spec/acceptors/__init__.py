"""Acceptors: choose the path of a verified tree to keep, and sample the bonus token."""

from spec.acceptors.greedy import GreedyAcceptor, greedy_path

__all__ = ["GreedyAcceptor", "greedy_path"]
