"""Releases to a fleet: the same sealed release on three real SSH hosts, through the real runner.

Three hosts of the testbed (OpenSSH servers in network namespaces of their own, whose files the
operator cannot see), services placed on two or three of them. Traffic goes to every host's
stable port of every service throughout. v1 deploys; v2 upgrades with no failed request; v3
leaks memory on one host only, is caught in the bake and rolled back on every host with no
failed request; v4's rollout loses a host's link midway and ends with every reachable host on
the previous release and an error naming the host. No planted secret is ever on a host's disk.
"""

from __future__ import annotations

import contextlib
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from airlock import api
from airlock.runner import ProgressEvent
from airlock.testbed import Fleet, FleetHost

from .conftest import WEBAPP

SECRET = "fl33t-pl4nted-secret-4c1e9a"
ENV = "production"


@dataclass
class FleetProject:
    root: Path
    hosts: list[FleetHost]
    document: dict[str, Any]
    placement: dict[str, list[str]]

    def write(self) -> None:
        (self.root / "airlock.yaml").write_text(yaml.safe_dump(self.document, sort_keys=False))

    def set_config(self, service: str, **values: str) -> None:
        self.document["services"][service]["config"].update(values)
        self.write()

    def address(self, name: str) -> str:
        return next(h.address for h in self.hosts if h.name == name)

    def urls(self) -> dict[tuple[str, str], str]:
        """(service, host) → that host's stable URL of the service."""
        endpoints = api.status(self.root, ENV)["services"]
        ports = {s["service"]: int(str(s["url"]).rsplit(":", 1)[1]) for s in endpoints}
        return {
            (service, host): f"http://{self.address(host)}:{ports[service]}"
            for service, hosts in self.placement.items()
            for host in hosts
        }

    def versions(
        self, urls: dict[tuple[str, str], str] | None = None
    ) -> dict[tuple[str, str], str]:
        found = {}
        for key, url in (urls or self.urls()).items():
            try:
                found[key] = httpx.get(url + "/", timeout=5, trust_env=False).json()["version"]
            except httpx.HTTPError as exc:
                found[key] = f"unreachable ({type(exc).__name__})"
        return found


