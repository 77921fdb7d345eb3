"""The runner: drives the release engine with real IO.

For each deploy it takes the environment's lock, then loops: journal an event, hand it to the
engine, carry out the actions the engine returns on the runtime, and turn what the runtime reports
(an instance started, answered its readiness probe, exited) into the next events. Every event is
written to the state store *before* the engine sees it, so a deploy whose process died can be
rebuilt by :func:`resume` from the journal alone.

Resume policy: an interrupted deploy is **rolled back**, unless its journal shows the engine had
already finished successfully (then only the bookkeeping is completed). Nobody watched the new
versions while the deploying process was gone, so their readiness and bake evidence is stale; the
previous release is the one known to be good, and its instances are still running (old versions
are only stopped after a successful bake).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from airlock.bundle import Bundle, deployed_project, find_release, load_bundle
from airlock.checks.bake import (
    MIN_REQUESTS,
    MemorySample,
    MetricsError,
    Traffic,
    Verdict,
    judge_memory,
    judge_traffic,
    latency_count,
    memory_growth_mb_per_min,
    parse_metrics,
    traffic_figures,
)
from airlock.clock import SYSTEM, Clock
from airlock.engine import (
    Abort,
    Action,
    Begin,
    Event,
    Exited,
    Failed,
    Finish,
    Ready,
    Release,
    ReleasePhase,
    RevertTraffic,
    ServicePhase,
    Started,
    StartNew,
    StopNew,
    StopOld,
    Stopped,
    SwitchTraffic,
    Tick,
    event_from_dict,
    event_to_dict,
    replay_owed,
)
from airlock.errors import (
    AirlockError,
    GateFailed,
    LeaseLost,
    ReleaseFailed,
    SecretError,
    StateError,
    UsageError,
)
from airlock.findings import Severity
from airlock.masking import Masker
from airlock.model import Project, Reference, migrates, require_env, substitute
from airlock.plan import DeployedService, Plan, make_plan, secret_keys
from airlock.runtimes import (
    Endpoint,
    InstanceSpec,
    InstanceStatus,
    ProbeResult,
    Runtime,
    open_runtime,
)
from airlock.secrets import referenced, resolver
from airlock.state import DeployedRow, StateStore, open_state

#: Log lines of a dead instance quoted in the reason of a failed release.
LAST_WORDS = 3

#: What the bake judges: one service's new instance on one host ("" on a single machine).
Unit = tuple[str, str]

POLL_SECONDS = 0.05
#: While services start, readiness is probed this often: each poll's wait is added to the
#: critical path of the rollout, once per level of the dependency graph.
START_POLL_SECONDS = 0.02
BAKE_POLL_SECONDS = 0.2
PROBE_DETAIL_CHARS = 160
#: At most this many points of each bake series are journaled (evenly thinned), whatever the
#: bake's length.
SERIES_POINTS = 120


@dataclass(frozen=True)
class ProgressEvent:
    """Something a face may show while a release runs."""

    kind: str  # plan, start, started, ready, switch, revert, stop-new, stop-old, bake, failed, done
    service: str | None
    message: str
    at: float


Progress = Callable[[ProgressEvent], None]


@dataclass
class DeployResult:
    """How a deploy (or rollback, or resume) ended, with its timings."""

    deployment_id: str
    env: str
    release: str
    version: str
    kind: str
    outcome: str  # succeeded | rolled_back
    reason: str | None = None
    failed_service: str | None = None
    duration_seconds: float = 0.0
    detected_at: float | None = None
    finished_at: float | None = None
    bake_started_at: float | None = None
    started: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    endpoints: dict[str, str] = field(default_factory=dict)
    migrations: list[str] = field(default_factory=list)  # applied by this release
    bake: dict[str, dict[str, Any]] = field(default_factory=dict)  # service -> bake figures
    previous_release: str | None = None  # what served before (None: a first deploy)

    @property
    def detect_seconds(self) -> float | None:
        """From the start of the bake to the failure verdict (a bake failure only)."""
        if self.bake_started_at is None or self.detected_at is None:
            return None
        return self.detected_at - self.bake_started_at

    @property
    def rollback_seconds(self) -> float | None:
        """From the failure being detected to the previous version serving alone again."""
        if self.detected_at is None or self.finished_at is None:
            return None
        return self.finished_at - self.detected_at

    def to_dict(self) -> dict[str, Any]:
        hidden = {"detected_at", "finished_at", "bake_started_at"}
        data = {k: v for k, v in self.__dict__.items() if k not in hidden}
        data["rollback_seconds"] = self.rollback_seconds
        data["detect_seconds"] = self.detect_seconds
        return data


# ---------------------------------------------------------------------------------------------
# Paths and context.


def resolve_secrets(
    project: Project, env: str, config: Mapping[str, Mapping[str, str]], root: Path
) -> dict[str, str]:
    """Values of every secret the environment's config references, from its provider. Missing
    ones are reported together, by name only."""
    wanted = referenced(config)
    provider = resolver(project, env, root=root)
    missing = {name: users for name, users in wanted.items() if not provider.lookup(name)}
    if missing:
        lines = [
            f"  {name} (used by {', '.join(users)})" for name, users in sorted(missing.items())
        ]
        raise SecretError(
            f"environment {env!r} needs secrets that are not in {provider.where}:\n"
            + "\n".join(lines),
            hint="add them there (values are never printed)",
        )
    return {name: provider.require(name) for name in wanted}


def bind_reference(
    ref: Reference,
    *,
    secrets: Mapping[str, str],
    endpoints: Mapping[str, Endpoint],
    env: str,
    data_dir: str,
    database_url: Callable[[], str],
) -> str:
    """The value a ``${...}`` reference of rendered config takes where the services run:
    secrets by name, other services' stable endpoints, the environment's name and data folder,
    and the database's URL (asked for only when a reference needs it)."""
    if ref.kind == "secret":
        return secrets[ref.name]
    if ref.kind == "service":
        endpoint = endpoints[ref.name]
        return {"url": endpoint.url, "host": endpoint.host, "port": str(endpoint.port)}[
            ref.attribute
        ]
    if ref.kind == "env":
        return env if ref.name == "name" else data_dir
    if ref.kind == "database":
        return database_url()
    raise UsageError(f"unknown reference {ref.text}")


