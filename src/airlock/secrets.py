"""Secret values: resolved late, per environment, kept in memory only, masked everywhere.

A ``${secret:NAME}`` reference is resolved by the environment's provider (``secrets:`` in
``airlock.yaml``), like Kamal's secret adapters:

- ``env`` (the default): the process environment, ``<prefix>NAME``;
- ``file``: a dotenv-style file (``NAME=value``, ``export NAME=value``, quotes, ``#`` comments),
  which belongs outside the repository;
- ``command``: a command that prints the value on stdout, ``{name}`` replaced by the secret's
  name — so ``vault kv get -field={name} secret/prod``, ``op read op://prod/{name}/password``,
  ``pass show prod/{name}`` or ``sops -d --extract '["{name}"]' prod.enc.yaml`` all work.

Values never reach the state store, logs, output or error messages: everything Airlock writes
goes through a :class:`~airlock.masking.Masker` that knows them and their common encodings.
"""

from __future__ import annotations

import os
import shlex
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path

from airlock.errors import SecretError
from airlock.model import Project, SecretsModel, references


def parse_dotenv(text: str) -> dict[str, str]:
    """``NAME=value`` lines; ``export`` prefixes, quotes and ``#`` comments are understood."""
    values: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        line = line.removeprefix("export ").strip()
        name, sep, value = line.partition("=")
        if not sep:
            continue
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        elif " #" in value:
            value = value.split(" #", 1)[0].rstrip()
        values[name.strip()] = value
    return values


class SecretResolver:
    """Resolves ``${secret:NAME}`` for one environment; values are cached in memory."""

    def __init__(self, env: str, settings: SecretsModel, *, root: Path) -> None:
        self.env = env
        self.settings = settings
        self.root = root
        self._cache: dict[str, str | None] = {}
        self._file: dict[str, str] | None = None

    @property
    def where(self) -> str:
        provider = self.settings.provider
        if provider == "env":
            return f"the process environment ({self.settings.prefix}NAME)"
        if provider == "file":
            return f"the secrets file {self._path()}"
        return f"the command `{self.settings.command}`"

    def _path(self) -> Path:
        if not self.settings.path:
            raise SecretError(
                f"environment {self.env!r}: secrets provider `file` needs a `path`",
                hint="set environments.ENV.secrets.path to a dotenv file outside the repository",
            )
        path = Path(os.path.expanduser(self.settings.path))
        return path if path.is_absolute() else self.root / path

    def lookup(self, name: str) -> str | None:
        """The value, or ``None`` when the provider has none; provider failures raise."""
        if name not in self._cache:
            self._cache[name] = self._fetch(name)
        return self._cache[name]

    def require(self, name: str, used_by: str = "") -> str:
        value = self.lookup(name)
        if value is None or value == "":
            suffix = f" (used by {used_by})" if used_by else ""
            raise SecretError(
                f"environment {self.env!r}: secret {name}{suffix} is not in {self.where}",
                hint="add it there; values are never printed",
            )
        return value

    def _fetch(self, name: str) -> str | None:
        provider = self.settings.provider
        if provider == "env":
            return os.environ.get(self.settings.prefix + name)
        if provider == "file":
            if self._file is None:
                path = self._path()
                try:
                    self._file = parse_dotenv(path.read_text(encoding="utf-8"))
                except FileNotFoundError:
                    raise SecretError(
                        f"environment {self.env!r}: the secrets file {path} does not exist",
                        hint="create it (NAME=value lines) or fix environments.ENV.secrets.path",
                    ) from None
                except (OSError, UnicodeDecodeError) as exc:
                    raise SecretError(
                        f"environment {self.env!r}: cannot read the secrets file {path}: "
                        f"{type(exc).__name__}"
                    ) from None
            return self._file.get(name)
        return self._run(name)

    def _run(self, name: str) -> str | None:
        template = self.settings.command
        if not template:
            raise SecretError(
                f"environment {self.env!r}: secrets provider `command` needs a `command`",
                hint="e.g. command: vault kv get -field={name} secret/prod",
            )
        argv = [part.replace("{name}", name) for part in shlex.split(template)]
        try:
            result = subprocess.run(
                argv,
                capture_output=True,
                text=True,
                timeout=self.settings.timeout,
                check=False,
                cwd=self.root,
                stdin=subprocess.DEVNULL,
            )
        except FileNotFoundError:
            raise SecretError(
                f"environment {self.env!r}: the secrets command {argv[0]!r} was not found",
                hint="install it or fix environments.ENV.secrets.command",
            ) from None
        except subprocess.TimeoutExpired:
            raise SecretError(
                f"environment {self.env!r}: the secrets command for {name} did not answer "
                f"within {self.settings.timeout:g}s",
                hint="check that it does not wait for input (a login prompt?); raise "
                "environments.ENV.secrets.timeout if it is just slow",
            ) from None
        if result.returncode != 0:
            # stderr may echo what it was given but never the value it failed to produce.
            detail = " ".join(result.stderr.split())[:300]
            raise SecretError(
                f"environment {self.env!r}: the secrets command for {name} failed "
                f"(exit {result.returncode}): {detail}",
                hint="run it by hand to see why",
            )
        value = result.stdout.rstrip("\r\n")
        return value or None


def resolver(project: Project, env: str, *, root: Path | None = None) -> SecretResolver:
    return SecretResolver(env, project.environments[env].secrets, root=root or project.root)


def referenced(config: Mapping[str, Mapping[str, str]]) -> dict[str, list[str]]:
    """Secret names referenced by rendered config, each with the ``service.KEY`` that use it."""
    wanted: dict[str, list[str]] = {}
    for service, values in config.items():
        for key, value in values.items():
            for ref in references(value):
                if ref.kind == "secret":
                    wanted.setdefault(ref.name, []).append(f"{service}.{key}")
    return wanted


def resolve_all(resolver_: SecretResolver, names: Iterable[str]) -> dict[str, str]:
    """Every value, or one error listing every secret that is missing (by name only)."""
    wanted = list(names)
    missing = [n for n in wanted if not resolver_.lookup(n)]
    if missing:
        raise SecretError(
            f"environment {resolver_.env!r} needs secrets that are not in {resolver_.where}: "
            + ", ".join(sorted(missing)),
            hint="add them there (values are never printed)",
        )
    return {name: resolver_.require(name) for name in wanted}
