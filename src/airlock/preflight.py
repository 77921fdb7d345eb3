"""``airlock preflight ENV``: the target checked against what the release needs, days before.

What a release needs comes from the model (each service's port and dependencies) and from what
``airlock discover`` recorded for the release (ports, connections, names, files, settings). The
checks run where the services will run — for the ``ssh`` runtime on each host itself, through the
runtime's :meth:`~airlock.runtimes.Runtime.check_hosts`:

- every port a service listens on is free on its hosts (or held by this environment's agent);
- every dependency's port is reachable from each host of the service that needs it: a real TCP
  connection from that host, to a port held open for the test where nothing listens yet;
- outbound destinations seen by discovery are reachable and their names resolve;
- every environment variable the service reads is provided (names only, never values), and the
  files it opens exist;
- host basics: ``python3`` version, free disk for the release, clock skew against this machine;
  and, standalone, the certificates of the environment's TLS endpoint.

Each finding carries its evidence (host, what was run, the result) and a stable code; the
outcome is the ``preflight`` gate of ``airlock gonogo``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from airlock.bundle import Bundle, find_release
from airlock.checks.outcome import GateOutcome
from airlock.errors import AirlockError
from airlock.findings import Finding, Severity
from airlock.model import Project, require_env
from airlock.plan import render_config, uses_database
from airlock.runtimes import CheckResult, Endpoint, HostCheck, Runtime, open_runtime

CODES = {
    "preflight.port-in-use": "A port a service listens on is taken on one of its hosts.",
    "preflight.dependency-unreachable": "A host of a service cannot open a TCP connection to a "
    "dependency's port on the dependency's hosts.",
    "preflight.outbound-unreachable": "A destination the service connected to during discovery "
    "cannot be reached from its hosts.",
    "preflight.dns": "A name the service resolved during discovery does not resolve on its hosts.",
    "preflight.env-missing": "An environment variable the service reads is not provided.",
    "preflight.file-missing": "A file the service opened during discovery is missing, or a "
    "folder it writes to is not writable, on its hosts.",
    "preflight.python": "A host's python3 is older than Airlock's agent needs.",
    "preflight.disk": "A host has less free disk than the release needs.",
    "preflight.clock-skew": "A host's clock differs from this machine's.",
    "preflight.host-unreachable": "The checks could not run on a host.",
    "preflight.port-unknown": "A service's port is chosen at deploy (`port: auto`, never bound "
    "here), so the path to it cannot be checked before.",
    "preflight.no-discovery": "Discovery recorded nothing for a service of the release.",
    "preflight.database-unreachable": "A host of a service that uses the database cannot open "
    "a TCP connection to the environment's database.",
    "preflight.discovery-elsewhere": "Discovery ran with another environment's config, so this "
    "one's outbound destinations are not checked.",
    "preflight.secret-missing": "A secret the environment's config references is not in its "
    "secret provider.",
}

MIN_PYTHON = (3, 11)
#: Clock differences beyond these many seconds are a warning, an error.
SKEW_WARNING, SKEW_ERROR = 2.0, 30.0
#: Variables a runtime provides to every service itself.
PROVIDED = {"PORT", "PYTHONUNBUFFERED", "PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "TZ"}
PROVIDED_PREFIXES = ("LC_", "PYTHON")
#: Folders whose files belong to the system or the interpreter, not to the service.
SYSTEM_FOLDERS = ("/usr/", "/lib", "/proc/", "/sys/", "/dev/", "/etc/ld.so", "/run/", "/tmp/")


@dataclass(frozen=True)
class Need:
    """What discovery recorded for one service (only what preflight uses)."""

    service: str
    environment: str | None  # whose config it ran with
    connects: list[dict[str, Any]]
    names: list[str]
    env: list[dict[str, Any]]
    files: list[dict[str, Any]]


def discovered(bundle: Bundle) -> dict[str, Need]:
    """The discovery records kept with the release (``reports/discover/*.json``)."""
    found: dict[str, Need] = {}
    folder = bundle.path / "reports" / "discover"
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        records = data if isinstance(data, list) else [data]
        for record in records:
            if not isinstance(record, dict) or not isinstance(record.get("service"), str):
                continue
            connects = [c for c in record.get("connect") or [] if isinstance(c, dict)]
            names = sorted(
                {
                    str(c["host"])
                    for c in connects
                    if c.get("host") and not c.get("service") and not _is_address(str(c["host"]))
                }
                | {str(n) for n in record.get("names") or [] if isinstance(n, str)}
            )
            found[record["service"]] = Need(
                service=record["service"],
                environment=record.get("environment")
                if isinstance(record.get("environment"), str)
                else None,
                connects=connects,
                names=names,
                env=[e for e in record.get("env") or [] if isinstance(e, dict)],
                files=[f for f in record.get("files") or [] if isinstance(f, dict)],
            )
    return found


def _database_address(project: Project, env: str) -> tuple[str, int] | None:
    """Host and port of ``env``'s database when it is given by URL (an embedded one runs next to
    Airlock, not on the services' hosts); a ``${secret:…}`` in it is never resolved."""
    database = project.environments[env].database
    if database is None or database.embedded or not database.url:
        return None
    text = re.sub(r"\$\{[^}]*\}", "x", database.url)
    try:
        parts = urlsplit(text)
        host, port = parts.hostname, parts.port or 5432
    except ValueError:
        return None
    return (host, port) if host else None


def _is_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _is_local(host: str) -> bool:
    if host in {"localhost", "localhost.localdomain"}:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _system_file(path: str) -> bool:
    prefixes = {sys.prefix, sys.base_prefix, sys.exec_prefix}
    return path.startswith(SYSTEM_FOLDERS) or any(path.startswith(p + "/") for p in prefixes)


class _Checks:
    """The host checks of one preflight and how each result becomes a finding."""

    def __init__(self) -> None:
        self.checks: list[HostCheck] = []
        self.judges: list[tuple[str, Severity, str, str]] = []  # code, severity, what, hint

    def add(self, check: HostCheck, code: str, severity: Severity, what: str, hint: str) -> None:
        self.checks.append(check)
        self.judges.append((code, severity, what, hint))


def plan_checks(
    project: Project,
    env: str,
    bound: dict[str, Endpoint],
    needs: dict[str, Need],
    *,
    release_bytes: int,
    data_dir: str,
) -> tuple[_Checks, list[Finding]]:
    """The host checks for ``env`` and the findings that need no host (unknown ports, missing
    settings, services discovery never saw)."""
    plan = _Checks()
    findings: list[Finding] = []
    ports: dict[str, int | None] = {}
    for name, service in project.services.items():
        fixed = service.port if isinstance(service.port, int) else None
        if name in bound and fixed in (None, bound[name].port):
            ports[name] = bound[name].port  # held by this environment's agent: ours
            continue
        ports[name] = fixed  # the release's port (a changed one must be free too)
        port = ports[name]
        if port is not None:
            plan.add(
                HostCheck(name, "port_free", {"port": port}),
                "preflight.port-in-use",
                Severity.ERROR,
                f"{name} listens on port {port}",
                f"free port {port} on that host, or give {name} another port in airlock.yaml",
            )
    for name, service in project.services.items():
        for dependency in service.depends_on:
            port = ports.get(dependency)
            if port is None:
                findings.append(
                    Finding(
                        "preflight.port-unknown",
                        Severity.WARNING,
                        f"{name} needs {dependency}, whose port is chosen at deploy: the path "
                        f"from {name}'s hosts to it cannot be checked before",
                        hint=f"give {dependency} a fixed `port:` in airlock.yaml to check it",
                    )
                )
                continue
            plan.add(
                HostCheck(name, "connect", {"port": port, "timeout": 3.0}, to_service=dependency),
                "preflight.dependency-unreachable",
                Severity.ERROR,
                f"{name} → {dependency} (TCP port {port}, outbound from {name}'s host, inbound "
                f"to {dependency}'s)",
                f"open TCP port {port} from {name}'s hosts to {dependency}'s hosts in every "
                "firewall on the way",
            )
    database = _database_address(project, env)
    rendered = render_config(project, env)
    for name in project.services:
        if database is None or not uses_database(rendered[name]):
            continue
        host, port = database
        plan.add(
            HostCheck(name, "connect", {"host": host, "port": port, "timeout": 3.0}),
            "preflight.database-unreachable",
            Severity.ERROR,
            f"{name} → the database {host}:{port} (outbound from {name}'s host)",
            f"open TCP port {port} to {host} from {name}'s hosts",
        )
    for name in project.services:
        need = needs.get(name)
        if need is None:
            findings.append(
                Finding(
                    "preflight.no-discovery",
                    Severity.WARNING,
                    f"no discovery was recorded for {name}: its outbound connections, names, "
                    "settings and files are not checked",
                    hint="run `airlock discover --all` for this release",
                )
            )
            continue
        _plan_needs(plan, findings, project, env, name, need)
    plan.add(
        HostCheck(None, "python", {"minimum": list(MIN_PYTHON)}),
        "preflight.python",
        Severity.ERROR,
        "python3",
        f"install Python {MIN_PYTHON[0]}.{MIN_PYTHON[1]}+ (or point runtime.python at it)",
    )
    plan.add(
        HostCheck(None, "disk", {"path": data_dir, "need": 2 * release_bytes}),
        "preflight.disk",
        Severity.ERROR,
        f"free disk for the release (twice its {release_bytes / 2**20:.1f} MiB)",
        "free space there (or set runtime.base_dir to a larger disk)",
    )
    plan.add(
        HostCheck(None, "clock", {}),
        "preflight.clock-skew",
        Severity.WARNING,
        "the clock",
        "run NTP (chrony, systemd-timesyncd) on the host",
    )
    return plan, findings


def _plan_needs(
    plan: _Checks, findings: list[Finding], project: Project, env: str, name: str, need: Need
) -> None:
    config = render_config(project, env)[name]
    for entry in need.env:
        variable = str(entry.get("name") or "")
        if (
            not variable
            or variable in config
            or variable in PROVIDED
            or variable.startswith(PROVIDED_PREFIXES)
            or entry.get("provided") in {"airlock", "runtime"}  # set wherever it runs
            or not (entry.get("how") == "static" or entry.get("where"))  # a library's lookup
        ):
            continue
        how = str(entry.get("how") or "observed")
        findings.append(
            Finding(
                "preflight.env-missing",
                Severity.WARNING,
                f"{name} reads the environment variable {variable} ({how}), which its config in "
                f"{env} does not set",
                hint=f"set it under services.{name}.config (or environments.{env}.config), or "
                "make sure the service copes without it",
            )
        )
    elsewhere = need.environment is not None and need.environment != env
    if elsewhere:
        findings.append(
            Finding(
                "preflight.discovery-elsewhere",
                Severity.WARNING,
                f"discovery of {name} ran with {need.environment}'s config, not {env}'s: its "
                f"outbound destinations and names in {env} are not checked",
                hint=f"run `airlock discover --all --env {env}` for this release",
            )
        )
    for entry in [] if elsewhere else need.connects:
        host, port = str(entry.get("host") or entry.get("address") or ""), entry.get("port")
        seen, failed = entry.get("seen") or 1, entry.get("failed") or 0
        if entry.get("service") or failed >= seen or not isinstance(port, int) or not host:
            continue  # dependencies are checked from the model; what never worked was not needed
        if str(entry.get("protocol") or "tcp") != "tcp":
            continue  # a UDP destination answers nothing to a connect: not checkable this way
        if _is_local(host) or _is_local(str(entry.get("address") or "")):
            continue
        plan.add(
            HostCheck(name, "connect", {"host": host, "port": port, "timeout": 3.0}),
            "preflight.outbound-unreachable",
            Severity.ERROR,
            f"{name} → {host}:{port} (outbound, seen by discovery)",
            f"open TCP port {port} to {host} from {name}'s hosts",
        )
    for host_name in [] if elsewhere else need.names:
        if _is_local(host_name):
            continue
        plan.add(
            HostCheck(name, "resolve", {"name": host_name}),
            "preflight.dns",
            Severity.ERROR,
            f"{name} resolves {host_name}",
            f"make {host_name} resolvable on {name}'s hosts (DNS, /etc/hosts)",
        )
    for entry in need.files:
        path, mode = str(entry.get("path") or ""), str(entry.get("mode") or "r")
        if not path.startswith("/") or _system_file(path) or entry.get("error"):
            continue  # an open that always failed was a probe the service coped without
        plan.add(
            HostCheck(name, "file", {"path": path, "mode": "w" if "w" in mode else "r"}),
            "preflight.file-missing",
            Severity.ERROR,
            f"{name} {'writes' if 'w' in mode else 'reads'} {path}",
            f"create {path} on {name}'s hosts (or change the service)",
        )


def judge(plan: _Checks, results: Sequence[CheckResult], *, asked_at: float) -> list[Finding]:
    """Findings from the host checks' results; evidence says where and what ran."""
    findings: list[Finding] = []
    index = {id(check): i for i, check in enumerate(plan.checks)}
    for result in results:
        code, severity, what, hint = plan.judges[index[id(result.check)]]
        evidence = {
            "host": result.host,
            "check": result.check.kind,
            "arguments": result.check.args,
            "target": result.target,
            "result": result.detail,
        }
        if result.check.kind == "clock" and result.ok:
            host_time = result.data.get("time")
            if not isinstance(host_time, int | float):
                continue
            skew = float(host_time) - asked_at
            if abs(skew) < SKEW_WARNING:
                continue
            severity = Severity.ERROR if abs(skew) >= SKEW_ERROR else Severity.WARNING
            findings.append(
                Finding(
                    code,
                    severity,
                    f"{result.host}: the clock is {skew:+.1f} s off this machine's",
                    hint=hint,
                    evidence={**evidence, "skew_seconds": round(skew, 3)},
                )
            )
            continue
        if result.ok:
            continue
        if "could not run on the host" in result.detail:
            code, severity = "preflight.host-unreachable", Severity.ERROR
        where = f"from {result.host}" + (f" to {result.target}" if result.target else "")
        findings.append(
            Finding(
                code,
                severity,
                f"{what}: {where}: {result.detail}",
                hint=hint,
                evidence=evidence,
            )
        )
    return findings


async def _run(
    project: Project, env: str, bundle: Bundle, root: Path, runtime: Runtime
) -> tuple[list[Finding], list[dict[str, Any]]]:
    try:
        bound = await runtime.endpoints()
    except AirlockError as exc:
        finding = Finding(
            "preflight.host-unreachable",
            Severity.ERROR,
            f"cannot read what runs in {env}: {exc.message.splitlines()[0]}",
            hint=exc.hint,
        )
        return [finding], []
    size = sum(p.stat().st_size for p in bundle.files_dir.rglob("*") if p.is_file())
    plan, findings = plan_checks(
        project, env, bound, discovered(bundle), release_bytes=size, data_dir=runtime.data_dir
    )
    # the clocks in a round of their own: a skew is judged against the time the question was
    # asked, so the round must not wait on slow connections
    clocks = [c for c in plan.checks if c.kind == "clock"]
    started = time.time()
    results = await runtime.check_hosts(clocks)
    asked_at = (started + time.time()) / 2
    results += await runtime.check_hosts([c for c in plan.checks if c.kind != "clock"])
    findings += judge(plan, results, asked_at=asked_at)
    rows = [
        {
            "host": r.host,
            "check": r.check.kind,
            "service": r.check.service,
            "target": r.target,
            "ok": r.ok,
            "result": r.detail,
        }
        for r in results
    ]
    return findings, rows


def _secrets(bundle: Bundle, env: str, project_root: Path) -> list[Finding]:
    """Every secret the release's config for ``env`` references is in the environment's
    provider (looked up by name; no value is read into a message)."""
    from airlock.secrets import referenced, resolver

    provider = resolver(bundle.project, env, root=project_root)
    findings = []
    for name, users in sorted(referenced(bundle.config(env)).items()):
        if provider.lookup(name):
            continue
        findings.append(
            Finding(
                "preflight.secret-missing",
                Severity.ERROR,
                f"secret {name} (used by {', '.join(users)}) is not in {provider.where}",
                hint="add it there before the release (its value is never printed)",
                evidence={"secret": name, "provider": provider.where},
            )
        )
    return findings


def _tls(project: Project, env: str) -> list[Finding]:
    posture = project.environments[env].posture
    if posture is None:
        return []
    parts = urlsplit(posture.url)
    if parts.scheme != "https" or not parts.hostname:
        return []
    from airlock.checks.posture import check_tls

    return check_tls(parts.hostname, parts.port or 443, min_days=project.gates.cert_min_days)


def preflight(
    project_root: Path, env: str, release_ref: str | None = None, *, tls: bool = True
) -> GateOutcome:
    """Check ``env`` against what the release ``release_ref`` (default: the newest) needs."""
    bundle = find_release(project_root, release_ref)
    project = bundle.project
    require_env(project, env)
    runtime = open_runtime(project, env, root=project_root)

    async def go() -> tuple[list[Finding], list[dict[str, Any]]]:
        try:
            return await _run(project, env, bundle, project_root, runtime)
        finally:
            close = getattr(runtime, "close", None)
            if close is not None:
                await close()

    findings, rows = asyncio.run(go())
    findings += _secrets(bundle, env, project_root)
    if tls:
        findings += _tls(project, env)
    hosts = sorted({row["host"] for row in rows})
    checked = sum(1 for row in rows if row["ok"])
    return GateOutcome.from_findings(
        "preflight",
        findings,
        ok=f"{checked} check(s) passed on {len(hosts)} host(s)",
        evidence={"release": bundle.label, "runtime": runtime.name, "checks": rows},
    )