def planned(bundle: Bundle, env: str, store: StateStore) -> Plan:
    """The plan for deploying ``bundle`` to ``env`` against what is deployed now."""
    project = bundle.project
    require_env(project, env)
    deployed = store.deployed(env)
    return make_plan(
        env=env,
        release=bundle.id,
        version=bundle.label,
        project=project,
        digests=bundle.digests(env),
        config=bundle.config(env),
        deployed={
            name: DeployedService(row.release_id, row.digest, row.config)
            for name, row in deployed.items()
        },
        previous_release=store.current_release(env),
    )


def _thinned(points: list[list[Any]]) -> list[list[Any]]:
    """At most ``SERIES_POINTS`` of ``points``, evenly spread, the first and last kept."""
    if len(points) <= SERIES_POINTS:
        return points
    step = (len(points) - 1) / (SERIES_POINTS - 1)
    return [points[round(i * step)] for i in range(SERIES_POINTS)]


def _new_instance_id(service: str, release: str, deployment_id: str) -> str:
    return f"{service}-{release[:8]}-{deployment_id[-6:]}"


def _now_id() -> str:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    return f"d-{stamp}-{secrets.token_hex(3)}"


# ---------------------------------------------------------------------------------------------
# Driving one deployment.


class _Drive:
    """One deployment in progress: the engine, the runtime, the journal."""

    def __init__(
        self,
        *,
        store: StateStore,
        deployment_id: str,
        bundle: Bundle,
        plan: Plan,
        runtime: Runtime,
        progress: Progress | None,
        project_root: Path,
        clock: Clock = SYSTEM,
        engine: Release | None = None,
    ) -> None:
        self.store = store
        self.deployment_id = deployment_id
        self.bundle = bundle
        self.project = bundle.project
        self.plan = plan
        self.env = plan.env
        self.runtime = runtime
        self.progress = progress
        self.clock = clock.now
        self.sleep = clock.sleep
        self.engine = engine or Release(plan.engine_plan())
        self.deployed: dict[str, DeployedRow] = store.deployed(plan.env)
        self.config = bundle.config(plan.env)
        self.masker = Masker()
        self.project_root = project_root
        self.resolved: dict[str, dict[str, str]] = {}
        self.database_url: str | None = None
        self.migrations_applied: list[str] = []
        self.endpoints: dict[str, Endpoint] = {}
        self.instances: dict[str, str] = {}  # service -> new instance id
        self.last_probe: dict[str, str] = {}
        self.detected_at: float | None = None
        self.finished: Finish | None = None
        self.incomplete: list[str] = []  # rollback steps a runtime could not carry out
        self.last_words: dict[str, list[str]] = {}  # service → last log lines of a dead instance
        self._unhealthy: dict[str, int] = {}
        # Bake figures per (service, host): a service on three hosts is judged on each.
        self.memory: dict[Unit, list[MemorySample]] = {}
        self.bake_started_at: float | None = None
        # /metrics during the bake: the first good scrape (baseline) and the latest one.
        self.traffic_first: dict[Unit, Traffic] = {}
        self.traffic_last: dict[Unit, Traffic] = {}
        self._scrapes: dict[Unit, int] = {}
        self._metrics_misses: dict[Unit, int] = {}
        self.bake_figures: dict[str, dict[str, Any]] = {}  # per service, once the bake is over
        # (seconds into the bake, error rate, p95 ms) since the first scrape, for the record
        self.traffic_series: dict[Unit, list[tuple[float, float | None, float | None]]] = {}

    # -- helpers -------------------------------------------------------------------------------

    def _emit(self, kind: str, service: str | None, message: str) -> None:
        if self.progress is not None:
            self.progress(ProgressEvent(kind, service, self.masker.mask(message), self.clock()))

    def _binding(self, ref: Reference, secrets_: Mapping[str, str]) -> str:
        return bind_reference(
            ref,
            secrets=secrets_,
            endpoints=self.endpoints,
            env=self.env,
            data_dir=self.runtime.data_dir,
            database_url=self._database_url,
        )

    def _database_url(self) -> str:
        if self.database_url is None:
            from airlock.db.target import environment_database_url

            url, secret_values = environment_database_url(
                self.project, self.env, state_root=self.project_root
            )
            self.masker.add(*secret_values)
            self.database_url = url
        return self.database_url

    async def bind(self, secrets_: Mapping[str, str]) -> dict[str, dict[str, str]]:
        """Stable ports for every service, then every service's environment, resolved."""
        self.masker.add(*secrets_.values())
        for name, service in self.project.services.items():
            port = None if service.port == "auto" else service.port
            self.endpoints[name] = await self.runtime.endpoint(name, port)
        return {
            service: {
                key: substitute(value, lambda ref: self._binding(ref, secrets_))
                for key, value in values.items()
            }
            for service, values in self.config.items()
        }

    def instance_id(self, service: str) -> str:
        return self.instances.setdefault(
            service, _new_instance_id(service, self.bundle.id, self.deployment_id)
        )

    # -- the loop ------------------------------------------------------------------------------

    async def feed(self, event: Event) -> None:
        """Journal ``event``, let the engine decide, carry out its actions (and their events)."""
        queue = [event]
        while queue:
            current = queue.pop(0)
            if isinstance(current, Failed | Abort):
                # Reasons can quote what a service answered or printed: mask them before the
                # journal, the engine or any output sees them.
                current = replace(current, reason=self.masker.mask(current.reason))
            self.store.journal(self.deployment_id, "event", event_to_dict(current))
            phase_before = self.engine.phase
            actions = self.engine.handle(current)
            if self.engine.phase is ReleasePhase.BAKING and self.bake_started_at is None:
                self.bake_started_at = self.clock()
            if (
                phase_before is not ReleasePhase.ROLLING_BACK
                and self.engine.phase in (ReleasePhase.ROLLING_BACK, ReleasePhase.ROLLED_BACK)
                and self.detected_at is None
            ):
                self.detected_at = self.clock()
                self._emit("failed", self.engine.failed_service, self._reason())
            for batch in _batches(actions):
                if len(batch) == 1:
                    queue.extend(await self.execute(batch[0]))
                    continue
                # Stopping the previous versions after a good bake, or the new ones in a
                # rollback: independent of each other, so at once (each journaled first).
                for events in await asyncio.gather(*(self.execute(a) for a in batch)):
                    queue.extend(events)

    def _reason(self) -> str:
        reason = self.engine.reason or "failed"
        failed = self.engine.failed_service
        if failed and failed in self.last_probe and "not ready" in reason:
            reason += f" (last probe: {self._clip(self.last_probe[failed])})"
        words = self.last_words.get(failed or "", [])[-LAST_WORDS:]
        if words and "exited" in reason:
            reason += (
                f"; its last lines: {' | '.join(words)} (see `airlock logs {self.env} {failed}`)"
            )
        if self.incomplete:
            reason += "; not everything could be rolled back: " + "; ".join(self.incomplete)
        return self.masker.mask(reason)

    async def _probe(self, instance: str, path: str) -> ProbeResult:
        """The runtime's probe, its detail (which quotes the answer's body) masked."""
        result = await self.runtime.probe(instance, path)
        return replace(result, detail=self.masker.mask(result.detail))

    async def execute(self, action: Action) -> list[Event]:
        self.store.journal(
            self.deployment_id, "action", {"action": type(action).__name__, **asdict(action)}
        )
        now = self.clock
        if isinstance(action, StartNew):
            return await self._start(action.service)
        if isinstance(action, SwitchTraffic):
            try:
                await self.runtime.switch(action.service, self.instance_id(action.service))
            except AirlockError as exc:
                # The runtime moved no traffic, or moved it back: the release fails here.
                reason = f"{action.service}: traffic could not be switched: {exc.message}"
                return [Failed(action.service, self.masker.mask(reason), now())]
            self._emit("switch", action.service, f"{action.service}: traffic → new version")
            return []
        if isinstance(action, RevertTraffic):
            old = self.deployed.get(action.service)
            if old is not None:
                await self._undo(
                    action.service, self.runtime.switch(action.service, old.instance_id)
                )
            self._emit("revert", action.service, f"{action.service}: traffic → previous version")
            return []
        if isinstance(action, StopNew):
            # A new service with no previous version still has the traffic: stop it anyway.
            await self._undo(
                action.service, self._stop(self.instance_id(action.service), force=True)
            )
            self._emit("stop-new", action.service, f"{action.service}: new version stopped")
            return [Stopped(action.service, now())]
        if isinstance(action, StopOld):
            old = self.deployed.get(action.service)
            if old is not None:
                await self._undo(action.service, self._stop(old.instance_id))
            self._emit("stop-old", action.service, f"{action.service}: previous version stopped")
            return []
        if isinstance(action, Finish):
            self.finished = action
            return []
        raise StateError(f"the runner does not know the action {action!r}")

    async def _exit_code(self, service: str) -> int | None:
        """The exit code of the service's new instance, as the runtime saw it (None: unknown)."""
        try:
            statuses = await self.runtime.status()
        except AirlockError:
            return None
        codes = [
            s.last_exit_code
            for s in statuses
            if s.instance_id == self.instances.get(service) and s.last_exit_code is not None
        ]
        return codes[0] if codes else None

    async def _remember_last_words(self, service: str) -> None:
        """Keep the last lines the service's new instance wrote (masked), to say why it died."""
        instance = self.instances.get(service)
        try:
            lines = await self.runtime.logs(service, LAST_WORDS * 20)
        except AirlockError:
            return
        prefix = f"[{instance}] "
        mine = [line.split(prefix, 1)[1] for line in lines if prefix in line]
        mine = [line for line in mine if line.strip() and not line.startswith("--- ")]
        if mine:
            self.last_words[service] = [self._clip(self.masker.mask(line)) for line in mine]

    async def _undo(self, service: str, step: Awaitable[None]) -> None:
        """Carry out one step of a rollback (or of stopping the previous version); a part of the
        runtime that cannot be reached (a lost host) is recorded and named in the outcome, and
        the rollback goes on everywhere else."""
        try:
            await step
        except AirlockError as exc:
            problem = self.masker.mask(exc.message.splitlines()[0])
            self.incomplete.append(f"{service}: {problem}")
            self._emit("warning", service, f"{service}: {problem}")

    async def _stop(self, instance_id: str, *, force: bool = False) -> None:
        await self.runtime.stop(instance_id, force=force)

    async def _start(self, service: str) -> list[Event]:
        model = self.project.services[service]
        spec = InstanceSpec(
            service=service,
            instance_id=self.instance_id(service),
            argv=tuple(model.argv),
            cwd=str(self.bundle.files_dir),
            env=self.resolved[service],
            secret_keys=tuple(sorted(secret_keys(self.config[service]))),
        )
        self._emit("start", service, f"{service}: starting {self.bundle.label}")
        try:
            status = await self.runtime.start(spec)
        except AirlockError as exc:
            return [Failed(service, self.masker.mask(f"{service}: {exc.message}"), self.clock())]
        where = f" ({status.where})" if status.where else ""
        self._emit("started", service, f"{service}: started{where}")
        return [Started(service, self.clock())]

    async def run(self, secrets_: Mapping[str, str]) -> Finish:
        self.resolved = await self.bind(secrets_)
        self._emit("plan", None, f"deploying {self.bundle.label} ({self.bundle.id}) to {self.env}")
        if not self.plan.changes_something:
            self._emit("plan", None, "nothing changes: no service starts, so there is no bake")
        try:
            if self.engine.phase is ReleasePhase.PENDING:
                await self.feed(Begin(self.clock()))
            await self.watch()
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            await self.abort("interrupted by user (Ctrl-C)")
        assert self.finished is not None
        return self.finished

    async def abort(self, reason: str) -> None:
        """Roll back whatever this deployment started."""
        if self.finished is None:
            await self.feed(Abort(reason, self.clock()))
        await self.watch()

    async def watch(self) -> None:
        """Probe, poll and tick until the engine finishes."""
        last_bake_poll = 0.0
        while self.finished is None:
            phase = self.engine.phase
            if phase is ReleasePhase.STARTING:
                await self._probe_starting()
            elif (
                phase is ReleasePhase.BAKING and self.clock() - last_bake_poll >= BAKE_POLL_SECONDS
            ):
                last_bake_poll = self.clock()
                await self._watch_bake()
            if self.finished is not None:
                break
            deadline = self.engine.next_deadline()
            if deadline is not None and self.clock() >= deadline:
                await self.feed(Tick(self.clock()))
                continue
            await self.sleep(START_POLL_SECONDS if phase is ReleasePhase.STARTING else POLL_SECONDS)

    async def _probe_starting(self) -> None:
        starting = [
            s.name
            for s in self.plan.services
            if s.action == "start"
            and s.name in self.instances
            and self.engine.service_phase(s.name) is ServicePhase.STARTING
        ]

        async def probe(service: str) -> tuple[str, Any]:
            model = self.project.services[service]
            path = model.ready or model.health
            try:
                return service, await self._probe(self.instances[service], path)
            except AirlockError as exc:
                return service, exc

        for service, result in await asyncio.gather(*(probe(s) for s in starting)):
            if self.finished is not None or self.engine.phase is not ReleasePhase.STARTING:
                return
            if self.engine.service_phase(service) is not ServicePhase.STARTING:
                continue
            if isinstance(result, AirlockError):
                self.last_probe[service] = self.masker.mask(result.message)
                continue
            self.last_probe[service] = result.detail
            if result.exited:
                if result.ok:
                    reason = f"{service}: restarted while starting"
                    await self.feed(Failed(service, reason, self.clock()))
                else:
                    code = await self._exit_code(service)
                    await self._remember_last_words(service)
                    await self.feed(Exited(service, code, self.clock()))
            elif result.ok:
                self._emit("ready", service, f"{service}: ready")
                await self.feed(Ready(service, self.clock()))

    async def _watch_bake(self) -> None:
        statuses: dict[str, list[InstanceStatus]] = {}
        try:
            reported = await self.runtime.status()
        except AirlockError as exc:
            # Where the new versions run cannot be seen (a host lost, an agent gone): a bake
            # that cannot watch does not let the release through.
            lost = exc.message.splitlines()[0]
            await self.feed(Abort(f"the bake lost sight of the new versions: {lost}", self.clock()))
            return
        for status in reported:
            statuses.setdefault(status.instance_id, []).append(status)
        for service, instance in self.instances.items():
            if self.engine.service_phase(service) is not ServicePhase.READY:
                continue
            found = statuses.get(instance, [])
            gone = [s for s in found if s.exits > 0 or not s.running]
            if not found or (gone and not gone[0].host):
                code = gone[0].last_exit_code if gone else None
                await self._remember_last_words(service)
                await self.feed(Exited(service, code, self.clock()))
                return
            if gone:  # on a fleet: say which host
                code = gone[0].last_exit_code
                exit_text = f" with code {code}" if code is not None else ""
                reason = f"{service}: the instance on {gone[0].host} exited{exit_text}"
                await self.feed(Failed(service, reason, self.clock()))
                return
            for status in found:
                verdict = self._sample_memory((service, status.host), status.rss_bytes)
                if verdict is not None:
                    who = f"{service} on {status.host}" if status.host else service
                    await self.feed(Failed(service, verdict.describe(who), self.clock()))
                    return
            model = self.project.services[service]
            result = await self._probe(instance, model.health)
            if result.ok:
                self._unhealthy[service] = 0
            else:
                self._unhealthy[service] = self._unhealthy.get(service, 0) + 1
                if self._unhealthy[service] >= 3:
                    await self.feed(
                        Failed(
                            service,
                            f"{service}: health check failed during bake: {result.detail}",
                            self.clock(),
                        )
                    )
                    return
            for status in found:
                problem = await self._scrape_metrics((service, status.host), instance)
                if problem is not None:
                    await self.feed(Failed(service, problem, self.clock()))
                    return

    def _sample_memory(self, unit: Unit, rss: int | None) -> Verdict | None:
        """Record one instance's resident memory on one host, as the runtime measured it where
        the instance runs; judge its trend against the gate (INC09)."""
        budget = self.project.gates.memory_growth_mb_per_min
        if rss is None:
            return None
        samples = self.memory.setdefault(unit, [])
        samples.append(MemorySample(self.clock(), rss))
        return judge_memory(samples, budget) if budget is not None else None

    def _into_bake(self) -> float:
        return round(self.clock() - (self.bake_started_at or self.clock()), 2)

    @staticmethod
    def _clip(text: str) -> str:
        """``text`` on one line, at most ``PROBE_DETAIL_CHARS`` long, for a reason."""
        text = " ".join(text.split())
        if len(text) > PROBE_DETAIL_CHARS:
            text = text[: PROBE_DETAIL_CHARS - 1] + "…"
        return text

    def _judges_traffic(self, service: str) -> bool:
        """Whether the bake reads the service's metrics: it has some, and a gate needs them."""
        gates = self.project.gates
        return self.project.services[service].metrics is not None and (
            gates.error_rate is not None or gates.p95_ms is not None
        )

    async def _scrape_metrics(self, unit: Unit, instance: str) -> str | None:
        """Scrape the new instance's metrics (on one host) and judge its requests since the
        first scrape against ``gates.error_rate`` and ``gates.p95_ms``: a failure reason, or
        None so far.

        Metrics that cannot be read (not Prometheus text, a non-2xx answer) fail at once: a
        bake that cannot judge a service does not let it through. No answer at all counts
        like a failed health check: three in a row fail.
        """
        service, host = unit
        if not self._judges_traffic(service):
            return None
        who = f"{service} on {host}" if host else service
        path = self.project.services[service].metrics or "/metrics"
        cannot = "the bake cannot judge it, so the release is not let through"
        result = await self.runtime.fetch(instance, path, host=host or None)
        result = replace(result, detail=self.masker.mask(result.detail))
        if result.status is None:
            misses = self._metrics_misses[unit] = self._metrics_misses.get(unit, 0) + 1
            if misses < 3:
                return None
            return self.masker.mask(
                f"{who}: {path} did not answer during bake ({result.detail}); {cannot}"
            )
        self._metrics_misses[unit] = 0
        if not result.ok:
            return self.masker.mask(
                f"{who}: {path} answered {result.status} instead of metrics "
                f"({self._clip(result.detail)}); {cannot}"
            )
        if result.truncated:
            return self.masker.mask(
                f"{who}: {path} answered more text than Airlock reads "
                f"({len(result.body) // 1024} KiB read); {cannot}"
            )
        try:
            traffic = parse_metrics(result.body)
        except MetricsError as exc:
            why = self._clip(str(exc).removeprefix("not Prometheus text: "))
            return self.masker.mask(
                f"{who}: {path} answered something that is not Prometheus text ({why}); " + cannot
            )
        self._scrapes[unit] = self._scrapes.get(unit, 0) + 1
        first = self.traffic_first.setdefault(unit, traffic)
        self.traffic_last[unit] = traffic
        if first is traffic:
            return None
        so_far = traffic_figures(first, traffic)
        self.traffic_series.setdefault(unit, []).append(
            (self._into_bake(), so_far["error_rate"], so_far["p95_ms"])
        )
        gates = self.project.gates
        verdict = judge_traffic(first, traffic, gates.error_rate, gates.p95_ms, MIN_REQUESTS)
        return None if verdict is None else self.masker.mask(verdict.describe(who))

    def _close_bake(self) -> None:
        """Journal what the bake measured of each new instance, with the limits and the verdict
        (once, when the deployment ends), and say which gates went unjudged for lack of traffic.
        """
        if self.bake_started_at is None or self.finished is None or self.bake_figures:
            return
        gates = self.project.gates
        outcome = self.finished.outcome
        for service in self.instances:
            figures = self._bake_figures(service)
            if self.finished.failed_service == service:
                figures["verdict"] = "failed"
                figures["reason"] = self.masker.mask(self._reason())
            else:
                figures["verdict"] = "passed" if outcome == "succeeded" else "rolled back"
            unjudged = figures.get("not_judged")
            if unjudged and outcome == "succeeded":
                self._emit("bake", service, f"{service}: {unjudged}")
            self.bake_figures[service] = figures
        ended = self.detected_at if self.detected_at is not None else self.clock()
        self.store.journal(
            self.deployment_id,
            "bake",
            {
                "outcome": outcome,
                "seconds": round(ended - self.bake_started_at, 2),
                "limits": {
                    "memory_growth_mb_per_min": gates.memory_growth_mb_per_min,
                    "error_rate": gates.error_rate,
                    "p95_ms": gates.p95_ms,
                    "min_requests": MIN_REQUESTS,
                },
                "services": self.bake_figures,
            },
        )

    def _bake_figures(self, service: str) -> dict[str, Any]:
        """One new instance's bake figures: memory, and requests from its metrics. On a fleet,
        those of each host under ``hosts``, and at the top those of the worst host (the fastest
        memory growth, then the highest error rate)."""
        hosts = sorted(
            {host for name, host in [*self.memory, *self._scrapes] if name == service and host}
        )
        if not hosts:
            return self._unit_figures((service, ""))
        each = {host: self._unit_figures((service, host)) for host in hosts}

        def badness(host: str) -> tuple[float, float]:
            figures = each[host]
            return (figures["memory_mb_per_min"] or 0.0, figures["error_rate"] or 0.0)

        worst = max(hosts, key=badness)
        return {**each[worst], "host": worst, "hosts": each}

    def _unit_figures(self, unit: Unit) -> dict[str, Any]:
        """The bake figures of one instance on one host."""
        service = unit[0]
        gates = self.project.gates
        samples = self.memory.get(unit, [])
        growth = memory_growth_mb_per_min(samples)
        figures: dict[str, Any] = {
            "memory_mb": round(samples[-1].rss_bytes / 2**20, 1) if samples else None,
            "memory_mb_per_min": round(growth, 2) if growth is not None else None,
            "scrapes": self._scrapes.get(unit, 0),
            "requests": None,
            "errors": None,
            "error_rate": None,
            "p95_ms": None,
            "limits": {
                "memory_growth_mb_per_min": gates.memory_growth_mb_per_min,
                "error_rate": gates.error_rate,
                "p95_ms": gates.p95_ms,
            },
        }
        start = self.bake_started_at or 0.0
        figures["samples"] = {  # over the bake, at most SERIES_POINTS each, for charts
            "memory_mb": _thinned(
                [[round(m.at - start, 2), round(m.rss_bytes / 2**20, 1)] for m in samples]
            ),
            "traffic": _thinned([list(point) for point in self.traffic_series.get(unit, [])]),
        }
        first, last = self.traffic_first.get(unit), self.traffic_last.get(unit)
        if first is not None and last is not None:
            figures.update(traffic_figures(first, last))
            if figures["error_rate"] is not None:
                figures["error_rate"] = round(figures["error_rate"], 4)
        if not self._judges_traffic(service):
            return figures
        path = self.project.services[service].metrics
        unjudged = [
            name
            for name, limit, counted in (
                ("error rate", gates.error_rate, figures["requests"] or 0),
                (
                    "p95 latency",
                    gates.p95_ms,
                    latency_count(first, last) if first is not None and last is not None else 0,
                ),
            )
            if limit is not None and counted < MIN_REQUESTS
        ]
        if not unjudged:
            return figures
        if self._scrapes.get(unit, 0) < 2:
            why = f"{path} was not read twice during the bake"
        elif not figures["requests"]:
            why = "no requests reached the new version during the bake"
        else:
            why = (
                f"only {figures['requests']:.0f} requests during the bake, fewer than the "
                f"{MIN_REQUESTS} needed"
            )
        figures["not_judged"] = f"{' and '.join(unjudged)} not judged: {why}"
        return figures

    # -- bookkeeping ---------------------------------------------------------------------------

    def record_outcome(self) -> None:
        """Write what serves now to the state store and close the deployment."""
        assert self.finished is not None
        self._close_bake()
        if self.finished.outcome == "succeeded":
            for service in self.plan.services:
                if service.action == "start":
                    self.store.set_deployed(
                        self.env,
                        service.name,
                        release_id=self.bundle.id,
                        digest=service.digest or "",
                        instance_id=self.instance_id(service.name),
                        config=self.config[service.name],
                    )
                elif service.action == "keep":
                    row = self.deployed[service.name]
                    self.store.set_deployed(
                        self.env,
                        service.name,
                        release_id=self.bundle.id,
                        digest=row.digest,
                        instance_id=row.instance_id,
                        config=row.config,
                    )
                else:
                    self.store.remove_deployed(self.env, service.name)
        reason = self._reason() if self.finished.outcome != "succeeded" else None
        self.store.finish(
            self.deployment_id,
            self.finished.outcome,
            reason=self.masker.mask(reason) if reason else None,
            failed_service=self.finished.failed_service,
        )


