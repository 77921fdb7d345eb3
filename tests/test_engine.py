"""Tests of the release state machine (airlock.engine) and its simulator (airlock.simulate)."""

from __future__ import annotations

import json
import random
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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
    ServicePhase,
    ServiceStep,
    Started,
    StartNew,
    StopNew,
    StopOld,
    Stopped,
    SwitchTraffic,
    Tick,
    event_from_dict,
    event_to_dict,
    replay,
)
from airlock.errors import AirlockError
from airlock.simulate import (
    EngineSimulation,
    SimulationResult,
    critical_path,
    simulate,
    waves,
    waves_makespan,
)

# --------------------------------------------------------------------------------------------
# Helpers


def start(name: str, *deps: str, timeout: float = 30.0, old: bool = True) -> ServiceStep:
    return ServiceStep(name, deps, "start", ready_timeout=timeout, has_old=old)


def keep(name: str, *deps: str) -> ServiceStep:
    return ServiceStep(name, deps, "keep")


def plan_of(*steps: ServiceStep, **kwargs: object) -> EnginePlan:
    return EnginePlan(services=steps, **kwargs)  # type: ignore[arg-type]


CHAIN = (start("db-proxy"), start("api", "db-proxy"), start("web", "api"))
DIAMOND = (
    start("top"),
    start("left", "top"),
    start("right", "top"),
    start("bottom", "left", "right"),
)
PHOENIX = (
    start("account"),
    start("audit"),
    start("payment", "account", "audit"),
    start("transaction", "account", "audit", old=False),
    start("notification", "payment", "transaction"),
)
PHOENIX_DURATIONS = {"account": 2, "audit": 1, "payment": 3, "transaction": 1, "notification": 1}


ServiceAction = StartNew | SwitchTraffic | RevertTraffic | StopNew | StopOld
EVENT_TYPES = (Begin, Started, Ready, Failed, Exited, Stopped, Tick, Abort)


def names(actions: Sequence[Action], kind: type[ServiceAction]) -> list[str]:
    return [a.service for a in actions if isinstance(a, kind)]


def action_times(result: SimulationResult, kind: type[ServiceAction]) -> dict[str, float]:
    return {a.service: t for t, a in result.actions if isinstance(a, kind)}


def depends(plan: EnginePlan) -> dict[str, tuple[str, ...]]:
    return {s.name: s.depends_on for s in plan.services}


# --------------------------------------------------------------------------------------------
# Invariants


def check_trace(plan: EnginePlan, result: SimulationResult) -> None:
    """Check the order of everything that happened, whatever the outcome."""
    steps = {s.name: s for s in plan.services}
    kept = {s.name for s in plan.services if s.action == "keep"}
    ready_seen: set[str] = set()
    started: list[str] = []
    switched: set[str] = set()
    stopping: list[str] = []
    reverted: list[str] = []
    rollback_log: list[RevertTraffic | StopNew] = []
    finishes = 0
    actions = [item for item in result.trace if not isinstance(item, EVENT_TYPES)]
    assert actions, "a simulated release always issues actions"
    for item in result.trace:
        if isinstance(item, Ready):
            ready_seen.add(item.service)
        elif isinstance(item, StartNew):
            assert not rollback_log, f"{item} after the rollback began"
            assert item.service not in started, f"{item.service} started twice"
            assert steps[item.service].action == "start"
            for dep in steps[item.service].depends_on:
                assert dep in kept or dep in ready_seen, f"{item.service} started before {dep}"
            started.append(item.service)
            limit = plan.max_parallel
            assert limit is None or len(started) - len(switched) <= limit
        elif isinstance(item, SwitchTraffic):
            assert item.service in ready_seen, f"traffic switched to {item.service} before Ready"
            assert not rollback_log
            switched.add(item.service)
        elif isinstance(item, RevertTraffic):
            assert item.service in switched and steps[item.service].has_old
            assert item.service not in stopping, f"{item.service} reverted after StopNew"
            reverted.append(item.service)
            rollback_log.append(item)
        elif isinstance(item, StopNew):
            assert item.service in started and item.service not in stopping
            stopping.append(item.service)
            rollback_log.append(item)
        elif isinstance(item, Finish):
            finishes += 1
    assert finishes == 1, "Finish must be issued exactly once"
    assert isinstance(actions[-1], Finish), "Finish must be the last action"
    if result.outcome == "rolled_back":
        assert sorted(stopping) == sorted(started), "every started service is stopped"
        assert sorted(reverted) == sorted(s for s in switched if steps[s].has_old)
        # Dependents are undone entirely before the services they depend on.
        first: dict[str, int] = {}
        last: dict[str, int] = {}
        for pos, action in enumerate(rollback_log):
            first.setdefault(action.service, pos)
            last[action.service] = pos
        for service in last:
            for dep in steps[service].depends_on:
                if dep in first:
                    assert last[service] < first[dep], f"{dep} undone before its user {service}"
    else:
        assert not rollback_log


