"""Mean and 95% confidence interval of a few repeated measurements (seeds of one setting).

The interval is Student's t with n - 1 degrees of freedom: mean +- t_{0.975, n-1} * s / sqrt(n), s the
sample standard deviation (n - 1 denominator). With 3 seeds t is 4.30, not the normal 1.96: the
interval is honest about how little three runs say. scipy is not a dependency, so the quantiles are a
table (scipy.stats.t.ppf(0.975, dof) to 4 decimals) and, beyond it, the Cornish-Fisher expansion.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# t_{0.975, dof} for dof = 1..30.
T_975 = (
    12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281,
    2.2010, 2.1788, 2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860,
    2.0796, 2.0739, 2.0687, 2.0639, 2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423,
)
NORMAL_975 = 1.959963984540054


def t_quantile_975(dof: int) -> float:
    """The 0.975 quantile of Student's t with `dof` >= 1 degrees of freedom (two-sided 95%)."""
    if dof < 1:
        raise ValueError(f"Student's t needs at least 1 degree of freedom, got {dof}")
    if dof <= len(T_975):
        return T_975[dof - 1]
    # Cornish-Fisher expansion in 1/dof around the normal quantile; its error past dof 30 is < 1e-4.
    z = NORMAL_975
    return (z + (z**3 + z) / (4 * dof) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * dof**2)
            + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * dof**3))


@dataclass(frozen=True)
class MeanInterval:
    n: int
    mean: float
    low: float | None  # None when n == 1: one run has no spread to measure
    high: float | None

    @property
    def half_width(self) -> float | None:
        return None if self.low is None else (self.high - self.low) / 2


def mean_interval(values: list[float]) -> MeanInterval | None:
    """Mean and 95% Student-t interval of `values` (None when empty; no interval when there is one)."""
    n = len(values)
    if n == 0:
        return None
    mean = math.fsum(values) / n
    if n == 1:
        return MeanInterval(1, mean, None, None)
    std = math.sqrt(math.fsum((value - mean) ** 2 for value in values) / (n - 1))
    half = t_quantile_975(n - 1) * std / math.sqrt(n)
    return MeanInterval(n, mean, mean - half, mean + half)
