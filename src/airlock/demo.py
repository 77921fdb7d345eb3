"""``airlock demo``: the Phoenix example released end to end, on this machine, with traffic.

In a temporary workspace it seals v1 and deploys it to staging, load-tests it there, computes the
go/no-go report for production (static check, migrations rehearsed on a clone of production's
database, the load figures, the logs of staging's bake), promotes the *same* sealed release to
production on GO, upgrades production to v2 (blue-green, under traffic), then deploys a bad v3
whose notification service leaks memory: the bake catches the climb and the release is rolled
back automatically while the previous version keeps serving. A traffic generator sends requests
all along; the demo measures its own targets and stops everything it started.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import psutil
from rich.console import Console
from rich.table import Table

from airlock import api
from airlock.db.target import embedded_server
from airlock.runner import DeployResult, ProgressEvent
from airlock.traffic import TrafficGenerator, phoenix_requests

TARGET_TOTAL_SECONDS = 60.0
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
    summary = DemoSummary(steps=steps, workspace=str(root))
    traffic = TrafficGenerator()
    live: set[str] = set()
    say(f"[bold]Airlock demo[/]: the Phoenix example in {project}")
    try:
        traffic.start()
        for step in steps:
            if step.version != "v1" and not (project / ".applied" / step.version).exists():
                _apply_overlay(overlays / step.version, project)
                (project / ".applied" / step.version).mkdir(parents=True)
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
            if result.outcome == "succeeded" and step.env not in live:
                live.add(step.env)
                traffic.add(phoenix_requests(result.endpoints))
            say(
                f"  {'[green]✓' if step.ok else '[red]✗'}[/] {step.outcome.replace('_', ' ')} "
                f"in {step.seconds:.1f}s" + (f": {step.reason}" if step.reason else "")
            )
            if step.env == "staging":
                _gates(project, bundle.id, summary, say)
                if summary.gonogo.get("verdict") != "GO":
                    say("  [red]✗ NO-GO: v1 is not promoted[/]")
                    break
        time.sleep(0.5)
        steps[-1].served, steps[-1].failed = window.served, window.failed
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
    say(f"  [bold {colour}]{report.verdict}[/] (report: {Path(report.files['markdown']).name})")


def _record(step: Step, result: DeployResult) -> None:
    step.outcome = result.outcome
    step.reason = result.reason
    step.rollback_seconds = result.rollback_seconds
    step.migrations = list(result.migrations)


def render_summary(summary: DemoSummary, console: Console) -> None:
    table = Table(title="Airlock demo", title_justify="left")
    for column in ("step", "release", "migrations", "result", "seconds", "served", "failed"):
        table.add_column(column)
    for step in summary.steps:
        colour = "green" if step.ok else "red"
        result = step.outcome.replace("_", " ")
        if step.rollback_seconds is not None:
            result += f" ({step.rollback_seconds:.2f}s)"
        table.add_row(
            step.name,
            f"{step.version} {step.release[:8]}",
            ", ".join(m.split("__")[0] for m in step.migrations) or "-",
            f"[{colour}]{result}[/]",
            f"{step.seconds:.1f}",
            str(step.served),
            str(step.failed),
        )
    console.print(table)
    for name, target in summary.targets.items():
        mark = "[green]✓[/]" if target["met"] else "[red]✗[/]"
        console.print(
            f"  {mark} {name.replace('_', ' ')}: {target['value']} (target {target['target']})"
        )
    if summary.gonogo:
        gates = ", ".join(f"{k} {v}" for k, v in summary.gonogo["gates"].items())
        console.print(f"  go/no-go v1 → production: [bold]{summary.gonogo['verdict']}[/] ({gates})")
    for step in summary.steps:
        for sample in step.failure_samples:
            console.print(f"  [red]failed request during {step.name}:[/] {sample}")
    word = "[green]passed[/]" if summary.passed else "[red]missed a target[/]"
    console.print(f"demo {word}; everything it started has been stopped")
