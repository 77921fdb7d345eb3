"""Bake analysis (INC09): is a new version leaking memory, failing requests or slow?

Pure functions over samples the runner collects while a release bakes: the resident memory of
each new process (psutil) and its ``/metrics`` (Prometheus text format). Memory growth is a
robust fit — the Theil–Sen slope, the median of the slopes between every pair of samples — so
one garbage-collection spike or one burst of caching neither triggers nor hides a leak.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from statistics import median

from prometheus_client.parser import text_string_to_metric_families

MIN_SAMPLES = 6
MIN_SPAN_SECONDS = 3.0
MIN_GROWTH_MB = 4.0  # below this, a "trend" is noise whatever its slope
MIN_REQUESTS = 20  # fewer requests since the first scrape: error rate and p95 are not judged


@dataclass(frozen=True)
class MemorySample:
    at: float  # seconds, any monotonic clock
    rss_bytes: int


def theil_sen_slope(points: Sequence[tuple[float, float]]) -> float:
    """The median slope over all pairs of points (robust to outliers)."""
    slopes = [
        (y2 - y1) / (x2 - x1)
        for i, (x1, y1) in enumerate(points)
        for x2, y2 in points[i + 1 :]
        if x2 != x1
    ]
    return median(slopes) if slopes else 0.0


def memory_growth_mb_per_min(samples: Sequence[MemorySample]) -> float | None:
    """The fitted growth rate, or None while there are too few samples to say."""
    if len(samples) < MIN_SAMPLES or samples[-1].at - samples[0].at < MIN_SPAN_SECONDS:
        return None
    recent = samples[-40:]  # bounded cost: 780 pairs at most
    points = [(s.at, s.rss_bytes / 2**20) for s in recent]
    return theil_sen_slope(points) * 60.0


@dataclass(frozen=True)
class Verdict:
    """Why a new instance fails its bake (``None`` from the ``judge_*`` functions when it passes).

    ``unit`` is how the figures read: ``""`` (as they are), ``"%"`` (``value`` and ``threshold``
    are shares of 1, shown as percentages) or a unit written after them (``"ms"``). ``detail``
    is appended in parentheses.
    """

    figure: str
    value: float
    threshold: float
    unit: str = ""
    detail: str = ""

    def describe(self, service: str) -> str:
        if self.unit == "%":
            value, limit = f"{self.value * 100:.1f}%", f"{self.threshold * 100:g}%"
        elif self.unit:
            value, limit = f"{self.value:g} {self.unit}", f"{self.threshold:g} {self.unit}"
        else:
            value, limit = f"{self.value:.1f}", f"{self.threshold:g}"
        text = f"{service}: {self.figure} {value} above the limit of {limit}"
        return f"{text} ({self.detail})" if self.detail else text


def judge_memory(samples: Sequence[MemorySample], budget_mb_per_min: float) -> Verdict | None:
    rate = memory_growth_mb_per_min(samples)
    if rate is None or rate <= budget_mb_per_min:
        return None
    grown = (samples[-1].rss_bytes - samples[0].rss_bytes) / 2**20
    if grown < MIN_GROWTH_MB:
        return None
    return Verdict("memory grows (MB/min)", rate, budget_mb_per_min)


# ---------------------------------------------------------------------------------------------
# /metrics


@dataclass
class Traffic:
    """Counters read from one scrape of ``/metrics``."""

    requests: float = 0.0
    errors: float = 0.0  # 5xx
    buckets: dict[float, float] = field(default_factory=dict)  # le -> cumulative count


class MetricsError(ValueError):
    """A ``/metrics`` endpoint answered something that is not Prometheus text."""


def parse_metrics(text: str) -> Traffic:
    """Request, 5xx and latency-histogram totals from Prometheus text (any names ending in
    ``requests_total`` with a ``code``/``status`` label, and ``request_duration_seconds``)."""
    traffic = Traffic()
    try:
        families = list(text_string_to_metric_families(text))
    except (ValueError, IndexError) as exc:
        raise MetricsError(f"not Prometheus text: {exc}") from None
    for family in families:
        for sample in family.samples:
            name, labels, value = sample.name, sample.labels, sample.value
            if name.endswith("requests_total"):
                traffic.requests += value
                code = str(labels.get("code") or labels.get("status") or "")
                if code.startswith("5"):
                    traffic.errors += value
            elif name.endswith("request_duration_seconds_bucket") and "le" in labels:
                bound = math.inf if labels["le"] == "+Inf" else float(labels["le"])
                traffic.buckets[bound] = traffic.buckets.get(bound, 0.0) + value
    return traffic


def error_rate(first: Traffic, last: Traffic) -> float | None:
    requests = last.requests - first.requests
    if requests <= 0:
        return None
    return (last.errors - first.errors) / requests


def p95_ms(first: Traffic, last: Traffic) -> float | None:
    """The 95th percentile latency between two scrapes, from the histogram's buckets."""
    bounds = sorted(last.buckets)
    counts = [last.buckets[b] - first.buckets.get(b, 0.0) for b in bounds]
    if not counts or counts[-1] <= 0:
        return None
    wanted = 0.95 * counts[-1]
    for bound, count in zip(bounds, counts, strict=True):
        if count >= wanted:
            return None if math.isinf(bound) else bound * 1000.0
    return None


def latency_count(first: Traffic, last: Traffic) -> float:
    """Requests the latency histogram counted between two scrapes (its largest bucket)."""
    if not last.buckets:
        return 0.0
    top = max(last.buckets)
    return last.buckets[top] - first.buckets.get(top, 0.0)


def traffic_figures(first: Traffic, last: Traffic) -> dict[str, float | None]:
    """What happened between two scrapes, for a record: requests, 5xx, their share, p95."""
    return {
        "requests": last.requests - first.requests,
        "errors": last.errors - first.errors,
        "error_rate": error_rate(first, last),
        "p95_ms": p95_ms(first, last),
    }


def judge_traffic(
    first: Traffic,
    last: Traffic,
    error_rate_limit: float | None,
    p95_limit_ms: float | None,
    min_requests: float = MIN_REQUESTS,
) -> Verdict | None:
    """Judge the requests between two scrapes against the gates (``None``: passes so far).

    Each figure is judged only once ``min_requests`` requests were counted for it, so one
    failure among the first two requests does not fail a release. The p95 is the upper bound of
    the histogram bucket it falls in; one beyond the largest finite bucket fails a gate below
    that bucket's bound.
    """
    if error_rate_limit is not None:
        requests = last.requests - first.requests
        rate = error_rate(first, last)
        if requests >= min_requests and rate is not None and rate > error_rate_limit:
            errors = last.errors - first.errors
            return Verdict(
                "error rate",
                rate,
                error_rate_limit,
                unit="%",
                detail=f"{errors:.0f} of {requests:.0f} requests answered 5xx",
            )
    if p95_limit_ms is not None:
        observed = latency_count(first, last)
        if observed < min_requests:
            return None
        value = p95_ms(first, last)
        detail = f"over {observed:.0f} requests"
        if value is None:
            # The 95th percentile is in the +Inf bucket: slower than every finite bound.
            finite = [b for b in last.buckets if not math.isinf(b)]
            if not finite or max(finite) * 1000.0 < p95_limit_ms:
                return None
            value = max(finite) * 1000.0
            detail += f"; it is beyond the histogram's largest bucket, {value:g} ms"
            return Verdict("p95 latency", value, p95_limit_ms, unit="ms", detail=detail)
        if value > p95_limit_ms:
            return Verdict("p95 latency", value, p95_limit_ms, unit="ms", detail=detail)
    return None
