"""The verify-then-commit handshake, kept the same way by every verifier.

``verify`` holds its tree in a :class:`PendingTree` until ``commit`` releases it with the
accepted path, which must be one root-to-node branch of that tree.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Optional

import torch

from spec.errors import InputError, ShapeError
from spec.protocols import CandidateTree


@lru_cache(maxsize=4096)  # thread-safe; paths repeat from step to step (a tree shape has a path per node)
def path_tensor(path: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """``path`` ``[len]`` int64 on ``device``, copied from the host once per path and device (on CUDA each copy
    from pageable host memory waits for the stream). Shared between callers: never modify it in place."""
    return torch.tensor(path, dtype=torch.long, device=device)


def check_path(tree: CandidateTree, path) -> tuple[int, ...]:
    """``path`` as a tuple, if it runs from the root down one branch of ``tree``; else ShapeError."""
    path = tuple(int(node) for node in path)
    if not path or path[0] != 0 or not all(0 <= node < tree.num_nodes for node in path) \
            or tuple(tree.path_to(path[-1])) != path:
        raise ShapeError(f"commit path {path} must run from the root down one branch of the verified tree "
                         f"({tree.num_nodes} nodes).")
    return path


def moves_rows(path: tuple[int, ...]) -> bool:
    """Whether committing ``path`` must move cache rows (it is not the tree's first nodes in order)."""
    return any(node != i for i, node in enumerate(path))


class PendingTree:
    """The tree verified last, held until its accepted path is committed."""

    def __init__(self) -> None:
        self.tree: Optional[CandidateTree] = None

    def check_free(self, what: str) -> None:
        if self.tree is not None:
            raise InputError(f"{what}() called while a verified tree awaits commit(); commit the accepted path first.")

    def hold(self, tree: CandidateTree) -> None:
        self.tree = tree

    def release(self, path) -> tuple[int, ...]:
        """The checked ``path`` (a tuple); the verifier is free again."""
        if self.tree is None:
            raise InputError("commit() called with no verified tree pending; call verify() first.")
        path = check_path(self.tree, path)
        self.tree = None
        return path
