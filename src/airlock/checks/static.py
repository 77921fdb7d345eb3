"""Static checks of the project model: they need no running system."""

from __future__ import annotations

from airlock.checks import Finding, Severity
from airlock.model import Project, SshRuntimeModel, references
from airlock.plan import find_cycle, render_config


def check_project(project: Project) -> list[Finding]:
    """Every static finding for ``project``, in file order."""
    findings = [
        *_unknown_dependencies(project),
        *_cycles(project),
        *_references(project),
        *_ports(project),
        *_sources(project),
        *_placement(project),
        *_unsealed_commands(project),
    ]
    return findings


_SCRIPT_SUFFIXES = (".py", ".sh", ".js", ".mjs", ".rb", ".pl", ".php", ".jar")


def _unsealed_commands(project: Project) -> list[Finding]:
    """A ``run`` command naming a script that no service seals: the release could not start it
    (services run from the sealed files, not from the working copy)."""
    sealed = [
        entry.rstrip("/") for service in project.services.values() for entry in service.source
    ]
    findings = []
    for name, service in project.services.items():
        for token in service.argv:
            if token.startswith(("-", "/")) or not (
                token.startswith("./") or token.endswith(_SCRIPT_SUFFIXES)
            ):
                continue
            path = token.removeprefix("./")
            if any(path == entry or path.startswith(entry + "/") for entry in sealed):
                continue
            findings.append(
                Finding(
                    "model.run-not-sealed",
                    Severity.ERROR,
                    f"service {name!r} runs {token}, which no service's `source` seals, so the "
                    "release could not start it",
                    project.locate("services", name, "run"),
                    hint=f"add {path} (or its folder) to services.{name}.source",
                )
            )
    return findings


def _placement(project: Project) -> list[Finding]:
    """Where services run on ``ssh`` environments: known hosts, roles and services only, and
    every service on at least one host."""
    findings = []
    for env, environment in project.environments.items():
        runtime = environment.runtime
        if not isinstance(runtime, SshRuntimeModel):
            continue
        roles = {role for host in runtime.hosts.values() for role in host.roles}
        for service, wanted in runtime.placement.items():
            where = project.locate("environments", env, "runtime", "placement", service)
            if service not in project.services:
                findings.append(
                    Finding(
                        "runtime.unknown-service",
                        Severity.ERROR,
                        f"environment {env!r} places {service!r}, which is not a service",
                        where,
                        hint="services: " + ", ".join(sorted(project.services)),
                    )
                )
                continue
            for index, item in enumerate(wanted):
                role = item.removeprefix("role:") if item.startswith("role:") else None
                if (role is None and item in runtime.hosts) or (role is not None and role in roles):
                    continue
                known = ", ".join([*runtime.hosts, *(f"role:{r}" for r in sorted(roles))])
                findings.append(
                    Finding(
                        "runtime.unknown-host",
                        Severity.ERROR,
                        f"environment {env!r} places {service!r} on {item!r}, which is not one "
                        "of its hosts" + (" or roles" if role is not None else ""),
                        project.locate("environments", env, "runtime", "placement", service, index),
                        hint=f"hosts and roles: {known}",
                    )
                )
        for service in project.services:
            if service in runtime.placement and not runtime.hosts_of(service):
                findings.append(
                    Finding(
                        "runtime.no-host",
                        Severity.ERROR,
                        f"service {service!r} would run on no host of environment {env!r}",
                        project.locate("environments", env, "runtime", "placement", service),
                        hint="name at least one of its hosts, or a role one of them has",
                    )
                )
    return findings


def _unknown_dependencies(project: Project) -> list[Finding]:
    findings = []
    for name, service in project.services.items():
        for index, dep in enumerate(service.depends_on):
            if dep in project.services:
                continue
            known = ", ".join(sorted(project.services))
            findings.append(
                Finding(
                    "deps.unknown",
                    Severity.ERROR,
                    f"service {name!r} depends on {dep!r}, which is not defined",
                    project.locate("services", name, "depends_on", index),
                    hint=f"define {dep!r} under services:, or remove it; services: {known}",
                )
            )
    return findings


