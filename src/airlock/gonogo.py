"""Go/no-go: every release gate for one release and one environment, computed, with evidence.

``airlock gonogo ENV [--release ID]`` runs or collects each gate and writes one report:

=============  ==========================================================================
static         ``airlock check --env ENV`` on the sealed project (model, config files, parity,
               secrets, API contracts, committed secrets) — run now
migrations     lint of the migrations pending on ENV's database, and a rehearsal of them on a
               clone of it — run now (skipped without a database)
load           the newest load test of this release (``airlock gate load``, any environment);
               run now when the release serves in ENV and none is recorded
posture        ``environments.ENV.posture`` probed now (TLS, certificate, headers, CORS, …)
logs           the release's lines in every environment's logs (rehearsal and bake)
ci             CI passed for the commit the release was sealed from
=============  ==========================================================================

A gate ``airlock.yaml`` does not configure is *skipped* and shown as such. The report is GO only
when no gate fails, and a gate that cannot decide fails. Reports are kept in the state store and
as Markdown, HTML and JSON files under ``.airlock/releases/ID/reports/``.

An environment with ``approvals: N`` takes a deploy only when its newest go/no-go report for the
release is GO and N different people approved it (``airlock approve``), unless the deploy gives
``--override-reason``, which is journaled with the deployment.
"""

from __future__ import annotations

import asyncio
import getpass
import html
import json
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from airlock.bundle import Bundle, deployed_project, find_release, load_bundle
from airlock.checks.outcome import GateOutcome, Status
from airlock.checks.release_gates import ci_gate
from airlock.checks.release_gates import logs_gate as scan_release_logs
from airlock.errors import AirlockError, GateFailed, StateError, UsageError
from airlock.findings import Finding, Severity
from airlock.model import Project, load_project, require_env
from airlock.state import Approval, GateRun, StateStore, open_state

Progress = Callable[[str], None]

GATES = ("static", "migrations", "load", "posture", "logs", "ci")
GONOGO = "gonogo"


