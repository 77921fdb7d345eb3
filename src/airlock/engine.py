"""The release state machine.

Everything that affects the release state machine lives here: which service starts when, when
traffic moves to a new version, what counts as a failure, and in which order a failed release is
undone. Nothing else in Airlock decides any of this.

This file does not know what a process is. It performs no IO, never sleeps, reads no clock and
starts no threads. A runner tells it what happened by calling :meth:`Release.handle` with an
event and carries out the actions it gets back, in order. Time only arrives inside events, as
``now`` (seconds on any monotonic clock); when something is timed (a service that must become
ready, the end of the bake), :meth:`Release.next_deadline` says when the runner must send a
:class:`Tick` at the latest. Because of this the engine is deterministic: the same plan and the
same events always give the same actions, so a journal of events is enough to rebuild the state
of an interrupted release (:func:`replay`), and :mod:`airlock.simulate` can drive it with a
virtual clock.

Life of a release::

    PENDING --Begin--> STARTING --every new version ready--> BAKING --bake over--> SUCCEEDED
       |                  |                                    |
       |                  +--failure or Abort--+---------------+
       |                                       v
       +--Abort--> ROLLED_BACK <--all stopped-- ROLLING_BACK

Life of a service::

    KEPT        unchanged by this release: ready from the start, never touched

    WAITING --StartNew--> STARTING --Ready--> READY           (SwitchTraffic right after Ready)
                             |                  |
                             +---- failure -----+--> FAILED   (only the service that failed)
                             |                  |      |
                             +---- rollback ----+------+--> STOPPING --Stopped--> STOPPED
                                                                   (FAILED again for the culprit)

Scheduling is eager: a service starts the moment every service it depends on is READY or KEPT,
not when its whole "level" is. When ``max_parallel`` limits how many services may be STARTING at
once, the eligible service with the longest chain of work still behind it (by
``expected_seconds``) goes first. Services that were never started stay WAITING through a
rollback: there is nothing of theirs to stop.

A rollback undoes every service that was started, dependents before their dependencies: traffic
is sent back to the old version (``RevertTraffic``) when the service had one and had been
switched, then the new instance is stopped (``StopNew``). ``StopNew`` is also sent for an instance
that has already exited; the runner reports ``Stopped`` for it at once.

Cost: building a :class:`Release` is O(N + E); each event costs O(log N) plus the work on the
services it concerns (a ``Ready`` visits the dependents of that service once). Nothing ever scans
all services per event, so a whole release is O((N + E) log N).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from enum import StrEnum
from typing import Any, Literal, TypeAlias

from airlock.errors import AirlockError
from airlock.graph import CycleError, toposort

__all__ = [
    "Abort",
    "Action",
    "Begin",
    "EngineError",
    "EnginePlan",
    "Event",
    "Exited",
    "Failed",
    "Finish",
    "Ready",
    "Release",
    "ReleasePhase",
    "RevertTraffic",
    "ServicePhase",
    "ServiceStep",
    "StartNew",
    "Started",
    "StopNew",
    "StopOld",
    "Stopped",
    "SwitchTraffic",
    "Tick",
    "event_from_dict",
    "event_to_dict",
    "replay",
    "replay_owed",
]


class EngineError(AirlockError):
    """The plan is invalid, or an event makes no sense in the current state of the release."""


class ServicePhase(StrEnum):
    """Where one service of the plan stands."""

    WAITING = "waiting"
    """Not started yet (some dependency is not ready, or no slot is free)."""
    STARTING = "starting"
    """``StartNew`` was issued; the new version is not ready yet."""
    READY = "ready"
    """The new version is ready and serves the traffic."""
    STOPPING = "stopping"
    """Rolling back: ``StopNew`` was issued, ``Stopped`` has not arrived yet."""
    STOPPED = "stopped"
    """Rolled back: the new instance is stopped."""
    KEPT = "kept"
    """Unchanged by this release; counts as ready from the start."""
    FAILED = "failed"
    """The service whose failure made the release roll back."""


class ReleasePhase(StrEnum):
    """Where the release as a whole stands."""

    PENDING = "pending"
    STARTING = "starting"
    BAKING = "baking"
    SUCCEEDED = "succeeded"
    ROLLING_BACK = "rolling_back"
    ROLLED_BACK = "rolled_back"


# --------------------------------------------------------------------------------------------
# The plan


@dataclass(frozen=True, slots=True)
class ServiceStep:
    """One service of the release and what to do with it.

    ``action`` is ``"start"`` to deploy a new version, or ``"keep"`` for a service this release
    does not change: it already serves and satisfies its dependents at once. ``ready_timeout`` is
    counted from ``StartNew``. ``has_old`` says an old version serves now, so a rollback can send
    the traffic back to it. ``expected_seconds`` is only used to choose which service starts
    first when ``max_parallel`` leaves a choice.
    """

    name: str
    depends_on: tuple[str, ...]
    action: Literal["start", "keep"]
    ready_timeout: float = 30.0
    has_old: bool = False
    expected_seconds: float = 1.0


@dataclass(frozen=True, slots=True)
class EnginePlan:
    """Everything the engine needs to know about a release.

    ``max_parallel`` caps the number of services STARTING at once (``None``: no cap).
    ``remove`` names services that were deployed before and are absent now: their old version is
    stopped after a successful bake.
    """

    services: tuple[ServiceStep, ...]
    bake_seconds: float = 0.0
    max_parallel: int | None = None
    remove: tuple[str, ...] = ()


# --------------------------------------------------------------------------------------------
# Events: what happened (runner -> engine). Every event carries the time it happened at.


@dataclass(frozen=True, slots=True)
class Begin:
    """Start the release."""

    now: float


@dataclass(frozen=True, slots=True)
class Started:
    """The new instance of ``service`` is up (informational: it is not ready yet)."""

    service: str
    now: float


@dataclass(frozen=True, slots=True)
class Ready:
    """The new instance of ``service`` passed its readiness check."""

    service: str
    now: float


@dataclass(frozen=True, slots=True)
class Failed:
    """The new instance of ``service`` is unhealthy.

    ``reason`` becomes the release's reason, prefixed with ``"service: "`` unless it already
    starts with the service's name.
    """

    service: str
    reason: str
    now: float


@dataclass(frozen=True, slots=True)
class Exited:
    """The new instance of ``service`` exited (``code`` is ``None`` when unknown)."""

    service: str
    code: int | None
    now: float


@dataclass(frozen=True, slots=True)
class Stopped:
    """The new instance of ``service`` is stopped, as asked by ``StopNew``."""

    service: str
    now: float


@dataclass(frozen=True, slots=True)
class Tick:
    """Time passes; sent at :meth:`Release.next_deadline` (sending more often is harmless)."""

    now: float


@dataclass(frozen=True, slots=True)
class Abort:
    """Give up the release (the user interrupted it, or the runner cannot go on)."""

    reason: str
    now: float


Event: TypeAlias = Begin | Started | Ready | Failed | Exited | Stopped | Tick | Abort


# --------------------------------------------------------------------------------------------
# Actions: what to do (engine -> runner), to be carried out in the order given.


@dataclass(frozen=True, slots=True)
class StartNew:
    """Start the new version of ``service`` next to the old one; it gets no traffic yet."""

    service: str


@dataclass(frozen=True, slots=True)
class SwitchTraffic:
    """Send the traffic of ``service`` to its new version."""

    service: str


@dataclass(frozen=True, slots=True)
class RevertTraffic:
    """Send the traffic of ``service`` back to its old version."""

    service: str


@dataclass(frozen=True, slots=True)
class StopNew:
    """Stop the new version of ``service``; answer with ``Stopped``."""

    service: str


@dataclass(frozen=True, slots=True)
class StopOld:
    """Stop the old version of ``service``; no answer is expected."""

    service: str


@dataclass(frozen=True, slots=True)
class Finish:
    """The release is over. Always the last action, issued exactly once."""

    outcome: Literal["succeeded", "rolled_back"]
    reason: str | None
    failed_service: str | None


Action: TypeAlias = StartNew | SwitchTraffic | RevertTraffic | StopNew | StopOld | Finish


# --------------------------------------------------------------------------------------------
# The rules

_P = ReleasePhase
_S = ServicePhase

#: The phases a release may move to from each phase.
RELEASE_TRANSITIONS: dict[ReleasePhase, frozenset[ReleasePhase]] = {
    _P.PENDING: frozenset({_P.STARTING, _P.ROLLED_BACK}),
    _P.STARTING: frozenset({_P.BAKING, _P.ROLLING_BACK}),
    _P.BAKING: frozenset({_P.SUCCEEDED, _P.ROLLING_BACK}),
    _P.ROLLING_BACK: frozenset({_P.ROLLED_BACK}),
    _P.SUCCEEDED: frozenset(),
    _P.ROLLED_BACK: frozenset(),
}

#: The phases a service may move to from each phase.
SERVICE_TRANSITIONS: dict[ServicePhase, frozenset[ServicePhase]] = {
    _S.WAITING: frozenset({_S.STARTING}),
    _S.STARTING: frozenset({_S.READY, _S.FAILED, _S.STOPPING}),
    _S.READY: frozenset({_S.FAILED, _S.STOPPING}),
    _S.FAILED: frozenset({_S.STOPPING}),
    _S.STOPPING: frozenset({_S.STOPPED, _S.FAILED}),
    _S.STOPPED: frozenset(),
    _S.KEPT: frozenset(),
}

HANDLE: Literal["handle"] = "handle"
IGNORE: Literal["ignore"] = "ignore"

#: What each release phase does with each kind of event: handle it, or ignore it (no actions).
#: An event missing from a phase's row is an error (EngineError).
EVENT_RULES: dict[ReleasePhase, dict[type[Event], Literal["handle", "ignore"]]] = {
    _P.PENDING: {Begin: HANDLE, Abort: HANDLE},
    _P.STARTING: {
        Started: HANDLE,
        Ready: HANDLE,
        Failed: HANDLE,
        Exited: HANDLE,
        Tick: HANDLE,
        Abort: HANDLE,
    },
    _P.BAKING: {Failed: HANDLE, Exited: HANDLE, Tick: HANDLE, Abort: HANDLE},
    # Late news from services being stopped is expected while rolling back.
    _P.ROLLING_BACK: {
        Stopped: HANDLE,
        Started: IGNORE,
        Ready: IGNORE,
        Failed: IGNORE,
        Exited: IGNORE,
        Tick: IGNORE,
        Abort: IGNORE,
    },
    _P.SUCCEEDED: {Tick: IGNORE},
    _P.ROLLED_BACK: {Tick: IGNORE},
}

#: For the events handled about one service: the service phases in which they make sense.
SERVICE_EVENT_PHASES: dict[type[Event], frozenset[ServicePhase]] = {
    Started: frozenset({_S.STARTING}),
    Ready: frozenset({_S.STARTING}),
    Failed: frozenset({_S.STARTING, _S.READY}),
    Exited: frozenset({_S.STARTING, _S.READY}),
    Stopped: frozenset({_S.STOPPING}),
}

_SERVICE_EVENTS = (Started, Ready, Failed, Exited, Stopped)


def _describe(event: Event) -> str:
    service = getattr(event, "service", None)
    name = type(event).__name__
    return f"{name}({service})" if service is not None else name


def _seconds(value: float) -> str:
    return f"{value:g}s"


# --------------------------------------------------------------------------------------------
# The machine


class Release:
    """The state of one release; feed it events with :meth:`handle`.

    The plan is checked on construction: duplicate names, unknown dependencies and dependency
    cycles raise :class:`EngineError` naming the services involved.
    """

    def __init__(self, plan: EnginePlan) -> None:
        self.plan = plan
        steps = plan.services
        n = len(steps)
        self._steps = steps
        self._names = [s.name for s in steps]
        self._index: dict[str, int] = {}
        for i, step in enumerate(steps):
            if not isinstance(step.name, str) or not step.name:
                raise EngineError(f"service #{i + 1} has no name")
            if step.name in self._index:
                raise EngineError(f"service {step.name!r} is listed twice")
            if step.action not in ("start", "keep"):
                raise EngineError(
                    f"service {step.name!r}: unknown action {step.action!r} "
                    "(expected 'start' or 'keep')"
                )
            if not step.ready_timeout > 0:
                raise EngineError(f"service {step.name!r}: ready_timeout must be positive")
            if not step.expected_seconds >= 0:
                raise EngineError(f"service {step.name!r}: expected_seconds must not be negative")
            self._index[step.name] = i
        if not plan.bake_seconds >= 0:
            raise EngineError("bake_seconds must not be negative")
        if plan.max_parallel is not None and plan.max_parallel < 1:
            raise EngineError("max_parallel must be at least 1")
        self._remove = tuple(dict.fromkeys(plan.remove))
        both = [r for r in self._remove if r in self._index]
        if both:
            raise EngineError(f"services both deployed and removed: {', '.join(both)}")

        unknown: list[str] = []
        deps: list[tuple[int, ...]] = []
        for step in steps:
            resolved: list[int] = []
            for dep in dict.fromkeys(step.depends_on):
                j = self._index.get(dep)
                if j is None:
                    unknown.append(f"{step.name} → {dep}")
                else:
                    resolved.append(j)
            deps.append(tuple(resolved))
        if unknown:
            raise EngineError(f"unknown dependencies: {', '.join(unknown)}")
        self._deps = deps

        dependents: list[list[int]] = [[] for _ in range(n)]
        for i, ds in enumerate(deps):
            for j in ds:
                dependents[j].append(i)
        self._topo = self._toposort(deps)
        self._topo_pos = [0] * n
        for pos, i in enumerate(self._topo):
            self._topo_pos[i] = pos

        # Only "start" services make anyone wait: a kept service is ready from the start, and a
        # kept service's own dependencies delay nobody.
        is_start = [s.action == "start" for s in steps]
        self._is_start = is_start
        self._start_dependents: list[list[int]] = [
            [d for d in dependents[j] if is_start[d]] if is_start[j] else [] for j in range(n)
        ]
        self._waiting_on = [
            sum(1 for j in ds if is_start[j]) if is_start[i] else 0 for i, ds in enumerate(deps)
        ]
        # Priority: the expected seconds of the longest chain of starts from a service to the end.
        priority = [0.0] * n
        for i in reversed(self._topo):
            if is_start[i]:
                tail = max((priority[d] for d in self._start_dependents[i]), default=0.0)
                priority[i] = steps[i].expected_seconds + tail
        self._priority = priority

        self._phases = [_S.WAITING if start else _S.KEPT for start in is_start]
        self._start_count = sum(is_start)
        self._ready_count = 0
        self._starting = 0
        self._switched = [False] * n
        self._queue: list[tuple[float, int, int]] = []  # (-priority, topo position, service)
        self._deadlines: list[tuple[float, int, int]] = []  # (deadline, topo position, service)
        self._order: list[int] = []
        self._stopping = 0
        self._phase = _P.PENDING
        self._bake_deadline: float | None = None
        self._outcome: Literal["succeeded", "rolled_back"] | None = None
        self._reason: str | None = None
        self._failed: int | None = None

    # -- plan checks ---------------------------------------------------------------------------

    def _toposort(self, deps: list[tuple[int, ...]]) -> list[int]:
        """Dependencies first, in plan order where free; a cycle is named."""
        try:
            return toposort(deps)
        except CycleError as exc:
            raise EngineError(
                "dependency cycle: " + " → ".join(self._names[j] for j in exc.cycle),
                hint="each service listed depends on the next one",
            ) from None

    # -- public state --------------------------------------------------------------------------

    @property
    def phase(self) -> ReleasePhase:
        """The phase of the release."""
        return self._phase

    @property
    def outcome(self) -> Literal["succeeded", "rolled_back"] | None:
        """How the release ended, or ``None`` while it runs."""
        return self._outcome

    @property
    def reason(self) -> str | None:
        """Why the release rolled back (``None`` unless it did)."""
        return self._reason

    @property
    def failed_service(self) -> str | None:
        """The service whose failure caused the rollback, if a service did."""
        return None if self._failed is None else self._names[self._failed]

    @property
    def order(self) -> list[str]:
        """The services in the order ``StartNew`` was issued for them."""
        return [self._names[i] for i in self._order]

    @property
    def finished(self) -> bool:
        """Whether ``Finish`` has been issued."""
        return self._outcome is not None

    def service_phase(self, name: str) -> ServicePhase:
        """The phase of one service (EngineError for a name that is not in the plan)."""
        i = self._index.get(name)
        if i is None:
            raise EngineError(f"unknown service {name!r}")
        return self._phases[i]

    def service_phases(self) -> dict[str, ServicePhase]:
        """The phase of every service, in plan order."""
        return dict(zip(self._names, self._phases, strict=True))

    def next_deadline(self) -> float | None:
        """When the runner must send a ``Tick`` next; ``None`` when nothing is timed."""
        if self._phase is _P.STARTING:
            deadlines = self._deadlines
            phases = self._phases
            while deadlines and phases[deadlines[0][2]] is not _S.STARTING:
                heapq.heappop(deadlines)
            return deadlines[0][0] if deadlines else None
        if self._phase is _P.BAKING:
            return self._bake_deadline
        return None

    # -- events --------------------------------------------------------------------------------

    def handle(self, event: Event) -> list[Action]:
        """Apply one event and return the actions to carry out, in order."""
        rule = EVENT_RULES[self._phase].get(type(event))
        if rule is None:
            raise EngineError(
                f"{_describe(event)} is not valid while the release is {self._phase.name}"
            )
        i = -1
        if isinstance(event, _SERVICE_EVENTS):
            i = self._index.get(event.service, -1)
            if i < 0:
                raise EngineError(f"{_describe(event)}: unknown service {event.service!r}")
        if rule is IGNORE:
            return []
        if i >= 0:
            allowed = SERVICE_EVENT_PHASES[type(event)]
            if self._phases[i] not in allowed:
                raise EngineError(
                    f"{_describe(event)} is not valid for a service that is "
                    f"{self._phases[i].name} (release {self._phase.name})"
                )
        out: list[Action] = []
        if isinstance(event, Ready):
            self._on_ready(i, event.now, out)
        elif isinstance(event, Started):
            pass  # the process is up; it stays STARTING until Ready
        elif isinstance(event, Tick):
            self._on_tick(event.now, out)
        elif isinstance(event, Stopped):
            self._on_stopped(i, out)
        elif isinstance(event, Exited):
            starting = self._phases[i] is _S.STARTING
            when = "before becoming ready" if starting else "after becoming ready"
            how = "exited" if event.code is None else f"exited with code {event.code}"
            self._fail(i, f"{event.service} {how} {when}", out)
        elif isinstance(event, Failed):
            named = event.reason.startswith((f"{event.service}:", f"{event.service} "))
            self._fail(i, event.reason if named else f"{event.service}: {event.reason}", out)
        elif isinstance(event, Begin):
            self._on_begin(event.now, out)
        elif isinstance(event, Abort):
            self._on_abort(event.reason, out)
        return out

    def _on_begin(self, now: float, out: list[Action]) -> None:
        self._set_phase(_P.STARTING)
        queue = self._queue
        for i in self._topo:
            if self._is_start[i] and self._waiting_on[i] == 0:
                queue.append((-self._priority[i], self._topo_pos[i], i))
        heapq.heapify(queue)
        self._fill(now, out)
        if self._ready_count == self._start_count:
            self._bake(now, out)

    def _on_ready(self, i: int, now: float, out: list[Action]) -> None:
        self._move(i, _S.READY)
        self._starting -= 1
        self._ready_count += 1
        self._switched[i] = True
        out.append(SwitchTraffic(self._names[i]))
        waiting_on = self._waiting_on
        for d in self._start_dependents[i]:
            waiting_on[d] -= 1
            if waiting_on[d] == 0:
                heapq.heappush(self._queue, (-self._priority[d], self._topo_pos[d], d))
        self._fill(now, out)
        if self._ready_count == self._start_count:
            self._bake(now, out)

    def _on_tick(self, now: float, out: list[Action]) -> None:
        if self._phase is _P.STARTING:
            deadlines = self._deadlines
            while deadlines and deadlines[0][0] <= now:
                _, _, i = heapq.heappop(deadlines)
                if self._phases[i] is _S.STARTING:
                    timeout = _seconds(self._steps[i].ready_timeout)
                    self._fail(i, f"{self._names[i]}: not ready after {timeout}", out)
                    return
        elif self._bake_deadline is not None and now >= self._bake_deadline:
            self._succeed(out)

    def _on_abort(self, reason: str, out: list[Action]) -> None:
        self._reason = f"aborted: {reason}"
        if self._phase is _P.PENDING:
            self._finish("rolled_back", out)
        else:
            self._rollback(out)

    def _on_stopped(self, i: int, out: list[Action]) -> None:
        self._move(i, _S.FAILED if i == self._failed else _S.STOPPED)
        self._stopping -= 1
        if self._stopping == 0:
            self._finish("rolled_back", out)

    # -- moves ---------------------------------------------------------------------------------

    def _fill(self, now: float, out: list[Action]) -> None:
        """Start queued services while slots are free, the most urgent first."""
        queue = self._queue
        limit = self.plan.max_parallel
        while queue and (limit is None or self._starting < limit):
            _, pos, i = heapq.heappop(queue)
            self._move(i, _S.STARTING)
            self._starting += 1
            self._order.append(i)
            heapq.heappush(self._deadlines, (now + self._steps[i].ready_timeout, pos, i))
            out.append(StartNew(self._names[i]))

    def _bake(self, now: float, out: list[Action]) -> None:
        self._set_phase(_P.BAKING)
        self._bake_deadline = now + self.plan.bake_seconds
        if self.plan.bake_seconds <= 0:
            self._succeed(out)

    def _succeed(self, out: list[Action]) -> None:
        self._set_phase(_P.SUCCEEDED)
        for i in sorted(self._order, key=self._topo_pos.__getitem__, reverse=True):
            if self._steps[i].has_old:
                out.append(StopOld(self._names[i]))
        out.extend(StopOld(name) for name in self._remove)
        self._finish("succeeded", out)

    def _fail(self, i: int, reason: str, out: list[Action]) -> None:
        self._move(i, _S.FAILED)
        self._failed = i
        self._reason = reason
        self._rollback(out)

    def _rollback(self, out: list[Action]) -> None:
        """Undo every started service, dependents first."""
        self._set_phase(_P.ROLLING_BACK)
        self._queue.clear()
        self._deadlines.clear()
        self._bake_deadline = None
        for i in sorted(self._order, key=self._topo_pos.__getitem__, reverse=True):
            name = self._names[i]
            if self._switched[i] and self._steps[i].has_old:
                out.append(RevertTraffic(name))
            out.append(StopNew(name))
            self._move(i, _S.STOPPING)
            self._stopping += 1
        self._starting = 0
        if self._stopping == 0:
            self._finish("rolled_back", out)

    def _finish(self, outcome: Literal["succeeded", "rolled_back"], out: list[Action]) -> None:
        if outcome == "rolled_back":
            self._set_phase(_P.ROLLED_BACK)
        self._outcome = outcome
        out.append(Finish(outcome, self._reason, self.failed_service))

    def _set_phase(self, phase: ReleasePhase) -> None:
        if phase not in RELEASE_TRANSITIONS[self._phase]:  # pragma: no cover - a bug here
            raise EngineError(f"internal error: release cannot go from {self._phase} to {phase}")
        self._phase = phase

    def _move(self, i: int, phase: ServicePhase) -> None:
        current = self._phases[i]
        if phase not in SERVICE_TRANSITIONS[current]:  # pragma: no cover - a bug here
            raise EngineError(
                f"internal error: {self._names[i]} cannot go from {current} to {phase}"
            )
        self._phases[i] = phase

    def __repr__(self) -> str:
        return (
            f"<Release {self._phase.value}: {self._ready_count}/{self._start_count} ready, "
            f"{self._starting} starting>"
        )


def replay(plan: EnginePlan, events: Iterable[Event]) -> Release:
    """Rebuild a release from the events of its journal; the actions they gave are discarded."""
    return replay_owed(plan, events)[0]


def replay_owed(plan: EnginePlan, events: Iterable[Event]) -> tuple[Release, list[Action]]:
    """Rebuild a release from the events of its journal, with the actions it may still owe.

    A runner journals an event, then carries out every action the event gave before it journals
    the next one. So after a crash only the actions of the *last* event can be undone or half
    done; they are returned, for a resumed runner to carry out again (switching and stopping are
    idempotent). Those of earlier events were all carried out.
    """
    release = Release(plan)
    owed: list[Action] = []
    for event in events:
        owed = release.handle(event)
    return release, owed


# --------------------------------------------------------------------------------------------
# Journal encoding

_EVENT_TYPES: dict[str, type[Event]] = {
    "begin": Begin,
    "started": Started,
    "ready": Ready,
    "failed": Failed,
    "exited": Exited,
    "stopped": Stopped,
    "tick": Tick,
    "abort": Abort,
}
_EVENT_NAMES: dict[type[Event], str] = {cls: name for name, cls in _EVENT_TYPES.items()}


def event_to_dict(event: Event) -> dict[str, object]:
    """Encode an event as a JSON-ready dict: ``{"type": "ready", "service": ..., "now": ...}``."""
    data: dict[str, object] = {"type": _EVENT_NAMES[type(event)]}
    for f in fields(event):
        data[f.name] = getattr(event, f.name)
    return data


def event_from_dict(data: Mapping[str, object]) -> Event:
    """Decode what :func:`event_to_dict` made; a malformed dict raises :class:`EngineError`."""
    kind = data.get("type")
    cls = _EVENT_TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise EngineError(f"unknown event type {kind!r}")
    names = {f.name for f in fields(cls)}
    extra = sorted(set(data) - names - {"type"})
    if extra:
        raise EngineError(f"{kind} event has unexpected fields: {', '.join(extra)}")
    kwargs: dict[str, Any] = {}
    for name in names:
        if name not in data:
            raise EngineError(f"{kind} event is missing {name!r}")
        value = data[name]
        if name == "now":
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise EngineError(f"{kind} event: 'now' must be a number, not {value!r}")
            if not math.isfinite(value):
                raise EngineError(f"{kind} event: 'now' must be finite")
            value = float(value)
        elif name == "code":
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise EngineError(f"{kind} event: 'code' must be an integer or null")
        elif not isinstance(value, str):
            raise EngineError(f"{kind} event: {name!r} must be a string, not {value!r}")
        kwargs[name] = value
    event: Event = cls(**kwargs)
    return event
