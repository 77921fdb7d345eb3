"""A sealed release's services run in a throwaway local environment, then exercised.

The rehearsal uses it to prove a rollback safe before a migration runs: the release that serves
now is started against the migrated clone of the database, and its services' ``endpoints`` (and
readiness) must still answer. Each sandbox gets its own agent and folder under
``.airlock/sandboxes/``, ports chosen free (never the environment's own), and the config the
environment renders, with the database URL overridden; secrets come from the environment's
provider and stay in memory. Everything it started is stopped and its folder removed on close,
whatever happened.
"""

from __future__ import annotations

import asyncio
import secrets as random
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from airlock.bundle import Bundle
from airlock.errors import AirlockError, UsageError
from airlock.graph import named, toposort
from airlock.masking import Masker
from airlock.model import LocalRuntimeModel, substitute
from airlock.paths import state_dir
from airlock.plan import secret_keys
from airlock.runner import bind_reference, resolve_secrets
from airlock.runtimes import Endpoint, InstanceSpec, open_runtime

#: How long one request of an exercise may take.
REQUEST_SECONDS = 10.0
#: How much of an answer is kept for a message.
DETAIL_CHARS = 300


@dataclass(frozen=True)
class Exchange:
    """One request sent to a sandboxed service, and what came back."""

    service: str
    request: str  # "GET /accounts/1"
    status: int | None  # None: no answer
    detail: str  # one line: the status and the start of the body, or why nothing came

    @property
    def ok(self) -> bool:
        """Answered, and not with a server error (a 4xx is the service's own business)."""
        return self.status is not None and self.status < 500

    def to_dict(self) -> dict[str, Any]:
        return {
            "service": self.service,
            "request": self.request,
            "status": self.status,
            "ok": self.ok,
            "detail": self.detail,
        }


@dataclass
class Outcome:
    """What a sandbox run found: the services that never became ready, and every exchange."""

    not_ready: dict[str, str] = field(default_factory=dict)  # service → why
    exchanges: list[Exchange] = field(default_factory=list)
    logs: dict[str, list[str]] = field(default_factory=dict)  # service → its last lines

    @property
    def ok(self) -> bool:
        return not self.not_ready and all(e.ok for e in self.exchanges)

    @property
    def failures(self) -> list[Exchange]:
        return [e for e in self.exchanges if not e.ok]

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "not_ready": dict(self.not_ready),
            "exchanges": [e.to_dict() for e in self.exchanges],
        }


def with_dependencies(bundle: Bundle, services: Sequence[str]) -> list[str]:
    """``services`` and everything they depend on, in dependency order."""
    project = bundle.project
    wanted: set[str] = set()
    stack = list(services)
    while stack:
        name = stack.pop()
        if name in wanted:
            continue
        if name not in project.services:
            known = ", ".join(sorted(project.services))
            raise UsageError(f"release {bundle.label} has no service {name!r}", hint=known)
        wanted.add(name)
        stack.extend(project.services[name].depends_on)
    names, deps = named({n: project.services[n].depends_on for n in wanted})
    return [names[i] for i in toposort(deps)]


