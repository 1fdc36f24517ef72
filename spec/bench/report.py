"""Write a benchmark report as JSON, a markdown table and PNG plots."""

from __future__ import annotations

import json
import math
from pathlib import Path

from spec.bench.runner import BenchReport
from spec.io import atomic_write_bytes

STAGES = ("draft", "verify", "accept", "commit", "other")


def _fmt(value, spec: str = ".2f") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return format(value, spec)


def markdown_table(report: BenchReport) -> str:
    head = ("| method | tokens/s | speedup vs " + report.baseline + " | mean accepted | zero-overhead ceiling | step ms | "
            "outside forward % | " + " | ".join(f"{s} %" for s in STAGES) + " | peak MB | greedy output |")
    rule = "|" + "---|" * (head.count("|") - 1)
    rows = [head, rule]
    for m in report.methods:
        stages = [_fmt(100 * m.stages[s], ".0f") if m.stages else "–" for s in STAGES]
        check = {None: "n/a (sampling)", True: "identical"}.get(m.matches_baseline,
                                                               f"DIFFERS on prompts {list(m.mismatched_prompts)}")
        rows.append(f"| {m.name} | {_fmt(m.tokens_per_second, '.1f')} | {_fmt(m.speedup)}x | {_fmt(m.mean_accepted)} | "
                    f"{_fmt(m.ceiling_speedup)}{'x' if m.ceiling_speedup else ''} | {_fmt(m.step_ms)} | "
                    f"{_fmt(100 * m.overhead_share, '.0f')} | " + " | ".join(stages)
                    + f" | {_fmt(m.peak_memory_mb, '.0f')} | {check} |")
    return "\n".join(rows) + "\n"


#: What ``save_report`` writes; replaced together (a crash leaves the old report or the new one).
REPORT_FILES = ("report.json", "report.md", "speedup.png", "accepted.png", "stages.png")


def save_report(report: BenchReport, out_dir: str | Path, plots: bool = True) -> dict[str, Path]:
    """``report.json``, ``report.md`` and (with matplotlib) ``speedup.png``, ``accepted.png``, ``stages.png``,
    written into a staging directory that then replaces ``out_dir``'s report as a whole (other files kept)."""
    from spec.io import replace_directory

    with replace_directory(out_dir, owned=REPORT_FILES, what="report directory") as staging:
        written = _write_report_files(report, staging, plots)
    return {kind: Path(out_dir) / path.name for kind, path in written.items()}


def _write_report_files(report: BenchReport, out: Path, plots: bool) -> dict[str, Path]:
    files = {"json": out / "report.json", "markdown": out / "report.md"}
    atomic_write_bytes(files["json"], json.dumps(report.to_dict(), indent=2, default=str).encode())
    atomic_write_bytes(files["markdown"], markdown_table(report).encode())
    if plots:
        files.update(_plots(report, out))
    return files


def _plots(report: BenchReport, out: Path) -> dict[str, Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [m.name for m in report.methods]
    files = {}
    fig, ax = plt.subplots(figsize=(max(5, 1.2 * len(names)), 3.5))
    ax.bar(names, [m.speedup for m in report.methods], color="tab:blue")
    ax.axhline(1.0, color="grey", lw=1)
    ax.set_ylabel(f"speedup vs {report.baseline}")
    ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    files["speedup_png"] = out / "speedup.png"
    fig.savefig(files["speedup_png"], dpi=100)
    plt.close(fig)

    pipelines = [m for m in report.methods if m.accepted_histogram]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    width = 0.8 / max(len(pipelines), 1)
    for i, m in enumerate(pipelines):
        total = sum(m.accepted_histogram.values())
        xs = [int(k) + i * width for k in m.accepted_histogram]
        ax.bar(xs, [v / total for v in m.accepted_histogram.values()], width=width, label=m.name)
    ax.set_xlabel("tokens gained per step")
    ax.set_ylabel("share of steps")
    if pipelines:
        ax.legend(fontsize=7)
    fig.tight_layout()
    files["accepted_png"] = out / "accepted.png"
    fig.savefig(files["accepted_png"], dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(max(5, 1.2 * len(pipelines)), 3.5))
    bottom = [0.0] * len(pipelines)
    for stage in STAGES:
        values = [m.stages.get(stage, 0.0) for m in pipelines]
        ax.bar([m.name for m in pipelines], values, bottom=bottom, label=stage)
        bottom = [b + v for b, v in zip(bottom, values)]
    ax.set_ylabel("share of decoding time")
    ax.tick_params(axis="x", rotation=30)
    if pipelines:
        ax.legend(fontsize=7)
    fig.tight_layout()
    files["stages_png"] = out / "stages.png"
    fig.savefig(files["stages_png"], dpi=100)
    plt.close(fig)
    return files