@dataclass
class Report:
    """One go/no-go report."""

    env: str
    release_id: str
    version: str
    generated_at: str
    gates: list[GateOutcome]
    approvals_required: int = 0
    id: int | None = None
    files: dict[str, str] = field(default_factory=dict)

    @property
    def go(self) -> bool:
        return bool(self.gates) and all(outcome.passed for outcome in self.gates)

    @property
    def failing(self) -> str:
        """The gates that fail, e.g. ``load, ci``."""
        return ", ".join(outcome.gate for outcome in self.gates if not outcome.passed)

    @property
    def verdict(self) -> str:
        return "GO" if self.go else "NO-GO"

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "env": self.env,
            "release": self.release_id,
            "version": self.version,
            "generated_at": self.generated_at,
            "verdict": self.verdict,
            "approvals_required": self.approvals_required,
            "gates": [outcome.to_dict() for outcome in self.gates],
            "files": self.files,
        }

    @classmethod
    def from_run(cls, run: GateRun) -> Report:
        body = run.body
        return cls(
            env=run.env,
            release_id=run.release_id,
            version=str(body.get("version", "")),
            generated_at=str(body.get("generated_at", run.at)),
            gates=[GateOutcome.from_dict(item) for item in body.get("gates", [])],
            approvals_required=int(body.get("approvals_required", 0)),
            id=run.id,
            files=dict(body.get("files") or {}),
        )

    # -- rendering -----------------------------------------------------------------------------

    def to_markdown(self) -> str:
        icon = {Status.PASS: "✅ pass", Status.FAIL: "❌ fail", Status.SKIPPED: "➖ skipped"}
        lines = [
            f"# Go/no-go: {self.version} to {self.env} — **{self.verdict}**",
            "",
            f"- Release: `{self.release_id}` ({self.version})",
            f"- Environment: `{self.env}`",
            f"- Generated: {self.generated_at}",
            f"- Approvals required: {self.approvals_required}",
            "",
            "| Gate | Result | Summary |",
            "|---|---|---|",
        ]
        for outcome in self.gates:
            summary = outcome.summary.replace("|", "\\|").replace("\n", " ")
            lines.append(f"| {outcome.gate} | {icon[outcome.status]} | {summary} |")
        for outcome in self.gates:
            if outcome.status is Status.SKIPPED:
                continue
            lines += ["", f"## {outcome.gate}: {outcome.status.value}", "", outcome.summary, ""]
            for finding in outcome.findings:
                where = f" ({finding.location})" if finding.location else ""
                lines.append(
                    f"- **{finding.severity.value}** `{finding.code}`: {finding.message}{where}"
                )
            if outcome.evidence:
                lines += ["", "Evidence:", "", "```json"]
                lines.append(json.dumps(outcome.evidence, indent=2, sort_keys=True, default=str))
                lines.append("```")
        return "\n".join(lines) + "\n"

    def to_html(self) -> str:
        e = html.escape
        colour = {Status.PASS: "#1a7f37", Status.FAIL: "#cf222e", Status.SKIPPED: "#6e7781"}
        rows = "".join(
            f"<tr><td>{e(o.gate)}</td>"
            f'<td style="color:{colour[o.status]};font-weight:bold">{e(o.status.value)}</td>'
            f"<td>{e(o.summary)}</td></tr>"
            for o in self.gates
        )
        details = []
        for outcome in self.gates:
            if outcome.status is Status.SKIPPED:
                continue
            items = "".join(
                f"<li><b>{e(f.severity.value)}</b> <code>{e(f.code)}</code> {e(f.message)}"
                + (f" <small>({e(str(f.location))})</small>" if f.location else "")
                + "</li>"
                for f in outcome.findings
            )
            evidence = json.dumps(outcome.evidence, indent=2, sort_keys=True, default=str)
            details.append(
                f'<section id="{e(outcome.gate)}"><h2>{e(outcome.gate)}: '
                f"{e(outcome.status.value)}</h2><p>{e(outcome.summary)}</p>"
                + (f"<ul>{items}</ul>" if items else "")
                + (f"<pre>{e(evidence)}</pre>" if outcome.evidence else "")
                + "</section>"
            )
        verdict_colour = "#1a7f37" if self.go else "#cf222e"
        return (
            "<!doctype html>\n<html lang=en><head><meta charset=utf-8>"
            f"<title>Go/no-go {e(self.version)} → {e(self.env)}: {self.verdict}</title>"
            "<style>body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;"
            "padding:0 1rem}table{border-collapse:collapse}td,th{border:1px solid #d0d7de;"
            "padding:.3rem .6rem;text-align:left}pre{background:#f6f8fa;padding:.6rem;"
            "overflow:auto}</style></head><body>"
            f"<h1>Go/no-go: {e(self.version)} to {e(self.env)} — "
            f'<span id=verdict style="color:{verdict_colour}">{self.verdict}</span></h1>'
            f"<p>Release <code>{e(self.release_id)}</code>, generated {e(self.generated_at)}, "
            f"approvals required: {self.approvals_required}</p>"
            f"<table><tr><th>Gate</th><th>Result</th><th>Summary</th></tr>{rows}</table>"
            + "".join(details)
            + "</body></html>\n"
        )


# ---------------------------------------------------------------------------------------------
# Running the gates.


def run(
    project_root: Path,
    env: str,
    release_ref: str | None = None,
    *,
    progress: Progress | None = None,
) -> Report:
    """Run or collect every gate for ``release_ref`` (default: the newest) going to ``env``;
    store the report and write its files."""
    say = progress or (lambda _text: None)
    bundle = find_release(project_root, release_ref)
    bundle.verify()
    project = bundle.project
    require_env(project, env)
    steps: list[tuple[str, Callable[[], GateOutcome]]] = [
        ("static", lambda: _static(project, project_root, env)),
        ("migrations", lambda: _migrations(bundle, project_root, env)),
        ("preflight", lambda: _preflight(bundle, project_root, env)),
        ("load", lambda: _load(bundle, project_root, env, say)),
        ("posture", lambda: _posture(project, env)),
        ("logs", lambda: logs_gate(project, project_root, bundle.id)),
        ("ci", lambda: ci_gate(project, project_root, bundle)),
    ]
    outcomes = []
    for name, step in steps:
        say(f"{name}: running")
        outcome = _guarded(name, step)
        say(f"{name}: {outcome.status.value} — {outcome.summary}")
        outcomes.append(outcome)
    report = Report(
        env=env,
        release_id=bundle.id,
        version=bundle.version,
        generated_at=datetime.now(UTC).isoformat(timespec="seconds"),
        gates=outcomes,
        approvals_required=project.environments[env].approvals,
    )
    with open_state(project_root) as store:
        stored = store.record_gate(env, bundle.id, GONOGO, passed=report.go, body=report.to_dict())
        report.id = stored.id
        report.files = _write_files(bundle, report)
        store.update_gate(stored.id, body=report.to_dict())  # now with its id and files
    return report


