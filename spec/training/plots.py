"""Plots of a training log."""

from __future__ import annotations

import json
import re
from pathlib import Path


def plot_head_accuracy(log_path: str | Path, png_path: str | Path) -> Path:
    """Held-out top-1 accuracy of every head against training step, from ``log.jsonl``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [json.loads(line) for line in Path(log_path).read_text().splitlines() if line.strip()]
    evals = [r for r in records if any(k.startswith("eval_head") for k in r)]
    heads = sorted({int(m.group(1)) for r in evals for k in r if (m := re.match(r"eval_head(\d+)_top1$", k))})
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for head in heads:
        ax.plot([r["step"] for r in evals], [r[f"eval_head{head}_top1"] for r in evals], marker="o",
                label=f"head {head} (token +{head + 2})")
    ax.set_xlabel("step")
    ax.set_ylabel("held-out top-1 accuracy")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    if heads:
        ax.legend()
    fig.tight_layout()
    png_path = Path(png_path)
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
    return png_path
