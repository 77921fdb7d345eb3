"""Any project file gives a clear error: fuzzing ``airlock.yaml`` through the real CLI.

A fixed corpus of mutants, made deterministically from four valid project files, goes through
``airlock check`` in-process. Every run must end with exit 0, 1 or 2 (never 70, an internal
error with a traceback) within a few seconds (a hang detector, not a speed test). The hostile
files the fuzzing issue named (deep nesting, self-referencing anchors, alias bombs, bad tags,
huge integers, invalid UTF-8, control characters, long paths, huge files) are cases of their
own and must also name ``file:line:column``.
"""

from __future__ import annotations

import contextlib
import io
import random
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from airlock.cli import main
from airlock.errors import ProjectError
from airlock.model import MAX_BYTES, load_project, parse_project

from .conftest import PHOENIX, airlock
from .test_model import VALID

HANG_SECONDS = 30.0  # far above any real load (milliseconds), even on a busy machine: a hang
MUTANTS_PER_SEED = 90
POSITION = re.compile(r"airlock\.yaml:\d+:\d+")

# -- the seeds: four valid project files --------------------------------------------------------

FACTORY = yaml.safe_dump(  # what tests.conftest.ProjectFactory writes
    {
        "project": "shop",
        "services": {
            "api": {
                "run": "python app/webapp.py",
                "source": ["app/webapp.py"],
                "port": 8080,
                "depends_on": ["worker"],
                "config": {"WORKER": "${services.worker.url}", "DEBUG": False, "N": 3},
            },
            "worker": {"run": "python app/webapp.py", "source": ["app/webapp.py"]},
        },
        "environments": {
            "staging": {"secrets": {"prefix": "STAGING_"}},
            "production": {"secrets": {"prefix": "PRODUCTION_"}},
        },
        "gates": {"bake": "0.5s", "ready_timeout": "3s"},
    },
    sort_keys=False,
).encode()

EVERYTHING = b"""\
# Every section, with anchors and aliases used as they are meant to be.
project: kitchen-sink
database:
  migrations: db/migrations
  lock_timeout: 2s
  retries: 1
services:
  web:
    run: [python, app/webapp.py, --flag]
    source: app/webapp.py
    port: auto
    health: /healthz
    ready: null
    ready_timeout: 500ms
    metrics: /metrics
    endpoints: ["GET /", "POST /orders"]
    config: &common
      LOG_LEVEL: info
      RATIO: 0.5
      URL: "${services.api.url}/v1"
      LITERAL: "$${not-a-reference}"
  api:
    run: python app/webapp.py
    source: [app/webapp.py]
    depends_on: [web]
    config: *common
environments:
  staging:
    database: {embedded: true, name: shop}
    secrets: {provider: file, path: ../secrets.env}
    config:
      web: {LOG_LEVEL: debug}
  production:
    database:
      url: "postgresql://app:${secret:DB_PASSWORD}@db:5432/shop"
    secrets: {provider: command, command: "echo {name}", timeout: 1m}
    hosts: [shop.example.com]
    approvals: 2
    max_parallel: 1
    bake: 1h
    posture:
      url: https://shop.example.com
      admin_paths: [/admin]
      sensitive_paths: ["POST /password-reset"]
      burst: 10
gates:
  bake: 10s
  memory_growth_mb_per_min: 30
  error_rate: 0.01
  p95_ms: 300
  cert_min_days: 14
  load: {users: 5, spawn_rate: 5, duration: 2s, p50_ms: 50, p95_ms: 100}
  logs:
    patterns: {ssn: '\\d{3}-\\d{2}-\\d{4}'}
    emails: false
  ci: {junit: reports/junit.xml}
"""

SEEDS: dict[str, bytes] = {
    "phoenix": (PHOENIX / "airlock.yaml").read_bytes(),
    "test_model": VALID.encode(),
    "factory": FACTORY,
    "everything": EVERYTHING,
}

# -- mutations ---------------------------------------------------------------------------------

