"""Runtimes: where service processes run.

A runtime implements the small :class:`Runtime` protocol below; one module per target
(``local`` today). The release engine never imports a runtime and runtimes never import the
engine: the runner in between turns engine actions into runtime calls.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class InstanceSpec:
    """Everything a runtime needs to start one version of one service.

    ``env`` may hold secret values: runtimes keep it in memory only and mask the values of
    ``secret_keys`` in everything they write (logs included).
    """

    service: str
    instance_id: str
    argv: tuple[str, ...]
    cwd: str
    env: dict[str, str] = field(default_factory=dict)
    secret_keys: tuple[str, ...] = ()


@dataclass(frozen=True)
class InstanceStatus:
    """What a runtime knows about one instance."""

    instance_id: str
    service: str
    pid: int | None
    port: int
    running: bool
    exits: int
    last_exit_code: int | None
    serving: bool


@dataclass(frozen=True)
class ProbeResult:
    """One health or readiness probe of an instance."""

    ok: bool
    detail: str
    exited: bool = False


@dataclass(frozen=True)
class FetchResult:
    """One GET of a path on an instance, for the runner to read (e.g. its ``/metrics``).

    ``status`` is ``None`` when no answer came (refused, timed out, instance gone); ``detail`` is
    one line saying what happened, for messages. ``body`` is at most the runtime's size limit;
    ``truncated`` says the answer was longer.
    """

    status: int | None
    detail: str
    body: str = ""
    truncated: bool = False

    @property
    def ok(self) -> bool:
        """Whether the instance answered 2xx."""
        return self.status is not None and 200 <= self.status < 300


class Runtime(Protocol):
    """The handful of operations the runner needs from a target."""

    async def endpoint(self, service: str, port: int | None) -> int:
        """Make sure ``service`` has a stable port (``port``, or a remembered/automatic one)."""

    async def start(self, spec: InstanceSpec) -> InstanceStatus:
        """Start a new instance next to whatever serves now; it gets no traffic yet."""

    async def probe(self, instance_id: str, path: str) -> ProbeResult:
        """GET ``path`` on the instance itself (not through the stable port)."""

    async def fetch(self, instance_id: str, path: str) -> FetchResult:
        """GET ``path`` on the instance itself and return what it answered; never raises for
        an instance that does not answer (``status`` is ``None`` then)."""

    async def switch(self, service: str, instance_id: str) -> None:
        """Route the service's new requests to ``instance_id``; in-flight ones finish."""

    async def stop(self, instance_id: str, *, force: bool = False) -> None:
        """Drain and stop one instance; ``force`` also stops one that serves traffic now."""

    async def status(self) -> list[InstanceStatus]:
        """Every instance the runtime knows of in this environment."""

    async def shutdown(self) -> None:
        """Stop every instance and the runtime's own helpers; leave nothing running."""