def check_rolled_back(plan: EnginePlan, result: SimulationResult) -> None:
    """A rolled back release leaves the world as it found it."""
    assert result.outcome == "rolled_back"
    check_trace(plan, result)
    world = result.world
    assert not world.new_running, f"new instances left running: {sorted(world.new_running)}"
    for step in plan.services:
        if step.action == "keep" or step.has_old:
            assert world.traffic.get(step.name) == "old", step.name
            assert step.name in world.old_running
        else:
            assert step.name not in world.traffic
    for name in plan.remove:
        assert world.traffic.get(name) == "old" and name in world.old_running


def check_succeeded(plan: EnginePlan, result: SimulationResult) -> None:
    """A successful release serves every new version and stops what it replaced."""
    assert result.outcome == "succeeded", result.reason
    assert result.reason is None and result.failed_service is None
    check_trace(plan, result)
    world = result.world
    for step in plan.services:
        if step.action == "start":
            assert world.traffic[step.name] == "new" and step.name in world.new_running
            assert step.name not in world.old_running
        else:
            assert world.traffic[step.name] == "old" and step.name in world.old_running
    for name in plan.remove:
        assert name not in world.old_running and name not in world.traffic
    stop_old = names([a for _, a in result.actions], StopOld)
    expected = [s.name for s in plan.services if s.action == "start" and s.has_old]
    assert sorted(stop_old) == sorted(expected + list(plan.remove))
    finished_at = result.finished_at
    assert finished_at is not None and result.all_ready_at is not None
    assert finished_at == pytest.approx(result.all_ready_at + plan.bake_seconds)


def check_replay(plan: EnginePlan, runtime: EngineSimulation) -> None:
    """Replaying the journal (through JSON) rebuilds exactly the runtime's release state."""
    journal = [json.dumps(event_to_dict(e)) for e in runtime.result().events]
    rebuilt = replay(plan, [event_from_dict(json.loads(line)) for line in journal])
    original = runtime.release
    assert rebuilt.phase is original.phase
    assert rebuilt.service_phases() == original.service_phases()
    assert rebuilt.order == original.order
    assert rebuilt.next_deadline() == original.next_deadline()
    assert (rebuilt.outcome, rebuilt.reason, rebuilt.failed_service) == (
        original.outcome,
        original.reason,
        original.failed_service,
    )


def injections(runtime: EngineSimulation) -> list[tuple[str, str]]:
    """Every failure (kind, service) that can strike the release in its current state."""
    found = [("abort", "")]
    if runtime.release.phase is ReleasePhase.PENDING:
        return found
    for name, phase in runtime.release.service_phases().items():
        if phase in (ServicePhase.STARTING, ServicePhase.READY):
            found += [("exit", name), ("fail", name)]
        if phase is ServicePhase.STARTING:
            found.append(("timeout", name))
    return found


def inject(runtime: EngineSimulation, kind: str, service: str) -> None:
    """Make ``service`` fail now (or abort the release), the way ``kind`` says."""
    if kind == "abort":
        runtime.send(Abort("injected", runtime.now))
    elif kind == "exit":
        runtime.send(Exited(service, 3, runtime.now))
    elif kind == "fail":
        runtime.send(Failed(service, "boom", runtime.now))
    else:
        runtime.hang(service)  # its readiness timeout will fire


