"""Benchmark arithmetic, as pure functions (Spec-Bench's definitions), so it can be tested on known inputs."""

from __future__ import annotations

import math
import statistics
from collections import Counter
from typing import Sequence

from spec.protocols import GenerationOutput


def tokens_per_second(new_tokens: Sequence[int], seconds: Sequence[float]) -> float:
    """Total new tokens over total wall time (a run's tokens/s is not averaged per prompt)."""
    total = sum(seconds)
    return sum(new_tokens) / total if total > 0 else float("nan")


def speedup(method_tps: float, baseline_tps: float) -> float:
    return method_tps / baseline_tps if baseline_tps > 0 else float("nan")


def mean_accepted_tokens(outputs: Sequence[GenerationOutput]) -> float:
    """Tokens gained per verify step (accepted candidates + bonus), over every step of every output."""
    steps = [s for out in outputs for s in out.steps]
    return sum(s.accepted + 1 for s in steps) / len(steps) if steps else float("nan")


def accepted_histogram(outputs: Sequence[GenerationOutput]) -> dict[int, int]:
    """How many steps gained 1, 2, 3, ... tokens."""
    counts = Counter(s.accepted + 1 for out in outputs for s in out.steps)
    return dict(sorted(counts.items()))


def stage_breakdown(outputs: Sequence[GenerationOutput]) -> dict[str, float]:
    """Share of the decoding time (prefill excluded) spent per stage; 'other' is the loop around them."""
    draft = sum(s.draft_s for o in outputs for s in o.steps)
    verify = sum(s.verify_s for o in outputs for s in o.steps)
    accept = sum(s.accept_s for o in outputs for s in o.steps)
    commit = sum(s.commit_s for o in outputs for s in o.steps)
    # The autoregressive baseline's first step is its prefill; never let the stages exceed the whole.
    total = max(sum(o.total_s - o.prefill_s for o in outputs), draft + verify + accept + commit)
    other = total - draft - verify - accept - commit
    if total <= 0:
        return {k: float("nan") for k in ("draft", "verify", "accept", "commit", "other")}
    return {"draft": draft / total, "verify": verify / total, "accept": accept / total, "commit": commit / total,
            "other": other / total}


def overhead_share(outputs: Sequence[GenerationOutput]) -> float:
    """Share of step time outside network forward passes, over steps timed with a ForwardTimer."""
    steps = [s for o in outputs for s in o.steps if s.forward_s is not None]
    total = sum(s.total_s for s in steps)
    return sum(s.overhead_s for s in steps) / total if total > 0 else float("nan")


def mean_step_ms(outputs: Sequence[GenerationOutput]) -> float:
    """Mean wall time of one decoding step, milliseconds."""
    steps = [s for o in outputs for s in o.steps]
    return 1000 * sum(s.total_s for s in steps) / len(steps) if steps else float("nan")


def zero_overhead_speedup(mean_accepted: float, cost_one: float, cost_tree: float) -> float:
    """The speedup over one-token decoding if drafting and bookkeeping were free: tau * c(1) / c(n)."""
    return mean_accepted * cost_one / cost_tree if cost_tree > 0 else float("nan")


def free_overhead_speedup(speedup: float, outputs: Sequence[GenerationOutput]) -> float:
    """The speedup the same run would reach if drafting, acceptance, commits and the loop around them cost nothing:
    ``speedup`` scaled by whole time / (prefill + verify time). Measured in the run itself (its trees, its context
    lengths, the machine's state then); a verify-cost curve measured apart can drift enough to put the ceiling
    below the speedup reached. Realised / this ceiling is the share of the time spent verifying or prefilling."""
    total = sum(o.total_s for o in outputs)
    # Capped at the whole: the autoregressive decoder's first step is its prefill, which would count twice.
    needed = min(total, sum(o.prefill_s + sum(s.verify_s for s in o.steps) for o in outputs))
    return speedup * total / needed if needed > 0 and math.isfinite(speedup) else float("nan")


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")
