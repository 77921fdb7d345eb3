"""The project file: ``airlock.yaml`` → typed, validated objects.

Loading keeps the position of every YAML node, so any error — a YAML syntax error, a wrong type,
an unknown key — names ``file:line:column``, the dotted key path, and a hint (``did you mean
'depends_on'?``). Interpolation references (``${...}``) are parsed here; they are resolved later,
per environment, by :mod:`airlock.plan` and the runner.

Loading is bounded (:data:`MAX_BYTES`, :data:`MAX_NODES`, :data:`MAX_DEPTH`,
:data:`MAX_ALIAS_NODES`), so a hostile file is refused with a position instead of exhausting
the stack, the memory or the user's patience.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from airlock.errors import Location, ProjectError, UsageError

PROJECT_FILE = "airlock.yaml"
NAME_PATTERN = r"^[a-z][a-z0-9_-]{0,62}$"
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

# ---------------------------------------------------------------------------------------------
# Durations: "10s", "500ms", "2m", "1h", or a number of seconds.

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(value: object) -> float:
    """Seconds from ``10s``, ``500ms``, ``2m``, ``1h`` or a plain number."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 10s, 500ms or 2m")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (match := _DURATION.match(value)):
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    else:
        raise ValueError(f"{value!r} is not a duration; use e.g. 10s, 500ms or 2m")
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds


Duration = Annotated[float, BeforeValidator(parse_duration)]
Scalar = str | int | float | bool


def _strict(title: str | None = None) -> ConfigDict:
    config = ConfigDict(extra="forbid", populate_by_name=True)
    if title is not None:
        config["title"] = title
    return config


# ---------------------------------------------------------------------------------------------
# The schema.


