"""The project file: loading, positions in errors, references, the schema."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from airlock.errors import ProjectError
from airlock.model import json_schema, load_project, parse_duration, parse_reference, references

from .conftest import airlock

VALID = """\
project: shop
services:
  api:
    run: python app.py
    depends_on: [db-proxy]
    config:
      DB: ${services.db-proxy.url}
  db-proxy:
    run: python proxy.py
environments:
  staging: {}
"""


def write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "airlock.yaml").write_text(text)
    return tmp_path


def error_of(tmp_path: Path, text: str) -> ProjectError:
    with pytest.raises(ProjectError) as info:
        load_project(write(tmp_path, text))
    return info.value


def test_a_valid_project_loads_with_defaults(tmp_path: Path) -> None:
    """A minimal file loads and gets the documented defaults."""
    project = load_project(write(tmp_path, VALID))
    api = project.services["api"]
    assert api.port == "auto"
    assert api.health == "/healthz"
    assert api.ready == "/readyz"
    assert project.gates.bake == 10.0
    assert project.ready_timeout("api") == 30.0
    assert project.root == tmp_path.resolve()


def test_an_unknown_key_names_line_column_path_and_a_close_match(tmp_path: Path) -> None:
    """A misspelt key is reported at its line and column with 'did you mean'."""
    error = error_of(tmp_path, VALID.replace("depends_on:", "depend_on:"))
    assert "airlock.yaml:5:5" in str(error)
    assert "services.api.depend_on" in str(error)
    assert "did you mean 'depends_on'?" in str(error)


def test_a_wrong_type_names_the_key_path_and_line(tmp_path: Path) -> None:
    """A port that is not a number points at the port key."""
    error = error_of(tmp_path, VALID.replace("run: python proxy.py", "run: x\n    port: lots"))
    assert "services.db-proxy.port" in str(error)
    assert ":10:5" in str(error)


def test_malformed_yaml_gives_line_and_column(tmp_path: Path) -> None:
    """A YAML syntax error names where it is, not a parser traceback."""
    error = error_of(tmp_path, VALID.replace("[db-proxy]", "[db-proxy"))
    assert "invalid YAML" in str(error)
    assert error.location is not None and error.location.line is not None


def test_a_duplicate_key_is_refused(tmp_path: Path) -> None:
    """The same key twice in one mapping is an error, not a silent override."""
    error = error_of(tmp_path, VALID.replace("  db-proxy:\n", "  api:\n"))
    assert "duplicate key 'api'" in str(error)


def test_a_missing_file_says_where_it_looked(tmp_path: Path) -> None:
    """No airlock.yaml gives the path and a hint."""
    with pytest.raises(ProjectError) as info:
        load_project(tmp_path)
    assert str(tmp_path / "airlock.yaml") in str(info.value)
    assert info.value.hint


def test_an_empty_or_non_mapping_file_is_refused(tmp_path: Path) -> None:
    """An empty file and a list at the top level are both clear errors."""
    assert "empty" in str(error_of(tmp_path, ""))
    assert "mapping" in str(error_of(tmp_path, "- a\n- b\n"))


def test_service_names_are_checked(tmp_path: Path) -> None:
    """A service name with spaces or capitals is refused."""
    error = error_of(tmp_path, VALID.replace("  db-proxy:\n", "  'DB Proxy':\n"))
    assert "not a valid name" in str(error)


def test_durations() -> None:
    """Durations accept s, ms, m, h and plain numbers, and refuse nonsense."""
    assert parse_duration("10s") == 10
    assert parse_duration("500ms") == 0.5
    assert parse_duration("2m") == 120
    assert parse_duration(3) == 3
    with pytest.raises(ValueError):
        parse_duration("soon")


def test_references_are_parsed_by_kind() -> None:
    """Each reference form is recognised; $${ escapes; nonsense is 'invalid'."""
    found = list(
        references("${services.api.url}/x ${secret:JWT} ${database.url} ${env.name} $${lit} ${x}")
    )
    assert [(r.kind, r.name, r.attribute) for r in found] == [
        ("service", "api", "url"),
        ("secret", "JWT", ""),
        ("database", "url", ""),
        ("env", "name", ""),
        ("invalid", "x", ""),
    ]
    assert parse_reference("secret:not a name").kind == "invalid"


def test_the_schema_is_json_schema_of_the_file() -> None:
    """`airlock schema` prints a JSON Schema that describes services and environments."""
    schema = json_schema()
    assert "services" in schema["properties"]
    assert schema["additionalProperties"] is False
    assert "ServiceModel" in schema["$defs"]


def test_schema_command_prints_valid_json(tmp_path: Path) -> None:
    """The CLI prints the same schema as JSON."""
    result = airlock("schema", cwd=tmp_path)
    assert result.returncode == 0
    assert json.loads(result.stdout)["title"] == "airlock.yaml"


def test_a_bad_file_is_exit_2_without_traceback(tmp_path: Path) -> None:
    """The CLI reports a bad project file in one paragraph and exits 2."""
    write(tmp_path, VALID.replace("depends_on:", "depend_on:"))
    result = airlock("check", cwd=tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "did you mean 'depends_on'?" in result.stderr


def test_a_key_that_looks_like_a_type_name_is_still_placed(tmp_path: Path) -> None:
    """Keys such as 'a[b' or 'str' are reported at their line, not lost with pydantic's names of
    union members (which once left an empty key path and crashed)."""
    error = error_of(tmp_path, VALID + "'a[b': 1\n")
    assert "airlock.yaml:12:1: a[b: unknown key 'a[b'" in str(error)
    error = error_of(tmp_path, VALID.replace("run: python app.py", "run: 5"))
    assert ":4:5: services.api.run:" in str(error)


def test_a_long_value_is_shortened_in_messages(tmp_path: Path) -> None:
    """A wrong value is quoted in the message, but not a whole megabyte of it."""
    error = error_of(tmp_path, VALID.replace("python proxy.py", "x\n    port: " + "y" * 5000))
    assert "y" * 70 in str(error) and "y" * 100 not in str(error)
