"""Speed against generation length: is any ``max_new_tokens`` slower than decoding without speculation?

Short generations are where speculation can lose: prefill, the drafter's own prefill (a context
layer over the prompt) and the first steps cost the same whatever follows. For each length the
methods run interleaved (``run_benchmark``) and each is compared with the baseline in the same
run. Run-to-run noise is measured, not assumed: the relative spread of the baseline's own timed
repeats at that length.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional, Sequence

import attrs
import torch

from spec.bench.methods import Method
from spec.bench.metrics import median
from spec.bench.runner import run_benchmark
from spec.errors import ConfigurationError


@attrs.frozen
class SweepPoint:
    max_new_tokens: int
    tokens_per_second: dict[str, float]  # method -> median tokens/s
    speedup: dict[str, float]  # method -> median ratio to the baseline in the same repeat
    noise: float  # the baseline's (max - min) / median over its timed repeats


@attrs.frozen
class SweepReport:
    baseline: str
    points: tuple[SweepPoint, ...]
    settings: dict[str, Any]

    def slower_than_baseline(self, name: str) -> list[int]:
        """Lengths at which ``name`` was slower than the baseline by more than that length's noise."""
        return [p.max_new_tokens for p in self.points if p.speedup[name] < 1 - p.noise]

    def to_dict(self) -> dict[str, Any]:
        return attrs.asdict(self, value_serializer=lambda i, f, v: list(v) if isinstance(v, tuple) else v)


def fit_prompts(prompts: Sequence[torch.Tensor], max_new_tokens: int, context: int) -> list[torch.Tensor]:
    """Each prompt (``[1, L]``) cut to its last ``context - max_new_tokens`` tokens where it would not fit."""
    room = context - max_new_tokens
    if room < 1:
        raise ConfigurationError(f"max_new_tokens {max_new_tokens} leaves no room for a prompt in a context of "
                                 f"{context} tokens; sweep lengths below {context}.")
    return [p[:, -room:] for p in prompts]


def run_sweep(methods: Sequence[Method], prompts: Sequence[torch.Tensor], lengths: Sequence[int], context: int,
              baseline: Optional[str] = None, repeats: int = 3, warmup: int = 1,
              progress: bool = False) -> SweepReport:
    """``run_benchmark`` at each of ``lengths`` (greedy), prompts cut to fit the ``context``."""
    if not lengths or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in lengths):
        raise ConfigurationError(f"Sweep lengths must be whole numbers >= 1, got {list(lengths)!r}.")
    baseline = baseline or methods[0].name
    points = []
    for n in lengths:
        report = run_benchmark(methods, fit_prompts(prompts, n, context), n, baseline=baseline, repeats=repeats,
                               warmup=warmup, progress=progress, profile_overhead=False)
        base = report.method(baseline).repeat_tokens_per_second
        spread = (max(base) - min(base)) / median(base) if len(base) > 1 else 0.0
        points.append(SweepPoint(n, {m.name: m.tokens_per_second for m in report.methods},
                                 {m.name: m.speedup for m in report.methods}, spread))
    return SweepReport(baseline, tuple(points), {"lengths": list(lengths), "repeats": repeats, "warmup": warmup,
                                                 "prompts": len(prompts), "context": context})


def sweep_table(report: SweepReport) -> str:
    """Markdown: one row per length, each method's speedup over the baseline (and the baseline's noise)."""
    names = [name for name in report.points[0].speedup if name != report.baseline]
    head = "| max_new_tokens | " + " | ".join(names) + f" | {report.baseline} tokens/s | noise |"
    rows = [head, "|" + "---|" * (len(names) + 3)]
    for p in report.points:
        cells = [f"{p.speedup[name]:.2f}x" + (" (slower)" if p.speedup[name] < 1 - p.noise else "")
                 for name in names]
        rows.append(f"| {p.max_new_tokens} | " + " | ".join(cells)
                    + f" | {p.tokens_per_second[report.baseline]:.1f} | {100 * p.noise:.0f}% |")
    return "\n".join(rows) + "\n"


def save_sweep(report: SweepReport, out_dir: str | Path) -> Path:
    from spec.io import atomic_write_bytes

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "sweep.json", json.dumps(report.to_dict(), indent=2).encode())
    atomic_write_bytes(out / "sweep.md", sweep_table(report).encode())
    return out / "sweep.json"
