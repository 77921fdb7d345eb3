"""What every state backend shares: the records, the schema and its upgrades, every query, locks
as leases and the heartbeat that renews them.

A backend (:mod:`airlock.state.sqlite`, :mod:`airlock.state.postgres`) only connects, runs one
statement, opens a transaction, tells the time and reads or writes the schema's version. The SQL
here is the part both dialects speak: ``?`` placeholders, ``INSERT ... ON CONFLICT``,
``RETURNING``; what differs (an auto-numbered key, row locks) comes from the backend's
:class:`Dialect`.

Locks are leases. The lock of an environment names its holder (user, host, pid) and when its lease
expires; a store that holds a lease renews it from a thread of its own every third of the lease's
length, on a connection of its own, until :meth:`StateStore.finish` or :meth:`StateStore.close`.
A holder is alive while its lease has not expired, and, when it runs on this host, while its
process exists (so one machine need not wait for the lease to run out after a crash).

The audit log is appended to in the same transaction as the write it records (a deployment begun,
taken over or finished, a migration or an approval journaled, a gate run, an approval); the
hashing, the Merkle trees and the checkpoints are :mod:`airlock.state.audit`'s.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import secrets
import socket
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar, Self, TypeVar
from urllib.parse import urlsplit, urlunsplit

import psutil

from airlock.errors import AirlockError, LeaseLost, LockedError, StateError
from airlock.state import audit

__all__ = [
    "DEFAULT_LEASE_SECONDS",
    "LEASE_ENV",
    "SCHEMA_VERSION",
    "STEPS",
    "Approval",
    "DeployedRow",
    "Deployment",
    "Dialect",
    "GateRun",
    "StateStore",
    "masked_url",
    "now_iso",
    "this_holder",
]

T = TypeVar("T")
#: The wall clock leases are judged by (aware datetimes); None means the store's own.
WallClock = Callable[[], datetime]

#: How long a lease lasts unless renewed, when neither the caller nor the environment says.
DEFAULT_LEASE_SECONDS = 30.0
#: The environment variable that sets the lease's length in seconds.
LEASE_ENV = "AIRLOCK_LEASE_SECONDS"
#: How often a write that met a concurrent one (a duplicate key, a serialization failure) is tried.
WRITE_ATTEMPTS = 30


# -- the schema --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Dialect:
    """What the backends' SQL does not share."""

    name: str
    #: an auto-numbered integer primary key
    serial_key: str
    #: a double-precision float
    double: str
    #: appended to a SELECT of rows about to be changed ("" where a write locks the whole store)
    for_update: str
    #: appended to a SELECT of rows that must not change before the transaction ends
    for_share: str

    def render(self, statement: str) -> str:
        return statement.format(serial_key=self.serial_key, double=self.double)


#: The schema as ordered upgrade steps: step N takes a store from version N-1 to N, and a store
#: is at the version of the last step applied to it. A released step is never edited; a change is
#: a new step at the end. Every step runs in one transaction with the version's update.
STEPS: tuple[tuple[str, ...], ...] = (
    # 1: the schema of Airlock's first (SQLite) store, before versions were recorded
    (
        """CREATE TABLE IF NOT EXISTS deployments (
            id TEXT PRIMARY KEY,
            env TEXT NOT NULL,
            kind TEXT NOT NULL,
            release_id TEXT NOT NULL,
            version TEXT NOT NULL,
            previous_release_id TEXT,
            status TEXT NOT NULL,
            started_at TEXT NOT NULL,
            finished_at TEXT,
            duration_seconds {double},
            holder TEXT NOT NULL,
            pid INTEGER NOT NULL,
            host TEXT NOT NULL,
            reason TEXT,
            failed_service TEXT,
            plan TEXT NOT NULL
        )""",
        "CREATE INDEX IF NOT EXISTS deployments_env ON deployments (env, started_at)",
        """CREATE TABLE IF NOT EXISTS journal (
            deployment_id TEXT NOT NULL REFERENCES deployments (id),
            seq INTEGER NOT NULL,
            at TEXT NOT NULL,
            type TEXT NOT NULL,
            body TEXT NOT NULL,
            PRIMARY KEY (deployment_id, seq)
        )""",
        """CREATE TABLE IF NOT EXISTS services (
            env TEXT NOT NULL,
            service TEXT NOT NULL,
            release_id TEXT NOT NULL,
            digest TEXT NOT NULL,
            instance_id TEXT NOT NULL,
            config TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            PRIMARY KEY (env, service)
        )""",
        """CREATE TABLE IF NOT EXISTS locks (
            env TEXT PRIMARY KEY,
            deployment_id TEXT NOT NULL,
            holder TEXT NOT NULL,
            pid INTEGER NOT NULL,
            host TEXT NOT NULL,
            since TEXT NOT NULL
        )""",
        """CREATE TABLE IF NOT EXISTS gate_runs (
            id {serial_key},
            env TEXT NOT NULL,
            release_id TEXT NOT NULL,
            gate TEXT NOT NULL,
            passed INTEGER NOT NULL,
            at TEXT NOT NULL,
            body TEXT NOT NULL
        )""",
        "CREATE INDEX IF NOT EXISTS gate_runs_release ON gate_runs (release_id, gate, env)",
        """CREATE TABLE IF NOT EXISTS approvals (
            id {serial_key},
            env TEXT NOT NULL,
            release_id TEXT NOT NULL,
            approver TEXT NOT NULL,
            note TEXT,
            report_id INTEGER REFERENCES gate_runs (id),
            at TEXT NOT NULL
        )""",
    ),
    # 2: locks are leases (a lock from version 1 has none: it is judged by its pid, as before);
    # the token names one holding of a lease, whoever the holder (two stores of one process too)
    (
        "ALTER TABLE locks ADD COLUMN lease_expires_at TEXT",
        "ALTER TABLE locks ADD COLUMN lease_token TEXT",
        "CREATE INDEX IF NOT EXISTS deployments_status ON deployments (env, status)",
    ),
    # 3: the audit log, append-only, hash-chained (see airlock.state.audit); each dialect adds
    # what refuses to change or delete an entry (APPEND_ONLY)
    (
        """CREATE TABLE IF NOT EXISTS audit (
            seq INTEGER PRIMARY KEY,
            at TEXT NOT NULL,
            actor TEXT NOT NULL,
            env TEXT,
            kind TEXT NOT NULL,
            payload TEXT NOT NULL,
            hash TEXT NOT NULL
        )""",
        "CREATE INDEX IF NOT EXISTS audit_env ON audit (env, seq)",
    ),
)
#: Statements only one dialect runs, after the shared ones of a step: dialect → step → them.
#: The audit log refuses UPDATE and DELETE (and, in PostgreSQL, TRUNCATE) of its entries.
APPEND_ONLY: dict[str, dict[int, tuple[str, ...]]] = {
    "sqlite": {
        3: (
            "CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit "
            "BEGIN SELECT RAISE(ABORT, 'the audit log is append-only: UPDATE refused'); END",
            "CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit "
            "BEGIN SELECT RAISE(ABORT, 'the audit log is append-only: DELETE refused'); END",
        )
    },
    "postgres": {
        3: (
            "CREATE OR REPLACE FUNCTION audit_append_only() RETURNS trigger LANGUAGE plpgsql "
            "AS $$ BEGIN RAISE EXCEPTION USING MESSAGE = "
            "'the audit log is append-only: ' || TG_OP || ' refused'; END $$",
            "CREATE TRIGGER audit_no_change BEFORE UPDATE OR DELETE ON audit "
            "FOR EACH ROW EXECUTE FUNCTION audit_append_only()",
            "CREATE TRIGGER audit_no_truncate BEFORE TRUNCATE ON audit "
            "FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only()",
        )
    },
}
#: The version of the schema this Airlock writes.
SCHEMA_VERSION = len(STEPS)


