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
    """Why a new instance fails its bake (``None`` from :func:`judge` when it passes)."""

    figure: str
    value: float
    threshold: float

    def describe(self, service: str) -> str:
        return f"{service}: {self.figure} {self.value:.1f} above the limit of {self.threshold:g}"


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
