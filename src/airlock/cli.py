"""The ``airlock`` command: argument parsing and rendering only.

Every command calls one function of :mod:`airlock.api`. Errors meet the user in one place,
:func:`main`: an :class:`~airlock.errors.AirlockError` prints its message and hint (no traceback)
and exits 2 for bad input or 1 when a gate said no or a release failed; ``--debug`` re-raises.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sys
import textwrap
import time
import traceback
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from airlock.errors import AirlockError, Location
from airlock.findings import Finding, Severity, has_errors

if TYPE_CHECKING:
    from airlock import api
    from airlock.checks.outcome import GateOutcome
    from airlock.runner import DeployResult, ProgressEvent
else:
    # Each command imports only what it uses: `airlock --help` must not load the library
    # (pydantic, psycopg, sslyze, httpx, …). The library is imported on its first use.
    class _Library:
        def __getattr__(self, name: str) -> Any:
            from airlock import api as module

            return getattr(module, name)

    api = _Library()

console = Console(highlight=False)
errors = Console(stderr=True, highlight=False)

app = typer.Typer(
    name="airlock",
    help="Safe, fast and measured releases of multi-service systems.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode="markdown",  # a paragraph of a docstring is one paragraph, rewrapped
)
release_app = typer.Typer(help="Seal and inspect release bundles.", no_args_is_help=True)
env_app = typer.Typer(help="Manage running environments.", no_args_is_help=True)
gate_app = typer.Typer(
    help="Run one release gate (load, logs, CI); `airlock gonogo` runs them all.",
    no_args_is_help=True,
)
app.add_typer(release_app, name="release")
app.add_typer(env_app, name="env")
app.add_typer(gate_app, name="gate")


class Format(StrEnum):
    text = "text"
    json = "json"


_settings: dict[str, Any] = {"project": Path("."), "debug": False}

ProjectOption = typer.Option(
    None,
    "--project",
    "-p",
    help="airlock.yaml, or the folder holding it (default: the current folder).",
    envvar="AIRLOCK_PROJECT",
)
FormatOption = typer.Option(Format.text, "--format", "-f", help="Output format.")


@app.callback()
def _root(
    project: Path | None = ProjectOption,
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks of Airlock errors."),
) -> None:
    """Safe, fast and measured releases of multi-service systems."""
    _settings["project"] = project or Path(".")
    _settings["debug"] = debug


def _project(override: Path | None = None) -> Path:
    return override or _settings["project"]


def _json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


# ---------------------------------------------------------------------------------------------


@app.command()
def init(
    folder: Path = typer.Argument(Path("."), help="Where to start the project."),
    name: str | None = typer.Option(None, "--name", help="Project name (default: the folder's)."),
) -> None:
    """Start a project: a commented airlock.yaml and the .gitignore lines for .airlock/."""
    for path in api.init(folder, name):
        console.print(f"[green]✓[/] wrote {path}")
    console.print(
        "next: describe your services in airlock.yaml (the skeleton runs app.py), "
        "then `airlock check --env all`"
    )


@app.command()
def schema() -> None:
    """Print the JSON Schema of airlock.yaml (for editors and CI)."""
    from airlock.model import json_schema

    _json(json_schema())


class CheckFormat(StrEnum):
    text = "text"
    json = "json"
    sarif = "sarif"


class Threshold(StrEnum):
    error = "error"
    warning = "warning"
    info = "info"


@app.command()
def check(
    environments: list[str] | None = typer.Argument(
        None,
        help="Environments to check, as with --env (`airlock check staging --posture`).",
        show_default=False,
    ),
    env: list[str] = typer.Option(
        [], "--env", "-e", help="Also check this environment (repeat it, or `all`)."
    ),
    project: Path | None = ProjectOption,
    format: CheckFormat = typer.Option(CheckFormat.text, "--format", "-f", help="Output format."),
    fail_on: Threshold = typer.Option(
        Threshold.error, "--fail-on", help="Exit 1 when a finding is at least this severe."
    ),
    history: bool = typer.Option(
        True, "--history/--no-history", help="Scan the whole git history for secrets."
    ),
    posture: bool = typer.Option(
        False, "--posture", help="Also probe the running environments (TLS, headers, CORS, …)."
    ),
) -> None:
    """Check all that needs no running system: model, config, environments, secrets, contracts.

    The environments are checked for parity, cross-environment references and secrets; the
    repository for committed secrets; API contracts against their consumers.

    Exits 1 when a finding is at or above --fail-on, 2 when the input cannot be read.
    """
    from airlock.checks.gate import ALL_CODES
    from airlock.checks.sarif import to_sarif

    result = api.check(
        _project(project), envs=[*(environments or []), *env], history=history, posture=posture
    )
    findings = result.findings
    if format is CheckFormat.sarif:
        from airlock import __version__

        _json(
            to_sarif(
                findings,
                root=result.root or Path("."),
                rules=ALL_CODES,
                version=__version__,
            )
        )
    elif format is CheckFormat.json:
        _json(result.to_dict())
    else:
        _render_findings(findings)
        if result.silenced:
            console.print(f"  ({result.silenced} reviewed secret(s) silenced by the baseline)")
    if result.fails(Severity(fail_on.value)):
        raise typer.Exit(1)


def _shown(location: Location) -> str:
    """A location for people: its file relative to the current folder when it is inside it."""
    with contextlib.suppress(ValueError):
        relative = Path(location.file).resolve().relative_to(Path.cwd().resolve())
        return str(dataclasses.replace(location, file=str(relative)))
    return str(location)


def _say_wrapped(text: str, *, indent: int) -> None:
    """``text`` wrapped to the terminal (80 columns when piped), every line indented."""
    width = max(console.width, 40) - indent
    pad = " " * indent
    for line in textwrap.wrap(text, width=width, break_on_hyphens=False) or [""]:
        console.print(pad + escape(line), soft_wrap=True)


def _render_findings(findings: list[Finding]) -> None:
    if not findings:
        console.print("[green]✓[/] no findings")
        return
    colours = {Severity.ERROR: "red", Severity.WARNING: "yellow", Severity.INFO: "blue"}
    for severity in (Severity.ERROR, Severity.WARNING, Severity.INFO):
        group = [f for f in findings if f.severity is severity]
        if not group:
            continue
        console.print(f"[bold {colours[severity]}]{severity.value}s ({len(group)})[/]")
        for finding in group:
            place = escape(_shown(finding.location)) if finding.location is not None else ""
            console.print(f"  [bold]{finding.code}[/]  {place}".rstrip(), soft_wrap=True)
            _say_wrapped(finding.message, indent=4)
            if finding.hint:
                _say_wrapped(f"hint: {finding.hint}", indent=4)


# -- releases ----------------------------------------------------------------------------------


@release_app.command("build")
def release_build(
    version: str | None = typer.Option(None, "--version", "-v", help="A label, e.g. v1.4.0."),
    project: Path | None = ProjectOption,
    format: Format = FormatOption,
) -> None:
    """Seal the project into a content-addressed release bundle under .airlock/releases/."""
    bundle, new = api.build(_project(project), version)
    if format is Format.json:
        _json({**bundle.summary(), "new": new, "path": str(bundle.path)})
        return
    verb = "sealed" if new else "already sealed"
    console.print(
        f"[green]✓[/] {verb} release [bold]{bundle.id}[/] ({bundle.label}): "
        f"{len(bundle.manifest['files'])} files, {len(bundle.manifest['services'])} services"
    )
    console.print(f"  {bundle.path}")


@release_app.command("list")
def release_list(project: Path | None = ProjectOption, format: Format = FormatOption) -> None:
    """List sealed releases, oldest first."""
    bundles = api.releases(_project(project))
    if format is Format.json:
        _json([b.summary() for b in bundles])
        return
    if not bundles:
        console.print("no sealed releases yet; seal one with `airlock release build`")
        return
    table = Table("id", "version", "created", "by", "files")
    for b in bundles:
        table.add_row(
            b.id,
            b.label,
            b.created_at,
            str(b.manifest.get("created_by")),
            str(len(b.manifest["files"])),
        )
    console.print(table)


@release_app.command("show")
def release_show(
    release: str = typer.Argument(..., help="Release id, id prefix or version."),
    project: Path | None = ProjectOption,
    format: Format = FormatOption,
) -> None:
    """Show a release: its files with their sha256, services and environments, and the gates
    run and approvals given for it."""
    bundle, record = api.release_record(_project(project), release)
    if format is Format.json:
        _json({**bundle.manifest, "record": record})
        return
    summary = bundle.summary()
    console.print(
        f"[bold]{bundle.id}[/] ({bundle.label}) sealed {summary['created_at']} "
        f"by {summary['created_by']}"
    )
    if bundle.commit:
        dirty = " with uncommitted changes" if bundle.dirty else ""
        console.print(f"from commit {bundle.commit[:12]}{dirty}")
    console.print(f"environments: {', '.join(summary['environments'])}")
    table = Table("file", "sha256")
    for path, digest in sorted(bundle.manifest["files"].items()):
        table.add_row(path, digest[:16] + "…")
    console.print(table)
    for run in record["gates"]:
        mark = "[green]pass[/]" if run["passed"] else "[red]fail[/]"
        console.print(
            f"  {run['gate']} in {run['env']} at {run['at']}: {mark} {escape(run['summary'])}"
        )
    for env, items in record["approvals"].items():
        names = ", ".join(item["approver"] for item in items)
        console.print(f"  approved for {env} by {escape(names)}")


# -- plan and deploy ---------------------------------------------------------------------------


@app.command()
def plan(
    env: str = typer.Argument(..., help="Environment name."),
    release: str | None = typer.Option(None, "--release", "-r", help="Default: the newest."),
    project: Path | None = ProjectOption,
    format: Format = FormatOption,
) -> None:
    """Show what a deploy would do: start order (as waves) and changes against what runs."""
    result = api.plan(_project(project), env, release)
    if format is Format.json:
        _json(result.to_dict())
        return
    previous = result.previous_release or "nothing"
    console.print(
        f"deploy [bold]{result.version}[/] ({result.release}) to [bold]{env}[/] "
        f"(now: {previous}); bake {result.bake_seconds:g}s"
    )
    for index, wave in enumerate(result.waves, 1):
        console.print(f"  wave {index}: {', '.join(wave)}")
    console.print("  (each service starts as soon as its own dependencies are ready)")
    table = Table("service", "action", "why")
    for service in result.services:
        table.add_row(service.name, service.action, service.reason)
    console.print(table)
    if result.migrations:
        console.print("  migrations to apply first:")
        for migration in result.migrations:
            console.print(f"    {migration['script']}")
        for finding in result.migration_findings:
            location = finding.get("location") or {}
            where = f"{Path(str(location.get('file', ''))).name}:{location.get('line')}"
            console.print(f"    [yellow]{finding['code']}[/] {where}: {escape(finding['message'])}")
    for service in result.changed:
        for change in service.config_changes:
            old = "" if change.old is None else f"{change.old} → "
            new = "" if change.new is None else change.new
            console.print(f"  {service.name}.{change.key}: {change.change} {old}{new}")


_ICONS = {
    "start": "▶",
    "started": "·",
    "ready": "✓",
    "switch": "⇄",
    "revert": "↩",
    "stop-new": "■",
    "stop-old": "■",
    "failed": "✗",
    "plan": "•",
    "done": "•",
}


class _Printer:
    """Live progress of a release: one line per step, with the time since it began."""

    def __init__(self, quiet: bool = False) -> None:
        self.began = time.monotonic()
        self.quiet = quiet

    def __call__(self, event: ProgressEvent) -> None:
        if self.quiet:
            return
        style = {"failed": "red", "ready": "green", "revert": "yellow"}.get(event.kind, "")
        icon = _ICONS.get(event.kind, "·")
        text = f"{icon} {event.message}"
        errors.print(
            f"  {time.monotonic() - self.began:6.2f}s  "
            + (f"[{style}]{text}[/]" if style else text),
            markup=True,
        )


def _short_duration(seconds: float) -> str:
    """``0.7s``, or ``4 ms`` under a tenth of a second (where ``0.00s`` would say nothing)."""
    return f"{seconds * 1000:.0f} ms" if seconds < 0.1 else f"{seconds:.1f}s"


def _report(result: DeployResult, format: Format) -> None:
    if format is Format.json:
        _json(result.to_dict())
    elif result.outcome == "succeeded":
        console.print(
            f"[green]✓[/] {result.kind} of {result.version} to {result.env} succeeded in "
            f"{result.duration_seconds:.1f}s (started: {', '.join(result.started) or 'none'})"
        )
    else:
        console.print(
            f"[red]✗[/] {result.kind} of {result.version} to {result.env} failed: {result.reason}"
        )
        if result.rollback_seconds is not None:
            after = (
                "the previous release kept serving"
                if result.previous_release
                else "nothing of it is left running (there was no previous release)"
            )
            took = _short_duration(result.rollback_seconds)
            console.print(f"  rolled back automatically in {took}; {after}")
    if result.outcome != "succeeded":
        raise typer.Exit(1)


@app.command()
def deploy(
    env: str = typer.Argument(..., help="Environment name."),
    release: str | None = typer.Option(None, "--release", "-r", help="Default: the newest."),
    override_reason: str | None = typer.Option(
        None,
        "--override-reason",
        help="Deploy without the GO report and approvals the environment requires; the reason "
        "is recorded with the deployment.",
    ),
    project: Path | None = ProjectOption,
    format: Format = FormatOption,
) -> None:
    """Deploy a sealed release: dependency order, readiness gates, bake, automatic rollback.

    An environment with `approvals: N` needs a GO report (`airlock gonogo`) and N approvals
    (`airlock approve`) first. Exits 1 when the release failed and was rolled back, or was
    refused. Ctrl-C rolls back too.
    """
    root = _project(project)
    if release is None:
        with contextlib.suppress(AirlockError):  # a broken working copy is not this command's
            version, changed = api.unsealed_changes(root)
            if changed:
                more = f" and {len(changed) - 5} more" if len(changed) > 5 else ""
                errors.print(
                    f"[yellow]warning:[/] the working tree differs from the newest sealed "
                    f"release {escape(version or '')} ({escape(', '.join(changed[:5]))}{more}); "
                    "deploying it as it was sealed. Run `airlock release build` to seal the "
                    "changes.",
                    soft_wrap=False,
                )
    result = api.deploy(
        root,
        env,
        release,
        progress=_Printer(quiet=format is Format.json),
        override_reason=override_reason,
    )
    _report(result, format)


@app.command()
def rollback(
    env: str = typer.Argument(..., help="Environment name."),
    to: str | None = typer.Option(None, "--to", help="Release to go back to (default: previous)."),
    project: Path | None = ProjectOption,
    format: Format = FormatOption,
) -> None:
    """Deploy the previous good release again (or --to RELEASE)."""
    result = api.rollback(
        _project(project), env, to, progress=_Printer(quiet=format is Format.json)
    )
    _report(result, format)


@app.command()
def resume(
    env: str = typer.Argument(..., help="Environment name."),
    project: Path | None = ProjectOption,
    format: Format = FormatOption,
) -> None:
    """Finish an interrupted deploy: roll it back, or complete it if it had already succeeded."""
    result = api.resume(_project(project), env, progress=_Printer(quiet=format is Format.json))
    if result is None:
        if format is Format.json:
            _json({"env": env, "resumed": None})
        else:
            console.print(f"nothing to resume in {env}")
        return
    if format is Format.json:
        _json(result.to_dict())
    else:
        word = "completed" if result.outcome == "succeeded" else "rolled back"
        console.print(f"[green]✓[/] interrupted deployment {result.deployment_id} {word}")


@app.command()
def status(
    env: str = typer.Argument(..., help="Environment name."),
    project: Path | None = ProjectOption,
    format: Format = FormatOption,
) -> None:
    """Show the deployed release, its services and instances, and any lock."""
    data = api.status(_project(project), env)
    if format is Format.json:
        _json(data)
        return
    version = f" ({data['version']})" if data["version"] else ""
    if data["state"] == "stopped":
        console.print(f"[bold]{env}[/]: stopped (the last release was {data['release']}{version})")
    else:
        console.print(f"[bold]{env}[/]: {data['release'] or 'nothing deployed'}{version}")
    if data["problem"]:
        console.print(f"  [yellow]warning:[/] {escape(data['problem'])}")
    if data["lock"] and data["interrupted"]:
        lock = data["lock"]
        console.print(
            f"  [yellow]interrupted:[/] deployment {lock['deployment_id']} by {lock['holder']} "
            f"(since {lock['since']}) stopped without finishing; run `airlock resume {env}`"
        )
    elif data["lock"]:
        lock = data["lock"]
        console.print(
            f"  locked by {lock['holder']} since {lock['since']} ({lock['deployment_id']})"
        )
    width = max((len(s["service"]) for s in data["services"]), default=0)
    for s in data["services"]:
        # one line per service (two on a fleet): it reads the same at 80 columns and piped
        state = "running" if s["running"] else "[red]not running[/]"
        restarts = f", {s['restarts']} restart(s)" if s["restarts"] else ""
        name = s["service"].ljust(width)
        console.print(f"  {name}  {s['url'] or '-'}  {state}{restarts}", soft_wrap=True)
        if s["where"]:
            _say_wrapped(s["where"], indent=width + 4)


@app.command()
def history(
    env: str = typer.Argument(..., help="Environment name."),
    limit: int = typer.Option(20, "--limit", "-n", help="How many, newest first."),
    project: Path | None = ProjectOption,
    format: Format = FormatOption,
) -> None:
    """List deployments of an environment, newest first."""
    rows = api.history(_project(project), env, limit)
    if format is Format.json:
        _json([d.to_dict() for d in rows])
        return
    if not rows:
        console.print(f"no deployments to {env} yet")
    marks = {"succeeded": "[green]✓[/]", "running": "[yellow]…[/]"}
    for d in rows:
        # A short list, not a table: it reads the same at 80 columns, in a log and in a pipe.
        took = f" in {d.duration_seconds:.1f}s" if d.duration_seconds is not None else ""
        started = d.started_at.replace("T", " ")[:16]
        mark = marks.get(d.status, "[red]✗[/]")
        status = d.status.replace("_", " ")
        console.print(f"{mark} {escape(d.version)} {d.kind} {status}{took}, {started} UTC")
        console.print(f"    {d.id}, release {d.release_id}")
        if d.reason:
            _say_wrapped(f"why: {d.reason}", indent=4)


@app.command()
def logs(
    env: str = typer.Argument(..., help="Environment name."),
    service: str = typer.Argument(..., help="Service name."),
    lines: int = typer.Option(100, "--lines", "-n", help="How many of the last lines."),
    project: Path | None = ProjectOption,
) -> None:
    """Print the last lines of a service's log (secret values are masked)."""
    for line in api.logs(_project(project), env, service, lines):
        sys.stdout.write(line + "\n")


