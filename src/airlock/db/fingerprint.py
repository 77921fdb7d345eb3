"""A canonical description of a database's schema, its fingerprint, and what differs between two.

:func:`schema_snapshot` reads the catalogs and returns one entry per user object, keyed by kind
and qualified name (``"table public.accounts"``, ``"index public.accounts_pkey"``,
``"function public.f(integer)"``, ``"constraint public.accounts.accounts_pkey"``). Each value is
a plain JSON-able dict that compares equal when the object is the same, so two snapshots can be
compared with ``==``, hashed with :func:`fingerprint` and explained with :func:`diff`.

What is described:

* schemas, extensions (name, version, schema);
* tables, partitioned and foreign tables: columns (type via ``format_type``, nullability, default
  or generation expression, identity, collation when not the type's default, position),
  persistence, row-level security, storage options, partitioning and inheritance;
* constraints (kind, ``pg_get_constraintdef``, validated), indexes (``pg_get_indexdef``, valid,
  clustered), triggers (``pg_get_triggerdef``, enabled), rules, row-level security policies;
* views and materialized views (definition, options), sequences (type, start, increment,
  bounds, cache, cycle, owning column; *not* the current value);
* functions, procedures and aggregates (identity arguments, ``pg_get_functiondef``);
* enums (labels in order), domains (base type, default, constraints), composite and range
  types, event triggers;
* comments on all of the above.

What is left out on purpose: the system schemas (``pg_catalog``, ``information_schema``,
``pg_toast``, temporary schemas), objects that belong to an extension (they come with the
extension's version), OIDs, owners and privileges (they describe who may use the schema, not its
shape, and a restore with ``--no-owner`` legitimately changes them), statistics, and everything
that lives outside the database (roles, tablespaces, database settings). Operators, casts,
collations, text search objects, foreign servers and publications are not described either.

Every catalog query runs with ``search_path = pg_catalog`` and fixed output settings, so names in
definitions are always schema-qualified and the text does not depend on the session.

:func:`table_stats` complements the schema with the data: an exact row count and an
order-independent checksum per table, both computed by the server.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

DEFAULT_EXCLUDED_TABLES: tuple[str, ...] = ("airlock_schema_history", "airlock_schema_baseline")

Snapshot = dict[str, dict[str, Any]]

# Session settings that make catalog text and row text independent of the caller's session.
_SETTINGS = {
    "search_path": "pg_catalog",
    "DateStyle": "ISO, YMD",
    "IntervalStyle": "postgres",
    "TimeZone": "UTC",
    "extra_float_digits": "3",
    "bytea_output": "hex",
}

_USER_NAMESPACE = "({ns}.nspname !~ '^pg_' AND {ns}.nspname <> 'information_schema')"


def _not_extension_member(catalog: str, oid: str) -> str:
    return (
        f"NOT EXISTS (SELECT 1 FROM pg_depend e WHERE e.classid = '{catalog}'::regclass "
        f"AND e.objid = {oid} AND e.deptype = 'e')"
    )


def _user_relations(kinds: str) -> str:
    return f"""
        SELECT c.oid, format('%%I.%%I', n.nspname, c.relname) AS name, c.relkind
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relkind IN ({kinds})
          AND {_USER_NAMESPACE.format(ns="n")}
          AND {_not_extension_member("pg_class", "c.oid")}
          AND NOT (c.oid = ANY(%(excluded)s::oid[]))
    """


_EXCLUDED_OIDS = """
    WITH tables AS (
        SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relkind IN ('r', 'p')
          AND (c.relname = ANY(%(names)s::text[])
               OR n.nspname || '.' || c.relname = ANY(%(names)s::text[]))
    )
    SELECT oid FROM tables
    UNION SELECT i.indexrelid FROM pg_index i WHERE i.indrelid IN (SELECT oid FROM tables)
    UNION SELECT d.objid FROM pg_depend d
        WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass
          AND d.refobjid IN (SELECT oid FROM tables) AND d.deptype IN ('a', 'i')
"""

_SCHEMAS = f"""
    SELECT quote_ident(n.nspname) AS name, obj_description(n.oid, 'pg_namespace') AS comment
    FROM pg_namespace n
    WHERE {_USER_NAMESPACE.format(ns="n")} AND {_not_extension_member("pg_namespace", "n.oid")}
