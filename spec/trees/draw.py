"""Draw a candidate tree as a PNG (matplotlib, loaded only when drawing)."""

from __future__ import annotations

import os
from pathlib import Path

from spec.io import check_writable_file
from spec.protocols import CandidateTree

#: The largest side of a tree drawing, in inches; trees with more nodes than MAX_LABELS are drawn unlabelled.
MAX_INCHES = 60.0
MAX_LABELS = 400


def draw_tree(tree: CandidateTree, png_path: str | os.PathLike, stats=None, title: str = "") -> Path:
    """A PNG of the tree: depth downwards, each node labelled by its rank and, with ``stats``,
    the probability its path is accepted. ``png_path``'s folder must be writable (checked first)."""
    png_path = check_writable_file(png_path, "PNG file")
    png_path.parent.mkdir(parents=True, exist_ok=True)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # Leaves get consecutive x positions; a parent sits above the middle of its children. Iterative
    # (post-order with an explicit stack), so a tree thousands of levels deep draws like a shallow one.
    x = [0.0] * tree.num_nodes
    next_leaf = 0.0
    stack = [(0, False)]
    while stack:
        node, children_done = stack.pop()
        kids = tree.children[node]
        if not children_done and kids:
            stack.append((node, True))
            stack.extend((kid, False) for kid in reversed(kids))
        elif kids:
            x[node] = sum(x[k] for k in kids) / len(kids)
        else:
            x[node] = next_leaf
            next_leaf += 1.0

    path_prob = [1.0] * tree.num_nodes
    if stats is not None:
        for node in range(1, tree.num_nodes):
            path_prob[node] = path_prob[tree.parents[node]] * stats.prob(tree.depth_list[node], tree.ranks[node])
    # Big trees get a capped canvas (crowded, but drawn) rather than an image too large to allocate.
    fig, ax = plt.subplots(figsize=(min(max(4.0, 0.45 * next_leaf + 1), MAX_INCHES),
                                    min(1.1 * (tree.max_depth + 1) + 0.6, MAX_INCHES)))
    from matplotlib.collections import LineCollection

    y = [-d for d in tree.depth_list]
    ax.add_collection(LineCollection([[(x[tree.parents[n]], y[tree.parents[n]]), (x[n], y[n])]
                                      for n in range(1, tree.num_nodes)], colors="grey", linewidths=0.8))
    ax.scatter(x, y, s=260, c=["tab:orange"] + ["tab:blue"] * (tree.num_nodes - 1), zorder=3)
    if tree.num_nodes <= MAX_LABELS:  # beyond that the labels overlap into a smear
        for node in range(tree.num_nodes):
            label = "root" if node == 0 else f"r{tree.ranks[node]}"
            if stats is not None and node:
                label += f"\n{path_prob[node]:.2f}"
            ax.annotate(label, (x[node], y[node]), ha="center", va="center", fontsize=6, color="white", zorder=4)
    step = max(1, (tree.max_depth + 1) // 40)
    ax.set_yticks([-d for d in range(0, tree.max_depth + 1, step)],
                  [f"depth {d}" for d in range(0, tree.max_depth + 1, step)])
    ax.set_xticks([])
    ax.set_title(title or f"{tree.num_nodes - 1} candidates, depth {tree.max_depth}", fontsize=9)
    for side in ("top", "right", "bottom"):
        ax.spines[side].set_visible(False)
    fig.tight_layout()
    try:
        fig.savefig(png_path, dpi=110, format="png")
    finally:
        plt.close(fig)
    return png_path