# -- records -----------------------------------------------------------------------------------


def now_iso() -> str:
    return _stamp(datetime.now(UTC))


def this_holder() -> str:
    user = os.environ.get("USER") or os.environ.get("LOGNAME") or "unknown"
    return f"{user}@{socket.gethostname()} (pid {os.getpid()})"


def masked_url(url: str) -> str:
    """``url`` with any password replaced by ``****`` (for messages; never print it whole)."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return "(an invalid URL)"
    if password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:****@{host}"))


def holder_alive(host: str, pid: int, lease_live: bool | None) -> bool:
    """Whether a holder lives: its lease has not expired, and on this host its process exists.

    ``lease_live`` is None for a lock without a lease (written by Airlock before leases): such a
    holder is judged by its pid alone, on its own host, as then.
    """
    if lease_live is False:
        return False
    if host == socket.gethostname():
        return psutil.pid_exists(pid)
    return lease_live is True


@dataclass(frozen=True)
class Deployment:
    id: str
    env: str
    kind: str
    release_id: str
    version: str
    previous_release_id: str | None
    status: str
    started_at: str
    finished_at: str | None
    duration_seconds: float | None
    holder: str
    pid: int
    host: str
    reason: str | None
    failed_service: str | None
    plan: dict[str, Any]
    #: when the lease of the environment's lock expires (None when it holds no lock, or a lock
    #: from before leases)
    lease_expires_at: str | None = None
    #: whether that lease had not expired by the store's clock when this record was read
    lease_live: bool | None = None

    def to_dict(self) -> dict[str, Any]:
        data = dict(self.__dict__)
        data.pop("plan")
        return data

    @property
    def holder_alive(self) -> bool:
        """It is running, its lease is live (as read), and where the holder runs on this host,
        its pid exists."""
        return self.status == "running" and holder_alive(self.host, self.pid, self.lease_live)


class _Record:
    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class GateRun(_Record):
    """One recorded run of a gate (load, go/no-go, ...) for a release in an environment."""

    id: int
    env: str
    release_id: str
    gate: str
    passed: bool
    at: str
    body: dict[str, Any]


@dataclass(frozen=True)
class Approval(_Record):
    """One approval of a release for an environment, and the go/no-go report it was given on."""

    id: int
    env: str
    release_id: str
    approver: str
    note: str | None
    report_id: int | None
    at: str


@dataclass(frozen=True)
class DeployedRow:
    service: str
    release_id: str
    digest: str
    instance_id: str
    config: dict[str, str]
    updated_at: str


@dataclass(frozen=True)
class _Holder:
    """Who holds a lease, as written in the lock: the holder's name, pid and host."""

    name: str
    pid: int
    host: str

    @classmethod
    def me(cls) -> _Holder:
        return cls(this_holder(), os.getpid(), socket.gethostname())

    @classmethod
    def of(cls, row: Mapping[str, Any]) -> _Holder:
        return cls(row["holder"], row["pid"], row["host"])


@dataclass(frozen=True)
class _Lease:
    """A lease this store holds: the deployment's environment, as whom, and its token (the lock
    carries the token of the holding it is in; no other holding renews or writes with it)."""

    env: str
    holder: _Holder
    token: str


