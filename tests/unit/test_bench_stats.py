"""The statistics behind the demo's summary and the benchmark figures (listener/dev/demo/stats.py).

Percentiles must agree with PostgreSQL's `percentile_cont` (linear interpolation between
closest ranks), because the README compares figures from both.
"""

from __future__ import annotations

import math

import pytest

from listener.dev.demo.stats import format_duration_ms, percentile, rate_per_s, ratio, summarize

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("values", "fraction", "expected"),
    [
        ([5.0], 0.5, 5.0),
        ([5.0], 0.99, 5.0),
        ([1.0, 2.0], 0.5, 1.5),
        ([1.0, 2.0, 3.0, 4.0], 0.5, 2.5),
        ([1.0, 2.0, 3.0, 4.0], 0.0, 1.0),
        ([1.0, 2.0, 3.0, 4.0], 1.0, 4.0),
        # percentile_cont(0.95) over 1..100 is 95.05 in PostgreSQL.
        ([float(v) for v in range(1, 101)], 0.95, 95.05),
        ([float(v) for v in range(1, 101)], 0.99, 99.01),
    ],
)
def test_percentile_matches_percentile_cont(values: list[float], fraction: float,
                                            expected: float) -> None:
    assert percentile(values, fraction) == pytest.approx(expected)


def test_percentile_does_not_need_sorted_input_and_does_not_sort_it() -> None:
    values = [9.0, 1.0, 5.0]
    assert percentile(values, 0.5) == 5.0
    assert values == [9.0, 1.0, 5.0]


@pytest.mark.parametrize("fraction", [-0.1, 1.01, math.nan])
def test_percentile_rejects_fractions_outside_0_1(fraction: float) -> None:
    with pytest.raises(ValueError, match="fraction"):
        percentile([1.0, 2.0], fraction)


def test_percentile_of_nothing_is_an_error_not_zero() -> None:
    with pytest.raises(ValueError, match="empty"):
        percentile([], 0.5)


def test_summarize() -> None:
    summary = summarize([4.0, 1.0, 3.0, 2.0])
    assert summary is not None
    assert (summary.count, summary.min, summary.max) == (4, 1.0, 4.0)
    assert summary.mean == pytest.approx(2.5)
    assert summary.p50 == pytest.approx(2.5)
    assert summary.p99 == pytest.approx(3.97)
    assert summary.as_dict(2) == {"count": 4, "mean": 2.5, "p50": 2.5, "p95": 3.85,
                                  "p99": 3.97, "max": 4.0, "min": 1.0}


def test_summarize_accepts_a_generator_and_reports_nothing_for_no_values() -> None:
    assert summarize(x for x in [1.0]) is not None
    assert summarize([]) is None


def test_rate_and_ratio_guard_their_divisions() -> None:
    assert rate_per_s(500, 2.0) == 250.0
    assert rate_per_s(10, 0.0) == 0.0
    assert rate_per_s(0, 5.0) == 0.0
    assert ratio(3.0, 2.0) == 1.5
    assert math.isnan(ratio(1.0, 0.0))


@pytest.mark.parametrize(
    ("ms", "text"),
    [(0.842, "0.84 ms"), (12.34, "12.3 ms"), (999.0, "999.0 ms"), (1620.0, "1.62 s"),
     (math.nan, "n/a")],
)
def test_format_duration_ms(ms: float, text: str) -> None:
    assert format_duration_ms(ms) == text
