"""The state store in one SQLite file, ``.airlock/state.db`` by default (one operator, one machine).

WAL mode, so readers never wait for the deploy that writes; every write is ``BEGIN IMMEDIATE``,
which serialises writers on the whole file (no row locks needed). The schema's version is
``PRAGMA user_version``; a file from before versions were recorded (version 0 with tables) is
version 1. Opened for reading, the file is opened ``mode=ro``: a missing file reads as empty, and
an older schema is upgraded in a copy in memory, never in the file.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from airlock.errors import StateError
from airlock.state.base import Dialect, Result, StateStore, WallClock

__all__ = ["SQLITE", "SQLiteStateStore"]

SQLITE = Dialect(
    name="sqlite",
    serial_key="INTEGER PRIMARY KEY AUTOINCREMENT",
    double="REAL",
    for_update="",
    for_share="",
)
BUSY_TIMEOUT = 10


class SQLiteStateStore(StateStore):
    """A connection to a state store in an SQLite file."""

    dialect = SQLITE

    def __init__(
        self,
        path: Path,
        *,
        readonly: bool = False,
        lease_seconds: float | None = None,
        clock: WallClock | None = None,
    ) -> None:
        super().__init__(
            where=str(path), readonly=readonly, lease_seconds=lease_seconds, clock=clock
        )
        self.path = path
        try:
            self._missing = readonly and not path.is_file()
            if not readonly:
                path.parent.mkdir(parents=True, exist_ok=True)
                self._db = _connect(str(path))
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=NORMAL")
            elif self._missing:
                self._db = _connect(":memory:")  # a missing store reads as empty
            else:
                self._db = _connect_readonly(path)
        except (sqlite3.Error, OSError) as exc:
            raise _cannot_open(path, exc) from None
        self._open()

    def _execute(self, sql: str, params: Sequence[Any] = ()) -> Result:
        try:
            cursor = self._db.execute(sql, params)
            rows = [dict(row) for row in cursor.fetchall()]
        except sqlite3.Error as exc:
            raise StateError(f"the state store {self.path}: {exc}") from None
        return Result(rows, cursor.rowcount)

    @contextmanager
    def _transaction(self) -> Iterator[object]:
        self._execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            with contextlib.suppress(sqlite3.Error):  # SQLite may have rolled back already
                self._db.execute("ROLLBACK")
            raise
        self._execute("COMMIT")

    def _database_now(self) -> datetime:
        return datetime.now(UTC)

    def _read_version(self) -> int:
        version = int(self._execute("PRAGMA user_version").rows[0]["user_version"])
        if (
            version == 0
            and self._execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'deployments'"
            ).rows
        ):
            return 1  # written before versions were recorded
        return version

    def _lock_schema(self) -> None:
        """Nothing to do: ``BEGIN IMMEDIATE`` already keeps every other writer out."""

    def _write_version(self, version: int) -> None:
        self._execute(f"PRAGMA user_version = {int(version)}")

    def _readable(self) -> bool:
        if self._missing and self.path.is_file():  # a writer created it since
            try:
                reader = _connect_readonly(self.path)
            except sqlite3.Error as exc:
                raise _cannot_open(self.path, exc) from None
            self._db.close()
            self._db, self._missing = reader, False
        return super()._readable()

    def _read_older(self, version: int) -> None:
        """Read an older file through an upgraded copy of it in memory; the file is untouched."""
        memory = _connect(":memory:")
        try:
            self._db.backup(memory)
        except sqlite3.Error as exc:
            raise _cannot_open(self.path, exc) from None
        self._db.close()
        self._db = memory
        self._upgrade()

    def _sibling(self) -> SQLiteStateStore:
        return SQLiteStateStore(self.path, lease_seconds=self.lease_seconds, clock=self._clock)

    def _disconnect(self) -> None:
        self._db.close()


def _cannot_open(path: Path, exc: BaseException) -> StateError:
    return StateError(
        f"cannot open the state store {path}: {exc}",
        hint="check the file's permissions; if it is damaged, move it away "
        "(Airlock then starts with an empty history)",
    )


def _connect_readonly(path: Path) -> sqlite3.Connection:
    return _connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)


def _connect(target: str, *, uri: bool = False) -> sqlite3.Connection:
    # One connection, used by one thread at a time (the runner hands it to a worker thread for
    # blocking database work while the event loop waits); the heartbeat has its own.
    db = sqlite3.connect(
        target, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False, uri=uri
    )
    db.row_factory = sqlite3.Row
    return db
