"""Plans: the dependency graph, the start order, rendered config and what changes on deploy.

Everything here is pure: a :class:`Plan` is computed from a sealed release's manifest and the
environment's deployed state, and then executed by the runner and rendered by the faces.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from airlock.engine import EnginePlan, ServiceStep
from airlock.graph import depths, named, toposort
from airlock.graph import find_cycle as graph_find_cycle
from airlock.model import Project, Scalar, references

# ---------------------------------------------------------------------------------------------
# The dependency graph.


def find_cycle(graph: Mapping[str, Sequence[str]]) -> list[str] | None:
    """One dependency cycle as ``[a, b, …, a]``, or ``None``; unknown names are ignored."""
    names, deps = named(graph)
    cycle = graph_find_cycle(deps)
    return None if cycle is None else [names[i] for i in cycle]


def topological_order(graph: Mapping[str, Sequence[str]]) -> list[str]:
    """Dependencies first, ties broken by name; the graph must be acyclic."""
    names, deps = named(graph)
    return [names[i] for i in toposort(deps)]


def waves(graph: Mapping[str, Sequence[str]]) -> list[list[str]]:
    """Services grouped by dependency depth: how a plan is *shown* (starts are eager)."""
    names, deps = named(graph)
    grouped: dict[int, list[str]] = {}
    for name, level in zip(names, depths(deps), strict=True):
        grouped.setdefault(level, []).append(name)
    return [grouped[level] for level in sorted(grouped)]


def dependency_graph(project: Project) -> dict[str, list[str]]:
    return {name: list(service.depends_on) for name, service in project.services.items()}


# ---------------------------------------------------------------------------------------------
# Rendered config.


def _text(value: Scalar) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def render_config(project: Project, env: str) -> dict[str, dict[str, str]]:
    """Each service's environment variables in ``env``: service config merged with the
    environment's overrides, as text. References stay as written: they are bound at deploy
    (ports, folders, secrets), so a sealed release never holds a secret's value."""
    overrides = project.environments[env].config
    rendered: dict[str, dict[str, str]] = {}
    for name, service in project.services.items():
        merged: dict[str, Scalar] = {**service.config, **overrides.get(name, {})}
        rendered[name] = {key: _text(value) for key, value in sorted(merged.items())}
    return rendered


def secret_keys(config: Mapping[str, str]) -> set[str]:
    """Keys whose value holds a secret: a ``${secret:…}`` or ``${database.url}`` reference
    (a database URL carries its password)."""
    return {
        key
        for key, value in config.items()
        if any(r.kind in {"secret", "database"} for r in references(value))
    }


def uses_database(config: Mapping[str, str]) -> bool:
    """Whether a service's rendered config reaches for the database (``${database.url}``)."""
    return any(r.kind == "database" for value in config.values() for r in references(value))


