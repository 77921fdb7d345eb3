"""Shared fixtures: temporary projects built from real files, cleaned up with everything they
started."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import psycopg
import pytest
import yaml

from airlock.db.server import EmbeddedServer, ServerInfo
from airlock.runtimes.local import stop_environment

pytest_plugins = ["tests.fleet_hosts"]

REPO = Path(__file__).resolve().parents[1]
WEBAPP = Path(__file__).resolve().parent / "fixtures" / "webapp.py"
PHOENIX = REPO / "examples" / "phoenix"


class ProjectFactory:
    """Writes ``airlock.yaml`` projects into a temporary folder and stops what they start."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.projects: list[Path] = []

    def __call__(
        self,
        services: dict[str, dict[str, Any]],
        *,
        environments: dict[str, Any] | None = None,
        gates: dict[str, Any] | None = None,
        name: str = "shop",
    ) -> Path:
        project = self.root / name
        (project / "app").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(WEBAPP, project / "app" / "webapp.py")
        full: dict[str, Any] = {}
        for service, spec in services.items():
            full[service] = {"run": "python app/webapp.py", "source": ["app/webapp.py"], **spec}
        document = {
            "project": name,
            "services": full,
            "environments": environments
            or {
                # each environment reads its own secrets: STAGING_X, PRODUCTION_X
                "staging": {"secrets": {"prefix": "STAGING_"}},
                "production": {"secrets": {"prefix": "PRODUCTION_"}},
            },
            "gates": gates or {"bake": "0.5s", "ready_timeout": "3s"},
        }
        self.write(project, document)
        self.projects.append(project)
        return project

    @staticmethod
    def write(project: Path, document: dict[str, Any]) -> None:
        (project / "airlock.yaml").write_text(yaml.safe_dump(document, sort_keys=False))

    @staticmethod
    def read(project: Path) -> dict[str, Any]:
        data = yaml.safe_load((project / "airlock.yaml").read_text())
        assert isinstance(data, dict)
        return data

    def cleanup(self) -> None:
        for project in self.projects:
            envs = project / ".airlock" / "envs"
            if envs.is_dir():
                for env in envs.iterdir():
                    stop_environment(env)
                    if (env / "postgres").is_dir():
                        EmbeddedServer(env / "postgres").destroy()


@pytest.fixture(autouse=True, scope="session")
def _audit_keys_stay_in_the_test_session(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[None]:
    """Audit signing keys are created in a folder of the test session, never the user's own."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_CONFIG_HOME", str(tmp_path_factory.mktemp("config")))
        patch.delenv("AIRLOCK_AUDIT_KEY", raising=False)
        patch.delenv("AIRLOCK_ACTOR", raising=False)
        yield


@pytest.fixture
def make_project(tmp_path: Path) -> Iterator[ProjectFactory]:
    factory = ProjectFactory(tmp_path)
    try:
        yield factory
    finally:
        factory.cleanup()


@pytest.fixture
def phoenix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A copy of the Phoenix example (v1), with its secret set; stopped afterwards."""
    project = tmp_path / "phoenix"
    shutil.copytree(PHOENIX, project, ignore=shutil.ignore_patterns("releases", "__pycache__"))
    monkeypatch.setenv("STAGING_PHOENIX_JWT_SECRET", "phoenix-test-secret-3f9a1c")
    monkeypatch.setenv("PRODUCTION_PHOENIX_JWT_SECRET", "phoenix-prod-secret-7e2b4d")
    factory = ProjectFactory(tmp_path)
    factory.projects.append(project)
    try:
        yield project
    finally:
        factory.cleanup()


def apply_overlay(project: Path, version: str) -> None:
    """Turn a Phoenix copy into ``version`` by copying that version's changed files over it."""
    source = PHOENIX / "releases" / version
    for path in source.rglob("*"):
        if path.is_file() and "__pycache__" not in path.parts:
            target = project / path.relative_to(source)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)


def airlock(
    *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run the real ``airlock`` command line in a child process."""
    return subprocess.run(
        [sys.executable, "-m", "airlock.cli", *args],
        cwd=cwd,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def running_from(project: Path, release_id: str) -> list[psutil.Process]:
    """Live service processes whose working folder is that release's sealed bundle."""
    return processes_under(project / ".airlock" / "releases" / release_id)


def processes_under(folder: Path) -> list[psutil.Process]:
    """Live processes whose command line or working folder is inside ``folder``."""
    found = []
    for proc in psutil.process_iter(["cmdline", "cwd"]):
        try:
            cmdline = " ".join(proc.info["cmdline"] or [])
            cwd = proc.info["cwd"] or ""
        except (psutil.Error, TypeError):
            continue
        if proc.pid == os.getpid() or proc.status() == psutil.STATUS_ZOMBIE:
            continue
        if str(folder) in cmdline or cwd.startswith(str(folder)):
            found.append(proc)
    return found


# -- PostgreSQL --------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerInfo]:
    """A real embedded PostgreSQL server for the test session (fsync off: throwaway data)."""
    server = EmbeddedServer(tmp_path_factory.mktemp("pg") / "home", fast=True)
    info = server.ensure_running()
    try:
        yield info
    finally:
        server.destroy()


@pytest.fixture
def pg_url(pg_server: ServerInfo) -> Iterator[str]:
    """A fresh, empty database on the session's server; dropped afterwards."""
    name = f"t_{secrets.token_hex(6)}"
    with psycopg.connect(pg_server.url(), autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield pg_server.url(name)
    finally:
        with psycopg.connect(pg_server.url(), autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def full_dump(url: str) -> str:
    """pg_dump of a whole database (schema and data) as text, to compare before and after."""
    from airlock.db.backup import pg_tool
    from airlock.db.connect import password_of

    password = password_of(url) or ""
    result = subprocess.run(
        [
            str(pg_tool("pg_dump")),
            "--no-owner",
            "--restrict-key=airlocktest",
            "-d",
            url.replace(f":{password}@", "@", 1),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "PGPASSWORD": password},
        check=True,
    )
    return result.stdout


def databases(server: ServerInfo) -> list[str]:
    with psycopg.connect(server.url(), autocommit=True) as conn:
        return [r[0] for r in conn.execute("SELECT datname FROM pg_database ORDER BY 1")]
