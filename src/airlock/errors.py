"""Errors raised by Airlock.

Every error a user can meet is an :class:`AirlockError`. The CLI catches them in one place, prints
the message (never a traceback) and exits with :attr:`AirlockError.exit_code`: 2 for bad input,
1 when a gate said no or a release failed.

::

    AirlockError
    ├── UsageError                 bad input from the user (exit 2)
    │   ├── ProjectError           airlock.yaml cannot be read or is invalid (carries file:line:col)
    │   ├── ReleaseError           a release bundle is missing or cannot be built
    │   │   └── TamperedReleaseError   a sealed file changed after sealing (INC02)
    │   ├── SecretError            a secret reference cannot be resolved
    │   └── PortInUseError         a port a service needs is taken by another program
    ├── StateError                 the state store is unreadable or inconsistent (exit 2)
    │   └── LockedError            another release holds the environment (exit 2)
    ├── GateFailed                 a gate said no: the release was refused (exit 1)
    ├── AuditFailed                the audit log does not verify (exit 1)
    ├── RuntimeFailure             the runtime (agent, processes) failed us (exit 1)
    └── ReleaseFailed              the release failed and was rolled back (exit 1)

Errors carry data (``file``, ``line``, ``service``, ``holder`` ...) so callers can act on them
without parsing messages. Messages never contain a secret's value.
"""

from __future__ import annotations

from dataclasses import dataclass


class AirlockError(Exception):
    """Base of every error Airlock raises on purpose."""

    exit_code = 2

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message}\n  hint: {self.hint}"
        return self.message


class UsageError(AirlockError):
    """The user asked for something that cannot be done as asked."""


@dataclass(frozen=True)
class Location:
    """A place in a file: 1-based line and column, and the dotted key path."""

    file: str
    line: int | None = None
    column: int | None = None
    path: str = ""

    def __str__(self) -> str:
        where = self.file
        if self.line is not None:
            where += f":{self.line}"
            if self.column is not None:
                where += f":{self.column}"
        return where


class ProjectError(UsageError):
    """``airlock.yaml`` cannot be read, parsed or validated."""

    def __init__(
        self, message: str, *, location: Location | None = None, hint: str | None = None
    ) -> None:
        prefix = f"{location}: " if location else ""
        if location and location.path:
            prefix += f"{location.path}: "
        super().__init__(prefix + message, hint=hint)
        self.location = location


class ReleaseError(UsageError):
    """A release bundle is missing, unknown or cannot be built."""


class TamperedReleaseError(ReleaseError):
    """A file of a sealed release no longer matches the manifest (INC02)."""

    def __init__(self, release_id: str, changes: list[tuple[str, str, str]]) -> None:
        lines = [f"  {path}: sealed {want[:12]}…, now {got[:12]}…" for path, want, got in changes]
        super().__init__(
            f"release {release_id} was modified after sealing; refusing to deploy it:\n"
            + "\n".join(lines),
            hint="seal a new release with `airlock release build` and deploy that one",
        )
        self.release_id = release_id
        self.changes = changes


class SecretError(UsageError):
    """A ``${secret:NAME}`` reference cannot be resolved."""


class PortInUseError(UsageError):
    """A port that a service needs is already taken."""


class StateError(AirlockError):
    """The state store cannot be read or is inconsistent."""


class LeaseLost(StateError):
    """This process no longer holds the deployment it was running: its lease ran out and
    another process took it over. It must stop at once, without undoing anything: the new
    holder carries the deployment on."""

    exit_code = 1


class LockedError(StateError):
    """Another release holds the environment's lock."""

    def __init__(self, env: str, holder: str, since: str, deployment: str) -> None:
        super().__init__(
            f"environment {env!r} is locked by {holder} since {since} (deployment {deployment})",
            hint="wait for that release to finish; if its process is gone, "
            f"run `airlock resume {env}`",
        )
        self.env = env
        self.holder = holder
        self.since = since
        self.deployment = deployment


class GateFailed(AirlockError):
    """A gate said no; nothing was deployed."""

    exit_code = 1


class AuditFailed(AirlockError):
    """The audit log does not verify: an entry was changed, removed or reordered."""

    exit_code = 1


class RuntimeFailure(AirlockError):
    """The runtime (the environment's agent or a service process) failed."""

    exit_code = 1


class ReleaseFailed(AirlockError):
    """The release failed; it was rolled back."""

    exit_code = 1