def _cycles(project: Project) -> list[Finding]:
    graph = {name: list(service.depends_on) for name, service in project.services.items()}
    findings = []
    reported: set[frozenset[str]] = set()
    while (cycle := find_cycle(graph)) is not None:
        members = frozenset(cycle)
        if members not in reported:
            reported.add(members)
            findings.append(
                Finding(
                    "deps.cycle",
                    Severity.ERROR,
                    "dependency cycle: " + " → ".join(cycle),
                    project.locate("services", cycle[0], "depends_on"),
                    hint="break the cycle: one of these services must be able to start "
                    "without the other",
                    evidence={"cycle": cycle},
                )
            )
        # Cut the edge that closed this cycle and look for more.
        graph[cycle[-2]] = [d for d in graph[cycle[-2]] if d != cycle[-1]]
    return findings


def _references(project: Project) -> list[Finding]:
    findings = []
    for env, environment in project.environments.items():
        rendered = render_config(project, env)
        for service, config in rendered.items():
            for key, value in config.items():
                in_override = key in environment.config.get(service, {})
                path = (
                    ("environments", env, "config", service, key)
                    if in_override
                    else ("services", service, "config", key)
                )
                for ref in references(value):
                    problem = _reference_problem(project, env, ref.kind, ref.name)
                    if problem is None:
                        continue
                    findings.append(
                        Finding(
                            "config.undefined-reference",
                            Severity.ERROR,
                            f"{service}.{key} in {env}: {ref.text} {problem}",
                            project.locate(*path),
                            hint=_reference_hint(ref.kind),
                        )
                    )
    # The same reference is reported once per environment only if its message differs.
    unique: dict[tuple[str, str | None], Finding] = {}
    for finding in findings:
        unique.setdefault((finding.message, str(finding.location)), finding)
    return list(unique.values())


def _reference_problem(project: Project, env: str, kind: str, name: str) -> str | None:
    if kind == "invalid":
        return "is not a reference Airlock knows"
    if kind == "service" and name not in project.services:
        return f"names service {name!r}, which is not defined"
    if kind == "database":
        database = project.environments[env].database
        if database is None or (not database.embedded and not database.url):
            return f"needs a database, but environment {env!r} has none"
    return None


def _reference_hint(kind: str) -> str:
    if kind == "database":
        return "give the environment `database: {embedded: true}` or `database: {url: ...}`"
    return (
        "use ${services.NAME.url|host|port}, ${database.url}, ${secret:NAME} "
        "or ${env.name|data_dir}; write $${ for a literal ${"
    )


def _ports(project: Project) -> list[Finding]:
    owners: dict[int, str] = {}
    findings = []
    for name, service in project.services.items():
        if service.port == "auto":
            continue
        if service.port in owners:
            findings.append(
                Finding(
                    "model.port-conflict",
                    Severity.ERROR,
                    f"services {owners[service.port]!r} and {name!r} both use port {service.port}",
                    project.locate("services", name, "port"),
                    hint="give one of them another port, or `port: auto`",
                )
            )
        else:
            owners[service.port] = name
    return findings


def _sources(project: Project) -> list[Finding]:
    findings = []
    for name, service in project.services.items():
        for index, source in enumerate(service.source):
            shown = source if len(source) <= 80 else source[:79] + "…"
            try:
                problem = None if (project.root / source).exists() else "does not exist"
            except (OSError, ValueError) as exc:
                # e.g. a name longer than the file system allows (ENAMETOOLONG), a NUL byte
                reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
                problem = f"cannot be checked: {reason}"
            if problem is not None:
                findings.append(
                    Finding(
                        "model.source-missing",
                        Severity.ERROR,
                        f"service {name!r}: source {shown!r} {problem}",
                        project.locate("services", name, "source", index),
                        hint="paths are relative to the folder of airlock.yaml",
                    )
                )
    return findings
