"""The migration linter: finds SQL that locks, rewrites or breaks a live database.

It reads parse trees (see :mod:`airlock.db.sql`), never a database. Each rule has a stable code
in :data:`RULES`; ``docs/migration-lint.md`` explains every one of them with its safe
alternative.

Tables created by the pending migrations are *new*: nobody else uses them yet, so locking them
costs nothing and the rules about locks, rewrites and breaking changes skip them. A table is new
once a ``CREATE TABLE`` (or ``CREATE TABLE AS``, ``SELECT INTO``, ``CREATE VIEW``) for it has
been linted in the same file or in an earlier pending file (:func:`lint_files`), or when the
caller names it in ``new_tables``. Every other table is *existing*, unless the caller passes
``existing_tables`` (the tables the target database really has) and the table is not among them.
Indexes created by pending migrations are new too (a new table's under the names PostgreSQL
makes up for them), and so are domains.

PostgreSQL 11 or later is assumed (constant column defaults need no rewrite since 11).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from pglast import ast
from pglast.enums.parsenodes import (
    AlterTableType,
    ConstrType,
    DropBehavior,
    ObjectType,
    ReindexObjectType,
    TableLikeOption,
    TransactionStmtKind,
)
from pglast.enums.primnodes import NullTestType
from pglast.parser import ParseError, parse_sql

from airlock.db.sql import Statement, plan_execution, split
from airlock.errors import Location
from airlock.findings import Finding, Severity

__all__ = ["RULES", "Rule", "lint", "lint_files"]


@dataclass(frozen=True)
class Rule:
    """A lint rule: its stable code, how bad it is, and what to do instead."""

    code: str
    severity: Severity
    summary: str
    why: str
    safe: str


_RULE_LIST = (
    Rule(
        "lint.index-not-concurrent",
        Severity.ERROR,
        "CREATE INDEX, DROP INDEX or REINDEX without CONCURRENTLY on an existing table.",
        "CREATE INDEX holds a SHARE lock that blocks every INSERT, UPDATE and DELETE for the "
        "whole build; DROP INDEX and REINDEX take locks that also block reads.",
        "use CREATE INDEX CONCURRENTLY (DROP INDEX CONCURRENTLY, REINDEX ... CONCURRENTLY) in a "
        "migration file of its own: it cannot run inside a transaction.",
    ),
    Rule(
        "lint.volatile-default",
        Severity.ERROR,
        "ADD COLUMN on an existing table with a default that may be volatile (random(), "
        "clock_timestamp(), gen_random_uuid(), nextval(), a function not known to be stable, "
        "serial, identity).",
        "every existing row needs its own value, so PostgreSQL rewrites the whole table and its "
        "indexes under an ACCESS EXCLUSIVE lock: no reads, no writes until it is done.",
        "add the column without a default (or with a constant one), backfill it in batches, "
        "then SET DEFAULT in a later migration.",
    ),
    Rule(
        "lint.not-null-without-check",
        Severity.ERROR,
        "SET NOT NULL on an existing column without a validated CHECK (col IS NOT NULL).",
        "PostgreSQL scans the whole table to prove there are no NULLs while holding an ACCESS "
        "EXCLUSIVE lock.",
        "add CHECK (col IS NOT NULL) NOT VALID, VALIDATE CONSTRAINT it in a later migration, "
        "then SET NOT NULL (it uses the check and skips the scan) and drop the check.",
    ),
    Rule(
        "lint.not-null-without-default",
        Severity.ERROR,
        "ADD COLUMN ... NOT NULL without a default on an existing table.",
        "the statement fails as soon as the table has a row, and the old version keeps "
        "inserting rows without the column.",
        "add the column with a constant DEFAULT (no rewrite since PostgreSQL 11), or add it "
        "nullable, backfill, and enforce NOT NULL with a validated check.",
    ),
    Rule(
        "lint.constraint-not-valid",
        Severity.ERROR,
        "A FOREIGN KEY or CHECK constraint added to an existing table without NOT VALID, or "
        "validated in the same transaction that added it.",
        "adding it checks every row while holding a lock that blocks writes (for a foreign "
        "key, on the referenced table too); validating in the same transaction keeps the ADD's "
        "ACCESS EXCLUSIVE lock for the whole scan.",
        "add the constraint with NOT VALID (instant, new rows are checked), then VALIDATE "
        "CONSTRAINT in a later migration: it scans under a lock that allows reads and writes.",
    ),
    Rule(
        "lint.unique-constraint-without-index",
        Severity.ERROR,
        "ADD CONSTRAINT ... UNIQUE / PRIMARY KEY on an existing table without USING INDEX, or "
        "an EXCLUDE constraint.",
        "the constraint's index is built inside ALTER TABLE, under an ACCESS EXCLUSIVE lock, for "
        "as long as the build takes.",
        "CREATE UNIQUE INDEX CONCURRENTLY in its own migration, then ADD CONSTRAINT name "
        "UNIQUE USING INDEX index_name (or PRIMARY KEY USING INDEX).",
    ),
    Rule(
        "lint.table-rewrite",
        Severity.ERROR,
        "A statement that rewrites an existing table: ALTER COLUMN ... TYPE (unless a known "
        "binary-coercible widening), a stored generated column, SET EXPRESSION, SET "
        "LOGGED/UNLOGGED, SET TABLESPACE, SET ACCESS METHOD, VACUUM FULL, CLUSTER.",
        "the table and all its indexes are copied while an ACCESS EXCLUSIVE lock blocks every "
        "read and write; on a big table that is minutes of downtime.",
        "add a new column (or table), backfill it in batches, switch readers over, then drop "
        "the old one (expand/contract); use pg_repack instead of VACUUM FULL or CLUSTER.",
    ),
    Rule(
        "lint.breaking-change",
        Severity.ERROR,
        "DROP TABLE, DROP VIEW, DROP COLUMN, a table/view/column RENAME on an existing object, "
        "TRUNCATE ... CASCADE, DROP DATABASE.",
        "during the release the previous version is still running, and it still reads and "
        "writes that name: its queries fail until it is gone, and a rollback cannot bring it "
        "back.",
        "expand/contract: first release code that no longer uses the object, then drop or "
        "rename it in a later release (for a rename, add the new name, dual-write, backfill).",
    ),
    Rule(
        "lint.concurrent-in-transaction",
        Severity.ERROR,
        "CREATE INDEX CONCURRENTLY (or another statement that cannot run in a transaction block) "
        "between BEGIN and COMMIT in the file.",
        "PostgreSQL refuses it inside a transaction block: the migration fails at that statement.",
        "take the BEGIN and COMMIT out of the file (Airlock runs such a statement on its own, "
        "outside a transaction), and better, give the statement a migration file of its own.",
    ),
    Rule(
        "lint.detach-partition-not-concurrent",
        Severity.ERROR,
        "ALTER TABLE ... DETACH PARTITION without CONCURRENTLY on an existing table.",
        "it takes an ACCESS EXCLUSIVE lock on the partitioned table: no reads or writes of any "
        "partition until it is done, and everything queues behind it while it waits.",
        "DETACH PARTITION ... CONCURRENTLY in a migration file of its own (it cannot run inside "
        "a transaction); if it is interrupted, finish it with DETACH PARTITION ... FINALIZE.",
    ),
    Rule(
        "lint.domain-constraint",
        Severity.ERROR,
        "ALTER DOMAIN ... ADD CONSTRAINT (without NOT VALID), VALIDATE CONSTRAINT or SET NOT NULL "
        "on an existing domain.",
        "PostgreSQL checks every column of every table that uses the domain, holding a SHARE "
        "lock on each of those tables (no writes) for the whole scan; NOT VALID only defers "
        "the scan, because validating a domain constraint takes the same lock.",
        "put the rule on the columns instead: a table CHECK constraint added NOT VALID and "
        "validated in a later migration, which scans without blocking writes.",
    ),
    Rule(
        "lint.timestamp-without-time-zone",
        Severity.WARNING,
        "A column declared timestamp (without time zone).",
        "the value carries no zone: what it means depends on each client's TimeZone setting, "
        "and converting it to timestamptz later rewrites the table.",
        "declare it timestamptz (timestamp with time zone).",
    ),
    Rule(
        "lint.no-primary-key",
        Severity.WARNING,
        "CREATE TABLE without a primary key.",
        "rows cannot be addressed reliably: logical replication cannot replicate UPDATE or "
        "DELETE, and tools (and people) cannot fix a single row safely.",
        "declare a PRIMARY KEY, e.g. id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY.",
    ),
    Rule(
        "lint.ignore-without-reason",
        Severity.WARNING,
        "An `-- airlock:ignore` comment without a reason (or without a code).",
        "an exception nobody can explain is not reviewed; the next reader cannot tell whether "
        "it still holds.",
        "write why it is safe after the codes: -- airlock:ignore lint.table-rewrite the table "
        "is empty.",
    ),
)

RULES: dict[str, Rule] = {rule.code: rule for rule in _RULE_LIST}

_VOLATILE_FUNCTIONS = frozenset(
    {
        "random",
        "random_normal",
        "clock_timestamp",
        "timeofday",
        "gen_random_uuid",
        "uuidv4",
        "uuidv7",
        "uuid_generate_v1",
        "uuid_generate_v1mc",
        "uuid_generate_v4",
        "gen_random_bytes",
        "nextval",
        "currval",
        "lastval",
        "setval",
    }
)
# Built-in functions that are STABLE or IMMUTABLE in every overload (pg_proc.provolatile), so a
# column default calling them is evaluated once and stored in the catalog: no rewrite. Any other
# function may be volatile as far as the linter knows (it cannot see your own functions'
# volatility), so a default calling one is reported. tests/test_db_lint.py checks this list
# against a real server's pg_proc.
_NON_VOLATILE_FUNCTIONS = frozenset(
    {
        "abs",
        "age",
        "array_append",
        "array_cat",
        "array_fill",
        "array_length",
        "array_prepend",
        "array_to_string",
        "btrim",
        "cardinality",
        "ceil",
        "ceiling",
        "char_length",
        "concat",
        "concat_ws",
        "current_database",
        "current_schema",
        "current_schemas",
        "current_setting",
        "date_add",
        "date_bin",
        "date_part",
        "date_subtract",
        "date_trunc",
        "daterange",
        "decode",
        "encode",
        "extract",
        "floor",
        "format",
        "initcap",
        "int4range",
        "int8range",
        "isfinite",
        "json_build_array",
        "json_build_object",
        "jsonb_build_array",
        "jsonb_build_object",
        "jsonb_set",
        "justify_days",
        "justify_hours",
        "justify_interval",
        "left",
        "length",
        "lower",
        "lpad",
        "ltrim",
        "make_date",
        "make_interval",
        "make_time",
        "make_timestamp",
        "make_timestamptz",
        "md5",
        "mod",
        "normalize",
        "now",
        "numrange",
        "octet_length",
        "overlay",
        "pg_current_xact_id",
        "position",
        "power",
        "regexp_replace",
        "repeat",
        "replace",
        "reverse",
        "right",
        "round",
        "rpad",
        "rtrim",
        "setweight",
        "sha224",
        "sha256",
        "sha384",
        "sha512",
        "split_part",
        "sqrt",
        "starts_with",
        "statement_timestamp",
        "string_to_array",
        "substr",
        "substring",
        "timezone",
        "to_char",
        "to_date",
        "to_json",
        "to_jsonb",
        "to_number",
        "to_timestamp",
        "to_tsvector",
        "transaction_timestamp",
        "translate",
        "trunc",
        "tsrange",
        "tstzrange",
        "txid_current",
        "upper",
        "uuid_extract_timestamp",
        "uuid_extract_version",
        "version",
    }
)
_SERIAL_TYPES = frozenset({"smallserial", "serial", "bigserial", "serial2", "serial4", "serial8"})
_TYPE_ALIASES = {
    "int": "int4",
    "integer": "int4",
    "smallint": "int2",
    "bigint": "int8",
    "decimal": "numeric",
    "float": "float8",
    "real": "float4",
    "boolean": "bool",
    "character varying": "varchar",
    "bit varying": "varbit",
    "char": "bpchar",
    "character": "bpchar",
}
# Types whose typmod can grow (or be dropped) without touching the stored data.
_WIDENABLE = frozenset(
    {"varchar", "varbit", "numeric", "timestamp", "timestamptz", "time", "timetz"}
)


# -- names -----------------------------------------------------------------------------------


class _Name(NamedTuple):
    schema: str | None
    name: str

    def __str__(self) -> str:
        return f"{self.schema}.{self.name}" if self.schema else self.name

    @classmethod
    def of(cls, relation: Any) -> _Name | None:
        if isinstance(relation, ast.RangeVar) and relation.relname:
            return cls(relation.schemaname, relation.relname)
        return None

    @classmethod
    def parse(cls, dotted: str) -> _Name:
        schema, _, name = dotted.rpartition(".")
        return cls(schema or None, name)


class _Relations:
    """A set of relation names; an unqualified name matches the name in any schema."""

    def __init__(self, names: Iterable[str] = ()) -> None:
        self._schemas: dict[str, set[str | None]] = {}
        for name in names:
            self.add(_Name.parse(name))

    def add(self, name: _Name) -> None:
        self._schemas.setdefault(name.name, set()).add(name.schema)

    def discard(self, name: _Name) -> None:
        self._schemas.pop(name.name, None)

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, _Name):
            return False
        schemas = self._schemas.get(name.name)
        if not schemas:
            return False
        return name.schema is None or None in schemas or name.schema in schemas


# -- types -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Type:
    name: str
    mods: tuple[int, ...]
    array: bool

    def __str__(self) -> str:
        mods = f"({','.join(map(str, self.mods))})" if self.mods else ""
        return f"{self.name}{mods}{'[]' if self.array else ''}"


def _strings(items: Iterable[Any] | None) -> list[str]:
    return [item.sval for item in items or () if isinstance(item, ast.String) and item.sval]


def _type_of(type_name: Any) -> _Type | None:
    if not isinstance(type_name, ast.TypeName) or type_name.pct_type or type_name.setof:
        return None
    names = _strings(type_name.names)
    if not names:
        return None
    name = names[-1].lower()
    mods = []
    for mod in type_name.typmods or ():
        value = mod.val if isinstance(mod, ast.A_Const) else None
        if not isinstance(value, ast.Integer) or value.ival is None:
            return None
        mods.append(value.ival)
    return _Type(_TYPE_ALIASES.get(name, name), tuple(mods), bool(type_name.arrayBounds))


def _parse_type(text: str) -> _Type | None:
    """A column type as ``format_type`` prints it (``character varying(50)``), parsed."""
    try:
        parsed = parse_sql(f"SELECT NULL::{text}")
    except ParseError:
        return None
    if len(parsed) != 1 or not isinstance(parsed[0].stmt, ast.SelectStmt):
        return None
    targets = parsed[0].stmt.targetList or ()
    if len(targets) != 1 or not isinstance(targets[0], ast.ResTarget):
        return None
    cast = targets[0].val
    return _type_of(cast.typeName) if isinstance(cast, ast.TypeCast) else None


def _binary_coercible(old: _Type, new: _Type) -> bool:
    """True when changing a column from ``old`` to ``new`` rewrites nothing."""
    if old == new:
        return True
    if old.array or new.array:
        return False
    if old.name == new.name and old.name in _WIDENABLE:
        if not new.mods:
            return True
        if not old.mods:
            return False
        if old.name == "numeric":
            old_scale = old.mods[1] if len(old.mods) > 1 else 0
            new_scale = new.mods[1] if len(new.mods) > 1 else 0
            return new_scale == old_scale and new.mods[0] >= old.mods[0]
        return new.mods[0] >= old.mods[0]
    if old.name == "varchar" and new.name == "text":
        return True
    if old.name == "text" and new.name == "varchar" and not new.mods:
        return True
    return old.name == "cidr" and new.name == "inet"


# -- tree helpers ----------------------------------------------------------------------------


def _walk(node: Any) -> Iterator[Any]:
    """``node`` and every node below it."""
    if isinstance(node, tuple | list):
        for item in node:
            yield from _walk(item)
    elif isinstance(node, ast.Node):
        yield node
        for attribute in node:
            yield from _walk(getattr(node, attribute))


def _volatile_call(expression: Any) -> tuple[str, bool] | None:
    """The first function in ``expression`` that may be volatile, and whether it is known to be.

    ``("random", True)``: a built-in volatile function. ``("my_func", False)``: a function the
    linter does not know to be stable or immutable (your own, or one of another schema). None:
    only constants, operators, casts and known stable or immutable built-ins.
    """
    unknown = None
    for node in _walk(expression):
        if not isinstance(node, ast.FuncCall):
            continue
        names = [name.lower() for name in _strings(node.funcname)]
        if not names:
            continue
        name, schema = names[-1], (names[-2] if len(names) > 1 else None)
        if name in _VOLATILE_FUNCTIONS:
            return name, True
        builtin = schema in {None, "pg_catalog"}
        if unknown is None and not (builtin and name in _NON_VOLATILE_FUNCTIONS):
            unknown = ".".join(names)
    return (unknown, False) if unknown else None


def _constraints(column: ast.ColumnDef) -> list[ast.Constraint]:
    return [c for c in column.constraints or () if isinstance(c, ast.Constraint)]


def _is_null(expression: Any) -> bool:
    return isinstance(expression, ast.A_Const) and bool(expression.isnull)


def _not_null_column(expression: Any) -> str | None:
    """``col`` when ``expression`` is ``col IS NOT NULL``."""
    if (
        isinstance(expression, ast.NullTest)
        and expression.nulltesttype == NullTestType.IS_NOT_NULL
        and isinstance(expression.arg, ast.ColumnRef)
    ):
        fields = _strings(expression.arg.fields)
        if len(fields) == len(expression.arg.fields or ()) and fields:
            return fields[-1]
    return None


# PostgreSQL's name length limit (NAMEDATALEN - 1 bytes).
_MAX_NAME = 63


def _object_name(table: str, columns: Sequence[str], label: str) -> str:
    """The name PostgreSQL makes up for an index it names itself: ``table_col1_col2_label``,
    with the table and column parts shortened (the longer one first) to fit 63 bytes."""
    first, second = table, "_".join(columns)
    room = _MAX_NAME - len(label) - 1 - (1 if second else 0)
    keep_first, keep_second = len(first), len(second)
    while keep_first + keep_second > room:
        if keep_first > keep_second:
            keep_first -= 1
        else:
            keep_second -= 1
    parts = [first[:keep_first], second[:keep_second], label]
    return "_".join(part for part in parts if part)


def _index_column(element: Any) -> str:
    """The name PostgreSQL uses for one indexed column or expression in a made-up index name."""
    if isinstance(element, ast.IndexElem):
        if element.name:
            return element.name
        if element.indexcolname:
            return element.indexcolname
        if isinstance(element.expr, ast.FuncCall):
            names = _strings(element.expr.funcname)
            return names[-1] if names else "expr"
    return "expr"


def _constraint_index(
    table: str, constraint: ast.Constraint, column: str | None = None
) -> tuple[str, bool] | None:
    """The index a UNIQUE, PRIMARY KEY or EXCLUDE constraint creates: ``(name, named)``, where
    ``named`` is False when PostgreSQL makes the name up (and may add a number to it)."""
    kind = constraint.contype
    if kind not in {
        ConstrType.CONSTR_UNIQUE,
        ConstrType.CONSTR_PRIMARY,
        ConstrType.CONSTR_EXCLUSION,
    }:
        return None
    if constraint.conname:
        return constraint.conname, True
    if kind == ConstrType.CONSTR_PRIMARY:
        return _object_name(table, [], "pkey"), False
    if kind == ConstrType.CONSTR_UNIQUE:
        columns = _strings(constraint.keys) or ([column] if column else [])
        return _object_name(table, columns, "key"), False
    elements = [pair[0] for pair in constraint.exclusions or () if isinstance(pair, tuple)]
    return _object_name(table, [_index_column(e) for e in elements], "excl"), False


# -- the linter ------------------------------------------------------------------------------


@dataclass
class _NotValid:
    """A constraint added NOT VALID by a pending migration."""

    column: str | None  # the column of a CHECK (col IS NOT NULL) / NOT NULL constraint
    run: tuple[str, int]  # (file, run of plan_execution): validating in the same run is late
    lock: str  # what the ADD CONSTRAINT holds until its transaction ends


class _Linter:
    def __init__(
        self,
        existing_tables: Collection[str] | None,
        new_tables: Collection[str],
        existing_columns: Mapping[str, str] | None,
        existing_indexes: Collection[str] | None = None,
    ) -> None:
        self.existing = None if existing_tables is None else _Relations(existing_tables)
        self.existing_indexes = None if existing_indexes is None else _Relations(existing_indexes)
        self.new = _Relations(new_tables)
        self.columns = dict(existing_columns or {})
        self.new_columns: set[tuple[str, str]] = set()
        self.new_indexes: set[str] = set()
        self.new_domains: set[str] = set()
        self.not_valid: dict[tuple[str, str], _NotValid] = {}
        # (table, column) with a validated CHECK (col IS NOT NULL); column None: some constraint
        # of the table we cannot see (added by an applied migration) was validated.
        self.validated: set[tuple[str, str | None]] = set()
        self.findings: list[Finding] = []
        self.file = ""
        self.run: tuple[str, int] = ("", 0)

    # -- bookkeeping ---------------------------------------------------------------------

    def is_existing(self, name: _Name | None) -> bool:
        if name is None or name in self.new:
            return False
        return self.existing is None or name in self.existing

    def column_is_new(self, table: _Name, column: str | None) -> bool:
        return column is not None and (table.name, column) in self.new_columns

    def add_index(self, table: _Name, name: str, named: bool = True) -> None:
        """Remember an index created by a pending migration. A made-up name that is taken
        already gets a number, as PostgreSQL does (``t_a_idx``, then ``t_a_idx1``); made-up names
        count only on a new table, since on an existing one the database may hold the name
        already and PostgreSQL would pick another."""
        if not named:
            if self.is_existing(table):
                return
            stem, label = name.rsplit("_", 1)
            number = 0
            while name in self.new_indexes:
                number += 1
                name = _object_name(stem, [], f"{label}{number}")
        self.new_indexes.add(name)

    def add_constraint_index(
        self, table: _Name, constraint: ast.Constraint, column: str | None = None
    ) -> None:
        if constraint.indexname:
            # USING INDEX: the index takes the constraint's name.
            if constraint.conname and constraint.indexname in self.new_indexes:
                self.new_indexes.add(constraint.conname)
            return
        index = _constraint_index(table.name, constraint, column)
        if index is not None:
            self.add_index(table, *index)

    def emit(
        self, statement: Statement, code: str, message: str, *, line: int | None = None
    ) -> None:
        if code in statement.ignores:
            return
        rule = RULES[code]
        self.findings.append(
            Finding(
                code,
                rule.severity,
                message,
                Location(self.file, line if line is not None else statement.line, None, ""),
                hint=rule.safe,
                evidence={"statement": statement.text[:200]},
            )
        )

    # -- files ---------------------------------------------------------------------------

    def lint_file(self, statements: Sequence[Statement], file: str) -> list[Finding]:
        self.file = file
        self.findings = []
        gets_primary_key = _tables_getting_primary_key(statements)
        begin: int | None = None  # line of the BEGIN of an open transaction block
        for run, (_, group) in enumerate(plan_execution(statements)):
            self.run = (file, run)
            for statement in group:
                self.ignore_comments(statement)
                node = statement.node
                if isinstance(node, ast.TransactionStmt):
                    if node.kind in _OPENS_BLOCK:
                        begin = statement.line if begin is None else begin
                    elif node.kind in _CLOSES_BLOCK:
                        begin = None
                elif begin is not None and not statement.transactional:
                    self.emit(
                        statement,
                        "lint.concurrent-in-transaction",
                        f"{_label(node)} cannot run inside a transaction block, and the BEGIN "
                        f"on line {begin} opens one: PostgreSQL refuses it and the migration "
                        "fails",
                    )
                self.statement(statement, gets_primary_key)
        return self.findings

    def ignore_comments(self, statement: Statement) -> None:
        for comment in statement.ignore_comments:
            if not comment.codes:
                self.emit(
                    statement,
                    "lint.ignore-without-reason",
                    "this airlock:ignore comment names no lint code, so it silences nothing",
                    line=comment.line,
                )
            elif not comment.reason:
                codes = ", ".join(sorted(comment.codes))
                self.emit(
                    statement,
                    "lint.ignore-without-reason",
                    f"airlock:ignore {codes} gives no reason; say why it is safe",
                    line=comment.line,
                )

    def statement(self, statement: Statement, gets_primary_key: set[str]) -> None:
        node = statement.node
        if isinstance(node, ast.CreateStmt):
            self.create_table(statement, node, gets_primary_key)
        elif isinstance(node, ast.CreateTableAsStmt):
            self.create_table_as(statement, node, gets_primary_key)
        elif isinstance(node, ast.ViewStmt):
            name = _Name.of(node.view)
            if name and not (node.replace and self.is_existing(name)):
                self.new.add(name)
        elif isinstance(node, ast.SelectStmt) and isinstance(node.intoClause, ast.IntoClause):
            name = _Name.of(node.intoClause.rel)
            if name:
                self.new.add(name)
        elif isinstance(node, ast.IndexStmt):
            self.create_index(statement, node)
        elif isinstance(node, ast.DropStmt):
            self.drop(statement, node)
        elif isinstance(node, ast.ReindexStmt):
            self.reindex(statement, node)
        elif isinstance(node, ast.VacuumStmt):
            self.vacuum(statement, node)
        elif isinstance(node, ast.ClusterStmt):
            name = _Name.of(node.relation)
            if node.relation is None or self.is_existing(name):
                target = f"table {name}" if name else "every previously clustered table"
                self.emit(
                    statement,
                    "lint.table-rewrite",
                    f"CLUSTER rewrites {target} under an ACCESS EXCLUSIVE lock",
                )
        elif isinstance(node, ast.AlterTableStmt):
            self.alter_table(statement, node)
        elif isinstance(node, ast.RenameStmt):
            self.rename(statement, node)
        elif isinstance(node, ast.CreateDomainStmt):
            names = _strings(node.domainname)
            if names:
                self.new_domains.add(names[-1])
        elif isinstance(node, ast.AlterDomainStmt):
            self.alter_domain(statement, node)
        elif isinstance(node, ast.TruncateStmt):
            self.truncate(statement, node)
        elif isinstance(node, ast.DropdbStmt):
            self.emit(
                statement,
                "lint.breaking-change",
                f"DROP DATABASE {node.dbname} destroys every table in it",
            )

    # -- CREATE --------------------------------------------------------------------------

    def create_table(
        self, statement: Statement, node: ast.CreateStmt, gets_primary_key: set[str]
    ) -> None:
        name = _Name.of(node.relation)
        if name is None:
            return
        if not (node.if_not_exists and self.existing is not None and self.is_existing(name)):
            self.new.add(name)
        has_primary_key = name.name in gets_primary_key
        copies_indexes = False
        for element in node.tableElts or ():
            if isinstance(element, ast.ColumnDef):
                self.timestamp_column(statement, name, element.colname, element.typeName)
                for constraint in _constraints(element):
                    self.add_constraint_index(name, constraint, element.colname)
                    if constraint.contype == ConstrType.CONSTR_PRIMARY:
                        has_primary_key = True
            elif isinstance(element, ast.Constraint):
                self.add_constraint_index(name, element)
                if element.contype == ConstrType.CONSTR_PRIMARY:
                    has_primary_key = True
            elif isinstance(element, ast.TableLikeClause):
                options = element.options or 0
                if options & TableLikeOption.CREATE_TABLE_LIKE_INDEXES:
                    copies_indexes = True
        temporary = isinstance(node.relation, ast.RangeVar) and node.relation.relpersistence == "t"
        if has_primary_key or copies_indexes or temporary or node.partbound is not None:
            return
        self.emit(statement, "lint.no-primary-key", f"table {name} has no primary key")

    def create_table_as(
        self, statement: Statement, node: ast.CreateTableAsStmt, gets_primary_key: set[str]
    ) -> None:
        relation = node.into.rel if isinstance(node.into, ast.IntoClause) else None
        name = _Name.of(relation)
        if name is None:
            return
        self.new.add(name)
        temporary = isinstance(relation, ast.RangeVar) and relation.relpersistence == "t"
        if node.objtype != ObjectType.OBJECT_TABLE or name.name in gets_primary_key or temporary:
            return
        self.emit(
            statement,
            "lint.no-primary-key",
            f"table {name} is created by CREATE TABLE ... AS, which never has a primary key; "
            "add one with ALTER TABLE ... ADD PRIMARY KEY in the same migration",
        )

    def create_index(self, statement: Statement, node: ast.IndexStmt) -> None:
        table = _Name.of(node.relation)
        if node.idxname:
            self.new_indexes.add(node.idxname)
        elif table is not None:
            columns = [_index_column(element) for element in node.indexParams or ()]
            self.add_index(table, _object_name(table.name, columns, "idx"), named=False)
        if node.concurrent or not self.is_existing(table):
            return
        kind = "UNIQUE INDEX" if node.unique else "INDEX"
        index = f" {node.idxname}" if node.idxname else ""
        self.emit(
            statement,
            "lint.index-not-concurrent",
            f"CREATE {kind}{index} on existing table {table} without CONCURRENTLY blocks "
            "writes to the table until the index is built",
        )

    def timestamp_column(
        self, statement: Statement, table: _Name, column: str | None, type_name: Any
    ) -> None:
        declared = _type_of(type_name)
        if declared is None or declared.name != "timestamp":
            return
        self.emit(
            statement,
            "lint.timestamp-without-time-zone",
            f"column {table}.{column} is timestamp without time zone; use timestamptz",
        )

    # -- DROP, REINDEX, VACUUM, RENAME ---------------------------------------------------

    def drop(self, statement: Statement, node: ast.DropStmt) -> None:
        names = [_strings(obj) for obj in node.objects or () if isinstance(obj, tuple)]
        if node.removeType == ObjectType.OBJECT_INDEX:
            if node.concurrent:
                return
            # an index the database does not have cannot be locked: IF EXISTS makes it a
            # no-op, and without it the statement fails (the rehearsal shows that)
            old = [
                ".".join(n)
                for n in names
                if n
                and n[-1] not in self.new_indexes
                and (
                    self.existing_indexes is None
                    or _Name(".".join(n[:-1]) or None, n[-1]) in self.existing_indexes
                )
            ]
            if old:
                self.emit(
                    statement,
                    "lint.index-not-concurrent",
                    f"DROP INDEX {', '.join(old)} without CONCURRENTLY takes an ACCESS EXCLUSIVE "
                    "lock on its table, blocking reads and writes",
                )
            return
        kinds = {
            ObjectType.OBJECT_TABLE: "TABLE",
            ObjectType.OBJECT_VIEW: "VIEW",
            ObjectType.OBJECT_MATVIEW: "MATERIALIZED VIEW",
        }
        kind = kinds.get(node.removeType) if node.removeType is not None else None
        if kind is None:
            return
        existing = []
        for parts in names:
            if not parts:
                continue
            name = _Name(".".join(parts[:-1]) or None, parts[-1])
            if self.is_existing(name):
                existing.append(str(name))
            else:
                self.new.discard(name)
        if existing:
            self.emit(
                statement,
                "lint.breaking-change",
                f"DROP {kind} {', '.join(existing)}: the running version may still use it",
            )

    def reindex(self, statement: Statement, node: ast.ReindexStmt) -> None:
        if any(
            isinstance(p, ast.DefElem) and p.defname == "concurrently" for p in node.params or ()
        ):
            return
        if node.kind == ReindexObjectType.REINDEX_OBJECT_TABLE:
            table = _Name.of(node.relation)
            if not self.is_existing(table):
                return
            target = f"TABLE {table}"
        elif node.kind == ReindexObjectType.REINDEX_OBJECT_INDEX:
            index = _Name.of(node.relation)
            if index is None or index.name in self.new_indexes:
                return
            target = f"INDEX {index}"
        elif node.kind == ReindexObjectType.REINDEX_OBJECT_SYSTEM:
            return  # the system catalogs cannot be reindexed concurrently: nothing to suggest
        else:
            kind = node.kind.name.removeprefix("REINDEX_OBJECT_") if node.kind else "DATABASE"
            target = f"{kind} {node.name or ''}"
        self.emit(
            statement,
            "lint.index-not-concurrent",
            f"REINDEX {target.strip()} without CONCURRENTLY blocks writes to the table and "
            "reads that use the index",
        )

    def vacuum(self, statement: Statement, node: ast.VacuumStmt) -> None:
        full = any(
            isinstance(o, ast.DefElem)
            and o.defname == "full"
            and not (isinstance(o.arg, ast.Boolean) and not o.arg.boolval)
            and not (
                isinstance(o.arg, ast.String) and (o.arg.sval or "").lower() in {"false", "off"}
            )
            for o in node.options or ()
        )
        if not node.is_vacuumcmd or not full:
            return
        relations = [r.relation for r in node.rels or () if isinstance(r, ast.VacuumRelation)]
        names = [_Name.of(relation) for relation in relations]
        targets = [str(n) for n in names if n is not None and self.is_existing(n)]
        if relations and not targets:
            return
        target = ", ".join(targets) if targets else "every table of the database"
        self.emit(
            statement,
            "lint.table-rewrite",
            f"VACUUM FULL rewrites {target} under an ACCESS EXCLUSIVE lock",
        )

    def rename(self, statement: Statement, node: ast.RenameStmt) -> None:
        table = _Name.of(node.relation)
        if table is None:
            return
        if node.renameType == ObjectType.OBJECT_INDEX:
            if table.name in self.new_indexes and node.newname:
                self.new_indexes.add(node.newname)
        elif node.renameType == ObjectType.OBJECT_COLUMN:
            if self.is_existing(table) and not self.column_is_new(table, node.subname):
                self.emit(
                    statement,
                    "lint.breaking-change",
                    f"RENAME COLUMN {table}.{node.subname} to {node.newname}: the running "
                    "version still uses the old name",
                )
            elif node.newname:
                self.new_columns.add((table.name, node.newname))
        elif node.renameType in {
            ObjectType.OBJECT_TABLE,
            ObjectType.OBJECT_VIEW,
            ObjectType.OBJECT_MATVIEW,
        }:
            if self.is_existing(table):
                self.emit(
                    statement,
                    "lint.breaking-change",
                    f"RENAME {table} to {node.newname}: the running version still uses the old "
                    "name",
                )
            elif node.newname:
                self.new.add(_Name(table.schema, node.newname))

    # -- ALTER TABLE ---------------------------------------------------------------------

    def alter_table(self, statement: Statement, node: ast.AlterTableStmt) -> None:
        table = _Name.of(node.relation)
        if table is None or node.objtype != ObjectType.OBJECT_TABLE:
            return
        existing = self.is_existing(table)
        for cmd in node.cmds or ():
            if not isinstance(cmd, ast.AlterTableCmd):
                continue
            subtype = cmd.subtype
            if subtype == AlterTableType.AT_AddColumn and isinstance(cmd.def_, ast.ColumnDef):
                self.add_column(statement, table, cmd.def_, existing)
            elif subtype == AlterTableType.AT_AlterColumnType and isinstance(
                cmd.def_, ast.ColumnDef
            ):
                self.timestamp_column(statement, table, cmd.name, cmd.def_.typeName)
                if existing and not self.column_is_new(table, cmd.name):
                    self.alter_type(statement, table, cmd.name or "", cmd.def_)
            elif subtype == AlterTableType.AT_SetNotNull:
                if existing and not self.column_is_new(table, cmd.name):
                    self.set_not_null(statement, table, cmd.name or "")
            elif subtype == AlterTableType.AT_AddConstraint and isinstance(
                cmd.def_, ast.Constraint
            ):
                self.add_constraint(statement, table, cmd.def_, existing)
            elif subtype == AlterTableType.AT_ValidateConstraint:
                self.validate(statement, table, cmd.name or "", existing)
            elif subtype == AlterTableType.AT_DropColumn:
                if existing and not self.column_is_new(table, cmd.name):
                    self.emit(
                        statement,
                        "lint.breaking-change",
                        f"DROP COLUMN {table}.{cmd.name}: the running version may still read "
                        "or write it",
                    )
            elif subtype == AlterTableType.AT_SetExpression:
                if existing and not self.column_is_new(table, cmd.name):
                    self.emit(
                        statement,
                        "lint.table-rewrite",
                        f"ALTER COLUMN {table}.{cmd.name} SET EXPRESSION recomputes the column "
                        "for every row: a rewrite under an ACCESS EXCLUSIVE lock",
                    )
            elif subtype == AlterTableType.AT_DetachPartition and isinstance(
                cmd.def_, ast.PartitionCmd
            ):
                if existing and not cmd.def_.concurrent:
                    partition = _Name.of(cmd.def_.name)
                    self.emit(
                        statement,
                        "lint.detach-partition-not-concurrent",
                        f"DETACH PARTITION {partition} without CONCURRENTLY takes an ACCESS "
                        f"EXCLUSIVE lock on {table}, blocking reads and writes of every partition",
                    )
            elif subtype in _REWRITING_SUBCOMMANDS and existing:
                self.emit(
                    statement,
                    "lint.table-rewrite",
                    f"ALTER TABLE {table} {_REWRITING_SUBCOMMANDS[subtype]} rewrites the table "
                    "under an ACCESS EXCLUSIVE lock",
                )

    def add_column(
        self, statement: Statement, table: _Name, column: ast.ColumnDef, existing: bool
    ) -> None:
        name = column.colname or ""
        self.new_columns.add((table.name, name))
        self.timestamp_column(statement, table, name, column.typeName)
        constraints = _constraints(column)
        for constraint in constraints:
            self.add_constraint_index(table, constraint, name)
        if not existing:
            return
        kinds = {c.contype for c in constraints}
        type_names = _strings(column.typeName.names) if column.typeName else []
        serial = len(type_names) == 1 and type_names[0].lower() in _SERIAL_TYPES
        defaults = [
            c.raw_expr
            for c in constraints
            if c.contype == ConstrType.CONSTR_DEFAULT and not _is_null(c.raw_expr)
        ]
        where = f"ADD COLUMN {table}.{name}"

        volatile = next(filter(None, map(_volatile_call, defaults)), None)
        rewrite = "rewrites the whole table under an ACCESS EXCLUSIVE lock"
        if volatile and volatile[1]:
            message = f"{where} with a volatile default ({volatile[0]}()) {rewrite}"
        elif volatile:
            message = (
                f"{where} with a default calling {volatile[0]}(), which is not known to be "
                f"STABLE or IMMUTABLE: if it is VOLATILE, the statement {rewrite}"
            )
        elif serial:
            message = f"{where} with type {type_names[0]} (a nextval() default) {rewrite}"
        elif ConstrType.CONSTR_IDENTITY in kinds:
            message = f"{where} with an identity (every row takes a sequence value) {rewrite}"
        else:
            message = ""
        if message:
            self.emit(statement, "lint.volatile-default", message)
        stored = any(
            c.contype == ConstrType.CONSTR_GENERATED
            and (getattr(c, "generated_kind", None) or "s") in {"s", "\x00"}
            for c in constraints
        )
        if stored:
            self.emit(
                statement,
                "lint.table-rewrite",
                f"{where} as a stored generated column computes it for every row: a rewrite "
                "under an ACCESS EXCLUSIVE lock",
            )
        not_null = bool(column.is_not_null) or bool(
            kinds & {ConstrType.CONSTR_NOTNULL, ConstrType.CONSTR_PRIMARY}
        )
        has_value = (
            bool(defaults)
            or serial
            or bool(kinds & {ConstrType.CONSTR_IDENTITY, ConstrType.CONSTR_GENERATED})
        )
        if not_null and not has_value:
            self.emit(
                statement,
                "lint.not-null-without-default",
                f"{where} is NOT NULL without a default: it fails if the table has rows",
            )
        for constraint in constraints:
            if constraint.skip_validation:
                continue
            if constraint.contype == ConstrType.CONSTR_FOREIGN:
                target = _Name.of(constraint.pktable)
                self.emit(
                    statement,
                    "lint.constraint-not-valid",
                    f"{where} REFERENCES {target} validates every row while locking both tables "
                    "against writes",
                )
            elif constraint.contype == ConstrType.CONSTR_CHECK:
                self.emit(
                    statement,
                    "lint.constraint-not-valid",
                    f"{where} with a CHECK scans the whole table under an ACCESS EXCLUSIVE lock",
                )
            elif constraint.contype in {ConstrType.CONSTR_UNIQUE, ConstrType.CONSTR_PRIMARY}:
                kind = (
                    "PRIMARY KEY" if constraint.contype == ConstrType.CONSTR_PRIMARY else "UNIQUE"
                )
                self.emit(
                    statement,
                    "lint.unique-constraint-without-index",
                    f"{where} {kind} builds a unique index under an ACCESS EXCLUSIVE lock",
                )

    def alter_type(
        self, statement: Statement, table: _Name, column: str, definition: ast.ColumnDef
    ) -> None:
        new = _type_of(definition.typeName)
        keys = [f"{table}.{column}", f"{table.name}.{column}", f"public.{table.name}.{column}"]
        old_text = next((self.columns[key] for key in keys if key in self.columns), None)
        old = _parse_type(old_text) if old_text else None
        using = definition.raw_default is not None
        if old is not None and new is not None and not using and _binary_coercible(old, new):
            return
        target = str(new) if new else "a new type"
        if old is not None:
            message = (
                f"ALTER COLUMN {table}.{column} TYPE {old} → {target} rewrites the table and its "
                "indexes under an ACCESS EXCLUSIVE lock"
            )
            if old.name == "timestamp" and new is not None and new.name == "timestamptz":
                message += " (unless the server's TimeZone is UTC)"
        else:
            message = (
                f"ALTER COLUMN {table}.{column} TYPE {target} rewrites the table and its indexes "
                "under an ACCESS EXCLUSIVE lock unless it is a binary-coercible widening "
                "(varchar(n) → varchar(m ≥ n) or text, numeric(p,s) → numeric(q ≥ p,s), "
                "cidr → inet); the column's current type is not known here"
            )
            if using:
                message += "; a USING clause always rewrites"
        self.emit(statement, "lint.table-rewrite", message)

    def set_not_null(self, statement: Statement, table: _Name, column: str) -> None:
        if (table.name, column) in self.validated or (table.name, None) in self.validated:
            return
        self.emit(
            statement,
            "lint.not-null-without-check",
            f"SET NOT NULL on {table}.{column} scans the whole table under an ACCESS EXCLUSIVE "
            f"lock; no validated CHECK ({column} IS NOT NULL) precedes it",
        )

    def add_constraint(
        self, statement: Statement, table: _Name, constraint: ast.Constraint, existing: bool
    ) -> None:
        kind = constraint.contype
        column = None
        if kind == ConstrType.CONSTR_CHECK:
            column = _not_null_column(constraint.raw_expr)
        elif kind == ConstrType.CONSTR_NOTNULL:
            keys = _strings(constraint.keys)
            column = keys[0] if len(keys) == 1 else None
        name = constraint.conname or _default_constraint_name(table, constraint, column)
        if constraint.skip_validation:
            if name:
                lock = (
                    "SHARE ROW EXCLUSIVE lock, which blocks writes to both tables"
                    if kind == ConstrType.CONSTR_FOREIGN
                    else "ACCESS EXCLUSIVE lock"
                )
                self.not_valid[(table.name, name)] = _NotValid(column, self.run, lock)
        elif column is not None:
            self.validated.add((table.name, column))
        self.add_constraint_index(table, constraint)
        if not existing:
            return
        label = f" {constraint.conname}" if constraint.conname else ""
        if kind in {ConstrType.CONSTR_FOREIGN, ConstrType.CONSTR_CHECK}:
            if not constraint.skip_validation:
                what = "FOREIGN KEY" if kind == ConstrType.CONSTR_FOREIGN else "CHECK"
                locks = (
                    f"while blocking writes to {table} and {_Name.of(constraint.pktable)}"
                    if kind == ConstrType.CONSTR_FOREIGN
                    else "under an ACCESS EXCLUSIVE lock"
                )
                self.emit(
                    statement,
                    "lint.constraint-not-valid",
                    f"ADD CONSTRAINT{label} {what} on {table} without NOT VALID checks every row "
                    f"{locks}",
                )
        elif kind in {ConstrType.CONSTR_UNIQUE, ConstrType.CONSTR_PRIMARY}:
            if not constraint.indexname:
                what = "PRIMARY KEY" if kind == ConstrType.CONSTR_PRIMARY else "UNIQUE"
                self.emit(
                    statement,
                    "lint.unique-constraint-without-index",
                    f"ADD CONSTRAINT{label} {what} on {table} builds its index under an ACCESS "
                    "EXCLUSIVE lock",
                )
        elif kind == ConstrType.CONSTR_EXCLUSION:
            self.emit(
                statement,
                "lint.unique-constraint-without-index",
                f"ADD CONSTRAINT{label} EXCLUDE on {table} builds its index under an ACCESS "
                "EXCLUSIVE lock, and an exclusion constraint cannot be attached from an index "
                "built concurrently",
            )
        elif kind == ConstrType.CONSTR_NOTNULL and not constraint.skip_validation:
            self.emit(
                statement,
                "lint.not-null-without-check",
                f"ADD CONSTRAINT{label} NOT NULL on {table} scans the whole table under an "
                "ACCESS EXCLUSIVE lock; add it NOT VALID and validate it later",
            )

    # -- domains and TRUNCATE ------------------------------------------------------------

    def alter_domain(self, statement: Statement, node: ast.AlterDomainStmt) -> None:
        names = _strings(node.typeName)
        if not names or names[-1] in self.new_domains:
            return
        domain = ".".join(names)
        scan = (
            "checks every column of that type in every table, holding a SHARE lock (no writes) "
            "on each table for the whole scan"
        )
        if node.subtype == "C" and isinstance(node.def_, ast.Constraint):
            if node.def_.skip_validation:
                return  # enforced for new values only: no scan, no table lock
            label = f" {node.def_.conname}" if node.def_.conname else ""
            message = f"ALTER DOMAIN {domain} ADD CONSTRAINT{label} {scan}"
        elif node.subtype == "V":
            message = f"ALTER DOMAIN {domain} VALIDATE CONSTRAINT {node.name} {scan}"
        elif node.subtype == "O":
            message = f"ALTER DOMAIN {domain} SET NOT NULL {scan}"
        else:
            return
        self.emit(statement, "lint.domain-constraint", message)

    def truncate(self, statement: Statement, node: ast.TruncateStmt) -> None:
        if node.behavior != DropBehavior.DROP_CASCADE:
            return
        names = [_Name.of(relation) for relation in node.relations or ()]
        existing = [str(name) for name in names if name is not None and self.is_existing(name)]
        if existing:
            self.emit(
                statement,
                "lint.breaking-change",
                f"TRUNCATE {', '.join(existing)} CASCADE also empties every table that has a "
                "foreign key to it, and the tables referring to those, without naming them",
            )

    def validate(self, statement: Statement, table: _Name, name: str, existing: bool) -> None:
        pending = self.not_valid.pop((table.name, name), None)
        if pending is None:
            # Added by an already applied migration: we cannot see what it checks.
            self.validated.add((table.name, None))
            return
        if pending.column is not None:
            self.validated.add((table.name, pending.column))
        if existing and pending.run == self.run:
            self.emit(
                statement,
                "lint.constraint-not-valid",
                f"VALIDATE CONSTRAINT {name} runs in the same transaction that added it, so the "
                f"scan of {table} still holds the ADD CONSTRAINT's {pending.lock}",
            )


_OPENS_BLOCK = frozenset(
    {TransactionStmtKind.TRANS_STMT_BEGIN, TransactionStmtKind.TRANS_STMT_START}
)
_CLOSES_BLOCK = frozenset(
    {
        TransactionStmtKind.TRANS_STMT_COMMIT,
        TransactionStmtKind.TRANS_STMT_ROLLBACK,
        TransactionStmtKind.TRANS_STMT_PREPARE,
    }
)


def _label(node: Any) -> str:
    """How a message names a statement that cannot run in a transaction block."""
    if isinstance(node, ast.IndexStmt):
        return "CREATE INDEX CONCURRENTLY"
    if isinstance(node, ast.DropStmt):
        return "DROP INDEX CONCURRENTLY"
    if isinstance(node, ast.ReindexStmt):
        return "REINDEX"
    if isinstance(node, ast.AlterTableStmt):
        return "DETACH PARTITION ... CONCURRENTLY"
    if isinstance(node, ast.VacuumStmt):
        return "VACUUM"
    return "this statement"


_REWRITING_SUBCOMMANDS = {
    AlterTableType.AT_SetLogged: "SET LOGGED",
    AlterTableType.AT_SetUnLogged: "SET UNLOGGED",
    AlterTableType.AT_SetTableSpace: "SET TABLESPACE",
    AlterTableType.AT_SetAccessMethod: "SET ACCESS METHOD",
}


def _default_constraint_name(
    table: _Name, constraint: ast.Constraint, column: str | None
) -> str | None:
    """The name PostgreSQL gives an unnamed constraint, for the kinds VALIDATE can name."""
    if constraint.contype == ConstrType.CONSTR_FOREIGN:
        columns = _strings(constraint.fk_attrs)
        return f"{table.name}_{'_'.join(columns)}_fkey" if columns else None
    if column is None:
        return None
    if constraint.contype == ConstrType.CONSTR_CHECK:
        return f"{table.name}_{column}_check"
    if constraint.contype == ConstrType.CONSTR_NOTNULL:
        return f"{table.name}_{column}_not_null"
    return None


def _tables_getting_primary_key(statements: Iterable[Statement]) -> set[str]:
    """Tables that an ``ALTER TABLE ... ADD PRIMARY KEY`` in the file gives a primary key."""
    tables = set()
    for statement in statements:
        node = statement.node
        if not isinstance(node, ast.AlterTableStmt):
            continue
        name = _Name.of(node.relation)
        for cmd in node.cmds or ():
            if (
                name is not None
                and isinstance(cmd, ast.AlterTableCmd)
                and cmd.subtype == AlterTableType.AT_AddConstraint
                and isinstance(cmd.def_, ast.Constraint)
                and cmd.def_.contype == ConstrType.CONSTR_PRIMARY
            ):
                tables.add(name.name)
    return tables


# -- entry points ----------------------------------------------------------------------------


def lint(
    statements: Sequence[Statement],
    *,
    file: str,
    existing_tables: Collection[str] | None = None,
    new_tables: Collection[str] = (),
    existing_columns: Mapping[str, str] | None = None,
) -> list[Finding]:
    """Lint one migration file's statements.

    ``existing_tables``: the tables the target database has (``None``: unknown, so every table
    not created by a pending migration counts as existing). ``new_tables``: tables created by
    earlier pending migrations. ``existing_columns``: current column types, keyed
    ``"table.column"`` (or ``"schema.table.column"``) as ``format_type`` prints them, which lets
    ``lint.table-rewrite`` recognise binary-coercible widenings.
    """
    linter = _Linter(existing_tables, new_tables, existing_columns)
    return linter.lint_file(statements, file)


def lint_files(
    files: Sequence[tuple[str, str]],
    *,
    existing_tables: Collection[str] | None = None,
    existing_columns: Mapping[str, str] | None = None,
    existing_indexes: Collection[str] | None = None,
) -> list[Finding]:
    """Lint pending migration files ``(name, sql)`` in the order they will run.

    What a file creates (tables, columns, indexes, NOT VALID constraints) is known to the files
    after it. ``existing_tables`` and ``existing_indexes``: what the target database has, when
    known (see :func:`lint`). Raises :class:`~airlock.db.sql.MigrationSyntaxError` for a file
    that does not parse.
    """
    linter = _Linter(existing_tables, (), existing_columns, existing_indexes)
    findings: list[Finding] = []
    for name, sql in files:
        findings.extend(linter.lint_file(split(sql, file=name), name))
    return findings
