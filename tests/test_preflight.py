"""`airlock preflight` on the local runtime: real sockets, real files, the real CLI.

The fleet's version (each check from the hosts themselves, a dropped port between two hosts) is
tests/incidents/test_inc17_firewall.py.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from airlock import api
from airlock.bundle import find_release

from .conftest import ProjectFactory, airlock


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def bank(make_project: ProjectFactory) -> Iterator[tuple[Path, int]]:
    port = free_port()
    project = make_project(
        {
            "account": {"port": port, "config": {"VERSION": "a1"}},
            "payment": {
                "depends_on": ["account"],
                "config": {"VERSION": "p1", "NEEDS": "${services.account.url}"},
            },
        }
    )
    api.build(project, "v1")
    yield project, port


def plant_discovery(project: Path, record: dict[str, object]) -> None:
    """What `airlock discover` keeps with the release (docs/discover.md)."""
    folder = find_release(project, "v1").path / "reports" / "discover"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{record['service']}.json").write_text(json.dumps(record))


def test_a_port_taken_on_the_host_fails_and_a_free_path_passes(bank: tuple[Path, int]) -> None:
    project, port = bank
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        taken = api.preflight(project, "staging")
    assert taken.status.value == "fail"
    (finding,) = [f for f in taken.findings if f.code == "preflight.port-in-use"]
    assert f"account listens on port {port}" in finding.message and "in use" in finding.message
    assert finding.evidence["check"] == "port_free"

    free = api.preflight(project, "staging")
    assert free.status.value == "pass", free.to_dict()
    connects = [c for c in free.evidence["checks"] if c["check"] == "connect"]
    assert [c["target"] for c in connects] == [f"127.0.0.1:{port}"]
    assert connects[0]["ok"] and connects[0]["service"] == "payment"
    with socket.socket() as again:  # the port held for the path test is let go
        again.bind(("127.0.0.1", port))


def test_what_discovery_recorded_is_checked_by_name_and_never_by_value(
    bank: tuple[Path, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    project, _ = bank
    plant_discovery(
        project,
        {
            "service": "payment",
            "release": "v1",
            "listen": [],
            "connect": [
                {
                    "host": "ledger.invalid",
                    "address": None,
                    "port": 443,
                    "protocol": "tcp",
                    "seen": 1,
                    "failed": False,
                },
            ],
            "files": [{"path": "/nonexistent/airlock-preflight/payment.ini", "mode": "r"}],
            "env": [
                {"name": "LEDGER_TOKEN", "how": "runtime", "where": "app/webapp.py:3"},
                {"name": "VERSION", "how": "runtime", "where": "app/webapp.py:4"},
                {"name": "PGHOSTADDR", "how": "runtime"},
            ],
            "complete": True,
        },
    )
    plant_discovery(project, {"service": "account", "connect": [], "env": [], "files": []})
    outcome = api.preflight(project, "staging")
    assert outcome.status.value == "fail"
    codes = {f.code: f for f in outcome.findings}
    assert "ledger.invalid" in codes["preflight.dns"].message
    assert "/nonexistent/airlock-preflight/payment.ini" in codes["preflight.file-missing"].message
    missing = codes["preflight.env-missing"]
    assert "LEDGER_TOKEN" in missing.message and missing.severity.value == "warning"
    assert not any("VERSION" in f.message for f in outcome.findings)  # set by its config
    assert not any("PGHOSTADDR" in f.message for f in outcome.findings)  # a library probe
    assert "preflight.no-discovery" not in codes


def test_the_cli_says_what_failed_where_and_exits_1(bank: tuple[Path, int]) -> None:
    project, port = bank
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        text = airlock("preflight", "staging", cwd=project, env={"COLUMNS": "80"})
        data = airlock("preflight", "staging", "--format", "json", cwd=project)
    assert text.returncode == 1, text.stderr
    assert "preflight.port-in-use" in text.stdout and "Traceback" not in text.stderr
    assert all(len(line) <= 80 for line in text.stdout.splitlines()), text.stdout
    assert data.returncode == 1
    assert json.loads(data.stdout)["status"] == "fail"
    unknown = airlock("preflight", "nowhere", cwd=project)
    assert unknown.returncode == 2 and "nowhere" in unknown.stderr


def test_discovery_then_preflight_on_the_machine_it_ran_on_passes(
    bank: tuple[Path, int],
) -> None:
    """What `airlock discover --all` records is what preflight checks; where discovery ran, the
    release's needs are met, so nothing fails and no service lacks a record."""
    project, port = bank
    api.discover(project, env="staging", seconds=1.0, every=True)
    outcome = api.preflight(project, "staging")
    assert outcome.status.value == "pass", outcome.to_dict()
    assert not [f for f in outcome.findings if f.code == "preflight.no-discovery"]
    connects = [c for c in outcome.evidence["checks"] if c["check"] == "connect"]
    assert [c["target"] for c in connects] == [f"127.0.0.1:{port}"]


def test_a_secret_missing_from_the_provider_is_named_not_shown(
    make_project: ProjectFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = make_project({"api": {"config": {"VERSION": "a1", "TOKEN": "${secret:API_TOKEN}"}}})
    api.build(project, "v1")
    monkeypatch.delenv("STAGING_API_TOKEN", raising=False)
    missing = api.preflight(project, "staging")
    (finding,) = [f for f in missing.findings if f.code == "preflight.secret-missing"]
    assert "API_TOKEN" in finding.message and "api.TOKEN" in finding.message
    monkeypatch.setenv("STAGING_API_TOKEN", "s3cr3t-value-never-shown")
    present = api.preflight(project, "staging")
    assert not [f for f in present.findings if f.code == "preflight.secret-missing"]
    assert "s3cr3t-value-never-shown" not in json.dumps(present.to_dict())