def inject_everywhere(
    plan: EnginePlan, durations: dict[str, float], *, stop_seconds: float = 0.0
) -> int:
    """Fail the release at every step of a successful run, in every possible way; check each."""

    def runtime() -> EngineSimulation:
        return EngineSimulation(plan, durations, stop_seconds=stop_seconds)

    baseline = runtime()
    result = baseline.run()
    check_succeeded(plan, result)
    check_replay(plan, baseline)
    runs = 0
    for k in range(len(result.events)):
        probe = runtime()
        for _ in range(k):
            probe.step()
        for kind, target in injections(probe):
            rt = runtime()
            for _ in range(k):
                rt.step()
            inject(rt, kind, target)
            outcome = rt.run()
            check_rolled_back(plan, outcome)
            check_replay(plan, rt)
            assert outcome.finished_at is not None
            if kind == "abort":
                assert outcome.failed_service is None
                assert outcome.reason == "aborted: injected"
            else:
                assert outcome.failed_service == target
                assert rt.release.service_phase(target) is ServicePhase.FAILED
                assert outcome.reason is not None and outcome.reason.startswith(target)
                if kind == "timeout":
                    assert "not ready after" in outcome.reason
            runs += 1
    return runs


# --------------------------------------------------------------------------------------------
# Scheduling


def test_eager_start_does_not_wait_for_the_whole_level() -> None:
    """A service starts the moment its last dependency is ready, not when its level is done."""
    plan = plan_of(start("fast"), start("slow"), start("after-fast", "fast"), start("end", "slow"))
    result = simulate(plan, {"fast": 1, "slow": 10, "after-fast": 2, "end": 1})
    started = action_times(result, StartNew)
    assert started["after-fast"] == 1
    assert started["end"] == 10
    assert result.all_ready_at == 11 == critical_path(plan, {"fast": 1, "slow": 10, "end": 1})


def test_start_order_respects_dependencies() -> None:
    """Services start only after everything they depend on is ready, dependencies first."""
    plan = plan_of(*reversed(PHOENIX))
    result = simulate(plan, PHOENIX_DURATIONS)
    check_succeeded(plan, result)
    started = action_times(result, StartNew)
    ready = action_times(result, SwitchTraffic)
    for step in plan.services:
        for dep in step.depends_on:
            assert started[step.name] >= ready[dep]
    assert started == {"account": 0, "audit": 0, "payment": 2, "transaction": 2, "notification": 5}


def test_begin_starts_every_service_without_dependencies() -> None:
    """Begin issues StartNew for every service whose dependencies are all ready."""
    release = Release(plan_of(*PHOENIX))
    assert release.handle(Begin(0)) == [StartNew("account"), StartNew("audit")]
    assert release.phase is ReleasePhase.STARTING
    assert release.service_phase("payment") is ServicePhase.WAITING
    assert release.handle(Started("account", 0.1)) == []
    assert release.handle(Ready("account", 1)) == [SwitchTraffic("account")]
    assert release.handle(Ready("audit", 2)) == [
        SwitchTraffic("audit"),
        StartNew("payment"),
        StartNew("transaction"),
    ]
    assert release.order == ["account", "audit", "payment", "transaction"]


def test_max_parallel_is_respected_and_the_release_finishes() -> None:
    """No more than max_parallel services are ever STARTING, and the release still succeeds."""
    rng = random.Random(7)
    steps = [
        start(f"s{i}", *(f"s{j}" for j in range(max(0, i - 3), i) if rng.random() < 0.3))
        for i in range(40)
    ]
    durations = {f"s{i}": rng.uniform(0.5, 3) for i in range(40)}
    for limit in (1, 2, 5):
        plan = plan_of(*steps, max_parallel=limit)
        result = simulate(plan, durations)
        check_succeeded(plan, result)  # check_trace counts STARTING services at every step
        assert result.all_ready_at is not None
        if limit == 1:
            assert result.all_ready_at == pytest.approx(sum(durations.values()))


def test_max_parallel_prefers_the_longest_remaining_chain() -> None:
    """With one slot, the service with the most work behind it starts first."""
    plan = plan_of(start("lonely"), start("a"), start("b", "a"), start("c", "b"), max_parallel=1)
    release = Release(plan)
    assert release.handle(Begin(0)) == [StartNew("a")]
    assert release.handle(Ready("a", 1)) == [SwitchTraffic("a"), StartNew("b")]


