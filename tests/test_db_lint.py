"""The migration linter: each rule fires on the dangerous SQL and stays quiet on the safe form."""

from __future__ import annotations

import re
from collections.abc import Collection
from typing import NamedTuple

import pytest

from airlock.checks import Severity
from airlock.db.lint import RULES, lint, lint_files
from airlock.db.sql import MigrationSyntaxError, split

from .conftest import REPO


def codes(
    sql: str,
    *,
    existing_tables: Collection[str] | None = None,
    new_tables: Collection[str] = (),
    existing_columns: dict[str, str] | None = None,
) -> list[str]:
    findings = lint(
        split(sql),
        file="V1__m.sql",
        existing_tables=existing_tables,
        new_tables=new_tables,
        existing_columns=existing_columns,
    )
    return [finding.code for finding in findings]


# Each rule: SQL that triggers it on the existing table `users` ...
TRIGGERS = [
    ("lint.index-not-concurrent", "CREATE INDEX users_email ON users (email);"),
    ("lint.index-not-concurrent", "CREATE UNIQUE INDEX users_email ON public.users (email);"),
    ("lint.index-not-concurrent", "DROP INDEX users_email;"),
    ("lint.index-not-concurrent", "REINDEX TABLE users;"),
    ("lint.volatile-default", "ALTER TABLE users ADD COLUMN token uuid DEFAULT gen_random_uuid();"),
    ("lint.volatile-default", "ALTER TABLE users ADD COLUMN r int DEFAULT (random() * 10)::int;"),
    (
        "lint.volatile-default",
        "ALTER TABLE users ADD COLUMN at timestamptz DEFAULT clock_timestamp();",
    ),
    ("lint.volatile-default", "ALTER TABLE users ADD COLUMN n bigint DEFAULT nextval('s');"),
    ("lint.volatile-default", "ALTER TABLE users ADD COLUMN n bigserial;"),
    (
        "lint.volatile-default",
        "ALTER TABLE users ADD COLUMN n bigint GENERATED ALWAYS AS IDENTITY;",
    ),
    ("lint.not-null-without-check", "ALTER TABLE users ALTER COLUMN email SET NOT NULL;"),
    (
        "lint.not-null-without-check",
        "ALTER TABLE users ADD CONSTRAINT email_nn CHECK (email IS NOT NULL) NOT VALID;\n"
        "ALTER TABLE users ALTER COLUMN email SET NOT NULL;",
    ),
    ("lint.not-null-without-check", "ALTER TABLE users ADD CONSTRAINT nn NOT NULL email;"),
    ("lint.not-null-without-default", "ALTER TABLE users ADD COLUMN plan text NOT NULL;"),
    (
        "lint.not-null-without-default",
        "ALTER TABLE users ADD COLUMN plan text NOT NULL DEFAULT NULL;",
    ),
    (
        "lint.constraint-not-valid",
        "ALTER TABLE users ADD CONSTRAINT users_org FOREIGN KEY (org_id) REFERENCES orgs (id);",
    ),
    ("lint.constraint-not-valid", "ALTER TABLE users ADD CONSTRAINT age CHECK (age >= 0);"),
    ("lint.constraint-not-valid", "ALTER TABLE users ADD COLUMN org_id int REFERENCES orgs;"),
    (
        "lint.constraint-not-valid",
        "ALTER TABLE users ADD CONSTRAINT age CHECK (age >= 0) NOT VALID;\n"
        "ALTER TABLE users VALIDATE CONSTRAINT age;",
    ),
    (
        "lint.constraint-not-valid",
        "ALTER TABLE users ADD FOREIGN KEY (org_id) REFERENCES orgs NOT VALID;\n"
        "ALTER TABLE users VALIDATE CONSTRAINT users_org_id_fkey;",
    ),
    ("lint.unique-constraint-without-index", "ALTER TABLE users ADD CONSTRAINT u UNIQUE (email);"),
    ("lint.unique-constraint-without-index", "ALTER TABLE users ADD PRIMARY KEY (id);"),
    ("lint.unique-constraint-without-index", "ALTER TABLE users ADD COLUMN code text UNIQUE;"),
    ("lint.table-rewrite", "ALTER TABLE users ALTER COLUMN id TYPE bigint;"),
    ("lint.table-rewrite", "ALTER TABLE users ALTER COLUMN age TYPE int USING age::int;"),
    ("lint.table-rewrite", "ALTER TABLE users SET LOGGED;"),
    ("lint.table-rewrite", "ALTER TABLE users SET UNLOGGED;"),
    ("lint.table-rewrite", "ALTER TABLE users SET TABLESPACE fast;"),
    ("lint.table-rewrite", "VACUUM FULL users;"),
    ("lint.table-rewrite", "VACUUM (FULL);"),
    ("lint.table-rewrite", "CLUSTER users USING users_pkey;"),
    ("lint.table-rewrite", "CLUSTER;"),
    (
        "lint.table-rewrite",
        "ALTER TABLE users ADD COLUMN d int GENERATED ALWAYS AS (age * 2) STORED;",
    ),
    ("lint.breaking-change", "DROP TABLE users;"),
    ("lint.breaking-change", "DROP TABLE IF EXISTS audit.users CASCADE;"),
    ("lint.breaking-change", "DROP VIEW active_users;"),
    ("lint.breaking-change", "ALTER TABLE users DROP COLUMN email;"),
    ("lint.breaking-change", "ALTER TABLE users RENAME COLUMN email TO mail;"),
    ("lint.breaking-change", "ALTER TABLE users RENAME TO people;"),
    ("lint.breaking-change", "ALTER VIEW active_users RENAME TO live_users;"),
    ("lint.timestamp-without-time-zone", "CREATE TABLE t (id int PRIMARY KEY, at timestamp);"),
    (
        "lint.timestamp-without-time-zone",
        "ALTER TABLE users ADD COLUMN seen timestamp without time zone;",
    ),
    ("lint.timestamp-without-time-zone", "ALTER TABLE users ALTER COLUMN seen TYPE timestamp(3);"),
    ("lint.no-primary-key", "CREATE TABLE events (name text, at timestamptz);"),
    ("lint.no-primary-key", "CREATE TABLE copy (LIKE users);"),
    ("lint.no-primary-key", "CREATE TABLE snapshot AS SELECT * FROM users;"),
    ("lint.ignore-without-reason", "-- airlock:ignore lint.breaking-change\nDROP TABLE users;"),
    ("lint.ignore-without-reason", "-- airlock:ignore because I said so\nSELECT 1;"),
    ("lint.index-not-concurrent", "REINDEX SCHEMA public;"),
    (
        "lint.volatile-default",
        "ALTER TABLE users ADD COLUMN prefs jsonb DEFAULT default_prefs();",
    ),
    ("lint.volatile-default", "ALTER TABLE users ADD COLUMN code text DEFAULT app.lower('X');"),
    (
        "lint.volatile-default",
        "ALTER TABLE users ADD COLUMN code text DEFAULT md5(random()::text);",
    ),
    (
        "lint.unique-constraint-without-index",
        "ALTER TABLE users ADD CONSTRAINT no_overlap EXCLUDE USING gist (during WITH &&);",
    ),
    (
        "lint.table-rewrite",
        "ALTER TABLE users ALTER COLUMN total SET EXPRESSION AS (price * qty);",
    ),
    ("lint.breaking-change", "TRUNCATE users CASCADE;"),
    ("lint.breaking-change", "DROP DATABASE app;"),
    (
        "lint.concurrent-in-transaction",
        "BEGIN;\nCREATE INDEX CONCURRENTLY users_email ON users (email);\nCOMMIT;",
    ),
    (
        "lint.concurrent-in-transaction",
        "START TRANSACTION;\nALTER TABLE users ADD COLUMN nick text;\n"
        "DROP INDEX CONCURRENTLY users_email;\nCOMMIT;",
    ),
    ("lint.detach-partition-not-concurrent", "ALTER TABLE events DETACH PARTITION events_2023;"),
    (
        "lint.domain-constraint",
        "ALTER DOMAIN positive ADD CONSTRAINT positive_check CHECK (VALUE > 0);",
    ),
    ("lint.domain-constraint", "ALTER DOMAIN positive VALIDATE CONSTRAINT positive_check;"),
    ("lint.domain-constraint", "ALTER DOMAIN app.positive SET NOT NULL;"),
]