@env_app.command("stop")
def env_stop(
    env: str = typer.Argument(..., help="Environment name."),
    project: Path | None = ProjectOption,
) -> None:
    """Stop every service process and the agent of an environment."""
    if api.stop_env(_project(project), env):
        console.print(f"[green]✓[/] stopped everything in {env}")
    else:
        console.print(f"nothing was running in {env}")


@app.command()
def demo(
    keep: bool = typer.Option(False, "--keep", help="Keep the temporary workspace."),
    fleet: bool = typer.Option(
        False,
        "--fleet",
        help="On three SSH test hosts built on this machine (Linux, root) instead of locally: "
        "services on two or three hosts each, traffic to every host.",
    ),
    format: Format = FormatOption,
) -> None:
    """Deploy the Phoenix example: v1 to staging and production, v2, then a bad v3 rolled back."""
    progress = None if format is Format.json else errors
    if fleet:
        from airlock.demo import render_fleet_summary, run_fleet_demo

        on_fleet = run_fleet_demo(keep=keep, progress=progress)
        if format is Format.json:
            _json(on_fleet.to_dict())
        else:
            render_fleet_summary(on_fleet, console)
        if not on_fleet.passed:
            raise typer.Exit(1)
        return
    from airlock.demo import render_summary, run_demo

    summary = run_demo(keep=keep, progress=progress)
    if format is Format.json:
        _json(summary.to_dict())
    else:
        render_summary(summary, console)
    if not summary.passed:
        raise typer.Exit(1)