@dataclass(frozen=True)
class Result:
    """What one statement gave: its rows (as dicts) and how many rows it changed."""

    rows: list[dict[str, Any]]
    rowcount: int


def lease_length(seconds: float | None) -> float:
    """The lease's length: ``seconds``, else ``AIRLOCK_LEASE_SECONDS``, else 30 s."""
    if seconds is None:
        raw = os.environ.get(LEASE_ENV, "").strip()
        try:
            seconds = float(raw) if raw else DEFAULT_LEASE_SECONDS
        except ValueError:
            raise StateError(
                f"{LEASE_ENV}={raw!r} is not a number of seconds",
                hint=f"set it to a number such as 30, or unset it ({DEFAULT_LEASE_SECONDS:g} s)",
            ) from None
    if not seconds > 0:
        raise StateError(f"a lease must last more than 0 seconds, not {seconds:g}")
    return seconds


_DEPLOYMENT = (
    "SELECT d.*, l.lease_expires_at FROM deployments d "
    "LEFT JOIN locks l ON l.deployment_id = d.id AND l.env = d.env"
)
_DEPLOYMENT_FIELDS = frozenset(Deployment.__dataclass_fields__) - {"lease_live"}


# -- the store ---------------------------------------------------------------------------------


class StateStore(ABC):
    """A connection to one project's state: deployments, the journal, what is deployed, locks as
    leases, gate runs and approvals. Open one with :func:`airlock.state.open_state`.

    A store opened with ``readonly`` never writes: it neither creates nor upgrades the schema,
    a missing store reads as empty, and every write raises :class:`StateError`.
    """

    dialect: ClassVar[Dialect]
    #: what a backend raises when a write met a concurrent one and is worth trying again
    retryable: ClassVar[tuple[type[Exception], ...]] = ()

    def __init__(
        self, *, where: str, readonly: bool, lease_seconds: float | None, clock: WallClock | None
    ) -> None:
        #: the store, for messages (a path, or a URL without its password)
        self.where = where
        self.readonly = readonly
        self.lease_seconds = lease_length(lease_seconds)
        self._clock = clock
        self._empty = False
        self._held: dict[str, _Lease] = {}
        self._held_lock = threading.Lock()
        self._heartbeat: _Heartbeat | None = None
        self._closed = False
        #: deployments whose lease this store held and lost, and why
        self.lost: dict[str, str] = {}
        #: the project folder and name to write audit checkpoints for (set by ``open_state``);
        #: None: this store writes none by itself
        self.audit_home: tuple[Path, str] | None = None
        self._checkpoint_due = False

    # -- what a backend provides ---------------------------------------------------------------

    @abstractmethod
    def _execute(self, sql: str, params: Sequence[Any] = ()) -> Result:
        """Run one statement (``?`` placeholders); driver errors become :class:`StateError`,
        except :attr:`retryable` ones."""

    @abstractmethod
    def _transaction(self) -> AbstractContextManager[object]:
        """A transaction that serialises this write with every other writer's where they meet."""

    @abstractmethod
    def _database_now(self) -> datetime:
        """The time by the clock every holder of this store shares."""

    @abstractmethod
    def _read_version(self) -> int:
        """The schema's version (0: no schema)."""

    @abstractmethod
    def _write_version(self, version: int) -> None:
        """Record the schema's version, inside the upgrade's transaction."""

    @abstractmethod
    def _sibling(self) -> StateStore:
        """Another connection to the same store, for the heartbeat."""

    @abstractmethod
    def _disconnect(self) -> None: ...

    @abstractmethod
    def _lock_schema(self) -> None:
        """Inside the upgrade's transaction, before the version is read again: keep other
        writers from upgrading at the same time (where the transaction does not already)."""

    def _read_older(self, version: int) -> None:
        """Opened for reading, the store's schema is older than this Airlock's."""
        raise StateError(
            f"the state store {self.where} has schema version {version}, older than this "
            f"Airlock's {SCHEMA_VERSION}, and it was opened for reading, which never upgrades it",
            hint="run any airlock command that records state (a deploy, an approval) once to "
            "upgrade it in place",
        )

    # -- opening and closing -------------------------------------------------------------------

    def _open(self) -> None:
        """Check the schema's version; a writer creates or upgrades it in place."""
        try:
            if self.readonly:
                self._empty = not self._readable()
            else:
                version = self._read_version()
                self._refuse_newer(version)
                if version != SCHEMA_VERSION:
                    self._upgrade()
        except BaseException:
            self._disconnect()
            raise

    def _readable(self) -> bool:
        """Opened for reading: whether the store exists yet (a reader sees it once a writer
        created it, on its next read)."""
        version = self._read_version()
        self._refuse_newer(version)
        if 0 < version < SCHEMA_VERSION:
            self._read_older(version)
        return version > 0

    def _refuse_newer(self, version: int) -> None:
        if version > SCHEMA_VERSION:
            raise StateError(
                f"the state store {self.where} was written by a newer Airlock (schema version "
                f"{version}; this Airlock knows versions up to {SCHEMA_VERSION})",
                hint="upgrade Airlock on this machine (every operator sharing a store needs a "
                "version that knows its schema)",
            )

    def _upgrade(self) -> None:
        """Apply the missing steps in one transaction, then record the version."""

        def work() -> None:
            self._lock_schema()
            version = self._read_version()  # again: another writer may have upgraded it
            self._refuse_newer(version)
            extra = APPEND_ONLY.get(self.dialect.name, {})
            for number, step in enumerate(STEPS[version:], start=version + 1):
                for statement in (*step, *extra.get(number, ())):
                    self._execute(self.dialect.render(statement))
            if version < SCHEMA_VERSION:
                self._write_version(SCHEMA_VERSION)

        self._in_transaction(work)

    def close(self) -> None:
        """Stop renewing leases (they run out unless finished) and close the connection."""
        if self._closed:
            return
        self._closed = True
        if self._heartbeat is not None:
            self._heartbeat.stop()
        self._disconnect()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def schema_version(self) -> int:
        """The version of the schema as read (0 for a missing store opened for reading)."""
        if self._empty:
            self._empty = not self._readable()
        return 0 if self._empty else self._read_version()

    # -- statements and transactions -----------------------------------------------------------

    def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        if self._empty:
            self._empty = not self._readable()
            if self._empty:
                return []
        return self._execute(sql, params).rows

    def _row(self, sql: str, params: Sequence[Any] = ()) -> dict[str, Any] | None:
        rows = self._rows(sql, params)
        return rows[0] if rows else None

    def _write(self, work: Callable[[], T]) -> T:
        if self.readonly:
            raise StateError(
                f"the state store {self.where} was opened for reading",
                hint="open it with readonly=False to change it",
            )
        result = self._in_transaction(work)
        if self._checkpoint_due:
            self._checkpoint_due = False
            self._checkpoint_quietly()
        return result

    def _in_transaction(self, work: Callable[[], T]) -> T:
        """Run ``work`` in a transaction, again from the start when it met a concurrent write."""
        for attempt in range(1, WRITE_ATTEMPTS + 1):
            try:
                with self._transaction():
                    return work()
            except self.retryable as exc:
                if attempt == WRITE_ATTEMPTS:
                    raise StateError(
                        f"the state store {self.where} stayed too busy: {exc}",
                        hint="try again",
                    ) from None
                time.sleep(random.uniform(0, 0.005 * attempt))
        raise AssertionError("unreachable")  # pragma: no cover

    def _now(self) -> datetime:
        return (self._clock or self._database_now)().astimezone(UTC)

    def _lease_until(self, now: datetime) -> str:
        return _stamp(now + timedelta(seconds=self.lease_seconds))

    # -- leases --------------------------------------------------------------------------------

    def _hold(self, deployment_id: str, lease: _Lease) -> None:
        with self._held_lock:
            self._held[deployment_id] = lease
            self.lost.pop(deployment_id, None)
            if self._heartbeat is None or not self._heartbeat.is_alive():
                self._heartbeat = _Heartbeat(self)

    def _release(self, deployment_id: str) -> None:
        with self._held_lock:
            self._held.pop(deployment_id, None)

    def _lose(self, deployment_id: str, why: str) -> None:
        with self._held_lock:
            if self._held.pop(deployment_id, None) is not None:
                self.lost[deployment_id] = why

    def holding(self) -> dict[str, str]:
        """The deployments whose lease this store holds and renews, and as whom."""
        with self._held_lock:
            return {key: lease.holder.name for key, lease in self._held.items()}

    def _holding(self) -> dict[str, _Lease]:
        with self._held_lock:
            return dict(self._held)

    def _renew(self, deployment_id: str, token: str) -> bool:
        """Extend a lease by its length from now, if the holding ``token`` names still has it."""

        def work() -> bool:
            changed = self._execute(
                "UPDATE locks SET lease_expires_at = ? WHERE deployment_id = ? AND lease_token = ?",
                (self._lease_until(self._now()), deployment_id, token),
            )
            return changed.rowcount == 1

        return self._write(work)

    def _fence(self, deployment_id: str | None = None, *, env: str | None = None) -> None:
        """Refuse to write for a deployment (or an environment) whose lease this store held and
        lost since.

        Inside the write's transaction; the lock's row stays as read until it commits, so a
        ``take_over`` elsewhere comes strictly before or after this write.
        """
        for key, lease in self._holding().items():
            if key != deployment_id and lease.env != env:
                continue
            lock = self._row(
                "SELECT * FROM locks WHERE deployment_id = ?" + self.dialect.for_share, (key,)
            )
            if lock is not None and lock["lease_token"] == lease.token:
                continue
            why = f"{lock['holder']} took it over" if lock else "another process finished it"
            self._lose(key, why)
            raise LeaseLost(
                f"this process no longer holds deployment {key}: {why}",
                hint="its lease ran out while this process was stalled or cut off from the "
                "state store; the new holder carries the deployment on (see `airlock status`)",
            )

    # -- deployments and locks -----------------------------------------------------------------

    def begin(
        self,
        *,
        deployment_id: str,
        env: str,
        kind: str,
        release_id: str,
        version: str,
        previous_release_id: str | None,
        plan: Mapping[str, Any],
    ) -> Deployment:
        """Take the environment's lock as a lease and record a running deployment, atomically.

        Raises :class:`LockedError` naming the holder, its host and since when while another
        deployment of ``env`` is running, whether its lease is live or expired: an expired one
        is for ``airlock resume`` to finish, never silently dropped. From here until
        :meth:`finish` (or :meth:`close`) this store renews the lease by itself.
        """
        me, token = _Holder.me(), secrets.token_hex(16)

        def work() -> None:
            now = self._now()
            lock = self._row("SELECT * FROM locks WHERE env = ?" + self.dialect.for_update, (env,))
            running = self._row(
                _DEPLOYMENT + " WHERE d.env = ? AND d.status = 'running' "
                "ORDER BY d.started_at DESC, d.id DESC LIMIT 1",
                (env,),
            )
            if running is not None:
                since = running["started_at"]
                if lock is not None and lock["deployment_id"] == running["id"]:
                    since = lock["since"]
                raise self._locked(env, running["id"], running, since, now)
            if lock is not None:
                if holder_alive(lock["host"], lock["pid"], _live(lock, now)):
                    raise self._locked(env, lock["deployment_id"], lock, lock["since"], now)
                # a lock left by a deployment that is not running: nothing to resume
                self._execute("DELETE FROM locks WHERE env = ?", (env,))
                self._audit(
                    "lock.broken",
                    env,
                    {
                        "deployment": lock["deployment_id"],
                        "holder": lock["holder"],
                        "host": lock["host"],
                        "since": lock["since"],
                        "why": "its deployment is not running",
                    },
                )
            since = _stamp(now)
            self._execute(
                "INSERT INTO locks (env, deployment_id, holder, pid, host, since, "
                "lease_expires_at, lease_token) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (env, deployment_id, *_fields(me), since, self._lease_until(now), token),
            )
            self._execute(
                "INSERT INTO deployments (id, env, kind, release_id, version, "
                "previous_release_id, status, started_at, holder, pid, host, plan) "
                "VALUES (?, ?, ?, ?, ?, ?, 'running', ?, ?, ?, ?, ?)",
                (
                    deployment_id,
                    env,
                    kind,
                    release_id,
                    version,
                    previous_release_id,
                    since,
                    *_fields(me),
                    json.dumps(plan),
                ),
            )
            self._audit(
                f"{kind}.started",
                env,
                {
                    "deployment": deployment_id,
                    "release": release_id,
                    "version": version,
                    "previous_release": previous_release_id,
                    "lock": {"holder": me.name, "lease_expires_at": self._lease_until(now)},
                },
            )

        self._write(work)
        self._hold(deployment_id, _Lease(env, me, token))
        return self.deployment(deployment_id)

    def take_over(self, judged: Deployment) -> None:
        """Make this process the holder of a running deployment's lock (for ``resume``).

        ``judged`` is the deployment as the caller read it when it judged its holder dead: the
        lock changes hands only if that holder still has it with the same lease (a
        compare-and-swap on holder, pid, host and lease), so two ``resume`` commands can never
        both take one deployment over, and a holder that renewed its lease since keeps it. The
        loser gets :class:`LockedError` naming the winner; a holder still alive (its lease live,
        or its process running on this host) is not taken over unless it is this process.
        """
        me, token = _Holder.me(), secrets.token_hex(16)

        def work() -> None:
            now = self._now()
            lock = self._row(
                "SELECT * FROM locks WHERE deployment_id = ?" + self.dialect.for_update,
                (judged.id,),
            )
            if lock is None:
                raise StateError(
                    f"deployment {judged.id} to {judged.env!r} has already finished",
                    hint=f"see `airlock history {judged.env}`",
                )
            seen = _Holder.of(lock)
            judged_holder = _Holder(judged.holder, judged.pid, judged.host)
            if seen != judged_holder or lock["lease_expires_at"] != judged.lease_expires_at:
                raise self._locked(judged.env, judged.id, lock, lock["since"], now)
            itself = (seen.pid, seen.host) == (me.pid, me.host)
            if not itself and holder_alive(seen.host, seen.pid, _live(lock, now)):
                raise self._locked(judged.env, judged.id, lock, lock["since"], now)
            taken = self._execute(
                "UPDATE locks SET holder = ?, pid = ?, host = ?, lease_expires_at = ?, "
                "lease_token = ? WHERE deployment_id = ? AND holder = ? AND pid = ? AND host = ? "
                "AND COALESCE(lease_expires_at, '') = ?",
                (
                    *_fields(me),
                    self._lease_until(now),
                    token,
                    judged.id,
                    *_fields(judged_holder),
                    judged.lease_expires_at or "",
                ),
            )
            if taken.rowcount != 1:  # pragma: no cover - the row is locked and compared above
                raise self._locked(judged.env, judged.id, lock, lock["since"], now)
            self._execute(
                "UPDATE deployments SET holder = ?, pid = ?, host = ? WHERE id = ?",
                (*_fields(me), judged.id),
            )
            self._audit(
                "resume",
                judged.env,
                {
                    "deployment": judged.id,
                    "release": judged.release_id,
                    "lock": {
                        "broken_from": seen.name,
                        "host": seen.host,
                        "lease_expired_at": lock["lease_expires_at"],
                        "taken_by": me.name,
                    },
                },
            )

        self._write(work)
        self._hold(judged.id, _Lease(judged.env, me, token))

    def finish(
        self,
        deployment_id: str,
        status: str,
        *,
        reason: str | None = None,
        failed_service: str | None = None,
    ) -> None:
        """Close a deployment and release its environment's lock.

        A store that held the deployment's lease and lost it (another process took the
        deployment over) raises :class:`StateError` and changes nothing.
        """

        def work() -> None:
            self._fence(deployment_id)
            row = self._row(
                "SELECT env, started_at, kind, release_id, version FROM deployments WHERE id = ?",
                (deployment_id,),
            )
            if row is None:
                raise StateError(f"no deployment {deployment_id} in {self.where}")
            finished = self._now()
            duration = (finished - datetime.fromisoformat(row["started_at"])).total_seconds()
            self._execute(
                "UPDATE deployments SET status = ?, finished_at = ?, duration_seconds = ?, "
                "reason = ?, failed_service = ? WHERE id = ?",
                (status, _stamp(finished), duration, reason, failed_service, deployment_id),
            )
            released = self._execute("DELETE FROM locks WHERE deployment_id = ?", (deployment_id,))
            self._audit(
                f"{row['kind']}.finished",
                row["env"],
                {
                    "deployment": deployment_id,
                    "release": row["release_id"],
                    "version": row["version"],
                    "status": status,
                    "reason": reason,
                    "failed_service": failed_service,
                    "seconds": round(duration, 3),
                    "lock": "released" if released.rowcount else None,
                },
            )

        self._write(work)
        self._release(deployment_id)

    def lock(self, env: str) -> dict[str, Any] | None:
        """The environment's lock: deployment, holder, pid, host, since, lease_expires_at, and
        whether the lease is live (None for a lock from before leases)."""
        row = self._row(
            "SELECT env, deployment_id, holder, pid, host, since, lease_expires_at FROM locks "
            "WHERE env = ?",
            (env,),
        )
        if row is None:
            return None
        return {**row, "lease_live": _live(row, self._now())}

    def deployment(self, deployment_id: str) -> Deployment:
        rows = self._deployments(" WHERE d.id = ?", (deployment_id,))
        if not rows:
            raise StateError(f"no deployment {deployment_id} in {self.where}")
        return rows[0]

    def deployments(self, env: str | None = None, limit: int = 50) -> list[Deployment]:
        """Newest first."""
        if env is None:
            return self._deployments(" ORDER BY d.started_at DESC, d.id DESC LIMIT ?", (limit,))
        return self._deployments(
            " WHERE d.env = ? ORDER BY d.started_at DESC, d.id DESC LIMIT ?", (env, limit)
        )

    def running(self, env: str) -> Deployment | None:
        rows = self._deployments(
            " WHERE d.env = ? AND d.status = 'running' "
            "ORDER BY d.started_at DESC, d.id DESC LIMIT 1",
            (env,),
        )
        return rows[0] if rows else None

    def _deployments(self, where: str, params: Sequence[Any]) -> list[Deployment]:
        rows = self._rows(_DEPLOYMENT + where, params)
        now = self._now() if any(r["lease_expires_at"] for r in rows) else None
        return [_deployment(row, now) for row in rows]

    def _locked(
        self, env: str, deployment_id: str, holder: Mapping[str, Any], since: str, now: datetime
    ) -> LockedError:
        """The refusal: who holds ``env`` (holder, host, since when) and whether it lives."""
        name, host, pid = holder["holder"], holder["host"], holder["pid"]
        expires = holder.get("lease_expires_at")
        live = _live(holder, now)
        if holder_alive(host, pid, live):
            state = f"its lease is live until {expires}" if live else "its process is running"
            hint = (
                "wait for that release to finish; if its process is gone, "
                f"`airlock resume {env}` takes it over once the lease has expired"
            )
        else:
            if live is False:
                state = f"its lease expired at {expires}"
            elif host == socket.gethostname():
                state = f"its process {pid} is gone from this host"
            else:
                state = "it holds no lease (it was taken by an older Airlock)"
            hint = f"run `airlock resume {env}` to finish or roll back that deployment"
        error = LockedError(env, name, since, deployment_id)
        error.message = (
            f"environment {env!r} is locked by {name} on host {host} since {since} "
            f"(deployment {deployment_id}); {state}"
        )
        error.hint = hint
        error.args = (error.message,)
        return error

    # -- the journal ---------------------------------------------------------------------------

    def journal(self, deployment_id: str, type_: str, body: Mapping[str, Any]) -> None:
        """Append one record (an engine event, or an action taken) durably.

        ``seq`` numbers a deployment's records 1, 2, 3 ... whoever writes them: a record that
        met a concurrent one with the same number is written again with the next.
        """
        text = json.dumps(dict(body))

        def work() -> None:
            self._fence(deployment_id)
            row = self._row(
                "SELECT COALESCE(MAX(seq), 0) + 1 AS seq FROM journal WHERE deployment_id = ?",
                (deployment_id,),
            )
            assert row is not None
            self._execute(
                "INSERT INTO journal (deployment_id, seq, at, type, body) VALUES (?, ?, ?, ?, ?)",
                (deployment_id, row["seq"], _stamp(self._now()), type_, text),
            )
            recorded = _journaled(type_, body)
            if recorded is not None:
                found = self._row("SELECT env FROM deployments WHERE id = ?", (deployment_id,))
                kind, payload = recorded
                self._audit(
                    kind, found["env"] if found else None, {"deployment": deployment_id, **payload}
                )

        self._write(work)

    def records(self, deployment_id: str, type_: str | None = None) -> list[dict[str, Any]]:
        query = "SELECT seq, at, type, body FROM journal WHERE deployment_id = ?"
        params: tuple[str, ...] = (deployment_id,)
        if type_ is not None:
            query += " AND type = ?"
            params += (type_,)
        rows = self._rows(query + " ORDER BY seq", params)
        return [{**r, "body": json.loads(r["body"])} for r in rows]

    # -- what is deployed ----------------------------------------------------------------------

    def deployed(self, env: str) -> dict[str, DeployedRow]:
        rows = self._rows("SELECT * FROM services WHERE env = ? ORDER BY service", (env,))
        return {
            r["service"]: DeployedRow(
                r["service"],
                r["release_id"],
                r["digest"],
                r["instance_id"],
                json.loads(r["config"]),
                r["updated_at"],
            )
            for r in rows
        }

    def set_deployed(
        self,
        env: str,
        service: str,
        *,
        release_id: str,
        digest: str,
        instance_id: str,
        config: Mapping[str, str],
    ) -> None:
        def work() -> None:
            self._fence(env=env)
            self._execute(
                "INSERT INTO services (env, service, release_id, digest, instance_id, config, "
                "updated_at) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (env, service) DO UPDATE "
                "SET release_id = excluded.release_id, digest = excluded.digest, "
                "instance_id = excluded.instance_id, config = excluded.config, "
                "updated_at = excluded.updated_at",
                (
                    env,
                    service,
                    release_id,
                    digest,
                    instance_id,
                    json.dumps(dict(config)),
                    _stamp(self._now()),
                ),
            )

        self._write(work)

    def remove_deployed(self, env: str, service: str | None = None) -> None:
        def work() -> None:
            self._fence(env=env)
            if service is None:
                self._execute("DELETE FROM services WHERE env = ?", (env,))
            else:
                self._execute("DELETE FROM services WHERE env = ? AND service = ?", (env, service))

        self._write(work)

    def current_release(self, env: str) -> str | None:
        """The release of the environment's last deployment that succeeded."""
        row = self._row(
            "SELECT release_id FROM deployments WHERE env = ? AND status = 'succeeded' "
            "ORDER BY started_at DESC, id DESC LIMIT 1",
            (env,),
        )
        return str(row["release_id"]) if row else None

    def previous_good_release(self, env: str) -> str | None:
        """The release that succeeded before the current one (the target of a rollback)."""
        rows = self._rows(
            "SELECT release_id FROM deployments WHERE env = ? AND status = 'succeeded' "
            "ORDER BY started_at DESC, id DESC",
            (env,),
        )
        releases = [str(row["release_id"]) for row in rows]  # the first is the current one
        return next((r for r in releases if r != releases[0]), None)

    # -- gates and approvals -------------------------------------------------------------------

    def record_gate(
        self, env: str, release_id: str, gate: str, *, passed: bool, body: Mapping[str, Any]
    ) -> GateRun:
        """Store one gate's verdict and evidence with the release (secrets masked by caller)."""
        text = json.dumps(dict(body), default=str)

        def work() -> GateRun:
            at = _stamp(self._now())
            row = self._execute(
                "INSERT INTO gate_runs (env, release_id, gate, passed, at, body) "
                "VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
                (env, release_id, gate, int(passed), at, text),
            ).rows[0]
            kind, payload = _gate_entry(row["id"], release_id, gate, passed, body)
            self._audit(kind, env, payload)
            return GateRun(row["id"], env, release_id, gate, passed, at, dict(body))

        return self._write(work)

    def update_gate(self, run_id: int, *, body: Mapping[str, Any]) -> None:
        text = json.dumps(dict(body), default=str)
        self._write(
            lambda: self._execute("UPDATE gate_runs SET body = ? WHERE id = ?", (text, run_id))
        )

    def gate_runs(
        self, release_id: str, *, gate: str | None = None, env: str | None = None
    ) -> list[GateRun]:
        """Recorded runs for a release, newest first."""
        query = "SELECT * FROM gate_runs WHERE release_id = ?"
        params: list[str] = [release_id]
        if gate is not None:
            query += " AND gate = ?"
            params.append(gate)
        if env is not None:
            query += " AND env = ?"
            params.append(env)
        rows = self._rows(query + " ORDER BY id DESC", params)
        return [
            GateRun(
                r["id"],
                r["env"],
                r["release_id"],
                r["gate"],
                bool(r["passed"]),
                r["at"],
                json.loads(r["body"]),
            )
            for r in rows
        ]

    def approve(
        self, env: str, release_id: str, approver: str, *, note: str | None, report_id: int | None
    ) -> Approval:
        def work() -> Approval:
            at = _stamp(self._now())
            row = self._execute(
                "INSERT INTO approvals (env, release_id, approver, note, report_id, at) "
                "VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
                (env, release_id, approver, note, report_id, at),
            ).rows[0]
            self._audit(
                "approval",
                env,
                {
                    "approval": row["id"],
                    "release": release_id,
                    "approver": approver,
                    "note": note,
                    "report": report_id,
                },
            )
            return Approval(row["id"], env, release_id, approver, note, report_id, at)

        return self._write(work)

    def approvals(self, env: str, release_id: str) -> list[Approval]:
        rows = self._rows(
            "SELECT id, env, release_id, approver, note, report_id, at FROM approvals "
            "WHERE env = ? AND release_id = ? ORDER BY id",
            (env, release_id),
        )
        return [Approval(**r) for r in rows]

    # -- the audit log -------------------------------------------------------------------------

    def record_seal(
        self, release_id: str, *, project: str, version: str, source: Mapping[str, Any], files: int
    ) -> None:
        """Record in the audit log that a release was sealed (nothing else in the store holds
        releases: they live under ``.airlock/releases/``)."""
        payload = {
            "release": release_id,
            "project": project,
            "version": version,
            "commit": source.get("commit"),
            "dirty": bool(source.get("dirty")),
            "files": files,
        }
        self._write(lambda: self._audit("release.sealed", None, payload))

    def record_database(self, kind: str, env: str | None, payload: Mapping[str, Any]) -> None:
        """Record in the audit log a change made to a database outside a deploy (``airlock
        db migrate``, ``undo``, ``baseline``, ``restore``); ``payload`` holds no secret."""
        self._write(lambda: self._audit(kind, env, payload))

    def audit_rows(self, env: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        """The audit log's entries as stored, oldest first (with ``limit``: the newest ones);
        nothing in them is checked here (see :func:`airlock.state.audit.verify_rows`)."""
        query = "SELECT seq, at, actor, env, kind, payload, hash FROM audit"
        params: list[Any] = []
        if env is not None:
            query += " WHERE env = ?"
            params.append(env)
        if limit is None:
            return self._rows(query + " ORDER BY seq", params)
        rows = self._rows(query + " ORDER BY seq DESC LIMIT ?", [*params, limit])
        return rows[::-1]

    def _audit(self, kind: str, env: str | None, payload: Mapping[str, Any]) -> None:
        """Append one entry, inside the caller's transaction, chained to the last one.

        Two writers that both read the same last entry collide on ``seq`` (the primary key);
        the loser's whole transaction is run again."""
        last = self._row("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1")
        seq = 1 if last is None else int(last["seq"]) + 1
        prev = "" if last is None else str(last["hash"])
        at = _stamp(self._now())
        who = audit.actor()
        body = json.loads(json.dumps(dict(payload), default=str))
        digest = audit.entry_hash(audit.encode(seq, at, who, env, kind, body, prev))
        self._execute(
            "INSERT INTO audit (seq, at, actor, env, kind, payload, hash) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (seq, at, who, env, kind, audit.canonical(body).decode("ascii"), digest),
        )
        if seq % audit.CHECKPOINT_EVERY == 0:
            self._checkpoint_due = True

    def _checkpoint_quietly(self) -> None:
        """The periodic checkpoint, after the write that reached it committed. A problem here
        (a bad key, a log that no longer matches) must not fail that write: the next deploy's
        checkpoint, and ``airlock audit verify``, report it."""
        if self.audit_home is None:
            return
        root, project = self.audit_home
        with contextlib.suppress(AirlockError):
            audit.write_checkpoint(self, root, project)


class _Heartbeat:
    """Renews the leases a store holds every third of their length, on a connection of its own.

    A renewal that finds the lease in other hands (another process took the deployment over)
    marks it lost: the store then refuses to write for that deployment. A store that cannot be
    reached is tried again at the next beat; the lease runs out if it stays unreachable.
    """

    def __init__(self, store: StateStore) -> None:
        self._store = store
        self._stopped = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"airlock-lease {store.where}", daemon=True
        )
        self._thread.start()

    def is_alive(self) -> bool:
        return self._thread.is_alive() and not self._stopped.is_set()

    def stop(self) -> None:
        self._stopped.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=self._store.lease_seconds)

    def _run(self) -> None:
        side: StateStore | None = None
        try:
            while not self._stopped.wait(self._store.lease_seconds / 3):
                held = self._store._holding()
                if not held:
                    continue
                try:
                    side = side or self._store._sibling()
                    for deployment_id, lease in held.items():
                        if not side._renew(deployment_id, lease.token):
                            self._store._lose(deployment_id, "its lease was taken over")
                except Exception:  # unreachable, or any other failure: try again next beat
                    if side is not None:
                        _close_quietly(side)
                        side = None
        finally:
            if side is not None:
                _close_quietly(side)


