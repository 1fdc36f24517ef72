"""The accepted path a verifier is asked to commit: checked the same way by every verifier."""

from __future__ import annotations

from spec.errors import ShapeError
from spec.protocols import CandidateTree


def check_path(tree: CandidateTree, path) -> tuple[int, ...]:
    """``path`` as a tuple, if it runs from the root down one branch of ``tree``; else ShapeError."""
    path = tuple(int(node) for node in path)
    if not path or path[0] != 0 or not all(0 <= node < tree.num_nodes for node in path) \
            or tuple(tree.path_to(path[-1])) != path:
        raise ShapeError(f"commit path {path} must run from the root down one branch of the verified tree "
                         f"({tree.num_nodes} nodes).")
    return path