class ServiceModel(BaseModel):
    """One service: how to run it, how to tell it is alive and ready, what it needs."""

    model_config = _strict()

    run: str | list[str] = Field(
        description="Command that starts one instance; `python` means the interpreter running "
        "Airlock. The instance listens on 127.0.0.1:$PORT."
    )
    source: list[str] = Field(
        default_factory=list,
        description="Files or folders (relative to airlock.yaml) sealed into the release and "
        "run from there.",
    )
    port: int | Literal["auto"] = Field(
        default="auto",
        description="Stable port the service is reached on; `auto` picks one per environment "
        "and keeps it.",
    )
    health: str = Field(default="/healthz", description="Liveness path.")
    ready: str | None = Field(
        default="/readyz", description="Readiness path: traffic only after it answers 2xx."
    )
    depends_on: list[str] = Field(
        default_factory=list, description="Services that must be ready before this one starts."
    )
    config: dict[str, Scalar] = Field(
        default_factory=dict,
        description="Environment variables; values may use ${...} references.",
    )
    ready_timeout: Duration | None = Field(
        default=None, description="How long a new instance may take to become ready."
    )
    openapi: str | None = Field(
        default=None,
        description="OpenAPI document of the service's API (relative to airlock.yaml); "
        "breaking changes against the deployed release are refused unless info.version's "
        "major number changed.",
    )
    config_files: list[str] = Field(
        default_factory=list,
        description="Config files the service reads (JSON, YAML, TOML, INI); each must parse.",
    )
    metrics: str | None = Field(
        default=None,
        description="Path of the service's Prometheus metrics (e.g. /metrics); while a release "
        "bakes, its request, 5xx and latency figures are judged against gates.error_rate and "
        "gates.p95_ms.",
    )
    endpoints: list[str] = Field(
        default_factory=list,
        description="Requests the default load test sends to this service, e.g. "
        "`GET /accounts/1` (see gates.load).",
    )

    @field_validator("source", mode="before")
    @classmethod
    def _one_or_many(cls, value: object) -> object:
        return [value] if isinstance(value, str) else value

    @field_validator("port")
    @classmethod
    def _port_range(cls, value: int | str) -> int | str:
        if isinstance(value, int) and not 1 <= value <= 65535:
            raise ValueError("a port is a number from 1 to 65535, or `auto`")
        return value

    @field_validator("endpoints")
    @classmethod
    def _endpoints(cls, value: list[str]) -> list[str]:
        for item in value:
            parts = item.split()
            method_ok = len(parts) == 2 and parts[0].upper() in HTTP_METHODS
            if not method_ok or not parts[1].startswith("/"):
                raise ValueError(f"{item!r} is not `METHOD /path`, e.g. `GET /accounts/1`")
        return value

    @field_validator("health", "ready", "metrics")
    @classmethod
    def _path(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("/"):
            raise ValueError(f"{value!r} is not an HTTP path; start it with /")
        return value

    @property
    def argv(self) -> list[str]:
        import shlex

        return shlex.split(self.run) if isinstance(self.run, str) else list(self.run)


class DatabaseModel(BaseModel):
    """The project's PostgreSQL database: where its migrations live."""

    model_config = _strict()

    migrations: str | None = Field(default=None, description="Folder of V/U/R migration files.")
    lock_timeout: Duration = Field(
        default=5.0, description="How long a migration statement may wait for a table lock."
    )
    statement_timeout: Duration = Field(
        default=0.0, description="Longest a migration statement may run (0: no limit)."
    )
    lock_wait: Duration = Field(
        default=30.0, description="How long a second migrator waits for the migration lock."
    )
    retries: int = Field(default=3, ge=0, description="Retries of a migration on lock timeout.")


class EnvironmentDatabaseModel(BaseModel):
    """The database of one environment: an embedded server, or a URL."""

    model_config = _strict()

    embedded: bool = Field(
        default=False, description="Run an embedded PostgreSQL server for this environment."
    )
    url: str | None = Field(
        default=None, description="postgresql:// URL; may use ${secret:NAME} for the password."
    )
    name: str | None = Field(
        default=None, description="Database name on the embedded server (default: project)."
    )
    backup_key: str | None = Field(
        default=None,
        description="Key for encrypted snapshots and backups, as ${secret:NAME}; without it a "
        "key is generated in .airlock/envs/ENV/backup.key.",
    )


class LocalRuntimeModel(BaseModel):
    """Services run as processes on the machine Airlock runs on, under a per-environment agent."""

    model_config = _strict()

    type: Literal["local"] = "local"
    dir: str | None = Field(
        default=None,
        description="Folder of the environment's agent, logs and data ({env} is replaced; "
        "relative to airlock.yaml). Default: .airlock/envs/ENV. Working copies that share a "
        "state store on one machine can share it.",
    )


class SshHostModel(BaseModel):
    """One host of an ``ssh`` environment."""

    model_config = _strict()

    address: str = Field(description="IP address or DNS name Airlock connects to.")
    port: int = Field(default=22, ge=1, le=65535, description="SSH port.")
    user: str | None = Field(default=None, description="Login user (default: runtime.user).")
    key: str | None = Field(
        default=None, description="Private key file (default: runtime.key, then ssh-agent)."
    )
    roles: list[str] = Field(
        default_factory=list, description="Roles, for placement: `role:NAME` in `placement`."
    )

    @field_validator("address")
    @classmethod
    def _address(cls, value: str) -> str:
        if not value.strip() or any(c.isspace() for c in value):
            raise ValueError("an address is a host name or an IP address, without spaces")
        return value.strip()


class RolloutModel(BaseModel):
    """How a service's new version reaches its hosts."""

    model_config = _strict()

    batch: int | str = Field(
        default=1,
        description="Hosts switched at a time: a number (1) or a share of the service's hosts "
        '("25%"). Each batch gets its traffic only once its new instances are ready.',
    )

    @field_validator("batch")
    @classmethod
    def _batch(cls, value: int | str) -> int | str:
        if isinstance(value, int):
            if value < 1:
                raise ValueError("batch must be at least 1 host")
            return value
        text = value.strip()
        if not (text.endswith("%") and text[:-1].isdigit() and 0 < int(text[:-1]) <= 100):
            raise ValueError('batch is a number of hosts or a share such as "25%"')
        return text

    def size(self, hosts: int) -> int:
        """How many of ``hosts`` hosts one batch holds (at least one)."""
        if isinstance(self.batch, int):
            return max(1, min(self.batch, hosts))
        share = int(self.batch[:-1])
        return max(1, -(-hosts * share // 100))


class SshRuntimeModel(BaseModel):
    """Services run on a fleet of hosts reached over SSH, each with Airlock's agent."""

    model_config = _strict()

    type: Literal["ssh"]
    hosts: dict[str, SshHostModel] = Field(
        min_length=1, description="The hosts, by name: {web-1: {address: 10.0.0.11}, ...}."
    )
    user: str = Field(default="root", description="Login user of every host without its own.")
    key: str | None = Field(
        default=None, description="Private key file for every host without its own."
    )
    known_hosts: str | None = Field(
        default=None,
        description="known_hosts file with the hosts' keys (default: ~/.ssh/known_hosts).",
    )
    host_keys: Literal["strict", "pin"] = Field(
        default="strict",
        description="strict: a host's key must be in known_hosts. pin: trust a host's key the "
        "first time and record it in .airlock/known_hosts; a changed key is refused either way.",
    )
    base_dir: str = Field(
        default="~/.airlock",
        description="Where Airlock keeps its agent, releases and logs on each host.",
    )
    python: str = Field(default="python3", description="Python 3.11+ on the hosts.")
    keep_releases: int = Field(
        default=5,
        ge=1,
        le=1000,
        description="Releases each host keeps besides those running, the most recently used "
        "first: when a new release is installed there, older ones and the files only they "
        "used are removed.",
    )
    listen: str | None = Field(
        default=None,
        description="Address the services' stable ports listen on, on each host (default: the "
        "host's address; 0.0.0.0 for every interface).",
    )
    placement: dict[str, list[str]] = Field(
        default_factory=dict,
        description="Where services run: {service: [host name or role:NAME, ...]}. A service "
        "not listed runs on every host.",
    )
    rollout: RolloutModel = Field(default_factory=RolloutModel)
    connect_timeout: Duration = Field(default=10.0, description="Time to connect to a host.")

    def hosts_of(self, service: str) -> list[str]:
        """The names of the hosts ``service`` runs on, in the order of ``hosts``."""
        wanted = self.placement.get(service)
        if wanted is None:
            return list(self.hosts)
        chosen: set[str] = set()
        for item in wanted:
            if item.startswith("role:"):
                role = item.removeprefix("role:")
                chosen.update(n for n, h in self.hosts.items() if role in h.roles)
            elif item in self.hosts:
                chosen.add(item)
        return [name for name in self.hosts if name in chosen]


RuntimeModel = Annotated[LocalRuntimeModel | SshRuntimeModel, Field(discriminator="type")]

#: The runtimes an environment can use, by ``type``.
RUNTIME_TYPES = ("local", "ssh")


class SecretsModel(BaseModel):
    """Where an environment's ``${secret:NAME}`` values come from."""

    model_config = _strict()

    provider: Literal["env", "file", "command"] = Field(
        default="env",
        description="env: the process environment; file: a dotenv-style file (keep it outside "
        "the repository); command: a command that prints the value ({name} is replaced).",
    )
    path: str | None = Field(default=None, description="The file, for provider: file.")
    command: str | None = Field(
        default=None,
        description="For provider: command, e.g. `vault kv get -field={name} secret/staging`.",
    )
    prefix: str = Field(
        default="", description="For provider: env, a prefix, e.g. STAGING_ reads STAGING_NAME."
    )
    timeout: Duration = Field(default=10.0, description="How long the command may take.")


class PostureModel(BaseModel):
    """Where ``airlock check --env ENV --posture`` probes the running environment."""

    model_config = _strict()

    url: str = Field(description="The environment's public base URL (https:// to check TLS).")
    admin_paths: list[str] = Field(
        default_factory=list, description="Paths that must refuse anonymous requests."
    )
    sensitive_paths: list[str] = Field(
        default_factory=list,
        description="Paths that must be rate limited, e.g. `POST /password-reset`.",
    )
    burst: int = Field(default=30, ge=1, le=500, description="Requests in the rate-limit burst.")
    http_port: int | None = Field(
        default=80,
        ge=1,
        le=65535,
        description="Where plain HTTP is tried for an https `url`: it must redirect to HTTPS "
        "(null skips the check).",
    )
    https_url: str | None = Field(
        default=None,
        description="For an http `url` (e.g. behind a TLS proxy): its HTTPS address, which "
        "plain HTTP must redirect to.",
    )


class EnvironmentModel(BaseModel):
    """One environment (staging, production, …)."""

    model_config = _strict()

    runtime: RuntimeModel = Field(
        default_factory=LocalRuntimeModel,
        description="Where services run: `local` (the default) or a mapping with its `type`.",
    )
    database: EnvironmentDatabaseModel | None = None
    secrets: SecretsModel = Field(default_factory=SecretsModel)
    posture: PostureModel | None = None
    hosts: list[str] = Field(
        default_factory=list, description="Host names that belong to this environment."
    )
    approvals: int = Field(default=0, ge=0, description="Approvals a release needs here.")
    max_parallel: int | None = Field(
        default=None, ge=1, description="At most this many services starting at once."
    )
    bake: Duration | None = Field(default=None, description="Bake period; overrides gates.bake.")
    config: dict[str, dict[str, Scalar]] = Field(
        default_factory=dict,
        description="Per-service config overrides for this environment: {service: {KEY: value}}.",
    )

    def member_hosts(self) -> set[str]:
        """Host names that belong to this environment (lower case): ``hosts``, and for an
        ``ssh`` runtime the names and addresses of its hosts."""
        members = {h.lower() for h in self.hosts}
        if isinstance(self.runtime, SshRuntimeModel):
            for name, host in self.runtime.hosts.items():
                members.update({name.lower(), host.address.lower()})
        return members

    @field_validator("runtime", mode="before")
    @classmethod
    def _runtime_shorthand(cls, value: Any) -> Any:
        """``runtime: local`` is short for ``runtime: {type: local}``."""
        if isinstance(value, str):
            if value not in RUNTIME_TYPES:
                known = ", ".join(RUNTIME_TYPES)
                raise ValueError(f"unknown runtime {value!r}; Airlock has: {known}")
            return {"type": value}
        return value


class LoadGateModel(BaseModel):
    """The load gate: ``airlock gate load ENV`` runs Locust headless and compares the figures."""

    model_config = _strict()

    locustfile: str | None = Field(
        default=None,
        description="The project's locustfile (relative to airlock.yaml); without it, a default "
        "sends each service's declared `endpoints`.",
    )
    users: int = Field(default=10, ge=1, le=10000, description="Simulated users.")
    spawn_rate: float = Field(default=10.0, gt=0, description="Users started per second.")
    duration: Duration = Field(default=15.0, description="How long the load runs.")
    p50_ms: float | None = Field(default=None, gt=0, description="Highest median latency.")
    p95_ms: float | None = Field(default=None, gt=0, description="Highest 95th percentile.")
    p99_ms: float | None = Field(default=None, gt=0, description="Highest 99th percentile.")
    error_rate: float | None = Field(
        default=None, ge=0, le=1, description="Highest share of failed requests (0.01 = 1%)."
    )


class LogsGateModel(BaseModel):
    """What the log gate looks for in the logs of rehearsal and bake (INC15)."""

    model_config = _strict()

    patterns: dict[str, str] = Field(
        default_factory=dict,
        description="Named regular expressions that must not appear in the logs, e.g. "
        "{ssn: '\\d{3}-\\d{2}-\\d{4}'}.",
    )
    emails: bool = Field(default=True, description="Report e-mail addresses (as warnings).")


class CiGateModel(BaseModel):
    """Where the CI result of the commit being released comes from (INC16)."""

    model_config = _strict()

    junit: str | None = Field(
        default=None, description="A JUnit XML report (relative to airlock.yaml)."
    )
    command: str | None = Field(
        default=None,
        description="A command printing the CI status of a commit ({commit} is replaced), as "
        "JSON {state, since, url} or one word: success, failure, pending.",
    )
    timeout: Duration = Field(default=30.0, description="How long the command may take.")

    @model_validator(mode="after")
    def _one_source(self) -> CiGateModel:
        if (self.junit is None) == (self.command is None):
            raise ValueError("give exactly one of `junit` or `command`")
        return self


class GatesModel(BaseModel):
    """Release gates and their thresholds."""

    model_config = _strict()

    bake: Duration = Field(default=10.0, description="How long new versions are watched.")
    ready_timeout: Duration = Field(
        default=30.0, description="Default time a new instance has to become ready."
    )
    memory_growth_mb_per_min: float | None = Field(
        default=None, gt=0, description="Highest memory growth of a new process during bake."
    )
    error_rate: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="Highest share of 5xx responses during bake (from each service's metrics).",
    )
    p95_ms: float | None = Field(
        default=None, gt=0, description="Highest p95 latency during bake (from metrics)."
    )
    load: LoadGateModel | None = None
    logs: LogsGateModel | None = None
    ci: CiGateModel | None = None
    cert_min_days: int = Field(
        default=21, ge=0, description="Fewest days a TLS certificate may have left."
    )


class StateSettingsModel(BaseModel):
    """Where Airlock keeps releases' history, locks and the journal."""

    model_config = _strict()

    url: str | None = Field(
        default=None,
        description="postgresql://USER@HOST:PORT/DATABASE of a state store the whole team "
        "shares (the password from PGPASSWORD or ~/.pgpass, never here). AIRLOCK_STATE_URL "
        "overrides it; without either, SQLite in .airlock/.",
    )


class Project(BaseModel):
    """The whole ``airlock.yaml``."""

    model_config = _strict(title="airlock.yaml")

    project: str = Field(pattern=NAME_PATTERN, description="Project name.")
    database: DatabaseModel | None = None
    services: dict[str, ServiceModel] = Field(min_length=1)
    environments: dict[str, EnvironmentModel] = Field(min_length=1)
    gates: GatesModel = Field(default_factory=GatesModel)
    state: StateSettingsModel = Field(default_factory=StateSettingsModel)

    _file: Path = PrivateAttr(default=Path(PROJECT_FILE))
    _positions: dict[tuple[str | int, ...], tuple[int, int]] = PrivateAttr(default_factory=dict)

    @field_validator("services", "environments")
    @classmethod
    def _names(cls, value: dict[str, Any]) -> dict[str, Any]:
        for name in value:
            if not re.match(NAME_PATTERN, name):
                raise ValueError(
                    f"{name!r} is not a valid name: use lower-case letters, digits, - and _, "
                    "starting with a letter"
                )
        return value

    @property
    def file(self) -> Path:
        return self._file

    @property
    def root(self) -> Path:
        return self._file.parent

    def locate(self, *path: str | int) -> Location:
        """Where ``path`` (e.g. ``("services", "payment", "depends_on", 0)``) is in the file."""
        probe = tuple(path)
        while probe and probe not in self._positions:
            probe = probe[:-1]
        line, column = self._positions.get(probe, (None, None)) if probe else (None, None)
        return Location(
            file=str(self._file), line=line, column=column, path=".".join(map(str, path))
        )

    def service(self, name: str) -> ServiceModel:
        return self.services[name]

    def bake_seconds(self, env: str) -> float:
        override = self.environments[env].bake
        return self.gates.bake if override is None else override

    def ready_timeout(self, service: str) -> float:
        own = self.services[service].ready_timeout
        return self.gates.ready_timeout if own is None else own


def require_env(project: Project, env: str) -> None:
    """Refuse an environment ``airlock.yaml`` does not define, naming those it does."""
    if env not in project.environments:
        known = ", ".join(sorted(project.environments))
        raise UsageError(f"no environment {env!r} in {project.file}", hint=f"environments: {known}")


def migrates(project: Project, env: str) -> bool:
    """Whether a release of ``project`` has migrations to run on ``env``'s database."""
    database = project.database
    return (
        database is not None
        and bool(database.migrations)
        and project.environments[env].database is not None
    )


def json_schema() -> dict[str, Any]:
    """The JSON Schema of ``airlock.yaml``, for editors and CI validation."""
    schema = Project.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "https://airlock.dev/schema/airlock.yaml.json"
    return schema


# ---------------------------------------------------------------------------------------------
# Loading, with positions.


MAX_BYTES = 1024 * 1024
"""The largest project file Airlock reads (1 MiB); Phoenix's is 3 KiB."""
MAX_DEPTH = 64
"""The deepest nesting of mappings and lists, counting what aliases bring in."""
MAX_NODES = 20_000
"""The most values (keys, scalars, mappings, lists) a project file may write out."""
MAX_ALIAS_NODES = 10_000
"""The most values aliases (``*name``) may repeat, all aliases together."""
MAX_INT_DIGITS = 4300
"""The longest integer, in decimal digits (Python's own limit for reading one)."""

_TAG = "tag:yaml.org,2002:"
_MAP_TAG = _TAG + "map"
_SEQ_TAG = _TAG + "seq"
_INT_TAG = _TAG + "int"
_SCALAR_TAGS = frozenset(
    _TAG + name for name in ("null", "bool", "int", "float", "str", "timestamp")
)
_INT_CEILING = 10**MAX_INT_DIGITS
_LINE_BREAK = re.compile("\r\n|[\n\r\x85\u2028\u2029]")  # what YAML counts as a new line
_UNPRINTABLE = yaml.reader.Reader.NON_PRINTABLE  # characters YAML does not allow in a file


class _Refused(Exception):
    """The loader stopped at ``event``: a limit was reached, or an alias refers to itself."""

    def __init__(self, message: str, event: yaml.Event, hint: str) -> None:
        super().__init__(message)
        self.message = message
        self.event = event
        self.hint = hint


class _Loader(yaml.SafeLoader):
    """A safe loader that composes nodes within :data:`MAX_DEPTH`, :data:`MAX_NODES` and
    :data:`MAX_ALIAS_NODES`, and refuses an alias used inside its own anchor.

    Aliases are not copied by the composer (the alias and its anchor are one node), but
    everything that walks the tree afterwards visits the anchor's value once per alias: a
    300-byte file of nested aliases stands for millions of values. So every finished node's
    size and height are kept, and each alias adds its anchor's to the running totals.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0  # mappings and lists open around the current node
        self._written = 0  # nodes composed from the text
        self._repeated = 0  # nodes reached again through aliases
        self._open_anchors: set[str] = set()
        self._measures: dict[int, tuple[int, int]] = {}  # id(node) → (nodes, height)

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        event: yaml.Event = self.peek_event()  # type: ignore[no-untyped-call]
        if isinstance(event, yaml.AliasEvent):
            self._check_alias(event)
            return super().compose_node(parent, index)
        self._written += 1
        if self._written > MAX_NODES:
            raise _Refused(
                f"the file holds more than {MAX_NODES} values, more than Airlock reads",
                event,
                "airlock.yaml describes services and environments; keep data in other files",
            )
        nested = isinstance(event, yaml.CollectionStartEvent)
        if nested:
            self._depth += 1
            if self._depth > MAX_DEPTH:
                raise _Refused(
                    f"nested more than {MAX_DEPTH} levels deep",
                    event,
                    "a project file needs a few levels; look for brackets that are never closed",
                )
        anchor = event.anchor if isinstance(event, yaml.NodeEvent) else None
        if anchor is not None:
            self._open_anchors.add(anchor)
        node = super().compose_node(parent, index)
        if anchor is not None:
            self._open_anchors.discard(anchor)
        if nested:
            self._depth -= 1
        if node is not None:
            self._measures[id(node)] = self._measure(node)
        return node

    def _measure(self, node: yaml.Node) -> tuple[int, int]:
        """How many nodes ``node`` stands for (aliases expanded), and how deep it nests."""
        if isinstance(node, yaml.SequenceNode):
            children: list[yaml.Node] = list(node.value)
        elif isinstance(node, yaml.MappingNode):
            children = [item for pair in node.value for item in pair]
        else:
            return 1, 0
        measures = [self._measures[id(child)] for child in children]
        return (
            1 + sum(count for count, _ in measures),
            1 + max((height for _, height in measures), default=0),
        )

    def _check_alias(self, event: yaml.AliasEvent) -> None:
        name = event.anchor
        target = self.anchors.get(name)
        if target is None:
            return  # the composer reports an undefined alias
        if name in self._open_anchors:
            raise _Refused(
                f"alias *{name} is used inside the value of its own anchor &{name} "
                f"(line {target.start_mark.line + 1}), which would repeat itself forever",
                event,
                "an alias can only repeat a value that is complete; write this one out",
            )
        count, height = self._measures[id(target)]
        if self._depth + height > MAX_DEPTH:
            raise _Refused(
                f"alias *{name} nests values more than {MAX_DEPTH} levels deep",
                event,
                "a project file needs a few levels; use fewer aliases inside aliases",
            )
        self._repeated += count
        if self._repeated > MAX_ALIAS_NODES:
            raise _Refused(
                f"aliases repeat more than {MAX_ALIAS_NODES} values, more than Airlock "
                f"expands (alias *{name} repeats {count})",
                event,
                "each alias copies its anchor's whole value; write the values out, or use "
                "fewer aliases of aliases",
            )


def _construct(
    node: yaml.Node,
    path: tuple[str | int, ...],
    positions: dict[tuple[str | int, ...], tuple[int, int]],
    file: str,
    scalars: yaml.constructor.SafeConstructor,
) -> Any:
    positions[path] = (node.start_mark.line + 1, node.start_mark.column + 1)
    if isinstance(node, yaml.MappingNode):
        if node.tag != _MAP_TAG:
            raise _unsupported_tag(node, file, path)
        result: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                raise ProjectError(
                    "a key must be a plain string",
                    location=_mark_location(file, key_node.start_mark, path),
                )
            key = _text(key_node, str(key_node.value), file, path)
            if key in result:
                raise ProjectError(
                    f"duplicate key {_shorten(key)!r}",
                    location=_mark_location(file, key_node.start_mark, (*path, key)),
                    hint="each key may appear once in a mapping; remove one of them",
                )
            result[key] = _construct(value_node, (*path, key), positions, file, scalars)
            # Errors about a key point at the key, not at its value.
            positions[(*path, key)] = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
        return result
    if isinstance(node, yaml.SequenceNode):
        if node.tag != _SEQ_TAG:
            raise _unsupported_tag(node, file, path)
        return [
            _construct(item, (*path, index), positions, file, scalars)
            for index, item in enumerate(node.value)
        ]
    return _scalar(node, path, file, scalars)


def _scalar(
    node: yaml.Node,
    path: tuple[str | int, ...],
    file: str,
    scalars: yaml.constructor.SafeConstructor,
) -> Any:
    """The value of a scalar node, or a :class:`ProjectError` at it: an unknown tag, a value
    its tag does not fit (``!!int abc``, ``!!bool maybe``), an integer too long to read."""
    if node.tag not in _SCALAR_TAGS:
        raise _unsupported_tag(node, file, path)
    text = str(node.value)
    kind = _short_tag(node.tag)
    too_long = ProjectError(
        f"this integer has more than {MAX_INT_DIGITS} digits, more than Airlock reads",
        location=_mark_location(file, node.start_mark, path),
        hint="quote it if it is meant as text",
    )
    if node.tag == _INT_TAG and len(text.lstrip("+-").replace("_", "")) > MAX_INT_DIGITS:
        raise too_long
    try:
        value = scalars.construct_object(node, deep=True)
    except (yaml.YAMLError, ValueError, LookupError, TypeError, AttributeError, ArithmeticError):
        # PyYAML's constructors fail in many ways on a value that does not fit its tag
        raise ProjectError(
            f"{_shorten(text)!r} is not a valid {kind}",
            location=_mark_location(file, node.start_mark, path),
            hint=f"write a valid {kind}, or quote the value to make it text",
        ) from None
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= _INT_CEILING:
        raise too_long  # a hexadecimal or base-60 integer can be short and still huge
    if isinstance(value, str):
        return _text(node, value, file, path)
    return value


def _text(node: yaml.Node, value: str, file: str, path: tuple[str | int, ...]) -> str:
    """``value``, unless it holds a NUL character (written ``"\\0"``): no path, command,
    host or environment variable can."""
    if "\0" in value:
        raise ProjectError(
            "a NUL character (\\0) cannot be part of a value",
            location=_mark_location(file, node.start_mark, path),
            hint="paths, commands and environment variables cannot hold it; remove it",
        )
    return value


def _unsupported_tag(node: yaml.Node, file: str, path: tuple[str | int, ...]) -> ProjectError:
    return ProjectError(
        f"the YAML tag {_short_tag(node.tag)} is not supported here",
        location=_mark_location(file, node.start_mark, path),
        hint="remove the tag: Airlock reads plain text, numbers, true/false, lists and "
        "mappings (quote a value to make it text)",
    )


def _short_tag(tag: str) -> str:
    return "!!" + tag.removeprefix(_TAG) if tag.startswith(_TAG) else tag


def _shorten(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _mark_location(file: str, mark: yaml.Mark, path: tuple[str | int, ...]) -> Location:
    return Location(
        file=file, line=mark.line + 1, column=mark.column + 1, path=".".join(map(str, path))
    )


def _line_column(text: str, index: int) -> tuple[int, int]:
    """1-based line and column of ``text[index]``, counting line breaks as YAML does."""
    line, start = 1, 0
    for match in _LINE_BREAK.finditer(text, 0, index):
        line += 1
        start = match.end()
    return line, index - start + 1


def _text_location(file: Path, text: str, index: int) -> Location:
    line, column = _line_column(text, index)
    return Location(str(file), line, column)


def find_project_file(start: Path) -> Path:
    """``start`` itself if it is a file, else ``start/airlock.yaml``."""
    return start if start.is_file() else start / PROJECT_FILE


def load_project(path: Path | str = PROJECT_FILE) -> Project:
    """Read and validate a project file; raise :class:`ProjectError` pointing into it."""
    try:
        file = find_project_file(Path(path))
    except (OSError, ValueError) as exc:
        raise ProjectError(f"cannot read {_shorten(str(path), 200)}: {_reason(exc)}") from None
    try:
        with file.open("rb") as stream:
            data = stream.read(MAX_BYTES + 1)
    except FileNotFoundError:
        raise ProjectError(
            f"no project file at {file}",
            hint="run airlock in the folder that holds airlock.yaml, or pass --project PATH",
        ) from None
    except (OSError, ValueError) as exc:
        raise ProjectError(f"cannot read {_shorten(str(file), 200)}: {_reason(exc)}") from None
    if len(data) > MAX_BYTES:
        raise _too_big(file, data[:MAX_BYTES].decode("utf-8", errors="ignore"))
    return parse_project(_decode(data, file), file)


def _reason(exc: Exception) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)


def _too_big(file: Path, text: str) -> ProjectError:
    return ProjectError(
        f"the file is larger than {MAX_BYTES // 1024 // 1024} MiB, more than Airlock reads",
        location=_text_location(file, text, min(len(text), MAX_BYTES)),
        hint="airlock.yaml describes services and environments; keep data in other files",
    )


def _decode(data: bytes, file: Path) -> str:
    """``data`` as UTF-8 text, or a :class:`ProjectError` at the first byte that is not."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        before = data[: exc.start].decode("utf-8")
        raise ProjectError(
            f"the file is not UTF-8 text: byte 0x{data[exc.start]:02x} ({exc.reason})",
            location=_text_location(file, before, len(before)),
            hint="save airlock.yaml as UTF-8",
        ) from None


def parse_project(text: str, file: Path) -> Project:
    """Validate the text of a project file (``file`` is used for messages and relative paths).

    Within the limits above; every problem, YAML or schema, is a :class:`ProjectError` that
    names ``file:line:column``.
    """
    if len(text) > MAX_BYTES:
        raise _too_big(file, text)
    if unprintable := _UNPRINTABLE.search(text):
        character = unprintable.group()
        what = "control character" if character.isascii() or ord(character) < 0xA0 else "character"
        raise ProjectError(
            f"{what} U+{ord(character):04X} is not allowed in a YAML file",
            location=_text_location(file, text, unprintable.start()),
            hint="remove it; inside double quotes it can be written as an escape, e.g. "
            f'"\\u{ord(character):04x}"',
        )
    positions: dict[tuple[str | int, ...], tuple[int, int]] = {}
    try:
        loader = _Loader(text)
        try:
            node = loader.get_single_node()
        finally:
            loader.dispose()
        if node is None:
            raise ProjectError(
                "the file is empty", location=Location(str(file)), hint="see `airlock schema`"
            )
        data = _construct(node, (), positions, str(file), yaml.constructor.SafeConstructor())
    except _Refused as exc:
        mark = exc.event.start_mark
        location = (
            Location(str(file), mark.line + 1, mark.column + 1) if mark else Location(str(file))
        )
        raise ProjectError(exc.message, location=location, hint=exc.hint) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        location = (
            Location(str(file), mark.line + 1, mark.column + 1) if mark else Location(str(file))
        )
        raise ProjectError(
            f"invalid YAML: {exc.problem or exc.context}",
            location=location,
            hint="check indentation and quoting around this place",
        ) from None
    except yaml.reader.ReaderError as exc:
        raise ProjectError(
            f"invalid YAML: {exc.reason}", location=_text_location(file, text, exc.position)
        ) from None
    except yaml.YAMLError as exc:
        raise ProjectError(f"invalid YAML: {exc}", location=Location(str(file))) from None
    except RecursionError:  # the limits above should make this unreachable
        raise ProjectError(
            "nested too deeply to read", location=Location(str(file)), hint="see `airlock schema`"
        ) from None
    if not isinstance(data, dict):
        raise ProjectError(
            "the top level must be a mapping (project:, services:, environments:)",
            location=Location(str(file), 1, 1),
        )
    try:
        project = Project.model_validate(data)
    except ValidationError as exc:
        raise _translate(exc, data, positions, file) from None
    project._file = file.resolve()
    project._positions = positions
    return project


_MODELS_BY_PATH: list[tuple[tuple[str, ...], type[BaseModel]]] = [
    ((), Project),
    (("services", "*"), ServiceModel),
    (("environments", "*"), EnvironmentModel),
    (("environments", "*", "database"), EnvironmentDatabaseModel),
    (("environments", "*", "secrets"), SecretsModel),
    (("environments", "*", "posture"), PostureModel),
    (("database",), DatabaseModel),
    (("gates",), GatesModel),
    (("gates", "load"), LoadGateModel),
    (("gates", "logs"), LogsGateModel),
    (("gates", "ci"), CiGateModel),
]


def _model_at(path: tuple[str | int, ...]) -> type[BaseModel] | None:
    for pattern, model in _MODELS_BY_PATH:
        if len(pattern) == len(path) and all(
            p in ("*", q) for p, q in zip(pattern, path, strict=True)
        ):
            return model
    return None


def _translate(
    exc: ValidationError,
    data: Mapping[str, Any],
    positions: dict[tuple[str | int, ...], tuple[int, int]],
    file: Path,
) -> ProjectError:
    """Turn pydantic's errors into one message that points into the file."""
    grouped: dict[tuple[str | int, ...], list[str]] = {}
    hints: dict[tuple[str | int, ...], str] = {}
    for error in exc.errors():
        loc = _data_loc(data, error["loc"], missing=error["type"] == "missing")
        message = error["msg"]
        if error["type"] == "extra_forbidden" and loc:
            key = str(loc[-1])
            model = _model_at(loc[:-1])
            fields = sorted(model.model_fields) if model else []
            close = difflib.get_close_matches(key, fields, n=1, cutoff=0.6)
            message = f"unknown key {_shorten(key)!r}"
            if close:
                hints[loc] = f"did you mean {close[0]!r}?"
            elif fields:
                hints[loc] = "allowed keys here: " + ", ".join(fields)
        elif error["type"] == "missing" and loc:
            message = f"required key {str(loc[-1])!r} is missing"
        elif message.startswith("Value error, "):
            message = message.removeprefix("Value error, ")
        else:
            got = error.get("input")
            if not isinstance(got, dict | list):
                message += f" (got {_shorten(repr(got))})"
        if message not in grouped.setdefault(loc, []):
            grouped[loc].append(message)
    problems: list[tuple[Location, str, str | None]] = []
    for loc, messages in grouped.items():
        line, column = _nearest(positions, loc)
        where = Location(str(file), line, column, ".".join(map(str, loc)) or "(top level)")
        problems.append((where, "; or ".join(messages), hints.get(loc)))
    if len(problems) == 1:
        where, message, hint = problems[0]
        return ProjectError(message, location=where, hint=hint or "see `airlock schema`")
    lines = [
        f"{where}: {where.path}: {message}" + (f" ({hint})" if hint else "")
        for where, message, hint in problems
    ]
    return ProjectError(
        f"{len(problems)} problems in {file.name}:\n  " + "\n  ".join(lines),
        hint="see `airlock schema` for every key",
    )


def _data_loc(
    data: Mapping[str, Any], loc: Sequence[str | int], *, missing: bool
) -> tuple[str | int, ...]:
    """The parts of pydantic's ``loc`` that are keys and indexes into ``data`` (and, for a
    missing key, that key): pydantic adds the names of union members and validators, such as
    ``str`` or ``list[str]``, which are not in the file."""
    kept: list[str | int] = []
    current: Any = data
    for number, part in enumerate(loc):
        inside = (isinstance(current, dict) and isinstance(part, str) and part in current) or (
            isinstance(current, list) and isinstance(part, int) and 0 <= part < len(current)
        )
        if inside:
            kept.append(part)
            current = current[part]
        elif missing and number == len(loc) - 1:
            kept.append(part)
    return tuple(kept)


def _nearest(
    positions: Mapping[tuple[str | int, ...], tuple[int, int]], loc: tuple[str | int, ...]
) -> tuple[int | None, int | None]:
    probe = loc
    while probe and probe not in positions:
        probe = probe[:-1]
    if probe in positions:
        return positions[probe]
    return (None, None)


# ---------------------------------------------------------------------------------------------
# Interpolation references.

_REFERENCE = re.compile(r"\$\{([^{}]*)\}")


@dataclass(frozen=True)
class Reference:
    """One ``${...}`` inside a config value."""

    text: str  # the whole ``${...}``
    kind: Literal["database", "service", "secret", "env", "invalid"]
    name: str = ""  # service or secret name; the attribute for database/env
    attribute: str = ""  # for services: url, host or port

    @property
    def late_bound(self) -> bool:
        """Resolved at deploy time (ports, secrets, folders), not when the release is sealed."""
        return self.kind in {"database", "service", "secret", "env"}


SERVICE_ATTRIBUTES = ("url", "host", "port")
ENV_ATTRIBUTES = ("name", "data_dir")


def parse_reference(inner: str) -> Reference:
    text = "${" + inner + "}"
    body = inner.strip()
    if body.startswith("secret:"):
        name = body.removeprefix("secret:").strip()
        if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            return Reference(text, "secret", name)
        return Reference(text, "invalid", body)
    parts = body.split(".")
    if parts == ["database", "url"]:
        return Reference(text, "database", "url")
    if len(parts) == 3 and parts[0] == "services" and parts[2] in SERVICE_ATTRIBUTES:
        return Reference(text, "service", parts[1], parts[2])
    if len(parts) == 2 and parts[0] == "env" and parts[1] in ENV_ATTRIBUTES:
        return Reference(text, "env", parts[1])
    return Reference(text, "invalid", body)


def references(value: object) -> Iterator[Reference]:
    """Every ``${...}`` in a config value (``$${`` escapes a literal ``${``)."""
    if not isinstance(value, str):
        return
    for match in _REFERENCE.finditer(value):
        if match.start() > 0 and value[match.start() - 1] == "$":
            continue
        yield parse_reference(match.group(1))


def substitute(value: str, resolve: Any) -> str:
    """Replace every reference with ``resolve(reference)``; ``$${`` becomes ``${``."""

    def replace(match: re.Match[str]) -> str:
        if match.start() > 0 and value[match.start() - 1] == "$":
            return match.group(0)
        return str(resolve(parse_reference(match.group(1))))

    return _REFERENCE.sub(replace, value).replace("$${", "${")