# -- database ----------------------------------------------------------------------------------

db_app = typer.Typer(
    help="PostgreSQL migrations, drift, lint, rehearsal, backups (an environment or a URL).",
    no_args_is_help=True,
)
app.add_typer(db_app, name="db")

EnvArgument = typer.Argument(None, help="Environment (or use --database-url).")
UrlOption = typer.Option(
    None,
    "--database-url",
    help="postgresql:// URL, instead of an environment.",
    envvar="AIRLOCK_DATABASE_URL",
)
MigrationsOption = typer.Option(None, "--migrations", help="Migrations folder (V/U/R files).")
KeyEnvOption = typer.Option(
    None, "--key-env", help="Environment variable holding the backup key (base64, hex or text)."
)


def _target(
    env: str | None,
    database_url: str | None,
    migrations: Path | None,
    project: Path | None,
    **overrides: object,
) -> Any:
    from airlock.db import api as db

    return db.target(
        _project(project), env, database_url=database_url, migrations=migrations, **overrides
    )


def _record_database(
    project: Path | None, env: str | None, kind: str, data: dict[str, Any], *, dry_run: bool = False
) -> None:
    """The audit entry of a change ``airlock db`` made to an environment's database."""
    if env is not None and not dry_run:  # a standalone --database-url belongs to no project
        api.record_database_change(_project(project), env, kind, data)


def _steps_table(report: dict[str, Any]) -> None:
    if not report["steps"]:
        console.print("  nothing to do: the database is up to date")
        return
    table = Table("migration", "result", "seconds", "locks")
    for step in report["steps"]:
        colour = "green" if step["outcome"] in {"applied", "planned"} else "red"
        table.add_row(
            step["script"],
            f"[{colour}]{step['outcome']}[/]",
            f"{step['seconds']:.3f}",
            ", ".join(step["locks"]) or "-",
        )
    console.print(table)


