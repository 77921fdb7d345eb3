"""``airlock demo``: the Phoenix example released end to end, on this machine, with traffic.

In a temporary workspace it seals v1 and deploys it to staging, load-tests it there, computes the
go/no-go report for production (static check, migrations rehearsed on a clone of production's
database, the load figures, the logs of staging's bake), promotes the *same* sealed release to
production on GO, upgrades production to v2 (blue-green, under traffic), then deploys a bad v3
whose notification service leaks memory: the bake catches the climb and the release is rolled
back automatically while the previous version keeps serving. A traffic generator sends requests
all along; the demo measures its own targets and stops everything it started.

``airlock demo --fleet`` (Linux, root) tells the same story on three hosts of a testbed
(:mod:`airlock.testbed`: OpenSSH servers in namespaces of their own on this machine), through the
``ssh`` runtime: the hosts are prepared as a sysadmin would (psycopg copied into
``/srv/lib/python``), the embedded PostgreSQL also listens on the testbed's bridge so the hosts
reach it, and the services are placed on two or three hosts each. v1 is deployed, v2 upgrades
every host under traffic to every host's stable ports, and v3's leak is caught in the bake and
rolled back on every host.
"""

from __future__ import annotations

import contextlib
import os
import random
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil
import yaml
from rich.console import Console
from rich.table import Table

from airlock import api
from airlock.db.target import embedded_server
from airlock.errors import UsageError
from airlock.runner import DeployResult, ProgressEvent
from airlock.traffic import Request, TrafficGenerator, Window, phoenix_requests

if TYPE_CHECKING:
    from airlock.testbed import Fleet

TARGET_TOTAL_SECONDS = 60.0
#: How the targets read for people; the step table's seconds are whole deploys, while the
#: rollback target counts from the failure's verdict to the previous version serving alone.
TARGET_LABELS = {
    "total_seconds": "whole demo, seconds",
    "rollback_seconds": "rollback, seconds from the verdict to the previous version alone",
}
TARGET_ROLLBACK_SECONDS = 5.0
SECRET_NAME = "PHOENIX_JWT_SECRET"


def example_dir() -> Path:
    """The Phoenix example: inside the installed package, or in a source checkout."""
    packaged = Path(str(resources.files("airlock"))) / "examples" / "phoenix"
    if (packaged / "airlock.yaml").is_file():
        return packaged
    checkout = Path(__file__).resolve().parents[2] / "examples" / "phoenix"
    if (checkout / "airlock.yaml").is_file():
        return checkout
    raise FileNotFoundError("the Phoenix example is not installed with this copy of Airlock")


@dataclass
class Step:
    name: str
    env: str
    version: str
    release: str = ""
    expected: str = "succeeded"
    outcome: str = ""
    seconds: float = 0.0
    served: int = 0
    failed: int = 0
    rollback_seconds: float | None = None
    migrations: list[str] = field(default_factory=list)
    reason: str | None = None
    failure_samples: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.outcome == self.expected


@dataclass
class DemoSummary:
    steps: list[Step]
    total_seconds: float = 0.0
    workspace: str = ""
    left_running: list[int] = field(default_factory=list)
    load: dict[str, Any] = field(default_factory=dict)
    gonogo: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)  # production's, from its own records
    audit: dict[str, Any] = field(default_factory=dict)  # `airlock audit verify` of the workspace
    kept: bool = False

    @property
    def targets(self) -> dict[str, dict[str, Any]]:
        upgrade = [s for s in self.steps if s.version == "v2"]
        bad = [s for s in self.steps if s.expected == "rolled_back"]
        rollback = bad[0].rollback_seconds if bad else None
        return {
            "total_seconds": {
                "value": round(self.total_seconds, 2),
                "target": f"≤ {TARGET_TOTAL_SECONDS:g}",
                "met": self.total_seconds <= TARGET_TOTAL_SECONDS,
            },
            "failed_requests_during_upgrade_and_rollback": {
                "value": sum(s.failed for s in upgrade + bad),
                "target": "0",
                "met": sum(s.failed for s in upgrade + bad) == 0,
            },
            "rollback_seconds": {
                "value": None if rollback is None else round(rollback, 3),
                "target": f"≤ {TARGET_ROLLBACK_SECONDS:g}",
                "met": rollback is not None and rollback <= TARGET_ROLLBACK_SECONDS,
            },
            "left_running": {
                "value": len(self.left_running),
                "target": "0",
                "met": not self.left_running,
            },
            "gonogo_v1_to_production": {
                "value": self.gonogo.get("verdict"),
                "target": "GO",
                "met": self.gonogo.get("verdict") == "GO",
            },
            "audit_verify": {
                "value": "OK" if self.audit.get("ok") else self.audit.get("problem", "not run"),
                "target": "OK",
                "met": bool(self.audit.get("ok")),
            },
        }

    @property
    def passed(self) -> bool:
        return all(s.ok for s in self.steps) and all(t["met"] for t in self.targets.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "total_seconds": round(self.total_seconds, 2),
            "steps": [asdict(s) for s in self.steps],
            "targets": self.targets,
            "load": self.load,
            "gonogo": self.gonogo,
            "metrics": self.metrics,
            "audit": self.audit,
            "workspace": self.workspace,
        }


