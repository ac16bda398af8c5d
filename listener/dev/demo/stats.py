"""Pure statistics for the demo's summary and the benchmarks: percentiles, rates, ratios.

The figures must match what an operator gets from PostgreSQL's `percentile_cont` (linear
interpolation between closest ranks): `statistics.quantiles(method="inclusive")` is that
rule. No I/O here, so the unit tests pin the arithmetic down.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from fractions import Fraction

_MAX_DIVISIONS = 10_000  # fractions are read to 1/10000 (p99.99 is the finest figure used)

__all__ = [
    "Summary",
    "format_duration_ms",
    "percentile",
    "rate_per_s",
    "ratio",
    "summarize",
]


def percentile(values: Sequence[float], fraction: float, *, presorted: bool = False) -> float:
    """The `fraction` quantile (0..1), as PostgreSQL's `percentile_cont` computes it: that is
    `statistics.quantiles(method="inclusive")` (linear interpolation between closest ranks),
    with `fraction` written as i/n.

    Raises ValueError on an empty sequence or a fraction outside [0, 1]: a silent 0 would
    read as a perfect latency.
    """
    if not 0.0 <= fraction <= 1.0 or math.isnan(fraction):
        raise ValueError("fraction must be between 0 and 1")
    if not values:
        raise ValueError("percentile of an empty sequence")
    ordered = values if presorted else sorted(values)
    share = Fraction(fraction).limit_denominator(_MAX_DIVISIONS)
    if len(ordered) == 1 or share == 0:
        return float(ordered[0])
    if share == 1:
        return float(ordered[-1])
    cuts = statistics.quantiles(ordered, n=share.denominator, method="inclusive")
    return float(cuts[share.numerator - 1])


@dataclass(frozen=True)
class Summary:
    """Count and the usual latency figures of one sample, in the sample's unit."""

    count: int
    mean: float
    p50: float
    p95: float
    p99: float
    max: float
    min: float

    def as_dict(self, digits: int = 3) -> dict[str, float | int]:
        return {
            "count": self.count,
            "mean": round(self.mean, digits),
            "p50": round(self.p50, digits),
            "p95": round(self.p95, digits),
            "p99": round(self.p99, digits),
            "max": round(self.max, digits),
            "min": round(self.min, digits),
        }


def summarize(values: Iterable[float]) -> Summary | None:
    """p50/p95/p99/max/min/mean of a sample; None when it is empty (nothing to report)."""
    ordered = sorted(float(v) for v in values)
    if not ordered:
        return None
    return Summary(
        count=len(ordered),
        mean=math.fsum(ordered) / len(ordered),
        p50=percentile(ordered, 0.50, presorted=True),
        p95=percentile(ordered, 0.95, presorted=True),
        p99=percentile(ordered, 0.99, presorted=True),
        max=ordered[-1],
        min=ordered[0],
    )


def rate_per_s(count: int, seconds: float) -> float:
    """Events per second; 0 when no time has passed (a rate, not a division error)."""
    if seconds <= 0 or count <= 0:
        return 0.0
    return count / seconds


def ratio(value: float, baseline: float) -> float:
    """value / baseline, NaN when the baseline is not positive (reported as such, not 0)."""
    if baseline <= 0:
        return math.nan
    return value / baseline


def format_duration_ms(ms: float) -> str:
    """A latency for people: '0.84 ms', '12.3 ms', '1.62 s'."""
    if math.isnan(ms):
        return "n/a"
    if ms < 10:
        return f"{ms:.2f} ms"
    if ms < 1000:
        return f"{ms:.1f} ms"
    return f"{ms / 1000:.2f} s"
