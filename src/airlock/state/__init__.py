"""The state store: deployments, their event journal, what is deployed, and environment locks.

SQLite in ``.airlock/state.db`` (WAL mode, so readers never wait for the deploy that writes).
The runner journals every engine event here *before* the engine acts on it, so a deploy whose
process was killed can be rebuilt from the journal and finished or rolled back.
Nothing stored here holds a secret's value: config is kept as written, with references.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sqlite3
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

from airlock.bundle import load_bundle
from airlock.errors import LockedError, StateError, UsageError
from airlock.model import Project
from airlock.paths import state_dir

SCHEMA = """
CREATE TABLE IF NOT EXISTS deployments (
    id TEXT PRIMARY KEY,
    env TEXT NOT NULL,
    kind TEXT NOT NULL,
    release_id TEXT NOT NULL,
    version TEXT NOT NULL,
    previous_release_id TEXT,
    status TEXT NOT NULL,
    started_at TEXT NOT NULL,
    finished_at TEXT,
    duration_seconds REAL,
    holder TEXT NOT NULL,
    pid INTEGER NOT NULL,
    host TEXT NOT NULL,
    reason TEXT,
    failed_service TEXT,
    plan TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS deployments_env ON deployments (env, started_at);
CREATE TABLE IF NOT EXISTS journal (
    deployment_id TEXT NOT NULL REFERENCES deployments (id),
    seq INTEGER NOT NULL,
    at TEXT NOT NULL,
    type TEXT NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (deployment_id, seq)
);
CREATE TABLE IF NOT EXISTS services (
    env TEXT NOT NULL,
    service TEXT NOT NULL,
    release_id TEXT NOT NULL,
    digest TEXT NOT NULL,
    instance_id TEXT NOT NULL,
    config TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (env, service)
);
CREATE TABLE IF NOT EXISTS locks (
    env TEXT PRIMARY KEY,
    deployment_id TEXT NOT NULL,
    holder TEXT NOT NULL,
    pid INTEGER NOT NULL,
    host TEXT NOT NULL,
    since TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS gate_runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    env TEXT NOT NULL,
    release_id TEXT NOT NULL,
    gate TEXT NOT NULL,
    passed INTEGER NOT NULL,
    at TEXT NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS gate_runs_release ON gate_runs (release_id, gate, env);
CREATE TABLE IF NOT EXISTS approvals (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    env TEXT NOT NULL,
    release_id TEXT NOT NULL,
    approver TEXT NOT NULL,
    note TEXT,
    report_id INTEGER REFERENCES gate_runs (id),
    at TEXT NOT NULL
);
"""


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def this_holder() -> str:
    user = os.environ.get("USER") or os.environ.get("LOGNAME") or "unknown"
    return f"{user}@{socket.gethostname()} (pid {os.getpid()})"


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

    def to_dict(self) -> dict[str, Any]:
        data = dict(self.__dict__)
        data.pop("plan")
        return data

    @property
    def holder_alive(self) -> bool:
        return self.host == socket.gethostname() and psutil.pid_exists(self.pid)


@dataclass(frozen=True)
class GateRun:
    """One recorded run of a gate (load, go/no-go, ...) for a release in an environment."""

    id: int
    env: str
    release_id: str
    gate: str
    passed: bool
    at: str
    body: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Approval:
    id: int
    env: str
    release_id: str
    approver: str
    note: str | None
    report_id: int | None
    at: str

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class DeployedRow:
    service: str
    release_id: str
    digest: str
    instance_id: str
    config: dict[str, str]
    updated_at: str


class StateStore:
    """A connection to one project's state database."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # One connection, used by one thread at a time (the runner hands it to a worker
            # thread for blocking database work while the event loop waits).
            self._db = sqlite3.connect(
                path, timeout=10, isolation_level=None, check_same_thread=False
            )
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(SCHEMA)
        except sqlite3.Error as exc:
            raise StateError(
                f"cannot open the state store {path}: {exc}",
                hint="check the file's permissions; if it is damaged, move it away "
                "(Airlock then starts with an empty history)",
            ) from None

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> StateStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

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
        """Take the environment's lock and record a running deployment, atomically.

        Raises :class:`LockedError` naming the holder when another deployment holds it.
        """
        holder, host, since = this_holder(), socket.gethostname(), now_iso()
        with self._transaction() as db:
            row = db.execute("SELECT * FROM locks WHERE env = ?", (env,)).fetchone()
            if row is not None:
                raise LockedError(env, row["holder"], row["since"], row["deployment_id"])
            db.execute(
                "INSERT INTO locks VALUES (?, ?, ?, ?, ?, ?)",
                (env, deployment_id, holder, os.getpid(), host, since),
            )
            db.execute(
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
                    holder,
                    os.getpid(),
                    host,
                    json.dumps(plan),
                ),
            )
        return self.deployment(deployment_id)

    def take_over(self, judged: Deployment) -> None:
        """Make this process the holder of a running deployment's lock (for ``resume``).

        ``judged`` is the deployment as the caller read it when it judged its holder dead: the
        lock changes hands only if that holder still has it (a compare-and-swap), so two
        ``resume`` commands can never both take one deployment over. The loser gets
        :class:`LockedError` naming the winner.
        """
        deployment_id = judged.id
        with self._transaction() as db:
            taken = db.execute(
                "UPDATE locks SET holder = ?, pid = ?, host = ? "
                "WHERE deployment_id = ? AND holder = ? AND pid = ? AND host = ?",
                (
                    this_holder(),
                    os.getpid(),
                    socket.gethostname(),
                    deployment_id,
                    judged.holder,
                    judged.pid,
                    judged.host,
                ),
            ).rowcount
            if taken != 1:
                row = db.execute(
                    "SELECT * FROM locks WHERE deployment_id = ?", (deployment_id,)
                ).fetchone()
                if row is None:
                    raise StateError(
                        f"deployment {deployment_id} to {judged.env!r} has already finished",
                        hint=f"see `airlock history {judged.env}`",
                    )
                raise LockedError(judged.env, row["holder"], row["since"], deployment_id)
            db.execute(
                "UPDATE deployments SET holder = ?, pid = ?, host = ? WHERE id = ?",
                (this_holder(), os.getpid(), socket.gethostname(), deployment_id),
            )

    def finish(
        self,
        deployment_id: str,
        status: str,
        *,
        reason: str | None = None,
        failed_service: str | None = None,
    ) -> None:
        """Close a deployment and release its environment's lock."""
        finished = datetime.now(UTC)
        with self._transaction() as db:
            row = db.execute(
                "SELECT env, started_at FROM deployments WHERE id = ?", (deployment_id,)
            ).fetchone()
            if row is None:
                raise StateError(f"no deployment {deployment_id} in {self.path}")
            duration = (finished - datetime.fromisoformat(row["started_at"])).total_seconds()
            db.execute(
                "UPDATE deployments SET status = ?, finished_at = ?, duration_seconds = ?, "
                "reason = ?, failed_service = ? WHERE id = ?",
                (
                    status,
                    finished.isoformat(timespec="milliseconds"),
                    duration,
                    reason,
                    failed_service,
                    deployment_id,
                ),
            )
            db.execute("DELETE FROM locks WHERE deployment_id = ?", (deployment_id,))

    def lock(self, env: str) -> dict[str, Any] | None:
        row = self._db.execute("SELECT * FROM locks WHERE env = ?", (env,)).fetchone()
        return dict(row) if row else None

    def deployment(self, deployment_id: str) -> Deployment:
        row = self._db.execute(
            "SELECT * FROM deployments WHERE id = ?", (deployment_id,)
        ).fetchone()
        if row is None:
            raise StateError(f"no deployment {deployment_id} in {self.path}")
        return _deployment(row)

    def deployments(self, env: str | None = None, limit: int = 50) -> list[Deployment]:
        """Newest first."""
        if env is None:
            rows = self._db.execute(
                "SELECT * FROM deployments ORDER BY started_at DESC LIMIT ?", (limit,)
            )
        else:
            rows = self._db.execute(
                "SELECT * FROM deployments WHERE env = ? ORDER BY started_at DESC LIMIT ?",
                (env, limit),
            )
        return [_deployment(row) for row in rows]

    def running(self, env: str) -> Deployment | None:
        row = self._db.execute(
            "SELECT * FROM deployments WHERE env = ? AND status = 'running' "
            "ORDER BY started_at DESC LIMIT 1",
            (env,),
        ).fetchone()
        return _deployment(row) if row else None

    # -- the journal ---------------------------------------------------------------------------

    def journal(self, deployment_id: str, type_: str, body: Mapping[str, Any]) -> None:
        """Append one record (an engine event, or an action taken) durably."""
        with self._transaction() as db:
            (seq,) = db.execute(
                "SELECT COALESCE(MAX(seq), 0) + 1 FROM journal WHERE deployment_id = ?",
                (deployment_id,),
            ).fetchone()
            db.execute(
                "INSERT INTO journal VALUES (?, ?, ?, ?, ?)",
                (deployment_id, seq, now_iso(), type_, json.dumps(dict(body))),
            )

    def records(self, deployment_id: str, type_: str | None = None) -> list[dict[str, Any]]:
        query = "SELECT * FROM journal WHERE deployment_id = ?"
        params: tuple[str, ...] = (deployment_id,)
        if type_ is not None:
            query += " AND type = ?"
            params += (type_,)
        rows = self._db.execute(query + " ORDER BY seq", params)
        return [
            {"seq": r["seq"], "at": r["at"], "type": r["type"], "body": json.loads(r["body"])}
            for r in rows
        ]

    # -- what is deployed ----------------------------------------------------------------------

    def deployed(self, env: str) -> dict[str, DeployedRow]:
        rows = self._db.execute("SELECT * FROM services WHERE env = ? ORDER BY service", (env,))
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
        with self._transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO services VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    env,
                    service,
                    release_id,
                    digest,
                    instance_id,
                    json.dumps(dict(config)),
                    now_iso(),
                ),
            )

    def remove_deployed(self, env: str, service: str | None = None) -> None:
        with self._transaction() as db:
            if service is None:
                db.execute("DELETE FROM services WHERE env = ?", (env,))
            else:
                db.execute("DELETE FROM services WHERE env = ? AND service = ?", (env, service))

    def current_release(self, env: str) -> str | None:
        """The release of the environment's last deployment that succeeded."""
        row = self._db.execute(
            "SELECT release_id FROM deployments WHERE env = ? AND status = 'succeeded' "
            "ORDER BY started_at DESC LIMIT 1",
            (env,),
        ).fetchone()
        return str(row["release_id"]) if row else None

    def previous_good_release(self, env: str) -> str | None:
        """The release that succeeded before the current one (the target of a rollback)."""
        rows = self._db.execute(
            "SELECT release_id FROM deployments WHERE env = ? AND status = 'succeeded' "
            "ORDER BY started_at DESC",
            (env,),
        )
        releases = [str(row["release_id"]) for row in rows]  # the first is the current one
        return next((r for r in releases if r != releases[0]), None)

    # -- gates and approvals -------------------------------------------------------------------

    def record_gate(
        self, env: str, release_id: str, gate: str, *, passed: bool, body: Mapping[str, Any]
    ) -> GateRun:
        """Store one gate's verdict and evidence with the release (secrets masked by caller)."""
        at = now_iso()
        with self._transaction() as db:
            cursor = db.execute(
                "INSERT INTO gate_runs (env, release_id, gate, passed, at, body) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (env, release_id, gate, int(passed), at, json.dumps(dict(body), default=str)),
            )
        assert cursor.lastrowid is not None
        return GateRun(cursor.lastrowid, env, release_id, gate, passed, at, dict(body))

    def update_gate(self, run_id: int, *, body: Mapping[str, Any]) -> None:
        with self._transaction() as db:
            db.execute(
                "UPDATE gate_runs SET body = ? WHERE id = ?",
                (json.dumps(dict(body), default=str), run_id),
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
        rows = self._db.execute(query + " ORDER BY id DESC", params)
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
        at = now_iso()
        with self._transaction() as db:
            cursor = db.execute(
                "INSERT INTO approvals (env, release_id, approver, note, report_id, at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (env, release_id, approver, note, report_id, at),
            )
        assert cursor.lastrowid is not None
        return Approval(cursor.lastrowid, env, release_id, approver, note, report_id, at)

    def approvals(self, env: str, release_id: str) -> list[Approval]:
        rows = self._db.execute(
            "SELECT * FROM approvals WHERE env = ? AND release_id = ? ORDER BY id",
            (env, release_id),
        )
        return [
            Approval(
                r["id"],
                r["env"],
                r["release_id"],
                r["approver"],
                r["note"],
                r["report_id"],
                r["at"],
            )
            for r in rows
        ]


def open_state(project_root: Path) -> StateStore:
    """The state store of the project in ``project_root`` (``.airlock/state.db``)."""
    return StateStore(state_dir(project_root) / "state.db")


def deployed_project(project_root: Path, env: str) -> Project | None:
    """The project as sealed in the release deployed to ``env`` (None when nothing is)."""
    with open_state(project_root) as store:
        current = store.current_release(env)
    if current is None:
        return None
    with contextlib.suppress(UsageError):
        return load_bundle(project_root, current).project
    return None


def _deployment(row: sqlite3.Row) -> Deployment:
    data = dict(row)
    data["plan"] = json.loads(data["plan"])
    return Deployment(**data)