# ---------------------------------------------------------------------------------------------
# Public entry points.


def _migrate_first(drive: _Drive, project_root: Path) -> None:
    """The release's first step: validate → drift → lint → snapshot → migrate, journaled.

    Migrations must stay compatible with the version that runs now (expand/contract, which the
    linter enforces), so a release that fails later rolls its services back and leaves the schema
    as migrated: no write made since is thrown away.
    """
    if not migrates(drive.bundle.project, drive.env):
        return  # and the database modules (psycopg, pglast) stay unimported
    from airlock.db import api as db
    from airlock.db.target import release_target

    target = release_target(drive.bundle, drive.env, project_root)
    if target is None:
        return
    drive.masker.add(*target.masker.values)
    drive.database_url = target.url  # ${database.url} needs it again: resolve it once
    drive._emit("migrate", None, f"migrating {target.display}")
    outcome = db.migrate(
        target,
        release_id=drive.bundle.id,
        progress=lambda text: drive._emit("migrate", None, text),
    )
    summary = outcome.to_dict()
    drive.store.journal(drive.deployment_id, "migration", summary)
    applied = [s["script"] for s in summary["steps"] if s["outcome"] == "applied"]
    drive.migrations_applied = applied
    drive._emit(
        "migrate",
        None,
        f"migrations applied: {', '.join(applied)}" if applied else "schema already up to date",
    )


