"""Config parity and secrets across environments (INC01, INC12).

- ``config.parity-missing-key``: a key set for a service in one environment and not another;
- ``config.cross-env-reference``: a value in one environment naming a host, URL or database that
  belongs to another (see :func:`cross_env_references` for what "belongs" means);
- ``secret.literal-in-config``: a value that looks like a secret written into the file instead of
  a ``${secret:…}`` reference;
- ``secret.shared-across-envs``: two environments resolve a secret to the same value — compared
  by HMAC-SHA256 under a key made fresh for each run, so values are never printed, stored or
  compared in the clear;
- ``secret.undefined``: a referenced secret the environment's provider does not have.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets as random
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from airlock.errors import Location, SecretError
from airlock.findings import Finding, Severity
from airlock.model import Project, references, substitute
from airlock.plan import render_config
from airlock.secrets import resolver

CODES = {
    "config.parity-missing-key": "A config key is set in one environment and missing in another.",
    "config.cross-env-reference": "A value in one environment names a host, URL or database "
    "belonging to another environment.",
    "secret.literal-in-config": "A config value looks like a secret instead of a ${secret:…} "
    "reference.",
    "secret.shared-across-envs": "Two environments resolve a secret to the same value.",
    "secret.undefined": "A referenced secret cannot be resolved in an environment.",
}

_URL = re.compile(r"\b[a-z][a-z0-9+.-]*://(?:[^/\s:@]*(?::[^/\s@]*)?@)?([^/\s:?#'\"]+)", re.I)
_LOOPBACK = {"localhost", "127.0.0.1", "::1", "0.0.0.0", "[::1]"}
_SECRET_NAME = re.compile(
    r"(pass(word|wd)?|secret|token|api[_-]?key|apikey|private[_-]?key|client[_-]?secret|"
    r"credential|auth[_-]?key|signing[_-]?key|access[_-]?key)",
    re.I,
)
_PLACEHOLDER = re.compile(r"^(|x+|\*+|changeme|change-me|todo|none|null|example.*|<.*>)$", re.I)


def _hosts_in(value: str) -> list[str]:
    found = []
    for match in _URL.finditer(value):
        host = match.group(1).lower().strip("[]")
        if host and host not in _LOOPBACK and not host.startswith("127."):
            found.append(host)
    return found


def _database_names_in(value: str) -> set[str]:
    """Database names in the database URLs of a value (the first path segment)."""
    names = set()
    for match in re.finditer(r"\b(?:postgres(?:ql)?|mysql|mariadb|mongodb(?:\+srv)?)://\S+", value):
        path = urlsplit(match.group(0)).path.strip("/")
        if path:
            names.add(path.split("/")[0])
    return names


def _belongs(host: str, marker: str) -> bool:
    return host == marker or host.endswith("." + marker)


@dataclass
class _EnvView:
    """What one environment's rendered config says, with references replaced."""

    name: str
    values: dict[str, str] = field(default_factory=dict)  # "service.KEY" -> text
    hosts: dict[str, list[str]] = field(default_factory=dict)  # "service.KEY" -> hosts
    declared: set[str] = field(default_factory=set)
    database_names: set[str] = field(default_factory=set)


def _view(project: Project, env: str) -> _EnvView:
    environment = project.environments[env]
    view = _EnvView(env, declared=environment.member_hosts())

    def placeholder(ref: object) -> str:
        kind = getattr(ref, "kind", "")
        if kind == "env" and getattr(ref, "name", "") == "name":
            return env
        if kind == "database":
            return database_url or ""
        return "127.0.0.1" if kind == "service" else ""

    database_url = None
    database = environment.database
    if database is not None and database.url:
        database_url = substitute(database.url, lambda _ref: "x")
        view.values["database.url"] = database_url
        parts = urlsplit(database_url)
        if parts.hostname and parts.hostname not in _LOOPBACK:
            view.declared.add(parts.hostname.lower())
        if parts.path.strip("/"):
            view.database_names.add(parts.path.strip("/"))
    for service, config in render_config(project, env).items():
        for key, value in config.items():
            if any(r.kind == "secret" for r in references(value)):
                continue  # secrets are compared by the secret checks, never read here
            view.values[f"{service}.{key}"] = substitute(value, placeholder)
    view.hosts = {key: _hosts_in(value) for key, value in view.values.items()}
    return view