def _guarded(name: str, step: Callable[[], GateOutcome]) -> GateOutcome:
    """A gate that raises an Airlock error (it cannot decide) fails with the reason."""
    try:
        return step()
    except AirlockError as exc:
        finding = Finding("gonogo.gate-error", Severity.ERROR, exc.message, hint=exc.hint or None)
        return GateOutcome(name, Status.FAIL, f"could not run: {exc.message}", [finding])


def _write_files(bundle: Bundle, report: Report) -> dict[str, str]:
    folder = bundle.path / "reports"
    stem = folder / f"gonogo-{report.env}-{report.id}"
    files = {
        "json": stem.with_suffix(".json"),
        "markdown": stem.with_suffix(".md"),
        "html": stem.with_suffix(".html"),
    }
    report.files = {kind: str(path) for kind, path in files.items()}
    try:
        folder.mkdir(parents=True, exist_ok=True)
        files["json"].write_text(json.dumps(report.to_dict(), indent=2, default=str) + "\n")
        files["markdown"].write_text(report.to_markdown())
        files["html"].write_text(report.to_html())
    except OSError as exc:
        raise StateError(
            f"cannot write the go/no-go report under {folder}: {exc.strerror or exc}",
            hint="check that folder's permissions; the report is also in the state store",
        ) from None
    return report.files


def _static(project: Project, project_root: Path, env: str) -> GateOutcome:
    from airlock.checks.gate import run_gate

    result = run_gate(
        project, root=project_root, envs=[env], deployed={env: deployed_project(project_root, env)}
    )
    warnings = sum(f.severity is Severity.WARNING for f in result.findings)
    ok = "no errors" + (f" ({warnings} warning(s))" if warnings else "")
    return GateOutcome.from_findings(
        "static",
        result.findings,
        ok=ok,
        evidence={"findings": len(result.findings), "silenced_by_baseline": result.silenced},
    )


def _preflight(bundle: Bundle, project_root: Path, env: str) -> GateOutcome:
    """The target checked against what the release needs, from its hosts (TLS is the posture
    gate's)."""
    from airlock.preflight import preflight

    return preflight(project_root, env, bundle.id, tls=False)


def _running_release(project_root: Path, env: str) -> tuple[Bundle | None, str | None]:
    """The sealed release that serves ``env`` now (None when its bundle is not in this working
    copy), and its id (None when nothing was deployed)."""
    with open_state(project_root, readonly=True) as store:
        current = store.current_release(env)
    if current is None:
        return None, None
    try:
        return load_bundle(project_root, current), current
    except AirlockError:
        return None, current


def _migrations(bundle: Bundle, project_root: Path, env: str) -> GateOutcome:
    project = bundle.project
    if project.database is None or not project.database.migrations:
        return GateOutcome.skipped("migrations", "the project has no migrations")
    if project.environments[env].database is None:
        return GateOutcome.skipped("migrations", f"environment {env!r} has no database")
    from airlock.db import api as db
    from airlock.db.target import release_target

    target = release_target(bundle, env, project_root)
    assert target is not None
    scheduled, findings = db.pending_and_lint(target)
    pending = [item["script"] for item in scheduled]
    evidence: dict[str, Any] = {"pending": pending, "database": target.display}
    if not pending:
        return GateOutcome.from_findings(
            "migrations", findings, ok="the schema is up to date", evidence=evidence
        )
    from airlock.db.rehearse import rehearse

    running, current = _running_release(project_root, env)
    before: list[Any] = []
    proofs: list[Any] = []
    refused: list[Finding] = []

    def guarded(step: Callable[[str], None]) -> Callable[[str], None]:
        def run(clone_url: str) -> None:
            if refused:
                return
            try:
                step(clone_url)
            except AirlockError as exc:
                refused.append(
                    Finding(
                        "migration.rollback-unsafe",
                        Severity.ERROR,
                        "could not start the release that runs now on the rehearsal's clone: "
                        + target.masker.mask(exc.message.splitlines()[0]),
                        hint=exc.hint,
                    )
                )

        return run

    def baseline(clone_url: str) -> None:
        from airlock.rollback_proof import observe

        assert target is not None and running is not None
        before.append(
            observe(
                running, env, project_root=project_root, clone_url=clone_url, masker=target.masker
            )
        )

    def prove_rollback(clone_url: str) -> None:
        from airlock.rollback_proof import judge, observe

        assert target is not None and running is not None
        folder = target.require_migrations()
        sources = [(name, (folder / name).read_text(errors="replace")) for name in pending]
        after = observe(
            running, env, project_root=project_root, clone_url=clone_url, masker=target.masker
        )
        proofs.append(judge(running, before[0] if before else None, after, sources))

    rehearsal = rehearse(
        target,
        before_migrate=guarded(baseline) if running is not None else None,
        after_migrate=guarded(prove_rollback) if running is not None else None,
    )
    evidence["rehearsal"] = rehearsal.to_dict()
    if refused:
        findings.extend(refused)
    elif proofs:
        evidence["rollback_proof"] = proofs[0].to_dict()
        findings.extend(proofs[0].findings)
    elif rehearsal.ok and current is not None and running is None:
        from airlock.rollback_proof import unproven

        why = f"its sealed bundle ({current[:12]}) is not in this working copy"
        findings.append(unproven(current[:12], env, why))
        evidence["rollback_proof"] = {"skipped": why}
    elif rehearsal.ok:
        evidence["rollback_proof"] = {"skipped": f"no release runs in {env}: none to roll back to"}
    if not rehearsal.ok:
        findings.append(
            Finding(
                "migration.rehearsal-failed",
                Severity.ERROR,
                f"rehearsal on a clone of {target.display} failed: {rehearsal.error}",
                hint=f"run `airlock db rehearse {env}` for the details",
            )
        )
    return GateOutcome.from_findings(
        "migrations",
        findings,
        ok=f"{len(pending)} pending migration(s) lint clean and rehearsed on a clone "
        f"({rehearsal.clone_method}, {rehearsal.clone_seconds:.1f}s)"
        + (f"; {proofs[0].release} still serves on the migrated schema" if proofs else ""),
        evidence=evidence,
    )