# ... and the safe form of the same change, which must not trigger it.
SAFE = [
    ("lint.index-not-concurrent", "CREATE INDEX CONCURRENTLY users_email ON users (email);"),
    ("lint.index-not-concurrent", "DROP INDEX CONCURRENTLY users_email;"),
    ("lint.index-not-concurrent", "REINDEX TABLE CONCURRENTLY users;"),
    ("lint.volatile-default", "ALTER TABLE users ADD COLUMN token uuid;"),
    ("lint.volatile-default", "ALTER TABLE users ADD COLUMN plan text DEFAULT 'free';"),
    ("lint.volatile-default", "ALTER TABLE users ADD COLUMN at timestamptz DEFAULT now();"),
    ("lint.volatile-default", "ALTER TABLE users ADD COLUMN x bigint DEFAULT txid_current();"),
    (
        "lint.volatile-default",
        "ALTER TABLE users ALTER COLUMN token SET DEFAULT gen_random_uuid();",
    ),
    (
        "lint.not-null-without-check",
        "ALTER TABLE users VALIDATE CONSTRAINT email_nn;\n"
        "ALTER TABLE users ALTER COLUMN email SET NOT NULL;\n"
        "ALTER TABLE users DROP CONSTRAINT email_nn;",
    ),
    (
        "lint.not-null-without-check",
        "ALTER TABLE users ADD CONSTRAINT nn NOT NULL email NOT VALID;",
    ),
    (
        "lint.not-null-without-default",
        "ALTER TABLE users ADD COLUMN plan text NOT NULL DEFAULT 'x';",
    ),
    ("lint.not-null-without-default", "ALTER TABLE users ADD COLUMN plan text;"),
    (
        "lint.constraint-not-valid",
        "ALTER TABLE users ADD CONSTRAINT users_org FOREIGN KEY (org_id) REFERENCES orgs (id) "
        "NOT VALID;",
    ),
    (
        "lint.constraint-not-valid",
        "ALTER TABLE users ADD CONSTRAINT age CHECK (age >= 0) NOT VALID;",
    ),
    ("lint.constraint-not-valid", "ALTER TABLE users VALIDATE CONSTRAINT age;"),
    (
        "lint.unique-constraint-without-index",
        "ALTER TABLE users ADD CONSTRAINT u UNIQUE USING INDEX users_email;",
    ),
    (
        "lint.unique-constraint-without-index",
        "ALTER TABLE users ADD CONSTRAINT users_pkey PRIMARY KEY USING INDEX users_id;",
    ),
    ("lint.table-rewrite", "ALTER TABLE users ALTER COLUMN email SET DEFAULT '';"),
    ("lint.table-rewrite", "VACUUM users;"),
    ("lint.table-rewrite", "ALTER TABLE users ADD COLUMN d int GENERATED ALWAYS AS (age * 2);"),
    ("lint.breaking-change", "ALTER TABLE users ADD COLUMN mail text;"),
    ("lint.breaking-change", "ALTER TABLE users RENAME CONSTRAINT a TO b;"),
    ("lint.breaking-change", "DROP INDEX CONCURRENTLY users_email;"),
    (
        "lint.timestamp-without-time-zone",
        "CREATE TABLE t (id int PRIMARY KEY, at timestamptz, b timestamp with time zone);",
    ),
    (
        "lint.no-primary-key",
        "CREATE TABLE events (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY);",
    ),
    ("lint.no-primary-key", "CREATE TABLE events (a int, b int, PRIMARY KEY (a, b));"),
    ("lint.no-primary-key", "CREATE TABLE copy (LIKE users INCLUDING ALL);"),
    ("lint.no-primary-key", "CREATE TABLE p2024 PARTITION OF events FOR VALUES IN (2024);"),
    ("lint.no-primary-key", "CREATE TEMP TABLE scratch (a int);"),
    (
        "lint.no-primary-key",
        "CREATE TABLE snapshot AS SELECT * FROM users;\nALTER TABLE snapshot ADD PRIMARY KEY (id);",
    ),
    (
        "lint.ignore-without-reason",
        "-- airlock:ignore lint.breaking-change the table was unused since 2.3\nDROP TABLE users;",
    ),
    ("lint.index-not-concurrent", "REINDEX SYSTEM app;"),
    ("lint.volatile-default", "ALTER TABLE users ADD COLUMN code text DEFAULT lower('ABC');"),
    ("lint.volatile-default", "ALTER TABLE users ADD COLUMN n int DEFAULT 2 + 2;"),
    (
        "lint.volatile-default",
        "ALTER TABLE users ADD COLUMN at timestamptz DEFAULT pg_catalog.now();",
    ),
    (
        "lint.volatile-default",
        "ALTER TABLE users ADD COLUMN at timestamptz DEFAULT CURRENT_TIMESTAMP;",
    ),
    (
        "lint.volatile-default",
        "ALTER TABLE users ADD COLUMN at timestamp DEFAULT timezone('utc', now());",
    ),
    ("lint.volatile-default", "ALTER TABLE users ADD COLUMN meta jsonb DEFAULT '{}'::jsonb;"),
    ("lint.table-rewrite", "ALTER TABLE users ALTER COLUMN total DROP EXPRESSION;"),
    ("lint.breaking-change", "TRUNCATE users;"),
    (
        "lint.concurrent-in-transaction",
        "CREATE INDEX CONCURRENTLY users_email ON users (email);",
    ),
    (
        "lint.concurrent-in-transaction",
        "BEGIN;\nALTER TABLE users ADD COLUMN nick text;\nCOMMIT;\n"
        "CREATE INDEX CONCURRENTLY users_nick ON users (nick);",
    ),
    (
        "lint.detach-partition-not-concurrent",
        "ALTER TABLE events DETACH PARTITION events_2023 CONCURRENTLY;",
    ),
    (
        "lint.detach-partition-not-concurrent",
        "ALTER TABLE events DETACH PARTITION events_2023 FINALIZE;",
    ),
    (
        "lint.domain-constraint",
        "ALTER DOMAIN positive ADD CONSTRAINT positive_check CHECK (VALUE > 0) NOT VALID;",
    ),
    ("lint.domain-constraint", "ALTER DOMAIN positive DROP NOT NULL;"),
    (
        "lint.domain-constraint",
        "CREATE DOMAIN positive AS int CHECK (VALUE > 0);\n"
        "ALTER DOMAIN positive ADD CONSTRAINT below_100 CHECK (VALUE < 100);\n"
        "ALTER DOMAIN positive SET NOT NULL;",
    ),
]