@db_app.command("status")
def db_status(
    env: str | None = EnvArgument,
    database_url: str | None = UrlOption,
    migrations: Path | None = MigrationsOption,
    project: Path | None = ProjectOption,
    format: Format = FormatOption,
) -> None:
    """Applied and pending migrations, and whether the files still match the history."""
    from airlock.db import api as db

    data = db.status(_target(env, database_url, migrations, project))
    if format is Format.json:
        _json(data)
        return
    console.print(f"[bold]{data['database']}[/]")
    for item in data["applied"]:
        console.print(
            f"  [green]✓[/] {item['script']} ({item['applied_at']}, {item['duration_ms']} ms)"
        )
    for item in data["pending"]:
        partly = item.get("completed_statements")
        state = f"pending, {partly} statement(s) done" if partly else "pending"
        console.print(f"  [yellow]…[/] {item['script']} ({state})")
    for finding in data["findings"]:
        console.print(f"  [red]✗ {finding['code']}[/] {escape(finding['message'])}")
    _notes(data.get("notes", []))
    if data["findings"]:
        raise typer.Exit(1)


def _notes(notes: list[str]) -> None:
    for note in notes:
        console.print(f"  [dim]note: {escape(note)}[/]")


@db_app.command("validate")
def db_validate(
    env: str | None = EnvArgument,
    database_url: str | None = UrlOption,
    migrations: Path | None = MigrationsOption,
    project: Path | None = ProjectOption,
    format: Format = FormatOption,
) -> None:
    """Refuse edited, missing and out-of-order migrations (exit 1 on a finding)."""
    from airlock.db import api as db

    findings = db.validate(_target(env, database_url, migrations, project))
    if format is Format.json:
        _json({"findings": [f.to_dict() for f in findings]})
    else:
        _render_findings(findings)
    if findings:
        raise typer.Exit(1)


@db_app.command("migrate")
def db_migrate(
    env: str | None = EnvArgument,
    database_url: str | None = UrlOption,
    migrations: Path | None = MigrationsOption,
    project: Path | None = ProjectOption,
    dry_run: bool = typer.Option(False, "--dry-run", help="Show what would run; change nothing."),
    allow_out_of_order: bool = typer.Option(
        False, "--allow-out-of-order", help="Apply pending versions below the latest applied."
    ),
    lock_wait: float | None = typer.Option(
        None, "--lock-wait", help="Seconds to wait for another migrator."
    ),
    lock_timeout: float | None = typer.Option(
        None, "--lock-timeout", help="Seconds a statement may wait for a table lock."
    ),
    statement_timeout: float | None = typer.Option(
        None, "--statement-timeout", help="Seconds a statement may run (0: no limit)."
    ),
    no_snapshot: bool = typer.Option(False, "--no-snapshot", help="Skip the snapshot."),
    no_lint: bool = typer.Option(False, "--no-lint", help="Apply despite lint errors."),
    key_env: str | None = KeyEnvOption,
    format: Format = FormatOption,
) -> None:
    """Validate, check drift, lint, snapshot, then apply pending migrations under a lock."""
    from airlock.db import api as db

    target = _target(
        env,
        database_url,
        migrations,
        project,
        lock_wait=lock_wait,
        lock_timeout=lock_timeout,
        statement_timeout=statement_timeout,
        allow_out_of_order=allow_out_of_order or None,
    )
    quiet = format is Format.json
    outcome = db.migrate(
        target,
        dry_run=dry_run,
        snapshot=not no_snapshot,
        key_env=key_env,
        check_lint=not no_lint,
        progress=None if quiet else lambda t: errors.print(f"  {t}"),
    )
    data = outcome.to_dict()
    _record_database(project, env, "migration.applied", data, dry_run=dry_run)
    if quiet:
        _json(data)
        return
    console.print(f"[bold]{data['database']}[/]")
    _steps_table(data)
    _notes(data["notes"])
    if outcome.snapshot:
        console.print(f"  snapshot: {outcome.snapshot['path']}")
    for finding in outcome.lint:
        console.print(f"  [yellow]{finding.code}[/] {finding.location}: {escape(finding.message)}")


@db_app.command("drift")
def db_drift(
    env: str | None = EnvArgument,
    database_url: str | None = UrlOption,
    migrations: Path | None = MigrationsOption,
    project: Path | None = ProjectOption,
    accept: bool = typer.Option(False, "--accept", help="Take the live schema as the baseline."),
    reason: str = typer.Option("", "--reason", help="Why the drift is accepted (recorded)."),
    format: Format = FormatOption,
) -> None:
    """Compare the live schema with the one recorded after the last migrate (exit 1 on drift)."""
    from airlock.db import api as db

    target = _target(env, database_url, migrations, project)
    if accept:
        digest = db.accept_drift(target, reason)
        if format is Format.json:
            _json({"accepted": True, "fingerprint": digest})
        else:
            console.print(f"[green]✓[/] the live schema is the new baseline ({digest[:12]})")
        return
    found = db.drift(target)
    data = db.drift_summary(found)
    if format is Format.json:
        _json(data)
    elif found is None:
        console.print("no schema recorded yet: the first migrate records one")
    elif found.empty:
        console.print("[green]✓[/] no drift: the schema is as Airlock left it")
    else:
        console.print("[red]✗ migration.drift[/]: the schema was changed outside Airlock")
        for line in found.lines():
            console.print(f"  {escape(line)}")
    if data["drift"]:
        raise typer.Exit(1)


@db_app.command("lint")
def db_lint(
    env: str | None = EnvArgument,
    database_url: str | None = UrlOption,
    migrations: Path | None = MigrationsOption,
    project: Path | None = ProjectOption,
    every: bool = typer.Option(False, "--all", help="Lint every file, not only pending ones."),
    format: Format = FormatOption,
) -> None:
    """Flag migrations that lock or rewrite tables, with the safe alternative (exit 1 on error)."""
    from airlock.db import api as db

    if env is None and database_url is None:
        folder = migrations or db.project_migrations(_project(project))
        if folder is None:
            raise typer.BadParameter("pass --migrations DIR")
        findings = db.lint(None, folder, every=True)
    else:
        findings = db.lint(_target(env, database_url, migrations, project), every=every)
    if format is Format.json:
        _json({"findings": [f.to_dict() for f in findings]})
    else:
        _render_findings(findings)
    if has_errors(findings):
        raise typer.Exit(1)


@db_app.command("rehearse")
def db_rehearse(
    env: str | None = EnvArgument,
    database_url: str | None = UrlOption,
    migrations: Path | None = MigrationsOption,
    project: Path | None = ProjectOption,
    method: str = typer.Option("auto", "--method", help="auto, template or dump."),
    format: Format = FormatOption,
) -> None:
    """Apply pending migrations to a clone of the database: time, result and locks of each."""
    from airlock.db import api as db

    if method not in {"auto", "template", "dump"}:
        raise typer.BadParameter("--method is auto, template or dump")
    result = db.rehearse(_target(env, database_url, migrations, project), method=method)  # type: ignore[arg-type]
    data = result.to_dict()
    if format is Format.json:
        _json(data)
    else:
        console.print(
            f"[bold]rehearsal on a clone of {data['database']}[/] "
            f"({data['clone_method']} copy, {data['clone_seconds']:.2f}s)"
        )
        _steps_table(data)
        if result.error:
            console.print(f"[red]✗[/] {escape(result.error)}")
        console.print("  the clone was dropped")
    if not result.ok:
        raise typer.Exit(1)


@db_app.command("undo")
def db_undo(
    env: str | None = EnvArgument,
    database_url: str | None = UrlOption,
    migrations: Path | None = MigrationsOption,
    project: Path | None = ProjectOption,
    steps: int = typer.Option(1, "--steps", help="How many versions to undo."),
    to: str | None = typer.Option(None, "--to", help="Undo every version above this one."),
    format: Format = FormatOption,
) -> None:
    """Run U files for the latest applied versions, newest first."""
    from airlock.db import api as db

    report = db.undo(_target(env, database_url, migrations, project), steps=steps, to=to)
    _record_database(project, env, "migration.undone", report.to_dict())
    if format is Format.json:
        _json(report.to_dict())
    else:
        _steps_table(report.to_dict())


