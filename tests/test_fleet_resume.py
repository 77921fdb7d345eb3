"""A deploy to a fleet, killed mid-rollout, resumed from another working copy of the project.

Three testbed hosts (real OpenSSH servers in namespaces of their own), a project with services
placed on two or three of them, and a state store in PostgreSQL shared by two working copies of
the project (two folders with the same ``airlock.yaml`` and sources). Copy A, as seen from
another machine (its host name is ``machine-a``), deploys v1, then deploys v2 through
``fixtures/killpoint.py``: the real CLI, SIGKILLed the instant a chosen journal record is
committed, here the one right after the first service's traffic moved to v2 on every host. Copy
B, which sealed the same release, runs ``airlock resume production``: it is refused while the
dead deploy's lease is live (the refusal names the holder), and once the lease has run out it
takes the deploy over and finishes it. Then every host serves one release for every service,
nothing of the other release runs anywhere, and the environment's lock is free.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import yaml

from airlock import api
from airlock.db.server import ServerInfo
from airlock.runtimes import open_runtime
from airlock.state import open_state
from airlock.testbed import Fleet, FleetHost

from .conftest import WEBAPP

KILLPOINT = Path(__file__).resolve().parent / "fixtures" / "killpoint.py"
ENV = "production"
LEASE_SECONDS = 2
#: The deploying machine, as the state store sees it: not this one, so its pid says nothing
#: here and only its lease tells whether it lives.
HOLDER_HOST = "machine-a"

#: ``killpoint.py`` (the real CLI, killed after a chosen journal record) on ``machine-a``.
ON_MACHINE_A = (
    "import runpy, socket, sys; socket.gethostname = lambda: {host!r}; "
    "sys.argv[0] = {path!r}; runpy.run_path({path!r}, run_name='__main__')"
)

#: The CLI with its imports done, waiting for a line on its standard input before it runs: the
#: command starts the moment the test says so, not an interpreter's start-up later.
WHEN_TOLD = (
    "import sys; import airlock.state.postgres; from airlock.cli import main; "
    "sys.stdin.readline(); main(sys.argv[1:])"
)


@dataclass
class Copy:
    """One working copy of the project."""

    root: Path
    env: dict[str, str]

    def cli(
        self, *args: str, kill_after: int = 0, records: Path | None = None
    ) -> tuple[int, int, str, str]:
        """Run ``airlock ARGS`` as machine-a through killpoint: (pid, exit code, out, err)."""
        env = {**self.env, "AIRLOCK_TEST_KILL_AFTER": str(kill_after)}
        if records is not None:
            env["AIRLOCK_TEST_RECORDS"] = str(records)
        code = ON_MACHINE_A.format(host=HOLDER_HOST, path=str(KILLPOINT))
        process = subprocess.Popen(
            [sys.executable, "-c", code, *args],
            cwd=self.root,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        out, err = process.communicate(timeout=240)
        return process.pid, process.returncode, out, err

    def airlock(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run ``airlock ARGS`` on this machine."""
        return subprocess.run(
            [sys.executable, "-m", "airlock.cli", *args],
            cwd=self.root,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=240,
            check=False,
        )

    def build(self, version: str) -> str:
        result = self.airlock("release", "build", "--version", version, "--format", "json")
        assert result.returncode == 0, result.stdout + result.stderr
        release_id = json.loads(result.stdout)["id"]
        assert isinstance(release_id, str)
        return release_id


@dataclass
class Project:
    copies: tuple[Copy, Copy]
    hosts: list[FleetHost]
    document: dict[str, Any]
    placement: dict[str, list[str]]
    state_url: str

    def write(self) -> None:
        for copy in self.copies:
            text = yaml.safe_dump(self.document, sort_keys=False)
            (copy.root / "airlock.yaml").write_text(text)

    def versions(self) -> dict[tuple[str, str], str]:
        """(service, host) → what GET / answers on that host's stable port of the service."""
        status = api.status(self.copies[1].root, ENV)
        port_of = {s["service"]: int(str(s["url"]).rsplit(":", 1)[1]) for s in status["services"]}
        address = {host.name: host.address for host in self.hosts}
        found = {}
        for service, names in self.placement.items():
            for name in names:
                url = f"http://{address[name]}:{port_of[service]}/"
                try:
                    found[service, name] = httpx.get(url, timeout=5, trust_env=False).json()[
                        "version"
                    ]
                except httpx.HTTPError as exc:
                    found[service, name] = f"unreachable ({type(exc).__name__})"
        return found