"""

_EXTENSIONS = """
    SELECT quote_ident(x.extname) AS name, x.extversion AS version,
           quote_ident(n.nspname) AS schema
    FROM pg_extension x JOIN pg_namespace n ON n.oid = x.extnamespace
"""

_RELATIONS = f"""
    SELECT r.oid, r.name, r.relkind, c.relpersistence, c.relrowsecurity, c.relforcerowsecurity,
           c.relispopulated, c.reloptions,
           CASE WHEN c.relkind = 'p' THEN pg_get_partkeydef(c.oid) END AS partition_key,
           CASE WHEN c.relispartition THEN pg_get_expr(c.relpartbound, c.oid) END
               AS partition_bound,
           CASE WHEN c.relkind IN ('v', 'm') THEN pg_get_viewdef(c.oid, true) END AS definition,
           (SELECT array_agg(format('%%I.%%I', pn.nspname, p.relname) ORDER BY i.inhseqno)
              FROM pg_inherits i JOIN pg_class p ON p.oid = i.inhparent
              JOIN pg_namespace pn ON pn.oid = p.relnamespace
             WHERE i.inhrelid = c.oid AND NOT c.relispartition) AS inherits,
           obj_description(c.oid, 'pg_class') AS comment
    FROM ({_user_relations("'r', 'p', 'f', 'v', 'm', 'c'")}) r
    JOIN pg_class c ON c.oid = r.oid
"""

_COLUMNS = """
    SELECT a.attrelid, a.attname AS name, format_type(a.atttypid, a.atttypmod) AS type,
           a.attnotnull AS not_null, pg_get_expr(d.adbin, d.adrelid) AS default,
           a.attidentity, a.attgenerated,
           CASE WHEN a.attcollation <> t.typcollation
                THEN format('%%I.%%I', cn.nspname, co.collname) END AS collation,
           col_description(a.attrelid, a.attnum) AS comment
    FROM pg_attribute a
    JOIN pg_type t ON t.oid = a.atttypid
    LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
    LEFT JOIN pg_collation co ON co.oid = a.attcollation
    LEFT JOIN pg_namespace cn ON cn.oid = co.collnamespace
    WHERE a.attrelid = ANY(%(relations)s::oid[]) AND a.attnum > 0 AND NOT a.attisdropped
    ORDER BY a.attrelid, a.attnum
"""

_CONSTRAINTS = """
    SELECT con.conrelid, quote_ident(con.conname) AS name, con.contype,
           pg_get_constraintdef(con.oid, true) AS definition, con.convalidated
    FROM pg_constraint con
    WHERE con.conrelid = ANY(%(relations)s::oid[])
      AND NOT (con.contype = 'f' AND con.conparentid <> 0)
"""

_INDEXES = """
    SELECT format('%%I.%%I', n.nspname, ic.relname) AS name, i.indrelid,
           pg_get_indexdef(i.indexrelid) AS definition, i.indisvalid, i.indisclustered,
           obj_description(i.indexrelid, 'pg_class') AS comment
    FROM pg_index i
    JOIN pg_class ic ON ic.oid = i.indexrelid
    JOIN pg_namespace n ON n.oid = ic.relnamespace
    WHERE i.indrelid = ANY(%(relations)s::oid[])
"""

_TRIGGERS = """
    SELECT t.tgrelid, quote_ident(t.tgname) AS name, pg_get_triggerdef(t.oid) AS definition,
           t.tgenabled
    FROM pg_trigger t
    WHERE t.tgrelid = ANY(%(relations)s::oid[]) AND NOT t.tgisinternal
"""

_RULES = """
    SELECT r.ev_class, quote_ident(r.rulename) AS name, pg_get_ruledef(r.oid) AS definition,
           r.ev_enabled
    FROM pg_rewrite r
    WHERE r.ev_class = ANY(%(relations)s::oid[]) AND r.rulename <> '_RETURN'
"""

_POLICIES = """
    SELECT p.polrelid, quote_ident(p.polname) AS name, p.polcmd, p.polpermissive,
           ARRAY(SELECT CASE WHEN r = 0 THEN 'public' ELSE pg_get_userbyid(r)::text END
                   FROM unnest(p.polroles) r ORDER BY 1) AS roles,
           pg_get_expr(p.polqual, p.polrelid) AS using,
           pg_get_expr(p.polwithcheck, p.polrelid) AS with_check
    FROM pg_policy p
    WHERE p.polrelid = ANY(%(relations)s::oid[])