def service_digest(
    name: str,
    argv: Sequence[str],
    sources: Mapping[str, str],
    config: Mapping[str, str],
    probes: Sequence[str | None],
) -> str:
    """What identifies one version of a service in one environment: its command, the hashes
    of its sealed sources, its rendered config and its probes."""
    payload = json.dumps(
        {
            "name": name,
            "argv": list(argv),
            "sources": dict(sorted(sources.items())),
            "config": dict(sorted(config.items())),
            "probes": list(probes),
        },
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()


# ---------------------------------------------------------------------------------------------
# Plans.


@dataclass(frozen=True)
class ConfigChange:
    key: str
    change: Literal["added", "removed", "changed"]
    old: str | None
    new: str | None


@dataclass(frozen=True)
class ServicePlan:
    name: str
    action: Literal["start", "keep", "remove"]
    depends_on: tuple[str, ...]
    digest: str | None
    deployed_digest: str | None
    deployed_release: str | None
    config_changes: tuple[ConfigChange, ...] = ()

    @property
    def reason(self) -> str:
        if self.action == "remove":
            return "not in this release: stopped after the bake"
        if self.action == "keep":
            return "unchanged"
        if self.deployed_digest is None:
            return "new service"
        if self.config_changes:
            return f"new version, {len(self.config_changes)} config change(s)"
        return "new version"


@dataclass(frozen=True)
class Plan:
    """What a deploy of ``release`` to ``env`` will do."""

    env: str
    release: str
    version: str
    previous_release: str | None
    services: tuple[ServicePlan, ...]
    waves: tuple[tuple[str, ...], ...]
    bake_seconds: float
    max_parallel: int | None
    ready_timeouts: Mapping[str, float] = field(default_factory=dict)
    # Pending migrations ({"script", "version", "kind"}) and their lint findings (as dicts),
    # filled in when the environment has a database.
    migrations: tuple[Mapping[str, Any], ...] = ()
    migration_findings: tuple[Mapping[str, Any], ...] = ()

    @property
    def changed(self) -> list[ServicePlan]:
        return [s for s in self.services if s.action != "keep"]

    def service(self, name: str) -> ServicePlan:
        for candidate in self.services:
            if candidate.name == name:
                return candidate
        raise KeyError(name)

    @property
    def changes_something(self) -> bool:
        """Whether a deploy of this plan starts or removes anything."""
        return any(s.action in ("start", "remove") for s in self.services)

    def engine_plan(self) -> EnginePlan:
        return EnginePlan(
            services=tuple(
                ServiceStep(
                    name=s.name,
                    depends_on=s.depends_on,
                    action="start" if s.action == "start" else "keep",
                    ready_timeout=self.ready_timeouts.get(s.name, 30.0),
                    has_old=s.deployed_digest is not None,
                )
                for s in self.services
                if s.action != "remove"
            ),
            # Nothing new runs: there is nothing to watch, so no bake to wait through.
            bake_seconds=self.bake_seconds if self.changes_something else 0.0,
            max_parallel=self.max_parallel,
            remove=tuple(s.name for s in self.services if s.action == "remove"),
        )

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["waves"] = [list(w) for w in self.waves]
        data["ready_timeouts"] = dict(self.ready_timeouts)
        data["migrations"] = [dict(m) for m in self.migrations]
        data["migration_findings"] = [dict(f) for f in self.migration_findings]
        for service in data["services"]:
            service["reason"] = self.service(service["name"]).reason
        return data


@dataclass(frozen=True)
class DeployedService:
    """What serves one service in an environment now."""

    release: str
    digest: str
    config: Mapping[str, str]


def config_changes(old: Mapping[str, str], new: Mapping[str, str]) -> tuple[ConfigChange, ...]:
    changes: list[ConfigChange] = []
    for key in sorted(set(old) | set(new)):
        if key not in old:
            changes.append(ConfigChange(key, "added", None, new[key]))
        elif key not in new:
            changes.append(ConfigChange(key, "removed", old[key], None))
        elif old[key] != new[key]:
            changes.append(ConfigChange(key, "changed", old[key], new[key]))
    return tuple(changes)


def make_plan(
    *,
    env: str,
    release: str,
    version: str,
    project: Project,
    digests: Mapping[str, str],
    config: Mapping[str, Mapping[str, str]],
    deployed: Mapping[str, DeployedService],
    previous_release: str | None,
) -> Plan:
    """Compare a sealed release (its project, per-service digests and rendered config for
    ``env``) with what is deployed, and decide each service's action."""
    graph = dependency_graph(project)
    services: list[ServicePlan] = []
    for name in topological_order(graph):
        current = deployed.get(name)
        digest = digests[name]
        action: Literal["start", "keep"] = (
            "keep" if current is not None and current.digest == digest else "start"
        )
        services.append(
            ServicePlan(
                name=name,
                action=action,
                depends_on=tuple(graph[name]),
                digest=digest,
                deployed_digest=current.digest if current else None,
                deployed_release=current.release if current else None,
                config_changes=config_changes(current.config if current else {}, config[name])
                if current is None or action == "start"
                else (),
            )
        )
    for name in sorted(set(deployed) - set(graph)):
        gone = deployed[name]
        services.append(
            ServicePlan(
                name=name,
                action="remove",
                depends_on=(),
                digest=None,
                deployed_digest=gone.digest,
                deployed_release=gone.release,
                config_changes=config_changes(gone.config, {}),
            )
        )
    environment = project.environments[env]
    return Plan(
        env=env,
        release=release,
        version=version,
        previous_release=previous_release,
        services=tuple(services),
        waves=tuple(tuple(w) for w in waves(graph)),
        bake_seconds=project.bake_seconds(env),
        max_parallel=environment.max_parallel,
        ready_timeouts={name: project.ready_timeout(name) for name in project.services},
    )
