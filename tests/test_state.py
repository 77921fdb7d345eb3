"""The state store against both backends: SQLite in a file, and PostgreSQL (a fresh database per
test on the session's embedded server). Locks are leases; the store's schema is versioned and
upgraded in place; a store opened for reading writes nothing."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from airlock import api
from airlock.errors import LockedError, StateError
from airlock.state import (
    SCHEMA_VERSION,
    Deployment,
    StateStore,
    open_state,
    state_location,
    this_holder,
)
from airlock.state.base import STEPS
from airlock.state.postgres import POSTGRES, SCHEMA

from .conftest import ProjectFactory, airlock, full_dump

#: The schema of the state store as Airlock wrote it before versions were recorded (version 1),
#: copied from that Airlock's ``state.py``. Frozen on purpose: were it built from ``STEPS``, a
#: mistaken edit of step 1 would go unnoticed.
V1_SCHEMA = """
CREATE TABLE IF NOT EXISTS deployments (
    id TEXT PRIMARY KEY,
    env TEXT NOT NULL,
    kind TEXT NOT NULL,
    release_id TEXT NOT NULL,
    version TEXT NOT NULL,
    previous_release_id TEXT,
    status TEXT NOT NULL,
    started_at TEXT NOT NULL,
    finished_at TEXT,
    duration_seconds REAL,
    holder TEXT NOT NULL,
    pid INTEGER NOT NULL,
    host TEXT NOT NULL,
    reason TEXT,
    failed_service TEXT,
    plan TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS deployments_env ON deployments (env, started_at);
CREATE TABLE IF NOT EXISTS journal (
    deployment_id TEXT NOT NULL REFERENCES deployments (id),
    seq INTEGER NOT NULL,
    at TEXT NOT NULL,
    type TEXT NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (deployment_id, seq)
);
CREATE TABLE IF NOT EXISTS services (
    env TEXT NOT NULL,
    service TEXT NOT NULL,
    release_id TEXT NOT NULL,
    digest TEXT NOT NULL,
    instance_id TEXT NOT NULL,
    config TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (env, service)
);
CREATE TABLE IF NOT EXISTS locks (
    env TEXT PRIMARY KEY,
    deployment_id TEXT NOT NULL,
    holder TEXT NOT NULL,
    pid INTEGER NOT NULL,
    host TEXT NOT NULL,
    since TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS gate_runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    env TEXT NOT NULL,
    release_id TEXT NOT NULL,
    gate TEXT NOT NULL,
    passed INTEGER NOT NULL,
    at TEXT NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS gate_runs_release ON gate_runs (release_id, gate, env);
CREATE TABLE IF NOT EXISTS approvals (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    env TEXT NOT NULL,
    release_id TEXT NOT NULL,
    approver TEXT NOT NULL,
    note TEXT,
    report_id INTEGER REFERENCES gate_runs (id),
    at TEXT NOT NULL
);
"""

HOST = socket.gethostname()


@dataclass
class Target:
    """One state store to open again and again: a project folder and, for PostgreSQL, its URL."""

    backend: str
    root: Path
    url: str | None

    def open(self, **options: Any) -> StateStore:
        return open_state(self.root, url=self.url, **options)


@pytest.fixture(autouse=True)
def _no_store_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AIRLOCK_STATE_URL", raising=False)
    monkeypatch.delenv("AIRLOCK_LEASE_SECONDS", raising=False)


@pytest.fixture(params=["sqlite", "postgres"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Target:
    if request.param == "sqlite":
        return Target("sqlite", tmp_path, None)
    return Target("postgres", tmp_path, request.getfixturevalue("pg_url"))


def begin(store: StateStore, deployment_id: str = "d-1", env: str = "staging") -> Deployment:
    return store.begin(
        deployment_id=deployment_id,
        env=env,
        kind="deploy",
        release_id="r1",
        version="v1",
        previous_release_id=None,
        plan={"services": ["api"]},
    )


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll ``condition``; the monotonic time it first held."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return time.monotonic()
        time.sleep(0.05)
    raise AssertionError(f"{what} did not happen within {timeout} s")


def one_line(text: str) -> str:
    return " ".join(text.split())


# -- locks -------------------------------------------------------------------------------------


def test_a_second_begin_is_refused_naming_holder_host_and_since(target: Target) -> None:
    """While a deployment holds the environment, another is refused: who, where, since when."""
    with target.open() as first, target.open() as second:
        held = begin(first)
        with pytest.raises(LockedError) as refused:
            begin(second, "d-2")
        error = refused.value
        assert error.exit_code == 2
        assert (error.holder, error.since) == (this_holder(), held.started_at)
        assert error.deployment == "d-1"
        message = str(error)
        assert f"locked by {this_holder()} on host {HOST} since {held.started_at}" in message
        assert "lease is live until" in message
        begin(second, "d-3", env="production")  # another environment is free
        assert [d.id for d in second.deployments()] == ["d-3", "d-1"]


def test_finish_releases_the_lock(target: Target) -> None:
    """Finishing a deployment records its outcome and frees its environment at once."""
    with target.open() as store:
        begin(store)
        assert store.holding() == {"d-1": this_holder()}
        store.finish("d-1", "succeeded")
        assert store.holding() == {}
        assert store.lock("staging") is None and store.running("staging") is None
        done = store.deployment("d-1")
        assert done.status == "succeeded" and done.finished_at is not None
        assert done.duration_seconds is not None and done.duration_seconds >= 0
        assert not done.holder_alive
        assert store.current_release("staging") == "r1"
        begin(store, "d-2")
        store.finish("d-2", "failed", reason="api: exited 3", failed_service="api")
        failed = store.deployment("d-2")
        assert (failed.status, failed.reason, failed.failed_service) == (
            "failed",
            "api: exited 3",
            "api",
        )
        assert store.previous_good_release("staging") is None
        with pytest.raises(StateError, match="no deployment d-9"):
            store.finish("d-9", "succeeded")


def test_an_expired_lease_still_blocks_a_new_deploy_and_names_resume(target: Target) -> None:
    """A running deployment whose lease expired is for `resume`, never silently replaced."""
    with target.open(lease_seconds=0.3) as store:
        begin(store)
    time.sleep(0.5)  # closed: nobody renews the lease
    with target.open() as other:
        judged = other.running("staging")
        assert judged is not None and judged.lease_live is False and not judged.holder_alive
        with pytest.raises(LockedError) as refused:
            begin(other, "d-2")
        assert "lease expired at" in str(refused.value)
        assert "run `airlock resume staging`" in str(refused.value)
        assert [d.status for d in other.deployments("staging")] == ["running"]


def test_a_lease_runs_out_unless_the_heartbeat_renews_it(target: Target) -> None:
    """An open store renews its lease by itself, well beyond its length; closed, it expires."""
    with target.open(lease_seconds=1.0) as store:
        first = begin(store)
        time.sleep(3.5)  # more than three lease lengths
        renewed = store.running("staging")
        assert renewed is not None and renewed.lease_live and renewed.holder_alive
        assert first.lease_expires_at is not None and renewed.lease_expires_at is not None
        assert renewed.lease_expires_at > first.lease_expires_at
        lock = store.lock("staging")
        assert lock is not None and lock["lease_live"] is True
    with target.open() as reader:
        wait_until(
            lambda: reader.lock("staging")["lease_live"] is False,
            timeout=3,
            what="the lease's expiry",
        )
        running = reader.running("staging")
        assert running is not None and not running.holder_alive


def test_take_over_is_a_compare_and_swap_among_eight_racers(target: Target) -> None:
    """Eight resumes race for one dead holder's deployment: one wins, the rest are refused."""
    with target.open(lease_seconds=0.3) as store:
        begin(store)
    time.sleep(0.5)
    with target.open() as store:
        judged = store.running("staging")
    assert judged is not None and not judged.holder_alive
    racers = [target.open() for _ in range(8)]  # eight connections, all ready at the start
    start = threading.Barrier(len(racers))

    def race(racer: StateStore) -> LockedError | None:
        start.wait()
        try:
            racer.take_over(judged)
        except LockedError as refused:
            return refused
        return None

    try:
        with ThreadPoolExecutor(max_workers=len(racers)) as pool:
            refusals = list(pool.map(race, racers))
    finally:
        for racer in racers:
            racer.close()
    assert refusals.count(None) == 1, refusals
    assert {refused.holder for refused in refusals if refused} == {this_holder()}
    with target.open() as store:
        lock = store.lock("staging")
        assert lock is not None and lock["pid"] == os.getpid() and lock["lease_live"]
        with pytest.raises(LockedError):  # the judgement is stale: the lease changed hands
            store.take_over(judged)
        store.finish("d-1", "rolled_back")
        with pytest.raises(StateError, match="already finished"):
            store.take_over(judged)


def test_a_live_holder_on_another_host_is_not_taken_over(target: Target) -> None:
    """A holder elsewhere is alive while its lease is; only its expiry lets `resume` in."""
    with target.open(lease_seconds=2.0) as store:
        begin(store)
        store._execute("UPDATE locks SET host = 'machine-a'")
        store._execute("UPDATE deployments SET host = 'machine-a'")
    with target.open() as resumer:
        judged = resumer.running("staging")
        assert judged is not None and judged.host == "machine-a" and judged.holder_alive
        with pytest.raises(LockedError, match=r"on host machine-a .* lease is live"):
            resumer.take_over(judged)
        wait_until(lambda: not resumer.running("staging").holder_alive, 4, "expiry")
        expired = resumer.running("staging")
        assert expired is not None
        resumer.take_over(expired)
        assert resumer.running("staging").host == HOST


def test_a_store_that_lost_its_lease_refuses_to_write_for_that_deployment(
    target: Target,
) -> None:
    """Fencing: once another process took the deployment over, the old holder cannot write."""
    with target.open() as stalled, target.open() as resumer:
        begin(stalled)
        stalled._execute("UPDATE locks SET pid = -1")
        stalled._execute("UPDATE deployments SET pid = -1")
        judged = resumer.running("staging")
        assert judged is not None and not judged.holder_alive
        resumer.take_over(judged)
        resumer.journal("d-1", "event", {"type": "Abort"})
        with pytest.raises(StateError, match="no longer holds deployment d-1"):
            stalled.journal("d-1", "event", {"type": "Ready"})
        assert "d-1" in stalled.lost
        resumer.finish("d-1", "rolled_back")
        assert [r["body"]["type"] for r in resumer.records("d-1")] == ["Abort"]


# -- the journal, what is deployed, gates, approvals -------------------------------------------


def test_the_journal_keeps_records_in_order(target: Target) -> None:
    """Records come back in the order written, numbered 1, 2, 3 ..., filtered by type."""
    with target.open() as store:
        begin(store)
        for n in range(5):
            store.journal("d-1", "event" if n % 2 == 0 else "action", {"n": n, "secretless": True})
        records = store.records("d-1")
        assert [r["seq"] for r in records] == [1, 2, 3, 4, 5]
        assert [r["body"]["n"] for r in records] == [0, 1, 2, 3, 4]
        assert [r["body"]["n"] for r in store.records("d-1", "action")] == [1, 3]
        assert all(r["at"] for r in records)
        assert store.records("d-9") == []


def test_journal_numbers_stay_unique_with_concurrent_writers(target: Target) -> None:
    """Four connections append at once: every record gets its own number, none is lost."""
    with target.open() as store:
        begin(store)
    barrier = threading.Barrier(4)

    def write(writer: int) -> None:
        with target.open() as store:
            barrier.wait()
            for n in range(15):
                store.journal("d-1", "event", {"writer": writer, "n": n})

    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(write, range(4)))
    with target.open() as store:
        records = store.records("d-1")
    assert [r["seq"] for r in records] == list(range(1, 61))
    for writer in range(4):
        mine = [r["body"]["n"] for r in records if r["body"]["writer"] == writer]
        assert mine == list(range(15))


def test_deployed_rows_are_replaced_and_removed(target: Target) -> None:
    """One row per service and environment: written again it is replaced, and can be removed."""
    with target.open() as store:
        for service in ("api", "web"):
            store.set_deployed(
                "staging",
                service,
                release_id="r1",
                digest=f"{service}-1",
                instance_id=f"{service}-a",
                config={"URL": "${services.db.url}"},
            )
        store.set_deployed(
            "staging", "api", release_id="r2", digest="api-2", instance_id="api-b", config={}
        )
        store.set_deployed(
            "production", "api", release_id="r1", digest="api-1", instance_id="p", config={}
        )
        rows = store.deployed("staging")
        assert list(rows) == ["api", "web"]
        assert (rows["api"].release_id, rows["api"].instance_id, rows["api"].config) == (
            "r2",
            "api-b",
            {},
        )
        assert rows["web"].config == {"URL": "${services.db.url}"} and rows["web"].updated_at
        store.remove_deployed("staging", "web")
        assert list(store.deployed("staging")) == ["api"]
        store.remove_deployed("staging")
        assert store.deployed("staging") == {}
        assert list(store.deployed("production")) == ["api"]


def test_gate_runs_are_kept_newest_first(target: Target) -> None:
    """Gate runs come back newest first, filtered by gate and environment; bodies can change."""
    with target.open() as store:
        load = store.record_gate("staging", "r1", "load", passed=False, body={"p95_ms": 900})
        report = store.record_gate("staging", "r1", "gonogo", passed=True, body={"go": True})
        store.record_gate("production", "r1", "gonogo", passed=True, body={"go": True})
        store.record_gate("staging", "r2", "load", passed=True, body={})
        store.update_gate(report.id, body={"go": True, "id": report.id})
        runs = store.gate_runs("r1")
        assert [(r.gate, r.env) for r in runs] == [
            ("gonogo", "production"),
            ("gonogo", "staging"),
            ("load", "staging"),
        ]
        assert [r.id for r in store.gate_runs("r1", gate="gonogo", env="staging")] == [report.id]
        assert store.gate_runs("r1", gate="gonogo", env="staging")[0].body == {
            "go": True,
            "id": report.id,
        }
        (stored,) = store.gate_runs("r1", gate="load")
        assert stored == load and stored.passed is False and stored.body == {"p95_ms": 900}


def test_approvals_are_kept_in_order(target: Target) -> None:
    """Approvals of a release in an environment come back in the order they were given."""
    with target.open() as store:
        report = store.record_gate("production", "r1", "gonogo", passed=True, body={})
        alice = store.approve("production", "r1", "alice", note="looks good", report_id=report.id)
        bob = store.approve("production", "r1", "bob", note=None, report_id=None)
        store.approve("staging", "r1", "carol", note=None, report_id=None)
        assert store.approvals("production", "r1") == [alice, bob]
        assert alice.to_dict()["note"] == "looks good" and alice.report_id == report.id
        assert store.approvals("production", "r2") == []


# -- reading, versions, upgrades ---------------------------------------------------------------


def populate(target: Target) -> None:
    with target.open() as store:
        begin(store)
        store.journal("d-1", "event", {"type": "Begin"})
        store.set_deployed(
            "staging", "api", release_id="r1", digest="d", instance_id="i", config={}
        )
        store.record_gate("staging", "r1", "load", passed=True, body={})


def read_everything(store: StateStore) -> list[Any]:
    return [
        store.schema_version,
        store.lock("staging"),
        store.running("staging"),
        store.deployments(),
        store.records("d-1"),
        store.deployed("staging"),
        store.current_release("staging"),
        store.previous_good_release("staging"),
        store.gate_runs("r1"),
        store.approvals("staging", "r1"),
    ]


def test_a_missing_store_opened_for_reading_is_empty_and_is_not_created(target: Target) -> None:
    """Reading a store that does not exist yet creates nothing: no file, no schema, no table."""
    with target.open(readonly=True) as store:
        assert read_everything(store) == [0, None, None, [], [], {}, None, None, [], []]
        with pytest.raises(StateError, match="opened for reading"):
            begin(store)
        with pytest.raises(StateError, match="opened for reading"):
            store.approve("staging", "r1", "alice", note=None, report_id=None)
    assert not (target.root / ".airlock").exists()
    if target.url is not None:
        with psycopg.connect(target.url) as conn:
            tables = conn.execute(
                "SELECT table_schema, table_name FROM information_schema.tables "
                "WHERE table_schema NOT IN ('pg_catalog', 'information_schema')"
            ).fetchall()
            schemas = conn.execute(
                "SELECT nspname FROM pg_namespace WHERE nspname = %s", (SCHEMA,)
            ).fetchall()
        assert tables == [] and schemas == []


def test_a_store_opened_for_reading_writes_nothing(target: Target) -> None:
    """Reading an existing store leaves it byte for byte as it was, and refuses every write."""
    populate(target)
    database = target.root / ".airlock" / "state.db"
    if target.url is None:
        before: object = (database.read_bytes(), database.stat().st_mtime_ns)
    else:
        before = full_dump(target.url)
    with target.open(readonly=True) as store:
        found = read_everything(store)
        assert found[0] == SCHEMA_VERSION and found[1]["deployment_id"] == "d-1"
        assert [r["seq"] for r in found[4]] == [1]
        with pytest.raises(StateError, match="opened for reading"):
            store.journal("d-1", "event", {})
        with pytest.raises(StateError, match="opened for reading"):
            store.finish("d-1", "succeeded")
    time.sleep(0.05)
    if target.url is None:
        assert (database.read_bytes(), database.stat().st_mtime_ns) == before
    else:
        assert full_dump(target.url) == before


def set_version(target: Target, version: int) -> None:
    if target.url is None:
        with sqlite3.connect(target.root / ".airlock" / "state.db") as db:
            db.execute(f"PRAGMA user_version = {version}")
    else:
        with psycopg.connect(target.url, autocommit=True) as conn:
            conn.execute(f"INSERT INTO {SCHEMA}.schema_version (version) VALUES (%s)", (version,))


def test_a_store_written_by_a_newer_airlock_is_refused(target: Target) -> None:
    """A schema newer than this Airlock knows is neither read nor written: upgrade Airlock."""
    populate(target)
    set_version(target, SCHEMA_VERSION + 1)
    for readonly in (False, True):
        with pytest.raises(StateError) as refused:
            target.open(readonly=readonly)
        message = str(refused.value)
        assert f"schema version {SCHEMA_VERSION + 1}" in message
        assert "written by a newer Airlock" in message and "upgrade Airlock" in message


def make_v1_store(target: Target) -> None:
    """A store as the first Airlock wrote it (its schema, no version), with one of everything."""
    rows: list[tuple[str, tuple[Any, ...]]] = [
        (
            "INSERT INTO deployments (id, env, kind, release_id, version, previous_release_id, "
            "status, started_at, holder, pid, host, plan) VALUES "
            "(?, 'staging', 'deploy', 'r1', 'v1', NULL, 'running', ?, ?, ?, ?, '{\"a\": 1}')",
            ("d-1", "2024-05-01T10:00:00.000+00:00", this_holder(), os.getpid(), HOST),
        ),
        (
            "INSERT INTO locks VALUES ('staging', 'd-1', ?, ?, ?, ?)",
            (this_holder(), os.getpid(), HOST, "2024-05-01T10:00:00.000+00:00"),
        ),
        ("INSERT INTO journal VALUES ('d-1', 1, ?, 'event', '{\"type\": \"Begin\"}')", ("t",)),
        (
            "INSERT INTO services VALUES ('staging', 'api', 'r0', 'x', 'i-0', '{}', ?)",
            ("2024-04-01T10:00:00.000+00:00",),
        ),
        (
            "INSERT INTO gate_runs (env, release_id, gate, passed, at, body) "
            "VALUES ('staging', 'r1', 'load', 1, 't', '{}')",
            (),
        ),
        (
            "INSERT INTO approvals (env, release_id, approver, note, report_id, at) "
            "VALUES ('staging', 'r1', 'alice', NULL, 1, 't')",
            (),
        ),
    ]
    if target.url is None:
        (target.root / ".airlock").mkdir()
        with sqlite3.connect(target.root / ".airlock" / "state.db") as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(V1_SCHEMA)
            for sql, params in rows:
                db.execute(sql, params)
        return
    with psycopg.connect(target.url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {SCHEMA}")
        conn.execute(f"SET search_path = {SCHEMA}")
        for statement in STEPS[0]:
            conn.execute(POSTGRES.render(statement))
        conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL, upgraded_at TEXT)")
        conn.execute("INSERT INTO schema_version (version) VALUES (1)")
        for sql, params in rows:
            conn.execute(sql.replace("?", "%s"), params)


def test_a_version_1_store_is_upgraded_in_place(target: Target) -> None:
    """A store written before leases keeps every row; its lock is judged by pid as before."""
    assert SCHEMA_VERSION > 1
    make_v1_store(target)
    if target.url is None:  # reading it first upgrades a copy in memory, never the file
        database = target.root / ".airlock" / "state.db"
        before = database.read_bytes()
        with target.open(readonly=True) as reader:
            assert reader.schema_version == SCHEMA_VERSION
            assert reader.running("staging") is not None
        assert database.read_bytes() == before
    else:  # PostgreSQL will not read an older schema without upgrading it
        with pytest.raises(StateError, match="older than this Airlock"):
            target.open(readonly=True)
    with target.open() as store:
        assert store.schema_version == SCHEMA_VERSION
        running = store.running("staging")
        assert running is not None and running.plan == {"a": 1}
        assert running.lease_expires_at is None and running.lease_live is None
        assert running.holder_alive  # no lease: its pid, on this host, is alive
        assert store.lock("staging") == {
            "env": "staging",
            "deployment_id": "d-1",
            "holder": this_holder(),
            "pid": os.getpid(),
            "host": HOST,
            "since": "2024-05-01T10:00:00.000+00:00",
            "lease_expires_at": None,
            "lease_live": None,
        }
        assert [r["body"] for r in store.records("d-1")] == [{"type": "Begin"}]
        assert store.deployed("staging")["api"].instance_id == "i-0"
        assert [g.gate for g in store.gate_runs("r1")] == ["load"]
        assert [a.approver for a in store.approvals("staging", "r1")] == ["alice"]
        with pytest.raises(LockedError, match="its process is running"):
            begin(store, "d-2")
        store.finish("d-1", "succeeded")
        begin(store, "d-2")  # now with a lease
        assert store.running("staging").lease_live
    with target.open() as again:  # an upgraded store opens as it is
        assert again.schema_version == SCHEMA_VERSION


def test_the_backend_is_chosen_by_url_then_environment(
    tmp_path: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`url`, else AIRLOCK_STATE_URL, else SQLite in .airlock/; passwords are never shown."""
    assert state_location(tmp_path) == str(tmp_path / ".airlock" / "state.db")
    monkeypatch.setenv("AIRLOCK_STATE_URL", pg_url)
    password = pg_url.split(":")[2].split("@")[0]
    assert password and password not in state_location(tmp_path)
    with open_state(tmp_path) as store:
        assert type(store).__name__ == "PostgresStateStore" and password not in store.where
    with open_state(tmp_path, url="sqlite:other/state.db") as store:
        assert Path(store.where) == tmp_path / "other" / "state.db"
    with pytest.raises(StateError, match="unknown kind of state store") as unknown:
        open_state(tmp_path, url=f"mysql://root:{password}@db/x")
    assert password not in str(unknown.value)
    bad = pg_url.rsplit(":", 1)[0] + ":1/nothing"  # nobody listens on port 1
    with pytest.raises(StateError, match="cannot open the state database") as unreachable:
        open_state(tmp_path, url=bad)
    assert password not in str(unreachable.value)
    monkeypatch.setenv("AIRLOCK_LEASE_SECONDS", "2.5")
    with open_state(tmp_path, url="sqlite:x.db") as store:
        assert store.lease_seconds == 2.5
    monkeypatch.setenv("AIRLOCK_LEASE_SECONDS", "soon")
    with pytest.raises(StateError, match="AIRLOCK_LEASE_SECONDS"):
        open_state(tmp_path)


# -- a holder killed on another machine --------------------------------------------------------

#: Process 1: "another machine" (its host name says so) begins a deployment, journals, then waits
#: to be killed; its store renews the lease meanwhile.
HOLDER = textwrap.dedent(
    """
    import os, socket, sys, time
    from pathlib import Path

    socket.gethostname = lambda: "machine-a"
    from airlock.state import open_state

    store = open_state(Path.cwd(), url=os.environ.get("TEST_STATE_URL") or None)
    store.begin(deployment_id="d-1", env="staging", kind="deploy", release_id="r1",
                version="v1", previous_release_id=None, plan={})
    store.journal("d-1", "event", {"type": "Begin"})
    store.journal("d-1", "event", {"type": "Started", "service": "api"})
    print("began", flush=True)
    time.sleep(600)
    """
)


def test_a_killed_holder_elsewhere_is_alive_until_its_lease_expires_then_taken_over(
    target: Target,
) -> None:
    """SIGKILL the deploying process: another working copy waits out the lease, then resumes."""
    lease = 2.0
    copy_a = target.root / "copy-a"
    copy_b = target.root / "copy-b" if target.url else copy_a  # SQLite: one folder, one store
    copy_a.mkdir()
    copy_b.mkdir(exist_ok=True)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER],
        cwd=copy_a,
        env={**os.environ, "AIRLOCK_LEASE_SECONDS": str(lease), "TEST_STATE_URL": target.url or ""},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "began"
        resumer = open_state(copy_b, url=target.url)
        with resumer:
            time.sleep(2 * lease)  # the holder's heartbeat keeps its lease live
            alive = resumer.running("staging")
            assert alive is not None and alive.host == "machine-a" and alive.holder_alive
            assert alive.pid == holder.pid
            holder.send_signal(signal.SIGKILL)
            holder.wait()
            killed_at = time.monotonic()
            judged = resumer.running("staging")
            assert judged is not None and judged.holder_alive  # its lease runs on
            with pytest.raises(LockedError, match=r"machine-a .*lease is live"):
                resumer.take_over(judged)
            with pytest.raises(LockedError, match="lease is live"):
                begin(resumer, "d-2")
            dead_at = wait_until(
                lambda: not resumer.running("staging").holder_alive,
                timeout=3 * lease,
                what="the killed holder's lease expiry",
            )
            assert dead_at - killed_at <= lease + 0.5
            expired = resumer.running("staging")
            assert expired is not None
            resumer.take_over(expired)
            resumer.journal("d-1", "event", {"type": "Abort"})
            assert [r["body"]["type"] for r in resumer.records("d-1")] == [
                "Begin",
                "Started",
                "Abort",
            ]
            assert [r["seq"] for r in resumer.records("d-1")] == [1, 2, 3]
            resumer.finish("d-1", "rolled_back")
            assert resumer.lock("staging") is None
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()


# -- two working copies of one project, one PostgreSQL state store, the real CLI ---------------

#: The ``airlock`` command line, on a machine whose host name is ``machine-a``.
ON_MACHINE_A = (
    "import socket, sys; socket.gethostname = lambda: 'machine-a'; "
    "from airlock.cli import main; main(sys.argv[1:])"
)


def two_copies(make_project: ProjectFactory, ready: str) -> tuple[Path, Path]:
    """A project whose web service becomes ready at ``ready``, and a second working copy of it."""
    copy_a = make_project(
        {
            "api": {"config": {"VERSION": "api-1"}},
            "web": {
                "depends_on": ["api"],
                "ready": ready,
                "config": {"VERSION": "web-1", "NEEDS": "${services.api.url}"},
            },
        },
        gates={"bake": "0.5s", "ready_timeout": "60s"},
    )
    copy_b = copy_a.parent / "copy-b"
    shutil.copytree(copy_a, copy_b)
    make_project.projects.append(copy_b)
    return copy_a, copy_b


def spawn(copy: Path, *args: str, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", ON_MACHINE_A, *args],
        cwd=copy,
        env={**os.environ, "COLUMNS": "200", **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_a_second_working_copy_cannot_deploy_while_the_first_does(
    make_project: ProjectFactory, pg_url: str
) -> None:
    """Copy B's deploy is refused naming copy A's deploy: its holder, host and since when."""
    copy_a, copy_b = two_copies(make_project, ready="/never")  # A's deploy waits 60 s for web
    shared = {"AIRLOCK_STATE_URL": pg_url}
    for copy in (copy_a, copy_b):
        assert airlock("release", "build", "--version", "v1", cwd=copy, env=shared).returncode == 0
    deploying = spawn(copy_a, "deploy", "staging", env=shared)
    try:
        with open_state(copy_b, url=pg_url, readonly=True) as store:
            wait_until(lambda: store.lock("staging") is not None, 30, "copy A's lock")
            lock = store.lock("staging")
        assert lock is not None and lock["host"] == "machine-a" and lock["pid"] == deploying.pid
        refused = airlock("deploy", "staging", cwd=copy_b, env=shared)
        assert refused.returncode == 2, refused.stdout + refused.stderr
        message = one_line(refused.stderr)
        assert f"(pid {deploying.pid}) on host machine-a since {lock['since']}" in message
        assert lock["deployment_id"] in message and "lease is live" in message
        assert not (copy_b / ".airlock" / "envs").exists()  # B started nothing
    finally:
        deploying.send_signal(signal.SIGINT)  # rolls A's deploy back
        output, _ = deploying.communicate(timeout=60)
    assert deploying.returncode == 1, output
    with open_state(copy_b, url=pg_url) as store:
        assert [d.status for d in store.deployments("staging")] == ["rolled_back"]
        assert store.lock("staging") is None


def test_resume_from_another_working_copy_once_the_killed_deploys_lease_expired(
    make_project: ProjectFactory, pg_url: str
) -> None:
    """Copy A's CLI is SIGKILLed mid-deploy; copy B's `resume` waits out the lease, then rolls
    the deploy back. (B reaches A's runtime through a link to A's `.airlock/envs`, standing in
    for a runtime folder both copies are configured with.)"""
    copy_a, copy_b = two_copies(make_project, ready="/readyz")
    shared = {"AIRLOCK_STATE_URL": pg_url, "AIRLOCK_LEASE_SECONDS": "5"}
    for copy in (copy_a, copy_b):
        assert airlock("release", "build", "--version", "v1", cwd=copy, env=shared).returncode == 0
    first = airlock("deploy", "staging", "--format", "json", cwd=copy_a, env=shared)
    assert first.returncode == 0, first.stdout + first.stderr
    for copy in (copy_a, copy_b):
        document = make_project.read(copy)
        document["services"]["api"]["config"]["VERSION"] = "api-2"
        document["services"]["web"]["config"]["VERSION"] = "web-2"
        document["services"]["web"]["ready"] = "/never"  # web v2 waits: time to kill A
        make_project.write(copy, document)
        assert airlock("release", "build", "--version", "v2", cwd=copy, env=shared).returncode == 0
    assert {b.id for b in api.releases(copy_a)} == {b.id for b in api.releases(copy_b)}
    (copy_b / ".airlock" / "envs").symlink_to(copy_a / ".airlock" / "envs")
    endpoints = json.loads(first.stdout)["endpoints"]
    deploying = spawn(copy_a, "deploy", "staging", env=shared)
    log = copy_a / ".airlock" / "envs" / "staging" / "logs" / "web.log"
    wait_until(lambda: log.is_file() and "web-2 listening" in log.read_text(), 30, "web v2")
    deploying.kill()
    deploying.wait()
    assert httpx.get(endpoints["api"] + "/", timeout=5).json() == {"version": "api-2"}

    early = airlock("resume", "staging", cwd=copy_b, env=shared)
    assert early.returncode == 2 and "still running" in one_line(early.stderr), early.stderr
    with open_state(copy_b, url=pg_url, readonly=True) as store:  # nobody renews the lease
        wait_until(lambda: store.lock("staging")["lease_live"] is False, 8, "the lease's expiry")
    resumed = airlock("resume", "staging", "--format", "json", cwd=copy_b, env=shared)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert json.loads(resumed.stdout)["outcome"] == "rolled_back"
    assert httpx.get(endpoints["api"] + "/", timeout=5).json() == {"version": "api-1"}
    assert httpx.get(endpoints["web"] + "/", timeout=5).json() == {"version": "web-1"}
    with open_state(copy_a, url=pg_url, readonly=True) as store:
        assert store.lock("staging") is None
        assert [d.status for d in store.deployments("staging")] == ["rolled_back", "succeeded"]


def test_the_project_file_can_name_the_shared_store(
    make_project: ProjectFactory, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`state: {url: …}` in airlock.yaml, without a password (libpq's PGPASSWORD gives it);
    AIRLOCK_STATE_URL still overrides it."""
    monkeypatch.delenv("AIRLOCK_STATE_URL", raising=False)
    password = pg_url.split(":")[2].split("@")[0]
    monkeypatch.setenv("PGPASSWORD", password)
    project = make_project({"api": {}})
    document = make_project.read(project)
    document["state"] = {"url": pg_url.replace(f":{password}@", "@")}
    make_project.write(project, document)
    api.build(project, "v1")
    assert [b.version for b in api.releases(project)] == ["v1"]
    result = airlock("history", "staging", "--format", "json", cwd=project)
    assert result.returncode == 0, result.stderr
    assert api.deploy(project, "staging").outcome == "succeeded"
    assert not (project / ".airlock" / "state.db").exists()  # it went to PostgreSQL
    with open_state(project, url=pg_url) as store:
        assert store.current_release("staging") is not None
    monkeypatch.setenv("AIRLOCK_STATE_URL", f"sqlite:{project}/override.db")
    with open_state(project) as store:
        assert store.current_release("staging") is None