def test_expected_seconds_weights_the_priority() -> None:
    """expected_seconds makes a short chain of slow services go before a long chain of fast ones."""
    plan = plan_of(
        ServiceStep("slow", (), "start", expected_seconds=100),
        ServiceStep("f1", (), "start", expected_seconds=1),
        ServiceStep("f2", ("f1",), "start", expected_seconds=1),
        ServiceStep("f3", ("f2",), "start", expected_seconds=1),
        max_parallel=1,
    )
    assert Release(plan).handle(Begin(0)) == [StartNew("slow")]


def test_kept_services_satisfy_dependents_immediately() -> None:
    """An unchanged (kept) service counts as ready from the start and is never touched."""
    plan = plan_of(keep("postgres-proxy"), start("api", "postgres-proxy"), keep("web", "api"))
    release = Release(plan)
    assert release.service_phase("postgres-proxy") is ServicePhase.KEPT
    assert release.handle(Begin(0)) == [StartNew("api")]
    assert release.handle(Ready("api", 1)) == [SwitchTraffic("api"), StopOld("api"), _ok()]
    assert release.service_phase("web") is ServicePhase.KEPT
    check_succeeded(plan, simulate(plan, {"api": 1}))


def test_a_release_that_changes_nothing_bakes_and_succeeds() -> None:
    """With only kept services, Begin goes straight to the bake (and removals happen after it)."""
    plan = plan_of(keep("a"), bake_seconds=3, remove=("old-worker",))
    release = Release(plan)
    assert release.handle(Begin(10)) == []
    assert release.phase is ReleasePhase.BAKING
    assert release.next_deadline() == 13
    assert release.handle(Tick(12.9)) == []
    assert release.handle(Tick(13)) == [StopOld("old-worker"), _ok()]


def _ok() -> Finish:
    return Finish("succeeded", None, None)


def test_bake_then_stop_old_versions() -> None:
    """After every new version is ready the release bakes, then stops old versions and removals."""
    plan = plan_of(*CHAIN, bake_seconds=60, remove=("legacy",))
    release = Release(plan)
    release.handle(Begin(0))
    release.handle(Ready("db-proxy", 1))
    release.handle(Ready("api", 2))
    assert release.handle(Ready("web", 3)) == [SwitchTraffic("web")]
    assert release.service_phases() == dict.fromkeys(["db-proxy", "api", "web"], ServicePhase.READY)
    assert release.phase is ReleasePhase.BAKING and release.next_deadline() == 63
    assert release.handle(Tick(62)) == []
    assert release.handle(Tick(63)) == [
        StopOld("web"),
        StopOld("api"),
        StopOld("db-proxy"),
        StopOld("legacy"),
        _ok(),
    ]
    assert (release.phase, release.outcome) == (ReleasePhase.SUCCEEDED, "succeeded")
    assert release.next_deadline() is None


# --------------------------------------------------------------------------------------------
# Plan validation


def test_dependency_cycle_is_rejected_with_its_names() -> None:
    """A dependency cycle raises EngineError listing the services around it."""
    plan = plan_of(start("a", "c"), start("b", "a"), start("c", "b"), start("d"))
    with pytest.raises(EngineError, match=r"dependency cycle: a → c → b → a"):
        Release(plan)
    with pytest.raises(EngineError, match=r"dependency cycle: solo → solo"):
        Release(plan_of(start("solo", "solo")))


def test_unknown_dependency_is_rejected_with_its_names() -> None:
    """A dependency on a service absent from the plan raises EngineError naming both."""
    with pytest.raises(EngineError, match=r"unknown dependencies: payment → acount") as info:
        Release(plan_of(start("account"), start("payment", "acount")))
    assert isinstance(info.value, AirlockError)


@pytest.mark.parametrize(
    ("plan", "message"),
    [
        (plan_of(start("a"), start("a")), "listed twice"),
        (plan_of(start("a"), remove=("a",)), "both deployed and removed: a"),
        (plan_of(start("a"), max_parallel=0), "max_parallel"),
        (plan_of(start("a"), bake_seconds=-1), "bake_seconds"),
        (plan_of(start("a", timeout=0)), "ready_timeout"),
    ],
)
def test_invalid_plans_are_rejected(plan: EnginePlan, message: str) -> None:
    """Duplicate names, removed-and-deployed services and bad numbers raise EngineError."""
    with pytest.raises(EngineError, match=message):
        Release(plan)


