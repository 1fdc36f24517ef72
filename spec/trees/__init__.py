"""Candidate trees: construction, interchange formats, optimisation and tree builders."""

from spec.protocols.tree import CandidateTree
from spec.trees.choices import chain_tree, full_tree, tree_from_choices, tree_to_choices, with_chain
from spec.trees.cost_aware import CostAwareTreeBuilder
from spec.trees.draw import draw_tree
from spec.trees.dynamic import DynamicTreeBuilder
from spec.trees.graph import tree_from_graph, tree_to_graph
from spec.trees.hardware import SizedTree, choose_tree_for_hardware
from spec.trees.io import load_tree, save_tree, tree_from_json, tree_to_json
from spec.trees.optimize import OptimalTrees, expected_accepted_length, greedy_tree, optimal_tree
from spec.trees.static import StaticTreeBuilder
from spec.trees.stats import AcceptanceStats

__all__ = [
    "AcceptanceStats",
    "CandidateTree",
    "CostAwareTreeBuilder",
    "DynamicTreeBuilder",
    "OptimalTrees",
    "SizedTree",
    "StaticTreeBuilder",
    "chain_tree",
    "choose_tree_for_hardware",
    "draw_tree",
    "expected_accepted_length",
    "full_tree",
    "greedy_tree",
    "load_tree",
    "optimal_tree",
    "save_tree",
    "tree_from_choices",
    "tree_from_graph",
    "tree_from_json",
    "tree_to_choices",
    "tree_to_graph",
    "tree_to_json",
    "with_chain",
]