def _apply_overlay(source: Path, workspace: Path) -> None:
    for path in sorted(source.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            target = workspace / path.relative_to(source)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)


def _left_running(workspace: Path) -> list[int]:
    """Processes still alive that belong to the workspace: agents and service instances."""
    alive = []
    for proc in psutil.process_iter(["pid", "cmdline", "cwd"]):
        try:
            cmdline = " ".join(proc.info["cmdline"] or [])
            cwd = proc.info["cwd"] or ""
        except (psutil.Error, TypeError):
            continue
        if proc.pid == os.getpid():
            continue
        if str(workspace) in cmdline or cwd.startswith(str(workspace)):
            alive.append(proc.pid)
    return alive


def run_demo(
    *, keep: bool = False, progress: Console | None = None, workspace: Path | None = None
) -> DemoSummary:
    """Run the whole demo; returns its measured summary (see :attr:`DemoSummary.passed`)."""
    began = time.monotonic()
    root = Path(workspace or tempfile.mkdtemp(prefix="airlock-demo-"))
    project = root / "phoenix"
    example = example_dir()
    shutil.copytree(example, project, ignore=shutil.ignore_patterns("releases", "__pycache__"))
    overlays = example / "releases"
    for env in ("STAGING", "PRODUCTION"):  # each environment its own secret
        os.environ.setdefault(f"{env}_{SECRET_NAME}", secrets.token_urlsafe(24))

    def say(text: str) -> None:
        if progress is not None:
            progress.print(text, highlight=False)

    def on_event(event: ProgressEvent) -> None:
        if progress is not None and event.kind not in {"started", "plan", "done"}:
            style = {"failed": "red", "ready": "green", "revert": "yellow"}.get(event.kind)
            text = f"    {event.message}"
            progress.print(f"[{style}]{text}[/]" if style else text, highlight=False)

    steps = [
        Step("deploy v1 to staging", "staging", "v1"),
        Step("promote v1 to production", "production", "v1"),
        Step("upgrade production to v2", "production", "v2"),
        Step("deploy leaking v3 to production", "production", "v3", expected="rolled_back"),
    ]
    summary = DemoSummary(steps=steps, workspace=str(root), kept=keep)
    traffic = TrafficGenerator()
    live: set[str] = set()
    say(f"[bold]Airlock demo[/]: the Phoenix example in {project}")
    try:
        traffic.start()
        for step in steps:
            if step.version != "v1" and not (project / ".applied" / step.version).exists():
                _apply_overlay(overlays / step.version, project)
                (project / ".applied" / step.version).mkdir(parents=True)
            result, window = _run_step(project, step, traffic, on_event, say)
            if result.outcome == "succeeded" and step.env not in live:
                live.add(step.env)
                traffic.add(phoenix_requests(result.endpoints))
            say(
                f"  {'[green]✓' if step.ok else '[red]✗'}[/] {step.outcome.replace('_', ' ')} "
                f"in {step.seconds:.1f}s" + (f": {step.reason}" if step.reason else "")
            )
            if step.env == "staging":
                _gates(project, step.release, summary, say)
                if summary.gonogo.get("verdict") != "GO":
                    say("  [red]✗ NO-GO: v1 is not promoted[/]")
                    break
        time.sleep(0.5)
        steps[-1].served, steps[-1].failed = window.served, window.failed
        _records(project, summary)
    finally:
        traffic.stop()
        for env in ("production", "staging"):
            api.stop_env(project, env)
        summary.left_running = _left_running(root) + [
            info.pid
            for env in ("production", "staging")
            if (info := embedded_server(project, env).running()) is not None
        ]
        if not keep:  # the workspace goes, so its databases go too
            for env in ("production", "staging"):
                embedded_server(project, env).destroy()
        summary.total_seconds = time.monotonic() - began
        if not keep:
            shutil.rmtree(root, ignore_errors=True)
    return summary


