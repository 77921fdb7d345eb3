"""Config files must parse (part of INC16).

A service that reads a broken config file fails at start — in production, after the release was
already on its way. Every file listed in a service's ``config_files`` is parsed here, before
anything is sealed or deployed, by the parser its extension names:

- ``.json``: :func:`json.loads`;
- ``.yaml``, ``.yml``: :func:`yaml.safe_load_all` (every document in the file);
- ``.toml``: :func:`tomllib.loads`;
- ``.ini``, ``.cfg``, ``.conf``: :class:`configparser.ConfigParser` (without interpolation).

A parse error becomes a ``config.invalid-file`` finding at the line and column the parser
reports; a file with another extension gets a ``config.unknown-file-type`` warning, since it
cannot be checked.
"""

from __future__ import annotations

import configparser
import json
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

from airlock.errors import Location
from airlock.findings import Finding, Severity
from airlock.model import Project

CODES: dict[str, str] = {
    "config.invalid-file": "A config file a service reads is missing, not UTF-8, or does not "
    "parse (JSON, YAML, TOML or INI).",
    "config.unknown-file-type": "A config file has an extension Airlock cannot parse, so it was "
    "not checked.",
}


@dataclass(frozen=True)
class ParseProblem:
    """Why a config file does not parse, and where (1-based line and column, when known)."""

    message: str
    line: int | None = None
    column: int | None = None


class _Invalid(Exception):
    def __init__(self, problem: ParseProblem) -> None:
        super().__init__(problem.message)
        self.problem = problem


def _parse_json(text: str) -> None:
    try:
        json.loads(text)
    except json.JSONDecodeError as exc:
        message = exc.msg
        if text[: exc.pos].rstrip().endswith(",") and text[exc.pos : exc.pos + 1] in ("}", "]"):
            message += f" (a trailing comma before {text[exc.pos]!r}?)"
        raise _Invalid(ParseProblem(message, exc.lineno, exc.colno)) from None


def _parse_yaml(text: str) -> None:
    try:
        for _ in yaml.safe_load_all(text):
            pass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        context = exc.context
        if context and exc.context_mark and mark and exc.context_mark.line != mark.line:
            context += f" that starts on line {exc.context_mark.line + 1}"
        parts = [part for part in (context, exc.problem) if part]
        message = ", ".join(parts) or "invalid YAML"
        if mark is None:
            raise _Invalid(ParseProblem(message)) from None
        raise _Invalid(ParseProblem(message, mark.line + 1, mark.column + 1)) from None
    except yaml.YAMLError as exc:
        raise _Invalid(ParseProblem(str(exc))) from None


_TOML_POSITION = re.compile(r"\s*\(at line (\d+), column (\d+)\)\s*$")
_TOML_END = re.compile(r"\s*\(at end of document\)\s*$")


def _parse_toml(text: str) -> None:
    try:
        tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc.args[0]) if exc.args else str(exc)
        if match := _TOML_POSITION.search(message):
            line, column = int(match.group(1)), int(match.group(2))
            message = message[: match.start()]
        elif match := _TOML_END.search(message):
            line, column = text.count("\n") + 1, len(text.rsplit("\n", 1)[-1]) + 1
            message = message[: match.start()] + " at the end of the file"
        else:
            raise _Invalid(ParseProblem(message)) from None
        raise _Invalid(ParseProblem(message, line, column)) from None


_INI_PREFIX = re.compile(r"^While reading from .*? \[line\s+\d+\]: ")


def _parse_ini(text: str) -> None:
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read_string(text)
    except configparser.MissingSectionHeaderError as exc:
        message = "the file starts without a [section] header"
        raise _Invalid(ParseProblem(message, exc.lineno, 1)) from None
    except configparser.ParsingError as exc:
        lineno = exc.errors[0][0]
        lines = text.splitlines()
        line = lines[lineno - 1].strip() if 0 < lineno <= len(lines) else ""
        message = f"cannot parse the line {line!r}"
        if len(exc.errors) > 1:
            message += f" (and {len(exc.errors) - 1} more lines)"
        raise _Invalid(ParseProblem(message, lineno, 1)) from None
    except (configparser.DuplicateOptionError, configparser.DuplicateSectionError) as exc:
        message = _INI_PREFIX.sub("", str(exc))
        raise _Invalid(ParseProblem(message, exc.lineno, 1)) from None
    except configparser.Error as exc:
        raise _Invalid(ParseProblem(str(exc))) from None