def _static_gate(bundle: Bundle, env: str, project_root: Path) -> None:
    """The static gate of the sealed release for one environment; refuses it on any error
    finding. It judges the release (its sealed project and files), never today's working tree,
    so Airlock's own files or a file changed since sealing cannot block a deploy or rollback."""
    from airlock.checks.gate import run_gate

    deployed = {env: deployed_project(project_root, env)}
    result = run_gate(
        bundle.project,
        root=project_root,
        envs=[env],
        deployed=deployed,
        sealed=bundle.files_dir,
    )
    errors = [f for f in result.findings if f.severity is Severity.ERROR]
    if errors:
        lines = [f"  {f.code}: {f.message} ({f.location})" for f in errors]
        raise GateFailed(
            f"the static check found errors for {env}; nothing was deployed:\n" + "\n".join(lines),
            hint=f"run `airlock check --env {env}` for details",
        )


async def deploy_async(
    project_root: Path,
    env: str,
    release: str | None = None,
    *,
    kind: str = "deploy",
    progress: Progress | None = None,
    runtime: Runtime | None = None,
    approval: Mapping[str, Any] | None = None,
    clock: Clock = SYSTEM,
) -> DeployResult:
    """Deploy a sealed release to ``env``; roll it back automatically on any failure.

    Approvals are the caller's to check (:func:`airlock.api.deploy` does, see
    :mod:`airlock.gonogo`); what they found (``approval``) is journaled with the deployment.
    """
    started = time.monotonic()
    bundle = find_release(project_root, release)
    bundle.verify()
    project = bundle.project
    require_env(project, env)
    _static_gate(bundle, env, project_root)
    secrets_ = resolve_secrets(project, env, bundle.config(env), project_root)
    with open_state(project_root) as store:
        plan = planned(bundle, env, store)
        deployment_id = _now_id()
        store.begin(
            deployment_id=deployment_id,
            env=env,
            kind=kind,
            release_id=bundle.id,
            version=bundle.label,
            previous_release_id=plan.previous_release,
            plan=plan.to_dict(),
        )
        if approval is not None:
            store.journal(deployment_id, "approval", approval)
        drive = _Drive(
            store=store,
            deployment_id=deployment_id,
            bundle=bundle,
            plan=plan,
            runtime=runtime or open_runtime(project, env, root=project_root),
            progress=progress,
            project_root=project_root,
            clock=clock,
        )
        drive.masker.add(*secrets_.values())
        try:
            await asyncio.to_thread(_migrate_first, drive, project_root)
        except BaseException as exc:
            reason = drive.masker.mask(str(exc).splitlines()[0] if str(exc) else repr(exc))
            store.finish(deployment_id, "failed", reason=reason)
            raise
        return await _finish_drive(drive, secrets_, kind, started)


