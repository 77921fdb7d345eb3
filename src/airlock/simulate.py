"""Simulation on a virtual clock: the engine alone, or the real runner on a simulated runtime.

Two tools, for two questions:

- :class:`SimulatedRuntime` implements the :class:`~airlock.runtimes.Runtime` protocol with
  imaginary instances on a :class:`~airlock.clock.VirtualClock`. The real runner (journal,
  resume, bake) runs on it unchanged, so tests can kill a deploy after any journal record and
  resume it, in milliseconds.
- :class:`EngineSimulation` drives a :class:`~airlock.engine.Release` by itself, event to
  event, to measure schedules of thousands of services (``benchmarks/scheduler.py``) and to fail
  the engine at every step. It plays the runner's part only as far as the engine sees it:
  every service is imaginary: a started service becomes ready ``durations[name]`` seconds
after ``StartNew`` (or fails then, as asked), a stopped one reports ``Stopped`` after
``stop_seconds``, and ``Tick`` is sent at :meth:`~airlock.engine.Release.next_deadline`. Time is a
virtual clock that jumps from one event to the next, so a release of ten thousand services that
would take hours runs in a fraction of a second, and always the same way.

It keeps a small model of the world it acts on: which new instances run, which old instances
run, and which version serves each service's traffic. Tests use it to check what a release
leaves behind; ``airlock plan --simulate`` uses it to estimate how long a release will take.

::

    from airlock.simulate import simulate

    result = simulate(plan, {"account": 2.0, "payment": 3.5}, failures={"payment": "exit"})
    assert result.outcome == "rolled_back"
    assert not result.world.new_running

The module also computes the bounds a schedule is measured against: :func:`critical_path` (no
schedule can be faster) and :func:`waves_makespan` (what starting the plan level by level,
:func:`waves`, would take).
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeAlias

from airlock.clock import VirtualClock
from airlock.engine import (
    Abort,
    Action,
    Begin,
    EngineError,
    EnginePlan,
    Event,
    Exited,
    Failed,
    Finish,
    Ready,
    Release,
    ReleasePhase,
    RevertTraffic,
    Started,
    StartNew,
    StopNew,
    StopOld,
    Stopped,
    SwitchTraffic,
    Tick,
)
from airlock.errors import RuntimeFailure, UsageError
from airlock.graph import depths, toposort
from airlock.runtimes import (
    CheckResult,
    Endpoint,
    FetchResult,
    HostCheck,
    InstanceSpec,
    InstanceStatus,
    ProbeResult,
)

__all__ = [
    "Behaviour",
    "EngineSimulation",
    "FailureKind",
    "SimulatedRuntime",
    "SimulationResult",
    "World",
    "critical_path",
    "simulate",
    "waves",
    "waves_makespan",
]

FailureKind: TypeAlias = Literal["exit", "fail", "hang"]
"""How a simulated service fails: its process exits, its health check fails, or it never gets
ready (so its readiness timeout fires)."""

_FAILURE_KINDS = ("exit", "fail", "hang")


@dataclass(frozen=True)
class World:
    """What runs and what serves, as the simulated runtime sees it.

    ``traffic`` maps a service to the version its requests go to (``"new"`` or ``"old"``); a
    service that nothing serves is absent. Kept services run (and serve) as their ``"old"``
    version: the one that was there before the release.
    """

    new_running: frozenset[str]
    old_running: frozenset[str]
    traffic: Mapping[str, Literal["new", "old"]]

    @property
    def serving_new(self) -> frozenset[str]:
        """Services whose traffic goes to the new version."""
        return frozenset(s for s, v in self.traffic.items() if v == "new")

    @property
    def serving_old(self) -> frozenset[str]:
        """Services whose traffic goes to the old version."""
        return frozenset(s for s, v in self.traffic.items() if v == "old")


@dataclass(frozen=True)
class SimulationResult:
    """How a simulated release went.

    ``finished_at`` is the virtual time of ``Finish`` and ``all_ready_at`` the time every new
    version was ready (the makespan of the schedule; ``None`` if that never happened). ``trace``
    interleaves each event with the actions it produced, in order; ``actions`` are the same
    actions with the virtual time they were issued at.
    """

    outcome: Literal["succeeded", "rolled_back"] | None
    reason: str | None
    failed_service: str | None
    finished_at: float | None
    all_ready_at: float | None
    actions: tuple[tuple[float, Action], ...]
    events: tuple[Event, ...]
    trace: tuple[Event | Action, ...]
    world: World
    engine_seconds: float
    """Real (wall clock) seconds spent inside :meth:`Release.handle`."""


class EngineSimulation:
    """Drive a release with imaginary services on a virtual clock.

    ``durations`` gives, per service, the seconds from ``StartNew`` to ``Ready`` (services
    missing from it take ``default_duration``; names not in the plan are ignored).

    ``failures`` makes a service fail instead: ``"exit"`` and ``"fail"`` send ``Exited`` (with
    ``exit_code``) or ``Failed`` at the time it would have been ready, or ``fail_after[name]``
    seconds after ``StartNew`` (when that is later than its duration, the service first becomes
    ready, then fails); ``"hang"`` never becomes ready, so its readiness timeout fires.
    ``abort_at`` sends ``Abort`` at that virtual time. ``StopNew`` is answered by ``Stopped``
    ``stop_seconds`` later.

    Use :meth:`run` to go to the end, or :meth:`step` and :meth:`send` to stop on the way and
    inject events (tests do this to fail a release at every possible point).
    """

    def __init__(
        self,
        plan: EnginePlan,
        durations: Mapping[str, float],
        *,
        failures: Mapping[str, FailureKind] | None = None,
        fail_after: Mapping[str, float] | None = None,
        stop_seconds: float = 0.0,
        abort_at: float | None = None,
        default_duration: float = 1.0,
        exit_code: int = 1,
    ) -> None:
        self.release = Release(plan)
        self.plan = plan
        names = {s.name for s in plan.services}
        strays = sorted(set(failures or {}) - names)
        if strays:
            raise EngineError(f"failures name services not in the plan: {', '.join(strays)}")
        for name, kind in (failures or {}).items():
            if kind not in _FAILURE_KINDS:
                raise EngineError(f"{name}: unknown failure {kind!r} (expected exit, fail or hang)")
        self._durations = durations
        self._failures: Mapping[str, FailureKind] = failures or {}
        self._fail_after: Mapping[str, float] = fail_after or {}
        self._default_duration = default_duration
        self._stop_seconds = stop_seconds
        self._exit_code = exit_code
        self.now = 0.0

        # (time, sequence, event, owner, epoch): events owned by a service instance are dropped
        # when that instance's epoch moved on (it hung, or it was stopped).
        self._pending: list[tuple[float, int, Event, str | None, int]] = []
        self._seq = 0
        self._epoch: dict[str, int] = {}
        self._ticks: set[float] = set()

        self._new_running: set[str] = set()
        self._old_running: set[str] = set()
        self._traffic: dict[str, Literal["new", "old"]] = {}
        for step in plan.services:
            if step.action == "keep" or step.has_old:
                self._old_running.add(step.name)
                self._traffic[step.name] = "old"
        for name in plan.remove:
            self._old_running.add(name)
            self._traffic[name] = "old"

        self._events: list[Event] = []
        self._actions: list[tuple[float, Action]] = []
        self._trace: list[Event | Action] = []
        self._engine_seconds = 0.0
        self._finished_at: float | None = None
        self._all_ready_at: float | None = None

        self._schedule(0.0, Begin(0.0))
        if abort_at is not None:
            self._schedule(abort_at, Abort("interrupted", abort_at))

    # -- driving -------------------------------------------------------------------------------

    @property
    def done(self) -> bool:
        """Whether the release has finished."""
        return self.release.finished

    def step(self) -> Event | None:
        """Deliver the next pending event, moving the clock to it; ``None`` when there is none."""
        while self._pending and not self.done:
            at, _, event, owner, epoch = heapq.heappop(self._pending)
            if isinstance(event, Tick):
                self._ticks.discard(at)
            if owner is not None and self._epoch.get(owner, 0) != epoch:
                continue
            self.now = max(self.now, at)
            self._deliver(event)
            return event
        return None

    def send(self, event: Event) -> list[Action]:
        """Deliver ``event`` now (its ``now`` moves the clock if it is later) and act on it."""
        self.now = max(self.now, event.now)
        return self._deliver(event)

    def hang(self, service: str) -> None:
        """Make the new instance of ``service`` silent: its pending ``Ready`` never comes."""
        self._epoch[service] = self._epoch.get(service, 0) + 1

    def run(self, until: float | None = None) -> SimulationResult:
        """Deliver events until the release finishes (or the clock would pass ``until``)."""
        while not self.done and self._pending:
            if until is not None and self._pending[0][0] > until:
                break
            self.step()
        return self.result()

    def result(self) -> SimulationResult:
        """The outcome so far, and what the world looks like now."""
        release = self.release
        return SimulationResult(
            outcome=release.outcome,
            reason=release.reason,
            failed_service=release.failed_service,
            finished_at=self._finished_at,
            all_ready_at=self._all_ready_at,
            actions=tuple(self._actions),
            events=tuple(self._events),
            trace=tuple(self._trace),
            world=self.world(),
            engine_seconds=self._engine_seconds,
        )

    def world(self) -> World:
        """What runs and what serves right now."""
        return World(
            new_running=frozenset(self._new_running),
            old_running=frozenset(self._old_running),
            traffic=dict(self._traffic),
        )

    # -- internals -----------------------------------------------------------------------------

    def _schedule(self, at: float, event: Event, owner: str | None = None) -> None:
        epoch = self._epoch.get(owner, 0) if owner is not None else 0
        heapq.heappush(self._pending, (at, self._seq, event, owner, epoch))
        self._seq += 1

    def _deliver(self, event: Event) -> list[Action]:
        now = self.now
        if isinstance(event, Exited):
            self._new_running.discard(event.service)
            self.hang(event.service)  # an exited instance says nothing more
        elif isinstance(event, Stopped):
            self._new_running.discard(event.service)
            if self._traffic.get(event.service) == "new":
                del self._traffic[event.service]
            self.hang(event.service)  # a stopped instance says nothing more
        release = self.release
        before = release.phase
        t0 = time.perf_counter()
        actions = release.handle(event)
        self._engine_seconds += time.perf_counter() - t0
        self._events.append(event)
        self._trace.append(event)
        if before in (ReleasePhase.PENDING, ReleasePhase.STARTING) and release.phase in (
            ReleasePhase.BAKING,
            ReleasePhase.SUCCEEDED,
        ):
            self._all_ready_at = now
        for action in actions:
            self._actions.append((now, action))
            self._trace.append(action)
            self._act(action, now)
        deadline = release.next_deadline()
        if deadline is not None:
            at = max(deadline, now)
            if at not in self._ticks:
                self._ticks.add(at)
                self._schedule(at, Tick(at))
        return actions

    def _act(self, action: Action, now: float) -> None:
        if isinstance(action, StartNew):
            self._start(action.service, now)
        elif isinstance(action, SwitchTraffic):
            self._traffic[action.service] = "new"
        elif isinstance(action, RevertTraffic):
            self._traffic[action.service] = "old"
        elif isinstance(action, StopNew):
            at = now + self._stop_seconds
            self._schedule(at, Stopped(action.service, at), action.service)
        elif isinstance(action, StopOld):
            self._old_running.discard(action.service)
            if self._traffic.get(action.service) == "old":
                del self._traffic[action.service]
        elif isinstance(action, Finish):
            self._finished_at = now

    def _start(self, name: str, now: float) -> None:
        self._new_running.add(name)
        self._schedule(now, Started(name, now), name)
        duration = self._durations.get(name, self._default_duration)
        kind = self._failures.get(name)
        if kind == "hang":
            return
        if kind is None:
            self._schedule(now + duration, Ready(name, now + duration), name)
            return
        fail_at = now + self._fail_after.get(name, duration)
        if fail_at > now + duration:
            self._schedule(now + duration, Ready(name, now + duration), name)
        failure: Event
        if kind == "exit":
            failure = Exited(name, self._exit_code, fail_at)
        else:
            failure = Failed(name, "health check failed", fail_at)
        self._schedule(fail_at, failure, name)


@dataclass(frozen=True)
class Behaviour:
    """How an imaginary service behaves once started on a :class:`SimulatedRuntime`.

    It is ready ``ready_after`` seconds after it starts. ``failure`` changes that: ``"exit"``
    (the process exits then, with ``exit_code``), ``"hang"`` (never ready), ``"unhealthy"``
    (ready, then its health check fails from ``fail_after`` seconds after the start),
    ``"crash"`` (ready, then exits ``fail_after`` seconds after the start). ``rss_mb`` is its
    resident memory at the start and ``leak_mb_per_min`` how fast that grows.
    """

    ready_after: float = 1.0
    failure: Literal["exit", "hang", "unhealthy", "crash"] | None = None
    fail_after: float = 0.0
    exit_code: int = 1
    rss_mb: float = 50.0
    leak_mb_per_min: float = 0.0


@dataclass
class _Instance:
    spec_service: str
    instance_id: str
    port: int
    started_at: float
    behaviour: Behaviour
    stopped: bool = False


class SimulatedRuntime:
    """A :class:`~airlock.runtimes.Runtime` whose instances are imaginary, on a virtual clock.

    ``behaviours`` says how each service's *new* instances behave (by service name; others get
    ``Behaviour()``); :meth:`adopt` puts an instance that runs already (a previous release) in
    place. The simulated world outlives a runner that is killed: a second runner (``resume``)
    given the same object sees what the first one left.
    """

    name = "simulated"

    def __init__(
        self, clock: VirtualClock, behaviours: Mapping[str, Behaviour] | None = None
    ) -> None:
        self.clock = clock
        self.behaviours: dict[str, Behaviour] = dict(behaviours or {})
        self.instances: dict[str, _Instance] = {}
        self.ports: dict[str, int] = {}
        self.traffic: dict[str, str] = {}  # service → instance id that gets its requests
        self.calls: list[tuple[str, str]] = []  # (operation, argument), in order
        self._next_port = 20000

    # -- inspecting the world ------------------------------------------------------------------

    def running(self) -> dict[str, str]:
        """Running instance id → service."""
        return {i.instance_id: i.spec_service for i in self.instances.values() if self._alive(i)}

    def adopt(self, service: str, instance_id: str, *, serving: bool = True) -> None:
        """An instance that already runs (and serves, by default), as a previous deploy left it."""
        self.instances[instance_id] = _Instance(
            service, instance_id, self._port(), self.clock.now() - 3600, Behaviour(ready_after=0)
        )
        if serving:
            self.traffic[service] = instance_id

    # -- the Runtime protocol ------------------------------------------------------------------

    @property
    def data_dir(self) -> str:
        return "/simulated/data"

    async def endpoint(self, service: str, port: int | None) -> Endpoint:
        self.calls.append(("endpoint", service))
        if service not in self.ports:
            self.ports[service] = port or self._port()
        return Endpoint("simulated.invalid", self.ports[service])

    async def endpoints(self) -> dict[str, Endpoint]:
        return {name: Endpoint("simulated.invalid", port) for name, port in self.ports.items()}

    async def start(self, spec: InstanceSpec) -> InstanceStatus:
        self.calls.append(("start", spec.instance_id))
        old = self.instances.get(spec.instance_id)
        if old is not None and self._alive(old):
            return self._status(old)
        behaviour = self.behaviours.get(spec.service, Behaviour())
        instance = _Instance(
            spec.service, spec.instance_id, self._port(), self.clock.now(), behaviour
        )
        self.instances[spec.instance_id] = instance
        return self._status(instance)

    async def probe(self, instance_id: str, path: str) -> ProbeResult:
        instance = self.instances.get(instance_id)
        if instance is None or not self._alive(instance):
            return ProbeResult(False, f"instance {instance_id} is not running", exited=True)
        age = self.clock.now() - instance.started_at
        behaviour = instance.behaviour
        if behaviour.failure == "hang" or age < behaviour.ready_after:
            return ProbeResult(False, f"GET {path} → 503: starting")
        if behaviour.failure == "unhealthy" and age >= behaviour.fail_after:
            return ProbeResult(False, f"GET {path} → 500: unhealthy")
        return ProbeResult(True, f"GET {path} → 200")

    async def fetch(self, instance_id: str, path: str, *, host: str | None = None) -> FetchResult:
        if instance_id not in self.running():
            return FetchResult(None, f"GET {path} → instance {instance_id} is not running")
        return FetchResult(404, f"GET {path} → 404")

    async def switch(self, service: str, instance_id: str) -> None:
        self.calls.append(("switch", instance_id))
        if instance_id not in self.running():
            raise RuntimeFailure(f"instance {instance_id} of {service!r} is not running")
        self.traffic[service] = instance_id

    async def stop(self, instance_id: str, *, force: bool = False) -> None:
        self.calls.append(("stop", instance_id))
        instance = self.instances.get(instance_id)
        if instance is None:
            return
        service = instance.spec_service
        if self.traffic.get(service) == instance_id:
            if not force:
                raise RuntimeFailure(
                    f"instance {instance_id} serves service {service!r}; switch it first"
                )
            del self.traffic[service]
        instance.stopped = True
        del self.instances[instance_id]

    async def status(self) -> list[InstanceStatus]:
        return [self._status(i) for i in self.instances.values()]

    async def logs(self, service: str, lines: int) -> list[str]:
        return []

    async def log_files(self) -> dict[str, Path]:
        return {}

    async def check_hosts(self, checks: Sequence[HostCheck]) -> list[CheckResult]:
        """A simulation has no hosts to check: preflight runs on real runtimes only."""
        raise UsageError("the simulated runtime has no hosts: preflight needs a real runtime")

    async def shutdown(self) -> bool:
        was = bool(self.instances)
        self.instances.clear()
        self.traffic.clear()
        return was

    # -- internals -----------------------------------------------------------------------------

    def _port(self) -> int:
        self._next_port += 1
        return self._next_port

    def _alive(self, instance: _Instance) -> bool:
        if instance.stopped:
            return False
        behaviour = instance.behaviour
        age = self.clock.now() - instance.started_at
        if behaviour.failure == "exit":
            return age < behaviour.ready_after
        if behaviour.failure == "crash":
            return age < behaviour.fail_after
        return True

    def _status(self, instance: _Instance) -> InstanceStatus:
        alive = self._alive(instance)
        behaviour = instance.behaviour
        minutes = max(self.clock.now() - instance.started_at, 0.0) / 60
        rss = (behaviour.rss_mb + behaviour.leak_mb_per_min * minutes) * 2**20
        return InstanceStatus(
            instance_id=instance.instance_id,
            service=instance.spec_service,
            pid=None,
            port=instance.port,
            running=alive,
            exits=0 if alive else 1,
            last_exit_code=None if alive else behaviour.exit_code,
            serving=self.traffic.get(instance.spec_service) == instance.instance_id,
            rss_bytes=int(rss) if alive else None,
            where="simulated",
        )


def simulate(
    plan: EnginePlan,
    durations: Mapping[str, float],
    *,
    failures: Mapping[str, FailureKind] | None = None,
    fail_after: Mapping[str, float] | None = None,
    stop_seconds: float = 0.0,
    abort_at: float | None = None,
    default_duration: float = 1.0,
) -> SimulationResult:
    """Run a whole release on an :class:`EngineSimulation` and return how it went."""
    runtime = EngineSimulation(
        plan,
        durations,
        failures=failures,
        fail_after=fail_after,
        stop_seconds=stop_seconds,
        abort_at=abort_at,
        default_duration=default_duration,
    )
    return runtime.run()


# --------------------------------------------------------------------------------------------
# Bounds to measure a schedule against


def _topological(plan: EnginePlan) -> list[int]:
    """Service indexes, dependencies first (the plan is checked by building a Release)."""
    Release(plan)  # rejects unknown dependencies and cycles
    index = {s.name: i for i, s in enumerate(plan.services)}
    return toposort([[index[d] for d in s.depends_on] for s in plan.services])


def critical_path(
    plan: EnginePlan, durations: Mapping[str, float], *, default_duration: float = 1.0
) -> float:
    """The longest chain of start durations: no schedule can have every service ready sooner.

    Kept services count as ready at time 0, so a chain through one is cut there.
    """
    steps = plan.services
    index = {s.name: i for i, s in enumerate(steps)}
    ready_at = [0.0] * len(steps)
    for i in _topological(plan):
        step = steps[i]
        if step.action == "start":
            after = max((ready_at[index[d]] for d in step.depends_on), default=0.0)
            ready_at[i] = after + durations.get(step.name, default_duration)
    return max(ready_at, default=0.0)


def waves(plan: EnginePlan) -> list[list[str]]:
    """The services grouped by dependency depth: wave 0 depends on nothing, wave k on wave < k.

    Services keep their plan order within a wave.
    """
    Release(plan)  # rejects unknown dependencies and cycles
    steps = plan.services
    index = {s.name: i for i, s in enumerate(steps)}
    depth = depths([[index[d] for d in s.depends_on] for s in steps])
    grouped: list[list[str]] = [[] for _ in range(max(depth, default=-1) + 1)]
    for i, step in enumerate(steps):
        grouped[depth[i]].append(step.name)
    return grouped


def waves_makespan(
    plan: EnginePlan, durations: Mapping[str, float], *, default_duration: float = 1.0
) -> float:
    """How long starting the plan wave by wave would take (each wave waits for the previous).

    Within a wave, at most ``plan.max_parallel`` services start at once, longest first.
    """
    kind = {s.name: s.action for s in plan.services}
    limit = plan.max_parallel
    total = 0.0
    for wave in waves(plan):
        times = sorted(
            (durations.get(name, default_duration) for name in wave if kind[name] == "start"),
            reverse=True,
        )
        if not times:
            continue
        if limit is None or limit >= len(times):
            total += times[0]
            continue
        slots = [0.0] * limit
        for t in times:
            heapq.heapreplace(slots, slots[0] + t)
        total += max(slots)
    return total