@dataclass
class Traffic:
    """GET / on every (service, host) URL, in a loop, failures kept."""

    urls: list[str]
    served: int = 0
    failed: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        with httpx.Client(timeout=5, trust_env=False) as client:
            while not self._stop.is_set():
                for url in self.urls:
                    try:
                        answer = client.get(url + "/")
                        if answer.status_code >= 500:
                            self.failed.append(f"{url}: {answer.status_code}")
                        else:
                            self.served += 1
                    except httpx.HTTPError as exc:
                        self.failed.append(f"{url}: {type(exc).__name__}")
                time.sleep(0.02)

    def __enter__(self) -> Traffic:
        self._thread = threading.Thread(target=self.run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


@pytest.fixture
def fleet_project(
    fleet: Fleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[FleetProject]:
    hosts = fleet.hosts(3)
    monkeypatch.setenv("PRODUCTION_API_SECRET", SECRET)
    root = tmp_path / "shop"
    (root / "app").mkdir(parents=True)
    shutil.copyfile(WEBAPP, root / "app" / "webapp.py")
    known_hosts = fleet.write_known_hosts(tmp_path / "known_hosts", hosts)
    placement = {
        "db": [hosts[0].name, hosts[1].name],
        "api": [h.name for h in hosts],
        "web": [hosts[1].name, hosts[2].name],
    }

    def service(version: str, **extra: Any) -> dict[str, Any]:
        return {
            "run": "python app/webapp.py",
            "source": ["app/webapp.py"],
            **extra,
            "config": {"VERSION": version, **extra.pop("config", {})},
        }

    document: dict[str, Any] = {
        "project": "shop",
        "services": {
            "db": service("db-1"),
            "api": {
                **service("api-1"),
                "depends_on": ["db"],
                "config": {
                    "VERSION": "api-1",
                    "NEEDS": "${services.db.url}",
                    "SECRET": "${secret:API_SECRET}",
                },
            },
            "web": {
                **service("web-1"),
                "depends_on": ["api"],
                "config": {"VERSION": "web-1", "NEEDS": "${services.api.url}"},
            },
        },
        "environments": {
            ENV: {
                "secrets": {"prefix": "PRODUCTION_"},
                "runtime": {
                    "type": "ssh",
                    "hosts": {h.name: {"address": h.address} for h in hosts},
                    "key": str(fleet.client_key),
                    "known_hosts": str(known_hosts),
                    "placement": placement,
                    "rollout": {"batch": 1},
                },
            }
        },
        "gates": {"bake": "4s", "ready_timeout": "15s", "memory_growth_mb_per_min": 60},
    }
    project = FleetProject(root, hosts, document, placement)
    project.write()
    try:
        yield project
    finally:
        for host in hosts:
            host.restore_link()
        # the test's own failure matters more than the cleanup's
        with contextlib.suppress(Exception):
            api.stop_env(root, ENV)


@pytest.mark.slow
def test_a_release_to_three_hosts_upgrades_and_rolls_back_on_every_host(
    fleet_project: FleetProject,
) -> None:
    project = fleet_project
    api.build(project.root, "v1")
    first = api.deploy(project.root, ENV)
    assert first.outcome == "succeeded", first.reason
    assert set(project.versions().values()) <= {"db-1", "api-1", "web-1"}
    assert len(project.versions()) == 7  # db on 2 hosts, api on 3, web on 2

    # v2: api and web change; traffic to every host's stable port drops nothing.
    project.set_config("api", VERSION="api-2")
    project.set_config("web", VERSION="web-2")
    api.build(project.root, "v2")
    with Traffic(list(project.urls().values())) as traffic:
        second = api.deploy(project.root, ENV)
    assert second.outcome == "succeeded", second.reason
    assert traffic.failed == [] and traffic.served > 0
    versions = project.versions()
    assert {v for (s, _), v in versions.items() if s == "api"} == {"api-2"}
    assert {v for (s, _), v in versions.items() if s == "web"} == {"web-2"}

    # v3: api leaks memory on the second host only: caught in the bake, rolled back everywhere.
    leaky = project.hosts[1].name
    project.set_config("api", VERSION="api-3", MODE="leak", LEAK_HOST=leaky, LEAK_MB_PER_MIN="900")
    api.build(project.root, "v3")
    with Traffic(list(project.urls().values())) as traffic:
        third = api.deploy(project.root, ENV)
    assert third.outcome == "rolled_back"
    assert third.reason is not None and f"api on {leaky}" in third.reason, third.reason
    assert traffic.failed == []
    assert {v for (s, _), v in project.versions().items() if s == "api"} == {"api-2"}

    # No host ever had the planted secret on its disk.
    for host in project.hosts:
        assert host.find_text(SECRET) == [], host.name


@pytest.mark.slow
def test_a_host_lost_mid_rollout_leaves_every_reachable_host_on_the_previous_release(
    fleet_project: FleetProject,
) -> None:
    project = fleet_project
    api.build(project.root, "v1")
    assert api.deploy(project.root, ENV).outcome == "succeeded"
    lost = project.hosts[2]
    project.set_config("web", VERSION="web-2")
    project.set_config("api", VERSION="api-2")
    api.build(project.root, "v2")
    urls = project.urls()

    def cut_when_api_starts(event: ProgressEvent) -> None:
        if event.kind == "started" and event.service == "api" and lost.link_up():
            lost.cut_link()

    with pytest.raises(Exception) as caught:
        result = api.deploy(project.root, ENV, progress=cut_when_api_starts)
        assert result.outcome == "rolled_back"
        raise AssertionError(result.reason or "rolled back")
    assert lost.name in str(caught.value)
    reachable = {k: v for k, v in project.versions(urls).items() if k[1] != lost.name}
    assert set(reachable.values()) <= {"db-1", "api-1", "web-1"}, reachable
    status = api.status(project.root, ENV)  # a host away: status says so, and shows the rest
    assert lost.name in str(status["problem"])
    lost.restore_link()
    back = {v for (s, h), v in project.versions(urls).items() if h == lost.name}
    assert back <= {"api-1", "web-1"}, back
