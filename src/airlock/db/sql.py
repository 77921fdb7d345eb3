"""Splitting and classifying migration SQL with PostgreSQL's own parser (no database needed).

:func:`split` turns a migration file into :class:`Statement` objects: the statement's text, the
1-based line where it starts, the parse-tree node, whether PostgreSQL lets it run inside a
transaction block, and the lint codes silenced for it by ``-- airlock:ignore`` comments.

The parser is `pglast <https://pglast.readthedocs.io>`_, which embeds libpg_query, the real
PostgreSQL grammar: dollar-quoted bodies, quoted identifiers, nested comments and ``E''`` strings
are split exactly as the server would split them. libpg_query reports positions as byte offsets
into the UTF-8 text; :func:`pglast.parser.parse_sql` and :func:`pglast.parser.scan` translate
them to indexes of characters in the Python string, and so everything here counts characters
(a test with non-ASCII text before a statement keeps us honest).

Ignore comments
---------------

``-- airlock:ignore lint.index-not-concurrent, lint.table-rewrite the table is empty`` silences
the listed codes for one statement: the one directly below the comment (the comment may be one
of several comment lines right above it, with no blank line between) or the one whose first line
the comment ends. The words after the codes are the reason; the linter reports an ignore without
a reason as ``lint.ignore-without-reason``.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pglast import ast
from pglast.enums.parsenodes import (
    AlterSubscriptionType,
    AlterTableType,
    DiscardMode,
    ObjectType,
    ReindexObjectType,
    TransactionStmtKind,
)
from pglast.parser import ParseError, Token, parse_sql, scan

from airlock.errors import Location, UsageError

__all__ = [
    "IgnoreComment",
    "MigrationSyntaxError",
    "Statement",
    "explicit_transaction_control",
    "is_transactional",
    "normalise",
    "plan_execution",
    "split",
]

_COMMENT_TOKENS = frozenset({"SQL_COMMENT", "C_COMMENT"})
_IGNORE = re.compile(r"--\s*airlock:ignore\b(?P<rest>.*)", re.IGNORECASE)
_CODE = re.compile(r"[A-Za-z][A-Za-z0-9_-]*(?:\.[A-Za-z0-9_-]+)+")
_BOM = "\ufeff"


class MigrationSyntaxError(UsageError):
    """PostgreSQL's parser rejected a migration file."""

    def __init__(self, file: str, line: int, column: int, pg_message: str, source_line: str):
        near = source_line.strip()
        super().__init__(
            f"{file}:{line}:{column}: {pg_message}",
            hint="the migration is read with PostgreSQL's own parser, so this SQL would fail on "
            f"the server too; fix it near: {near[:120]}"
            if near
            else "the migration is read with PostgreSQL's own parser, so this SQL would fail "
            "on the server too; complete the statement",
        )
        self.location = Location(file, line, column)
        self.file = file
        self.line = line
        self.column = column
        self.pg_message = pg_message


@dataclass(frozen=True)
class IgnoreComment:
    """One ``-- airlock:ignore CODES reason`` comment: where it is, what it silences and why."""

    line: int
    codes: frozenset[str]
    reason: str


@dataclass(frozen=True)
class Statement:
    """One SQL statement of a migration file.

    ``text`` runs from the statement's first token to its last (comments before it and the
    terminating ``;`` are not part of it); ``line`` is the 1-based line of its first token.
    ``kind`` is the parse node's class name (``"IndexStmt"``, ``"AlterTableStmt"`` ...) and
    ``node`` the node itself. ``transactional`` is False for statements PostgreSQL refuses to
    run inside a transaction block.
    """

    text: str
    line: int
    kind: str
    transactional: bool
    ignores: frozenset[str] = frozenset()
    node: Any = field(default=None, compare=False, repr=False)
    ignore_comments: tuple[IgnoreComment, ...] = ()


# -- splitting -------------------------------------------------------------------------------


