"""Splitting and classifying migration SQL with PostgreSQL's parser: no database involved."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from airlock.db.sql import (
    IgnoreComment,
    MigrationSyntaxError,
    Statement,
    explicit_transaction_control,
    is_transactional,
    normalise,
    plan_execution,
    split,
)
from airlock.errors import UsageError

# -- splitting -------------------------------------------------------------------------------

FUNCTION = """\
CREATE FUNCTION touch() RETURNS trigger AS $body$
BEGIN
  NEW.updated_at := now(); -- not a statement end
  RETURN NEW;
END;
$body$ LANGUAGE plpgsql;
SELECT 1;
"""

SPLITS = [
    pytest.param(
        FUNCTION,
        [(1, "CreateFunctionStmt", "CREATE FUNCTION touch()"), (7, "SelectStmt", "SELECT 1")],
        id="dollar-quoted body with semicolons",
    ),
    pytest.param(
        "SELECT 'a;b', E'c\\';d', \"odd;name\" FROM t;\nSELECT 2;",
        [(1, "SelectStmt", "SELECT 'a;b'"), (2, "SelectStmt", "SELECT 2")],
        id="semicolons in strings and identifiers",
    ),
    pytest.param(
        "-- a comment; with a semicolon\n/* block; /* nested; */ still */\nSELECT 1;\n"
        "-- trailing comment only",
        [(3, "SelectStmt", "SELECT 1")],
        id="comments",
    ),
    pytest.param(
        "\n\nCREATE TABLE t (\n  id int PRIMARY KEY,\n  name text\n);\n\n\nDROP TABLE t;\n",
        [(3, "CreateStmt", "CREATE TABLE t ("), (9, "DropStmt", "DROP TABLE t")],
        id="multi-line statements",
    ),
    pytest.param(
        "-- Grüße, ünïcödé ✓ and 日本語\nCOMMENT ON TABLE t IS 'naïve ☃;';\nSELECT 'é';\n",
        [(2, "CommentStmt", "COMMENT ON TABLE t IS 'naïve ☃;'"), (3, "SelectStmt", "SELECT 'é'")],
        id="non-ascii text before statements",
    ),
    pytest.param(
        "SELECT 1;\r\nSELECT 2;\r\n\r\nSELECT 3;",
        [
            (1, "SelectStmt", "SELECT 1"),
            (2, "SelectStmt", "SELECT 2"),
            (4, "SelectStmt", "SELECT 3"),
        ],
        id="crlf line ends",
    ),
    pytest.param(
        "\ufeffSELECT 1;",
        [(1, "SelectStmt", "SELECT 1")],
        id="byte order mark",
    ),
    pytest.param(
        "SELECT 1; SELECT 2 -- no final semicolon\n",
        [(1, "SelectStmt", "SELECT 1"), (1, "SelectStmt", "SELECT 2")],
        id="two on a line, no final semicolon",
    ),
]


@pytest.mark.parametrize(("sql", "expected"), SPLITS)
def test_split_finds_statements_lines_and_kinds(
    sql: str, expected: list[tuple[int, str, str]]
) -> None:
    """Statements are split by the real parser, with 1-based start lines and node kinds."""
    statements = split(sql)
    assert [(s.line, s.kind) for s in statements] == [(line, kind) for line, kind, _ in expected]
    for statement, (_, _, start) in zip(statements, expected, strict=True):
        assert statement.text.startswith(start)


def test_statement_text_is_the_statement_alone() -> None:
    """Text runs from the first token to the last: no leading comments, no semicolon."""
    [first, second] = split("-- intro\nSELECT 1 -- one\n;\n/* two */ SELECT 2 ;")
    assert first.text == "SELECT 1"
    assert second.text == "SELECT 2"
    assert second.line == 4


def test_dollar_quoted_body_is_kept_whole() -> None:
    """A function body's inner semicolons stay inside the one statement's text."""
    [function, _] = split(FUNCTION)
    assert "RETURN NEW;\nEND;\n$body$ LANGUAGE plpgsql" in function.text


def test_comment_only_and_empty_text_have_no_statements() -> None:
    """Whitespace, comments and lone semicolons produce no statements."""
    assert split("") == []
    assert split("-- nothing here\n/* nor here */\n;;\n") == []


def test_statements_compare_without_their_parse_nodes() -> None:
    """Two splits of the same text are equal, and the parse node is not in the repr."""
    assert split("SELECT 1;") == split("SELECT 1;")
    assert "node" not in repr(split("SELECT 1;")[0])


# -- syntax errors ---------------------------------------------------------------------------


SYNTAX_ERRORS = [
    pytest.param(
        "SELECT 1;\n\nCREAT TABLE x ();\n", 3, 1, 'syntax error at or near "CREAT"', id="typo"
    ),
    pytest.param(
        "-- ☃☃☃\nSELECT 'é', 'ü' FRO t;\n", 2, 21, 'syntax error at or near "t"', id="non-ascii"
    ),
    pytest.param("SELECT 1;\nSELECT (\n", 2, 9, "syntax error at end of input", id="end of input"),
    pytest.param(
        "SELECT $$never closed;\n", 1, 8, "unterminated dollar-quoted string", id="dollar quote"
    ),
]


@pytest.mark.parametrize(("sql", "line", "column", "message"), SYNTAX_ERRORS)
def test_syntax_error_names_file_line_column_and_postgres_message(
    sql: str, line: int, column: int, message: str
) -> None:
    """A parse error raises MigrationSyntaxError with file:line:column and PostgreSQL's words."""
    with pytest.raises(MigrationSyntaxError) as caught:
        split(sql, file="migrations/V3__x.sql")
    error = caught.value
    assert isinstance(error, UsageError) and error.exit_code == 2
    assert (error.line, error.column) == (line, column)
    assert str(error).startswith(f"migrations/V3__x.sql:{line}:{column}: {message}")
    assert error.hint and "PostgreSQL" in error.hint