def logs_gate(
    project: Project, project_root: Path, release_id: str, envs: Iterable[str] | None = None
) -> GateOutcome:
    """The logs gate (INC15) over every service log of ``envs`` (default: all environments),
    fetched through each environment's runtime: see :func:`airlock.checks.release_gates.logs_gate`.
    """
    from airlock.runtimes import open_runtime

    if project.gates.logs is None:
        return GateOutcome.skipped("logs", "gates.logs is not configured in airlock.yaml")
    chosen = list(project.environments) if envs is None else list(dict.fromkeys(envs))
    for env in chosen:
        require_env(project, env)

    async def collect() -> dict[str, dict[str, Path]]:
        root = project.root if project_root is None else project_root
        return {env: await open_runtime(project, env, root=root).log_files() for env in chosen}

    return scan_release_logs(project, release_id, asyncio.run(collect()))


def run_load_gate(
    project_root: Path,
    env: str,
    *,
    progress: Progress | None = None,
    record: bool = True,
) -> GateOutcome:
    """Put the services running in ``env`` under load and judge the figures (``gates.load``).

    ``project_root`` is the folder holding ``airlock.yaml`` (or the file itself). Skipped when
    ``gates.load`` is not configured; :class:`UsageError` when nothing is deployed or running in
    ``env``, or when there is nothing to send (no locustfile and no declared ``endpoints``).
    The services are reached at the stable endpoints their runtime gives. With ``record`` the
    outcome is stored with the release deployed in ``env``. Synchronous: call it from async code
    through ``asyncio.to_thread``.
    """
    from airlock.checks.load import GATE, run_load, running_urls
    from airlock.runtimes import open_runtime

    project = load_project(Path(project_root))
    require_env(project, env)
    if project.gates.load is None:
        return GateOutcome.skipped(GATE, "gates.load is not configured in airlock.yaml")
    root = project.root
    with open_state(root) as store:
        release = store.current_release(env)
    deploy_hint = f"deploy first: `airlock deploy {env}`"
    if release is None:
        raise UsageError(f"nothing is deployed in environment {env!r}", hint=deploy_hint)
    runtime = open_runtime(project, env, root=root)
    endpoints = asyncio.run(runtime.endpoints())
    urls = running_urls(project, {name: e.url for name, e in endpoints.items()})
    if not urls:
        raise UsageError(f"no service of {project.project!r} runs in {env!r}", hint=deploy_hint)
    outcome = run_load(project, urls, release=release, progress=progress)
    if record:
        with open_state(root) as store:
            store.record_gate(env, release, GATE, passed=outcome.passed, body=outcome.to_dict())
    return outcome