async def _finish_drive(
    drive: _Drive, secrets_: Mapping[str, str], kind: str, started: float
) -> DeployResult:
    try:
        await drive.run(secrets_)
    except LeaseLost:
        # Another process took the deployment over while this one stalled: it carries the
        # deployment on from the journal, so this one must not touch anything any more.
        raise
    except BaseException as exc:
        # The runtime failed under us (or a bug): try to roll back what we started, then close.
        try:
            if drive.finished is None:
                await drive.abort(f"runner error: {exc}")
        except BaseException:
            pass
        if drive.finished is not None:
            drive.record_outcome()
        else:
            drive.store.finish(drive.deployment_id, "failed", reason=drive.masker.mask(str(exc)))
        await _shut_down_if_idle(drive)
        raise
    return await _result(drive, kind, started)


def _batches(actions: list[Action]) -> list[list[Action]]:
    """Actions in order, consecutive ``StopOld`` ones together (they can run at once).

    A rollback (traffic reverts and stops of the new versions) reverts the traffic of every
    service first, dependents first, then stops every new version at once: each stop waits for
    a process to exit, and nothing reaches a new version once its traffic went back.
    """
    if actions and all(isinstance(a, RevertTraffic | StopNew | Finish) for a in actions):
        ordered: list[list[Action]] = [[a] for a in actions if isinstance(a, RevertTraffic)]
        stops: list[Action] = [a for a in actions if isinstance(a, StopNew)]
        if stops:
            ordered.append(stops)
        ordered += [[a] for a in actions if isinstance(a, Finish)]
        return ordered
    batches: list[list[Action]] = []
    for action in actions:
        if isinstance(action, StopOld) and batches and isinstance(batches[-1][0], StopOld):
            batches[-1].append(action)
        else:
            batches.append([action])
    return batches