# --------------------------------------------------------------------------------------------
# Failures and rollback


def test_readiness_timeout_rolls_back() -> None:
    """A service not ready ready_timeout seconds after StartNew fails at the next Tick."""
    plan = plan_of(start("account"), start("payment", "account", timeout=5))
    release = Release(plan)
    release.handle(Begin(0))
    assert release.next_deadline() == 30
    release.handle(Ready("account", 1))
    assert release.next_deadline() == 6
    assert release.handle(Tick(5.9)) == []
    assert release.handle(Tick(6)) == [
        StopNew("payment"),
        RevertTraffic("account"),
        StopNew("account"),
    ]
    assert release.phase is ReleasePhase.ROLLING_BACK
    assert release.next_deadline() is None
    assert release.handle(Stopped("payment", 6.5)) == []
    assert release.handle(Stopped("account", 7)) == [
        Finish("rolled_back", "payment: not ready after 5s", "payment")
    ]
    assert release.service_phase("payment") is ServicePhase.FAILED
    assert release.service_phase("account") is ServicePhase.STOPPED


def test_simulated_hang_times_out() -> None:
    """A hanging service makes the simulated release roll back at its deadline."""
    plan = plan_of(*PHOENIX[:3], start("transaction", "account", "audit", timeout=4))
    result = simulate(plan, PHOENIX_DURATIONS, failures={"transaction": "hang"}, stop_seconds=1)
    check_rolled_back(plan, result)
    assert result.reason == "transaction: not ready after 4s"
    assert result.finished_at == 2 + 4 + 1
    assert result.all_ready_at is None


def test_exit_before_ready_names_the_code() -> None:
    """An exit before readiness rolls back with a reason naming the service and exit code."""
    plan = plan_of(*PHOENIX)
    result = simulate(plan, PHOENIX_DURATIONS, failures={"payment": "exit"})
    check_rolled_back(plan, result)
    assert result.reason == "payment exited with code 1 before becoming ready"
    assert result.failed_service == "payment"


def test_failed_reason_is_prefixed_with_the_service_once() -> None:
    """Failed's reason gets the service name in front, unless it already starts with it."""
    for reason, expected in [("boom", "api: boom"), ("api: probe refused", "api: probe refused")]:
        release = Release(plan_of(start("api")))
        release.handle(Begin(0))
        actions = release.handle(Failed("api", reason, 1))
        assert actions == [StopNew("api")]
        assert release.handle(Stopped("api", 2)) == [Finish("rolled_back", expected, "api")]


def test_bake_failure_reverts_traffic_in_reverse_dependency_order() -> None:
    """A failure during the bake reverts traffic before StopNew, dependents first."""
    plan = plan_of(*PHOENIX, bake_seconds=30)
    release = Release(plan)
    release.handle(Begin(0))
    for t, name in enumerate(["account", "audit", "payment", "transaction", "notification"]):
        release.handle(Ready(name, t + 1))
    assert release.phase is ReleasePhase.BAKING
    actions = release.handle(Exited("payment", 3, 10))
    assert actions == [
        RevertTraffic("notification"),
        StopNew("notification"),
        StopNew("transaction"),  # a new service: nothing to revert to
        RevertTraffic("payment"),
        StopNew("payment"),
        RevertTraffic("audit"),
        StopNew("audit"),
        RevertTraffic("account"),
        StopNew("account"),
    ]
    assert release.reason == "payment exited with code 3 after becoming ready"
    result = simulate(
        plan, PHOENIX_DURATIONS, failures={"payment": "fail"}, fail_after={"payment": 9}
    )
    check_rolled_back(plan, result)
    assert result.all_ready_at == 6 and result.reason == "payment: health check failed"


