"""INC18: encrypted backups could not be restored once they passed 2 GB.

Backups are streamed and encrypted in chunks; every backup Airlock takes is restored and verified
in a scratch database before it counts; size never matters (memory stays flat — see the slow test
in test_db_backup.py and benchmarks/backup.py).
"""

from __future__ import annotations

import base64
import json
import secrets
from pathlib import Path

import psycopg

from airlock.db.server import ServerInfo

from ..conftest import airlock, databases, full_dump

KEY = base64.b64encode(secrets.token_bytes(32)).decode()


def fill(url: str) -> None:
    with psycopg.connect(url) as conn:
        conn.execute("CREATE TABLE events (id bigint PRIMARY KEY, body text NOT NULL)")
        conn.execute(
            "INSERT INTO events SELECT g, md5(random()::text) || md5(random()::text) "
            "|| md5(random()::text) || md5(random()::text) FROM generate_series(1, 40000) g"
        )


def test_every_backup_is_restored_and_verified_before_it_counts(
    pg_url: str, pg_server: ServerInfo, tmp_path: Path
) -> None:
    """The backup is encrypted in many chunks, verified in a scratch db, and restores equal."""
    fill(pg_url)
    output = tmp_path / "events.albk"
    env = {"BACKUP_KEY": KEY}
    made = airlock(
        "db",
        "backup",
        "--database-url",
        pg_url,
        "--output",
        str(output),
        "--key-env",
        "BACKUP_KEY",
        "--format",
        "json",
        cwd=tmp_path,
        env=env,
    )
    assert made.returncode == 0, made.stderr
    sidecar = json.loads(output.with_suffix(".json").read_text())
    assert sidecar["verified"] is True
    assert output.stat().st_size > 2 * (1 << 20)  # several 1 MiB chunks
    assert b"CREATE TABLE" not in output.read_bytes()  # nothing readable
    assert KEY not in output.with_suffix(".json").read_text() + made.stdout + made.stderr
    assert not [
        d
        for d in databases(pg_server)
        if d not in {"postgres", "template0", "template1"} and d != pg_url.rsplit("/", 1)[1]
    ]

    fresh = pg_url.rsplit("/", 1)[0] + "/restored_inc18"
    with psycopg.connect(pg_server.url(), autocommit=True) as admin:
        admin.execute("CREATE DATABASE restored_inc18")
    try:
        restored = airlock(
            "db",
            "restore",
            str(output),
            "--database-url",
            fresh,
            "--key-env",
            "BACKUP_KEY",
            cwd=tmp_path,
            env=env,
        )
        assert restored.returncode == 0, restored.stderr
        assert full_dump(fresh) == full_dump(pg_url)
    finally:
        with psycopg.connect(pg_server.url(), autocommit=True) as admin:
            admin.execute("DROP DATABASE IF EXISTS restored_inc18 WITH (FORCE)")


def test_a_damaged_backup_or_wrong_key_is_refused_and_changes_nothing(
    pg_url: str, tmp_path: Path
) -> None:
    """A flipped byte, a truncated file or the wrong key: a clear error, the database untouched."""
    fill(pg_url)
    output = tmp_path / "events.albk"
    env = {"BACKUP_KEY": KEY}
    assert (
        airlock(
            "db",
            "backup",
            "--database-url",
            pg_url,
            "--output",
            str(output),
            "--key-env",
            "BACKUP_KEY",
            cwd=tmp_path,
            env=env,
        ).returncode
        == 0
    )
    with psycopg.connect(pg_url) as conn:
        conn.execute("DELETE FROM events WHERE id > 39990")
    before = full_dump(pg_url)
    data = bytearray(output.read_bytes())

    damaged = tmp_path / "damaged.albk"
    data[len(data) // 2] ^= 0xFF
    damaged.write_bytes(bytes(data))
    damaged.with_suffix(".json").write_text(output.with_suffix(".json").read_text())
    truncated = tmp_path / "truncated.albk"
    truncated.write_bytes(output.read_bytes()[: len(data) // 3])
    truncated.with_suffix(".json").write_text(output.with_suffix(".json").read_text())

    for path, needle, key_env in (
        (damaged, "chunk", {"BACKUP_KEY": KEY}),
        (truncated, "truncated", {"BACKUP_KEY": KEY}),
        (output, "another key", {"BACKUP_KEY": base64.b64encode(secrets.token_bytes(32)).decode()}),
    ):
        result = airlock(
            "db",
            "restore",
            str(path),
            "--database-url",
            pg_url,
            "--force",
            "--key-env",
            "BACKUP_KEY",
            cwd=tmp_path,
            env=key_env,
        )
        assert result.returncode in (1, 2), result.stderr
        assert needle in result.stderr, result.stderr
        assert "Traceback" not in result.stderr
        assert full_dump(pg_url) == before

    refused = airlock(
        "db",
        "restore",
        str(output),
        "--database-url",
        pg_url,
        "--key-env",
        "BACKUP_KEY",
        cwd=tmp_path,
        env=env,
    )
    assert refused.returncode == 2
    assert "10 rows removed" in refused.stderr and "--force" in refused.stderr
    assert full_dump(pg_url) == before
