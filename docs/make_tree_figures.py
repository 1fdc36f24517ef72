"""Regenerate docs/img/tree_curve.png and docs/img/tree.png from the shipped Medusa statistics and tree.

    python docs/make_tree_figures.py
"""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from spec.apps.shipped import ROOT, load_shipped_tree  # noqa: E402
from spec.trees import AcceptanceStats, draw_tree, optimal_tree  # noqa: E402

IMG = Path(__file__).parent / "img"


def main() -> None:
    IMG.mkdir(exist_ok=True)
    stats = AcceptanceStats.load(ROOT / "spec-py-tiny" / "stats" / "medusa.json")
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for depth in range(1, stats.depth + 1):
        budget = min(48, sum(stats.width ** d for d in range(1, depth + 1)))
        curve = optimal_tree(stats, budget, depth).curve
        ax.plot(range(len(curve)), curve, label=f"depth <= {depth}")
    ax.set_xlabel("candidate nodes (budget)")
    ax.set_ylabel("expected tokens per step")
    ax.set_title("Shipped Medusa heads on spec-py-tiny: best tree per budget (DP)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(IMG / "tree_curve.png", dpi=100)
    plt.close(fig)
    draw_tree(load_shipped_tree("medusa"), IMG / "tree.png", stats, title="The shipped Medusa tree (hardware-sized for this CPU)")


if __name__ == "__main__":
    main()