async def _shut_down_if_idle(drive: _Drive) -> None:
    """After a deploy that left nothing of the environment serving (a first deploy that failed
    or was interrupted), stop the runtime's helpers too: no agent is left running for nothing."""
    try:
        if drive.store.deployed(drive.env):
            return
        await drive.runtime.shutdown()
    except Exception:  # best effort: the deploy's own outcome is what the caller needs
        return


async def resume_async(
    project_root: Path,
    env: str,
    *,
    progress: Progress | None = None,
    runtime: Runtime | None = None,
    clock: Clock = SYSTEM,
) -> DeployResult | None:
    """Finish or roll back a deploy whose process was killed (see the module docstring)."""
    started = time.monotonic()
    with open_state(project_root) as store:
        running = store.running(env)
        if running is None:
            return None
        if running.holder_alive and running.pid != os.getpid():
            raise UsageError(
                f"deployment {running.id} to {env!r} is still running in {running.holder}",
                hint="wait for it, or stop that process (Ctrl-C rolls it back)",
            )
        # Take the deployment over before the slow work (verifying the bundle): only one
        # resume can win the compare-and-swap on its holder.
        store.take_over(running)
        bundle = load_bundle(project_root, running.release_id)
        bundle.verify()
        plan = planned(bundle, env, store)
        events = [event_from_dict(record["body"]) for record in store.records(running.id, "event")]
        # The plan was computed against the state before the deploy: deployed rows only change
        # when a deploy finishes, so recomputing it gives the same plan.
        engine, owed = replay_owed(plan.engine_plan(), events)
        drive = _Drive(
            store=store,
            deployment_id=running.id,
            bundle=bundle,
            plan=plan,
            runtime=runtime or open_runtime(bundle.project, env, root=project_root),
            progress=progress,
            project_root=project_root,
            clock=clock,
            engine=engine,
        )
        for service in plan.services:
            if engine.service_phase(service.name) is not ServicePhase.WAITING:
                drive.instance_id(service.name)
        secrets_ = resolve_secrets(bundle.project, env, bundle.config(env), project_root)
        drive.resolved = await drive.bind(secrets_)
        if engine.phase is ReleasePhase.SUCCEEDED:
            # The bake passed; the previous versions may not all be stopped yet. Carry out
            # again what the last event asked for (stops are idempotent), Finish included.
            for action in owed:
                await drive.execute(action)
            if drive.finished is None:  # pragma: no cover - the engine always ends with Finish
                drive.finished = Finish("succeeded", None, None)
        elif engine.phase is ReleasePhase.ROLLING_BACK:
            for service in plan.services:
                if engine.service_phase(service.name) is ServicePhase.STOPPING:
                    old = drive.deployed.get(service.name)
                    if old is not None:
                        await drive.runtime.switch(service.name, old.instance_id)
                    await drive._stop(drive.instance_id(service.name), force=True)
                    await drive.feed(Stopped(service.name, drive.clock()))
        elif engine.phase is ReleasePhase.ROLLED_BACK:
            drive.finished = Finish("rolled_back", engine.reason, engine.failed_service)
        else:
            drive.detected_at = drive.clock()
            await drive.feed(Abort("resumed after the deploying process stopped", drive.clock()))
            await drive.watch()
        if drive.finished is None:
            await drive.watch()
        return await _result(drive, "resume", started)