def _records(project: Path, summary: DemoSummary) -> None:
    """What Airlock's own records say of the demo: production's delivery metrics, and whether
    the audit log verifies."""
    (production,) = api.metrics(project, "production")
    summary.metrics = production.to_dict()
    verified = api.audit_verify(project)
    summary.audit = {"ok": bool(verified.get("ok")), "entries": verified.get("entries")}
    if not verified.get("ok"):
        summary.audit["problem"] = str(verified.get("problem") or verified)


def _gates(project: Path, release: str, summary: DemoSummary, say: Any) -> None:
    """Load-test the release on staging, then compute its go/no-go report for production."""
    say("\n[bold]▸ load test v1 on staging[/] (Locust, headless)")
    load = api.gate_load(project, "staging")
    figures = load.evidence
    summary.load = {
        "status": load.status.value,
        **{k: figures.get(k) for k in ("requests", "error_rate", "p50_ms", "p95_ms", "p99_ms")},
    }
    say(
        f"  {'[green]✓' if load.passed else '[red]✗'}[/] {figures.get('requests')} requests, "
        f"p50 {figures.get('p50_ms')} ms, p95 {figures.get('p95_ms')} ms, "
        f"p99 {figures.get('p99_ms')} ms, errors {figures.get('error_rate')}"
    )
    say("\n[bold]▸ go/no-go for v1 to production[/]")
    report = api.gonogo(project, "production", release)
    summary.gonogo = {
        "verdict": report.verdict,
        "gates": {o.gate: o.status.value for o in report.gates},
        "summaries": {o.gate: o.summary for o in report.gates},
    }
    marks = {"pass": "[green]✓[/]", "fail": "[red]✗[/]", "skipped": "[dim]–[/]"}
    for outcome in report.gates:
        say(f"  {marks[outcome.status.value]} {outcome.gate}: {outcome.summary}")
    colour = "green" if report.go else "red"
    say(
        f"  [bold {colour}]{report.verdict}[/] (its report is written in the workspace; "
        "`airlock demo --keep` keeps it)"
    )


def _run_step(
    project: Path,
    step: Step,
    traffic: TrafficGenerator,
    on_event: Callable[[ProgressEvent], None],
    say: Callable[[str], None],
) -> tuple[DeployResult, Window]:
    """Seal the step's version and deploy it under traffic; the step records how it went.
    Returns the deploy's result and the traffic window it opened (it goes on counting)."""
    bundle, _ = api.build(project, step.version)
    step.release = bundle.id
    say(f"\n[bold]▸ {step.name}[/] (release {bundle.id})")
    window = traffic.window(step.name)
    started = time.monotonic()
    result = api.deploy(project, step.env, bundle.id, progress=on_event)
    step.seconds = time.monotonic() - started
    _record(step, result)
    step.served, step.failed = window.served, window.failed
    step.failure_samples = list(window.samples)
    return result, window


def _record(step: Step, result: DeployResult) -> None:
    step.outcome = result.outcome
    step.reason = result.reason
    step.rollback_seconds = result.rollback_seconds
    step.migrations = list(result.migrations)


def render_steps(steps: list[Step], console: Console) -> None:
    """One step in two short lines, not a wide table: it reads the same at 80 columns."""
    for step in steps:
        mark = "[green]✓[/]" if step.ok else "[red]✗[/]"
        result = step.outcome.replace("_", " ")
        if step.rollback_seconds is not None:
            result += f" ({step.rollback_seconds:.2f}s after the verdict)"
        migrations = ", ".join(m.split("__")[0] for m in step.migrations) or "none"
        console.print(f"  {mark} {step.name}: {result}, {step.seconds:.1f}s", soft_wrap=True)
        console.print(
            f"      {step.version} ({step.release[:8]}), migrations {migrations}, "
            f"{step.served} requests served, {step.failed} failed",
            soft_wrap=True,
        )


