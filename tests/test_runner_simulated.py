"""The real runner on a simulated runtime and a virtual clock: a kill after every journal record.

The runner (journal, engine, bake, resume) is the one ``airlock deploy`` uses; only the runtime
is :class:`~airlock.simulate.SimulatedRuntime`, whose imaginary instances outlive a killed runner
as real processes outlive a killed CLI. A "kill" makes the runner's process dead from that record
on: every later write to the state store and every call to the runtime raises, so nothing after
the record takes effect, exactly as after SIGKILL. Then ``resume`` runs on the same world. Every
point must end with one release serving every service, nothing else running, and no lock.
"""

from __future__ import annotations

import asyncio
import copy
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from airlock import api, runner
from airlock.clock import VirtualClock
from airlock.errors import LeaseLost
from airlock.runner import deploy_async, resume_async
from airlock.simulate import Behaviour, SimulatedRuntime
from airlock.state import open_state

from .conftest import ProjectFactory


class Killed(BaseException):
    """The runner's process died (raised from the kill point on)."""


class _DeadProcess:
    """Shared by the store and runtime wrappers: once dead, every call raises."""

    def __init__(self, kill_after: int) -> None:
        self.kill_after = kill_after
        self.records = 0
        self.dead = False
        self.labels: list[str] = []

    def check(self) -> None:
        if self.dead:
            raise Killed


class _Store:
    WRITES = frozenset({"begin", "finish", "set_deployed", "remove_deployed", "take_over"})

    def __init__(self, store: Any, process: _DeadProcess) -> None:
        self._store = store
        self._process = process

    def __enter__(self) -> _Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self._store.close()

    def journal(self, deployment_id: str, type_: str, body: dict[str, Any]) -> None:
        process = self._process
        process.check()
        self._store.journal(deployment_id, type_, body)
        process.records += 1
        process.labels.append(f"{type_} {body.get('type') or body.get('action') or ''}".strip())
        if process.records == process.kill_after:
            process.dead = True
            raise Killed

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._store, name)
        if name in self.WRITES:
            self._process.check()
        return attribute


class _Runtime:
    """The runner's handle on the world: it dies with the runner; the world does not."""

    def __init__(self, world: SimulatedRuntime, process: _DeadProcess) -> None:
        self._world = world
        self._process = process
        self.name = world.name

    @property
    def data_dir(self) -> str:
        return self._world.data_dir

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._world, name)
        if not callable(attribute):
            return attribute

        async def call(*args: Any, **kwargs: Any) -> Any:
            self._process.check()
            return await attribute(*args, **kwargs)

        return call


@contextmanager
def dying(monkeypatch: pytest.MonkeyPatch, process: _DeadProcess) -> Iterator[None]:
    real = runner.open_state
    with monkeypatch.context() as patch:
        patch.setattr(runner, "open_state", lambda root: _Store(real(root), process))
        yield


@dataclass
class Scenario:
    name: str
    v2: dict[str, dict[str, str]]  # service → config changes
    behaviours: dict[str, Behaviour] = field(default_factory=dict)
    gates: dict[str, Any] = field(default_factory=dict)
    outcome: str = "succeeded"


SCENARIOS = [
    Scenario("upgrade", {"api": {"V": "2"}, "web": {"V": "2"}}),
    Scenario(
        "bake-fails",
        {"api": {"V": "2"}, "web": {"V": "2"}},
        {"web": Behaviour(ready_after=1, failure="unhealthy", fail_after=3)},
        outcome="rolled_back",
    ),
    Scenario(
        "never-ready",
        {"api": {"V": "2"}, "web": {"V": "2"}},
        {"web": Behaviour(failure="hang")},
        outcome="rolled_back",
    ),
    Scenario(
        "exits",
        {"api": {"V": "2"}, "worker": {"V": "2"}},
        {"worker": Behaviour(ready_after=2, failure="exit")},
        outcome="rolled_back",
    ),
    Scenario(
        "leaks",
        {"api": {"V": "2"}},
        {"api": Behaviour(ready_after=1, leak_mb_per_min=600)},
        gates={"memory_growth_mb_per_min": 50},
        outcome="rolled_back",
    ),
]


@dataclass
class Start:
    """A project at v1, deployed on a simulated world, with v2 sealed: copied for each point."""

    project: Path
    world: SimulatedRuntime
    clock: VirtualClock
    v1: str
    v2: str

    def copy(self, folder: Path) -> Start:
        shutil.copytree(self.project, folder)
        world = copy.deepcopy(self.world)
        return Start(folder, world, world.clock, self.v1, self.v2)


