"""The library face: every CLI command is one function here, usable from Python.

Functions take ``project``: the path of ``airlock.yaml`` or of the folder holding it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from airlock import metrics as figures
from airlock.bundle import (
    Bundle,
    build_release,
    deployed_project,
    find_release,
    list_releases,
    load_bundle,
)
from airlock.bundle import unsealed_changes as bundle_unsealed_changes
from airlock.checks.gate import GateResult, posture_findings, repository_root, run_gate
from airlock.checks.outcome import GateOutcome
from airlock.errors import AirlockError, ProjectError, UsageError
from airlock.gonogo import Report as GoNoGoReport
from airlock.metrics import DeploymentRow, EnvMetrics
from airlock.model import (
    NAME_PATTERN,
    PROJECT_FILE,
    Project,
    find_project_file,
    load_project,
    migrates,
    require_env,
)
from airlock.plan import Plan
from airlock.runner import DeployResult, Progress, deploy_async, planned, resume_async
from airlock.runtimes import Endpoint, InstanceStatus, open_runtime
from airlock.state import Deployment, open_state, use_project_url

PathLike = Path | str


def unsealed_changes(project: PathLike = ".") -> tuple[str | None, list[str]]:
    """The newest sealed release's version and the files of the working copy that differ from
    it (what a deploy of the newest release would not carry)."""
    loaded = project_at(project)
    releases = list_releases(loaded.root)
    if not releases:
        return None, []
    newest = releases[-1]
    return newest.version, bundle_unsealed_changes(loaded, newest)


def running_project(project: PathLike, env: str) -> tuple[Project, Path]:
    """The project as far as a running environment is concerned, for the commands that must
    work in an emergency (``status``, ``logs``, ``rollback``, ``env stop``): the working copy's
    ``airlock.yaml``, or, when that is broken or gone, the one sealed in the release deployed to
    ``env`` (the running environment does not depend on today's working copy). The working
    copy's error is raised when nothing is deployed there either. Returns the project and the
    project's folder (where ``.airlock/`` is)."""
    try:
        loaded = project_at(project)
    except ProjectError:
        root = find_project_file(Path(project)).resolve().parent
        sealed = deployed_project(root, env)
        if sealed is None:
            raise
        return sealed, root
    return loaded, loaded.root


def project_at(project: PathLike = ".") -> Project:
    """The project (``airlock.yaml``, or the folder holding it); its ``state.url``, if any, is
    the state store from now on."""
    loaded = load_project(Path(project))
    use_project_url(loaded.root, loaded.state.url, name=loaded.project)
    return loaded


INIT_TEMPLATE = """\
# airlock.yaml: the services of {name}, their environments and the gates a release passes.
# Every key: `airlock schema`, docs/project-file.md. Check it: `airlock check --env all`.
project: {name}

services:
  web:
    run: python app.py              # the command; it listens on 127.0.0.1:$PORT
    source: [app.py]                # files and folders sealed into every release
    ready: /readyz                  # traffic only once this answers 2xx (default: /healthz)
    # depends_on: [api]             # started only once these are ready
    config:                         # the process's environment
      GREETING: hello
      # API_TOKEN: ${{secret:API_TOKEN}}   # resolved at deploy, never stored, always masked

environments:
  staging:
    secrets: {{prefix: STAGING_}}     # ${{secret:NAME}} reads STAGING_NAME from the environment
  production:
    secrets: {{prefix: PRODUCTION_}}
    # approvals: 1                  # a GO report and one approval before each deploy

gates:
  bake: 30s                         # watch new versions this long before calling it done
  ready_timeout: 30s
  # memory_growth_mb_per_min: 50    # roll back a version whose memory climbs faster
"""

#: Lines ``airlock init`` adds to ``.gitignore``: Airlock's own state stays out of git, except
#: the reviewed baseline of secret findings, which is meant to be committed.
GITIGNORE_LINES = (".airlock/*", "!.airlock/secrets-baseline.json")


def init(folder: PathLike = ".", name: str | None = None) -> list[Path]:
    """Start a project (``airlock init``): a commented ``airlock.yaml`` and the ``.gitignore``
    lines for ``.airlock/``. Refuses to overwrite an existing ``airlock.yaml``; returns the files
    written or changed."""
    root = Path(folder)
    target = root / PROJECT_FILE
    if target.exists():
        raise UsageError(
            f"{target} already exists; nothing was changed",
            hint="edit it, or run `airlock init` in another folder",
        )
    chosen = name or re.sub(r"[^a-z0-9_-]+", "-", root.resolve().name.lower()).strip("-_")
    if not re.fullmatch(NAME_PATTERN, chosen or ""):
        raise UsageError(
            f"{chosen or root.resolve().name!r} is not a valid project name",
            hint="give one with --name: lower-case letters, digits, - and _, from a letter",
        )
    root.mkdir(parents=True, exist_ok=True)
    target.write_text(INIT_TEMPLATE.format(name=chosen), encoding="utf-8")
    written = [target]
    ignore = root / ".gitignore"
    present = ignore.read_text(encoding="utf-8").splitlines() if ignore.is_file() else []
    missing = [line for line in GITIGNORE_LINES if line not in present]
    if missing:
        text = "\n".join(present)
        if text and not text.endswith("\n"):
            text += "\n"
        text += "# Airlock's own state (airlock init)\n" + "\n".join(missing) + "\n"
        ignore.write_text(text, encoding="utf-8")
        written.append(ignore)
    return written


def check(
    project: PathLike = ".",
    *,
    envs: Sequence[str] = (),
    history: bool = True,
    posture: bool = False,
) -> GateResult:
    """The static gate (``airlock check``): the model and config files, then for ``envs``
    (names, or ``all``) parity, cross-environment references, secrets and API contracts against
    the release deployed there, and committed secrets in the git history."""
    loaded = project_at(project)
    chosen = list(loaded.environments) if "all" in envs else list(dict.fromkeys(envs))
    for env in chosen:
        require_env(loaded, env)
    if posture and not chosen:
        raise UsageError("--posture probes environments", hint="name them with --env ENV")
    result = run_gate(
        loaded,
        root=loaded.root,
        envs=chosen,
        deployed={env: deployed_project(loaded.root, env) for env in chosen},
        history=history,
    )
    if posture:
        result.findings += posture_findings(loaded, chosen)
    return result


def build(project: PathLike = ".", version: str | None = None) -> tuple[Bundle, bool]:
    """Seal the project into a release bundle (``airlock release build``)."""
    return build_release(project_at(project), version)


def releases(project: PathLike = ".") -> list[Bundle]:
    return list_releases(project_at(project).root)


def release(project: PathLike, ref: str) -> Bundle:
    return load_bundle(project_at(project).root, ref)


def release_record(project: PathLike, ref: str) -> tuple[Bundle, dict[str, Any]]:
    """A release (``airlock release show``), and what was measured and decided about it: its
    gate runs (load, go/no-go), newest first, and the approvals it got, per environment."""
    root = project_at(project).root
    bundle = load_bundle(root, ref)
    with open_state(root) as store:
        runs = store.gate_runs(bundle.id)
        envs = sorted({r.env for r in runs} | set(bundle.project.environments))
        approvals = {env: [a.to_dict() for a in store.approvals(env, bundle.id)] for env in envs}
    return bundle, {
        "gates": [
            {
                "id": r.id,
                "env": r.env,
                "gate": r.gate,
                "passed": r.passed,
                "at": r.at,
                "summary": r.body.get("summary")
                or (f"{r.body.get('verdict')}" if r.gate == "gonogo" else ""),
                "files": r.body.get("files") or {},
            }
            for r in runs
        ],
        "approvals": {env: items for env, items in approvals.items() if items},
    }


def plan(project: PathLike, env: str, release_ref: str | None = None) -> Plan:
    """What deploying a release to ``env`` would do (``airlock plan``)."""
    root = project_at(project).root
    bundle = find_release(root, release_ref)
    with open_state(root) as store:
        result = planned(bundle, env, store)
    if not migrates(bundle.project, env):
        return result
    from airlock.db import api as db
    from airlock.db.target import release_target

    target = release_target(bundle, env, root)
    if target is None:
        return result
    pending, findings = db.pending_and_lint(target)
    return dataclasses.replace(
        result,
        migrations=tuple(pending),
        migration_findings=tuple(f.to_dict() for f in findings),
    )


def deploy(
    project: PathLike,
    env: str,
    release_ref: str | None = None,
    *,
    progress: Progress | None = None,
    override_reason: str | None = None,
) -> DeployResult:
    """Deploy a sealed release (the newest by default); rolled back automatically on failure.

    An environment with ``approvals: N`` needs a GO report and N approvals of the release, or an
    ``override_reason`` (journaled with the deployment).
    """
    from airlock import gonogo as gng

    root = project_at(project).root
    bundle = find_release(root, release_ref)
    require_env(bundle.project, env)
    with open_state(root) as store:
        approval = gng.check_approvals(store, bundle.project, env, bundle, override_reason)
    result = asyncio.run(deploy_async(root, env, bundle.id, progress=progress, approval=approval))
    return _checkpointed(root, bundle.project.project, result)


def rollback(
    project: PathLike, env: str, to: str | None = None, *, progress: Progress | None = None
) -> DeployResult:
    """Deploy the previous good release again (or ``to``) (``airlock rollback``); it needs the
    sealed releases and the state store only, not a working ``airlock.yaml``."""
    loaded, root = running_project(project, env)
    with open_state(root) as store:
        target = to or store.previous_good_release(env)
    if target is None:
        raise UsageError(
            f"environment {env!r} has no earlier release to roll back to",
            hint="name one with --to RELEASE (see `airlock history`)",
        )
    result = asyncio.run(deploy_async(root, env, target, kind="rollback", progress=progress))
    return _checkpointed(root, loaded.project, result)


def resume(project: PathLike, env: str, *, progress: Progress | None = None) -> DeployResult | None:
    """Finish or roll back an interrupted deploy; ``None`` when there is none."""
    loaded = project_at(project)
    result = asyncio.run(resume_async(loaded.root, env, progress=progress))
    return None if result is None else _checkpointed(loaded.root, loaded.project, result)


def _checkpointed(root: Path, name: str, result: DeployResult) -> DeployResult:
    """At a deploy's end (rolled back or not), sign a checkpoint of the audit log into
    ``.airlock/audit/checkpoints/`` and the release's ``reports/``. The deployment is recorded
    whatever happens here; a checkpoint that cannot be signed is an error that says so."""
    from airlock.errors import AuditFailed
    from airlock.state import audit

    try:
        with open_state(root) as store:
            audit.write_checkpoint(store, root, name, release_id=result.release)
    except AirlockError as exc:
        error = AuditFailed if exc.exit_code == 1 else UsageError
        raise error(
            f"{result.kind} of {result.version} to {result.env} {result.outcome.replace('_', ' ')} "
            f"and is recorded, but its audit checkpoint was not written: {exc.message}",
            hint=exc.hint,
        ) from None
    return result


def history(project: PathLike, env: str | None = None, limit: int = 50) -> list[Deployment]:
    try:
        root = project_at(project).root
    except ProjectError:  # history is read from the state store, not from airlock.yaml
        root = find_project_file(Path(project)).resolve().parent
    with open_state(root) as store:
        return store.deployments(env, limit)


def status(project: PathLike, env: str) -> dict[str, Any]:
    """What runs in ``env``: release, services, instances, lock (``airlock status``)."""
    loaded, root = running_project(project, env)
    require_env(loaded, env)
    with open_state(root) as store:
        deployed = store.deployed(env)
        lock = store.lock(env)
        running = store.running(env)
        last = store.deployments(env, 1)
        current = store.current_release(env)
    runtime = open_runtime(loaded, env, root=root)
    instances: dict[str, list[InstanceStatus]] = {}
    endpoints: dict[str, Endpoint] = {}
    problem = None
    try:  # a host of a fleet may be away: say so rather than fail
        for item in asyncio.run(runtime.status()):  # one per host it runs on
            instances.setdefault(item.instance_id, []).append(item)
        endpoints = asyncio.run(runtime.endpoints())
    except AirlockError as exc:
        problem = exc.message
    version = None
    if current is not None:
        try:
            version = load_bundle(root, current).version
        except UsageError:
            version = None
    services = []
    for name, row in deployed.items():
        found = instances.get(row.instance_id, [])
        services.append(
            {
                "service": name,
                "release": row.release_id,
                "url": endpoints[name].url if name in endpoints else None,
                "instance": row.instance_id,
                "running": bool(found) and all(i.running for i in found),
                "pid": found[0].pid if len(found) == 1 else None,
                "where": ", ".join(i.where for i in found if i.where) or None,
                "hosts": [i.host for i in found if i.host],
                "restarts": sum(i.exits for i in found),
                "since": row.updated_at,
            }
        )
    return {
        "env": env,
        "release": current,
        "version": version,
        "runtime": runtime.name,
        "problem": problem,
        "agent": bool(endpoints or instances),
        "services": services,
        "lock": lock,
        "running_deployment": running.id if running else None,
        # a deploy whose process is gone holds the lock until `airlock resume`
        "interrupted": bool(running is not None and not running.holder_alive),
        # running: something serves; stopped: the last release is known but nothing runs
        # (`airlock env stop`); none: nothing was ever deployed
        "state": "running" if deployed else ("stopped" if current is not None else "none"),
        "last_deployment": last[0].to_dict() if last else None,
    }


def logs(project: PathLike, env: str, service: str, lines: int = 100) -> list[str]:
    """The last ``lines`` lines of a service's log in ``env`` (secrets already masked)."""
    loaded, root = running_project(project, env)
    require_env(loaded, env)
    known = sorted(loaded.services)
    if service not in known:
        raise UsageError(
            f"no service {service!r} in {loaded.file}", hint="services: " + ", ".join(known)
        )
    return asyncio.run(open_runtime(loaded, env, root=root).logs(service, lines))


def stop_env(project: PathLike, env: str) -> bool:
    """Stop every process of ``env`` (``airlock env stop``); whether anything was running."""
    loaded, root = running_project(project, env)
    require_env(loaded, env)
    with open_state(root) as store:
        running = store.running(env)
        if running is not None and running.holder_alive:
            raise UsageError(
                f"a deployment to {env!r} is running ({running.id}, {running.holder})",
                hint="let it finish or interrupt it first",
            )
        was_running = asyncio.run(open_runtime(loaded, env, root=root).shutdown())
        from airlock.db.target import embedded_server

        was_running = embedded_server(root, env).stop() or was_running
        store.remove_deployed(env)
        if running is not None:
            store.finish(running.id, "aborted", reason="the environment was stopped")
    return was_running


def codes() -> dict[str, str]:
    """Every finding code and what it means (``airlock codes``), migration lint rules too."""
    from airlock.checks.gate import ALL_CODES
    from airlock.db.lint import RULES
    from airlock.preflight import CODES as PREFLIGHT_CODES
    from airlock.rollback_proof import CODE as ROLLBACK_CODE
    from airlock.rollback_proof import UNPROVEN

    return {
        **ALL_CODES,
        **PREFLIGHT_CODES,
        ROLLBACK_CODE: "The release running now fails on the migrated schema of a rehearsal.",
        UNPROVEN: "A rollback to the release running now could not be proven safe.",
        **{code: rule.summary for code, rule in RULES.items()},
    }


def scan_secrets(path: PathLike = ".", *, staged: bool = False, history: bool = True) -> GateResult:
    """Committed secrets in the repository holding ``path`` (``airlock secrets scan``), less
    the reviewed baseline."""
    from airlock.checks.gate import scan_committed

    found = scan_committed(Path(path).resolve(), history=history, staged=staged)
    repository = found.repository
    return GateResult(
        findings=found.findings,
        silenced=found.silenced,
        scanned={"repository": str(repository) if repository else None, "staged": staged},
    )


def write_secrets_baseline(path: PathLike = ".", *, reason: str) -> tuple[Path, int]:
    """Record every current finding as reviewed (``airlock secrets baseline``)."""
    import getpass
    import socket

    from airlock.checks.baseline import write_baseline
    from airlock.checks.leaks import scan_repository

    root = Path(path).resolve()
    repository = repository_root(root) or root
    scan = scan_repository(repository, history=(repository / ".git").exists())
    written = write_baseline(
        repository,
        scan.findings,
        reason=reason,
        reviewed_by=f"{getpass.getuser()}@{socket.gethostname()}",
    )
    return written, len(scan.findings)


# -- release gates -----------------------------------------------------------------------------


def gonogo(
    project: PathLike,
    env: str,
    release_ref: str | None = None,
    *,
    progress: Callable[[str], None] | None = None,
) -> GoNoGoReport:
    """Run or collect every gate for a release going to ``env`` (``airlock gonogo``); the
    report is stored with the release."""
    from airlock import gonogo as gng

    return gng.run(project_at(project).root, env, release_ref, progress=progress)


def approve(
    project: PathLike,
    env: str,
    release_ref: str,
    *,
    approver: str | None = None,
    note: str | None = None,
) -> dict[str, Any]:
    """Record an approval of the release's GO report for ``env`` (``airlock approve``)."""
    from airlock import gonogo as gng

    approval, count, required = gng.approve(
        project_at(project).root, env, release_ref, approver=approver, note=note
    )
    return {**approval.to_dict(), "approvals": count, "required": required}


def gate_load(
    project: PathLike, env: str, *, progress: Callable[[str], None] | None = None
) -> GateOutcome:
    """Load-test the release serving in ``env`` against ``gates.load`` (``airlock gate load``);
    the figures and verdict are stored with that release."""
    from airlock import gonogo as gng

    return gng.run_load_gate(Path(project), env, progress=progress)


def gate_logs(project: PathLike, release_ref: str | None = None) -> GateOutcome:
    """Scan the release's log lines in every environment (``airlock gate logs``)."""
    from airlock.gonogo import logs_gate

    root = project_at(project).root
    bundle = find_release(root, release_ref)
    return logs_gate(bundle.project, root, bundle.id)


def gate_ci(project: PathLike, release_ref: str | None = None) -> GateOutcome:
    """CI status of the commit the release was sealed from (``airlock gate ci``)."""
    from airlock.checks.release_gates import ci_gate

    root = project_at(project).root
    bundle = find_release(root, release_ref)
    return ci_gate(bundle.project, root, bundle)


# -- delivery metrics --------------------------------------------------------------------------


def metrics(
    project: PathLike = ".",
    env: str | None = None,
    since: str | datetime | None = None,
    *,
    lead_time: str = "first-commit",
    rollback_window_hours: float = 24.0,
    now: datetime | None = None,
) -> list[EnvMetrics]:
    """Delivery metrics of ``env`` (every environment when None) from Airlock's own records
    (``airlock metrics``): deployments and their journals in the state store, the commits each
    sealed release recorded. ``since``: a datetime, or text (a date or a duration back from
    now, such as ``30d``); None: each environment's whole history."""
    loaded: Project | None
    broken: ProjectError | None = None
    try:
        loaded = project_at(project)
        root = loaded.root
    except ProjectError as exc:  # the figures come from the state store, not from airlock.yaml
        loaded, broken = None, exc
        root = find_project_file(Path(project)).resolve().parent
    moment = (now or datetime.now(UTC)).astimezone(UTC)
    start = figures.parse_since(since, moment) if isinstance(since, str) else since
    if start is not None and start.tzinfo is None:
        start = start.replace(tzinfo=UTC)
    if lead_time not in figures.LEAD_TIME_DEFINITIONS:
        raise UsageError(
            f"unknown lead time definition {lead_time!r}",
            hint="use " + " or ".join(figures.LEAD_TIME_DEFINITIONS),
        )
    if not rollback_window_hours > 0:
        raise UsageError(f"the rollback window must be positive, not {rollback_window_hours:g}")
    with open_state(root, readonly=True) as store:
        rows = store.deployments(None, limit=_ALL_ROWS)
        recorded = list(dict.fromkeys(d.env for d in reversed(rows)))
        if broken is not None and not recorded:
            raise broken  # nothing to go on but airlock.yaml, and it is broken
        known = list(dict.fromkeys([*(loaded.environments if loaded else ()), *recorded]))
        if env is not None and env not in known:
            raise UsageError(
                f"no environment {env!r} in {loaded.file if loaded else root} or its history",
                hint="environments: " + (", ".join(known) or "none yet"),
            )
        envs = [env] if env is not None else known
        deployments = [_deployment_row(d) for d in rows if d.env in envs]
        journals = {
            d.id: [
                figures.JournalRow(r["seq"], _when(r["at"]), r["type"], r["body"])
                for r in store.records(d.id)
            ]
            for d in deployments
            if d.status == "rolled_back" and (start is None or d.started_at >= start)
        }
    releases = [
        figures.ReleaseRow(
            id=b.id,
            sealed_at=_when(b.created_at),
            head=b.commit,
            commits=figures.commits_from_manifest(b.manifest),
        )
        for b in list_releases(root)
    ]
    return [
        figures.compute(
            name,
            deployments,
            releases,
            journals,
            now=moment,
            since=start,
            lead_time=lead_time,
            window=timedelta(hours=rollback_window_hours),
        )
        for name in envs
    ]


#: Every deployment of the store is read for metrics (a rollback's target may be old).
_ALL_ROWS = 1_000_000


def _when(stamp: str) -> datetime:
    moment = datetime.fromisoformat(stamp)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _deployment_row(deployment: Deployment) -> DeploymentRow:
    return DeploymentRow(
        id=deployment.id,
        env=deployment.env,
        kind=deployment.kind,
        release_id=deployment.release_id,
        previous_release_id=deployment.previous_release_id,
        status=deployment.status,
        started_at=_when(deployment.started_at),
        finished_at=_when(deployment.finished_at) if deployment.finished_at else None,
    )


# -- the audit log -----------------------------------------------------------------------------


def _audited(project: PathLike) -> tuple[Path, str | None]:
    """The project's folder and name; only the folder when ``airlock.yaml`` cannot be loaded
    (the log is read from the state store)."""
    try:
        loaded = project_at(project)
    except ProjectError:
        return find_project_file(Path(project)).resolve().parent, None
    return loaded.root, loaded.project


def audit_verify(
    project: PathLike = ".",
    *,
    checkpoint: PathLike | None = None,
    public_key: str | None = None,
) -> dict[str, Any]:
    """Recompute the audit log from its stored columns (``airlock audit verify``): ``ok``, and
    the first entry that does not verify. With a ``checkpoint`` (signed with ``public_key``,
    else with the project's audit key), also a truncated tail or rewritten entries."""
    from airlock.state import audit

    root, name = _audited(project)
    with open_state(root, readonly=True) as store:
        verified = audit.verify_rows(store.audit_rows())
    report = verified.to_dict()
    report["checkpoint"] = None
    newest = audit.newest_checkpoint(root)
    chosen = Path(checkpoint) if checkpoint is not None else newest
    if chosen is not None:
        path = chosen
        trusted = audit.trusted_key(public_key, name)
        if checkpoint is None:
            # the newest local checkpoint, unasked: a mismatch of any kind is the log's
            # problem (entries cut or rewritten since it was signed), not bad input
            try:
                document = audit.read_checkpoint(path)
                problem = audit.check_checkpoint(document, verified, trusted, str(path))
            except UsageError as exc:
                document = {"size": None, "at": None, "key_id": None}
                problem = exc.message
        else:
            document = audit.read_checkpoint(path)
            problem = audit.check_checkpoint(document, verified, trusted, str(path))
        report["checkpoint"] = {
            "file": str(path),
            "size": document["size"],
            "at": document["at"],
            "key_id": document["key_id"],
            "ok": problem is None,
            "problem": problem,
        }
        if problem is not None and report["ok"]:
            report.update(ok=False, problem=problem, head=None)
    report["newest_checkpoint"] = str(newest) if newest else None
    return report


def audit_show(
    project: PathLike = ".", env: str | None = None, limit: int = 50
) -> list[dict[str, Any]]:
    """The newest ``limit`` entries of the audit log (of ``env``), newest first
    (``airlock audit show``). Shown as stored: ``airlock audit verify`` checks them."""
    import json

    if limit < 1:
        raise UsageError(f"--limit must be at least 1, not {limit}")
    root, _name = _audited(project)
    with open_state(root, readonly=True) as store:
        rows = store.audit_rows(env, limit)
    entries = []
    for row in reversed(rows):
        try:
            payload = json.loads(row["payload"])
        except (TypeError, ValueError):
            payload = row["payload"]
        entries.append({**row, "payload": payload})
    return entries


def audit_checkpoint(project: PathLike = ".") -> dict[str, Any] | None:
    """Sign a checkpoint of the audit log now (``airlock audit checkpoint``); None while the
    log is empty."""
    from airlock.state import audit

    loaded = project_at(project)
    with open_state(loaded.root) as store:
        written = audit.write_checkpoint(store, loaded.root, loaded.project)
    if written is None:
        return None
    path = audit.checkpoint_dir(loaded.root) / f"{written['size']}.json"
    return {**written, "file": str(path)}


def audit_key(project: PathLike = ".") -> dict[str, Any]:
    """The project's audit signing key: where it is, its public half and id (created on first
    use) (``airlock audit key``)."""
    from airlock.state import audit

    loaded = project_at(project)
    path = audit.key_path(loaded.project)
    existed = path.exists()
    public = audit.public_key_of(audit.load_key(loaded.project, create=True))
    return {
        "path": str(path),
        "public_key": public,
        "key_id": audit.key_id(public),
        "created": not existed,
    }


def audit_proof(project: PathLike, seq: int) -> dict[str, Any]:
    """An RFC 6962 inclusion proof of entry ``seq`` against the newest checkpoint
    (``airlock audit proof``): the entry, its audit path and the signed checkpoint, checkable
    with nothing else but the public key (:func:`audit_verify_proof`)."""
    from airlock.errors import AuditFailed
    from airlock.state import audit

    root, _name = _audited(project)
    with open_state(root, readonly=True) as store:
        verified = audit.verify_rows(store.audit_rows())
    if not 1 <= seq <= verified.entries:
        raise UsageError(
            f"the audit log has no entry {seq}: it has {verified.entries} entries",
            hint="see `airlock audit show`",
        )
    if not verified.ok:
        raise AuditFailed(
            f"the audit log does not verify: {verified.problem}",
            hint="run `airlock audit verify` for details",
        )
    newest = audit.newest_checkpoint(root)
    if newest is None:
        raise UsageError(
            "there is no checkpoint of the audit log to prove against yet",
            hint="run `airlock audit checkpoint` (each deploy also writes one)",
        )
    checkpoint = audit.read_checkpoint(newest)
    if checkpoint["size"] < seq:
        raise UsageError(
            f"entry {seq} is newer than the newest checkpoint ({newest}, {checkpoint['size']} "
            "entries)",
            hint="run `airlock audit checkpoint` first",
        )
    problem = audit.check_checkpoint(checkpoint, verified, None, str(newest))
    if problem is not None:
        raise AuditFailed(f"the audit log does not match its newest checkpoint: {problem}")
    return audit.make_proof(verified, seq, checkpoint)


def audit_verify_proof(
    proof: PathLike | dict[str, Any], *, public_key: str | None = None, project: PathLike = "."
) -> dict[str, Any]:
    """Check an inclusion proof with nothing but itself and the public key
    (``airlock audit verify-proof``); without ``public_key``, the project's audit key's."""
    import json

    from airlock.state import audit

    if isinstance(proof, dict):
        document: Any = proof
    else:
        try:
            document = json.loads(Path(proof).read_text(encoding="utf-8"))
        except OSError as exc:
            raise UsageError(f"cannot read the proof {proof}: {exc.strerror}") from None
        except (ValueError, UnicodeDecodeError):
            raise UsageError(f"{proof} is not an audit proof (not JSON)") from None
    name = None
    if public_key is None:
        name = project_at(project).project
    return audit.verify_proof(document, audit.trusted_key(public_key, name))


# -- release evidence --------------------------------------------------------------------------


def release_evidence(project: PathLike, ref: str) -> dict[str, Any]:
    """What was measured of a release, in full (the dashboard's release page): its go/no-go
    reports with every gate's findings and evidence, newest first, and each deployment of it
    (newest first) with what its bake measured (figures per service, and their series over the
    bake) and what its migrations did."""
    from airlock import gonogo as gng

    root = project_at(project).root
    bundle = load_bundle(root, ref)
    with open_state(root, readonly=True) as store:
        reports = [
            gng.Report.from_run(run).to_dict()
            for run in store.gate_runs(bundle.id, gate=gng.GONOGO)
        ]
        deployments = []
        for deployment in store.deployments(None, _ALL_ROWS):
            if deployment.release_id != bundle.id:
                continue
            bake = store.records(deployment.id, "bake")
            migration = store.records(deployment.id, "migration")
            deployments.append(
                {
                    **deployment.to_dict(),
                    "bake": bake[-1]["body"] if bake else None,
                    "migration": migration[-1]["body"] if migration else None,
                }
            )
    return {
        "release": bundle.id,
        "version": bundle.version,
        "reports": reports,
        "deployments": deployments,
    }


def preflight(project: PathLike, env: str, release_ref: str | None = None) -> GateOutcome:
    """Check ``env`` against what a release needs, from where its services will run
    (``airlock preflight``): ports, paths to dependencies, outbound destinations, names,
    settings, files, and the hosts' Python, disk and clock."""
    from airlock.preflight import preflight as run_preflight

    return run_preflight(project_at(project).root, env, release_ref)


def discover(
    project: PathLike,
    service: str | None = None,
    *,
    env: str | None = None,
    seconds: float = 10.0,
    release_ref: str | None = None,
    every: bool = False,
    database_url: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> tuple[list[Any], list[Path]]:
    """Observe what services of a sealed release need from the network and the host
    (``airlock discover``): each runs in a sandbox under strace for ``seconds`` while it is sent
    its readiness path and ``endpoints``. ``every`` does every service and writes the release's
    requirements documents too. Returns the :class:`airlock.discover.Discovery` of each
    service and the files written to the release's ``reports/discover/``."""
    from airlock import discover as observe

    if every == (service is not None):
        raise UsageError(
            "name one service, or --all for every service of the release",
            hint="e.g. `airlock discover payment` or `airlock discover --all`",
        )
    if not seconds > 0:
        raise UsageError(f"--seconds must be more than 0, not {seconds:g}")
    root = project_at(project).root
    bundle = find_release(root, release_ref)
    sealed = bundle.project
    if env is None:
        env = observe.default_env(list(sealed.environments))
    elif env not in sealed.environments:
        known = ", ".join(sealed.environments)
        raise UsageError(
            f"release {bundle.label} has no environment {env!r}",
            hint=f"its environments: {known}",
        )
    names = list(sealed.services) if every else [str(service)]
    for name in names:
        if name not in sealed.services:
            known = ", ".join(sorted(sealed.services))
            raise UsageError(
                f"release {bundle.label} has no service {name!r}", hint=f"its services: {known}"
            )
    strace = observe.strace_command()
    chosen_env = env

    def one(name: str) -> Any:
        if progress is not None:
            progress(f"discovering {name} in a {chosen_env} sandbox for {seconds:g} s")
        return observe.discover_service(
            bundle,
            name,
            chosen_env,
            project_root=root,
            seconds=seconds,
            database_url=database_url,
            strace=strace,
        )

    # Each service in a sandbox of its own (with its dependencies), all at once: --all takes
    # about as long as one service, not the sum of them.
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=max(1, min(len(names), 8))) as pool:
        found = list(pool.map(one, names))
    written = observe.write_reports(bundle, found, release_documents=every)
    return found, written


def record_database_change(project: PathLike, env: str, kind: str, data: dict[str, Any]) -> None:
    """Append to the audit log a change ``airlock db`` made to ``env``'s database, from what
    the command reported (``data``): ``migration.applied``, ``migration.undone``,
    ``migration.baselined`` or ``database.restored``. Only what changed is kept: the
    database's masked name, the scripts and their outcomes, a baseline's versions, a restore's
    file. A migrate or undo that ran nothing appends nothing."""
    steps = [
        {"script": s.get("script"), "outcome": s.get("outcome")} for s in data.get("steps") or []
    ]
    if kind in {"migration.applied", "migration.undone"} and not steps:
        return
    payload: dict[str, Any] = {"database": data.get("database"), "steps": steps}
    if kind == "migration.baselined":
        payload["recorded"] = [r.get("script") for r in data.get("recorded") or []]
        payload["baseline_version"] = data.get("baseline_version")
    if kind == "database.restored":
        payload["backup"] = data.get("backup")
    root = project_at(project).root
    with open_state(root) as store:
        store.record_database(kind, env, payload)