_ALIASES = {
    "production": {"production", "prod", "prd"},
    "staging": {"staging", "stage", "stg"},
    "development": {"development", "dev"},
    "dev": {"dev", "development"},
    "test": {"test", "tst"},
}


def _names_env(host: str, env: str) -> bool:
    """The host's labels name the environment (``api.staging.x``, ``db-stg.x``)."""
    tokens = set(re.split(r"[.-]", host))
    return bool(tokens & _ALIASES.get(env, {env}))


def _declared_owner(host: str, views: list[_EnvView]) -> str | None:
    """The environment that declares the most specific name covering ``host``."""
    best: tuple[int, str] | None = None
    for view in views:
        for marker in view.declared:
            if _belongs(host, marker) and (best is None or len(marker) > best[0]):
                best = (len(marker), view.name)
    return best[1] if best else None


def _whose(
    host: str, key: str, view: _EnvView, other: _EnvView, views: list[_EnvView]
) -> str | None:
    """Why ``host``, used by ``view`` at ``key``, belongs to ``other`` (or None)."""
    if _names_env(host, other.name) and not _names_env(host, view.name):
        return "is named for"
    owner = _declared_owner(host, views)
    if owner is not None:
        return "is declared by" if owner == other.name else None
    for role, hosts in other.hosts.items():
        mine = view.hosts.get(role)
        if role != key and host in hosts and mine and host not in mine:
            return f"is what {role} uses in"
    return None


def cross_env_references(project: Project, envs: Iterable[str] | None = None) -> list[Finding]:
    """Values naming another environment's host or database. A host belongs to environment F
    when F declares it (``hosts:``, its database URL), when its labels name F (``stg``,
    ``staging``, ``prod``, …), or when F uses it for a key for which this environment uses a
    host of its own (so a provider every environment uses for the same key belongs to nobody)."""
    views = [_view(project, env) for env in project.environments]
    wanted = set(envs) if envs is not None else {v.name for v in views}
    findings: list[Finding] = []
    for view in views:
        if view.name not in wanted:
            continue
        for key, value in view.values.items():
            for other in views:
                if other is view:
                    continue
                problem = None
                for host in view.hosts.get(key, []):
                    reason = _whose(host, key, view, other, views)
                    if reason is not None:
                        problem = f"host {host}, which {reason} {other.name}"
                        break
                if problem is None:
                    for name in _database_names_in(value) & (
                        other.database_names - view.database_names
                    ):
                        problem = f"database {name!r}, which belongs to {other.name}"
                        break
                if problem is None:
                    continue
                findings.append(
                    Finding(
                        "config.cross-env-reference",
                        Severity.ERROR,
                        f"{view.name}: {key} names {problem}",
                        _locate(project, view.name, key),
                        hint=f"use {view.name}'s own endpoint here (an environment override or "
                        "a ${services…}/${database.url} reference)",
                        evidence={"env": view.name, "key": key, "other_env": other.name},
                    )
                )
    return findings


def _locate(project: Project, env: str, key: str) -> Location:
    if key == "database.url":
        return project.locate("environments", env, "database", "url")
    service, _, name = key.partition(".")
    if name in project.environments[env].config.get(service, {}):
        return project.locate("environments", env, "config", service, name)
    return project.locate("services", service, "config", name)


def parity(project: Project) -> list[Finding]:
    """Keys set for a service in some environments but not all."""
    rendered = {env: render_config(project, env) for env in project.environments}
    findings = []
    for service in project.services:
        keys = {env: set(config[service]) for env, config in rendered.items()}
        union = set().union(*keys.values())
        for env, present in sorted(keys.items()):
            for key in sorted(union - present):
                having = sorted(e for e, k in keys.items() if key in k)
                findings.append(
                    Finding(
                        "config.parity-missing-key",
                        Severity.WARNING,
                        f"{env}: {service}.{key} is not set, but it is in {', '.join(having)}",
                        project.locate("environments", env),
                        hint=f"set it for {env} under environments.{env}.config.{service}, or "
                        "remove it everywhere",
                        evidence={"env": env, "service": service, "key": key},
                    )
                )
    return findings