def _close_quietly(store: StateStore) -> None:
    with contextlib.suppress(Exception):  # closing a broken connection
        store.close()


def _journaled(type_: str, body: Mapping[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """The audit entry a journal record makes, if any: a migration that applied something, an
    approval override (with its reason), or the approvals a deploy went out on."""
    if type_ == "migration":
        steps = [s for s in body.get("steps") or [] if isinstance(s, Mapping)]
        applied = [s.get("script") for s in steps if s.get("outcome") == "applied"]
        if not applied:
            return None
        snapshot = body.get("snapshot")
        return "migration.applied", {
            "applied": applied,
            "fingerprint": body.get("fingerprint"),
            "snapshot": snapshot.get("path") if isinstance(snapshot, Mapping) else None,
        }
    if type_ == "approval":
        if body.get("override_reason"):
            return "override", {
                "reason": body.get("override_reason"),
                "by": body.get("by"),
                "missing": body.get("missing"),
                "report": body.get("report"),
                "approvers": body.get("approvers"),
            }
        return "deploy.approved", {
            "report": body.get("report"),
            "approvers": body.get("approvers"),
        }
    return None


def _gate_entry(
    run_id: int, release_id: str, gate: str, passed: bool, body: Mapping[str, Any]
) -> tuple[str, dict[str, Any]]:
    """The audit entry of a gate run: a go/no-go report with each gate's status, or one gate."""
    if gate == "gonogo":
        statuses = {
            g.get("name"): g.get("status")
            for g in body.get("gates") or []
            if isinstance(g, Mapping)
        }
        payload = {
            "run": run_id,
            "release": release_id,
            "verdict": body.get("verdict") or ("GO" if passed else "NO-GO"),
            "gates": statuses,
        }
        return "gonogo.report", payload
    summary = body.get("summary")
    payload = {
        "run": run_id,
        "release": release_id,
        "gate": gate,
        "passed": passed,
        "summary": summary if isinstance(summary, str) else None,
    }
    return "gate.run", payload


def _stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds")


def _fields(holder: _Holder) -> tuple[str, int, str]:
    return holder.name, holder.pid, holder.host


def _live(row: Mapping[str, Any], now: datetime) -> bool | None:
    expires = row.get("lease_expires_at")
    return None if expires is None else datetime.fromisoformat(expires) > now


def _deployment(row: Mapping[str, Any], now: datetime | None) -> Deployment:
    data = {key: value for key, value in row.items() if key in _DEPLOYMENT_FIELDS}
    data["plan"] = json.loads(data["plan"])
    live = _live(row, now) if now is not None else None
    return Deployment(**data, lease_live=live)
