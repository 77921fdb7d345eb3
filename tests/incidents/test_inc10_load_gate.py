"""INC10: response times and error rates missed their targets under load, and the release went
out anyway.

The load gate puts the environment a release runs in under load (Locust, headless, in a process
of its own) and compares the median, p95 and p99 latency and the error rate with
``gates.load``. A version slower than the target is NO-GO, with the measured figure and the
target in the finding; the same service without the slowdown passes the same gate.
"""

from __future__ import annotations

import re

from airlock import api
from airlock.checks.outcome import Status
from airlock.gonogo import run_load_gate
from airlock.state import open_state

from ..conftest import ProjectFactory

GATES = {
    "bake": "0.5s",
    "ready_timeout": "5s",
    "load": {"users": 5, "spawn_rate": 20, "duration": "3s", "p95_ms": 100, "error_rate": 0.01},
}


def test_a_slow_version_is_no_go_and_the_fast_one_passes(make_project: ProjectFactory) -> None:
    """GET / takes 250 ms against a p95 target of 100 ms: NO-GO naming both figures. The same
    service without the delay passes; each verdict is recorded with its release."""
    project = make_project(
        {"api": {"endpoints": ["GET /"], "config": {"VERSION": "api-1", "SLOW_MS": "250"}}},
        gates=GATES,
    )
    api.build(project, "v1")
    slow = api.deploy(project, "staging")
    assert slow.outcome == "succeeded", slow.reason

    verdict = run_load_gate(project, "staging")
    assert verdict.status is Status.FAIL and not verdict.passed
    assert [f.code for f in verdict.findings] == ["load.p95"]
    assert verdict.evidence["p95_ms"] >= 250
    assert verdict.evidence["thresholds"]["p95_ms"] == 100
    match = re.fullmatch(r"p95 (\d+) ms above the target of 100 ms", verdict.findings[0].message)
    assert match and int(match.group(1)) >= 250, verdict.findings[0].message
    assert verdict.summary == verdict.findings[0].message
    assert verdict.evidence["error_rate"] == 0

    document = make_project.read(project)
    document["services"]["api"]["config"] = {"VERSION": "api-2"}
    make_project.write(project, document)
    api.build(project, "v2")
    fast = api.deploy(project, "staging")
    assert fast.outcome == "succeeded", fast.reason

    verdict = run_load_gate(project, "staging")
    assert verdict.status is Status.PASS, verdict.summary
    assert verdict.evidence["p95_ms"] < 100
    assert verdict.evidence["requests"] > 0

    with open_state(project) as store:
        assert [r.passed for r in store.gate_runs(slow.release, gate="load")] == [False]
        assert [r.passed for r in store.gate_runs(fast.release, gate="load")] == [True]