@pytest.mark.parametrize(("code", "sql"), TRIGGERS)
def test_rule_fires_on_dangerous_sql(code: str, sql: str) -> None:
    """Each rule reports its code for SQL that locks, rewrites or breaks an existing table."""
    assert code in codes(sql)


@pytest.mark.parametrize(("code", "sql"), SAFE)
def test_rule_is_quiet_on_the_safe_form(code: str, sql: str) -> None:
    """The documented safe alternative of each rule does not trigger it."""
    assert code not in codes(sql)


def test_every_rule_has_a_trigger_and_a_safe_form() -> None:
    """The tables above cover every rule in both directions."""
    assert {code for code, _ in TRIGGERS} == set(RULES)
    assert {code for code, _ in SAFE} == set(RULES)


# Rules about the design of a table, not about locking it, and statements that fail whatever
# the table: they apply to new tables too.
DESIGN_RULES = {
    "lint.timestamp-without-time-zone",
    "lint.no-primary-key",
    "lint.ignore-without-reason",
    "lint.concurrent-in-transaction",
}
LOCKING = [sql for code, sql in TRIGGERS if code not in DESIGN_RULES and "users" in sql]


@pytest.mark.parametrize("sql", LOCKING)
def test_tables_created_earlier_in_the_file_are_exempt(sql: str) -> None:
    """A table created earlier in the same file is new, so locking rules ignore it."""
    create = (
        "CREATE TABLE users (id int PRIMARY KEY, email text, age int, org_id int,"
        " seen timestamptz, during tstzrange, price int, qty int,"
        " total int GENERATED ALWAYS AS (price * qty) STORED);\n"
        "CREATE INDEX users_email ON users (email);\nCREATE VIEW active_users AS SELECT 1;\n"
    )
    assert codes(create + sql) == []


def test_tables_from_earlier_pending_migrations_are_exempt() -> None:
    """new_tables and earlier files given to lint_files make a table new."""
    sql = "CREATE INDEX i ON users (email);\nALTER TABLE users DROP COLUMN email;"
    assert codes(sql, new_tables=["users"]) == []
    assert codes(sql, new_tables=["public.users"]) == []
    findings = lint_files(
        [
            ("V1__users.sql", "CREATE TABLE users (id int PRIMARY KEY, email text);"),
            ("V2__i.sql", sql),
        ]
    )
    assert findings == []


def test_existing_tables_decide_what_exists() -> None:
    """With a known table list, only the tables in it are existing; None means all are."""
    sql = "CREATE INDEX i ON users (email);"
    assert codes(sql) == ["lint.index-not-concurrent"]
    assert codes(sql, existing_tables=["users"]) == ["lint.index-not-concurrent"]
    assert codes(sql, existing_tables=["public.users"]) == ["lint.index-not-concurrent"]
    assert codes(sql, existing_tables=["orders"]) == []
    assert codes("CREATE INDEX i ON audit.users (email);", existing_tables=["billing.users"]) == []


def test_new_table_in_another_schema_does_not_exempt_the_existing_one() -> None:
    """Creating audit.users does not make public.users new."""
    sql = "CREATE TABLE audit.users (id int PRIMARY KEY);\nCREATE INDEX i ON public.users (id);"
    assert codes(sql) == ["lint.index-not-concurrent"]


def test_renamed_new_table_stays_new() -> None:
    """A table created and renamed in the release is still new under its new name."""
    sql = (
        "CREATE TABLE users_new (id int PRIMARY KEY);\nALTER TABLE users_new RENAME TO accounts;\n"
        "CREATE INDEX i ON accounts (id);"
    )
    assert codes(sql) == []


