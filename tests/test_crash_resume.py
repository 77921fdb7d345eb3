"""Crash safety: a deploy SIGKILLed right after each of its journal records, then ``resume``.

Two deploys are crashed at every journaled step: an upgrade with a migration that succeeds, and
one whose new version fails its bake (after its migration ran). The kill comes from inside the
CLI the instant a record is committed (``fixtures/killpoint.py``), so the points are exact. After
``airlock resume`` every point must end the same way: one release serving every service (through
the stable URLs), every instance of the other release gone, no lock, no running deployment, and
the migration history consistent with the schema.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg
import pytest

from airlock import api
from airlock.db.server import ServerInfo
from airlock.errors import LockedError, StateError
from airlock.runtimes.local import LocalRuntime
from airlock.state import open_state

from .conftest import WEBAPP, ProjectFactory, processes_under

KILLPOINT = Path(__file__).resolve().parent / "fixtures" / "killpoint.py"
V1 = "CREATE TABLE accounts (id bigint PRIMARY KEY, name text NOT NULL);\n"
V2 = "ALTER TABLE accounts ADD COLUMN status text;\n"


@dataclass
class Scenario:
    name: str
    #: what v2 changes in the api service's config
    v2_config: dict[str, str]
    bake: str
    #: how the deploy of v2 ends when nothing kills it
    outcome: str


UPGRADE = Scenario("upgrade", {"VERSION": "api-2"}, "1s", "succeeded")
BAKE_FAILS = Scenario("bake-fails", {"VERSION": "api-2", "MODE": "unhealthy-echo"}, "6s", "failed")


def run_cli(
    project: Path, *args: str, kill_after: int = 0, records: Path | None = None
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200", "AIRLOCK_TEST_KILL_AFTER": str(kill_after)}
    if records is not None:
        env["AIRLOCK_TEST_RECORDS"] = str(records)
    return subprocess.run(
        [sys.executable, str(KILLPOINT), *args],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


class Point:
    """One project, database and environment, at v1, ready to be crashed while going to v2."""

    def __init__(self, root: Path, server: ServerInfo, scenario: Scenario, label: str) -> None:
        self.scenario = scenario
        self.database = f"crash_{scenario.name.replace('-', '_')}_{label}"
        with psycopg.connect(server.url(), autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')
            admin.execute(f'CREATE DATABASE "{self.database}"')
        self.url = server.url(self.database)
        self.project = root / f"{scenario.name}-{label}"
        (self.project / "app").mkdir(parents=True)
        (self.project / "app" / "webapp.py").write_bytes(WEBAPP.read_bytes())
        migrations = self.project / "db" / "migrations"
        migrations.mkdir(parents=True)
        (migrations / "V1__accounts.sql").write_text(V1)
        self.document = {
            "project": "crash",
            "database": {"migrations": "db/migrations"},
            "services": {
                "accounts": {
                    "run": "python app/webapp.py",
                    "source": ["app/webapp.py"],
                    "config": {"VERSION": "accounts-1", "DATABASE_URL": "${database.url}"},
                },
                "api": {
                    "run": "python app/webapp.py",
                    "source": ["app/webapp.py"],
                    "depends_on": ["accounts"],
                    "ready": "/readyz",
                    "config": {"VERSION": "api-1", "NEEDS": "${services.accounts.url}"},
                },
            },
            "environments": {
                "staging": {
                    "secrets": {"prefix": "CRASH_"},
                    "database": {
                        "url": f"postgresql://postgres:${{secret:PG_PASSWORD}}@127.0.0.1:"
                        f"{server.port}/{self.database}"
                    },
                }
            },
            "gates": {"bake": scenario.bake, "ready_timeout": "20s"},
        }
        ProjectFactory.write(self.project, self.document)

    def cli(
        self, *args: str, kill_after: int = 0, records: Path | None = None
    ) -> subprocess.CompletedProcess[str]:
        return run_cli(self.project, *args, kill_after=kill_after, records=records)

    def prepare(self) -> None:
        """v1 deployed and serving; v2 (a migration and a changed api) sealed."""
        for args in (("release", "build", "--version", "v1"), ("deploy", "staging")):
            result = self.cli(*args)
            assert result.returncode == 0, f"{args}: {result.stdout}{result.stderr}"
        (self.project / "db" / "migrations" / "V2__status.sql").write_text(V2)
        self.document["services"]["api"]["config"].update(self.scenario.v2_config)
        ProjectFactory.write(self.project, self.document)
        result = self.cli("release", "build", "--version", "v2")
        assert result.returncode == 0, result.stdout + result.stderr

    def release_ids(self) -> dict[str, str]:
        return {bundle.version: bundle.id for bundle in api.releases(self.project)}

    def check_consistent(self) -> str:
        """Everything a resumed deploy must leave behind; returns the version serving."""
        ids = self.release_ids()
        with open_state(self.project) as store:
            assert store.running("staging") is None, "a deployment is still running"
            assert store.lock("staging") is None, "the lock is still held"
            deployed = store.deployed("staging")
        releases = {row.release_id for row in deployed.values()}
        assert sorted(deployed) == ["accounts", "api"]
        assert len(releases) == 1, f"services deployed from several releases: {releases}"
        serving = "v1" if releases == {ids["v1"]} else "v2"
        # Exactly the deployed instances run (a service that v2 kept is v1's instance).
        runtime = LocalRuntime(self.project / ".airlock" / "envs" / "staging", "staging")
        instances = asyncio.run(runtime.status())
        assert sorted(i.instance_id for i in instances) == sorted(
            row.instance_id for row in deployed.values()
        ), "instances other than the deployed ones run"
        assert all(i.running for i in instances)
        live = processes_under(self.project / ".airlock" / "releases")
        assert len(live) == len(deployed), f"service processes: {live}"
        ports = (self.project / ".airlock" / "envs" / "staging" / "ports.json").read_text()
        for service, port in json.loads(ports).items():
            answer = httpx.get(f"http://127.0.0.1:{port}/", timeout=5).json()
            expected = f"{service}-1" if serving == "v1" or service != "api" else "api-2"
            assert answer == {"version": expected}, f"{service} answers {answer}"
        with psycopg.connect(self.url) as conn:
            history = conn.execute(
                "SELECT version, success FROM airlock_schema_history ORDER BY installed_rank"
            ).fetchall()
            columns = {
                r[0]
                for r in conn.execute(
                    "SELECT column_name FROM information_schema.columns "
                    "WHERE table_name = 'accounts'"
                )
            }
        assert all(success for _, success in history), f"a failed migration row: {history}"
        versions = [v for v, _ in history]
        assert versions in (["1"], ["1", "2"]), versions
        assert ("status" in columns) == ("2" in versions), (versions, columns)
        return serving

    def stop(self) -> None:
        from airlock.runtimes.local import stop_environment

        stop_environment(self.project / ".airlock" / "envs" / "staging")


@pytest.fixture
def points(
    tmp_path: Path, pg_server: ServerInfo, monkeypatch: pytest.MonkeyPatch
) -> Iterator[list[Point]]:
    monkeypatch.setenv("CRASH_PG_PASSWORD", pg_server.password)
    made: list[Point] = []
    try:
        yield made
    finally:
        for point in made:
            point.stop()


def reference_records(point: Point, tmp_path: Path) -> list[str]:
    """The journal records of an uninterrupted deploy of v2: one kill point each."""
    records = tmp_path / f"{point.scenario.name}-records.txt"
    result = point.cli("deploy", "staging", records=records)
    expected = 0 if point.scenario.outcome == "succeeded" else 1
    assert result.returncode == expected, result.stdout + result.stderr
    return records.read_text().splitlines()


@pytest.mark.slow
@pytest.mark.parametrize("scenario", [UPGRADE, BAKE_FAILS], ids=lambda s: s.name)
def test_resume_after_a_kill_at_every_journaled_step(
    scenario: Scenario, tmp_path: Path, pg_server: ServerInfo, points: list[Point]
) -> None:
    reference = Point(tmp_path, pg_server, scenario, "reference")
    points.append(reference)
    reference.prepare()
    records = reference_records(reference, tmp_path)
    reference.check_consistent()
    assert any(r.startswith("migration") for r in records)
    assert any(r.startswith("action StopOld") or r.startswith("action StopNew") for r in records)

    def crash_at(k: int) -> tuple[int, str, str]:
        point = Point(tmp_path, pg_server, scenario, str(k))
        points.append(point)
        point.prepare()
        killed = point.cli("deploy", "staging", kill_after=k)
        assert killed.returncode == -9, f"kill point {k} not reached: {killed.stderr}"
        resumed = point.cli("resume", "staging")
        assert resumed.returncode in (0, 1), resumed.stdout + resumed.stderr
        assert "Traceback" not in resumed.stderr
        try:
            serving = point.check_consistent()
        finally:
            point.stop()
        return k, records[k - 1], serving

    failures: list[str] = []
    with ThreadPoolExecutor(max_workers=3) as pool:
        futures = [pool.submit(crash_at, k) for k in range(1, len(records) + 1)]
        for k, future in enumerate(futures, start=1):
            try:
                future.result()
            except AssertionError as exc:
                failures.append(f"kill after record {k} ({records[k - 1]}): {exc}")
    assert failures == [], "\n".join(failures)


def test_only_one_of_many_resumes_takes_a_deployment_over(tmp_path: Path) -> None:
    """The holder is compared and swapped in one transaction: one winner, whatever the race."""
    with open_state(tmp_path) as store:
        store.begin(
            deployment_id="d-1",
            env="staging",
            kind="deploy",
            release_id="r1",
            version="v1",
            previous_release_id=None,
            plan={},
        )
        # the deploying process died: its pid is one that no longer exists
        dead = subprocess.Popen(["true"])
        dead.wait()
        store._db.execute("UPDATE locks SET pid = ?", (dead.pid,))
        store._db.execute("UPDATE deployments SET pid = ?", (dead.pid,))
        judged = store.running("staging")
        assert judged is not None and not judged.holder_alive

    barrier = threading.Barrier(8)

    def take() -> str:
        with open_state(tmp_path) as store:
            barrier.wait()
            try:
                store.take_over(judged)
            except LockedError as exc:
                return f"refused: {exc.holder}"
            return "took over"

    with ThreadPoolExecutor(max_workers=8) as pool:
        outcomes = list(pool.map(lambda _: take(), range(8)))
    assert outcomes.count("took over") == 1, outcomes
    assert all(o == "took over" or o.startswith("refused: ") for o in outcomes)
    with open_state(tmp_path) as store:
        lock = store.lock("staging")
        assert lock is not None and lock["pid"] == os.getpid()
        finished = store.running("staging")
        assert finished is not None
        store.finish("d-1", "rolled_back")
        with pytest.raises(StateError, match="already finished"):
            store.take_over(finished)


def test_two_resume_commands_never_both_take_over(
    tmp_path: Path, pg_server: ServerInfo, points: list[Point]
) -> None:
    point = Point(tmp_path, pg_server, BAKE_FAILS, "race")
    points.append(point)
    point.prepare()
    killed = point.cli("deploy", "staging", kill_after=4)
    assert killed.returncode == -9
    env = {**os.environ, "COLUMNS": "200"}
    racers = [
        subprocess.Popen(
            [sys.executable, str(KILLPOINT), "resume", "staging"],
            cwd=point.project,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    results = [(r.wait(timeout=180), *r.communicate()) for r in racers]
    took = [out for code, out, _ in results if code == 0 and "interrupted deployment" in out]
    assert len(took) == 1, results
    for code, out, err in results:
        assert "Traceback" not in err
        assert code == 0 or "locked by" in err or "still running" in err, (code, out, err)
    point.check_consistent()
