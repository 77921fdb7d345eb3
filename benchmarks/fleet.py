"""How does a release scale with the fleet? The same upgrade on N hosts and on one, under traffic.

    python benchmarks/fleet.py --hosts 6        # Linux, root: it builds its own testbed

Builds ``--hosts`` SSH test hosts (:class:`airlock.testbed.Fleet`: OpenSSH servers in network
namespaces of their own on this machine) and a project of four stdlib services
(``tests/fixtures/webapp.py``): ``store`` and ``api`` on every host, ``search`` on the first half
and ``web`` on the second half (``api`` needs ``store``; ``web`` needs ``api`` and ``search``).
Two environments share the release: ``fleet`` (every host, switched in batches of
``--batch`` hosts) and ``single`` (the first host only, every service there, in a folder of its
own so that nothing it needs is on the host already). Both get v1; then v2 (every service
changes) is deployed to ``single`` and then to ``fleet``, each while GET / goes to every host's
stable port of every service; then a bad v3 whose ``api`` leaks memory on the last host only
is deployed to ``fleet``, caught in the bake and rolled back. Prints one JSON object:

``deploy_seconds``
    the upgrade to v2 on every host (``api.deploy`` from call to return, bake included).
``single_host_seconds``
    the same upgrade, of the same release, on one host with every service placed there.
``ratio``
    ``deploy_seconds / single_host_seconds``; ``rollout_ratio`` the same for the rollout alone
    (first start to last switch), the part that grows with the fleet.
``failed_requests``
    requests to the fleet that got no answer or a non-2xx one, during the upgrade and during
    the whole deploy of v3, its rollback included (``requests`` says how many were sent).
``rollback_seconds``
    from the verdict that failed v3 to the rollback's end, every host serving v2 again and
    v3's instances stopped (``DeployResult.rollback_seconds``); ``traffic_back_seconds`` to
    the last service's traffic being back on v2.
``targets``, ``ok``
    the targets (at 6 hosts: ratio ≤ 1.5, no failed request, rollback ≤ 2 s) and whether
    every one was met, with the other ``checks`` (v2 everywhere after the upgrade and after the
    rollback, the leak named with its host).
``profile``
    where each deploy's time went: its ``phases`` (connecting and binding the stable ports,
    the rollout, the bake and stopping the old versions), the seconds spent in each kind of
    runtime call, and the SSH round trips per host (``python3`` programs, agent requests by
    operation, SFTP uploads, connections) with their mean duration.

The run is bounded (``--timeout``, default 600 s) and removes everything it made, hosts included.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import httpx
import yaml

try:
    import airlock  # noqa: F401
except ImportError:  # running from a checkout without installing it
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from airlock import api
from airlock.runner import DeployResult, Progress, ProgressEvent
from airlock.runtimes import ssh
from airlock.testbed import Fleet, FleetHost, fleet_support

CHECKOUT = Path(__file__).resolve().parents[1]
WEBAPP = CHECKOUT / "tests" / "fixtures" / "webapp.py"
SERVICES = ("store", "api", "search", "web")
BAKE = "2s"
#: v3's bake: long, so that only the leak ends it
BAD_BAKE = "30s"
LEAK_MB_PER_MIN = 1500
MEMORY_GATE_MB_PER_MIN = 60
TARGET_RATIO = 1.5
TARGET_ROLLBACK_SECONDS = 2.0


# -- where the time goes: runtime calls and SSH round trips ------------------------------------


@dataclass
class Profile:
    """Seconds spent in each kind of runtime call, and the SSH round trips to each host."""

    calls: Counter[str] = field(default_factory=Counter)
    seconds: defaultdict[str, float] = field(default_factory=lambda: defaultdict(float))
    #: (kind of round trip, host) → how many, and the seconds they took
    trips: Counter[tuple[str, str]] = field(default_factory=Counter)
    trip_seconds: defaultdict[tuple[str, str], float] = field(
        default_factory=lambda: defaultdict(float)
    )

    def to_dict(self) -> dict[str, Any]:
        kinds = sorted({kind for kind, _ in self.trips})
        trips = {}
        for kind in kinds:
            counts = [n for (k, _), n in self.trips.items() if k == kind]
            seconds = sum(t for (k, _), t in self.trip_seconds.items() if k == kind)
            trips[kind] = {
                "per_host": max(counts),
                "mean_ms": round(1000 * seconds / sum(counts), 1),
            }
        return {
            "runtime_calls": {
                name: {"calls": self.calls[name], "seconds": round(self.seconds[name], 3)}
                for name in sorted(self.calls)
            },
            "round_trips": trips,
        }


_current: Profile | None = None


@contextlib.contextmanager
def profiled() -> Iterator[Profile]:
    """Count what the ssh runtime does while the block runs."""
    global _current
    _current = Profile()
    try:
        yield _current
    finally:
        _current = None


def _instrument() -> None:
    """Wrap :class:`~airlock.runtimes.ssh.SshRuntime`'s calls to measure them (this process
    only; the runtime itself is unchanged)."""
    runtime = ssh.SshRuntime
    for name in ("endpoint", "start", "probe", "fetch", "switch", "stop", "status"):
        setattr(runtime, name, _timed(name, getattr(runtime, name)))
    trips = {
        "_open": "ssh connections",
        "_tool": "python3 programs",
        "_call": "agent requests",
        "_upload": "sftp uploads",
    }
    for name, label in trips.items():
        setattr(runtime, name, _counted(label, getattr(runtime, name)))


def _timed(name: str, method: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    @functools.wraps(method)
    async def timed(self: Any, *args: Any, **kwargs: Any) -> Any:
        began = time.monotonic()
        try:
            return await method(self, *args, **kwargs)
        finally:
            if _current is not None:
                _current.calls[name] += 1
                _current.seconds[name] += time.monotonic() - began

    return timed


def _counted(label: str, method: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    @functools.wraps(method)
    async def counted(self: Any, host: Any, *args: Any, **kwargs: Any) -> Any:
        began = time.monotonic()
        try:
            return await method(self, host, *args, **kwargs)
        finally:
            if _current is not None:
                op = args[1].get("op") if label == "agent requests" else None
                key = (f"agent {op}" if op else label, str(host.name))
                _current.trips[key] += 1
                _current.trip_seconds[key] += time.monotonic() - began

    return counted


# -- traffic ------------------------------------------------------------------------------------


class Traffic:
    """GET / on every URL, round robin, from ``workers`` threads; anything but 2xx fails."""

    def __init__(self, urls: list[str], *, workers: int = 2, pause: float = 0.01) -> None:
        self.urls = urls
        self.workers = workers
        self.pause = pause
        self.sent = 0
        self.failed = 0
        self.samples: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def __enter__(self) -> Traffic:
        for index in range(self.workers):
            thread = threading.Thread(target=self._run, args=(index,), daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)

    def _run(self, index: int) -> None:
        with httpx.Client(timeout=5, trust_env=False) as client:
            position = index
            while not self._stop.is_set():
                url = self.urls[position % len(self.urls)]
                position += 1
                try:
                    answer = client.get(url + "/")
                    problem = None if answer.is_success else f"{url}: {answer.status_code}"
                except httpx.HTTPError as exc:
                    problem = f"{url}: {type(exc).__name__}"
                with self._lock:
                    self.sent += 1
                    if problem is not None:
                        self.failed += 1
                        if len(self.samples) < 5:
                            self.samples.append(problem)
                time.sleep(self.pause)


# -- the project --------------------------------------------------------------------------------


@dataclass
class Bench:
    root: Path
    hosts: list[FleetHost]
    document: dict[str, Any]
    placement: dict[str, list[str]]

    def write(self) -> None:
        (self.root / "airlock.yaml").write_text(yaml.safe_dump(self.document, sort_keys=False))

    def urls(self, env: str) -> list[str]:
        """Every host's stable URL of every service placed there."""
        status = api.status(self.root, env)
        ports = {s["service"]: int(str(s["url"]).rsplit(":", 1)[1]) for s in status["services"]}
        address = {host.name: host.address for host in self.hosts}
        placement = self.placement if env == "fleet" else {s: [self.hosts[0].name] for s in ports}
        return [
            f"http://{address[name]}:{ports[service]}"
            for service, names in placement.items()
            for name in names
        ]

    def versions(self, env: str) -> set[str]:
        found = set()
        for url in self.urls(env):
            try:
                found.add(str(httpx.get(url + "/", timeout=5, trust_env=False).json()["version"]))
            except httpx.HTTPError as exc:
                found.add(f"unreachable ({type(exc).__name__})")
        return found

    def release(self, version: str, **api_config: str) -> str:
        for service in SERVICES:
            self.document["services"][service]["config"]["VERSION"] = f"{service}-{version}"
        self.document["services"]["api"]["config"].update(api_config)
        self.write()
        bundle, _ = api.build(self.root, version)
        return bundle.id


