"""INC17: firewall ports were discovered on release night.

Two real SSH hosts (network namespaces on a bridge): `account` on one, `payment` — which needs
`account` — on the other. An nftables rule on account's host drops TCP from payment's host to
account's port, as a forgotten firewall opening would. `airlock preflight` fails from payment's
own host, naming both hosts, the port and the direction; the go/no-go is NO-GO and a deploy is
refused before anything starts; once the rule is gone, preflight passes and the deploy goes.
"""

from __future__ import annotations

import os
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from airlock import api
from airlock.errors import AirlockError
from airlock.testbed import Fleet, FleetHost

from ..conftest import WEBAPP

ENV = "production"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def two_hosts(fleet: Fleet) -> Iterator[list[FleetHost]]:
    if shutil.which("nft") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("nft (Debian package nftables) is required in CI", pytrace=False)
        pytest.skip("nft (Debian package nftables) is not installed")
    hosts = fleet.hosts(2)
    try:
        yield hosts
    finally:
        for host in hosts:
            host.clear_firewall()


def write_project(root: Path, fleet: Fleet, hosts: list[FleetHost], port: int) -> None:
    (root / "app").mkdir(parents=True)
    shutil.copyfile(WEBAPP, root / "app" / "webapp.py")
    known_hosts = fleet.write_known_hosts(root.parent / "known_hosts", hosts)
    account, payment = hosts
    document: dict[str, Any] = {
        "project": "bank",
        "services": {
            "account": {
                "run": "python app/webapp.py",
                "source": ["app/webapp.py"],
                "port": port,
                "config": {"VERSION": "account-1"},
            },
            "payment": {
                "run": "python app/webapp.py",
                "source": ["app/webapp.py"],
                "depends_on": ["account"],
                "config": {"VERSION": "payment-1", "NEEDS": "${services.account.url}"},
            },
        },
        "environments": {
            ENV: {
                "approvals": 1,
                "runtime": {
                    "type": "ssh",
                    "hosts": {h.name: {"address": h.address} for h in hosts},
                    "key": str(fleet.client_key),
                    "known_hosts": str(known_hosts),
                    "placement": {"account": [account.name], "payment": [payment.name]},
                },
            }
        },
        "gates": {"bake": "1s", "ready_timeout": "15s"},
    }
    (root / "airlock.yaml").write_text(yaml.safe_dump(document, sort_keys=False))


def test_a_dropped_port_between_two_hosts_is_found_before_release_night(
    fleet: Fleet, two_hosts: list[FleetHost], tmp_path: Path
) -> None:
    account, payment = two_hosts
    port = free_port()
    root = tmp_path / "bank"
    write_project(root, fleet, two_hosts, port)
    api.build(root, "v1")
    account.drop_inbound(payment.address, port)
    try:
        blocked = api.preflight(root, ENV)
        assert blocked.status.value == "fail", blocked.to_dict()
        (finding,) = [f for f in blocked.findings if f.code == "preflight.dependency-unreachable"]
        assert finding.evidence["host"] == payment.name  # tried from payment's own host
        assert finding.evidence["target"] == f"{account.name}:{port}"
        message = finding.message
        assert payment.name in message and account.name in message and str(port) in message
        assert "outbound from payment's host, inbound to account's" in message
        assert "timeout" in message  # dropped, not refused: the host did not answer at all

        report = api.gonogo(root, ENV, "v1")
        assert report.verdict == "NO-GO"
        assert "preflight" in report.failing
        with pytest.raises(AirlockError) as refused:
            api.deploy(root, ENV)
        assert "GO" in refused.value.message or "approv" in refused.value.message
        assert api.status(root, ENV)["state"] == "none"  # nothing started anywhere
    finally:
        account.clear_firewall()

    opened = api.preflight(root, ENV)
    assert opened.status.value == "pass", opened.to_dict()
    paths = [c for c in opened.evidence["checks"] if c["check"] == "connect"]
    assert paths == [
        {
            "host": payment.name,
            "check": "connect",
            "service": "payment",
            "target": f"{account.name}:{port}",
            "ok": True,
            "result": f"TCP {account.address}:{port}: connected",
        }
    ]
    report = api.gonogo(root, ENV, "v1")
    assert report.verdict == "GO", report.to_markdown()
    api.approve(root, ENV, "v1", approver="alice")
    try:
        assert api.deploy(root, ENV).outcome == "succeeded"
    finally:
        api.stop_env(root, ENV)