@db_app.command("baseline")
def db_baseline(
    env: str | None = EnvArgument,
    database_url: str | None = UrlOption,
    migrations: Path | None = MigrationsOption,
    project: Path | None = ProjectOption,
    version: str | None = typer.Option(
        None, "--version", help="Record the files up to this version as applied, unrun."
    ),
    from_flyway: bool = typer.Option(
        False, "--from-flyway", help="Record what Flyway's history table says it applied."
    ),
    flyway_table: str = typer.Option(
        "flyway_schema_history", "--flyway-table", help="Flyway's table ([schema.]name)."
    ),
    format: Format = FormatOption,
) -> None:
    """Adopt a database another tool migrated (like Flyway's baseline); changes nothing on error."""
    from airlock.db import api as db

    report = db.baseline(
        _target(env, database_url, migrations, project),
        version=version,
        from_flyway=from_flyway,
        flyway_table=flyway_table,
    )
    data = report.to_dict()
    _record_database(project, env, "migration.baselined", data)
    if format is Format.json:
        _json(data)
        return
    console.print(f"[bold]{data['database']}[/]")
    kinds = {"BASELINE": "baselined", "V": "applied by Flyway", "R": "repeatable, unchanged"}
    for row in data["recorded"]:
        console.print(f"  [green]✓[/] {row['script']} ({kinds.get(row['type'], row['type'])})")
    for finding in report.findings:
        console.print(f"  [yellow]! {finding.code}[/] {escape(finding.message)}")
    for script in data["pending"]:
        console.print(f"  [yellow]…[/] {script} (pending: the next migrate applies it)")
    _notes(data["notes"])
    console.print(
        f"  recorded {len(data['recorded'])} migration(s) as applied"
        + (f", up to version {data['baseline_version']}" if data["baseline_version"] else "")
        + f"; schema fingerprint {str(data['fingerprint'])[:12]}"
    )


@db_app.command("backup")
def db_backup(
    env: str | None = EnvArgument,
    database_url: str | None = UrlOption,
    project: Path | None = ProjectOption,
    output: Path = typer.Option(..., "--output", "-o", help="Where to write the backup."),
    key_env: str | None = KeyEnvOption,
    format: Format = FormatOption,
) -> None:
    """Encrypted, streamed backup, restored into a scratch database and verified."""
    from airlock.db import api as db

    data = db.backup(_target(env, database_url, None, project), output, key_env=key_env)
    if format is Format.json:
        _json(data)
    else:
        console.print(f"[green]✓[/] backup written and verified: {output}")


@db_app.command("restore")
def db_restore(
    backup: Path = typer.Argument(..., help="The backup file."),
    env: str | None = typer.Option(None, "--env", help="Environment to restore into."),
    database_url: str | None = UrlOption,
    project: Path | None = ProjectOption,
    force: bool = typer.Option(False, "--force", help="Replace a database that holds data."),
    key_env: str | None = KeyEnvOption,
    format: Format = FormatOption,
) -> None:
    """Verify a backup, then restore it; a database with data needs --force."""
    from airlock.db import api as db

    data = db.restore(
        _target(env, database_url, None, project), backup, key_env=key_env, force=force
    )
    _record_database(project, env, "database.restored", {**data, "backup": str(backup)})
    if format is Format.json:
        _json(data)
    else:
        console.print(f"[green]✓[/] restored {backup} and verified it")


# -- committed secrets -------------------------------------------------------------------------

secrets_app = typer.Typer(
    help="Committed secrets: scan, and the reviewed baseline.", no_args_is_help=True
)
app.add_typer(secrets_app, name="secrets")


@secrets_app.command("scan")
def secrets_scan(
    path: Path = typer.Argument(Path("."), help="A folder inside the git repository."),
    staged: bool = typer.Option(False, "--staged", help="Only what is staged (for a hook)."),
    history: bool = typer.Option(True, "--history/--no-history", help="Scan the git history."),
    format: Format = FormatOption,
) -> None:
    """Scan for committed secrets (keys, tokens, passwords); values are never printed.

    Exits 1 when a secret not in the baseline is found.
    """
    result = api.scan_secrets(path, staged=staged, history=history)
    if format is Format.json:
        _json(
            {
                "findings": [f.to_dict() for f in result.findings],
                "silenced_by_baseline": result.silenced,
                "scanned": result.scanned,
            }
        )
    else:
        _render_findings(result.findings)
        if result.silenced:
            console.print(f"  ({result.silenced} reviewed secret(s) silenced by the baseline)")
    if has_errors(result.findings):
        raise typer.Exit(1)


@secrets_app.command("baseline")
def secrets_baseline(
    path: Path = typer.Argument(Path("."), help="A folder inside the git repository."),
    reason: str = typer.Option(..., "--reason", help="Why these findings are acceptable."),
    format: Format = FormatOption,
) -> None:
    """Record every current secret finding as reviewed in .airlock/secrets-baseline.json."""
    written, count = api.write_secrets_baseline(path, reason=reason)
    if format is Format.json:
        _json({"baseline": str(written), "entries": count})
    else:
        console.print(f"[green]✓[/] {count} reviewed finding(s) recorded in {written}")


# -- release gates and go/no-go ----------------------------------------------------------------


class ReportFormat(StrEnum):
    text = "text"
    json = "json"
    markdown = "markdown"
    html = "html"


def _say(quiet: bool) -> Any:
    def say(text: str) -> None:
        if not quiet:
            errors.print(f"[dim]  … {escape(text)}[/]")

    return say


def _render_outcome(outcome: GateOutcome) -> None:
    mark = {"pass": "[green]✓ pass[/]", "fail": "[red]✗ fail[/]", "skipped": "[dim]– skipped[/]"}
    console.print(
        f"{mark[outcome.status.value]}  [bold]{outcome.gate}[/]: {escape(outcome.summary)}"
    )
    for finding in outcome.findings:
        where = f" ({finding.location})" if finding.location else ""
        console.print(
            f"    {finding.severity.value} [bold]{finding.code}[/] "
            f"{escape(finding.message)}{escape(where)}"
        )
        if finding.hint and outcome.status.value == "fail":
            console.print(f"      hint: {escape(finding.hint)}")


def _gate_result(outcome: GateOutcome, format: Format) -> None:
    if format is Format.json:
        _json(outcome.to_dict())
    else:
        _render_outcome(outcome)
        figures = {
            k: v
            for k, v in outcome.evidence.items()
            if isinstance(v, int | float | str) and v != ""
        }
        if figures:
            console.print("    " + ", ".join(f"{k}={v}" for k, v in figures.items()))
    if not outcome.passed:
        raise typer.Exit(1)


@gate_app.command("load")
def gate_load(
    env: str = typer.Argument(..., help="Environment where the release to test serves."),
    project: Path | None = ProjectOption,
    format: Format = FormatOption,
) -> None:
    """Load-test the running release with Locust and compare P50/P95/P99 and the error rate
    with gates.load; the figures are stored with the release. Exits 1 on a miss."""
    outcome = api.gate_load(_project(project), env, progress=_say(format is Format.json))
    _gate_result(outcome, format)


