"""Bake analysis: robust memory trends and request figures from /metrics."""

from __future__ import annotations

import pytest

from airlock.checks.bake import (
    MemorySample,
    MetricsError,
    error_rate,
    judge_memory,
    memory_growth_mb_per_min,
    p95_ms,
    parse_metrics,
    theil_sen_slope,
)

MB = 2**20


def test_theil_sen_ignores_a_spike() -> None:
    """One outlier does not move the fitted slope."""
    points = [(float(t), 2.0 * t) for t in range(10)]
    points[5] = (5.0, 500.0)
    assert theil_sen_slope(points) == pytest.approx(2.0)


def test_a_steady_climb_is_judged_a_leak() -> None:
    """100 MB/min of growth against a 50 MB/min budget fails, naming the rate."""
    samples = [MemorySample(t * 0.5, 100 * MB + int(t * 0.5 * 100 * MB / 60)) for t in range(16)]
    rate = memory_growth_mb_per_min(samples)
    assert rate == pytest.approx(100, rel=0.02)
    verdict = judge_memory(samples, 50)
    assert verdict is not None and verdict.describe("notification").startswith(
        "notification: memory grows (MB/min) 100.0"
    )


def test_too_few_samples_or_a_flat_line_pass() -> None:
    """No verdict before enough samples; a flat profile with noise passes."""
    assert memory_growth_mb_per_min([MemorySample(0, MB), MemorySample(1, 2 * MB)]) is None
    noisy = [MemorySample(t * 0.5, 100 * MB + (MB if t % 3 == 0 else 0)) for t in range(20)]
    assert judge_memory(noisy, 50) is None


METRICS = """\
# HELP phoenix_requests_total Requests.
# TYPE phoenix_requests_total counter
phoenix_requests_total{{service="payment",method="POST",code="201"}} {ok}
phoenix_requests_total{{service="payment",method="POST",code="502"}} {bad}
# TYPE phoenix_request_duration_seconds histogram
phoenix_request_duration_seconds_bucket{{le="0.01"}} {fast}
phoenix_request_duration_seconds_bucket{{le="0.1"}} {mid}
phoenix_request_duration_seconds_bucket{{le="+Inf"}} {total}
phoenix_request_duration_seconds_sum 1.0
phoenix_request_duration_seconds_count {total}
"""


def test_error_rate_and_p95_between_scrapes() -> None:
    """Counters are compared between two scrapes: 10 errors in 100 requests, p95 at 100 ms."""
    first = parse_metrics(METRICS.format(ok=10, bad=0, fast=10, mid=10, total=10))
    last = parse_metrics(METRICS.format(ok=100, bad=10, fast=60, mid=105, total=110))
    assert error_rate(first, last) == pytest.approx(0.1)
    assert p95_ms(first, last) == pytest.approx(100.0)


def test_garbage_metrics_are_an_error() -> None:
    """A /metrics endpoint answering HTML is reported, not silently read as zero."""
    with pytest.raises(MetricsError):
        parse_metrics("<html><body>oops</body></html>")
