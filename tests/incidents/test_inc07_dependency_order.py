"""INC07: payment was deployed before account, which it depends on.

Services start in dependency order, each only after everything it depends on is ready; a
dependency cycle is found by `airlock check` and stops a deploy before anything starts.
"""

from __future__ import annotations

from pathlib import Path

import httpx

from airlock import api
from airlock.state import open_state

from ..conftest import ProjectFactory, airlock, processes_under


def journal_times(project: Path, deployment_id: str) -> tuple[dict[str, int], dict[str, int]]:
    """Sequence numbers of each service's start action and of its ready event."""
    starts: dict[str, int] = {}
    ready: dict[str, int] = {}
    with open_state(project) as store:
        for record in store.records(deployment_id):
            body = record["body"]
            if record["type"] == "action" and body["action"] == "StartNew":
                starts[body["service"]] = record["seq"]
            if record["type"] == "event" and body.get("type") == "ready":
                ready[body["service"]] = record["seq"]
    return starts, ready


def test_phoenix_starts_each_service_after_its_dependencies_are_ready(phoenix: Path) -> None:
    """payment and transaction start only after account and audit are ready, and so on."""
    api.build(phoenix, "v1")
    result = api.deploy(phoenix, "staging")
    assert result.outcome == "succeeded"
    starts, ready = journal_times(phoenix, result.deployment_id)
    project = api.project_at(phoenix)
    for name, service in project.services.items():
        for dependency in service.depends_on:
            assert ready[dependency] < starts[name], f"{name} started before {dependency} ready"
    # and payment really works, because account was there first
    response = httpx.post(
        result.endpoints["payment"] + "/payments", json={"account": 1, "amount": 5}, timeout=5
    )
    assert response.status_code == 201


def test_a_cycle_is_caught_by_check_and_deploys_nothing(make_project: ProjectFactory) -> None:
    """A cycle is an error at `airlock check`; sealing and deploying it are refused."""
    project = make_project(
        {"account": {"depends_on": ["payment"]}, "payment": {"depends_on": ["account"]}}
    )
    check = airlock("check", cwd=project)
    assert check.returncode == 1
    assert "deps.cycle" in check.stdout and "account → payment → account" in check.stdout
    build = airlock("release", "build", cwd=project)
    assert build.returncode == 1 and "deps.cycle" in build.stderr  # like check: it said no
    assert api.releases(project) == []
    assert processes_under(project) == []