def render_summary(summary: DemoSummary, console: Console) -> None:
    console.print("[bold]Airlock demo[/]")
    render_steps(summary.steps, console)
    for name, target in summary.targets.items():
        mark = "[green]✓[/]" if target["met"] else "[red]✗[/]"
        console.print(
            f"  {mark} {TARGET_LABELS.get(name, name.replace('_', ' '))}: {target['value']} "
            f"(target {target['target']})"
        )
    if summary.gonogo:
        gates = ", ".join(f"{k} {v}" for k, v in summary.gonogo["gates"].items())
        console.print(f"  go/no-go v1 → production: [bold]{summary.gonogo['verdict']}[/] ({gates})")
    for step in summary.steps:
        for sample in step.failure_samples:
            console.print(f"  [red]failed request during {step.name}:[/] {sample}")
    if summary.metrics:
        render_metrics(summary.metrics, console)
    word = "[green]passed[/]" if summary.passed else "[red]missed a target[/]"
    console.print(f"demo {word}; everything it started has been stopped")
    project = Path(summary.workspace) / "phoenix"
    if summary.kept:
        console.print(f"  its records, in a browser: airlock dashboard -p {project}")
    else:
        console.print(
            "  `airlock demo --keep` keeps the workspace, to open with `airlock dashboard`"
        )


def render_metrics(figures: dict[str, Any], console: Console) -> None:
    """Production's delivery figures in short lines (80 columns)."""

    def rate(value: Any) -> str:
        return "n/a" if value is None else f"{value:.0%}"

    def hours(value: Any) -> str:
        return "n/a (no git history)" if value is None else f"{value:.1f} h"

    def span(minutes: Any) -> str:
        if minutes is None:
            return "n/a"
        return f"{minutes * 60:.1f} s" if minutes < 1 else f"{minutes:.1f} min"

    def per_week(value: Any) -> str:
        return "n/a" if value is None else f"{value:.0f}/week"

    lead = figures.get("lead_time_hours") or {}
    recovery = figures.get("recovery_minutes") or {}
    detect = (figures.get("detect_seconds") or {}).get("median")
    console.print(f"  delivery metrics of production ({figures.get('deployments', 0)} deploys):")
    console.print(
        f"      deploys {per_week(figures.get('deployment_frequency_per_week'))}, "
        f"change failures {rate(figures.get('change_failure_rate'))}, "
        f"rollbacks {rate(figures.get('rollback_rate'))}"
    )
    console.print(f"      lead time (median) {hours(lead.get('median'))}")
    console.print(
        f"      recovery (median) {span(recovery.get('median'))}, time to detect (median) "
        + ("n/a" if detect is None else f"{detect:.1f} s")
    )


# -- the demo on a fleet of hosts ---------------------------------------------------------------

FLEET_ENV = "production"
FLEET_HOSTS = 3
#: Airlock's folder on each host (the agent, the releases, the logs)
FLEET_BASE_DIR = "/srv/airlock"
TARGET_FLEET_TOTAL_SECONDS = 90.0
FLEET_READY_TIMEOUT = "20s"
PG_PASSWORD_NAME = "PG_PASSWORD"


def fleet_placement(hosts: list[str]) -> dict[str, list[str]]:
    """Where each Phoenix service runs on three hosts: the foundation and transaction on every
    host, the rest on two of them (a service reaches one that is not on its host through the
    first host that runs it)."""
    first, second, third = hosts[:3]
    return {
        "account": [first, second, third],
        "audit": [first, second],
        "payment": [second, third],
        "transaction": [first, second, third],
        "notification": [first, third],
    }


