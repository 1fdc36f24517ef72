"""A benchmark's report: per-method medians built from the timed runs, written as JSON, a markdown table and
PNG plots."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable, Optional

import attrs
import torch

from spec.bench import metrics
from spec.bench.divergence import Divergence
from spec.io import atomic_write_bytes

@attrs.frozen
class MethodReport:
    name: str
    tokens_per_second: float  # median over repeats
    speedup: float  # median over repeats of the ratio to the baseline in the same repeat
    repeat_tokens_per_second: tuple[float, ...]
    mean_accepted: float  # NaN for methods without per-step statistics
    accepted_histogram: dict[int, int]
    stages: dict[str, float]
    mean_tree_size: float
    peak_memory_mb: float
    matches_baseline: Optional[bool]  # None when sampling (outputs are not comparable)
    mismatched_prompts: tuple[int, ...]
    ceiling_speedup: Optional[float] = None
    step_ms: float = float("nan")  # mean decoding step, timed runs
    # Share of a step outside network forward passes, from one extra profiled pass (ForwardTimer).
    overhead_share: float = float("nan")
    # Per mismatched prompt (same order): where the output first parts from the baseline's, and the model's top-2
    # logit gap there (a near-tie flipped in half precision, or a bug); None where it could not be computed.
    divergences: tuple[Optional[Divergence], ...] = ()


@attrs.frozen
class BenchReport:
    baseline: str
    methods: tuple[MethodReport, ...]
    settings: dict[str, Any]
    cost_curve: Optional[dict[int, float]] = None

    def method(self, name: str) -> MethodReport:
        return next(m for m in self.methods if m.name == name)

    def to_dict(self) -> dict[str, Any]:
        return attrs.asdict(self, value_serializer=lambda i, f, v: list(v) if isinstance(v, tuple) else v)


def build_report(runs, peaks, baseline, sampling, cost_curve, profiled, settings,
                 diverge: Optional[Callable[[int, torch.Tensor, torch.Tensor], Optional[Divergence]]] = None
                 ) -> BenchReport:
    """Medians over the timed repeats of ``runs[method][repeat][prompt]``, each method against ``baseline``.

    ``diverge(prompt_index, expected_new, got_new)``: the first divergence of a greedy mismatch (the runner's,
    which has the model and prompts); without it mismatches are only flagged."""
    greedy = sampling.get("temperature", 0.0) == 0
    base_runs = runs[baseline]
    base_tps = [metrics.tokens_per_second([r.new_tokens.numel() for r in rep], [r.seconds for r in rep])
                for rep in base_runs]
    reports = []
    for name, reps in runs.items():
        tps = [metrics.tokens_per_second([r.new_tokens.numel() for r in rep], [r.seconds for r in rep]) for rep in reps]
        ratios = [metrics.speedup(t, b) for t, b in zip(tps, base_tps)]
        outputs = [r.output for rep in reps for r in rep if r.output is not None]
        mismatched: tuple[int, ...] = ()
        matches = None
        if greedy:
            mismatched = tuple(i for i, (a, b) in enumerate(zip(reps[0], base_runs[0]))
                               if not torch.equal(a.new_tokens, b.new_tokens))
            matches = not mismatched
        divergences = tuple(diverge(i, base_runs[0][i].new_tokens, reps[0][i].new_tokens) for i in mismatched) \
            if diverge is not None else ()
        steps = [s for o in outputs for s in o.steps]
        mean_tree = sum(s.tree_size for s in steps) / len(steps) if steps else float("nan")
        mean_acc = metrics.mean_accepted_tokens(outputs) if outputs else float("nan")
        # The ceiling from this run's own verify time (a curve measured apart can drift below the realised speedup).
        ceiling = metrics.free_overhead_speedup(metrics.median(ratios), outputs) if steps else None
        reports.append(MethodReport(
            name=name, tokens_per_second=metrics.median(tps), speedup=metrics.median(ratios),
            repeat_tokens_per_second=tuple(tps), mean_accepted=mean_acc,
            accepted_histogram=metrics.accepted_histogram(outputs) if outputs else {},
            stages=metrics.stage_breakdown(outputs) if outputs else {}, mean_tree_size=mean_tree,
            peak_memory_mb=peaks[name], matches_baseline=matches, mismatched_prompts=mismatched,
            ceiling_speedup=ceiling, step_ms=metrics.mean_step_ms(outputs) if outputs else float("nan"),
            overhead_share=metrics.overhead_share([r.output for r in profiled[name] if r.output is not None]),
            divergences=divergences))
    return BenchReport(baseline=baseline, methods=tuple(reports), settings=settings, cost_curve=cost_curve)


STAGES = ("draft", "verify", "accept", "commit", "other")


def _fmt(value, spec: str = ".2f") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return format(value, spec)


def _describe_divergences(m: MethodReport) -> str:
    """``: prompt 0 at new token 5 (expected 17, got 23; top-2 logit gap 0.031), ...`` for a greedy mismatch."""
    parts = [f"prompt {i} at new token {d.index} (expected {d.expected}, got {d.got}; top-2 logit gap "
             f"{d.top2_gap:.3g})" for i, d in zip(m.mismatched_prompts, m.divergences) if d is not None]
    return ": " + ", ".join(parts) if parts else ""


def markdown_table(report: BenchReport) -> str:
    head = ("| method | tokens/s | speedup vs " + report.baseline + " | mean accepted | zero-overhead ceiling | step ms | "
            "outside forward % | " + " | ".join(f"{s} %" for s in STAGES) + " | peak MB | greedy output |")
    rule = "|" + "---|" * (head.count("|") - 1)
    rows = [head, rule]
    for m in report.methods:
        stages = [_fmt(100 * m.stages[s], ".0f") if m.stages else "–" for s in STAGES]
        check = {None: "n/a (sampling)", True: "identical"}.get(m.matches_baseline,
                                                               f"DIFFERS on prompts {list(m.mismatched_prompts)}"
                                                               + _describe_divergences(m))
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