def prepare(make_project: ProjectFactory, scenario: Scenario) -> Start:
    services: dict[str, dict[str, Any]] = {
        "db": {"config": {"V": "1"}},
        "api": {"depends_on": ["db"], "config": {"V": "1"}},
        "worker": {"depends_on": ["db"], "config": {"V": "1"}},
        "web": {"depends_on": ["api", "worker"], "ready": "/readyz", "config": {"V": "1"}},
    }
    gates = {"bake": "5s", "ready_timeout": "4s", **scenario.gates}
    project = make_project(services, gates=gates, name=f"sim-{scenario.name}")
    clock = VirtualClock()
    world = SimulatedRuntime(clock)
    v1, _ = api.build(project, "v1")
    first = asyncio.run(deploy_async(project, "staging", runtime=world, clock=clock))
    assert first.outcome == "succeeded"
    document = make_project.read(project)
    for service, changes in scenario.v2.items():
        document["services"][service]["config"].update(changes)
    make_project.write(project, document)
    v2, _ = api.build(project, "v2")
    world.behaviours = dict(scenario.behaviours)
    return Start(project, world, clock, v1.id, v2.id)


def check_consistent(start: Start) -> str:
    """One release serving every service, nothing else running, no lock: which release."""
    with open_state(start.project) as store:
        assert store.running("staging") is None, "a deployment is still running"
        assert store.lock("staging") is None, "the lock is still held"
        deployed = store.deployed("staging")
    releases = {row.release_id for row in deployed.values()}
    assert sorted(deployed) == ["api", "db", "web", "worker"]
    assert len(releases) == 1, f"services deployed from several releases: {releases}"
    running = start.world.running()
    assert sorted(running) == sorted(row.instance_id for row in deployed.values())
    assert start.world.traffic == {name: row.instance_id for name, row in deployed.items()}
    return "v1" if releases == {start.v1} else "v2"


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.name)
def test_kill_after_every_journal_record_then_resume(
    scenario: Scenario,
    make_project: ProjectFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    start = prepare(make_project, scenario)

    # The uninterrupted deploy, to count the kill points.
    reference = start.copy(tmp_path / "reference")
    counting = _DeadProcess(kill_after=0)
    with dying(monkeypatch, counting):
        result = asyncio.run(
            deploy_async(
                reference.project,
                "staging",
                runtime=_Runtime(reference.world, counting),  # type: ignore[arg-type]
                clock=reference.clock,
            )
        )
    assert result.outcome == scenario.outcome, result.reason
    assert check_consistent(reference) == ("v2" if scenario.outcome == "succeeded" else "v1")
    labels = counting.labels
    assert len(labels) >= 6

    failures = []
    for k in range(1, len(labels) + 1):
        point = start.copy(tmp_path / f"kill-{k}")
        process = _DeadProcess(kill_after=k)
        with dying(monkeypatch, process), pytest.raises(Killed):
            asyncio.run(
                deploy_async(
                    point.project,
                    "staging",
                    runtime=_Runtime(point.world, process),  # type: ignore[arg-type]
                    clock=point.clock,
                )
            )
        resumed = asyncio.run(
            resume_async(point.project, "staging", runtime=point.world, clock=point.clock)
        )
        assert resumed is not None
        try:
            serving = check_consistent(point)
        except AssertionError as exc:
            failures.append(f"kill after record {k} ({labels[k - 1]}): {exc}")
            continue
        # A resume rolls back, unless the bake had passed: then it completes.
        if serving == "v2":
            assert resumed.outcome == "succeeded"
    assert failures == [], "\n".join(failures)


def test_a_runner_that_lost_its_lease_stops_without_touching_anything(
    make_project: ProjectFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A deploy that stalled past its lease was taken over: its next journal record is refused
    (fencing), and it stops at once, leaving the release to the new holder, who finishes it."""
    start = prepare(make_project, SCENARIOS[0])
    point = start.copy(tmp_path / "taken")
    real = runner.open_state
    taken: list[Any] = []
    calls_at_takeover: list[int] = []

    class _TakenOver(_Store):
        def journal(self, deployment_id: str, type_: str, body: dict[str, Any]) -> None:
            self._store.journal(deployment_id, type_, body)
            if body.get("action") == "SwitchTraffic" and not taken:
                other = real(point.project)  # another operator's resume, after the lease ran out
                running = other.running("staging")
                assert running is not None
                other.take_over(running)
                taken.append(other)
                calls_at_takeover.append(len(point.world.calls))

    with monkeypatch.context() as patch:
        patch.setattr(runner, "open_state", lambda root: _TakenOver(real(root), _DeadProcess(0)))
        with pytest.raises(LeaseLost, match="no longer holds deployment"):
            asyncio.run(
                deploy_async(point.project, "staging", runtime=point.world, clock=point.clock)
            )
    assert taken, "the deployment was never taken over"
    # The switch that was under way when the lease was lost is the last thing it did.
    assert len(point.world.calls) <= calls_at_takeover[0] + 1
    for store in taken:
        store.close()
    resumed = asyncio.run(
        resume_async(point.project, "staging", runtime=point.world, clock=point.clock)
    )
    assert resumed is not None
    assert check_consistent(point) in {"v1", "v2"}
