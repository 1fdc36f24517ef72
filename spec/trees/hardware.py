"""Size the tree for the hardware: maximise expected tokens per second, not per step.

A bigger tree accepts more per step but costs more to verify; how much more depends
on the model and the device (a GPU verifies 64 tokens for about the price of one; a
small CPU does not). Given the measured verify cost curve ``c(n)`` and drafting cost
per depth ``d(L)``, pick the budget ``m`` and depth ``L`` maximising
``E[gain](m, L) / (d(L) + c(m + 1))``.
"""

from __future__ import annotations

import attrs

from spec.errors import ConfigurationError
from spec.protocols import CandidateTree
from spec.trees.optimize import _depth_limit, optimal_tree
from spec.trees.stats import AcceptanceStats


def check_seconds(value: object, name: str) -> float:
    """A measured time: a finite real >= 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < float("inf"):
        raise ConfigurationError(f"{name} must be measured seconds, finite and >= 0; got {value!r}.")
    return float(value)


def check_cost_curve(curve: dict[int, float] | None, name: str, zero_allowed: bool,
                     empty_allowed: bool = False) -> None:
    """``curve`` maps sizes (ints >= 1) to measured seconds: finite, and > 0 unless ``zero_allowed``
    (drafting may be free: a lookup)."""
    curve = curve or {}
    bad = {k: v for k, v in curve.items()
           if isinstance(k, bool) or not isinstance(k, int) or k < 1
           or isinstance(v, bool) or not isinstance(v, (int, float)) or not (v < float("inf"))
           or not (v >= 0 if zero_allowed else v > 0)}
    if bad or (not curve and not empty_allowed):
        raise ConfigurationError(
            f"{name} must map sizes (whole numbers >= 1) to measured seconds, finite and "
            f"{'>= 0' if zero_allowed else '> 0'}; got {bad or curve!r}. Measure them with "
            "spec.bench.measure_verify_costs / measure_draft_costs.")


def interpolate(curve: dict[int, float], n: float) -> float:
    """Piecewise-linear ``curve`` at ``n`` (clamped at its ends)."""
    points = sorted(curve.items())
    if not points:
        raise ConfigurationError("An empty cost curve; measure it first.")
    if n <= points[0][0]:
        return points[0][1]
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        if n <= x1:
            return y0 + (y1 - y0) * (n - x0) / (x1 - x0)
    return points[-1][1]


@attrs.frozen
class SizedTree:
    tree: CandidateTree
    budget: int
    depth: int
    expected_length: float
    tokens_per_second: float  # predicted
    table: tuple[tuple[int, int, float, float], ...]  # (budget, depth, expected length, predicted tokens/s)


def choose_tree_for_hardware(stats: AcceptanceStats, verify_costs: dict[int, float],
                             draft_costs: dict[int, float] | None = None, max_budget: int = 64,
                             max_depth: int | None = None, overhead_s: float = 0.0) -> SizedTree:
    """The DP-optimal tree whose budget and depth maximise predicted tokens per second of the whole step.

    ``verify_costs``: seconds per verify pass for ``n`` tree tokens (root included).
    ``draft_costs``: seconds per drafting call for each depth (0 when omitted).
    ``overhead_s``: seconds per step outside drafting and the verify pass (acceptance, the verifier's and
    the drafter's commits; e.g. a context layer), measured for the drafter at hand.
    """
    max_depth = _depth_limit(stats, max_depth)
    draft_costs = draft_costs or {}
    check_cost_curve(verify_costs, "verify_costs", zero_allowed=False)
    check_cost_curve(draft_costs, "draft_costs", zero_allowed=True, empty_allowed=True)
    check_seconds(overhead_s, "overhead_s")
    table = []
    for depth in range(1, max_depth + 1):
        capacity = sum(stats.width ** d for d in range(1, depth + 1))
        top = min(max_budget, capacity)
        curve = optimal_tree(stats, top, depth).curve
        for budget in range(1, top + 1):
            seconds = (overhead_s + interpolate(verify_costs, budget + 1)
                       + (interpolate(draft_costs, depth) if draft_costs else 0.0))
            table.append((budget, depth, curve[budget], curve[budget] / seconds))
    budget, depth, length, speed = max(table, key=lambda row: (row[3], -row[0]))
    return SizedTree(tree=optimal_tree(stats, budget, depth).tree, budget=budget, depth=depth,
                     expected_length=length, tokens_per_second=speed, table=tuple(table))
