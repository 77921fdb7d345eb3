"""The embedded PostgreSQL server: owned by Airlock, reused, and never left behind."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import psutil
import psycopg

from airlock.db.server import EmbeddedServer
from airlock.db.target import embedded_server

from .conftest import ProjectFactory, airlock


def postmasters(server: EmbeddedServer) -> list[psutil.Process]:
    """Live postgres server processes whose data folder is this server's."""
    found = []
    for proc in psutil.process_iter(["name", "cmdline"]):
        try:
            if proc.info["name"] == "postgres" and str(server.data_dir) in " ".join(
                proc.info["cmdline"] or []
            ):
                found.append(proc)
        except psutil.Error:
            continue
    return found


def db_project(make_project: ProjectFactory) -> Path:
    project = make_project({"api": {}}, environments={"staging": {"database": {"embedded": True}}})
    (project / "db").mkdir()
    (project / "db" / "V1__t.sql").write_text("CREATE TABLE t (id bigint PRIMARY KEY);\n")
    document = make_project.read(project)
    document["database"] = {"migrations": "db"}
    make_project.write(project, document)
    return project


def test_the_server_is_started_on_demand_and_reused(make_project: ProjectFactory) -> None:
    """The first command starts the server; later ones reuse it; env stop stops it."""
    project = db_project(make_project)
    assert airlock("db", "migrate", "staging", cwd=project).returncode == 0
    server = embedded_server(project, "staging")
    first = server.running()
    assert first is not None
    assert airlock("db", "status", "staging", cwd=project).returncode == 0
    again = server.running()
    assert again is not None and again.pid == first.pid
    assert len(postmasters(server)) == 1
    assert airlock("env", "stop", "staging", cwd=project).returncode == 0
    assert server.running() is None and postmasters(server) == []


def test_a_killed_airlock_leaves_nothing_behind_after_the_next_command(
    make_project: ProjectFactory,
) -> None:
    """SIGKILL mid-command: the next command adopts the orphan server, env stop removes it."""
    project = db_project(make_project)
    (project / "db" / "V2__slow.sql").write_text("SELECT pg_sleep(30);\n")
    process = subprocess.Popen(
        [sys.executable, "-m", "airlock.cli", "db", "migrate", "staging", "--no-lint"],
        cwd=project,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=os.environ.copy(),
    )
    server = embedded_server(project, "staging")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        info = server.running()
        if info is not None:
            with psycopg.connect(info.url(), autocommit=True) as conn:
                sleeping = conn.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep%'"
                ).fetchone()
            if sleeping and sleeping[0]:
                break
        time.sleep(0.1)
    else:
        raise AssertionError("the migration never started")
    process.send_signal(signal.SIGKILL)
    process.wait()
    orphan = server.running()
    assert orphan is not None  # the server outlived the killed process, as expected

    status = airlock("db", "status", "staging", "--format", "json", cwd=project)
    assert status.returncode == 0, status.stderr
    assert '"V2__slow.sql"' in status.stdout  # rolled back with the killed session: pending
    adopted = server.running()
    assert adopted is not None and adopted.pid == orphan.pid
    assert len(postmasters(server)) == 1

    assert airlock("env", "stop", "staging", cwd=project).returncode == 0
    assert postmasters(server) == []


def test_running_as_root_touches_no_parent_folder(tmp_path: Path) -> None:
    """Parent folders of the state folder keep their permissions (unlike chmod-ing them open)."""
    home = tmp_path / "private" / "state" / "postgres"
    home.parent.mkdir(parents=True)
    (tmp_path / "private").chmod(0o700)
    before = {
        p: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path, tmp_path / "private", home.parent)
    }
    server = EmbeddedServer(home, fast=True)
    try:
        info = server.ensure_running()
        with psycopg.connect(info.url()) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        after = {p: stat.S_IMODE(p.stat().st_mode) for p in before}
        assert after == before
        assert stat.S_IMODE(server.state_file.stat().st_mode) == 0o600
    finally:
        server.destroy()
    assert server.running() is None
