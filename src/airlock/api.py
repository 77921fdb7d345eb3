"""The library face: every CLI command is one function here, usable from Python.

Functions take ``project``: the path of ``airlock.yaml`` or of the folder holding it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

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
    use_project_url(loaded.root, loaded.state.url)
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
    return asyncio.run(deploy_async(root, env, bundle.id, progress=progress, approval=approval))


def rollback(
    project: PathLike, env: str, to: str | None = None, *, progress: Progress | None = None
) -> DeployResult:
    """Deploy the previous good release again (or ``to``) (``airlock rollback``); it needs the
    sealed releases and the state store only, not a working ``airlock.yaml``."""
    root = running_project(project, env)[1]
    with open_state(root) as store:
        target = to or store.previous_good_release(env)
    if target is None:
        raise UsageError(
            f"environment {env!r} has no earlier release to roll back to",
            hint="name one with --to RELEASE (see `airlock history`)",
        )
    return asyncio.run(deploy_async(root, env, target, kind="rollback", progress=progress))


def resume(project: PathLike, env: str, *, progress: Progress | None = None) -> DeployResult | None:
    """Finish or roll back an interrupted deploy; ``None`` when there is none."""
    root = project_at(project).root
    return asyncio.run(resume_async(root, env, progress=progress))


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

    return {**ALL_CODES, **{code: rule.summary for code, rule in RULES.items()}}


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