# -- transactions ----------------------------------------------------------------------------

NOT_TRANSACTIONAL = [
    "CREATE INDEX CONCURRENTLY i ON t (a)",
    "CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS i ON t (a)",
    "DROP INDEX CONCURRENTLY i",
    "REINDEX INDEX CONCURRENTLY i",
    "REINDEX (CONCURRENTLY) TABLE t",
    "REINDEX SCHEMA public",
    "REINDEX DATABASE app",
    "REINDEX SYSTEM",
    "VACUUM",
    "VACUUM (FULL, ANALYZE) t",
    "CREATE DATABASE other",
    "DROP DATABASE other",
    "ALTER SYSTEM SET work_mem = '64MB'",
    "CREATE TABLESPACE fast LOCATION '/ssd'",
    "DROP TABLESPACE fast",
    "CLUSTER",
    "ALTER DATABASE app SET TABLESPACE fast",
    "ALTER TABLE t DETACH PARTITION t_2020 CONCURRENTLY",
    "COMMIT PREPARED 'x'",
    "DISCARD ALL",
    "CREATE SUBSCRIPTION s CONNECTION 'host=a' PUBLICATION p",
    "ALTER SUBSCRIPTION s REFRESH PUBLICATION",
    "DROP SUBSCRIPTION s",
]

TRANSACTIONAL = [
    "CREATE INDEX i ON t (a)",
    "DROP INDEX i",
    "REINDEX TABLE t",
    "ANALYZE t",
    "CLUSTER t USING i",
    "ALTER TYPE mood ADD VALUE 'meh'",
    "ALTER DATABASE app SET work_mem = '64MB'",
    "ALTER TABLE t DETACH PARTITION t_2020",
    "REFRESH MATERIALIZED VIEW CONCURRENTLY m",
    "CREATE SUBSCRIPTION s CONNECTION 'host=a' PUBLICATION p WITH (create_slot = false)",
    "DISCARD PLANS",
    "BEGIN",
]


@pytest.mark.parametrize("sql", NOT_TRANSACTIONAL)
def test_statements_postgres_refuses_in_a_transaction_are_not_transactional(sql: str) -> None:
    """Statements PostgreSQL will not run inside a transaction block are marked so."""
    [statement] = split(sql)
    assert statement.transactional is False


@pytest.mark.parametrize("sql", TRANSACTIONAL)
def test_ordinary_statements_are_transactional(sql: str) -> None:
    """Look-alikes that PostgreSQL runs inside a transaction block stay transactional."""
    [statement] = split(sql)
    assert statement.transactional is True


def test_explicit_transaction_control_is_reported() -> None:
    """BEGIN, COMMIT, ROLLBACK, SAVEPOINT and friends written in a file are listed."""
    statements = split(
        "BEGIN;\nCREATE TABLE t (id int);\nSAVEPOINT a;\nROLLBACK TO a;\nCOMMIT;\n"
        "START TRANSACTION;\nEND;\nSELECT 1;"
    )
    found = explicit_transaction_control(statements)
    assert [s.line for s in found] == [1, 3, 4, 5, 6, 7]
    assert explicit_transaction_control(split("SELECT 1; CREATE TABLE t (id int);")) == []


def test_plan_execution_groups_transactional_runs_and_isolates_the_rest() -> None:
    """Consecutive transactional statements share a run; each other statement runs alone."""
    statements = split(
        "CREATE TABLE a (id int);\nCREATE TABLE b (id int);\n"
        "CREATE INDEX CONCURRENTLY i ON a (id);\nVACUUM a;\n"
        "INSERT INTO a VALUES (1);\nCREATE INDEX CONCURRENTLY j ON b (id);"
    )
    plan = plan_execution(statements)
    assert [(transactional, [s.line for s in run]) for transactional, run in plan] == [
        (True, [1, 2]),
        (False, [3]),
        (False, [4]),
        (True, [5]),
        (False, [6]),
    ]
    assert plan_execution([]) == []


