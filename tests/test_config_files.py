"""Config files check: each declared file parses by its extension, or is located precisely."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from airlock.checks import Severity
from airlock.checks.config_files import CODES, check_config_files, format_of
from airlock.model import Project, load_project


def make(root: Path, files: dict[str, str | bytes], declared: list[str] | None = None) -> Project:
    """A one-service project declaring ``files`` (or ``declared``) as its config files."""
    root.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(text)
    document = {
        "project": "shop",
        "services": {
            "api": {"run": "python app.py", "config_files": declared or list(files)},
        },
        "environments": {"production": {}},
    }
    (root / "airlock.yaml").write_text(yaml.safe_dump(document, sort_keys=False))
    return load_project(root)


VALID = {
    "settings.json": '{"debug": false, "workers": [1, 2]}\n',
    "settings.yaml": "debug: false\nworkers:\n  - 1\n  - 2\n",
    "multi.yml": "a: 1\n---\nb: 2\n",
    "settings.toml": '[server]\nport = 8080\nname = "api"\n',
    "settings.ini": "[server]\nport = 8080\n",
    "logging.cfg": "[loggers]\nkeys = root\n",
    "app.conf": "[main]\npath = %(home)s/x\n",
    "empty.yaml": "",
}


@pytest.mark.parametrize(("name", "text"), list(VALID.items()))
def test_valid_files_give_no_finding(tmp_path: Path, name: str, text: str) -> None:
    """A well-formed file of each supported kind passes."""
    assert check_config_files(make(tmp_path, {name: text})) == []


# (file, text, line, column, words in the message)
INVALID: list[tuple[str, str, int, int | None, str]] = [
    ("trailing.json", '{\n  "a": 1,\n  "b": 2,\n}\n', 4, 1, "not valid JSON"),
    ("empty.json", "", 1, 1, "Expecting value"),
    ("indent.yaml", "a:\n  b: 1\n c: 2\n", 3, 2, "not valid YAML"),
    ("second.yml", "a: 1\n---\nb: [1, 2\n", 4, 1, "not valid YAML"),
    ("value.toml", "[server]\nport = \n", 2, 8, "not valid TOML: Invalid value"),
    ("duplicate.toml", "a = 1\na = 2\n", 2, None, "not valid TOML"),
    ("headless.ini", "port = 8080\n", 1, 1, "without a [section] header"),
    ("duplicate.ini", "[a]\nx = 1\nx = 2\n", 3, 1, "option 'x' in section 'a' already exists"),
    ("garbage.cfg", "[a]\nx = 1\n= nothing\n", 3, 1, "cannot parse"),
]


@pytest.mark.parametrize(("name", "text", "line", "column", "words"), INVALID)
def test_parse_errors_are_located_in_the_file(
    tmp_path: Path, name: str, text: str, line: int, column: int | None, words: str
) -> None:
    """A parse error is an error at the line (and column) the parser reports, in that file."""
    [finding] = check_config_files(make(tmp_path, {name: text}))
    assert finding.code == "config.invalid-file"
    assert finding.severity is Severity.ERROR
    assert finding.location is not None
    assert finding.location.file == str(tmp_path / name)
    assert finding.location.line == line
    if column is not None:
        assert finding.location.column == column
    assert words in finding.message
    assert f"config file {name!r} of service 'api'" in finding.message


def test_a_missing_file_is_located_at_its_entry(tmp_path: Path) -> None:
    """A declared file that does not exist is reported at its entry in airlock.yaml."""
    project = make(tmp_path, {"a.json": "{}"}, ["a.json", "conf/missing.yaml"])
    [finding] = check_config_files(project)
    assert finding.code == "config.invalid-file"
    assert "does not exist" in finding.message
    assert finding.location == project.locate("services", "api", "config_files", 1)
    assert finding.location.file == str(tmp_path / "airlock.yaml")
    assert finding.location.line is not None


def test_a_folder_is_not_a_config_file(tmp_path: Path) -> None:
    """A folder listed as a config file is reported at its entry."""
    (tmp_path / "conf").mkdir()
    project = make(tmp_path, {}, ["conf"])
    [finding] = check_config_files(project)
    assert finding.code == "config.invalid-file" and "is not a file" in finding.message


def test_bytes_that_are_not_utf8_are_reported(tmp_path: Path) -> None:
    """Undecodable bytes are an error naming the byte and its line and column."""
    project = make(tmp_path, {"app.yaml": b"name: ok\ncity: M\xfcnchen\n"})
    [finding] = check_config_files(project)
    assert finding.code == "config.invalid-file"
    assert "not UTF-8 text (byte 0xfc)" in finding.message
    assert finding.location is not None
    assert (finding.location.line, finding.location.column) == (2, 8)


def test_an_unknown_extension_is_a_warning(tmp_path: Path) -> None:
    """A file Airlock cannot parse is a warning at its entry, not an error."""
    project = make(tmp_path, {"app.properties": "a=1\n", "README": "x"})
    findings = check_config_files(project)
    assert [(f.code, f.severity) for f in findings] == [
        ("config.unknown-file-type", Severity.WARNING),
        ("config.unknown-file-type", Severity.WARNING),
    ]
    assert findings[0].location == project.locate("services", "api", "config_files", 0)
    assert ".properties" in findings[0].message
    assert "without an extension" in findings[1].message


def test_every_file_of_every_service_is_checked(tmp_path: Path) -> None:
    """Each service's files are checked and reported separately, in file order."""
    (tmp_path / "a.json").write_text("{,}")
    (tmp_path / "b.toml").write_text("x = \n")
    document = {
        "project": "shop",
        "services": {
            "api": {"run": "python a.py", "config_files": ["a.json"]},
            "worker": {"run": "python b.py", "config_files": ["b.toml", "a.json"]},
        },
        "environments": {"production": {}},
    }
    (tmp_path / "airlock.yaml").write_text(yaml.safe_dump(document))
    findings = check_config_files(load_project(tmp_path))
    assert [(f.evidence["service"], f.evidence["file"]) for f in findings] == [
        ("api", "a.json"),
        ("worker", "b.toml"),
        ("worker", "a.json"),
    ]


@pytest.mark.parametrize(
    ("name", "kind"),
    [("a.JSON", "JSON"), ("a.yml", "YAML"), ("a.toml", "TOML"), ("a.conf", "INI"), ("a.txt", None)],
)
def test_format_follows_the_extension(name: str, kind: str | None) -> None:
    """The parser is chosen by the file's extension, case-insensitively."""
    assert format_of(name) == kind


def test_codes_are_described() -> None:
    """Every finding code the check emits has a description."""
    assert set(CODES) == {"config.invalid-file", "config.unknown-file-type"}
