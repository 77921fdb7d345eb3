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
    """Check everything that needs no running system: the model, config files, environments
    (parity, cross-environment references, secrets), API contracts, committed secrets.

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
            console.print(f"  rolled back automatically in {result.rollback_seconds:.2f}s; {after}")
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
        console.print(f"{mark} {escape(d.version)} {d.kind} {d.status}{took}, {started} UTC")
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
        console.print(f"  [yellow]…[/] {item['script']} (pending)")
    for finding in data["findings"]:
        console.print(f"  [red]✗ {finding['code']}[/] {escape(finding['message'])}")
    if data["findings"]:
        raise typer.Exit(1)


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
    if quiet:
        _json(data)
        return
    console.print(f"[bold]{data['database']}[/]")
    _steps_table(data)
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
    if format is Format.json:
        _json(report.to_dict())
    else:
        _steps_table(report.to_dict())


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


# ---------------------------------------------------------------------------------------------


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
