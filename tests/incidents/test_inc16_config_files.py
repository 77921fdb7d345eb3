"""INC16 (config files): a service's YAML config was broken and it only failed when it started.

Every config file a service declares is parsed before release; a broken one is an error that
names the file, the line and, where the parser knows it, the column.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from airlock.checks import Severity
from airlock.checks.config_files import check_config_files
from airlock.model import Project, load_project

BROKEN_ON_LINE_7 = """\
# payment service settings
server:
  port: 8080
  workers: 4
limits:
  max_amount: 10000
  note: limits: per day
retries: 3
"""

TRAILING_COMMA = """\
{
  "provider": "acme",
  "timeout_ms": 2000,
}
"""


def project_with(root: Path, files: dict[str, str]) -> Project:
    """A payment service that reads ``files`` (paths relative to the project)."""
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    document = {
        "project": "shop",
        "services": {"payment": {"run": "python pay.py", "config_files": list(files)}},
        "environments": {"production": {}},
    }
    (root / "airlock.yaml").write_text(yaml.safe_dump(document, sort_keys=False))
    return load_project(root)


def test_a_broken_yaml_config_is_found_on_its_line(tmp_path: Path) -> None:
    """A YAML config broken on line 7 is an error naming that file and line 7."""
    project = project_with(tmp_path, {"config/payment.yaml": BROKEN_ON_LINE_7})
    [finding] = check_config_files(project)
    assert finding.code == "config.invalid-file"
    assert finding.severity is Severity.ERROR
    assert finding.location is not None
    assert finding.location.file == str(tmp_path / "config" / "payment.yaml")
    assert (finding.location.line, finding.location.column) == (7, 15)
    assert "mapping values are not allowed here" in finding.message
    assert "'config/payment.yaml'" in finding.message and "'payment'" in finding.message


def test_a_json_trailing_comma_is_found_at_its_line_and_column(tmp_path: Path) -> None:
    """A JSON config with a trailing comma is an error at the line and column of the problem."""
    project = project_with(tmp_path, {"config/provider.json": TRAILING_COMMA})
    [finding] = check_config_files(project)
    assert finding.code == "config.invalid-file"
    assert finding.location is not None
    assert finding.location.file == str(tmp_path / "config" / "provider.json")
    assert (finding.location.line, finding.location.column) == (4, 1)
    assert "trailing comma" in finding.message


def test_good_configs_pass(tmp_path: Path) -> None:
    """Well-formed configs of each kind give no finding."""
    project = project_with(
        tmp_path,
        {
            "config/payment.yaml": BROKEN_ON_LINE_7.replace("limits: per day", "'limits: per day'"),
            "config/provider.json": TRAILING_COMMA.replace("2000,", "2000"),
            "config/limits.toml": "[limits]\nmax_amount = 10000\n",
            "config/legacy.ini": "[server]\nport = 8080\n",
        },
    )
    assert check_config_files(project) == []