_PARSERS: dict[str, tuple[str, Callable[[str], None]]] = {
    ".json": ("JSON", _parse_json),
    ".yaml": ("YAML", _parse_yaml),
    ".yml": ("YAML", _parse_yaml),
    ".toml": ("TOML", _parse_toml),
    ".ini": ("INI", _parse_ini),
    ".cfg": ("INI", _parse_ini),
    ".conf": ("INI", _parse_ini),
}

SUPPORTED_EXTENSIONS: tuple[str, ...] = tuple(_PARSERS)


def format_of(path: Path | str) -> str | None:
    """The format a config file is parsed as (``JSON``, ``YAML``, ...), from its extension."""
    entry = _PARSERS.get(Path(path).suffix.lower())
    return entry[0] if entry else None


def parse_problem(path: Path) -> ParseProblem | None:
    """Why the config file at ``path`` does not parse, or ``None`` when it does.

    ``path`` must exist and have a supported extension (see :func:`format_of`).
    """
    kind, parse = _PARSERS[path.suffix.lower()]
    try:
        data = path.read_bytes()
    except OSError as exc:
        return ParseProblem(f"cannot be read: {exc.strerror or exc}")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        byte = data[exc.start]
        return ParseProblem(f"is not UTF-8 text (byte 0x{byte:02x})", line, column)
    try:
        parse(text)
    except _Invalid as exc:
        problem = exc.problem
        return ParseProblem(f"is not valid {kind}: {problem.message}", problem.line, problem.column)
    except RecursionError:
        return ParseProblem(f"is not valid {kind}: nested too deeply to parse")
    return None


def check_config_files(project: Project) -> list[Finding]:
    """A finding for every declared config file that is missing, unreadable or does not parse."""
    findings: list[Finding] = []
    for name, service in project.services.items():
        for index, entry in enumerate(service.config_files):
            key = project.locate("services", name, "config_files", index)
            evidence = {"service": name, "file": entry}
            path = project.root / entry
            kind = format_of(path)
            try:
                exists = path.exists()
            except (OSError, ValueError) as exc:  # a name too long for the file system, a NUL
                reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
                findings.append(
                    Finding(
                        "config.invalid-file",
                        Severity.ERROR,
                        f"config file {entry[:80]!r}… of service {name!r} cannot be checked: "
                        f"{reason}",
                        key,
                        hint="fix the path (relative to airlock.yaml)",
                        evidence={"service": name, "file": entry[:200]},
                    )
                )
                continue
            if not exists:
                findings.append(
                    Finding(
                        "config.invalid-file",
                        Severity.ERROR,
                        f"config file {entry!r} of service {name!r} does not exist",
                        key,
                        hint="fix the path (relative to airlock.yaml) or create the file",
                        evidence=evidence,
                    )
                )
                continue
            if not path.is_file():
                findings.append(
                    Finding(
                        "config.invalid-file",
                        Severity.ERROR,
                        f"config file {entry!r} of service {name!r} is not a file",
                        key,
                        hint="list the config files themselves, not their folder",
                        evidence=evidence,
                    )
                )
                continue
            if kind is None:
                known = ", ".join(SUPPORTED_EXTENSIONS)
                findings.append(
                    Finding(
                        "config.unknown-file-type",
                        Severity.WARNING,
                        f"config file {entry!r} of service {name!r} was not checked: Airlock "
                        f"does not know how to parse {path.suffix or 'files without an extension'}",
                        key,
                        hint=f"checked extensions: {known}",
                        evidence=evidence,
                    )
                )
                continue
            problem = parse_problem(path)
            if problem is None:
                continue
            findings.append(
                Finding(
                    "config.invalid-file",
                    Severity.ERROR,
                    f"config file {entry!r} of service {name!r} {problem.message}",
                    Location(str(path), problem.line, problem.column),
                    hint="fix the file: the service would fail when it reads it",
                    evidence={**evidence, "format": kind},
                )
            )
    return findings
