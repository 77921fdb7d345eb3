"""Bake judging of each new instance's /metrics: error rate (5xx share) and p95 latency.

The pure helpers of :mod:`airlock.checks.bake` first, then real deploys of the webapp fixture:
a version failing or slow beyond the gates is rolled back while traffic flows through the stable
endpoint, metrics that cannot be read fail the bake, and healthy or idle versions pass.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from airlock import api
from airlock.checks.bake import (
    MIN_REQUESTS,
    Traffic,
    Verdict,
    judge_traffic,
    latency_count,
    parse_metrics,
    traffic_figures,
)
from airlock.runner import DeployResult, ProgressEvent
from airlock.runtimes.local import LocalRuntime
from airlock.state import open_state

from .conftest import ProjectFactory, running_from

pytestmark = pytest.mark.timeout(60)

# -- pure helpers ------------------------------------------------------------------------------

BUCKETS = (0.05, 0.1, 0.25, 0.5)


def traffic(ok: int, bad: int = 0, *, seconds: float = 0.01) -> Traffic:
    """A scrape after ``ok`` 200s and ``bad`` 500s, all of them taking ``seconds``."""
    total = ok + bad
    buckets = {b: float(total if seconds <= b else 0) for b in BUCKETS}
    buckets[float("inf")] = float(total)
    return Traffic(requests=float(total), errors=float(bad), buckets=buckets)


def test_an_error_rate_above_the_gate_is_a_verdict_in_percent() -> None:
    """12 failures in 100 requests against a 1% gate: named with the figure and the limit."""
    verdict = judge_traffic(traffic(10), traffic(98, 12), 0.01, None)
    assert verdict is not None
    assert verdict.describe("payment") == (
        "payment: error rate 12.0% above the limit of 1% (12 of 100 requests answered 5xx)"
    )


def test_too_few_requests_are_not_judged() -> None:
    """One failure among two requests is no evidence; the same share over enough requests is."""
    assert judge_traffic(traffic(0), traffic(1, 1), 0.05, None) is None
    assert judge_traffic(traffic(0), traffic(MIN_REQUESTS - 5, 5), 0.05, None) is not None
    assert judge_traffic(traffic(0), traffic(10, 10), 0.05, None, min_requests=21) is None


def test_an_error_rate_at_or_below_the_gate_passes() -> None:
    """Exactly at the limit is within it; so is a clean run."""
    assert judge_traffic(traffic(0), traffic(95, 5), 0.05, None) is None
    assert judge_traffic(traffic(0), traffic(500), 0.0, None) is None
    assert judge_traffic(traffic(0), traffic(499, 1), 0.0, None) is not None


def test_the_figures_are_counted_since_the_first_scrape() -> None:
    """Failures before the baseline do not count against the new window."""
    first = traffic(0, 50)
    last = Traffic(requests=150.0, errors=50.0, buckets=traffic(150).buckets)
    assert judge_traffic(first, last, 0.05, None) is None
    figures = traffic_figures(first, last)
    assert figures["requests"] == 100 and figures["errors"] == 0
    assert figures["error_rate"] == 0


def test_a_p95_above_the_gate_is_a_verdict_in_ms() -> None:
    """Requests of 300 ms fall in the 0.5 s bucket: p95 500 ms against 100 ms fails."""
    verdict = judge_traffic(traffic(0), traffic(40, seconds=0.3), None, 100)
    assert verdict is not None
    assert verdict.describe("api") == (
        "api: p95 latency 500 ms above the limit of 100 ms (over 40 requests)"
    )
    assert judge_traffic(traffic(0), traffic(40, seconds=0.03), None, 100) is None
    assert judge_traffic(traffic(0), traffic(5, seconds=0.3), None, 100) is None


def test_a_p95_beyond_the_largest_bucket_fails_a_lower_gate() -> None:
    """Slower than every finite bucket: certainly above a gate below the largest bound."""
    slow = traffic(40, seconds=9.0)
    verdict = judge_traffic(traffic(0), slow, None, 100)
    assert verdict is not None and verdict.value == 500
    assert "beyond the histogram's largest bucket" in verdict.describe("api")
    assert judge_traffic(traffic(0), slow, None, 1000) is None  # cannot tell: not judged


def test_the_latency_count_is_the_histograms_largest_bucket() -> None:
    assert latency_count(traffic(3), traffic(10, 2)) == 9
    assert latency_count(Traffic(), Traffic()) == 0


def test_the_memory_verdict_reads_as_before() -> None:
    """The unit-less format of the memory verdict is unchanged."""
    assert Verdict("memory grows (MB/min)", 100.0, 50).describe("n") == (
        "n: memory grows (MB/min) 100.0 above the limit of 50"
    )


def test_the_fixtures_metrics_parse() -> None:
    """The webapp's metrics text is read as requests, 5xx and buckets."""
    text = (
        "# TYPE http_requests_total counter\n"
        'http_requests_total{code="200"} 7\n'
        'http_requests_total{code="500"} 3\n'
        "# TYPE http_request_duration_seconds histogram\n"
        'http_request_duration_seconds_bucket{le="0.1"} 10\n'
        'http_request_duration_seconds_bucket{le="+Inf"} 10\n'
        "http_request_duration_seconds_count 10\n"
        "http_request_duration_seconds_sum 0.2\n"
    )
    read = parse_metrics(text)
    assert (read.requests, read.errors) == (10, 3)
    assert read.buckets == {0.1: 10, float("inf"): 10}