def _fleet_call(service: str, url: str) -> Request:
    """One of Phoenix's public calls, against one host's stable URL of ``service``."""

    def call(rng: random.Random) -> tuple[str, str, dict[str, object] | None]:
        account = rng.randint(1, 100)
        if service == "account":
            return "GET", f"{url}/accounts/{account}", None
        if service == "audit":
            return "GET", f"{url}/records/count", None
        if service == "payment":
            return "POST", f"{url}/payments", {"account": account, "amount": rng.randint(1, 500)}
        if service == "transaction":
            target = rng.choice([n for n in range(1, 101) if n != account])
            body: dict[str, object] = {"from": account, "to": target, "amount": rng.randint(1, 500)}
            return "POST", f"{url}/transactions", body
        return "POST", f"{url}/notifications", {"account": account, "message": "statement ready"}

    return call


@dataclass
class FleetDemoSummary:
    steps: list[Step]
    hosts: dict[str, str] = field(default_factory=dict)  # name → address
    placement: dict[str, list[str]] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)  # service → its stable port on every host
    packages: list[str] = field(default_factory=list)  # what the hosts were given
    database: str = ""  # where the hosts reach PostgreSQL (no password)
    total_seconds: float = 0.0
    workspace: str = ""
    left_running: list[str] = field(default_factory=list)

    @property
    def targets(self) -> dict[str, dict[str, Any]]:
        upgrade = [s for s in self.steps if s.version == "v2"]
        bad = [s for s in self.steps if s.expected == "rolled_back"]
        rollback = bad[0].rollback_seconds if bad else None
        failed = sum(s.failed for s in upgrade + bad)
        return {
            "total_seconds": {
                "value": round(self.total_seconds, 2),
                "target": f"≤ {TARGET_FLEET_TOTAL_SECONDS:g}",
                "met": self.total_seconds <= TARGET_FLEET_TOTAL_SECONDS,
            },
            "failed_requests_during_upgrade_and_rollback": {
                "value": failed,
                "target": "0",
                "met": failed == 0 and all(s.served > 0 for s in upgrade + bad),
            },
            "rollback_seconds": {
                "value": None if rollback is None else round(rollback, 3),
                "target": f"≤ {TARGET_ROLLBACK_SECONDS:g}",
                "met": rollback is not None and rollback <= TARGET_ROLLBACK_SECONDS,
            },
            "left_running": {
                "value": len(self.left_running),
                "target": "0",
                "met": not self.left_running,
            },
        }

    @property
    def passed(self) -> bool:
        return (
            len(self.steps) == 3
            and all(s.ok for s in self.steps)
            and all(t["met"] for t in self.targets.values())
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "total_seconds": round(self.total_seconds, 2),
            "steps": [asdict(s) for s in self.steps],
            "targets": self.targets,
            "hosts": self.hosts,
            "placement": self.placement,
            "ports": self.ports,
            "packages": self.packages,
            "database": self.database,
            "left_running": self.left_running,
            "workspace": self.workspace,
        }


def _fleet_unavailable(reason: str) -> UsageError:
    return UsageError(
        f"airlock demo --fleet needs Linux and root, to build its test hosts: {reason}",
        hint="run it as root on Linux with iproute2, util-linux and openssh-server installed "
        "(Debian: apt-get install iproute2 util-linux openssh-server), or run `airlock demo` "
        "for the demo on this machine alone",
    )