def _load(bundle: Bundle, project_root: Path, env: str, say: Progress) -> GateOutcome:
    if bundle.project.gates.load is None:
        return GateOutcome.skipped("load", "gates.load is not configured")
    with open_state(project_root) as store:
        runs = store.gate_runs(bundle.id, gate="load")
        serving = store.current_release(env) == bundle.id
    if runs:
        mine = [r for r in runs if r.env == env] or runs
        outcome = GateOutcome.from_dict(mine[0].body)
        outcome.evidence = {**outcome.evidence, "measured_in": mine[0].env, "at": mine[0].at}
        return outcome
    if serving:
        say(f"load: no load test recorded for {bundle.version}; running one against {env}")
        return run_load_gate(project_root, env, progress=say)
    finding = Finding(
        "gonogo.not-run",
        Severity.ERROR,
        f"release {bundle.version} has no load test yet",
        hint="deploy it to staging and run `airlock gate load staging`",
    )
    return GateOutcome.failed("load", finding)


def _posture(project: Project, env: str) -> GateOutcome:
    if project.environments[env].posture is None:
        return GateOutcome.skipped("posture", f"environments.{env}.posture is not configured")
    from airlock.checks.gate import posture_findings

    findings = posture_findings(project, [env])
    url = project.environments[env].posture
    assert url is not None
    return GateOutcome.from_findings(
        "posture", findings, ok=f"{url.url} passed every probe", evidence={"url": url.url}
    )


# ---------------------------------------------------------------------------------------------
# Reports, approvals, and the deploy's check.


def latest(store: StateStore, env: str, release_id: str) -> Report | None:
    runs = store.gate_runs(release_id, gate=GONOGO, env=env)
    return Report.from_run(runs[0]) if runs else None


def approvers_of(store: StateStore, env: str, release_id: str) -> list[str]:
    """The different people who approved the release for ``env``, sorted."""
    return sorted({a.approver for a in store.approvals(env, release_id)})


def default_approver() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def approve(
    project_root: Path,
    env: str,
    release_ref: str,
    *,
    approver: str | None = None,
    note: str | None = None,
) -> tuple[Approval, int, int]:
    """Record an approval of a release's GO report; returns it, approvals so far, required."""
    bundle = load_bundle(project_root, release_ref)
    require_env(bundle.project, env)
    who = (approver or default_approver()).strip()
    if not who:
        raise UsageError("an approval needs a name", hint="pass --by NAME")
    with open_state(project_root) as store:
        report = latest(store, env, bundle.id)
        if report is None:
            raise GateFailed(
                f"release {bundle.version} has no go/no-go report for {env}, so there is "
                "nothing to approve",
                hint=f"run `airlock gonogo {env} --release {bundle.id[:12]}` first",
            )
        if not report.go:
            raise GateFailed(
                f"the newest go/no-go report for {bundle.version} to {env} is NO-GO "
                f"({report.failing}); a NO-GO cannot be approved",
                hint="fix what fails and run `airlock gonogo` again",
            )
        if who in approvers_of(store, env, bundle.id):
            raise UsageError(
                f"{who} already approved {bundle.version} for {env}",
                hint="each approval must come from a different person",
            )
        approval = store.approve(env, bundle.id, who, note=note, report_id=report.id)
        count = len(approvers_of(store, env, bundle.id))
    return approval, count, bundle.project.environments[env].approvals


def check_approvals(
    store: StateStore, project: Project, env: str, bundle: Bundle, override_reason: str | None
) -> dict[str, Any] | None:
    """Refuse a deploy to an environment with ``approvals: N`` that lacks a GO report and N
    approvals; with an override reason, return what to journal instead."""
    required = project.environments[env].approvals
    if required <= 0:
        return None
    report = latest(store, env, bundle.id)
    approvers = approvers_of(store, env, bundle.id)
    missing = []
    if report is None:
        missing.append(f"no go/no-go report for {env}")
    elif not report.go:
        missing.append(f"the newest go/no-go report is NO-GO ({report.failing})")
    if len(approvers) < required:
        missing.append(f"{len(approvers)} of {required} approval(s)")
    if not missing:
        return {"report": report.id if report else None, "approvers": approvers}
    if override_reason is not None:
        if not override_reason.strip():
            raise UsageError("--override-reason needs a reason", hint="say why, in a sentence")
        return {
            "override_reason": override_reason.strip(),
            "by": default_approver(),
            "missing": missing,
            "report": report.id if report else None,
            "approvers": approvers,
        }
    raise GateFailed(
        f"{env} needs a GO report and {required} approval(s) for {bundle.version}: "
        + "; ".join(missing)
        + ". Nothing was deployed",
        hint=f"run `airlock gonogo {env} --release {bundle.id[:12]}`, then "
        f"`airlock approve {env} --release {bundle.id[:12]}`; or deploy with "
        "--override-reason TEXT (recorded)",
    )
