"""The project file: ``airlock.yaml`` → typed, validated objects.

Loading keeps the position of every YAML node, so any error — a YAML syntax error, a wrong type,
an unknown key — names ``file:line:column``, the dotted key path, and a hint (``did you mean
'depends_on'?``). Interpolation references (``${...}``) are parsed here; they are resolved later,
per environment, by :mod:`airlock.plan` and the runner.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterator, Mapping
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


class EnvironmentModel(BaseModel):
    """One environment (staging, production, …)."""

    model_config = _strict()

    runtime: Literal["local"] = Field(default="local", description="Where services run.")
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


class Project(BaseModel):
    """The whole ``airlock.yaml``."""

    model_config = _strict(title="airlock.yaml")

    project: str = Field(pattern=NAME_PATTERN, description="Project name.")
    database: DatabaseModel | None = None
    services: dict[str, ServiceModel] = Field(min_length=1)
    environments: dict[str, EnvironmentModel] = Field(min_length=1)
    gates: GatesModel = Field(default_factory=GatesModel)

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


def json_schema() -> dict[str, Any]:
    """The JSON Schema of ``airlock.yaml``, for editors and CI validation."""
    schema = Project.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "https://airlock.dev/schema/airlock.yaml.json"
    return schema


# ---------------------------------------------------------------------------------------------
# Loading, with positions.


class _Loader(yaml.SafeLoader):
    """A safe loader; we only use it to compose nodes."""


def _construct(
    node: yaml.Node,
    path: tuple[str | int, ...],
    positions: dict[tuple[str | int, ...], tuple[int, int]],
    file: str,
) -> Any:
    positions[path] = (node.start_mark.line + 1, node.start_mark.column + 1)
    if isinstance(node, yaml.MappingNode):
        result: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                raise ProjectError(
                    "a key must be a plain string",
                    location=_mark_location(file, key_node.start_mark, path),
                )
            key = str(key_node.value)
            if key in result:
                raise ProjectError(
                    f"duplicate key {key!r}",
                    location=_mark_location(file, key_node.start_mark, (*path, key)),
                    hint="each key may appear once in a mapping; remove one of them",
                )
            result[key] = _construct(value_node, (*path, key), positions, file)
            # Errors about a key point at the key, not at its value.
            positions[(*path, key)] = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
        return result
    if isinstance(node, yaml.SequenceNode):
        return [
            _construct(item, (*path, index), positions, file)
            for index, item in enumerate(node.value)
        ]
    loader = _Loader("")
    return loader.construct_object(node, deep=True)


def _mark_location(file: str, mark: yaml.Mark, path: tuple[str | int, ...]) -> Location:
    return Location(
        file=file, line=mark.line + 1, column=mark.column + 1, path=".".join(map(str, path))
    )


def find_project_file(start: Path) -> Path:
    """``start`` itself if it is a file, else ``start/airlock.yaml``."""
    return start if start.is_file() else start / PROJECT_FILE


def load_project(path: Path | str = PROJECT_FILE) -> Project:
    """Read and validate a project file; raise :class:`ProjectError` pointing into it."""
    file = find_project_file(Path(path))
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ProjectError(
            f"no project file at {file}",
            hint="run airlock in the folder that holds airlock.yaml, or pass --project PATH",
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ProjectError(f"cannot read {file}: {exc}") from None
    return parse_project(text, file)


def parse_project(text: str, file: Path) -> Project:
    """Validate the text of a project file (``file`` is used for messages and relative paths)."""
    positions: dict[tuple[str | int, ...], tuple[int, int]] = {}
    try:
        node = yaml.compose(text, Loader=_Loader)
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
    except yaml.YAMLError as exc:
        raise ProjectError(f"invalid YAML: {exc}", location=Location(str(file))) from None
    if node is None:
        raise ProjectError(
            "the file is empty", location=Location(str(file)), hint="see `airlock schema`"
        )
    data = _construct(node, (), positions, str(file))
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
        loc = tuple(part for part in error["loc"] if not _is_union_tag(part))
        message = error["msg"]
        if error["type"] == "extra_forbidden":
            key = str(loc[-1])
            model = _model_at(loc[:-1])
            fields = sorted(model.model_fields) if model else []
            close = difflib.get_close_matches(key, fields, n=1, cutoff=0.6)
            message = f"unknown key {key!r}"
            if close:
                hints[loc] = f"did you mean {close[0]!r}?"
            elif fields:
                hints[loc] = "allowed keys here: " + ", ".join(fields)
        elif error["type"] == "missing":
            message = f"required key {str(loc[-1])!r} is missing"
        elif message.startswith("Value error, "):
            message = message.removeprefix("Value error, ")
        else:
            got = error.get("input")
            if not isinstance(got, dict | list):
                message += f" (got {got!r})"
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


def _is_union_tag(part: str | int) -> bool:
    return isinstance(part, str) and ("[" in part or part in {"str", "int", "float", "bool"})


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