def test_abort_rolls_back_what_was_started() -> None:
    """Abort stops every started service; services never started stay WAITING."""
    release = Release(plan_of(*CHAIN))
    release.handle(Begin(0))
    release.handle(Ready("db-proxy", 1))
    assert release.handle(Abort("interrupted by user", 1.5)) == [
        StopNew("api"),
        RevertTraffic("db-proxy"),
        StopNew("db-proxy"),
    ]
    assert release.service_phase("web") is ServicePhase.WAITING
    assert release.handle(Stopped("api", 2)) == []
    assert release.handle(Stopped("db-proxy", 2)) == [
        Finish("rolled_back", "aborted: interrupted by user", None)
    ]
    result = simulate(plan_of(*PHOENIX), PHOENIX_DURATIONS, abort_at=2.5)
    check_rolled_back(plan_of(*PHOENIX), result)
    assert result.reason == "aborted: interrupted"


def test_abort_before_begin_finishes_at_once() -> None:
    """Abort in PENDING rolls back with nothing to undo: Finish is the only action."""
    release = Release(plan_of(*CHAIN))
    assert release.handle(Abort("changed my mind", 0)) == [
        Finish("rolled_back", "aborted: changed my mind", None)
    ]
    assert release.phase is ReleasePhase.ROLLED_BACK


def test_late_events_are_ignored_while_rolling_back() -> None:
    """News from services being stopped does not disturb a rollback in progress."""
    release = Release(plan_of(*DIAMOND))
    release.handle(Begin(0))
    release.handle(Ready("top", 1))
    release.handle(Failed("left", "boom", 2))
    for late in (
        Started("right", 2),
        Ready("right", 2.1),
        Exited("right", 1, 2.2),
        Failed("top", "x", 2.3),
        Tick(100),
        Abort("again", 3),
    ):
        assert release.handle(late) == []
    assert release.phase is ReleasePhase.ROLLING_BACK
    with pytest.raises(
        EngineError,
        match=r"Stopped\(bottom\) is not valid for a service that is "
        r"WAITING",
    ):
        release.handle(Stopped("bottom", 3))


def test_events_after_the_finish_raise() -> None:
    """Once finished, every event but Tick raises EngineError."""
    release = Release(plan_of(start("a")))
    release.handle(Begin(0))
    release.handle(Ready("a", 1))
    assert release.phase is ReleasePhase.SUCCEEDED
    assert release.handle(Tick(5)) == []
    for event in (Begin(2), Ready("a", 2), Exited("a", 1, 2), Abort("late", 2), Stopped("a", 2)):
        with pytest.raises(EngineError, match="SUCCEEDED"):
            release.handle(event)


def test_events_before_begin_raise() -> None:
    """Before Begin, only Begin and Abort are valid."""
    release = Release(plan_of(start("a")))
    for event in (Tick(0), Ready("a", 0), Started("a", 0), Stopped("a", 0)):
        with pytest.raises(EngineError, match="PENDING"):
            release.handle(event)


def test_events_must_fit_the_service_state() -> None:
    """Events for unknown services, or for services in the wrong state, raise EngineError."""
    release = Release(plan_of(*CHAIN))
    release.handle(Begin(0))
    with pytest.raises(EngineError, match=r"Ready\(nope\): unknown service 'nope'"):
        release.handle(Ready("nope", 1))
    with pytest.raises(
        EngineError, match=r"Ready\(web\) is not valid for a service that is WAITING"
    ):
        release.handle(Ready("web", 1))
    release.handle(Ready("db-proxy", 1))
    with pytest.raises(EngineError, match=r"Ready\(db-proxy\) .* READY"):
        release.handle(Ready("db-proxy", 2))
    with pytest.raises(EngineError, match=r"Begin is not valid while the release is STARTING"):
        release.handle(Begin(2))
    with pytest.raises(EngineError, match="unknown service"):
        release.service_phase("nope")


def test_kept_service_exit_is_not_the_engines_business() -> None:
    """Exited for a kept service is rejected: only services this release started can fail it."""
    release = Release(plan_of(keep("db"), start("api", "db")))
    release.handle(Begin(0))
    with pytest.raises(EngineError, match="KEPT"):
        release.handle(Exited("db", 1, 1))


# --------------------------------------------------------------------------------------------
# Journal


ALL_EVENTS: list[Event] = [
    Begin(0.0),
    Started("a", 1.5),
    Ready("a", 2.0),
    Failed("a", "health check failed: 503", 3.0),
    Exited("a", 3, 4.0),
    Exited("a", None, 4.5),
    Stopped("a", 5.0),
    Tick(6.25),
    Abort("interrupted by user", 7.0),
]