def test_columns_added_in_the_release_may_be_changed() -> None:
    """A column added by a pending migration may be renamed, dropped or retyped."""
    sql = (
        "ALTER TABLE users ADD COLUMN nick text;\nALTER TABLE users RENAME COLUMN nick TO handle;\n"
        "ALTER TABLE users ALTER COLUMN handle TYPE varchar(20);\n"
        "ALTER TABLE users DROP COLUMN handle;"
    )
    assert codes(sql) == []


# -- ignore comments -------------------------------------------------------------------------

IGNORED = [
    pytest.param(
        "-- airlock:ignore lint.index-not-concurrent the table has 10 rows\n"
        "CREATE INDEX i ON users (email);",
        [],
        id="with a reason: silenced",
    ),
    pytest.param(
        "-- airlock:ignore lint.index-not-concurrent\nCREATE INDEX i ON users (email);",
        ["lint.ignore-without-reason"],
        id="without a reason: silenced, but the comment is reported",
    ),
    pytest.param(
        "-- airlock:ignore lint.table-rewrite wrong code\nCREATE INDEX i ON users (email);",
        ["lint.index-not-concurrent"],
        id="a different code does not silence",
    ),
    pytest.param(
        "-- airlock:ignore lint.index-not-concurrent small table\n"
        "CREATE INDEX i ON users (email);\nCREATE INDEX j ON users (age);",
        ["lint.index-not-concurrent"],
        id="only the statement below",
    ),
    pytest.param(
        "CREATE INDEX i ON users (email); -- airlock:ignore lint.index-not-concurrent tiny\n",
        [],
        id="at the end of the statement's line",
    ),
    pytest.param(
        "-- airlock:ignore lint.volatile-default, lint.not-null-without-default seeded below\n"
        "ALTER TABLE users ADD COLUMN token uuid NOT NULL DEFAULT gen_random_uuid();",
        [],
        id="several codes",
    ),
]


@pytest.mark.parametrize(("sql", "expected"), IGNORED)
def test_ignore_comments_silence_only_their_codes(sql: str, expected: list[str]) -> None:
    """An ignore comment silences the codes it names for its statement, and needs a reason."""
    assert codes(sql) == expected


def test_ignore_without_reason_points_at_the_comment() -> None:
    """The ignore-without-reason warning carries the comment's line."""
    sql = "SELECT 1;\n\n-- airlock:ignore lint.breaking-change\nDROP TABLE users;"
    [finding] = lint(split(sql), file="V2__drop.sql")
    assert finding.code == "lint.ignore-without-reason"
    assert finding.severity is Severity.WARNING
    assert (finding.location and finding.location.line) == 3


# -- findings --------------------------------------------------------------------------------


def test_finding_carries_location_hint_severity_and_statement() -> None:
    """A finding names file and line, the rule's severity and safe alternative, and the SQL."""
    sql = "CREATE TABLE t (id int PRIMARY KEY);\n\n-- big one\nCREATE INDEX i\n  ON users (email);"
    [finding] = lint(split(sql), file="db/V4__index.sql")
    rule = RULES["lint.index-not-concurrent"]
    assert finding.code == rule.code and finding.severity is rule.severity is Severity.ERROR
    assert finding.location is not None
    assert (finding.location.file, finding.location.line) == ("db/V4__index.sql", 4)
    assert finding.hint == rule.safe and "CONCURRENTLY" in finding.hint
    assert finding.evidence == {"statement": "CREATE INDEX i\n  ON users (email)"}
    assert "users" in finding.message


def test_evidence_is_cut_at_200_characters() -> None:
    """Long statements are quoted by their first 200 characters."""
    columns = ", ".join(f"c{i}" for i in range(100))
    [finding] = lint(split(f"CREATE INDEX i ON users ({columns});"), file="f.sql")
    assert len(finding.evidence["statement"]) == 200


def test_rules_are_complete() -> None:
    """Every rule has a lint.* code, a severity, and all its texts."""
    for code, rule in RULES.items():
        assert code == rule.code and code.startswith("lint.")
        assert rule.summary and rule.why and rule.safe
    warnings = {code for code, rule in RULES.items() if rule.severity is Severity.WARNING}
    assert warnings == {
        "lint.timestamp-without-time-zone",
        "lint.no-primary-key",
        "lint.ignore-without-reason",
    }


def test_every_rule_is_documented() -> None:
    """docs/migration-lint.md has a section for each rule, with a SQL example and a way out."""
    docs = (REPO / "docs" / "migration-lint.md").read_text()
    sections = re.split(r"^## ", docs, flags=re.MULTILINE)[1:]
    documented = {section.split("\n", 1)[0].strip().strip("`") for section in sections}
    assert set(RULES) <= documented
    for section in sections:
        if section.split("\n", 1)[0].strip().strip("`") in RULES:
            assert "```sql" in section and "airlock:ignore" in section


# -- column types ----------------------------------------------------------------------------

RETYPES = [
    ("character varying(50)", "varchar(100)", False),
    ("character varying(50)", "varchar(50)", False),
    ("character varying(50)", "varchar", False),
    ("character varying(50)", "text", False),
    ("text", "varchar", False),
    ("numeric(10,2)", "numeric(12,2)", False),
    ("numeric(10,2)", "numeric", False),
    ("cidr", "inet", False),
    ("timestamp(3) with time zone", "timestamptz(6)", False),
    ("character varying(50)", "varchar(20)", True),
    ("text", "varchar(20)", True),
    ("numeric(10,2)", "numeric(12,3)", True),
    ("numeric", "numeric(10,2)", True),
    ("integer", "bigint", True),
    ("timestamp without time zone", "timestamptz", True),
    ("character varying(50)[]", "varchar(100)[]", True),
]


@pytest.mark.parametrize(("old", "new", "rewrites"), RETYPES)
def test_known_column_types_recognise_binary_coercible_widenings(
    old: str, new: str, rewrites: bool
) -> None:
    """With the column's current type known, only real rewrites are reported."""
    sql = f"ALTER TABLE users ALTER COLUMN c TYPE {new};"
    found = codes(sql, existing_columns={"users.c": old})
    assert ("lint.table-rewrite" in found) is rewrites


def test_using_clause_always_rewrites() -> None:
    """A USING clause converts every value, so it is reported even for a widening."""
    sql = "ALTER TABLE users ALTER COLUMN c TYPE varchar(100) USING trim(c);"
    assert "lint.table-rewrite" in codes(sql, existing_columns={"users.c": "varchar(50)"})


