"""A chi-square goodness-of-fit test with no dependency beyond torch."""

from __future__ import annotations

from collections import Counter
from typing import Hashable, Mapping

import torch


def chi_square_pvalue(observed: Counter, expected_probs: Mapping[Hashable, float], min_expected: float = 5.0) -> float:
    """p-value of Pearson's chi-square test of ``observed`` counts against ``expected_probs``.

    Outcomes expected fewer than ``min_expected`` times are pooled into one bin (the
    usual validity rule). An observed outcome with expected probability 0 returns
    p = 0: it is impossible under the hypothesis.
    """
    n = sum(observed.values())
    if any(expected_probs.get(k, 0.0) <= 0.0 for k in observed):
        return 0.0
    big = {k: p for k, p in expected_probs.items() if p * n >= min_expected}
    small = [k for k, p in expected_probs.items() if p * n < min_expected and p > 0]
    bins = [(observed.get(k, 0), p * n) for k, p in big.items()]
    pooled_p = sum(expected_probs[k] for k in small)
    if pooled_p * n >= min_expected:
        bins.append((sum(observed.get(k, 0) for k in small), pooled_p * n))
    elif bins and small:  # too rare even pooled: fold into the smallest bin
        o, e = bins.pop(min(range(len(bins)), key=lambda i: bins[i][1]))
        bins.append((o + sum(observed.get(k, 0) for k in small), e + pooled_p * n))
    statistic = sum((o - e) ** 2 / e for o, e in bins)
    dof = len(bins) - 1
    if dof < 1:
        return 1.0
    return float(torch.special.gammaincc(torch.tensor(dof / 2, dtype=torch.float64),
                                         torch.tensor(statistic / 2, dtype=torch.float64)))