@pytest.mark.parametrize("event", ALL_EVENTS, ids=lambda e: type(e).__name__)
def test_event_dict_round_trip(event: Event) -> None:
    """Every event survives event_to_dict, JSON and event_from_dict unchanged."""
    data = event_to_dict(event)
    assert data["type"] == type(event).__name__.lower()
    assert event_from_dict(json.loads(json.dumps(data))) == event


@pytest.mark.parametrize(
    "data",
    [
        {"type": "explode", "now": 1},
        {"now": 1},
        {"type": "ready", "now": 1},
        {"type": "ready", "service": "a", "now": "soon"},
        {"type": "ready", "service": "a", "now": True},
        {"type": "ready", "service": 3, "now": 1},
        {"type": "exited", "service": "a", "code": "3", "now": 1},
        {"type": "tick", "now": 1, "extra": 2},
        {"type": "tick", "now": float("nan")},
    ],
)
def test_malformed_event_dicts_raise(data: dict[str, object]) -> None:
    """A damaged journal record raises EngineError instead of building a wrong event."""
    with pytest.raises(EngineError):
        event_from_dict(data)


def test_integer_times_decode_as_floats() -> None:
    """A journal written with integer times gives float times back."""
    event = event_from_dict({"type": "tick", "now": 3})
    assert event == Tick(3.0) and isinstance(event.now, float)


def test_replay_reproduces_the_state_at_every_step() -> None:
    """Replaying any prefix of the journal gives the same state as the live release."""
    plan = plan_of(*PHOENIX, bake_seconds=5, max_parallel=2)
    runtime = EngineSimulation(plan, PHOENIX_DURATIONS, stop_seconds=0.5)
    while runtime.step() is not None:
        check_replay(plan, runtime)
    assert runtime.release.outcome == "succeeded"


def test_replay_then_abort_undoes_an_interrupted_release() -> None:
    """A release rebuilt from its journal rolls back what the dead runner had started."""
    plan = plan_of(*PHOENIX)
    runtime = EngineSimulation(plan, PHOENIX_DURATIONS)
    while runtime.release.service_phase("payment") is not ServicePhase.STARTING:
        runtime.step()
    resumed = replay(plan, runtime.result().events)
    actions = resumed.handle(Abort("resumed after the deploying process stopped", 99))
    assert names(actions, StopNew) == ["transaction", "payment", "audit", "account"]
    assert names(actions, RevertTraffic) == ["audit", "account"]


# --------------------------------------------------------------------------------------------
# Exhaustive failure injection

GRAPHS = {
    "chain": CHAIN,
    "diamond": DIAMOND,
    "phoenix": PHOENIX,
    "kept": (keep("db"), start("api", "db"), start("worker", "db", old=False), keep("web", "api")),
}


@pytest.mark.parametrize("graph", sorted(GRAPHS))
@pytest.mark.parametrize(
    ("bake", "max_parallel", "stop_seconds"),
    [(0.0, None, 0.0), (10.0, None, 0.5), (10.0, 1, 0.0), (5.0, 2, 2.0)],
)
def test_failure_at_every_step_rolls_back_cleanly(
    graph: str, bake: float, max_parallel: int | None, stop_seconds: float
) -> None:
    """Whatever fails at whatever step, the release rolls back and leaves the old world serving."""
    steps = GRAPHS[graph]
    plan = EnginePlan(
        services=steps, bake_seconds=bake, max_parallel=max_parallel, remove=("legacy",)
    )
    durations = {s.name: 1.0 + i % 3 for i, s in enumerate(steps)}
    runs = inject_everywhere(plan, durations, stop_seconds=stop_seconds)
    assert runs > len(steps)