"""

_SEQUENCES = f"""
    SELECT r.name, format_type(s.seqtypid, NULL) AS type, s.seqstart, s.seqincrement,
           s.seqmin, s.seqmax, s.seqcache, s.seqcycle, c.relpersistence,
           (SELECT format('%%I.%%I.%%I', tn.nspname, tc.relname, a.attname)
              FROM pg_depend d
              JOIN pg_class tc ON tc.oid = d.refobjid
              JOIN pg_namespace tn ON tn.oid = tc.relnamespace
              JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
             WHERE d.classid = 'pg_class'::regclass AND d.objid = s.seqrelid
               AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')
             LIMIT 1) AS owned_by,
           obj_description(c.oid, 'pg_class') AS comment
    FROM ({_user_relations("'S'")}) r
    JOIN pg_sequence s ON s.seqrelid = r.oid
    JOIN pg_class c ON c.oid = r.oid
"""

_FUNCTIONS = f"""
    SELECT format('%%I.%%I', n.nspname, p.proname) AS name, p.prokind,
           oidvectortypes(p.proargtypes) AS argument_types,
           pg_get_function_identity_arguments(p.oid) AS identity_arguments,
           CASE WHEN p.prokind <> 'a' THEN pg_get_functiondef(p.oid) END AS definition,
           CASE WHEN p.prokind = 'a' THEN pg_get_function_result(p.oid) END AS result,
           a.aggtransfn::regprocedure::text AS transition,
           NULLIF(a.aggfinalfn, 0)::regprocedure::text AS final,
           NULLIF(a.aggcombinefn, 0)::regprocedure::text AS combine,
           format_type(a.aggtranstype, NULL) AS state_type, a.agginitval,
           obj_description(p.oid, 'pg_proc') AS comment
    FROM pg_proc p
    JOIN pg_namespace n ON n.oid = p.pronamespace
    LEFT JOIN pg_aggregate a ON a.aggfnoid = p.oid
    WHERE {_USER_NAMESPACE.format(ns="n")} AND {_not_extension_member("pg_proc", "p.oid")}
      AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_proc'::regclass
                      AND d.objid = p.oid AND d.deptype = 'i')
"""

_TYPES = f"""
    SELECT t.oid, format('%%I.%%I', n.nspname, t.typname) AS name, t.typtype,
           ARRAY(SELECT e.enumlabel::text FROM pg_enum e WHERE e.enumtypid = t.oid
                 ORDER BY e.enumsortorder) AS labels,
           CASE WHEN t.typtype = 'd' THEN format_type(t.typbasetype, t.typtypmod) END
               AS base_type,
           t.typnotnull, t.typdefault,
           CASE WHEN t.typtype = 'd' AND t.typcollation <> bt.typcollation
                THEN format('%%I.%%I', cn.nspname, co.collname) END AS collation,
           ARRAY(SELECT quote_ident(c.conname) || ' ' || pg_get_constraintdef(c.oid, true)
                   FROM pg_constraint c WHERE c.contypid = t.oid ORDER BY 1) AS constraints,
           format_type(rg.rngsubtype, NULL) AS subtype,
           NULLIF(rg.rngsubdiff, 0)::regproc::text AS subtype_diff,
           obj_description(t.oid, 'pg_type') AS comment,
           t.typrelid
    FROM pg_type t
    JOIN pg_namespace n ON n.oid = t.typnamespace
    LEFT JOIN pg_type bt ON bt.oid = t.typbasetype
    LEFT JOIN pg_collation co ON co.oid = t.typcollation
    LEFT JOIN pg_namespace cn ON cn.oid = co.collnamespace
    LEFT JOIN pg_range rg ON rg.rngtypid = t.oid
    LEFT JOIN pg_class rel ON rel.oid = t.typrelid
    WHERE t.typtype IN ('e', 'd', 'r', 'c') AND (t.typtype <> 'c' OR rel.relkind = 'c')
      AND {_USER_NAMESPACE.format(ns="n")} AND {_not_extension_member("pg_type", "t.oid")}
"""

_EVENT_TRIGGERS = f"""
    SELECT quote_ident(t.evtname) AS name, t.evtevent, t.evtfoid::regproc::text AS function,
           t.evtenabled, t.evttags
    FROM pg_event_trigger t
    WHERE {_not_extension_member("pg_event_trigger", "t.oid")}