def test_unknown_column_type_is_reported_with_the_widening_exceptions() -> None:
    """Without the current type, a type change is reported and the message says why."""
    [finding] = lint(split("ALTER TABLE users ALTER COLUMN c TYPE text;"), file="f.sql")
    assert finding.code == "lint.table-rewrite" and "binary-coercible" in finding.message


# -- NOT NULL and NOT VALID across migrations ------------------------------------------------


def test_not_null_pattern_across_migrations_is_clean() -> None:
    """CHECK NOT VALID in one migration, VALIDATE and SET NOT NULL in the next: no findings."""
    findings = lint_files(
        [
            (
                "V1__check.sql",
                "ALTER TABLE users ADD CONSTRAINT email_nn CHECK (email IS NOT NULL) NOT VALID;",
            ),
            (
                "V2__not_null.sql",
                "ALTER TABLE users VALIDATE CONSTRAINT email_nn;\n"
                "ALTER TABLE users ALTER COLUMN email SET NOT NULL;\n"
                "ALTER TABLE users DROP CONSTRAINT email_nn;",
            ),
        ]
    )
    assert findings == []


def test_check_on_another_column_does_not_cover_set_not_null() -> None:
    """A validated check on one column does not excuse SET NOT NULL on another."""
    findings = lint_files(
        [
            ("V1.sql", "ALTER TABLE users ADD CONSTRAINT a_nn CHECK (a IS NOT NULL) NOT VALID;"),
            (
                "V2.sql",
                "ALTER TABLE users VALIDATE CONSTRAINT a_nn;\n"
                "ALTER TABLE users ALTER COLUMN b SET NOT NULL;",
            ),
        ]
    )
    assert [(f.code, f.location and f.location.line) for f in findings] == [
        ("lint.not-null-without-check", 2)
    ]


def test_validating_in_the_same_transaction_is_reported_once() -> None:
    """Adding NOT VALID and validating in one file flags the VALIDATE, not the SET NOT NULL."""
    sql = (
        "ALTER TABLE users ADD CONSTRAINT email_nn CHECK (email IS NOT NULL) NOT VALID;\n"
        "ALTER TABLE users VALIDATE CONSTRAINT email_nn;\n"
        "ALTER TABLE users ALTER COLUMN email SET NOT NULL;"
    )
    findings = lint(split(sql), file="f.sql")
    assert [(f.code, f.location and f.location.line) for f in findings] == [
        ("lint.constraint-not-valid", 2)
    ]


def test_lint_files_reports_syntax_errors() -> None:
    """A pending file that does not parse stops linting with its file and line."""
    with pytest.raises(MigrationSyntaxError, match=r"V2\.sql:2:1"):
        lint_files([("V1.sql", "SELECT 1;"), ("V2.sql", "SELECT 1;\nSELEC 2;")])


# -- what a file creates -------------------------------------------------------------------

NEW_TABLE = "CREATE TABLE t (id bigint PRIMARY KEY, a int, b text UNIQUE, user_id bigint);\n"

SAME_FILE_IS_SAFE = [
    pytest.param("CREATE INDEX ON t (a);", id="unnamed index"),
    pytest.param("CREATE UNIQUE INDEX t_a ON t (a);", id="named unique index"),
    pytest.param("CREATE INDEX ON t (a);\nDROP INDEX t_a_idx;", id="drop of a made-up name"),
    pytest.param(
        "CREATE INDEX ON t (a);\nCREATE INDEX ON t (a);\nDROP INDEX t_a_idx1;",
        id="made-up name taken: a number is added",
    ),
    pytest.param("CREATE INDEX ON t (lower(b), a);\nDROP INDEX t_lower_a_idx;", id="expression"),
    pytest.param("REINDEX INDEX t_pkey;\nREINDEX INDEX t_b_key;", id="constraint indexes"),
    pytest.param("CREATE INDEX t_a ON t (a);\nALTER INDEX t_a RENAME TO t_a2;\nDROP INDEX t_a2;"),
    pytest.param(
        "ALTER TABLE t ADD CONSTRAINT t_user_fk FOREIGN KEY (user_id) REFERENCES users (id);",
        id="validated foreign key",
    ),
    pytest.param("ALTER TABLE t ADD COLUMN org_id bigint REFERENCES orgs (id);"),
    pytest.param("ALTER TABLE t ADD CONSTRAINT a_positive CHECK (a > 0);"),
    pytest.param("ALTER TABLE t ADD COLUMN plan text NOT NULL;", id="required column"),
    pytest.param("ALTER TABLE t ALTER COLUMN a SET NOT NULL;"),
    pytest.param("ALTER TABLE t ADD COLUMN token uuid DEFAULT gen_random_uuid();"),
    pytest.param("ALTER TABLE t ADD COLUMN n bigint GENERATED ALWAYS AS IDENTITY;"),
    pytest.param("ALTER TABLE t ADD CONSTRAINT t_a_key UNIQUE (a);\nDROP INDEX t_a_key;"),
    pytest.param("ALTER TABLE t ALTER COLUMN a TYPE bigint;"),
    pytest.param("ALTER TABLE t RENAME COLUMN a TO c;\nALTER TABLE t DROP COLUMN c;"),
    pytest.param("TRUNCATE t CASCADE;"),
    pytest.param("CREATE TABLE t_x PARTITION OF t DEFAULT;\nALTER TABLE t DETACH PARTITION t_x;"),
]


@pytest.mark.parametrize("sql", SAME_FILE_IS_SAFE)
def test_statements_on_a_table_the_file_created_are_not_lock_risks(sql: str) -> None:
    """The file's new table is empty and unknown to the running version: nothing to report."""
    assert codes(NEW_TABLE + sql) == []


@pytest.mark.parametrize("sql", SAME_FILE_IS_SAFE)
def test_the_same_statements_on_an_existing_table_are_reported(sql: str) -> None:
    """Without the CREATE TABLE, t is an existing table and each of them is reported."""
    assert codes(sql) != []