def make_project(root: Path, fleet: Fleet, hosts: list[FleetHost], batch: str) -> Bench:
    (root / "app").mkdir(parents=True)
    shutil.copyfile(WEBAPP, root / "app" / "webapp.py")
    known_hosts = fleet.write_known_hosts(root.parent / "known_hosts", hosts)
    names = [host.name for host in hosts]
    half = max(1, len(names) // 2)
    placement = {
        "store": names,
        "api": names,
        "search": names[:half],
        "web": names[-half:],
    }
    needs = {"api": ["store"], "web": ["api", "search"]}

    def service(name: str) -> dict[str, Any]:
        depends = needs.get(name, [])
        config = {"VERSION": f"{name}-v1"}
        if depends:
            config["NEEDS"] = ",".join(f"${{services.{d}.url}}" for d in depends)
        return {
            "run": "python app/webapp.py",
            "source": ["app/webapp.py"],
            **({"depends_on": depends} if depends else {}),
            "config": config,
        }

    def runtime(chosen: list[FleetHost], base_dir: str, **extra: Any) -> dict[str, Any]:
        return {
            "runtime": {
                "type": "ssh",
                "hosts": {host.name: {"address": host.address} for host in chosen},
                "key": str(fleet.client_key),
                "known_hosts": str(known_hosts),
                "base_dir": base_dir,
                **extra,
            }
        }

    document: dict[str, Any] = {
        "project": "fleetbench",
        "services": {name: service(name) for name in SERVICES},
        "environments": {
            "fleet": runtime(
                hosts,
                "/srv/airlock-fleet",
                placement=placement,
                rollout={"batch": int(batch) if batch.isdigit() else batch},
            ),
            "single": runtime(hosts[:1], "/srv/airlock-single"),
        },
        "gates": {
            "bake": BAKE,
            "ready_timeout": "20s",
            "memory_growth_mb_per_min": MEMORY_GATE_MB_PER_MIN,
        },
    }
    bench = Bench(root, hosts, document, placement)
    bench.write()
    return bench


# -- the run ------------------------------------------------------------------------------------


class OutOfTime(Exception):
    pass


def _out_of_time(signum: int, frame: FrameType | None) -> None:
    raise OutOfTime("the benchmark ran out of time (--timeout)")


def deploy(
    bench: Bench, env: str, release: str, expected: str, progress: Progress | None = None
) -> DeployResult:
    result = api.deploy(bench.root, env, release, progress=progress)
    if result.outcome != expected:
        raise RuntimeError(f"deploy of {release} to {env}: {result.outcome} ({result.reason})")
    return result


@dataclass
class Measured:
    """One deploy under traffic: its result, how long it took and what happened when."""

    result: DeployResult
    seconds: float
    traffic: Traffic
    profile: Profile
    began: float
    events: list[ProgressEvent]

    def at(self, kind: str, *, last: bool = False) -> float | None:
        times = [event.at for event in self.events if event.kind == kind]
        return (times[-1] if last else times[0]) if times else None

    def phases(self) -> dict[str, float | None]:
        """Where the deploy's time went: binding the stable ports (connections, agents), the
        rollout (first start to last switch), then the bake and stopping the old versions."""
        planned, switched = self.at("plan"), self.at("switch", last=True)
        ended = self.began + self.seconds

        def span(start: float | None, end: float | None) -> float | None:
            return None if start is None or end is None else round(end - start, 3)

        return {
            "connect_and_bind": span(self.began, planned),
            "rollout": span(planned, switched),
            "bake_and_stop_old": span(switched, ended),
        }

    def traffic_back_seconds(self) -> float | None:
        """From the verdict to the last service's traffic being back on the old version."""
        detected, reverted = self.result.detected_at, self.at("revert", last=True)
        return None if detected is None or reverted is None else round(reverted - detected, 3)


def measured(bench: Bench, env: str, release: str, expected: str) -> Measured:
    """Deploy under traffic to every host's stable URL of every service of ``env``."""
    urls = bench.urls(env)
    events: list[ProgressEvent] = []
    with profiled() as profile, Traffic(urls) as traffic:
        began = time.monotonic()
        result = deploy(bench, env, release, expected, events.append)
        seconds = time.monotonic() - began
    return Measured(result, seconds, traffic, profile, began, events)


def run(hosts: int, batch: str) -> dict[str, Any]:
    _instrument()
    with (
        tempfile.TemporaryDirectory(prefix="airlock-bench-fleet-") as tmp,
        Fleet(Path(tmp), hidden_dirs=(str(CHECKOUT),)) as fleet,
    ):
        began = time.monotonic()
        chosen = fleet.hosts(hosts)
        setup_seconds = time.monotonic() - began
        bench = make_project(Path(tmp) / "bench" / "project", fleet, chosen, batch)
        try:
            v1 = bench.release("v1")
            deploy(bench, "fleet", v1, "succeeded")
            deploy(bench, "single", v1, "succeeded")
            v2 = bench.release("v2")
            single = measured(bench, "single", v2, "succeeded")
            upgrade = measured(bench, "fleet", v2, "succeeded")
            upgraded = bench.versions("fleet")
            leaky = chosen[-1].name
            bench.document["gates"]["bake"] = BAD_BAKE
            v3 = bench.release(
                "v3", MODE="leak", LEAK_HOST=leaky, LEAK_MB_PER_MIN=str(LEAK_MB_PER_MIN)
            )
            bad = measured(bench, "fleet", v3, "rolled_back")
            after = bench.versions("fleet")
        finally:
            for env in ("fleet", "single"):
                with contextlib.suppress(Exception):
                    api.stop_env(bench.root, env)
    ratio = upgrade.seconds / single.seconds
    failed = upgrade.traffic.failed + bad.traffic.failed
    rollback = bad.result.rollback_seconds
    detect = bad.result.detect_seconds
    reason = bad.result.reason
    v2_versions = {f"{service}-v2" for service in SERVICES}
    checks = {
        "ratio": ratio <= TARGET_RATIO,
        "failed_requests": failed == 0,
        "rollback_seconds": rollback is not None and rollback <= TARGET_ROLLBACK_SECONDS,
        "v2_everywhere_after_upgrade": upgraded == v2_versions,
        "v2_everywhere_after_rollback": after == v2_versions,
        "leak_caught_on_its_host": bool(reason and f"api on {leaky}" in reason),
    }
    return {
        "hosts": hosts,
        "services": len(SERVICES),
        "instances": sum(len(names) for names in bench.placement.values()),
        "rollout_batch": batch,
        "bake": BAKE,
        "deploy_seconds": round(upgrade.seconds, 3),
        "single_host_seconds": round(single.seconds, 3),
        "ratio": round(ratio, 3),
        "rollout_ratio": _ratio(upgrade.phases()["rollout"], single.phases()["rollout"]),
        "failed_requests": failed,
        "requests": upgrade.traffic.sent + bad.traffic.sent,
        "failure_samples": upgrade.traffic.samples + bad.traffic.samples,
        "single_host_failed_requests": single.traffic.failed,
        "rollback_seconds": None if rollback is None else round(rollback, 3),
        "traffic_back_seconds": bad.traffic_back_seconds(),
        "detect_seconds": None if detect is None else round(detect, 3),
        "v3_reason": reason,
        "fleet_setup_seconds": round(setup_seconds, 3),
        "release_ids": {"v1": v1, "v2": v2, "v3": v3},
        "profile": {
            "upgrade": {"phases": upgrade.phases(), **upgrade.profile.to_dict()},
            "single_host_upgrade": {"phases": single.phases(), **single.profile.to_dict()},
            "bad_release": bad.profile.to_dict(),
        },
        "checks": checks,
        "targets": {
            "ratio": f"≤ {TARGET_RATIO:g} at 6 hosts",
            "failed_requests": "0",
            "rollback_seconds": f"≤ {TARGET_ROLLBACK_SECONDS:g}",
        },
        "ok": all(checks.values()),
    }


def _ratio(top: float | None, bottom: float | None) -> float | None:
    return None if top is None or not bottom else round(top / bottom, 3)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hosts", type=int, default=6, help="fleet size (default 6)")
    parser.add_argument(
        "--batch", default="1", help="hosts switched at a time: a number or a share (50%%)"
    )
    parser.add_argument("--timeout", type=int, default=600, help="give up after this many s")
    args = parser.parse_args(argv)
    possible, reason = fleet_support()
    if not possible:
        print(json.dumps({"ok": False, "error": f"no testbed on this machine: {reason}"}))
        return 2
    signal.signal(signal.SIGALRM, _out_of_time)
    signal.alarm(args.timeout)
    try:
        result = run(args.hosts, args.batch)
    except Exception as exc:  # one JSON object whatever happens; the hosts are gone already
        print(
            json.dumps({"ok": False, "hosts": args.hosts, "error": f"{type(exc).__name__}: {exc}"})
        )
        return 1
    finally:
        signal.alarm(0)
    print(json.dumps(result))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