@gate_app.command("logs")
def gate_logs(
    release: str | None = typer.Option(None, "--release", "-r", help="Default: the newest."),
    project: Path | None = ProjectOption,
    format: Format = FormatOption,
) -> None:
    """Scan the release's log lines (rehearsal and bake, every environment) for card numbers,
    e-mail addresses and gates.logs patterns. Values are never shown. Exits 1 on a finding."""
    _gate_result(api.gate_logs(_project(project), release), format)


@gate_app.command("ci")
def gate_ci(
    release: str | None = typer.Option(None, "--release", "-r", help="Default: the newest."),
    project: Path | None = ProjectOption,
    format: Format = FormatOption,
) -> None:
    """Require a passing CI result (gates.ci) for the exact commit the release was sealed
    from; says how long CI has been red. Exits 1 otherwise."""
    _gate_result(api.gate_ci(_project(project), release), format)


@app.command()
def gonogo(
    env: str = typer.Argument(..., help="Environment the release is going to."),
    release: str | None = typer.Option(None, "--release", "-r", help="Default: the newest."),
    project: Path | None = ProjectOption,
    format: ReportFormat = typer.Option(
        ReportFormat.text, "--format", "-f", help="Output format of the report."
    ),
) -> None:
    """Run or collect every gate (static check, migrations lint and rehearsal, load, posture,
    logs, CI) and write the go/no-go report, stored with the release (Markdown, HTML, JSON).

    GO only when every gate passes; a gate that cannot decide fails. Exits 1 on NO-GO.
    """
    report = api.gonogo(
        _project(project), env, release, progress=_say(format is not ReportFormat.text)
    )
    if format is ReportFormat.json:
        _json(report.to_dict())
    elif format is ReportFormat.markdown:
        sys.stdout.write(report.to_markdown())
    elif format is ReportFormat.html:
        sys.stdout.write(report.to_html())
    else:
        colour = "green" if report.go else "red"
        console.print(
            f"[bold]Go/no-go[/] {report.version} ({report.release_id[:12]}) → {env}: "
            f"[bold {colour}]{report.verdict}[/]"
        )
        for outcome in report.gates:
            _render_outcome(outcome)
        console.print(f"  report: {report.files.get('markdown')} (also .html, .json)")
        if report.go and report.approvals_required:
            console.print(
                f"  {env} needs {report.approvals_required} approval(s): "
                f"`airlock approve {env} --release {report.release_id[:12]}`"
            )
    if not report.go:
        raise typer.Exit(1)


@app.command()
def approve(
    env: str = typer.Argument(..., help="Environment name."),
    release: str = typer.Option(..., "--release", "-r", help="The release approved."),
    by: str | None = typer.Option(None, "--by", help="Who approves (default: user@host)."),
    note: str | None = typer.Option(None, "--note", help="A note kept with the approval."),
    project: Path | None = ProjectOption,
    format: Format = FormatOption,
) -> None:
    """Approve a release's GO report for an environment with `approvals: N`."""
    data = api.approve(_project(project), env, release, approver=by, note=note)
    if format is Format.json:
        _json(data)
        return
    console.print(
        f"[green]✓[/] {data['approver']} approved {data['release_id'][:12]} for {env} "
        f"({data['approvals']} of {data['required']} approval(s))"
    )


@app.command("codes")
def codes() -> None:
    """List every finding code with what it means."""
    for code, meaning in sorted(api.codes().items()):
        console.print(f"[bold]{code}[/]  {meaning}")


class MetricsFormat(StrEnum):
    text = "text"
    json = "json"
    prometheus = "prometheus"


class LeadTimeDefinition(StrEnum):
    first_commit = "first-commit"
    merge = "merge"


def _span(seconds: float) -> str:
    """A duration for people: seconds, minutes, hours or days."""
    if abs(seconds) < 120:
        return f"{seconds:.1f} s"
    if abs(seconds) < 2 * 3600:
        return f"{seconds / 60:.1f} min"
    if abs(seconds) < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def _figure(name: str, value: str, cluster: str | None = None) -> None:
    """One figure of `airlock metrics`: its name, its value and its DORA cluster, in columns."""
    label = f"[dim]{cluster}[/]" if cluster else ""
    console.print(f"  {name:<28} {value:<40} {label}".rstrip(), soft_wrap=True)


@app.command("metrics")
def metrics_command(
    env: str | None = typer.Argument(None, help="Environment name (default: every one)."),
    since: str | None = typer.Option(
        None, "--since", help="A date (2024-05-01) or a duration back from now (30d, 12h, 4w)."
    ),
    lead_time: LeadTimeDefinition = typer.Option(
        LeadTimeDefinition.first_commit,
        "--lead-time",
        help="From each commit's author time (first-commit) or from the release HEAD's commit "
        "time (merge).",
    ),
    project: Path | None = ProjectOption,
    format: MetricsFormat = typer.Option(
        MetricsFormat.text, "--format", "-f", help="Output format."
    ),
) -> None:
    """Delivery metrics from Airlock's own records: deployment frequency, lead time, change
    failure rate, recovery time, rollback rate and time to detect, per environment."""
    results = api.metrics(_project(project), env, since, lead_time=lead_time.value)
    if format is MetricsFormat.json:
        _json([r.to_dict() for r in results])
        return
    if format is MetricsFormat.prometheus:
        from airlock.metrics import to_prometheus

        sys.stdout.write(to_prometheus(results))
        return
    if not results:
        console.print("no environments yet")
        return
    for r in results:
        since_text = r.since.strftime("%Y-%m-%d %H:%M")
        console.print(
            f"[bold]{escape(r.env)}[/]  since {since_text} UTC, {r.deployments} deploy(s)"
        )
        if r.empty:
            for note in r.notes:
                _say_wrapped(note, indent=2)
            continue
        cluster = r.cluster
        _figure(
            "deployment frequency",
            f"{r.deployment_frequency_per_week:.2f} a week",
            cluster["deployment_frequency_per_week"],
        )
        if r.lead_time_median_hours is not None and r.lead_time_p90_hours is not None:
            lead = (
                f"median {_span(r.lead_time_median_hours * 3600)}, "
                f"p90 {_span(r.lead_time_p90_hours * 3600)} ({r.lead_time_samples})"
            )
        else:
            lead = "not measured"
        _figure(f"lead time ({r.lead_time_definition})", lead, cluster["lead_time_hours"])
        failed = len(r.evidence["change_failure_rate"]["failed"])
        rate = r.change_failure_rate or 0.0
        _figure(
            "change failure rate",
            f"{rate:.0%} ({failed} of {r.deployments})",
            cluster["change_failure_rate"],
        )
        recovery = (
            f"median {_span(r.recovery_median_minutes * 60)} ({r.recovery_samples})"
            if r.recovery_median_minutes is not None
            else "no failure recovered"
        )
        _figure("failed deployment recovery", recovery, cluster["recovery_minutes"])
        _figure("rollback rate", f"{r.rollback_rate or 0.0:.2f} per deploy")
        detect = (
            f"median {_span(r.detect_median_seconds)} ({r.detect_samples})"
            if r.detect_median_seconds is not None
            else "no failure detected"
        )
        _figure("time to detect", detect)
        for note in r.notes:
            _say_wrapped(f"note: {note}", indent=2)
    console.print(
        "clusters: DORA 2024 (see docs/metrics.md); `--format json` names the deployments, "
        "releases and commits behind each figure"
    )


# -- the audit log -----------------------------------------------------------------------------

audit_app = typer.Typer(
    help="The tamper-evident audit log: show, verify, checkpoints and inclusion proofs.",
    no_args_is_help=True,
)
app.add_typer(audit_app, name="audit")

PublicKeyOption = typer.Option(
    None,
    "--public-key",
    help="The public key checkpoints must be signed with (base64, or a file holding it); "
    "default: the project's audit key.",
)


