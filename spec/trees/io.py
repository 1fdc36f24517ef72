"""Save, load and draw candidate trees."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional

from spec.errors import InvalidTreeError
from spec.io import atomic_write_bytes
from spec.protocols import CandidateTree
from spec.trees.choices import tree_from_choices, tree_to_choices

FORMAT = "spec-tree"


def tree_to_json(tree: CandidateTree, metadata: Optional[dict[str, Any]] = None) -> str:
    """``{"format": "spec-tree", "version": 1, "choices": [...], "metadata": {...}}``."""
    return json.dumps({"format": FORMAT, "version": 1, "choices": tree_to_choices(tree),
                       "metadata": metadata or {}}, indent=1)


def tree_from_json(text: str) -> tuple[CandidateTree, dict[str, Any]]:
    """Read :func:`tree_to_json` output, or a bare Medusa choices list."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidTreeError(f"The tree file is not valid JSON: {exc}.") from exc
    if isinstance(data, list):  # Medusa's format: the choices alone
        return tree_from_choices(data), {}
    if not isinstance(data, dict) or data.get("format") != FORMAT or "choices" not in data:
        raise InvalidTreeError("Not a spec tree file: expected a choices list or an object with format 'spec-tree'.")
    return tree_from_choices(data["choices"]), dict(data.get("metadata") or {})


def save_tree(path: str | os.PathLike, tree: CandidateTree, metadata: Optional[dict[str, Any]] = None) -> None:
    atomic_write_bytes(path, tree_to_json(tree, metadata).encode())


def load_tree(path: str | os.PathLike) -> tuple[CandidateTree, dict[str, Any]]:
    return tree_from_json(Path(path).read_text())


def draw_tree(tree: CandidateTree, png_path: str | os.PathLike, stats=None, title: str = "") -> Path:
    """A PNG of the tree: depth downwards, each node labelled by its rank and, with ``stats``,
    the probability its path is accepted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # Leaves get consecutive x positions; a parent sits above the middle of its children.
    x = [0.0] * tree.num_nodes
    next_leaf = 0.0

    def place(node: int) -> None:
        nonlocal next_leaf
        kids = tree.children[node]
        for kid in kids:
            place(kid)
        if kids:
            x[node] = sum(x[k] for k in kids) / len(kids)
        else:
            x[node] = next_leaf
            next_leaf += 1.0

    place(0)
    path_prob = [1.0] * tree.num_nodes
    if stats is not None:
        for node in range(1, tree.num_nodes):
            path_prob[node] = path_prob[tree.parents[node]] * stats.prob(tree.depth_list[node], tree.ranks[node])
    fig, ax = plt.subplots(figsize=(max(4.0, 0.45 * next_leaf + 1), 1.1 * (tree.max_depth + 1) + 0.6))
    for node in range(1, tree.num_nodes):
        parent = tree.parents[node]
        ax.plot([x[parent], x[node]], [-tree.depth_list[parent], -tree.depth_list[node]], color="grey", lw=0.8)
    for node in range(tree.num_nodes):
        label = "root" if node == 0 else f"r{tree.ranks[node]}"
        if stats is not None and node:
            label += f"\n{path_prob[node]:.2f}"
        ax.scatter([x[node]], [-tree.depth_list[node]], s=260, color="tab:blue" if node else "tab:orange", zorder=3)
        ax.annotate(label, (x[node], -tree.depth_list[node]), ha="center", va="center", fontsize=6, color="white",
                    zorder=4)
    ax.set_yticks([-d for d in range(tree.max_depth + 1)], [f"depth {d}" for d in range(tree.max_depth + 1)])
    ax.set_xticks([])
    ax.set_title(title or f"{tree.num_nodes - 1} candidates, depth {tree.max_depth}", fontsize=9)
    for side in ("top", "right", "bottom"):
        ax.spines[side].set_visible(False)
    fig.tight_layout()
    png_path = Path(png_path)
    fig.savefig(png_path, dpi=110)
    plt.close(fig)
    return png_path
