"""The release that runs now is started on the migrated clone before the migrations run: a
rollback to it must be safe, or the go/no-go's migrations gate fails (expand/contract, proven).

A real PostgreSQL, real service processes that query it, a real git repository.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import textwrap
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import psycopg
import pytest
import yaml

from airlock import api
from airlock.bundle import find_release
from airlock.rollback_proof import CODE, UNPROVEN, likely_migration

ENV = "staging"

SERVICE = textwrap.dedent(
    '''
    """Answers GET /users from the database, reading the column COLUMN."""
    import json
    import os
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    import psycopg

    URL, COLUMN = os.environ["DATABASE_URL"], os.environ["COLUMN"]


    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            try:
                with psycopg.connect(URL) as conn:
                    if self.path == "/users":
                        rows = conn.execute(f"SELECT {COLUMN} FROM users ORDER BY id").fetchall()
                        body, status = json.dumps([r[0] for r in rows]), 200
                    else:
                        conn.execute("SELECT 1")
                        body, status = "ok", 200
            except psycopg.Error as exc:
                body, status = f"database error: {exc}".strip(), 500
                print(body, flush=True)
            data = body.encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass


    ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
    '''
)


def git(root: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=root, check=True, capture_output=True)


@pytest.fixture(autouse=True)
def _password_in_this_test_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """with_secret() puts the database's password in the environment: for one test only."""
    monkeypatch.delenv("PROOF_DB_PASSWORD", raising=False)


def with_secret(url: str) -> str:
    """``url`` with its password read from the secret DB_PASSWORD (set in the environment)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    os.environ["PROOF_DB_PASSWORD"] = unquote(parts.password)
    netloc = f"{parts.username}:${{secret:DB_PASSWORD}}@{parts.hostname}:{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


def write_project(root: Path, pg_url: str, column: str) -> None:
    document = {
        "project": "proof",
        "database": {"migrations": "migrations"},
        "services": {
            "users": {
                "run": "python app/users.py",
                "source": ["app/users.py"],
                "endpoints": ["GET /users"],
                "config": {"DATABASE_URL": "${database.url}", "COLUMN": column},
            }
        },
        "environments": {
            ENV: {"secrets": {"prefix": "PROOF_"}, "database": {"url": with_secret(pg_url)}}
        },
        "gates": {"bake": "0s", "ready_timeout": "20s"},
    }
    (root / "airlock.yaml").write_text(yaml.safe_dump(document, sort_keys=False))


def project_on_v1(tmp_path: Path, pg_url: str) -> Path:
    """v1 deployed: a users table with an email column, a service that selects it."""
    root = tmp_path / "proof"
    (root / "app").mkdir(parents=True)
    (root / "migrations").mkdir()
    (root / "app" / "users.py").write_text(SERVICE)
    (root / "migrations" / "V1__users.sql").write_text(
        "CREATE TABLE users (id bigint PRIMARY KEY, email text);\n"
    )
    write_project(root, pg_url, "email")
    (root / ".gitignore").write_text(".airlock/*\n")
    git(root, "init", "-q")
    git(root, "add", "-A")
    git(root, "-c", "user.name=t", "-c", "user.email=t@x", "commit", "-qm", "v1")
    api.build(root, "v1")
    first = api.deploy(root, ENV)
    assert first.outcome == "succeeded", first.reason
    with psycopg.connect(pg_url) as conn:
        conn.execute("INSERT INTO users VALUES (1, 'a@example.org')")
    return root


def seal_v2(root: Path, pg_url: str, migration: str, sql: str, column: str) -> None:
    (root / "migrations" / migration).write_text(sql)
    write_project(root, pg_url, column)
    git(root, "add", "-A")
    git(root, "-c", "user.name=t", "-c", "user.email=t@x", "commit", "-qm", "v2")
    api.build(root, "v2")


def migrations_gate(root: Path) -> dict[str, Any]:
    report = api.gonogo(root, ENV, "v2")
    (gate,) = [g for g in report.gates if g.gate == "migrations"]
    return gate.to_dict()


def test_a_rename_the_running_release_reads_fails_the_migrations_gate(
    tmp_path: Path, pg_url: str
) -> None:
    root = project_on_v1(tmp_path, pg_url)
    try:
        seal_v2(
            root,
            pg_url,
            "V2__rename_email.sql",
            "ALTER TABLE users RENAME COLUMN email TO email_address;\n",
            "email_address",
        )
        gate = migrations_gate(root)
        assert gate["status"] == "fail", gate
        proofs = [f for f in gate["findings"] if f["code"] == CODE]
        assert len(proofs) == 1, gate["findings"]
        message = proofs[0]["message"]
        assert "v1" in message and "users GET /users" in message, message
        assert "500" in message and "email" in message, message
        assert "most likely V2__rename_email.sql" in message, message
        proof = gate["evidence"]["rollback_proof"]
        assert proof["release"] == "v1" and proof["ok"] is False
        # the real database is untouched, v1 still serves it, and no sandbox is left behind
        with psycopg.connect(pg_url) as conn:
            columns = {
                r[0]
                for r in conn.execute(
                    "SELECT column_name FROM information_schema.columns WHERE table_name = 'users'"
                )
            }
        assert columns == {"id", "email"}
        assert api.status(root, ENV)["state"] == "running"
        assert not list((root / ".airlock" / "sandboxes").glob("*"))
    finally:
        api.stop_env(root, ENV)


def test_an_additive_migration_is_proven_safe(tmp_path: Path, pg_url: str) -> None:
    root = project_on_v1(tmp_path, pg_url)
    try:
        seal_v2(
            root,
            pg_url,
            "V2__add_name.sql",
            "ALTER TABLE users ADD COLUMN name text;\n",
            "name",
        )
        gate = migrations_gate(root)
        assert gate["status"] == "pass", gate
        assert "v1 still serves on the migrated schema" in str(gate["summary"])
        proof = gate["evidence"]["rollback_proof"]
        requests = {e["request"]: e["status"] for e in proof["exchanges"]}
        assert requests == {"GET /readyz": 200, "GET /users": 200}
        # what answered is data (a copy of the environment's): it is never kept
        assert "a@example.org" not in json.dumps(gate)
    finally:
        api.stop_env(root, ENV)


def test_a_running_release_whose_bundle_is_gone_is_said_unproven_not_skipped(
    tmp_path: Path, pg_url: str
) -> None:
    root = project_on_v1(tmp_path, pg_url)
    try:
        seal_v2(
            root,
            pg_url,
            "V2__add_name.sql",
            "ALTER TABLE users ADD COLUMN name text;\n",
            "name",
        )
        v1 = find_release(root, "v1").path
        shutil.move(v1, tmp_path / "v1-elsewhere")
        gate = migrations_gate(root)
        (finding,) = [f for f in gate["findings"] if f["code"] == UNPROVEN]
        assert finding["severity"] == "warning"
        assert "not in this working copy" in finding["message"]
        shutil.move(tmp_path / "v1-elsewhere", v1)
    finally:
        api.stop_env(root, ENV)


def test_the_likely_migration_is_the_newest_naming_what_failed() -> None:
    migrations = [
        ("V2__a.sql", "ALTER TABLE users ADD COLUMN email_verified boolean;"),
        ("V3__b.sql", "ALTER TABLE users RENAME COLUMN email TO address;"),
        ("V4__c.sql", "CREATE INDEX CONCURRENTLY ON orders (id);"),
    ]
    error = 'database error: column "email" does not exist'
    assert likely_migration(error, migrations) == "V3__b.sql"
    assert likely_migration("500: internal error", migrations) is None
