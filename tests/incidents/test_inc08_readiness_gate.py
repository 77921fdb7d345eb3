"""INC08: a new version crashed or never became ready, and traffic was routed to it anyway.

A new version gets traffic only after its readiness check passes; otherwise the release is
rolled back automatically and the previous version keeps serving throughout.
"""

from __future__ import annotations

from pathlib import Path

import httpx

from airlock import api
from airlock.traffic import TrafficGenerator, phoenix_requests

from ..conftest import ProjectFactory, apply_overlay, running_from


def make_payment_wait_for_fraud_check(phoenix: Path) -> None:
    """A 3.0.0 whose payment is alive but never ready: it waits for a fraud-check service that
    this environment does not have."""
    payment = phoenix / "services" / "payment.py"
    anchor = "    service.add_readiness_check(database.readiness_problem)\n"
    source = payment.read_text()
    assert anchor in source
    payment.write_text(
        source.replace(
            anchor,
            anchor
            + '    service.add_readiness_check(lambda: "fraud-check not configured (FRAUD_URL)")\n',
        )
    )
    (phoenix / "services" / "version.py").write_text('VERSION = "3.0.0"\n')


def test_a_never_ready_payment_gets_no_traffic_and_is_rolled_back(phoenix: Path) -> None:
    """A new payment that never becomes ready gets no request; v2 serves throughout."""
    apply_overlay(phoenix, "v2")
    api.build(phoenix, "v2")
    good = api.deploy(phoenix, "production")
    assert good.outcome == "succeeded"
    seen_versions: set[str] = set()
    traffic = TrafficGenerator(workers=3)
    traffic.add(phoenix_requests(good.endpoints))
    with traffic:
        during = traffic.window("v3")
        make_payment_wait_for_fraud_check(phoenix)
        api.build(phoenix, "v3")
        bad = api.deploy(phoenix, "production")
        for _ in range(20):
            response = httpx.post(
                good.endpoints["payment"] + "/payments", json={"account": 2, "amount": 1}
            )
            seen_versions.add(response.headers["X-Phoenix-Version"])
    assert bad.outcome == "rolled_back"
    assert bad.failed_service == "payment"
    assert bad.reason is not None and "FRAUD_URL" in bad.reason
    assert during.failed == 0, during.samples
    assert during.served > 0
    assert seen_versions == {"2.0.0"}
    assert api.status(phoenix, "production")["version"] == "v2"
    assert running_from(phoenix, bad.release) == []


def test_a_crashing_version_is_rolled_back_and_stopped(make_project: ProjectFactory) -> None:
    """A new version that exits at start never serves and is not left running."""
    project = make_project({"api": {"config": {"VERSION": "api-1"}}})
    api.build(project, "v1")
    good = api.deploy(project, "staging")
    document = make_project.read(project)
    document["services"]["api"]["config"].update({"VERSION": "api-2", "MODE": "exit"})
    make_project.write(project, document)
    api.build(project, "v2")
    bad = api.deploy(project, "staging")
    assert bad.outcome == "rolled_back"
    assert bad.reason is not None and "exited" in bad.reason
    assert httpx.get(good.endpoints["api"] + "/").json() == {"version": "api-1"}
    assert running_from(project, bad.release) == []
    assert running_from(project, good.release) != []