TOKENS: list[bytes] = [
    *(bytes([c]) for c in b"[]{},:-?&*!|>#'\"\\%@`~"),
    b": ",
    b"- ",
    b"? ",
    b"\t",
    b"\r",
    b"\r\n",
    b"\n",
    b"\n---\n",
    b"\n...\n",
    b"%YAML 1.1\n",
    b"&a ",
    b"*a",
    b"*nowhere",
    b"&a [*a]",
    b"&b [*a, *a, *a]",
    b"<<: *a",
    b"!!int ",
    b"!!bool ",
    b"!!float ",
    b"!!str ",
    b"!!null ",
    b"!!binary ",
    b"!!timestamp ",
    b"!!set ",
    b"!!omap ",
    b"!!map ",
    b"!!seq ",
    b"!!python/object/apply:os.system ",
    b"!auto ",
    b"!<tag:example.com:x> ",
    b"null",
    b"yes",
    b"maybe",
    b"abc",
    b"0x_",
    b"0b",
    b"1:2:3",
    b".inf",
    b"-.inf",
    b".nan",
    b"-1",
    b"70000",
    b"1e999",
    b"2001-13-45",
    b"2001-12-14 21:59:43.10 -5",
    b"9" * 5000,
    b"0x" + b"f" * 5000,
    b"a" * 200,
    b"${",
    b"${services.nowhere.url}",
    b"${secret:}",
    b"${database.url}",
    b"$${",
    b'"\\0"',
    b'"\\x01"',
    b'"\\uD800"',
    b"\x00",
    b"\x01",
    b"\x08",
    b"\x0b",
    b"\x1b",
    b"\x7f",
    b"\xc2\x85",  # NEL, a YAML line break
    b"\xe2\x80\xa8",  # LINE SEPARATOR
    b"\xef\xbb\xbf",  # a byte-order mark
    b"\xff",
    b"\xc3",
    b"\xe2\x82",
    b"\xed\xa0\x80",  # an encoded surrogate: not UTF-8
    b"[" * 200,
    b"{a: " * 120,
    b"- " * 150,
]

VALUES: list[Any] = [
    None,
    True,
    0,
    -1,
    65536,
    10**40,
    0.5,
    float("inf"),
    float("nan"),
    "",
    "auto",
    "x" * 200,
    "/",
    "GET",
    "${services.api.url}",
    "${env.nowhere}",
    "../../etc/passwd",
    "/dev/null",
    "sh\x85ip",
    [],
    [None],
    ["a", 1, None],
    {},
    {"a": None},
    {"run": "python x.py"},
    [[[[[["deep"]]]]]],
]