@st.composite
def random_plans(draw: st.DrawFn) -> tuple[EnginePlan, dict[str, float]]:
    n = draw(st.integers(1, 7))
    steps = []
    for i in range(n):
        deps = draw(st.lists(st.integers(0, i - 1), max_size=3, unique=True)) if i else []
        steps.append(
            ServiceStep(
                f"s{i}",
                tuple(f"s{j}" for j in deps),
                draw(st.sampled_from(["start", "start", "keep"])),
                has_old=draw(st.booleans()),
            )
        )
    order = draw(st.permutations(steps))
    plan = EnginePlan(
        services=tuple(order),
        bake_seconds=draw(st.sampled_from([0.0, 3.0])),
        max_parallel=draw(st.none() | st.integers(1, 3)),
        remove=draw(st.sampled_from([(), ("gone",)])),
    )
    durations = {s.name: float(draw(st.integers(1, 4))) for s in steps}
    return plan, durations


@settings(max_examples=40, deadline=None)
@given(random_plans(), st.sampled_from([0.0, 0.5]))
def test_failure_at_every_step_of_random_dags(
    case: tuple[EnginePlan, dict[str, float]], stop_seconds: float
) -> None:
    """On random DAGs, every injected failure at every step rolls back cleanly."""
    plan, durations = case
    inject_everywhere(plan, durations, stop_seconds=stop_seconds)


@settings(max_examples=60, deadline=None)
@given(random_plans())
def test_unlimited_schedule_is_exactly_eager(case: tuple[EnginePlan, dict[str, float]]) -> None:
    """Without max_parallel, each service starts when its last started dependency is ready."""
    plan, durations = case
    plan = EnginePlan(plan.services, bake_seconds=plan.bake_seconds, remove=plan.remove)
    result = simulate(plan, durations)
    check_succeeded(plan, result)
    started = action_times(result, StartNew)
    ready = action_times(result, SwitchTraffic)
    kinds = {s.name: s.action for s in plan.services}
    for step in plan.services:
        if step.action == "start":
            waits = [ready[d] for d in step.depends_on if kinds[d] == "start"]
            assert started[step.name] == max(waits, default=0.0)
    assert result.all_ready_at == critical_path(plan, durations)


# --------------------------------------------------------------------------------------------
# Simulator helpers and scale


def test_waves_group_services_by_depth() -> None:
    """waves() groups services by dependency depth, in plan order within a wave."""
    assert waves(plan_of(*PHOENIX)) == [
        ["account", "audit"],
        ["payment", "transaction"],
        ["notification"],
    ]
    assert waves(plan_of()) == []


def test_bounds_for_the_phoenix_plan() -> None:
    """The eager makespan meets the critical path; waves wait for the slowest of each level."""
    plan = plan_of(*PHOENIX)
    assert critical_path(plan, PHOENIX_DURATIONS) == 2 + 3 + 1
    assert waves_makespan(plan, PHOENIX_DURATIONS) == 2 + 3 + 1
    skewed = {**PHOENIX_DURATIONS, "audit": 4, "payment": 1, "transaction": 4, "account": 1}
    assert critical_path(plan, skewed) == 4 + 4 + 1
    assert simulate(plan, skewed).all_ready_at == 9
    limited = plan_of(start("a"), start("b"), start("c"), max_parallel=2)
    assert waves_makespan(limited, {"a": 3, "b": 2, "c": 2}) == 4


def test_simulator_rejects_bad_failures() -> None:
    """Failures for services that are not in the plan, or of unknown kinds, raise EngineError."""
    with pytest.raises(EngineError, match="failures name services not in the plan: ghost"):
        EngineSimulation(plan_of(start("a")), {}, failures={"ghost": "exit"})
    with pytest.raises(EngineError, match="unknown failure"):
        EngineSimulation(plan_of(start("a")), {}, failures={"a": "melt"})  # type: ignore[dict-item]


def test_ten_thousand_services_are_fast() -> None:
    """A 10,000-service release runs in well under a second of engine time."""
    rng = random.Random(1)
    steps = []
    durations = {}
    for i in range(10_000):
        deps = (
            {f"s{rng.randrange(max(0, i - 50), i)}" for _ in range(rng.randint(0, 3))}
            if i
            else set()
        )
        steps.append(start(f"s{i}", *sorted(deps)))
        durations[f"s{i}"] = rng.uniform(0.2, 5)
    plan = plan_of(*steps)
    result = simulate(plan, durations)
    assert result.outcome == "succeeded"
    assert result.all_ready_at == pytest.approx(critical_path(plan, durations))
    # how fast the engine is belongs to benchmarks/scheduler.py, not to a test
