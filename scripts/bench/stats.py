"""Pure arithmetic over measurements: percentiles, medians, ratios. No I/O."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence

INF = float("inf")


def percentiles(values: Sequence[float], missing: int = 0) -> dict[str, float | None]:
    """p50, p90, p99 and max (nearest rank), counting ``missing`` events as infinitely late.

    Nearest rank: the p-th percentile of n values is the ceil(p/100 * n)-th smallest, so the p99 of
    100 values is the 99th and of 1,000 values the 990th.
    """
    n = len(values) + missing
    if n == 0:
        return {"p50": None, "p90": None, "p99": None, "max": None}
    ordered = sorted(values) + [INF] * missing

    def rank(p: float) -> float:
        return ordered[min(n, max(1, math.ceil(p * n / 100))) - 1]

    return {"p50": rank(50), "p90": rank(90), "p99": rank(99), "max": ordered[-1]}


def median(values: Iterable[float | None]) -> float | None:
    """The median of the values that are not None (None when there is none); inf counts as a value."""
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """``numerator / denominator``; None when either is unknown or the denominator is not positive."""
    if numerator is None or denominator is None or denominator <= 0:
        return None
    return numerator / denominator


def median_ratio(pairs: Iterable[tuple[float | None, float | None]]) -> float | None:
    """The median of the ratios of pairs measured together (one per repetition), unknown ones left out."""
    return median(ratio(a, b) for a, b in pairs)