def test_fetch_of_an_unknown_instance_answers_none(tmp_path: Path) -> None:
    """No agent, no instance: a result saying so, not an exception."""
    runtime = LocalRuntime(tmp_path / "env", "staging", start_agent=False)
    result = asyncio.run(runtime.fetch("api-nothing", "metrics"))
    assert result.status is None and not result.ok
    assert "not running" in result.detail


# -- real deploys ------------------------------------------------------------------------------


class Load:
    """Threads sending GET / to a stable endpoint, counting answers by status and version."""

    def __init__(self, url: str, threads: int) -> None:
        self.url = url
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.answers: Counter[tuple[int, str]] = Counter()
        self.threads = [threading.Thread(target=self._send, daemon=True) for _ in range(threads)]

    def _send(self) -> None:
        with httpx.Client(timeout=3.0, trust_env=False) as client:
            while not self.stop.is_set():
                try:
                    response = client.get(self.url + "/")
                except httpx.HTTPError:
                    time.sleep(0.01)
                    continue
                version = str(response.json().get("version", "")) if response.is_success else ""
                with self.lock:
                    self.answers[(response.status_code, version)] += 1
                time.sleep(0.005)

    def count(self, status: int, version: str = "") -> int:
        with self.lock:
            return self.answers[(status, version)]


@contextmanager
def sending(url: str, threads: int = 2) -> Iterator[Load]:
    load = Load(url, threads)
    for thread in load.threads:
        thread.start()
    try:
        yield load
    finally:
        load.stop.set()
        for thread in load.threads:
            thread.join(timeout=5)


def two_releases(
    make_project: ProjectFactory,
    v2_config: dict[str, str],
    gates: dict[str, Any],
    *,
    metrics: str = "/metrics",
) -> tuple[Path, DeployResult]:
    """Deploy a good v1 (short bake, no traffic gates), then build v2 with ``gates``."""
    project = make_project(
        {"api": {"config": {"VERSION": "api-1"}, "metrics": metrics}},
        gates={"bake": "0.5s", "ready_timeout": "5s"},
    )
    api.build(project, "v1")
    good = api.deploy(project, "staging")
    assert good.outcome == "succeeded", good.reason
    document = make_project.read(project)
    document["services"]["api"]["config"].update(v2_config)
    document["gates"] = gates
    make_project.write(project, document)
    api.build(project, "v2")
    return project, good


