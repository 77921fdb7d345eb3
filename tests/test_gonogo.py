"""The go/no-go report, approvals, and deploys that need them."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx
import pytest

from airlock import api
from airlock.errors import GateFailed, UsageError
from airlock.state import open_state

from .conftest import ProjectFactory, airlock

ENVIRONMENTS: dict[str, Any] = {
    "staging": {"secrets": {"prefix": "STAGING_"}},
    "production": {"secrets": {"prefix": "PRODUCTION_"}, "approvals": 2},
}


def _project(make_project: ProjectFactory, **gates: Any) -> Path:
    return make_project(
        {"web": {"config": {"VERSION": "w-1"}}},
        environments=ENVIRONMENTS,
        gates={"bake": "0.5s", "ready_timeout": "5s", **gates},
    )


def test_a_release_with_every_gate_passing_is_go_and_the_report_is_stored(
    make_project: ProjectFactory,
) -> None:
    project = _project(make_project, logs={"patterns": {"ssn": r"\b\d{3}-\d{2}-\d{4}\b"}})
    bundle, _ = api.build(project, "v1")
    staging = api.deploy(project, "staging")
    httpx.get(staging.endpoints["web"] + "/")

    report = api.gonogo(project, "production")

    assert report.verdict == "GO", report.to_markdown()
    status = {o.gate: o.status.value for o in report.gates}
    assert status == {
        "static": "pass",
        "migrations": "skipped",
        "preflight": "pass",
        "load": "skipped",
        "posture": "skipped",
        "logs": "pass",
        "ci": "skipped",
    }
    assert report.approvals_required == 2
    # stored with the release: the state store and three files beside the sealed bundle
    with open_state(project) as store:
        runs = store.gate_runs(bundle.id, gate="gonogo", env="production")
    assert [r.id for r in runs] == [report.id] and runs[0].passed
    files = {kind: Path(path) for kind, path in report.files.items()}
    assert all(path.is_file() for path in files.values())
    assert files["json"].parent == bundle.path / "reports"
    assert json.loads(files["json"].read_text())["verdict"] == "GO"
    assert "**GO**" in files["markdown"].read_text()
    assert _verdict_of(files["html"].read_text()) == "GO"
    api.release(project, bundle.id).verify()  # the report does not touch the sealed files


def test_production_refuses_a_deploy_without_a_go_report_and_approvals(
    make_project: ProjectFactory,
) -> None:
    project = _project(make_project)
    bundle, _ = api.build(project, "v1")
    api.deploy(project, "staging")

    with pytest.raises(GateFailed, match="no go/no-go report") as refused:
        api.deploy(project, "production")
    assert "airlock approve production" in str(refused.value.hint)
    assert api.status(project, "production")["release"] is None

    with pytest.raises(GateFailed, match="nothing to approve"):
        api.approve(project, "production", bundle.id, approver="alice")
    assert api.gonogo(project, "production").go
    first = api.approve(project, "production", bundle.id, approver="alice", note="looks good")
    assert (first["approvals"], first["required"]) == (1, 2)
    with pytest.raises(UsageError, match="already approved"):
        api.approve(project, "production", bundle.id, approver="alice")
    with pytest.raises(GateFailed, match="1 of 2 approval"):
        api.deploy(project, "production")

    assert api.approve(project, "production", bundle.id, approver="bob")["approvals"] == 2
    result = api.deploy(project, "production")

    assert result.outcome == "succeeded"
    with open_state(project) as store:
        records = store.records(result.deployment_id, "approval")
    assert records and records[0]["body"]["approvers"] == ["alice", "bob"]
    shown = json.loads(
        airlock("release", "show", bundle.id, "--format", "json", cwd=project).stdout
    )
    assert [(g["gate"], g["env"], g["passed"]) for g in shown["record"]["gates"]] == [
        ("gonogo", "production", True)
    ]
    assert [a["approver"] for a in shown["record"]["approvals"]["production"]] == ["alice", "bob"]


def test_a_no_go_cannot_be_approved_but_an_override_deploys_and_is_recorded(
    make_project: ProjectFactory,
) -> None:
    # gates.load is configured but the release was never load-tested: the gate cannot decide
    project = _project(make_project, load={"duration": "2s", "p95_ms": 500})
    bundle, _ = api.build(project, "v1")

    report = api.gonogo(project, "production")

    assert report.verdict == "NO-GO"
    load = next(o for o in report.gates if o.gate == "load")
    assert load.status.value == "fail" and load.findings[0].code == "gonogo.not-run"
    with pytest.raises(GateFailed, match="NO-GO"):
        api.approve(project, "production", bundle.id, approver="alice")

    cli = airlock("deploy", "production", cwd=project)
    assert cli.returncode == 1 and "NO-GO" in cli.stderr and "Traceback" not in cli.stderr
    with pytest.raises(UsageError, match="needs a reason"):
        api.deploy(project, "production", override_reason="  ")

    result = api.deploy(project, "production", override_reason="hotfix for INC-42, CTO on call")

    assert result.outcome == "succeeded"
    with open_state(project) as store:
        (record,) = store.records(result.deployment_id, "approval")
    assert record["body"]["override_reason"] == "hotfix for INC-42, CTO on call"
    assert any("NO-GO" in item for item in record["body"]["missing"])


def test_an_unreachable_posture_target_fails_the_gate_instead_of_crashing(
    make_project: ProjectFactory,
) -> None:
    environments = {
        **ENVIRONMENTS,
        "production": {**ENVIRONMENTS["production"], "posture": {"url": "https://127.0.0.1:9"}},
    }
    project = make_project(
        {"web": {"config": {"VERSION": "w-1"}}},
        environments=environments,
        gates={"bake": "0.5s", "ready_timeout": "5s"},
    )
    api.build(project, "v1")

    result = airlock("gonogo", "production", cwd=project)

    assert result.returncode == 1
    assert "NO-GO" in result.stdout and "posture" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr


def test_the_gonogo_report_renders_as_markdown_and_html_from_the_cli(
    make_project: ProjectFactory,
) -> None:
    project = _project(make_project)
    api.build(project, "v1")

    markdown = airlock("gonogo", "staging", "--format", "markdown", cwd=project)
    page = airlock("gonogo", "staging", "--format", "html", cwd=project)

    assert markdown.returncode == 0, markdown.stderr
    assert markdown.stdout.startswith("# Go/no-go: v1 to staging — **GO**")
    assert "| static | ✅ pass |" in markdown.stdout
    assert page.returncode == 0 and _verdict_of(page.stdout) == "GO"


class _Verdict(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.inside = False
        self.text = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.inside = ("id", "verdict") in attrs

    def handle_data(self, data: str) -> None:
        if self.inside:
            self.text += data

    def handle_endtag(self, tag: str) -> None:
        self.inside = False


def _verdict_of(page: str) -> str:
    parser = _Verdict()
    parser.feed(page)
    return parser.text