async def _result(drive: _Drive, kind: str, started: float) -> DeployResult:
    """Record the outcome in the state store and summarise it."""
    drive.record_outcome()
    if drive.finished is not None and drive.finished.outcome != "succeeded":
        await _shut_down_if_idle(drive)
    assert drive.finished is not None
    result = DeployResult(
        deployment_id=drive.deployment_id,
        env=drive.env,
        release=drive.bundle.id,
        version=drive.bundle.label,
        kind=kind,
        outcome=drive.finished.outcome,
        reason=drive._reason() if drive.finished.outcome != "succeeded" else None,
        failed_service=drive.finished.failed_service,
        duration_seconds=time.monotonic() - started,
        detected_at=drive.detected_at,
        finished_at=drive.clock(),
        bake_started_at=drive.bake_started_at,
        started=[s.name for s in drive.plan.services if s.action == "start"],
        kept=[s.name for s in drive.plan.services if s.action == "keep"],
        endpoints={name: endpoint.url for name, endpoint in drive.endpoints.items()},
        migrations=drive.migrations_applied,
        previous_release=drive.plan.previous_release,
        bake=drive.bake_figures,
    )
    drive._emit("done", None, f"{kind} {result.outcome}")
    return result


def raise_if_failed(result: DeployResult) -> DeployResult:
    if result.outcome != "succeeded":
        raise ReleaseFailed(
            f"{result.kind} of {result.version} ({result.release}) to {result.env} failed and "
            f"was rolled back: {result.reason}",
            hint=f"see `airlock logs {result.env} {result.failed_service}`"
            if result.failed_service
            else None,
        )
    return result