def bake_record(project: Path, deployment_id: str) -> dict[str, Any]:
    with open_state(project) as store:
        records = store.records(deployment_id, "bake")
    assert len(records) == 1, records
    body = records[0]["body"]
    assert isinstance(body, dict)
    return body


def assert_rolled_back_to_v1(project: Path, good: DeployResult, bad: DeployResult) -> None:
    assert bad.outcome == "rolled_back"
    assert bad.failed_service == "api"
    assert httpx.get(good.endpoints["api"] + "/", trust_env=False).json() == {"version": "api-1"}
    assert running_from(project, bad.release) == []


def test_an_error_rate_above_the_gate_rolls_back(make_project: ProjectFactory) -> None:
    """v2 answers 30% of its requests with 500 against a 5% gate: rolled back, named."""
    project, good = two_releases(
        make_project,
        {"VERSION": "api-2", "ERROR_RATE": "0.3"},
        {"bake": "4s", "ready_timeout": "5s", "error_rate": 0.05},
    )
    with sending(good.endpoints["api"]) as load:
        bad = api.deploy(project, "staging")
    assert load.count(500) > 0  # the traffic did reach the new version
    assert_rolled_back_to_v1(project, good, bad)
    assert bad.reason is not None
    match = re.fullmatch(
        r"api: error rate ([\d.]+)% above the limit of 5% \((\d+) of (\d+) requests answered 5xx\)",
        bad.reason,
    )
    assert match, bad.reason
    assert 20 <= float(match.group(1)) <= 40
    assert int(match.group(3)) >= MIN_REQUESTS
    assert bad.detect_seconds is not None  # judged during the bake, not at its end
    record = bake_record(project, bad.deployment_id)
    figures = record["services"]["api"]
    assert figures["verdict"] == "failed" and figures["reason"] == bad.reason
    assert figures["error_rate"] > 0.05 and figures["requests"] >= MIN_REQUESTS
    assert figures["limits"]["error_rate"] == 0.05
    assert record["limits"]["min_requests"] == MIN_REQUESTS
    assert bad.bake["api"]["verdict"] == "failed"


def test_a_p95_above_the_gate_rolls_back(make_project: ProjectFactory) -> None:
    """v2 takes 300 ms per request against a 100 ms p95 gate: rolled back, in ms."""
    project, good = two_releases(
        make_project,
        {"VERSION": "api-2", "SLOW_MS": "300"},
        {"bake": "4s", "ready_timeout": "5s", "p95_ms": 100},
    )
    with sending(good.endpoints["api"], threads=10):
        bad = api.deploy(project, "staging")
    assert_rolled_back_to_v1(project, good, bad)
    assert bad.reason is not None
    match = re.match(r"api: p95 latency ([\d.]+) ms above the limit of 100 ms", bad.reason)
    assert match, bad.reason
    assert float(match.group(1)) >= 300
    figures = bake_record(project, bad.deployment_id)["services"]["api"]
    assert figures["p95_ms"] >= 300 and figures["limits"]["p95_ms"] == 100


def test_metrics_that_are_not_prometheus_text_roll_back(make_project: ProjectFactory) -> None:
    """A /metrics answering HTML cannot be judged, so the release is not let through."""
    project, good = two_releases(
        make_project,
        {"VERSION": "api-2", "MODE": "garbage-metrics"},
        {"bake": "4s", "ready_timeout": "5s", "error_rate": 0.05},
    )
    bad = api.deploy(project, "staging")
    assert_rolled_back_to_v1(project, good, bad)
    assert bad.reason is not None
    assert bad.reason.startswith(
        "api: /metrics answered something that is not Prometheus text (invalid metric name"
    ), bad.reason
    assert bad.reason.endswith("the bake cannot judge it, so the release is not let through")
    assert bad.detect_seconds is not None  # judged during the bake, not at its end