@pytest.fixture
def project(
    fleet: Fleet, pg_server: ServerInfo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Project]:
    hosts = fleet.hosts(3)
    database = f"fleet_resume_{secrets.token_hex(4)}"
    with psycopg.connect(pg_server.url(), autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{database}"')
    state_url = pg_server.url(database)
    shared = {"AIRLOCK_STATE_URL": state_url, "AIRLOCK_LEASE_SECONDS": str(LEASE_SECONDS)}
    for key, value in shared.items():  # this process reads the same store (api.status …)
        monkeypatch.setenv(key, value)
    env = {**os.environ, "COLUMNS": "200", **shared}
    known_hosts = fleet.write_known_hosts(tmp_path / "known_hosts", hosts)
    placement = {
        "db": [hosts[0].name, hosts[1].name],
        "api": [host.name for host in hosts],
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
        "project": "ledger",
        "services": {
            "db": service("db-1"),
            "api": service("api-1", depends_on=["db"], config={"NEEDS": "${services.db.url}"}),
            "web": service("web-1", depends_on=["api"], config={"NEEDS": "${services.api.url}"}),
        },
        "environments": {
            ENV: {
                "runtime": {
                    "type": "ssh",
                    "hosts": {host.name: {"address": host.address} for host in hosts},
                    "key": str(fleet.client_key),
                    "known_hosts": str(known_hosts),
                    # a folder of its own on the hosts, whatever other tests left in theirs
                    "base_dir": f"/srv/{database}",
                    "placement": placement,
                    "rollout": {"batch": 1},
                },
            }
        },
        "gates": {"bake": "2s", "ready_timeout": "20s"},
    }
    copies = []
    for name in ("copy-a", "copy-b"):
        root = tmp_path / name
        (root / "app").mkdir(parents=True)
        shutil.copyfile(WEBAPP, root / "app" / "webapp.py")
        copies.append(Copy(root, env))
    made = Project((copies[0], copies[1]), hosts, document, placement, state_url)
    made.write()
    try:
        yield made
    finally:
        with contextlib.suppress(Exception):  # the test's own failure matters more
            api.stop_env(made.copies[1].root, ENV)
        with psycopg.connect(pg_server.url(), autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


def wait_until(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout} s")
        time.sleep(0.1)


@pytest.mark.slow
def test_a_deploy_killed_mid_rollout_is_resumed_from_another_working_copy(
    project: Project, tmp_path: Path
) -> None:
    copy_a, copy_b = project.copies
    v1 = copy_a.build("v1")
    assert copy_b.build("v1") == v1
    _, code, out, err = copy_a.cli("deploy", ENV)
    assert code == 0, out + err
    assert set(project.versions().values()) == {"db-1", "api-1", "web-1"}

    # v2 changes api and web; both copies seal it, to the same content-addressed id.
    project.document["services"]["api"]["config"]["VERSION"] = "api-2"
    project.document["services"]["web"]["config"]["VERSION"] = "web-2"
    project.write()
    v2 = copy_a.build("v2")
    assert copy_b.build("v2") == v2 != v1

    # The journal of an uninterrupted deploy of v2 (then back to v1): where to kill.
    reference = tmp_path / "reference-records.txt"
    _, code, out, err = copy_a.cli("deploy", ENV, records=reference)
    assert code == 0, out + err
    records = reference.read_text().splitlines()
    _, code, out, err = copy_a.cli("deploy", ENV, "--release", v1)
    assert code == 0, out + err
    assert set(project.versions().values()) == {"db-1", "api-1", "web-1"}
    switches = [k for k, record in enumerate(records, start=1) if "SwitchTraffic" in record]
    bake_over = next(k for k, record in enumerate(records, start=1) if "StopOld" in record)
    assert len(switches) == 2 and switches[-1] < bake_over, records
    # Right after the first switch was carried out (its next record is only written then):
    # api serves v2 on every host, web is still on v1.
    kill_after = switches[0] + 1
    assert kill_after < switches[1], records

    # Copy B's resume, its imports done beforehand, runs the moment the deploy is killed: the
    # dead deploy's lease is still live then (renewed every third of a lease, it has two
    # thirds of one left at least).
    early = subprocess.Popen(
        [sys.executable, "-c", WHEN_TOLD, "resume", ENV],
        cwd=copy_b.root,
        env=copy_b.env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        killed_records = tmp_path / "killed-records.txt"
        pid, code, out, err = copy_a.cli(
            "deploy", ENV, kill_after=kill_after, records=killed_records
        )
        assert code == -9, f"kill point {kill_after} not reached:\n{out}{err}"
        early_out, early_err = early.communicate("go\n", timeout=120)
    finally:
        if early.poll() is None:
            early.kill()
            early.wait()
    early_text = " ".join(early_err.split())
    assert early.returncode == 2, early_out + early_err
    assert "still running" in early_text, early_text
    assert f"@{HOLDER_HOST} (pid {pid})" in early_text, early_text
    assert killed_records.read_text().splitlines() == records[:kill_after]
    mid = project.versions()  # mid-rollout: api switched everywhere, web not yet
    assert {v for (s, _), v in mid.items() if s == "api"} == {"api-2"}, mid
    assert {v for (s, _), v in mid.items() if s == "web"} == {"web-1"}, mid

    with open_state(copy_b.root, readonly=True) as store:
        lock = store.lock(ENV)
        assert lock is not None and lock["host"] == HOLDER_HOST and lock["pid"] == pid

        def expired() -> bool:
            current = store.lock(ENV)
            return current is not None and current["lease_live"] is False

        wait_until(expired, 60, "the dead deploy's lease running out")
    resumed = copy_b.airlock("resume", ENV, "--format", "json")
    assert resumed.returncode in (0, 1), resumed.stdout + resumed.stderr
    assert "Traceback" not in resumed.stderr
    outcome = json.loads(resumed.stdout)["outcome"]
    assert outcome in ("succeeded", "rolled_back"), resumed.stdout

    # Every host serves one release for every service.
    serving, other = (v2, v1) if outcome == "succeeded" else (v1, v2)
    expected = {"db": "db-1", "api": "api-1", "web": "web-1"}
    if serving == v2:
        expected.update(api="api-2", web="web-2")
    versions = project.versions()
    assert len(versions) == 7  # db on 2 hosts, api on 3, web on 2
    assert versions == {(s, h): expected[s] for s, h in versions}, versions

    # Copy B's status: every service from that release, running on every host of its
    # placement; and nothing else runs on any host, no instance of the other release.
    status = api.status(copy_b.root, ENV)
    assert status["problem"] is None, status["problem"]
    assert status["release"] == serving and status["running_deployment"] is None
    assert status["lock"] is None
    rows = {s["service"]: s for s in status["services"]}
    assert sorted(rows) == ["api", "db", "web"]
    for name, row in rows.items():
        assert row["running"], row
        assert row["release"] == serving, row
        assert sorted(row["hosts"]) == sorted(project.placement[name]), row
    runtime = open_runtime(api.project_at(copy_b.root), ENV, root=copy_b.root)
    instances = asyncio.run(runtime.status())
    assert sorted((i.instance_id, i.host) for i in instances) == sorted(
        (row["instance"], host) for row in rows.values() for host in row["hosts"]
    ), instances
    # (db is the same in both releases: the instance v1 started serves on under v2)
    assert not [i for i in instances if other[:8] in i.instance_id and i.service != "db"]

    with open_state(copy_a.root, readonly=True) as store:
        assert store.lock(ENV) is None and store.running(ENV) is None
        kinds = [(d.kind, d.status) for d in store.deployments(ENV, 2)]
    assert kinds[0] == ("deploy", outcome)  # the killed deploy, finished by copy B