def _short(value: Any, length: int = 12) -> str:
    return str(value)[:length] if value else "-"


def _audit_summary(entry: dict[str, Any]) -> str:
    """One sentence for an audit entry, from its payload."""
    kind, p = entry["kind"], entry["payload"]
    if not isinstance(p, dict):
        return f"(payload not JSON) {p}"
    release = f"{p.get('version') or ''} ({_short(p.get('release'))})".strip()
    if kind == "release.sealed":
        commit = f", commit {_short(p.get('commit'))}" if p.get("commit") else ""
        dirty = ", with uncommitted changes" if p.get("dirty") else ""
        return f"sealed {release}, {p.get('files')} file(s){commit}{dirty}"
    if kind.endswith(".started"):
        return f"{kind.split('.')[0]} of {release} began; took the lock ({p.get('deployment')})"
    if kind.endswith(".finished"):
        took = f" in {p['seconds']:.1f}s" if isinstance(p.get("seconds"), int | float) else ""
        why = f": {p['reason']}" if p.get("reason") else ""
        status = str(p.get("status")).replace("_", " ")
        return f"{kind.split('.')[0]} of {release} {status}{took}{why}"
    if kind == "resume":
        lock = p.get("lock") or {}
        return (
            f"took over deployment {p.get('deployment')} from {lock.get('broken_from')} "
            f"(its lease expired {lock.get('lease_expired_at')})"
        )
    if kind == "lock.broken":
        return f"removed the stale lock of {p.get('deployment')} held by {p.get('holder')}"
    if kind == "migration.applied":
        return f"applied {', '.join(map(str, p.get('applied') or []))} ({p.get('deployment')})"
    if kind == "override":
        missing = "; ".join(map(str, p.get("missing") or []))
        return f"deployed {p.get('deployment')} without {missing}, because: {p.get('reason')}"
    if kind == "deploy.approved":
        approvers = ", ".join(map(str, p.get("approvers") or [])) or "nobody"
        report = p.get("report")
        return f"{p.get('deployment')} went out on report {report}, approved by {approvers}"
    if kind == "gate.run":
        verdict = "passed" if p.get("passed") else "failed"
        summary = f": {p['summary']}" if p.get("summary") else ""
        return f"{p.get('gate')} gate {verdict} for {_short(p.get('release'))}{summary}"
    if kind == "gonogo.report":
        return f"go/no-go report {p.get('run')}: {p.get('verdict')} for {_short(p.get('release'))}"
    if kind == "approval":
        note = f': "{p["note"]}"' if p.get("note") else ""
        return (
            f"{p.get('approver')} approved {_short(p.get('release'))} "
            f"(report {p.get('report')}){note}"
        )
    return json.dumps(p, sort_keys=True)


@audit_app.command("show")
def audit_show(
    env: str | None = typer.Option(None, "--env", help="Only this environment's entries."),
    limit: int = typer.Option(50, "--limit", "-n", help="How many, newest first."),
    project: Path | None = ProjectOption,
    format: Format = FormatOption,
) -> None:
    """List the audit log's entries, newest first: when, who, where, what."""
    entries = api.audit_show(_project(project), env, limit)
    if format is Format.json:
        _json(entries)
        return
    if not entries:
        console.print("the audit log is empty" + (f" for {env}" if env else ""))
    for entry in entries:
        # A short list, not a table: it reads the same at 80 columns, in a log and in a pipe.
        when = str(entry["at"]).replace("T", " ")[:19]
        where = f"  {entry['env']}" if entry["env"] else ""
        console.print(
            f"[bold]#{entry['seq']}[/] {when} UTC{escape(where)}  {escape(str(entry['kind']))}",
            soft_wrap=True,
        )
        _say_wrapped(f"{entry['actor']}: {_audit_summary(entry)}", indent=4)


@audit_app.command("verify")
def audit_verify(
    checkpoint: Path | None = typer.Option(
        None, "--checkpoint", help="A checkpoint (ideally a copy kept elsewhere) to hold it to."
    ),
    public_key: str | None = PublicKeyOption,
    project: Path | None = ProjectOption,
    format: Format = FormatOption,
) -> None:
    """Recompute every entry's hash from its stored columns; with a checkpoint, also its Merkle
    root. Names the first entry that does not verify; exits 1 when one does not."""
    report = api.audit_verify(_project(project), checkpoint=checkpoint, public_key=public_key)
    if format is Format.json:
        _json(report)
    elif report["ok"]:
        log_id = f", log id {_short(report['log_id'], 16)}" if report["log_id"] else ""
        console.print(f"[green]✓[/] the audit log verifies: {report['entries']} entries{log_id}")
        held = report["checkpoint"]
        if held:
            _say_wrapped(
                f"and matches the checkpoint {held['file']} ({held['size']} entries, signed "
                f"{held['at']} with key {held['key_id']})",
                indent=2,
            )
        elif report["newest_checkpoint"]:
            _say_wrapped(
                "the chain alone cannot show a removed tail: check against a checkpoint, "
                f"e.g. --checkpoint {report['newest_checkpoint']}",
                indent=2,
            )
    else:
        console.print("[red]✗[/] the audit log does not verify")
        _say_wrapped(str(report["problem"]), indent=2)
    if not report["ok"]:
        raise typer.Exit(1)


@audit_app.command("checkpoint")
def audit_checkpoint(project: Path | None = ProjectOption, format: Format = FormatOption) -> None:
    """Sign a checkpoint of the audit log now (each deploy's end writes one too)."""
    written = api.audit_checkpoint(_project(project))
    if format is Format.json:
        _json(written)
    elif written is None:
        console.print("the audit log is empty: nothing to sign yet")
    else:
        console.print(f"[green]✓[/] signed a checkpoint of {written['size']} entries")
        _say_wrapped(f"{written['file']} (key {written['key_id']})", indent=2)


@audit_app.command("key")
def audit_key(project: Path | None = ProjectOption, format: Format = FormatOption) -> None:
    """Show the audit signing key's path and public key (created on first use)."""
    data = api.audit_key(_project(project))
    if format is Format.json:
        _json(data)
        return
    made = " (created now)" if data["created"] else ""
    _say_wrapped(f"signing key: {data['path']}{made}", indent=0)
    console.print(f"public key:  {data['public_key']}", soft_wrap=True)
    console.print(f"key id:      {data['key_id']}")


@audit_app.command("proof")
def audit_proof(
    seq: int = typer.Argument(..., help="The entry's number."),
    output: Path | None = typer.Option(None, "--output", "-o", help="Write the proof here."),
    project: Path | None = ProjectOption,
    format: Format = FormatOption,
) -> None:
    """An RFC 6962 inclusion proof of entry N against the newest checkpoint, checkable with
    the proof file and the public key alone (`airlock audit verify-proof`)."""
    proof = api.audit_proof(_project(project), seq)
    if output is not None:
        output.write_text(json.dumps(proof, indent=2) + "\n", encoding="utf-8")
    if format is Format.json:
        if output is None:
            _json(proof)
        return
    checkpoint = proof["checkpoint"]
    console.print(
        f"[green]✓[/] entry {seq} ({escape(proof['entry']['kind'])}) is in the signed log of "
        f"{proof['tree_size']} entries"
    )
    _say_wrapped(
        f"checkpoint signed {checkpoint['at']} with key {checkpoint['key_id']}; audit path: "
        f"{len(proof['path'])} hash(es)",
        indent=2,
    )
    if output is not None:
        _say_wrapped(
            f"written to {output}; check it with `airlock audit verify-proof {output} "
            f"--public-key {checkpoint['public_key']}`",
            indent=2,
        )
    else:
        _say_wrapped("save it with --output FILE (or --format json)", indent=2)


