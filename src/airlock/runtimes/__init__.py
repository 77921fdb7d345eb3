"""Runtimes: where service processes run.

A runtime implements the small :class:`Runtime` protocol below; one module per target
(``local``, processes on this machine; ``ssh``, the same agent on each host of a fleet). The
protocol speaks endpoints (host, port, URL), never pids or ``127.0.0.1``: nothing outside this
package knows where a process runs. What the runner needs from there (an instance's resident
memory, a service's log, the stable endpoint of every service, stopping everything) is asked of
the runtime, which measures it where the process runs.

:func:`open_runtime` picks the module named by the environment's ``runtime`` setting and
imports it only then. A new runtime is one module with an ``open_runtime(project, env, settings,
*, root)`` function, listed in :data:`RUNTIMES`, and its settings model in ``airlock.model``.

The release engine never imports a runtime and runtimes never import the engine: the runner in
between turns engine actions into runtime calls.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from airlock.model import Project, RuntimeModel

#: Runtime name (``environments.ENV.runtime.type``) → the module that implements it.
RUNTIMES: dict[str, str] = {
    "local": "airlock.runtimes.local",
    "ssh": "airlock.runtimes.ssh",
}


@dataclass(frozen=True)
class Endpoint:
    """Where a service (or one instance of it) answers: a host and a port, as a URL."""

    host: str
    port: int
    scheme: str = "http"

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"

    def __str__(self) -> str:
        return self.url


@dataclass(frozen=True)
class InstanceSpec:
    """Everything a runtime needs to start one version of one service.

    ``env`` may hold secret values: runtimes keep it in memory only and mask the values of
    ``secret_keys`` in everything they write (logs included).
    """

    service: str
    instance_id: str
    #: the command; ``python``/``python3`` at its head means the runtime's Python 3
    argv: tuple[str, ...]
    #: the sealed release's files on this machine; a remote runtime copies them to its hosts
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
    #: resident memory in bytes, sampled where the instance runs (None when unknown)
    rss_bytes: int | None = None
    #: where the instance runs, for people: "pid 123" locally, "web-2 pid 123" on a fleet
    where: str = ""
    #: the host it runs on, for a runtime with several ("" for one machine); an instance of
    #: a service on three hosts has three statuses, one per host
    host: str = ""


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


@dataclass(frozen=True)
class HostCheck:
    """One check ``airlock preflight`` runs where services will run (the kinds and their
    arguments: :mod:`airlock.runtimes.hostcheck`).

    It runs on every host of ``service`` (``None``: every host of the environment). A
    ``connect`` check with ``to_service`` goes to every host of that service at ``args["port"]``;
    the runtime first listens there wherever nothing does, so that a connection proves the
    whole path (firewalls included), not just that a host answered.
    """

    service: str | None
    kind: str
    args: dict[str, Any] = field(default_factory=dict)
    to_service: str | None = None


@dataclass(frozen=True)
class CheckResult:
    """What one :class:`HostCheck` found on one host (``target``: the other end, if any)."""

    check: HostCheck
    host: str
    ok: bool
    detail: str
    target: str | None = None
    data: dict[str, Any] = field(default_factory=dict)


class Runtime(Protocol):
    """The handful of operations the runner, the gates and the library need from a target."""

    #: the runtime's name, as in ``airlock.yaml`` ("local", "ssh", …)
    name: str

    @property
    def data_dir(self) -> str:
        """A folder for services' own data (``${env.data}``), where they run; it exists once
        :meth:`endpoint` was called."""

    async def endpoint(self, service: str, port: int | None) -> Endpoint:
        """Make sure ``service`` has a stable endpoint (``port``, or a remembered/automatic one)
        and return it: what other services and clients use to reach it."""

    async def endpoints(self) -> dict[str, Endpoint]:
        """The stable endpoint of every service that has one now (nothing is started)."""

    async def start(self, spec: InstanceSpec) -> InstanceStatus:
        """Start a new instance next to whatever serves now; it gets no traffic yet."""

    async def probe(self, instance_id: str, path: str) -> ProbeResult:
        """GET ``path`` on the instance itself (not through the stable port)."""

    async def fetch(self, instance_id: str, path: str, *, host: str | None = None) -> FetchResult:
        """GET ``path`` on the instance itself and return what it answered; never raises for
        an instance that does not answer (``status`` is ``None`` then). ``host`` picks one host
        of a runtime with several (as in :attr:`InstanceStatus.host`)."""

    async def switch(self, service: str, instance_id: str) -> None:
        """Route the service's new requests to ``instance_id``; in-flight ones finish."""

    async def stop(self, instance_id: str, *, force: bool = False) -> None:
        """Drain and stop one instance; ``force`` also stops one that serves traffic now."""

    async def status(self) -> list[InstanceStatus]:
        """Every instance the runtime knows of in this environment, with its resident memory;
        nothing is started to answer."""

    async def logs(self, service: str, lines: int) -> list[str]:
        """The last ``lines`` lines of a service's log (secret values already masked)."""

    async def log_files(self) -> dict[str, Path]:
        """Every service's whole log as a file on this machine, for the gates that read them
        (a remote runtime copies them into a local cache first); values already masked."""

    async def shutdown(self) -> bool:
        """Stop every instance and the runtime's own helpers; leave nothing running. Returns
        whether anything was running."""

    async def check_hosts(self, checks: Sequence[HostCheck]) -> list[CheckResult]:
        """Run ``checks`` where the services run (each on the hosts of its service), from
        there; nothing of the environment is started or changed."""


def open_runtime(
    project: Project, env: str, *, root: Path, settings: RuntimeModel | None = None
) -> Runtime:
    """The runtime of ``env``, as its ``runtime`` setting says (or ``settings``, e.g. a local
    runtime in a throwaway folder); its module is imported now."""
    settings = settings or project.environments[env].runtime
    module = importlib.import_module(RUNTIMES[settings.type])
    runtime: Runtime = module.open_runtime(project, env, settings, root=root)
    return runtime