def test_is_transactional_needs_every_statement() -> None:
    """A file is transactional only when all of its statements are."""
    assert is_transactional(split("CREATE TABLE a (id int); INSERT INTO a VALUES (1);"))
    assert not is_transactional(split("CREATE TABLE a (id int); VACUUM a;"))
    assert is_transactional([])


# -- ignore comments -------------------------------------------------------------------------


def _ignores(sql: str) -> list[frozenset[str]]:
    return [statement.ignores for statement in split(sql)]


IGNORES = [
    pytest.param(
        "-- airlock:ignore lint.a the table is empty\nSELECT 1;\nSELECT 2;",
        [{"lint.a"}, set()],
        id="line above applies to the next statement only",
    ),
    pytest.param(
        "SELECT 1; -- airlock:ignore lint.a fine here\nSELECT 2;",
        [{"lint.a"}, set()],
        id="end of the first line",
    ),
    pytest.param(
        "CREATE TABLE t ( -- airlock:ignore lint.a reason\n  id int\n);",
        [{"lint.a"}],
        id="end of the first line of a multi-line statement",
    ),
    pytest.param(
        "CREATE TABLE t (\n  id int -- airlock:ignore lint.a reason\n);",
        [set()],
        id="not on a later line of the statement",
    ),
    pytest.param(
        "-- airlock:ignore lint.a, lint.b two reasons\n-- a plain comment\n"
        "-- airlock:ignore lint.c another reason\nSELECT 1;",
        [{"lint.a", "lint.b", "lint.c"}],
        id="several codes, several comment lines",
    ),
    pytest.param(
        "-- airlock:ignore lint.a too far away\n\nSELECT 1;",
        [set()],
        id="a blank line detaches the comment",
    ),
    pytest.param(
        "SELECT 1; SELECT 2; -- airlock:ignore lint.a for the second\n",
        [set(), {"lint.a"}],
        id="trailing comment belongs to the last statement before it",
    ),
    pytest.param(
        "SELECT $$\n-- airlock:ignore lint.a inside a string\n$$;\nSELECT 2;",
        [set(), set()],
        id="not a comment inside a dollar-quoted string",
    ),
    pytest.param(
        "SELECT f(\n  -- airlock:ignore lint.a inside the call\n  1); SELECT 2;",
        [set(), set()],
        id="not a comment inside the previous statement",
    ),
]


@pytest.mark.parametrize(("sql", "expected"), IGNORES)
def test_ignore_comments_apply_to_one_statement(sql: str, expected: list[set[str]]) -> None:
    """An ignore comment silences codes for the statement directly below it or on its line."""
    assert _ignores(sql) == [frozenset(codes) for codes in expected]


def test_ignore_comment_keeps_its_reason_and_line() -> None:
    """The words after the codes are the reason; no words means no reason."""
    [statement] = split(
        "-- airlock:ignore lint.a, lint.b backfilled in V7\n-- airlock:ignore lint.c\n"
        "-- airlock:ignore because it is fine\nSELECT 1;"
    )
    assert statement.ignore_comments == (
        IgnoreComment(line=1, codes=frozenset({"lint.a", "lint.b"}), reason="backfilled in V7"),
        IgnoreComment(line=2, codes=frozenset({"lint.c"}), reason=""),
        IgnoreComment(line=3, codes=frozenset(), reason="because it is fine"),
    )


# -- normalise -------------------------------------------------------------------------------


def test_normalise_makes_line_end_and_trailing_space_variants_equal() -> None:
    """CRLF, CR, trailing blanks, trailing empty lines and a BOM do not change the result."""
    canonical = "CREATE TABLE t (\n  id int\n);\n"
    variants = [
        canonical,
        "CREATE TABLE t (\r\n  id int\r\n);\r\n",
        "CREATE TABLE t (\r  id int\r);",
        "\ufeffCREATE TABLE t (   \n  id int\t\n);\n\n\n",
        "CREATE TABLE t (\n  id int\n);  \n   \n",
    ]
    assert {normalise(v) for v in variants} == {canonical}
    assert normalise("") == "\n"
    assert normalise("a\n\n  b") == "a\n\n  b\n"  # leading space and inner blank lines stay


@given(st.text(alphabet=st.sampled_from(list("ab \t\r\n\ufeff;é")), max_size=40))
def test_normalise_is_idempotent_and_ends_with_one_newline(text: str) -> None:
    """Normalising twice changes nothing, and the result ends with exactly one newline."""
    once = normalise(text)
    assert normalise(once) == once
    assert once.endswith("\n") and not once.endswith("\n\n")
    unix = text.replace("\r", "")
    assert normalise(unix.replace("\n", "\r\n")) == normalise(unix)


def test_statement_defaults_are_empty() -> None:
    """A Statement built by hand needs no ignores or node."""
    statement = Statement("SELECT 1", 1, "SelectStmt", True)
    assert statement.ignores == frozenset() and statement.ignore_comments == ()