@audit_app.command("verify-proof")
def audit_verify_proof(
    proof: Path = typer.Argument(..., help="A proof file from `airlock audit proof`."),
    public_key: str | None = PublicKeyOption,
    project: Path | None = ProjectOption,
    format: Format = FormatOption,
) -> None:
    """Check an inclusion proof with the proof file and the public key alone; exits 1 when it
    does not hold."""
    result = api.audit_verify_proof(proof, public_key=public_key, project=_project(project))
    if format is Format.json:
        _json(result)
    elif result["ok"]:
        console.print(
            f"[green]✓[/] entry {result['seq']} ({escape(result['kind'])}) is in the audit log "
            f"of {result['tree_size']} entries"
        )
        _say_wrapped(
            f"signed with key {result['key_id']}, log id {result['log_id'][:16]}", indent=2
        )
    else:
        console.print("[red]✗[/] the proof does not hold")
        for problem in result["problems"]:
            _say_wrapped(problem, indent=2)
    if not result["ok"]:
        raise typer.Exit(1)


# ---------------------------------------------------------------------------------------------


@app.command()
def preflight(
    env: str = typer.Argument(..., help="Environment to check."),
    release: str | None = typer.Option(None, "--release", "-r", help="Default: the newest."),
    project: Path | None = ProjectOption,
    format: Format = FormatOption,
) -> None:
    """Check an environment against what a release needs, from its own hosts: free ports,
    paths to dependencies, outbound destinations, names, settings, files, Python, disk, clock.
    Exits 1 when a check fails."""
    outcome = api.preflight(_project(project), env, release)
    if format is Format.json:
        _gate_result(outcome, format)
        return
    _render_outcome(outcome)
    checks = outcome.evidence.get("checks") or []
    hosts = sorted({str(c["host"]) for c in checks})
    console.print(
        f"    {len(checks)} check(s) on {len(hosts)} host(s): "
        f"{sum(1 for c in checks if c['ok'])} passed; "
        f"release {outcome.evidence.get('release')}, runtime {outcome.evidence.get('runtime')}"
    )
    if not outcome.passed:
        raise typer.Exit(1)


# -- the dashboard -----------------------------------------------------------------------------


@app.command()
def dashboard(
    host: str = typer.Option(
        "127.0.0.1", "--host", help="Address to listen on; off loopback it needs the token."
    ),
    port: int = typer.Option(8321, "--port", min=0, max=65535, help="Port (0: any free one)."),
    token_env: str = typer.Option(
        "AIRLOCK_DASHBOARD_TOKEN",
        "--token-env",
        help="Environment variable holding the token that writes (approve, roll back) need.",
    ),
    project: Path | None = ProjectOption,
) -> None:
    """Serve the web dashboard: environments, the release timeline, each release's evidence,
    delivery metrics and the audit log, updated live; approve and roll back with the token."""
    from airlock.web.serve import serve  # FastAPI and uvicorn load only for this command

    def ready(url: str, writable: bool) -> None:
        console.print(f"dashboard of {_project(project)} at {url} (Ctrl-C stops it)")
        if not writable:
            _say_wrapped(
                f"read-only: set ${token_env} to a secret token to approve and roll back",
                indent=2,
            )
        sys.stdout.flush()

    serve(_project(project), host=host, port=port, token_env=token_env, on_ready=ready)


# -- discover ----------------------------------------------------------------------------------


class DiscoverFormat(StrEnum):
    text = "text"
    json = "json"
    markdown = "markdown"


@app.command()
def discover(
    service: str | None = typer.Argument(None, help="The service to observe."),
    every: bool = typer.Option(False, "--all", help="Every service of the release."),
    env: str | None = typer.Option(
        None,
        "--env",
        "-e",
        help="Environment whose config it runs with (default: the first that is not production).",
    ),
    seconds: float = typer.Option(10.0, "--seconds", "-s", help="How long it is observed."),
    release: str | None = typer.Option(None, "--release", "-r", help="Default: the newest."),
    database_url: str | None = typer.Option(
        None, "--database-url", help="A database for it (default: a closed placeholder port)."
    ),
    project: Path | None = ProjectOption,
    format: DiscoverFormat = typer.Option(
        DiscoverFormat.text, "--format", "-f", help="Output format."
    ),
) -> None:
    """Run a sealed service in a sandbox under strace and record what it needs: the ports it
    listens on, the hosts and ports it connects to, the names it resolves, the settings and
    files it reads; write the requirements documents into the release's reports. Exits 1 when
    a service crashed or never became ready (what was seen is still written)."""
    found, written = api.discover(
        _project(project),
        service,
        env=env,
        seconds=seconds,
        release_ref=release,
        every=every,
        database_url=database_url,
        progress=_say(format is not DiscoverFormat.text),
    )
    if format is DiscoverFormat.json:
        _json(found[0].to_dict() if not every else [d.to_dict() for d in found])
    elif format is DiscoverFormat.markdown:
        release_doc = [p for p in written if p.name == "release.md"]
        if release_doc:
            sys.stdout.write(release_doc[0].read_text(encoding="utf-8"))
        else:
            sys.stdout.write(next(p for p in written if p.suffix == ".md").read_text("utf-8"))
    else:
        for item in found:
            mark = "[green]✓[/]" if item.complete else "[red]✗[/]"
            console.print(f"{mark} [bold]{escape(item.service)}[/] in {escape(item.env)}")
            for entry in item.listen:
                console.print(f"  listens  {entry['protocol']} {entry['address']}:{entry['port']}")
            for entry in item.connect:
                where = entry["address"] + (
                    f":{entry['port']}" if entry["port"] is not None else ""
                )
                name = f"{entry['host']} " if entry.get("host") else ""
                failed = (
                    f" ({entry['failed']}/{entry['seen']} failed: {', '.join(entry['errors'])})"
                    if entry["failed"]
                    else f" ({entry['seen']})"
                )
                console.print(
                    f"  connects {entry['protocol']} {escape(name)}{escape(where)}{failed}"
                )
            for name in item.names:
                console.print(f"  resolves {escape(name)}")
            for var in item.variables:
                given = f", from {var['provided']}" if var.get("provided") else ""
                console.print(f"  reads    ${escape(var['name'])} ({var['how']}{given})")
            for entry in item.files:
                console.print(f"  opens    {escape(entry['path'])} ({entry['mode']})")
            if item.note:
                _say_wrapped(
                    ("incomplete: " if not item.complete else "note: ") + item.note, indent=2
                )
        folder = written[0].parent if written else None
        if folder is not None:
            console.print(f"  reports: {folder}")
    if not all(item.complete for item in found):
        raise typer.Exit(1)


def main(argv: list[str] | None = None) -> None:
    """Entry point: the one place where errors meet the user.

    Usage errors (an unknown option, a missing argument) are reported by the argument parser
    and exit 2; Airlock's own errors print their message and hint and exit with their code.
    """
    try:
        app(args=argv, prog_name="airlock")
    except AirlockError as exc:
        if _settings["debug"]:
            raise
        errors.print(f"[bold red]error:[/] {escape(exc.message)}")
        if exc.hint:
            errors.print(f"  hint: {escape(exc.hint)}")
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        errors.print("interrupted")
        sys.exit(130)
    except Exception:
        traceback.print_exc()
        errors.print(
            "[bold red]internal error:[/] this is a bug in Airlock; please report it with the "
            "traceback above"
        )
        sys.exit(70)


if __name__ == "__main__":
    main()