class Sandbox:
    """Start ``services`` (default: all) of a sealed release, as ``env`` renders them, locally.

    ``database_url`` replaces ``${database.url}``. ``prepare``, when given, sees each instance's
    spec just before it starts and may return another (e.g. its command wrapped in a tracer).
    Use as an async context manager.
    """

    def __init__(
        self,
        bundle: Bundle,
        env: str,
        *,
        project_root: Path,
        services: Sequence[str] | None = None,
        database_url: str | None = None,
        masker: Masker | None = None,
        prepare: Callable[[InstanceSpec], InstanceSpec] | None = None,
    ) -> None:
        self.bundle = bundle
        self.env = env
        self.project_root = project_root
        self.services = with_dependencies(bundle, services or list(bundle.project.services))
        self.database_url = database_url
        self.masker = masker or Masker()  # the caller's: it knows the database's password
        self.prepare = prepare
        self.folder = state_dir(project_root) / "sandboxes" / random.token_hex(4)
        self.runtime = open_runtime(
            bundle.project,
            env,
            root=project_root,
            settings=LocalRuntimeModel(dir=str(self.folder)),
        )
        self.endpoints: dict[str, Endpoint] = {}
        self.instances: dict[str, str] = {}

    async def __aenter__(self) -> Sandbox:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        await self.close()

    def _database(self) -> str:
        if self.database_url is None:
            raise UsageError(
                f"environment {self.env!r} has no database for ${{database.url}} in the sandbox"
            )
        return self.database_url

    async def start(self, outcome: Outcome) -> None:
        """Start every service in dependency order, each once its dependencies are ready; a
        service whose dependency never became ready is not started."""
        project = self.bundle.project
        config = {name: self.bundle.config(self.env)[name] for name in self.services}
        secret_values = resolve_secrets(project, self.env, config, self.project_root)
        self.masker.add(*secret_values.values())
        # every service gets an endpoint, started or not: config may name a service that is
        # not a dependency (it then answers 502, as one that is down would)
        for name in project.services:
            self.endpoints[name] = await self.runtime.endpoint(name, None)
        for name in self.services:
            model = project.services[name]
            blocked = [d for d in model.depends_on if d in outcome.not_ready]
            if blocked:
                outcome.not_ready[name] = f"not started: {', '.join(blocked)} never became ready"
                continue
            env = {
                key: substitute(
                    value,
                    lambda ref: bind_reference(
                        ref,
                        secrets=secret_values,
                        endpoints=self.endpoints,
                        env=self.env,
                        data_dir=self.runtime.data_dir,
                        database_url=self._database,
                    ),
                )
                for key, value in config[name].items()
            }
            instance = f"{name}-sandbox-{random.token_hex(3)}"
            spec = InstanceSpec(
                service=name,
                instance_id=instance,
                argv=tuple(model.argv),
                cwd=str(self.bundle.files_dir),
                env=env,
                secret_keys=tuple(sorted(secret_keys(config[name]))),
            )
            if self.prepare is not None:
                spec = self.prepare(spec)
            try:
                await self.runtime.start(spec)
            except AirlockError as exc:
                outcome.not_ready[name] = self.masker.mask(exc.message.splitlines()[0])
                continue
            self.instances[name] = instance
            problem = await self._wait_ready(name, instance)
            if problem is not None:
                outcome.not_ready[name] = problem
                outcome.logs[name] = [self.masker.mask(x) for x in await self._logs(name)]
                continue
            await self.runtime.switch(name, instance)

    async def _wait_ready(self, service: str, instance: str) -> str | None:
        model = self.bundle.project.services[service]
        path = model.ready or model.health
        timeout = model.ready_timeout or self.bundle.project.gates.ready_timeout
        deadline = time.monotonic() + timeout
        while True:
            result = await self.runtime.probe(instance, path)
            if result.ok and not result.exited:
                return None
            if result.exited:
                return self.masker.mask(f"exited before becoming ready: {result.detail}")
            if time.monotonic() > deadline:
                detail = self.masker.mask(result.detail)
                return f"not ready after {timeout:g}s (last probe: GET {path} → {detail})"
            await asyncio.sleep(0.05)

    async def _logs(self, service: str, lines: int = 8) -> list[str]:
        try:
            return await self.runtime.logs(service, lines)
        except AirlockError:
            return []

    async def exercise(
        self, outcome: Outcome, services: Sequence[str] | None = None, *, reads_only: bool = False
    ) -> None:
        """Send each service's readiness path and declared ``endpoints`` (with ``reads_only``,
        only its GET and HEAD ones: nothing that could write somewhere real)."""
        import httpx

        project = self.bundle.project
        chosen = [s for s in (services or self.services) if s in self.instances]
        async with httpx.AsyncClient(timeout=REQUEST_SECONDS, trust_env=False) as client:
            for name in chosen:
                if name in outcome.not_ready:
                    continue
                model = project.services[name]
                declared = [
                    e
                    for e in model.endpoints
                    if not reads_only or e.split(None, 1)[0].upper() in {"GET", "HEAD"}
                ]
                requests = [f"GET {model.ready or model.health}", *declared]
                for request in dict.fromkeys(requests):
                    method, path = request.split(None, 1)
                    outcome.exchanges.append(
                        await self._send(client, name, method.upper(), path, request)
                    )
                if any(not e.ok for e in outcome.exchanges if e.service == name):
                    outcome.logs[name] = [self.masker.mask(x) for x in await self._logs(name)]

    async def _send(
        self, client: Any, service: str, method: str, path: str, request: str
    ) -> Exchange:
        import httpx

        url = self.endpoints[service].url.rstrip("/") + path
        try:
            answer = await client.request(method, url)
        except httpx.HTTPError as exc:
            return Exchange(service, request, None, f"no answer ({type(exc).__name__})")
        if answer.status_code < 500:  # an answer that worked is data (perhaps a customer's)
            return Exchange(service, request, answer.status_code, str(answer.status_code))
        body = " ".join(answer.text.split())[:DETAIL_CHARS]
        detail = f"{answer.status_code}" + (f": {body}" if body else "")
        return Exchange(service, request, answer.status_code, self.masker.mask(detail))

    async def run(
        self, services: Sequence[str] | None = None, *, reads_only: bool = False
    ) -> Outcome:
        """Start, exercise ``services`` (default: all started), and report."""
        outcome = Outcome()
        await self.start(outcome)
        await self.exercise(outcome, services, reads_only=reads_only)
        return outcome

    async def close(self) -> None:
        try:
            await self.runtime.shutdown()
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)


def run_sandbox(
    bundle: Bundle,
    env: str,
    *,
    project_root: Path,
    database_url: str | None = None,
    masker: Masker | None = None,
    services: Sequence[str] | None = None,
    reads_only: bool = False,
) -> Outcome:
    """Run a sandbox to the end (see :class:`Sandbox`); blocking."""

    async def go() -> Outcome:
        async with Sandbox(
            bundle,
            env,
            project_root=project_root,
            services=services,
            database_url=database_url,
            masker=masker,
        ) as box:
            return await box.run(services, reads_only=reads_only)

    return asyncio.run(go())


def describe_logs(logs: Mapping[str, list[str]]) -> str:
    """The last log lines of each service, for a message."""
    return "; ".join(f"{s}: {' | '.join(lines[-3:])}" for s, lines in logs.items() if lines)
