"""Schema snapshots, fingerprints, diffs and table statistics, against a real PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from airlock.db.connect import connect
from airlock.db.fingerprint import (
    SchemaDiff,
    describe_change,
    diff,
    fingerprint,
    schema_snapshot,
    table_stats,
)

SCHEMA = """
CREATE TYPE mood AS ENUM ('happy', 'sad');
CREATE TABLE accounts (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    email text NOT NULL UNIQUE,
    status text NOT NULL DEFAULT 'new',
    mood mood
);
CREATE INDEX accounts_status ON accounts (status);
CREATE VIEW happy_accounts AS SELECT id, email FROM accounts WHERE mood = 'happy';
CREATE TABLE airlock_schema_history (id serial PRIMARY KEY, version text NOT NULL);
"""


@pytest.fixture
def conn(pg_url: str) -> Iterator[psycopg.Connection[Any]]:
    with connect(pg_url, autocommit=True) as connection:
        connection.execute(SCHEMA)
        yield connection


def changed_by(conn: psycopg.Connection[Any], statement: str) -> SchemaDiff:
    before = schema_snapshot(conn)
    conn.execute(statement)
    return diff(before, schema_snapshot(conn))


def test_snapshot_is_stable_across_calls(conn: psycopg.Connection[Any]) -> None:
    """Two snapshots of an unchanged database are equal and have the same fingerprint."""
    first, second = schema_snapshot(conn), schema_snapshot(conn)
    assert first == second
    assert fingerprint(first) == fingerprint(second)
    assert diff(first, second).empty
    assert "table public.accounts" in first
    assert "index public.accounts_pkey" in first
    assert "constraint public.accounts.accounts_email_key" in first


def test_snapshot_does_not_change_the_session(conn: psycopg.Connection[Any]) -> None:
    """Taking a snapshot leaves the connection's search_path and time zone as they were."""
    conn.execute("SET search_path = public; SET TimeZone = 'Europe/Paris'")
    schema_snapshot(conn)
    table_stats(conn)
    assert conn.execute("SHOW search_path").fetchone() == ("public",)
    assert conn.execute("SHOW TimeZone").fetchone() == ("Europe/Paris",)


def test_detects_an_added_column(conn: psycopg.Connection[Any]) -> None:
    """An added column changes the table and is described as added, with its type."""
    change = changed_by(conn, "ALTER TABLE accounts ADD COLUMN age integer")
    assert change.changed == ["table public.accounts"]
    assert change.details["table public.accounts"] == ["column age added (integer)"]


def test_detects_a_changed_default(conn: psycopg.Connection[Any]) -> None:
    """A changed column default is described with its old and new expression."""
    change = changed_by(conn, "ALTER TABLE accounts ALTER COLUMN status SET DEFAULT 'pending'")
    assert change.details["table public.accounts"] == [
        "column status: default 'new'::text → 'pending'::text"
    ]


def test_detects_a_changed_type_readably(conn: psycopg.Connection[Any]) -> None:
    """A changed column type reads ``column status: type text → character varying(20)``."""
    change = changed_by(conn, "ALTER TABLE accounts ALTER COLUMN status TYPE varchar(20)")
    assert "~ table public.accounts" in change.lines()
    assert "    column status: type text → character varying(20)" in change.lines()


def test_detects_a_dropped_index(conn: psycopg.Connection[Any]) -> None:
    """A dropped index is reported as removed."""
    change = changed_by(conn, "DROP INDEX accounts_status")
    assert change.removed == ["index public.accounts_status"]
    assert change.lines() == ["- index public.accounts_status"]


def test_detects_a_new_function(conn: psycopg.Connection[Any]) -> None:
    """A new function is reported as added, keyed by its argument types."""
    change = changed_by(
        conn, "CREATE FUNCTION bump(x integer) RETURNS integer LANGUAGE sql AS 'SELECT x + 1'"
    )
    assert change.added == ["function public.bump(integer)"]
    assert change.lines() == ["+ function public.bump(integer)"]


def test_detects_a_changed_function_body(conn: psycopg.Connection[Any]) -> None:
    """A changed function body is described by its first differing line."""
    conn.execute("CREATE FUNCTION two() RETURNS integer LANGUAGE sql AS 'SELECT 2'")
    change = changed_by(
        conn, "CREATE OR REPLACE FUNCTION two() RETURNS integer LANGUAGE sql AS 'SELECT 3'"
    )
    [detail] = change.details["function public.two()"]
    assert detail.startswith("definition changed (line ")
    assert "SELECT 2" in detail and "SELECT 3" in detail