"""

_TABLE_LIST = f"""
    SELECT n.nspname AS schema, c.relname AS table,
           format('%%I.%%I', n.nspname, c.relname) AS name
    FROM pg_class c
    JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relkind = 'r' AND {_USER_NAMESPACE.format(ns="n")}
      AND {_not_extension_member("pg_class", "c.oid")}
      AND NOT (c.oid = ANY(%(excluded)s::oid[]))
    ORDER BY 1, 2
"""

# Row checksums: a 64-bit hash per row, summed exactly (numeric), so the result depends on the
# multiset of rows and not on their physical order. Rows are hashed by value where every column
# type can be hashed (hash_record_extended: fast), else by their text (hashtextextended).
_TABLE_STAT = """
    SELECT count(*) AS rows, coalesce(sum(h::numeric), 0)::text AS total
    FROM (SELECT {hash} AS h FROM ONLY {table} AS t) AS hashed
"""
_ROW_HASHES = {
    "record": sql.SQL("hash_record_extended(t, 0)"),
    "text": sql.SQL("hashtextextended(t::text, 0)"),
}

_RELKINDS = {
    "r": "table",
    "p": "table",
    "f": "foreign table",
    "v": "view",
    "m": "materialized view",
    "c": "type",
}
_TABLE_KINDS = {"r": "ordinary", "p": "partitioned", "f": "foreign"}
_PERSISTENCE = {"p": "permanent", "u": "unlogged", "t": "temporary"}
_IDENTITY = {"a": "always", "d": "by default"}
_GENERATED = {"s": "stored", "v": "virtual"}
_CONSTRAINT_TYPES = {
    "c": "check",
    "f": "foreign key",
    "n": "not null",
    "p": "primary key",
    "u": "unique",
    "t": "trigger",
    "x": "exclusion",
}
_ENABLED = {"O": "origin", "D": "disabled", "R": "replica", "A": "always"}
_POLICY_COMMANDS = {"r": "select", "a": "insert", "w": "update", "d": "delete", "*": "all"}
_FUNCTION_KINDS = {"f": "function", "p": "procedure", "a": "aggregate", "w": "function"}
_TYPE_KINDS = {"e": "enum", "d": "domain", "r": "range", "c": "composite"}


@dataclass(frozen=True)
class TableStat:
    """The data of one table: its exact row count and an order-independent content checksum."""

    rows: int
    checksum: str

    def to_json(self) -> dict[str, Any]:
        return {"rows": self.rows, "checksum": self.checksum}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TableStat:
        return cls(rows=int(data["rows"]), checksum=str(data["checksum"]))


@dataclass
class SchemaDiff:
    """Objects added, removed and changed between a recorded snapshot and a live one."""

    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    details: dict[str, list[str]] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.changed)

    def lines(self) -> list[str]:
        """One line per added (``+``), removed (``-``) or changed (``~``) object, details
        indented below each changed one."""
        out = [f"+ {key}" for key in self.added]
        out += [f"- {key}" for key in self.removed]
        for key in self.changed:
            out.append(f"~ {key}")
            out += [f"    {detail}" for detail in self.details.get(key, [])]
        return out

    def __str__(self) -> str:
        return "\n".join(self.lines()) if not self.empty else "no schema changes"


# -- reading the catalogs ------------------------------------------------------------------------


def schema_snapshot(
    conn: psycopg.Connection[Any],
    *,
    exclude_tables: Iterable[str] = DEFAULT_EXCLUDED_TABLES,
) -> Snapshot:
    """A canonical description of every user object in the connected database.

    ``exclude_tables`` names tables (``name`` in any schema, or ``schema.name``) left out with
    their indexes, constraints, triggers, rules, policies and owned sequences. The connection is
    left as it was: everything runs in a savepoint (or a transaction) that is rolled back.
    """
    with conn.transaction(force_rollback=True):
        cur = conn.cursor(row_factory=dict_row)
        _apply_settings(cur)
        excluded = _excluded_oids(cur, exclude_tables)
        snapshot: Snapshot = {}

        for row in cur.execute(_SCHEMAS, {}).fetchall():
            snapshot[f"schema {row['name']}"] = {"comment": row["comment"]}
        for row in cur.execute(_EXTENSIONS, {}).fetchall():
            snapshot[f"extension {row['name']}"] = {
                "version": row["version"],
                "schema": row["schema"],
            }

        relations = cur.execute(_RELATIONS, {"excluded": excluded}).fetchall()
        names: dict[int, str] = {row["oid"]: row["name"] for row in relations}
        oids = list(names)
        columns = _columns(cur, oids)
        for row in relations:
            kind = row["relkind"]
            value: dict[str, Any]
            if kind == "c":
                value = {"kind": "composite", "columns": columns.get(row["oid"], {})}
            elif kind in ("v", "m"):
                value = {"definition": row["definition"], "options": row["reloptions"]}
                if kind == "m":
                    value["populated"] = row["relispopulated"]
                    value["columns"] = columns.get(row["oid"], {})
            else:
                value = {
                    "kind": _TABLE_KINDS[kind],
                    "columns": columns.get(row["oid"], {}),
                    "persistence": _PERSISTENCE.get(row["relpersistence"], "?"),
                    "row_security": row["relrowsecurity"],
                    "force_row_security": row["relforcerowsecurity"],
                    "options": row["reloptions"],
                    "partition_key": row["partition_key"],
                    "partition_bound": row["partition_bound"],
                    "inherits": row["inherits"],
                }
            value["comment"] = row["comment"]
            snapshot[f"{_RELKINDS[kind]} {row['name']}"] = value

        params = {"relations": oids}
        for row in cur.execute(_CONSTRAINTS, params).fetchall():
            snapshot[f"constraint {names[row['conrelid']]}.{row['name']}"] = {
                "type": _CONSTRAINT_TYPES.get(row["contype"], row["contype"]),
                "definition": row["definition"],
                "validated": row["convalidated"],
            }
        for row in cur.execute(_INDEXES, params).fetchall():
            snapshot[f"index {row['name']}"] = {
                "table": names[row["indrelid"]],
                "definition": row["definition"],
                "valid": row["indisvalid"],
                "clustered": row["indisclustered"],
                "comment": row["comment"],
            }
        for row in cur.execute(_TRIGGERS, params).fetchall():
            snapshot[f"trigger {names[row['tgrelid']]}.{row['name']}"] = {
                "definition": row["definition"],
                "enabled": _ENABLED.get(row["tgenabled"], row["tgenabled"]),
            }
        for row in cur.execute(_RULES, params).fetchall():
            snapshot[f"rule {names[row['ev_class']]}.{row['name']}"] = {
                "definition": row["definition"],
                "enabled": _ENABLED.get(row["ev_enabled"], row["ev_enabled"]),
            }
        for row in cur.execute(_POLICIES, params).fetchall():
            snapshot[f"policy {names[row['polrelid']]}.{row['name']}"] = {
                "command": _POLICY_COMMANDS.get(row["polcmd"], row["polcmd"]),
                "permissive": row["polpermissive"],
                "roles": row["roles"],
                "using": row["using"],
                "with_check": row["with_check"],
            }
        for row in cur.execute(_SEQUENCES, {"excluded": excluded}).fetchall():
            snapshot[f"sequence {row['name']}"] = {
                "type": row["type"],
                "start": row["seqstart"],
                "increment": row["seqincrement"],
                "min": row["seqmin"],
                "max": row["seqmax"],
                "cache": row["seqcache"],
                "cycle": row["seqcycle"],
                "persistence": _PERSISTENCE.get(row["relpersistence"], "?"),
                "owned_by": row["owned_by"],
                "comment": row["comment"],
            }
        for row in cur.execute(_FUNCTIONS, {}).fetchall():
            kind = _FUNCTION_KINDS.get(row["prokind"], "function")
            key = f"{kind} {row['name']}({row['argument_types']})"
            if key in snapshot:  # procedures that differ only in their OUT arguments
                key = f"{kind} {row['name']}({row['identity_arguments']})"
            if row["prokind"] == "a":
                snapshot[key] = {
                    "result": row["result"],
                    "transition": row["transition"],
                    "final": row["final"],
                    "combine": row["combine"],
                    "state_type": row["state_type"],
                    "initial": row["agginitval"],
                    "comment": row["comment"],
                }
            else:
                snapshot[key] = {
                    "arguments": row["identity_arguments"],
                    "definition": row["definition"],
                    "comment": row["comment"],
                }
        for row in cur.execute(_TYPES, {}).fetchall():
            type_kind = row["typtype"]
            if type_kind == "c":
                continue  # described with the relations (``type schema.name``)
            value = {"kind": _TYPE_KINDS[type_kind], "comment": row["comment"]}
            if type_kind == "e":
                value["labels"] = row["labels"]
            elif type_kind == "d":
                value.update(
                    base_type=row["base_type"],
                    not_null=row["typnotnull"],
                    default=row["typdefault"],
                    collation=row["collation"],
                    constraints=row["constraints"],
                )
            else:
                value.update(subtype=row["subtype"], subtype_diff=row["subtype_diff"])
            prefix = "domain" if type_kind == "d" else "type"
            snapshot[f"{prefix} {row['name']}"] = value
        for row in cur.execute(_EVENT_TRIGGERS, {}).fetchall():
            snapshot[f"event trigger {row['name']}"] = {
                "event": row["evtevent"],
                "function": row["function"],
                "enabled": _ENABLED.get(row["evtenabled"], row["evtenabled"]),
                "tags": row["evttags"],
            }
    return _canonical(snapshot)


def _columns(cur: psycopg.Cursor[dict[str, Any]], oids: list[int]) -> dict[int, dict[str, Any]]:
    by_relation: dict[int, dict[str, Any]] = {}
    for row in cur.execute(_COLUMNS, {"relations": oids}).fetchall():
        columns = by_relation.setdefault(row["attrelid"], {})
        columns[row["name"]] = {
            "position": len(columns) + 1,
            "type": row["type"],
            "not_null": row["not_null"],
            "default": row["default"],
            "identity": _IDENTITY.get(row["attidentity"]),
            "generated": _GENERATED.get(row["attgenerated"]),
            "collation": row["collation"],
            "comment": row["comment"],
        }
    return by_relation


def _apply_settings(cur: psycopg.Cursor[Any]) -> None:
    for name, value in _SETTINGS.items():
        cur.execute("SELECT set_config(%s, %s, true)", (name, value))


def _excluded_oids(cur: psycopg.Cursor[dict[str, Any]], names: Iterable[str]) -> list[int]:
    wanted = list(names)
    if not wanted:
        return []
    return [row["oid"] for row in cur.execute(_EXCLUDED_OIDS, {"names": wanted}).fetchall()]


def _canonical(snapshot: Snapshot) -> Snapshot:
    """A JSON round trip: sorted keys, lists for arrays, and only JSON types left."""
    result: Snapshot = json.loads(json.dumps(snapshot, sort_keys=True, default=str))
    return result


def fingerprint(snapshot: Mapping[str, Mapping[str, Any]]) -> str:
    """The sha256 (hex) of the snapshot's canonical JSON."""
    text = json.dumps(snapshot, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


# -- data ----------------------------------------------------------------------------------------


def table_stats(
    conn: psycopg.Connection[Any],
    *,
    exclude_tables: Iterable[str] = DEFAULT_EXCLUDED_TABLES,
) -> dict[str, TableStat]:
    """Exact row count and content checksum of every user table, keyed ``schema.table``.

    The checksum adds up a 64-bit hash of every row exactly, so it does not depend on the rows'
    physical order. A row is hashed by value (``hash_record_extended``) when all its column
    types can be hashed, otherwise by its text (``hashtextextended`` of the row, with fixed
    output settings); the method is part of the checksum. The server does all the work: one
    row per table reaches the client. Tables are read with ``ONLY`` (inheritance children and
    partitions count as tables of their own). The connection is left as it was.
    """
    stats: dict[str, TableStat] = {}
    with conn.transaction(force_rollback=True):
        cur = conn.cursor(row_factory=dict_row)
        _apply_settings(cur)
        excluded = _excluded_oids(cur, exclude_tables)
        tables = cur.execute(_TABLE_LIST, {"excluded": excluded}).fetchall()
        for entry in tables:
            method, row = _table_stat(conn, sql.Identifier(entry["schema"], entry["table"]))
            digest = hashlib.sha256(f"{method}:{row['rows']}:{row['total']}".encode())
            stats[entry["name"]] = TableStat(
                rows=int(row["rows"]), checksum=digest.hexdigest()[:32]
            )
    return stats


def _table_stat(conn: psycopg.Connection[Any], table: sql.Identifier) -> tuple[str, dict[str, Any]]:
    for method, row_hash in _ROW_HASHES.items():
        query = sql.SQL(_TABLE_STAT).format(hash=row_hash, table=table)
        try:
            with conn.transaction():
                row = conn.cursor(row_factory=dict_row).execute(query).fetchone()
        except psycopg.errors.UndefinedFunction:
            continue  # a column type without an extended hash function (json, point ...)
        assert row is not None
        return method, row
    raise AssertionError("hashing a row's text always works")


# -- differences ---------------------------------------------------------------------------------


def diff(
    recorded: Mapping[str, Mapping[str, Any]], live: Mapping[str, Mapping[str, Any]]
) -> SchemaDiff:
    """What changed from ``recorded`` to ``live``, with a short description per changed object."""
    result = SchemaDiff(
        added=sorted(live.keys() - recorded.keys()),
        removed=sorted(recorded.keys() - live.keys()),
    )
    for key in sorted(recorded.keys() & live.keys()):
        before, after = recorded[key], live[key]
        if before != after:
            result.changed.append(key)
            result.details[key] = describe_change(before, after)
    return result


def describe_change(before: Mapping[str, Any], after: Mapping[str, Any]) -> list[str]:
    """Short, readable lines saying which fields of one object differ."""
    lines: list[str] = []
    for name in sorted(before.keys() | after.keys()):
        old, new = before.get(name), after.get(name)
        if old == new:
            continue
        if name == "columns" and isinstance(old, Mapping) and isinstance(new, Mapping):
            lines += _describe_columns(old, new)
        else:
            lines.append(_describe_field(name, old, new))
    return lines


def _describe_columns(before: Mapping[str, Any], after: Mapping[str, Any]) -> list[str]:
    lines: list[str] = []
    for column in sorted(after.keys() - before.keys(), key=lambda c: after[c]["position"]):
        lines.append(f"column {column} added ({after[column].get('type')})")
    for column in sorted(before.keys() - after.keys(), key=lambda c: before[c]["position"]):
        lines.append(f"column {column} dropped")
    common = sorted(before.keys() & after.keys(), key=lambda c: after[c]["position"])
    for column in common:
        old, new = before[column], after[column]
        if old == new:
            continue
        changes = [
            _describe_field(name, old.get(name), new.get(name), separator=" ")
            for name in sorted(old.keys() | new.keys())
            if old.get(name) != new.get(name) and name != "position"
        ]
        if changes:
            lines.append(f"column {column}: " + ", ".join(changes))
    if not lines:
        lines.append("column order changed")
    return lines


def _describe_field(name: str, old: Any, new: Any, *, separator: str = ": ") -> str:
    label = name.replace("_", " ")
    if name == "not_null" and isinstance(new, bool):
        return "NOT NULL added" if new else "NOT NULL dropped"
    if _is_long(old) or _is_long(new):
        return f"{label} changed{_first_difference(old, new)}"
    return f"{label}{separator}{_short(old)} → {_short(new)}"


def _is_long(value: Any) -> bool:
    return len(_short(value, limit=None)) > 60 or (isinstance(value, str) and "\n" in value)


def _short(value: Any, limit: int | None = 60) -> str:
    if value is None:
        text = "none"
    elif isinstance(value, bool):
        text = "yes" if value else "no"
    elif isinstance(value, str):
        text = value
    elif isinstance(value, Sequence):
        text = "[" + ", ".join(_short(item, limit=None) for item in value) + "]"
    elif isinstance(value, Mapping):
        text = json.dumps(value, sort_keys=True)
    else:
        text = str(value)
    if limit is not None and len(text) > limit:
        return text[: limit - 1] + "…"
    return text


def _first_difference(old: Any, new: Any) -> str:
    """`` (line N: `a` → `b`)`` for two texts, the first line where they differ."""
    if not isinstance(old, str) or not isinstance(new, str):
        return ""
    old_lines, new_lines = old.splitlines(), new.splitlines()
    matcher = difflib.SequenceMatcher(a=old_lines, b=new_lines, autojunk=False)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            continue
        was = old_lines[i1].strip() if i1 < i2 else ""
        now = new_lines[j1].strip() if j1 < j2 else ""
        return f" (line {i1 + 1}: {_short(was, 40) or '∅'} → {_short(now, 40) or '∅'})"
    return ""