def _leaves(data: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield path
    if isinstance(data, dict):
        for key, value in data.items():
            yield from _leaves(value, (*path, key))
    elif isinstance(data, list):
        for index, value in enumerate(data):
            yield from _leaves(value, (*path, index))


def _tree_mutation(text: bytes, rng: random.Random) -> bytes:
    """Valid YAML, wrong project: a value anywhere replaced by another, or a key removed."""
    try:
        data = yaml.safe_load(text)
    except Exception:  # PyYAML itself fails in many ways; only what it loads is mutated here
        return text
    if not isinstance(data, dict):
        return text
    paths = [path for path in _leaves(data) if path]
    path = rng.choice(paths)
    parent = data
    for part in path[:-1]:
        parent = parent[part]
    if isinstance(parent, dict) and rng.random() < 0.25:
        del parent[path[-1]]
    elif isinstance(parent, dict) and rng.random() < 0.15:
        parent[rng.choice(["dependson", "sources", "x", "Port", "a[b", "str"])] = 1
    else:
        parent[path[-1]] = rng.choice(VALUES)
    return yaml.safe_dump(data, sort_keys=rng.random() < 0.5, allow_unicode=True).encode()


def _mutate(text: bytes, rng: random.Random) -> bytes:
    """One random edit of ``text``: bytes, lines or the tree, hostile tokens included."""
    n = len(text)
    at = rng.randrange(n + 1)
    end = min(n, at + rng.randrange(1, 40))
    lines = text.split(b"\n")
    line = rng.randrange(len(lines))
    match rng.randrange(10):
        case 0:
            return text[:at] + text[end:]
        case 1 | 2:
            return text[:at] + rng.choice(TOKENS) + text[at:]
        case 3:
            return text[:end] + text[at:end] * rng.randrange(2, 6) + text[end:]
        case 4:
            other = rng.randrange(len(lines))
            lines[line], lines[other] = lines[other], lines[line]
            return b"\n".join(lines)
        case 5:
            lines[line] = b" " * rng.randrange(1, 6) + lines[line].lstrip(b" ")
            return b"\n".join(lines)
        case 6:
            key, colon, _ = lines[line].partition(b": ")
            if colon:
                lines[line] = key + colon + rng.choice(TOKENS)
            return b"\n".join(lines)
        case 7:
            return text[:at] + bytes([rng.randrange(256)]) + text[at + 1 :]
        case 8:
            return text[:at]
        case _:
            return _tree_mutation(text, rng)


def mutants() -> Iterator[tuple[str, bytes]]:
    for name, seed in SEEDS.items():
        rng = random.Random(f"airlock-fuzz:{name}")
        for number in range(MUTANTS_PER_SEED):
            text = seed
            for _ in range(rng.choice([1, 1, 2, 3])):
                text = _mutate(text, rng)
            yield f"{name}#{number}", text


# -- the hostile files of the issue --------------------------------------------------------------

PLAIN = b"""\
project: shop
services:
  api:
    run: python app.py
    source: [app.py]
environments:
  staging: {}
"""


def _with_port(value: bytes) -> bytes:
    return PLAIN.replace(b"[app.py]\n", b"[app.py]\n    port: " + value + b"\n")


def _bomb(indent: bytes = b"", levels: int = 9, width: int = 5) -> bytes:
    """Nine lines, each an anchor whose list repeats the previous anchor five times."""
    lines = [indent + b"a0: &a0 [" + b", ".join([b"x"] * width) + b"]"]
    for level in range(1, levels):
        alias = b"*a%d" % (level - 1)
        lines.append(indent + b"a%d: &a%d [" % (level, level) + b", ".join([alias] * width) + b"]")
    return b"\n".join(lines) + b"\n"


HOSTILE: dict[str, bytes] = {
    "nested-lists-1000": PLAIN.replace(b"python app.py", b"[" * 1000 + b"]" * 1000),
    "nested-mappings-1000": b"project: " + b"{a: " * 1000 + b"x" + b"}" * 1000 + b"\n",
    "nested-blocks-1000": b"project:\n"
    + b"".join(b" " * (i + 1) + b"k:\n" for i in range(1000))
    + b" " * 1001
    + b"x\n",
    "self-referencing-anchor": b"a: &a [*a]\n",
    "self-referencing-mapping": PLAIN.replace(b"staging: {}", b"staging: &s {x: *s}"),
    "alias-bomb-5^9": _bomb(),  # 300 bytes that stand for 5^9 values
    "alias-bomb-in-config": PLAIN.replace(
        b"environments:", b"    config:\n" + _bomb(b" " * 6) + b"environments:"
    ),
    "!!int abc": _with_port(b"!!int abc"),
    "!!bool maybe": _with_port(b"!!bool maybe"),
    "!!float x": _with_port(b"!!float x"),
    "!!timestamp x": _with_port(b"!!timestamp x"),
    "!auto x": _with_port(b"!auto x"),
    "!auto on a list": PLAIN.replace(b"[app.py]", b"!auto [app.py]"),
    "!!python tag": _with_port(b"!!python/object/apply:os.system [echo]"),
    "5000-digit integer": _with_port(b"9" * 5000),
    "huge hexadecimal integer": _with_port(b"0x" + b"f" * 4000),
    "0x_": _with_port(b"0x_"),
    "invalid UTF-8": PLAIN.replace(b"python app.py", b"python \xff\xfe app.py"),
    "truncated UTF-8": PLAIN.replace(b"staging", b"stag\xc3"),
    "encoded surrogate": PLAIN.replace(b"shop", b"sh\xed\xa0\x80op"),
    **{
        f"control character \\x{code:02x}": PLAIN.replace(b"app.py]", b"app.py%c]" % code)
        for code in range(0x00, 0x09)
    },
    "escape character": PLAIN.replace(b"shop", b"sh\x1bop"),
    "NUL escape in a path": PLAIN.replace(b"[app.py]", b'["app\\0.py"]'),
    "300-character source path": PLAIN.replace(b"[app.py]", b"[" + b"s" * 300 + b"]"),
    "very large document": PLAIN + b"# " + b"x" * MAX_BYTES + b"\n",
    "very many values": PLAIN.replace(
        b"staging: {}", b"staging: {hosts: [" + b"h, " * 50_000 + b"h]}"
    ),
}


# -- running the real CLI in-process -----------------------------------------------------------


@dataclass
class Run:
    code: int | str | None
    stdout: str
    stderr: str
    seconds: float

    def describe(self, name: str, text: bytes) -> str:
        return (
            f"{name}: exit {self.code} after {self.seconds:.1f}s\n"
            f"input (first 300 bytes): {text[:300]!r}\n"
            f"stdout: {self.stdout[-1500:]}\nstderr: {self.stderr[-3000:]}"
        )


def run_check(folder: Path) -> Run:
    """``airlock check --no-history --project FOLDER`` in-process, in a daemon thread so that a
    hang fails this test after :data:`HANG_SECONDS` instead of blocking it."""
    out, err = io.StringIO(), io.StringIO()
    result: dict[str, int | str | None] = {}

    def target() -> None:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main(["check", "--no-history", "--project", str(folder)])
                result["code"] = 0
            except SystemExit as exc:
                result["code"] = exc.code

    thread = threading.Thread(target=target, daemon=True)
    start = time.monotonic()
    thread.start()
    thread.join(HANG_SECONDS)
    seconds = time.monotonic() - start
    return Run(result.get("code", "hang"), out.getvalue(), err.getvalue(), seconds)


def _project(folder: Path, text: bytes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "airlock.yaml").write_bytes(text)
    for name in ("app.py", "app/webapp.py"):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text("")
    return folder


def _check(folder: Path, name: str, text: bytes) -> Run:
    run = run_check(_project(folder, text))
    assert run.code in (0, 1, 2), run.describe(name, text)  # a hang's code is "hang"
    assert "Traceback" not in run.stderr, run.describe(name, text)
    return run


def _flat(text: str) -> str:
    """``text`` without whitespace: the console wraps long lines, even inside a path."""
    return "".join(text.split())


# -- tests ---------------------------------------------------------------------------------------


def test_the_seeds_are_valid_projects(tmp_path: Path) -> None:
    """The four seeds load: the mutants start from valid files."""
    for name, text in SEEDS.items():
        project = _project(tmp_path / name, text)
        load_project(project)
        _check(tmp_path / name, name, text)


@pytest.mark.timeout(240)
def test_every_mutant_exits_0_1_or_2_without_hanging(tmp_path: Path) -> None:
    """360 deterministic mutants of the seeds: each one is a result or a clear error (exit 0, 1
    or 2), never an internal error (exit 70), and none takes more than a few seconds."""
    exits: dict[int | str | None, int] = {}
    for number, (name, text) in enumerate(mutants()):
        run = _check(tmp_path / str(number), name, text)
        exits[run.code] = exits.get(run.code, 0) + 1
        if run.code == 2:
            assert "error:" in run.stderr, run.describe(name, text)
    # The corpus exercises both sides: files that load, and files that are refused.
    assert exits.get(2, 0) > 50 and exits.get(0, 0) + exits.get(1, 0) > 50, exits


@pytest.mark.parametrize("name", list(HOSTILE))
def test_a_hostile_file_is_a_clear_error_with_a_position(tmp_path: Path, name: str) -> None:
    """Each file named in the fuzzing issue exits 2 (1 for a finding), quickly, naming
    airlock.yaml:line:column."""
    text = HOSTILE[name]
    run = _check(tmp_path, name, text)
    if name == "300-character source path":
        # Loads; the missing source is a finding at the entry's line and column.
        assert run.code == 1, run.describe(name, text)
        assert "model.source-missing" in run.stdout
        assert POSITION.search(_flat(run.stdout)), run.describe(name, text)
        return
    assert run.code == 2, run.describe(name, text)
    assert POSITION.search(_flat(run.stderr)), run.describe(name, text)
    with pytest.raises(ProjectError) as info:
        load_project(tmp_path)
    location = info.value.location
    assert location is not None and location.line and location.column, str(info.value)


def test_hostile_files_name_what_is_wrong(tmp_path: Path) -> None:
    """The messages say which limit or which value, at the right place."""

    def error(text: bytes) -> str:
        with pytest.raises(ProjectError) as info:
            load_project(_project(tmp_path, text))
        return str(info.value)

    assert "nested more than 64 levels" in error(HOSTILE["nested-lists-1000"])
    assert "airlock.yaml:1:8: " in error(b"a: &a [*a]\n")  # at the alias
    assert "its own anchor &a" in error(b"a: &a [*a]\n")
    assert "aliases repeat more than 10000 values" in error(HOSTILE["alias-bomb-5^9"])
    assert "'abc' is not a valid !!int" in error(HOSTILE["!!int abc"])
    assert ":6:11: services.api.port: 'maybe' is not a valid !!bool" in error(
        HOSTILE["!!bool maybe"]
    )
    assert "the YAML tag !auto is not supported" in error(HOSTILE["!auto x"])
    assert "more than 4300 digits" in error(HOSTILE["5000-digit integer"])
    assert "more than 4300 digits" in error(HOSTILE["huge hexadecimal integer"])
    utf8 = error(HOSTILE["invalid UTF-8"])
    assert "airlock.yaml:4:17: the file is not UTF-8 text: byte 0xff" in utf8
    control = error(HOSTILE["control character \\x01"])
    assert "airlock.yaml:5:20: control character U+0001" in control
    assert "larger than 1 MiB" in error(HOSTILE["very large document"])
    assert "more than 20000 values" in error(HOSTILE["very many values"])


def test_a_long_source_path_is_a_finding_not_a_crash(tmp_path: Path) -> None:
    """A source path the file system cannot even look up (ENAMETOOLONG) is reported like a
    missing one, at its entry."""
    from airlock.checks.static import check_project

    project = load_project(_project(tmp_path, HOSTILE["300-character source path"]))
    [finding] = [f for f in check_project(project) if f.code == "model.source-missing"]
    assert "cannot be checked" in finding.message
    assert (finding.location.line, finding.location.column) == (5, 14)


def test_anchors_and_aliases_within_the_limits_still_work(tmp_path: Path) -> None:
    """Ordinary use of anchors (shared config) loads as before."""
    project = load_project(_project(tmp_path, EVERYTHING))
    assert project.services["api"].config == project.services["web"].config
    assert project.services["api"].config["RATIO"] == 0.5


@pytest.mark.parametrize("name", ["nested-lists-1000", "alias-bomb-5^9", "invalid UTF-8"])
def test_the_command_line_reports_a_hostile_file_in_one_paragraph(
    tmp_path: Path, name: str
) -> None:
    """The real `airlock check` process exits 2 with a position and no traceback."""
    _project(tmp_path, HOSTILE[name])
    result = airlock("check", "--no-history", cwd=tmp_path, timeout=60)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert POSITION.search(_flat(result.stderr)), result.stderr


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(data=st.binary(max_size=400) | st.text(max_size=400).map(str.encode))
def test_any_bytes_load_or_raise_a_project_error(tmp_path: Path, data: bytes) -> None:
    """Random bytes (and random text) give a project or a ProjectError, nothing else."""
    (tmp_path / "airlock.yaml").write_bytes(data)
    with contextlib.suppress(ProjectError):  # a hang is caught by pytest-timeout
        load_project(tmp_path)


_ALPHABET = st.sampled_from(
    [*"[]{},:-?&*!|>#'\"\\ \n\t", "a", "b", "1", "0x", "!!int ", "&a ", "*a", "\x01", "\x85"]
)


@settings(max_examples=150, deadline=None)
@given(parts=st.lists(_ALPHABET, max_size=60))
def test_yaml_like_text_parses_or_raises_a_project_error(parts: list[str]) -> None:
    """Text made of YAML's own punctuation, which reaches further into the parser."""
    text = "project: x\nservices:\n " + "".join(parts)
    start = time.monotonic()
    with contextlib.suppress(ProjectError):
        parse_project(text, Path("airlock.yaml"))
    assert time.monotonic() - start < HANG_SECONDS


def test_a_long_config_file_name_is_a_finding_not_a_crash(tmp_path: Path) -> None:
    """The same for a declared config file whose name the file system cannot look up."""
    from airlock.checks.config_files import check_config_files

    long_name = "conf/" + "c" * 300 + ".yaml"
    (tmp_path / "conf").mkdir()  # so the name itself is what the file system refuses
    (tmp_path / "airlock.yaml").write_text(
        "project: shop\n"
        "services:\n"
        "  api:\n"
        "    run: python api.py\n"
        f"    config_files: [{long_name}]\n"
        "environments:\n"
        "  staging: {}\n"
    )
    [finding] = check_config_files(load_project(tmp_path))
    assert finding.code == "config.invalid-file"
    assert "cannot be checked" in finding.message
    assert finding.location is not None and finding.location.line == 5