def run_fleet_demo(
    *,
    keep: bool = False,
    progress: Console | None = None,
    workspace: Path | None = None,
    fleet: Fleet | None = None,
) -> FleetDemoSummary:
    """The demo on three testbed hosts; returns its measured summary.

    It builds the hosts itself (and removes them at the end) unless given a ``fleet`` whose
    first three hosts it may use. Raises :class:`~airlock.errors.UsageError` (exit 2) when this
    machine cannot build them: not Linux, not root, tools missing, or another fleet running.
    """
    from airlock.db.server import SUPERUSER, EmbeddedServer
    from airlock.testbed import HOST_PYTHON_LIB, Fleet, fleet_support

    began = time.monotonic()
    if fleet is None:
        possible, reason = fleet_support()
        if not possible:
            raise _fleet_unavailable(reason)
    root = Path(workspace or tempfile.mkdtemp(prefix="airlock-demo-fleet-"))
    project = root / "phoenix"
    example = example_dir()
    steps = [
        Step("deploy v1 to the fleet", FLEET_ENV, "v1"),
        Step("upgrade the fleet to v2", FLEET_ENV, "v2"),
        Step("deploy leaking v3 to the fleet", FLEET_ENV, "v3", expected="rolled_back"),
    ]
    summary = FleetDemoSummary(steps=steps, workspace=str(root))
    say, on_event = _printers(progress)
    secret_names = (f"PRODUCTION_{SECRET_NAME}", f"PRODUCTION_{PG_PASSWORD_NAME}")
    saved = {name: os.environ.get(name) for name in secret_names}
    traffic = TrafficGenerator()
    own = fleet is None
    server: EmbeddedServer | None = None
    hosts = []
    try:
        if fleet is None:
            (root / "fleet").mkdir(parents=True, exist_ok=True)
            try:
                fleet = Fleet(root / "fleet")
            except RuntimeError as exc:  # another fleet holds the machine's testbed
                raise _fleet_unavailable(str(exc)) from None
        say(f"[bold]Airlock demo on a fleet[/]: the Phoenix example on {FLEET_HOSTS} SSH hosts")
        hosts = fleet.hosts(FLEET_HOSTS)
        summary.hosts = {host.name: host.address for host in hosts}
        say(
            "  hosts: "
            + ", ".join(f"{h.name} ({h.address})" for h in hosts)
            + f"; bridge {fleet.gateway}"
        )
        for host in hosts:  # what a sysadmin installs for the services: psycopg
            summary.packages = host.install_python_packages(
                ["psycopg"], optional=["psycopg-binary", "psycopg-c"]
            )
        say(f"  each host got {', '.join(summary.packages)} in {HOST_PYTHON_LIB}")
        server = EmbeddedServer(
            root / "postgres", fast=True, listen=(fleet.gateway,), clients=(str(fleet.subnet),)
        )
        info = server.ensure_running()
        import psycopg

        with psycopg.connect(info.url(), autocommit=True) as admin:
            admin.execute("CREATE DATABASE phoenix")
        summary.database = f"postgresql://{SUPERUSER}@{fleet.gateway}:{info.port}/phoenix"
        say(f"  PostgreSQL for the hosts at {summary.database}")
        os.environ[secret_names[1]] = info.password
        os.environ.setdefault(secret_names[0], secrets.token_urlsafe(24))

        shutil.copytree(example, project, ignore=shutil.ignore_patterns("releases", "__pycache__"))
        known_hosts = fleet.write_known_hosts(root / "known_hosts", hosts)
        summary.placement = fleet_placement([host.name for host in hosts])
        _write_fleet_project(
            project,
            hosts={host.name: host.address for host in hosts},
            key=fleet.client_key,
            known_hosts=known_hosts,
            placement=summary.placement,
            database_url=f"postgresql://{SUPERUSER}:${{secret:{PG_PASSWORD_NAME}}}@"
            f"{fleet.gateway}:{info.port}/phoenix",
            python_path=HOST_PYTHON_LIB,
        )
        traffic.start()
        window = traffic.window("(no step yet)")
        for step in steps:
            if step.version != "v1":
                _apply_overlay(example / "releases" / step.version, project)
            result, window = _run_step(project, step, traffic, on_event, say)
            if step.version == "v1" and result.outcome == "succeeded":
                summary.ports = _stable_ports(project)
                traffic.add(
                    [
                        _fleet_call(service, f"http://{summary.hosts[name]}:{port}")
                        for service, port in summary.ports.items()
                        for name in summary.placement[service]
                    ]
                )
            say(
                f"  {'[green]✓' if step.ok else '[red]✗'}[/] {step.outcome.replace('_', ' ')} "
                f"in {step.seconds:.1f}s" + (f": {step.reason}" if step.reason else "")
            )
            if not step.ok:
                break
        time.sleep(0.5)
        last = next((s for s in reversed(steps) if s.outcome), None)
        if last is not None:
            last.served, last.failed = window.served, window.failed
            last.failure_samples = list(window.samples)
    finally:
        traffic.stop()
        if project.is_dir():
            with contextlib.suppress(Exception):
                api.stop_env(project, FLEET_ENV)
        summary.left_running = [
            f"{host.name} pid {proc.pid} ({' '.join(proc.cmdline()[:3])})"
            for host in hosts
            for proc in _alive(host.processes())
        ]
        if server is not None:
            if server.running() is not None and not keep:
                server.destroy()
            elif server.running() is not None:
                server.stop()
        if own and fleet is not None:
            fleet.close()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        summary.total_seconds = time.monotonic() - began
        if not keep:
            shutil.rmtree(root, ignore_errors=True)
    return summary