def test_an_earlier_file_makes_indexes_new_too() -> None:
    """An index a previous pending file created, even under a made-up name, may be dropped."""
    findings = lint_files(
        [
            ("V1.sql", NEW_TABLE + "CREATE INDEX ON t (a);"),
            ("V2.sql", "DROP INDEX t_a_idx;\nREINDEX INDEX t_b_key;"),
        ]
    )
    assert findings == []


def test_an_index_of_an_existing_table_stays_existing() -> None:
    """Only the names PostgreSQL would give the new table's indexes are exempt."""
    assert codes(NEW_TABLE + "DROP INDEX users_email;") == ["lint.index-not-concurrent"]
    assert codes(NEW_TABLE + "DROP INDEX t_a_idx;") == ["lint.index-not-concurrent"]
    # users_email_idx may exist already, and then PostgreSQL names the new one users_email_idx1
    sql = "CREATE INDEX CONCURRENTLY ON users (email);\nDROP INDEX users_email_idx;"
    assert codes(sql) == ["lint.index-not-concurrent"]


CREATES = [
    "CREATE TABLE t (id bigint PRIMARY KEY, a int UNIQUE, b text, c int, UNIQUE (b, c));\n"
    "CREATE INDEX ON t (a);\nCREATE INDEX ON t (a);\nCREATE INDEX ON t (lower(b), c);",
    "CREATE TABLE t (id int, box box, EXCLUDE USING gist (box WITH &&));\n"
    "ALTER TABLE t ADD PRIMARY KEY (id);\nALTER TABLE t ADD COLUMN code text UNIQUE;",
    f"CREATE TABLE {'long_' * 12}table (id int PRIMARY KEY, {'column_' * 8}name int UNIQUE);\n"
    f"CREATE INDEX ON {'long_' * 12}table ({'column_' * 8}name, id);",
]


@pytest.mark.parametrize("create", CREATES)
def test_made_up_index_names_match_postgresql(pg_url: str, create: str) -> None:
    """Every index PostgreSQL creates for the file, under the name it picks, is known as new."""
    import psycopg

    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(create)
        names = [
            row[0]
            for row in conn.execute(
                "SELECT indexname FROM pg_indexes WHERE schemaname = 'public' ORDER BY 1"
            )
        ]
    assert len(names) >= 3
    drops = "".join(f'\nDROP INDEX "{name}";' for name in names)
    assert codes(create + drops) == []


def test_known_volatility_matches_pg_proc(pg_url: str) -> None:
    """The built-ins the linter treats as safe defaults are STABLE or IMMUTABLE in every
    overload, and the volatile ones it names are VOLATILE (those the core server has)."""
    import psycopg

    from airlock.db.lint import _NON_VOLATILE_FUNCTIONS, _VOLATILE_FUNCTIONS

    query = (
        "SELECT proname, string_agg(DISTINCT provolatile::text, '') FROM pg_proc "
        "WHERE proname = ANY(%s) GROUP BY proname"
    )
    with psycopg.connect(pg_url) as conn:
        safe: dict[str, str] = dict(
            conn.execute(query, (sorted(_NON_VOLATILE_FUNCTIONS),)).fetchall()
        )
        volatile: dict[str, str] = dict(
            conn.execute(query, (sorted(_VOLATILE_FUNCTIONS),)).fetchall()
        )
    assert set(safe) == _NON_VOLATILE_FUNCTIONS
    assert all("v" not in kinds for kinds in safe.values()), safe
    assert {"random", "clock_timestamp", "gen_random_uuid", "nextval"} <= set(volatile)
    assert set(volatile.values()) == {"v"}


def test_unknown_function_message_says_why() -> None:
    """A default calling a function of unknown volatility is reported with that reason."""
    [finding] = lint(
        split("ALTER TABLE users ADD COLUMN prefs jsonb DEFAULT app.default_prefs();"),
        file="f.sql",
    )
    assert finding.code == "lint.volatile-default"
    assert "app.default_prefs()" in finding.message and "not known" in finding.message


def test_concurrent_statement_in_a_block_names_the_begin() -> None:
    """The finding points at the CONCURRENTLY statement and names the BEGIN's line."""
    sql = (
        "BEGIN;\nALTER TABLE users ADD COLUMN nick text;\n"
        "CREATE INDEX CONCURRENTLY i ON users (nick);"
    )
    [finding] = lint(split(sql), file="f.sql")
    assert finding.code == "lint.concurrent-in-transaction"
    assert finding.location is not None and finding.location.line == 3
    assert "line 1" in finding.message


# -- agreement with squawk -------------------------------------------------------------------
#
# Each file below with the verdict squawk's rule documentation gives for it (the squawk rules
# that fire, with `assume-in-transaction` on, since Airlock runs every file in a transaction;
# squawk's style rules -- prefer-robust-stmts, prefer-text-field, prefer-bigint-over-int,
# prefer-identity, ban-char-field, require-timeout-settings -- are left out). Airlock's verdict
# (an error finding or none) is the same unless `differs` explains why Airlock decides otherwise;
# docs/migration-lint.md lists the same differences.


class Verdict(NamedTuple):
    sql: str
    squawk: tuple[str, ...]  # the squawk rules that report it; () when squawk is quiet
    differs: str = ""  # why Airlock's verdict is the opposite of squawk's

    @property
    def airlock_flags(self) -> bool:
        return bool(self.squawk) != bool(self.differs)


CT = "CREATE TABLE t (id bigint PRIMARY KEY, a int, b text, user_id bigint);\n"
NEW_TABLE_IS_EMPTY = "the table is created by the same file: empty and unknown to the old version"