def test_metrics_answering_an_error_status_roll_back(make_project: ProjectFactory) -> None:
    """A metrics path answering 404 fails the bake at once, with the status."""
    project, good = two_releases(
        make_project,
        {"VERSION": "api-2"},
        {"bake": "4s", "ready_timeout": "5s", "p95_ms": 100},
        metrics="/stats",
    )
    bad = api.deploy(project, "staging")
    assert_rolled_back_to_v1(project, good, bad)
    assert bad.reason is not None
    assert bad.reason.startswith("api: /stats answered 404 instead of metrics"), bad.reason
    assert "not let through" in bad.reason


def test_metrics_that_never_answer_roll_back_after_three_misses(
    make_project: ProjectFactory,
) -> None:
    """A /metrics that hangs is one miss per scrape (2 s each); the third in a row fails the
    bake, which cannot judge the service. Health still answers, so nothing else fails it."""
    project, good = two_releases(
        make_project,
        {"VERSION": "api-2", "MODE": "hung-metrics"},
        {"bake": "20s", "ready_timeout": "5s", "error_rate": 0.05},
    )
    bad = api.deploy(project, "staging")
    assert_rolled_back_to_v1(project, good, bad)
    assert bad.reason is not None
    assert bad.reason.startswith("api: /metrics did not answer during bake (GET /metrics → no"), (
        bad.reason
    )
    assert bad.detect_seconds is not None  # judged during the bake, not at its end


def test_a_healthy_version_with_traffic_passes(make_project: ProjectFactory) -> None:
    """Under the same gates a version without errors or delay goes through, figures recorded."""
    project, good = two_releases(
        make_project,
        {"VERSION": "api-2"},
        {"bake": "3s", "ready_timeout": "5s", "error_rate": 0.05, "p95_ms": 100},
    )
    events: list[ProgressEvent] = []
    with sending(good.endpoints["api"]) as load:
        result = api.deploy(project, "staging", progress=events.append)
    assert result.outcome == "succeeded", result.reason
    assert load.count(200, "api-2") > 0
    assert httpx.get(result.endpoints["api"] + "/", trust_env=False).json() == {"version": "api-2"}
    figures = bake_record(project, result.deployment_id)["services"]["api"]
    assert figures["verdict"] == "passed"
    assert figures["requests"] >= MIN_REQUESTS and figures["errors"] == 0
    assert figures["error_rate"] == 0 and figures["p95_ms"] <= 100
    assert "not_judged" not in figures
    assert result.bake == {"api": figures}
    assert not [e for e in events if e.kind == "bake"]


def test_an_idle_service_passes_and_says_it_was_not_judged(make_project: ProjectFactory) -> None:
    """No request during the bake: nothing to judge, so it passes, and the progress says so.
    A service without metrics is not scraped at all."""
    project = make_project(
        {
            "api": {"config": {"VERSION": "api-1"}, "metrics": "/metrics"},
            "worker": {"config": {"VERSION": "w-1"}},
        },
        gates={"bake": "2s", "ready_timeout": "5s", "error_rate": 0.05, "p95_ms": 100},
    )
    api.build(project, "v1")
    events: list[ProgressEvent] = []
    result = api.deploy(project, "staging", progress=events.append)
    assert result.outcome == "succeeded", result.reason
    bake = [e for e in events if e.kind == "bake"]
    assert [(e.service, e.message) for e in bake] == [
        (
            "api",
            "api: error rate and p95 latency not judged: "
            "no requests reached the new version during the bake",
        )
    ]
    record = bake_record(project, result.deployment_id)
    assert record["outcome"] == "succeeded"
    assert record["services"]["api"]["requests"] == 0
    assert record["services"]["api"]["scrapes"] >= 2
    assert record["services"]["worker"]["scrapes"] == 0
    assert record["services"]["worker"]["requests"] is None
    assert record["services"]["worker"]["verdict"] == "passed"