class _Lines:
    """Maps character indexes of a text to 1-based (line, column)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.starts = [0]
        index = text.find("\n")
        while index != -1:
            self.starts.append(index + 1)
            index = text.find("\n", index + 1)

    def line(self, index: int) -> int:
        return bisect.bisect_right(self.starts, index)

    def column(self, index: int) -> int:
        return index - self.starts[self.line(index) - 1] + 1

    def source(self, line: int) -> str:
        start = self.starts[line - 1]
        end = self.starts[line] - 1 if line < len(self.starts) else len(self.text)
        return self.text[start:end]


def split(sql: str, *, file: str = "<sql>") -> list[Statement]:
    """The statements of ``sql``, in order, as PostgreSQL's parser splits them.

    Raises :class:`MigrationSyntaxError` naming ``file:line:column`` when the text does not
    parse. Empty statements (a lone ``;``) and comment-only text produce no statement.
    """
    # A byte order mark is not whitespace to PostgreSQL; a space keeps every index in place.
    text = " " + sql[1:] if sql.startswith(_BOM) else sql
    lines = _Lines(text)
    try:
        raw = parse_sql(text)
        tokens = scan(text)
    except ParseError as exc:
        raise _syntax_error(exc, file, lines) from None

    starts = [token.start for token in tokens]
    spans: list[tuple[int, int, Any]] = []  # (first char, last char inclusive, node)
    for stmt in raw:
        begin = stmt.stmt_location or 0
        end = begin + stmt.stmt_len if stmt.stmt_len else len(text)
        code = [
            tokens[i]
            for i in range(bisect.bisect_left(starts, begin), bisect.bisect_left(starts, end))
            if tokens[i].name not in _COMMENT_TOKENS
        ]
        while code and code[-1].name == "ASCII_59":  # ';'
            code.pop()
        if not code:  # pragma: no cover - the parser never returns an empty statement
            continue
        spans.append((code[0].start, code[-1].end, stmt.stmt))

    comments = _ignores_by_statement(tokens, [(first, last) for first, last, _ in spans], lines)
    statements = []
    for index, (first, last, node) in enumerate(spans):
        found = tuple(comments.get(index, ()))
        statements.append(
            Statement(
                text=text[first : last + 1],
                line=lines.line(first),
                kind=type(node).__name__,
                transactional=_transactional(node),
                ignores=frozenset(code for comment in found for code in comment.codes),
                node=node,
                ignore_comments=found,
            )
        )
    return statements


def _syntax_error(exc: ParseError, file: str, lines: _Lines) -> MigrationSyntaxError:
    message = str(exc.args[0]) if exc.args else str(exc)
    position = exc.args[1] if len(exc.args) > 1 else None
    if not isinstance(position, int):
        # "at end of input": point just past the last non-blank character.
        position = len(lines.text.rstrip())
    line = lines.line(position)
    return MigrationSyntaxError(
        file, line, lines.column(position), message, lines.source(line).rstrip("\r")
    )


def _parse_ignore(comment: str, line: int) -> IgnoreComment | None:
    match = _IGNORE.match(comment.rstrip("\r"))
    if match is None:
        return None
    rest = match.group("rest").strip()
    codes: set[str] = set()
    while True:
        code = _CODE.match(rest)
        if code is None:
            break
        codes.add(code.group())
        rest = rest[code.end() :].lstrip()
        if not rest.startswith(","):
            break
        rest = rest[1:].lstrip()
    reason = rest if any(ch.isalnum() for ch in rest) else ""
    return IgnoreComment(line=line, codes=frozenset(codes), reason=reason)


def _ignores_by_statement(
    tokens: Sequence[Token], spans: Sequence[tuple[int, int]], lines: _Lines
) -> dict[int, list[IgnoreComment]]:
    """Which ignore comments belong to which statement (by index into ``spans``, the first and
    last character of each statement)."""
    code_lines: set[int] = set()
    comment_lines: set[int] = set()
    ignores: list[tuple[int, IgnoreComment]] = []  # (position, comment)
    for token in tokens:
        first, last = lines.line(token.start), lines.line(token.end)
        if token.name in _COMMENT_TOKENS:
            comment_lines.update(range(first, last + 1))
            if token.name == "SQL_COMMENT":
                parsed = _parse_ignore(lines.text[token.start : token.end + 1], first)
                if parsed is not None:
                    ignores.append((token.start, parsed))
        else:
            code_lines.update(range(first, last + 1))
    if not ignores:
        return {}

    by_line: dict[int, list[tuple[int, IgnoreComment]]] = {}
    for position, comment in ignores:
        by_line.setdefault(comment.line, []).append((position, comment))
    result: dict[int, list[IgnoreComment]] = {}
    for index, (start, _) in enumerate(spans):
        line = lines.line(start)
        # At the end of the statement's first line, unless another statement starts between.
        later = spans[index + 1][0] if index + 1 < len(spans) else len(lines.text)
        for position, comment in by_line.get(line, ()):
            if start < position < later:
                result.setdefault(index, []).append(comment)
        # On the comment-only lines directly above it (and after the previous statement).
        previous_end = spans[index - 1][1] if index else -1
        above = line - 1
        while above >= 1 and above in comment_lines and above not in code_lines:
            for position, comment in by_line.get(above, ()):
                if position > previous_end:
                    result.setdefault(index, []).append(comment)
            above -= 1
    for found in result.values():
        found.sort(key=lambda comment: comment.line)
    return result


# -- transactions ----------------------------------------------------------------------------


def _option(options: Iterable[Any] | None, name: str) -> ast.DefElem | None:
    for option in options or ():
        if isinstance(option, ast.DefElem) and option.defname == name:
            return option
    return None


def _option_is_false(options: Iterable[Any] | None, name: str) -> bool:
    option = _option(options, name)
    if option is None:
        return False
    arg = option.arg
    if isinstance(arg, ast.Boolean):
        return not arg.boolval
    if isinstance(arg, ast.String):
        return (arg.sval or "").lower() in {"false", "off", "no", "0"}
    if isinstance(arg, ast.Integer):
        return arg.ival == 0
    return False


def _transactional(node: Any) -> bool:
    """False when PostgreSQL refuses to run ``node`` inside a transaction block.

    Errs towards False where the answer depends on the database (a subscription's slot, a
    partitioned table's CLUSTER is not detected): a statement run on its own outside a
    transaction always works, one sent inside a transaction block that PostgreSQL refuses does
    not.

    ``ALTER TYPE ... ADD VALUE`` stays transactional: PostgreSQL 12 and later accept it in a
    transaction block, though the new value cannot be used before that transaction commits.
    """
    if isinstance(node, ast.IndexStmt):
        return not node.concurrent
    if isinstance(node, ast.DropStmt):
        return not (node.concurrent and node.removeType == ObjectType.OBJECT_INDEX)
    if isinstance(node, ast.ReindexStmt):
        if _option(node.params, "concurrently") is not None:
            return False
        return node.kind not in {
            ReindexObjectType.REINDEX_OBJECT_SCHEMA,
            ReindexObjectType.REINDEX_OBJECT_SYSTEM,
            ReindexObjectType.REINDEX_OBJECT_DATABASE,
        }
    if isinstance(node, ast.VacuumStmt):
        return not node.is_vacuumcmd  # ANALYZE may run in a transaction, VACUUM may not
    if isinstance(node, ast.ClusterStmt):
        return node.relation is not None  # CLUSTER without a table reclusters all of them
    if isinstance(node, ast.AlterDatabaseStmt):
        return _option(node.options, "tablespace") is None
    if isinstance(node, ast.AlterTableStmt):
        for cmd in node.cmds or ():
            if (
                isinstance(cmd, ast.AlterTableCmd)
                and cmd.subtype == AlterTableType.AT_DetachPartition
                and isinstance(cmd.def_, ast.PartitionCmd)
                and cmd.def_.concurrent
            ):
                return False
        return True
    if isinstance(node, ast.TransactionStmt):
        return node.kind not in {
            TransactionStmtKind.TRANS_STMT_COMMIT_PREPARED,
            TransactionStmtKind.TRANS_STMT_ROLLBACK_PREPARED,
        }
    if isinstance(node, ast.DiscardStmt):
        return node.target != DiscardMode.DISCARD_ALL
    if isinstance(node, ast.CreateSubscriptionStmt):
        return _option_is_false(node.options, "create_slot") or _option_is_false(
            node.options, "connect"
        )
    if isinstance(node, ast.AlterSubscriptionStmt):
        if node.kind == AlterSubscriptionType.ALTER_SUBSCRIPTION_REFRESH:
            return False
        if node.kind in {
            AlterSubscriptionType.ALTER_SUBSCRIPTION_SET_PUBLICATION,
            AlterSubscriptionType.ALTER_SUBSCRIPTION_ADD_PUBLICATION,
            AlterSubscriptionType.ALTER_SUBSCRIPTION_DROP_PUBLICATION,
        }:
            return _option_is_false(node.options, "refresh")
        return True
    return not isinstance(
        node,
        ast.CreatedbStmt
        | ast.DropdbStmt
        | ast.AlterSystemStmt
        | ast.CreateTableSpaceStmt
        | ast.DropTableSpaceStmt
        | ast.DropSubscriptionStmt,
    )


def is_transactional(statements: Iterable[Statement]) -> bool:
    """True when every statement may run inside a transaction block."""
    return all(statement.transactional for statement in statements)


def explicit_transaction_control(statements: Iterable[Statement]) -> list[Statement]:
    """The ``BEGIN``/``COMMIT``/``ROLLBACK``/``SAVEPOINT``/... statements written in a file.

    The migrator wraps each file in its own transaction; a file that manages transactions
    itself would commit half of a migration, so such files are refused.
    """
    return [statement for statement in statements if statement.kind == "TransactionStmt"]


def plan_execution(statements: Iterable[Statement]) -> list[tuple[bool, list[Statement]]]:
    """Group statements into runs: consecutive transactional ones together (``True``, to run
    in one transaction), each non-transactional one alone (``False``, to run in autocommit)."""
    runs: list[tuple[bool, list[Statement]]] = []
    for statement in statements:
        if statement.transactional and runs and runs[-1][0]:
            runs[-1][1].append(statement)
        else:
            runs.append((statement.transactional, [statement]))
    return runs


# -- checksums -------------------------------------------------------------------------------


def normalise(sql: str) -> str:
    """``sql`` as checksummed: no BOM, LF line ends, no trailing blanks or trailing empty lines,
    exactly one final newline (so an empty or blank file becomes ``"\\n"``)."""
    sql = sql.lstrip(_BOM)
    lines = [line.rstrip() for line in sql.replace("\r\n", "\n").replace("\r", "\n").split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    return "\n".join(lines) + "\n"