SQUAWK = [
    # indexes
    Verdict("CREATE INDEX users_email ON users (email);", ("require-concurrent-index-creation",)),
    Verdict(
        "CREATE UNIQUE INDEX users_email ON users (email);", ("require-concurrent-index-creation",)
    ),
    Verdict("CREATE INDEX CONCURRENTLY users_email ON users (email);", ()),
    Verdict(CT + "CREATE INDEX t_a ON t (a);", ()),
    Verdict(CT + "CREATE INDEX ON t (a);", ()),
    Verdict("DROP INDEX users_email;", ("require-concurrent-index-deletion",)),
    Verdict("DROP INDEX IF EXISTS users_email;", ("require-concurrent-index-deletion",)),
    Verdict("DROP INDEX CONCURRENTLY IF EXISTS users_email;", ()),
    Verdict(
        CT + "CREATE INDEX t_a ON t (a);\nDROP INDEX t_a;",
        ("require-concurrent-index-deletion",),
        NEW_TABLE_IS_EMPTY,
    ),
    Verdict(
        CT + "CREATE INDEX ON t (a);\nDROP INDEX t_a_idx;",
        ("require-concurrent-index-deletion",),
        NEW_TABLE_IS_EMPTY,
    ),
    Verdict("REINDEX TABLE users;", ("require-concurrent-reindex",)),
    Verdict("REINDEX INDEX users_email;", ("require-concurrent-reindex",)),
    Verdict("REINDEX SCHEMA public;", ("require-concurrent-reindex",)),
    Verdict("REINDEX TABLE CONCURRENTLY users;", ()),
    Verdict("REINDEX SYSTEM app;", ()),
    Verdict(
        "BEGIN;\nCREATE INDEX CONCURRENTLY users_email ON users (email);\nCOMMIT;",
        ("ban-concurrent-index-creation-in-transaction",),
    ),
    # column defaults
    Verdict(
        "ALTER TABLE users ADD COLUMN token uuid DEFAULT gen_random_uuid();",
        ("adding-field-with-default",),
    ),
    Verdict(
        "ALTER TABLE users ADD COLUMN r float8 DEFAULT random();", ("adding-field-with-default",)
    ),
    Verdict(
        "ALTER TABLE users ADD COLUMN at timestamptz DEFAULT clock_timestamp();",
        ("adding-field-with-default",),
    ),
    Verdict(
        "ALTER TABLE users ADD COLUMN prefs jsonb DEFAULT default_prefs();",
        ("adding-field-with-default",),
    ),
    Verdict(
        "ALTER TABLE users ADD COLUMN d int GENERATED ALWAYS AS (age * 2) STORED;",
        ("adding-field-with-default",),
    ),
    Verdict("ALTER TABLE users ADD COLUMN at timestamptz DEFAULT now();", ()),
    Verdict("ALTER TABLE users ADD COLUMN plan text DEFAULT 'free';", ()),
    Verdict("ALTER TABLE users ADD COLUMN meta jsonb DEFAULT '{}'::jsonb;", ()),
    Verdict("ALTER TABLE users ADD COLUMN active boolean DEFAULT true;", ()),
    Verdict("ALTER TABLE users ALTER COLUMN token SET DEFAULT gen_random_uuid();", ()),
    Verdict(
        "ALTER TABLE users ADD COLUMN n int DEFAULT 2 + 2;",
        ("adding-field-with-default",),
        "a constant expression is evaluated once: no rewrite (squawk only accepts literals)",
    ),
    Verdict(
        "ALTER TABLE users ADD COLUMN code text DEFAULT lower('ABC');",
        ("adding-field-with-default",),
        "lower() is IMMUTABLE: no rewrite (squawk accepts known functions without arguments only)",
    ),
    Verdict(
        CT + "ALTER TABLE t ADD COLUMN token uuid DEFAULT gen_random_uuid();",
        ("adding-field-with-default",),
        NEW_TABLE_IS_EMPTY,
    ),
    Verdict(
        "ALTER TABLE users ADD COLUMN n bigserial;",
        (),
        "a serial column fills every row from a sequence: a rewrite, like a volatile default",
    ),
    # NOT NULL
    Verdict("ALTER TABLE users ADD COLUMN plan text NOT NULL;", ("adding-required-field",)),
    Verdict("ALTER TABLE users ADD COLUMN plan text NOT NULL DEFAULT 'free';", ()),
    Verdict(
        CT + "ALTER TABLE t ADD COLUMN plan text NOT NULL;",
        ("adding-required-field",),
        NEW_TABLE_IS_EMPTY,
    ),
    Verdict("ALTER TABLE users ALTER COLUMN email SET NOT NULL;", ("adding-not-nullable-field",)),
    Verdict("ALTER TABLE users ADD CONSTRAINT email_nn CHECK (email IS NOT NULL) NOT VALID;", ()),
    # foreign keys and checks
    Verdict(
        "ALTER TABLE orders ADD CONSTRAINT orders_user_fk FOREIGN KEY (user_id) "
        "REFERENCES users (id);",
        ("adding-foreign-key-constraint", "constraint-missing-not-valid"),
    ),
    Verdict(
        "ALTER TABLE orders ADD CONSTRAINT orders_user_fk FOREIGN KEY (user_id) "
        "REFERENCES users (id) NOT VALID;",
        (),
    ),
    Verdict(
        "ALTER TABLE orders ADD CONSTRAINT orders_user_fk FOREIGN KEY (user_id) "
        "REFERENCES users (id) NOT VALID;\nALTER TABLE orders VALIDATE CONSTRAINT orders_user_fk;",
        ("constraint-missing-not-valid",),
    ),
    Verdict(
        "ALTER TABLE orders ADD COLUMN user_id bigint REFERENCES users (id);",
        ("adding-foreign-key-constraint",),
    ),
    Verdict("CREATE TABLE t (id bigint PRIMARY KEY, user_id bigint REFERENCES users (id));", ()),
    Verdict(
        CT + "ALTER TABLE t ADD CONSTRAINT t_user_fk FOREIGN KEY (user_id) REFERENCES users (id);",
        (),
    ),
    Verdict(
        CT + "ALTER TABLE t ADD COLUMN org_id bigint REFERENCES orgs (id);",
        ("adding-foreign-key-constraint",),
        NEW_TABLE_IS_EMPTY,
    ),
    Verdict(
        "ALTER TABLE users ADD CONSTRAINT age_ok CHECK (age >= 0);",
        ("constraint-missing-not-valid",),
    ),
    Verdict("ALTER TABLE users ADD CONSTRAINT age_ok CHECK (age >= 0) NOT VALID;", ()),
    Verdict(CT + "ALTER TABLE t ADD CONSTRAINT a_ok CHECK (a >= 0);", ()),
    # unique, primary key and exclusion constraints
    Verdict(
        "ALTER TABLE users ADD CONSTRAINT users_email_key UNIQUE (email);",
        ("disallowed-unique-constraint", "constraint-missing-not-valid"),
    ),
    Verdict(
        "ALTER TABLE users ADD CONSTRAINT users_email_key UNIQUE USING INDEX users_email_idx;", ()
    ),
    Verdict("ALTER TABLE users ADD COLUMN code text UNIQUE;", ("disallowed-unique-constraint",)),
    Verdict(
        "ALTER TABLE items ADD PRIMARY KEY (id);",
        ("adding-serial-primary-key-field", "constraint-missing-not-valid"),
    ),
    Verdict(
        "ALTER TABLE items ADD COLUMN b serial PRIMARY KEY;", ("adding-serial-primary-key-field",)
    ),
    Verdict(CT + "ALTER TABLE t ADD CONSTRAINT t_b_key UNIQUE (b);", ()),
    Verdict(
        "ALTER TABLE bookings ADD CONSTRAINT no_overlap EXCLUDE USING gist (during WITH &&);",
        ("constraint-missing-not-valid",),
    ),
    # column types
    Verdict("ALTER TABLE users ALTER COLUMN id TYPE bigint;", ("changing-column-type",)),
    Verdict("ALTER TABLE users ALTER COLUMN name TYPE text;", ("changing-column-type",)),
    Verdict(
        CT + "ALTER TABLE t ALTER COLUMN a TYPE bigint;",
        ("changing-column-type",),
        NEW_TABLE_IS_EMPTY,
    ),
    # renames, drops, truncation
    Verdict("ALTER TABLE users RENAME COLUMN email TO mail;", ("renaming-column",)),
    Verdict("ALTER TABLE users RENAME TO people;", ("renaming-table",)),
    Verdict("ALTER TABLE users DROP COLUMN legacy;", ("ban-drop-column",)),
    Verdict("DROP TABLE users;", ("ban-drop-table",)),
    Verdict("DROP DATABASE app;", ("ban-drop-database",)),
    Verdict("TRUNCATE users CASCADE;", ("ban-truncate-cascade",)),
    Verdict("TRUNCATE users;", ()),
    Verdict("ALTER TABLE users ADD COLUMN mail text;", ()),
    Verdict("ALTER TABLE users ALTER COLUMN email SET DEFAULT '';", ()),
    Verdict("CREATE TABLE t (id bigint PRIMARY KEY, at timestamptz);", ()),
    # domains
    Verdict(
        "ALTER DOMAIN positive ADD CONSTRAINT positive_check CHECK (VALUE > 0);",
        ("ban-alter-domain-with-add-constraint",),
    ),
    Verdict(
        "ALTER DOMAIN positive ADD CONSTRAINT positive_check CHECK (VALUE > 0) NOT VALID;",
        ("ban-alter-domain-with-add-constraint",),
        "NOT VALID takes no lock on the tables and scans nothing; the VALIDATE is reported",
    ),
    Verdict(
        "CREATE DOMAIN positive AS int CHECK (VALUE > 0);",
        ("ban-create-domain-with-constraint",),
        "a new domain is used by no column yet: creating it locks and scans nothing",
    ),
    # partitions
    Verdict(
        "ALTER TABLE events DETACH PARTITION events_2023;",
        ("require-concurrent-partition-detach",),
    ),
    Verdict("ALTER TABLE events DETACH PARTITION events_2023 CONCURRENTLY;", ()),
    Verdict("ALTER TABLE events DETACH PARTITION events_2023 FINALIZE;", ()),
    # rewrites squawk does not report by default
    Verdict(
        "ALTER TABLE users SET LOGGED;",
        (),
        "SET LOGGED rewrites the table under an ACCESS EXCLUSIVE lock",
    ),
    Verdict(
        "VACUUM FULL users;",
        (),
        "VACUUM FULL rewrites the table under an ACCESS EXCLUSIVE lock (squawk's prefer-repack "
        "applies from PostgreSQL 19 only)",
    ),
    Verdict(
        "ALTER TABLE orders ALTER COLUMN total SET EXPRESSION AS (price * qty);",
        (),
        "SET EXPRESSION recomputes a stored column for every row: a rewrite",
    ),
]