def test_detects_a_changed_view(conn: psycopg.Connection[Any]) -> None:
    """A view whose query changed is reported as changed."""
    change = changed_by(
        conn,
        "CREATE OR REPLACE VIEW happy_accounts AS "
        "SELECT id, email FROM accounts WHERE mood = 'sad'",
    )
    assert change.changed == ["view public.happy_accounts"]
    assert change.details["view public.happy_accounts"][0].startswith("definition")


def test_detects_an_added_enum_label(conn: psycopg.Connection[Any]) -> None:
    """A label added to an enum is described with the labels in order."""
    change = changed_by(conn, "ALTER TYPE mood ADD VALUE 'meh' BEFORE 'sad'")
    assert change.details["type public.mood"] == ["labels: [happy, sad] → [happy, meh, sad]"]


def test_ignores_history_tables_and_row_data(conn: psycopg.Connection[Any]) -> None:
    """The history table and rows do not take part in the fingerprint."""
    before = fingerprint(schema_snapshot(conn))
    snapshot = schema_snapshot(conn)
    assert not [key for key in snapshot if "airlock_schema_history" in key]
    conn.execute("INSERT INTO accounts (email) VALUES ('a@example.org')")
    conn.execute("ALTER TABLE airlock_schema_history ADD COLUMN applied_at timestamptz")
    conn.execute("CREATE TABLE airlock_schema_baseline (snapshot jsonb)")
    assert fingerprint(schema_snapshot(conn)) == before
    included = schema_snapshot(conn, exclude_tables=())
    assert "table public.airlock_schema_history" in included
    assert "sequence public.airlock_schema_history_id_seq" in included


def test_ignores_objects_that_belong_to_extensions(conn: psycopg.Connection[Any]) -> None:
    """An extension appears with its version; its functions and types do not."""
    change = changed_by(conn, "CREATE EXTENSION citext")
    assert change.added == ["extension citext"]


def test_snapshot_is_json_and_sorted(conn: psycopg.Connection[Any]) -> None:
    """Sequences are described without their current value, in plain JSON types."""
    conn.execute("INSERT INTO accounts (email) VALUES ('a@example.org'), ('b@example.org')")
    sequence = schema_snapshot(conn)["sequence public.accounts_id_seq"]
    assert sequence["type"] == "bigint"
    assert sequence["owned_by"] == "public.accounts.id"
    assert "last_value" not in sequence


def test_describe_change_lists_each_field() -> None:
    """Changed fields are listed by name with old and new values, long texts summarised."""
    lines = describe_change(
        {"valid": True, "definition": "CREATE INDEX a ON t (x)"},
        {"valid": False, "definition": "CREATE INDEX a ON t (y)"},
    )
    assert lines == [
        "definition: CREATE INDEX a ON t (x) → CREATE INDEX a ON t (y)",
        "valid: yes → no",
    ]


def test_table_stats_count_rows_and_ignore_physical_order(pg_url: str) -> None:
    """Row counts are exact and the checksum depends on the rows, not on their order."""
    with connect(pg_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE a (id int, note text, doc json)")
        conn.execute("CREATE TABLE b (id int, note text, doc json)")
        conn.execute("INSERT INTO a SELECT i, 'n' || i, '{}' FROM generate_series(1, 500) i")
        conn.execute("INSERT INTO b SELECT i, 'n' || i, '{}' FROM generate_series(500, 1, -1) i")
        stats = table_stats(conn)
        assert stats["public.a"].rows == stats["public.b"].rows == 500
        assert stats["public.a"].checksum == stats["public.b"].checksum
        conn.execute("UPDATE b SET note = 'changed' WHERE id = 250")
        changed = table_stats(conn)
        assert changed["public.b"].rows == 500
        assert changed["public.b"].checksum != stats["public.b"].checksum
        assert changed["public.a"] == stats["public.a"]


def test_table_stats_see_duplicates_and_hashable_tables(pg_url: str) -> None:
    """Rows hashed by value still count duplicates, and an added duplicate changes the sum."""
    with connect(pg_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (id int, amount numeric)")
        conn.execute("INSERT INTO t VALUES (1, 1.5), (1, 1.5)")
        before = table_stats(conn)["public.t"]
        conn.execute("INSERT INTO t VALUES (1, 1.5)")
        after = table_stats(conn)["public.t"]
        assert (before.rows, after.rows) == (2, 3)
        assert before.checksum != after.checksum