def _alive(processes: list[psutil.Process]) -> list[psutil.Process]:
    alive = []
    for proc in processes:
        with contextlib.suppress(psutil.Error):
            proc.cmdline()  # still there, and readable
            alive.append(proc)
    return alive


def _write_fleet_project(
    project: Path,
    *,
    hosts: dict[str, str],
    key: Path,
    known_hosts: Path,
    placement: dict[str, list[str]],
    database_url: str,
    python_path: str,
) -> None:
    """Phoenix's airlock.yaml with one environment on the fleet: its hosts, where each service
    runs, the database the hosts reach, and PYTHONPATH for the packages the hosts were given."""
    document = yaml.safe_load((project / "airlock.yaml").read_text())
    services = list(document["services"])
    document["environments"] = {
        FLEET_ENV: {
            "hosts": ["phoenix.example.com"],
            "database": {"url": database_url},
            "secrets": {"provider": "env", "prefix": "PRODUCTION_"},
            "runtime": {
                "type": "ssh",
                "hosts": {name: {"address": address} for name, address in hosts.items()},
                "key": str(key),
                "known_hosts": str(known_hosts),
                "base_dir": FLEET_BASE_DIR,
                "placement": placement,
                "rollout": {"batch": 1},
            },
            "config": {service: {"PYTHONPATH": python_path} for service in services},
        }
    }
    # starting Phoenix (python3 importing psycopg) on three hosts sharing this machine's CPUs
    document["gates"]["ready_timeout"] = FLEET_READY_TIMEOUT
    (project / "airlock.yaml").write_text(yaml.safe_dump(document, sort_keys=False))


def _stable_ports(project: Path) -> dict[str, int]:
    """Each service's stable port (the same on every host of the service)."""
    services = api.status(project, FLEET_ENV)["services"]
    return {str(s["service"]): int(str(s["url"]).rsplit(":", 1)[1]) for s in services}


def _printers(
    progress: Console | None,
) -> tuple[Callable[[str], None], Callable[[ProgressEvent], None]]:
    def say(text: str) -> None:
        if progress is not None:
            progress.print(text, highlight=False)

    def on_event(event: ProgressEvent) -> None:
        if progress is not None and event.kind not in {"started", "plan", "done"}:
            style = {"failed": "red", "ready": "green", "revert": "yellow"}.get(event.kind)
            text = f"    {event.message}"
            progress.print(f"[{style}]{text}[/]" if style else text, highlight=False)

    return say, on_event


def render_fleet_summary(summary: FleetDemoSummary, console: Console) -> None:
    console.print("[bold]Airlock demo on a fleet[/]")
    render_steps(summary.steps, console)
    where = Table(title="Where each service runs", title_justify="left")
    for column in ("service", "hosts", "stable port"):
        where.add_column(column)
    for service, names in summary.placement.items():
        shown = ", ".join(f"{name} ({summary.hosts.get(name, '?')})" for name in names)
        port = summary.ports.get(service)
        where.add_row(service, shown, str(port) if port is not None else "-")
    console.print(where)
    if summary.database:
        console.print(f"  database: {summary.database}; hosts got {', '.join(summary.packages)}")
    for name, target in summary.targets.items():
        mark = "[green]✓[/]" if target["met"] else "[red]✗[/]"
        console.print(
            f"  {mark} {TARGET_LABELS.get(name, name.replace('_', ' '))}: {target['value']} "
            f"(target {target['target']})"
        )
    for step in summary.steps:
        for sample in step.failure_samples:
            console.print(f"  [red]failed request during {step.name}:[/] {sample}")
    for leftover in summary.left_running:
        console.print(f"  [red]left running:[/] {leftover}")
    word = "[green]passed[/]" if summary.passed else "[red]missed a target[/]"
    console.print(f"fleet demo {word}; everything it started has been stopped")