def airlock_flags(sql: str) -> bool:
    findings = lint(split(sql), file="V1__m.sql")
    return any(finding.severity is Severity.ERROR for finding in findings)


@pytest.mark.parametrize("verdict", SQUAWK, ids=lambda v: v.sql.splitlines()[-1][:60])
def test_verdict_follows_squawk_or_the_documented_difference(verdict: Verdict) -> None:
    """Airlock reports what squawk reports, except where the table says why it differs."""
    assert airlock_flags(verdict.sql) is verdict.airlock_flags


def test_agreement_with_squawk() -> None:
    """At least 60 files; Airlock agrees with squawk on all but the documented differences."""
    agree = sum(airlock_flags(v.sql) is bool(v.squawk) for v in SQUAWK)
    differences = [v for v in SQUAWK if v.differs]
    assert len(SQUAWK) >= 60
    assert agree == len(SQUAWK) - len(differences)
    docs = (REPO / "docs" / "migration-lint.md").read_text()
    for rule in {rule for v in SQUAWK for rule in v.squawk}:
        assert f"`{rule}`" in docs, f"squawk's {rule} is missing from the comparison table"


def test_a_drop_of_an_index_the_database_does_not_have_locks_nothing() -> None:
    """Schema dumps drop indexes IF EXISTS before creating them: on a database that has no such
    index the drop is a no-op, so only a drop of an index the database has is a lock risk."""
    sql = (
        "DROP INDEX IF EXISTS orders_status_idx;\n"
        "DROP INDEX IF EXISTS public.orders_customer_idx;\n"
    )
    unknown = lint_files([("V2__reindex.sql", sql)])
    assert [f.code for f in unknown] == ["lint.index-not-concurrent"] * 2
    absent = lint_files(
        [("V2__reindex.sql", sql)],
        existing_tables=["public.orders"],
        existing_indexes=["public.orders_pkey"],
    )
    assert absent == []
    present = lint_files(
        [("V2__reindex.sql", sql)],
        existing_tables=["public.orders"],
        existing_indexes=["public.orders_pkey", "public.orders_customer_idx"],
    )
    assert [f.message.split(" without")[0] for f in present] == [
        "DROP INDEX public.orders_customer_idx"
    ]