def literal_secrets(project: Project) -> list[Finding]:
    """Config values that look like secrets written into the file."""
    findings = []
    seen: set[tuple[str, str]] = set()
    for env in project.environments:
        for service, config in render_config(project, env).items():
            for key, value in config.items():
                if any(True for _ in references(value)) or (service, key) in seen:
                    continue
                if _looks_secret(key, value):
                    seen.add((service, key))
                    findings.append(
                        Finding(
                            "secret.literal-in-config",
                            Severity.ERROR,
                            f"{service}.{key} holds a literal value that looks like a secret",
                            _locate(project, env, f"{service}.{key}"),
                            hint=f"move it to the secret store and write ${{secret:{key}}}",
                            evidence={"service": service, "key": key},
                        )
                    )
    return findings


def _looks_secret(key: str, value: str) -> bool:
    if _PLACEHOLDER.match(value.strip()):
        return False
    if _SECRET_NAME.search(key) and len(value) >= 8 and not value.isdigit():
        return True
    try:
        from airlock.checks.leaks import scan_text
    except ImportError:  # pragma: no cover - the scanner ships with Airlock
        return False
    return bool(scan_text(f"{key}={value}\n", path="airlock.yaml"))


@dataclass(frozen=True)
class SecretCheck:
    findings: list[Finding]
    resolved: dict[str, set[str]]  # env -> names resolved


def secret_values(
    project: Project, envs: Iterable[str], *, root: Path | None = None
) -> SecretCheck:
    """Undefined secrets in ``envs``, and secrets whose value one of ``envs`` shares with any
    environment (compared by HMAC only). Other environments whose provider cannot be reached
    from here are left out of the comparison; those of ``envs`` raise."""
    chosen = set(envs)
    run_key = random.token_bytes(32)
    digests: dict[bytes, list[tuple[str, str]]] = {}
    findings: list[Finding] = []
    resolved: dict[str, set[str]] = {}
    for env in sorted(project.environments, key=lambda e: (e not in chosen, e)):
        try:
            found = _resolve_env(project, env, root, run_key, digests)
        except SecretError:
            if env in chosen:
                raise
            continue
        resolved[env] = found.names
        if env in chosen:
            findings += found.findings
    for holders in digests.values():
        envs_holding = {env for env, _ in holders}
        if len(envs_holding) < 2 or not envs_holding & chosen:
            continue
        described = ", ".join(f"{name} in {env}" for env, name in sorted(holders))
        findings.append(
            Finding(
                "secret.shared-across-envs",
                Severity.ERROR,
                f"the same secret value is used by {described}",
                project.locate("environments"),
                hint="give every environment its own value (rotate the shared one), e.g. "
                "with a per-environment prefix or secrets file",
                evidence={"holders": [{"env": e, "secret": n} for e, n in sorted(holders)]},
            )
        )
    return SecretCheck(findings, resolved)


@dataclass
class _Resolved:
    names: set[str] = field(default_factory=set)
    findings: list[Finding] = field(default_factory=list)


def _resolve_env(
    project: Project,
    env: str,
    root: Path | None,
    run_key: bytes,
    digests: dict[bytes, list[tuple[str, str]]],
) -> _Resolved:
    out = _Resolved()
    provider = resolver(project, env, root=root)
    names: dict[str, list[str]] = {}
    for service, values in render_config(project, env).items():
        for key, value in values.items():
            for ref in references(value):
                if ref.kind == "secret":
                    names.setdefault(ref.name, []).append(f"{service}.{key}")
    pending: list[tuple[bytes, str]] = []
    for name, users in sorted(names.items()):
        secret = provider.lookup(name)
        if not secret:
            out.findings.append(
                Finding(
                    "secret.undefined",
                    Severity.ERROR,
                    f"{env}: secret {name} (used by {', '.join(users)}) is not in {provider.where}",
                    project.locate("environments", env),
                    hint="add it to the environment's secret store",
                    evidence={"env": env, "secret": name},
                )
            )
            continue
        out.names.add(name)
        pending.append((hmac.new(run_key, secret.encode(), hashlib.sha256).digest(), name))
    for digest, name in pending:  # only once every lookup of this environment worked
        digests.setdefault(digest, []).append((env, name))
    return out


def check_environments(
    project: Project, envs: Iterable[str], *, root: Path | None = None
) -> list[Finding]:
    """Every cross-environment finding for ``envs``."""
    chosen = list(envs)
    findings: list[Finding] = []
    if len(project.environments) > 1:
        findings += [f for f in parity(project) if f.evidence.get("env") in chosen]
        findings += cross_env_references(project, chosen)
    findings += literal_secrets(project)
    findings += secret_values(project, chosen, root=root).findings
    return findings
