"""CI status gate (INC16): JUnit reports and status commands, for the commit being released."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from airlock.checks.ci import CODES, CiResult, ci_status, current_commit, format_duration
from airlock.errors import UsageError

SHA = "0123456789abcdef0123456789abcdef01234567"
OTHER = "fedcba9876543210fedcba9876543210fedcba98"
NOW = datetime(2024, 5, 4, 12, 0, tzinfo=UTC)


def git_repo(path: Path) -> str:
    """Make a git repository with one commit in ``path`` and return its SHA."""
    path.mkdir(parents=True, exist_ok=True)
    env = ["-c", "user.name=t", "-c", "user.email=t@example.invalid", "-c", "commit.gpgsign=false"]
    subprocess.run(["git", "init", "-q", str(path)], check=True)
    (path / "README").write_text("hi\n")
    subprocess.run(["git", "-C", str(path), "add", "README"], check=True)
    subprocess.run(["git", "-C", str(path), *env, "commit", "-qm", "init"], check=True)
    return current_commit(path)


def junit(tmp_path: Path, cases: str, commit: str | None = SHA, root: str = "testsuites") -> Path:
    """Write a JUnit report with ``cases``, saying it is for ``commit``."""
    props = f'<properties><property name="commit" value="{commit}"/></properties>' if commit else ""
    xml = f'<testsuite name="unit">{props}{cases}</testsuite>'
    if root == "testsuites":
        xml = f"<testsuites>{xml}</testsuites>"
    path = tmp_path / "junit.xml"
    path.write_text(f'<?xml version="1.0"?>\n{xml}\n')
    return path


PASS = '<testcase classname="t.A" name="ok"/><testcase name="skip"><skipped/></testcase>'
FAIL = (
    '<testcase classname="t.A" name="ok"/>'
    '<testcase classname="t.A" name="broken"><failure message="x"/></testcase>'
    '<testcase classname="t.B" name="boom"><error message="y"/></testcase>'
)


def script(tmp_path: Path, body: str) -> str:
    """A status command: a Python script printing ``body``'s output; returns the command line."""
    path = tmp_path / "status.py"
    path.write_text(f"import sys, time\n{body}\n")
    return f"{sys.executable} {path} {{commit}}"


@pytest.mark.parametrize("root", ["testsuites", "testsuite"])
def test_junit_passing_for_this_commit(tmp_path: Path, root: str) -> None:
    """A passing report for this commit gives success, no findings and counts as evidence."""
    result = ci_status(tmp_path, SHA, junit=junit(tmp_path, PASS, root=root))
    assert isinstance(result, CiResult) and result.passed and result.findings == []
    assert result.evidence["tests"] == 2 and result.evidence["skipped"] == 1


def test_junit_failing_names_the_failing_tests(tmp_path: Path) -> None:
    """Failures and errors give ci.failing naming the failing test cases."""
    result = ci_status(tmp_path, SHA, junit=junit(tmp_path, FAIL))
    [finding] = result.findings
    assert result.state == "failure" and finding.code == "ci.failing"
    assert "t.A.broken" in finding.message and "t.B.boom" in finding.message
    assert result.evidence["failures"] == 1 and result.evidence["errors"] == 1


def test_junit_names_at_most_five_failing_tests(tmp_path: Path) -> None:
    """Only five failing tests are named, the rest counted."""
    cases = "".join(f'<testcase name="t{i}"><failure/></testcase>' for i in range(8))
    [finding] = ci_status(tmp_path, SHA, junit=junit(tmp_path, cases)).findings
    assert "t4" in finding.message and "t5" not in finding.message and "3 more" in finding.message


def test_junit_for_another_commit(tmp_path: Path) -> None:
    """A green report for another commit is ci.not-this-commit."""
    [finding] = ci_status(tmp_path, SHA, junit=junit(tmp_path, PASS, commit=OTHER)).findings
    assert finding.code == "ci.not-this-commit" and OTHER[:12] in finding.message


def test_junit_commit_from_sidecar_file(tmp_path: Path) -> None:
    """Without a commit property, a REPORT.commit sidecar names the commit (abbreviated is ok)."""
    path = junit(tmp_path, PASS, commit=None)
    assert ci_status(tmp_path, SHA, junit=path).findings[0].code == "ci.not-this-commit"
    (tmp_path / "junit.xml.commit").write_text(SHA[:10] + "\n")
    assert ci_status(tmp_path, SHA, junit=path).passed


def test_junit_missing_file(tmp_path: Path) -> None:
    """A missing report is ci.unavailable."""
    [finding] = ci_status(tmp_path, SHA, junit=Path("nope.xml")).findings
    assert finding.code == "ci.unavailable" and "nope.xml" in finding.message


def test_junit_invalid_xml_gives_the_line(tmp_path: Path) -> None:
    """Invalid XML is ci.unavailable located at the parser's line."""
    path = tmp_path / "junit.xml"
    path.write_text('<?xml version="1.0"?>\n<testsuites>\n<testsuite>\n</testsuites>\n')
    [finding] = ci_status(tmp_path, SHA, junit=path).findings
    assert finding.code == "ci.unavailable"
    assert finding.location is not None and finding.location.line == 4


def test_command_success(tmp_path: Path) -> None:
    """A command printing success for the commit passes, with its url as evidence."""
    cmd = script(tmp_path, 'print(\'{"state": "success", "url": "https://ci/1"}\')')
    result = ci_status(tmp_path, SHA, command=cmd)
    assert result.passed and result.evidence["url"] == "https://ci/1"


def test_command_failure_says_how_long_ci_is_red(tmp_path: Path) -> None:
    """A failure with `since` says how long CI has been red."""
    since = (NOW - timedelta(days=3, hours=4, minutes=2)).isoformat()
    cmd = script(tmp_path, f'print(\'{{"state": "failure", "since": "{since}"}}\')')
    result = ci_status(tmp_path, SHA, command=cmd, now=NOW)
    [finding] = result.findings
    assert finding.code == "ci.failing" and "red for 3 days 4 hours" in finding.message


def test_command_plain_word_and_commit_substitution(tmp_path: Path) -> None:
    """A plain word on a line is a status, and {commit} is replaced by the SHA."""
    cmd = script(tmp_path, f"print('checking'); print('success' if sys.argv[1] == {SHA!r} else 1)")
    assert ci_status(tmp_path, SHA, command=cmd).passed


def test_command_pending_is_no_go(tmp_path: Path) -> None:
    """Pending is ci.pending, an error."""
    [finding] = ci_status(tmp_path, SHA, command=script(tmp_path, "print('pending')")).findings
    assert finding.code == "ci.pending" and finding.severity.value == "error"


def test_command_that_hangs_is_unavailable(tmp_path: Path) -> None:
    """A command that does not answer in time is killed and gives ci.unavailable."""
    started = datetime.now(UTC)
    cmd = script(tmp_path, "time.sleep(30)")
    [finding] = ci_status(tmp_path, SHA, command=cmd, timeout=0.5).findings
    assert finding.code == "ci.unavailable" and "did not answer within 0.5s" in finding.message
    assert datetime.now(UTC) - started < timedelta(seconds=5)


def test_command_that_hangs_in_a_child_is_unavailable(tmp_path: Path) -> None:
    """A shell script whose child hangs is killed with its child, without waiting for it."""
    path = tmp_path / "status.sh"
    path.write_text("#!/bin/sh\nsleep 30\necho success\n")
    path.chmod(0o755)
    started = datetime.now(UTC)
    [finding] = ci_status(tmp_path, SHA, command=str(path), timeout=0.5).findings
    assert finding.code == "ci.unavailable"
    assert datetime.now(UTC) - started < timedelta(seconds=5)


def test_command_exit_1_gives_stderr_last_line(tmp_path: Path) -> None:
    """A non-zero exit is ci.unavailable with stderr's last line."""
    cmd = script(
        tmp_path,
        "print('x', file=sys.stderr); print('401 Unauthorized', file=sys.stderr); sys.exit(1)",
    )
    [finding] = ci_status(tmp_path, SHA, command=cmd).findings
    assert finding.code == "ci.unavailable" and "401 Unauthorized" in finding.message


def test_command_not_found_and_garbage_output(tmp_path: Path) -> None:
    """A missing program or an output without a status is ci.unavailable."""
    assert ci_status(tmp_path, SHA, command="no-such-ci-tool {commit}").findings[0].code == (
        "ci.unavailable"
    )
    [finding] = ci_status(tmp_path, SHA, command=script(tmp_path, "print('hello')")).findings
    assert finding.code == "ci.unavailable" and "no status" in finding.message


def test_command_reporting_another_commit(tmp_path: Path) -> None:
    """A status whose `commit` is another commit is ci.not-this-commit."""
    cmd = script(tmp_path, f'print(\'{{"state": "success", "commit": "{OTHER}"}}\')')
    assert ci_status(tmp_path, SHA, command=cmd).findings[0].code == "ci.not-this-commit"


def test_commit_defaults_to_head_and_needs_git(tmp_path: Path) -> None:
    """Without a commit, HEAD of the project is used; outside a git repo it is a UsageError."""
    head = git_repo(tmp_path / "repo")
    cmd = script(tmp_path, f"print('success' if sys.argv[1] == {head!r} else 'failure')")
    assert ci_status(tmp_path / "repo", command=cmd).passed
    (tmp_path / "plain").mkdir()
    with pytest.raises(UsageError, match="not a git repository"):
        ci_status(tmp_path / "plain", command=cmd)
    with pytest.raises(UsageError):
        current_commit(tmp_path / "plain")


def test_exactly_one_source(tmp_path: Path) -> None:
    """Giving neither or both sources is a UsageError."""
    with pytest.raises(UsageError):
        ci_status(tmp_path, SHA)
    with pytest.raises(UsageError):
        ci_status(tmp_path, SHA, junit=Path("a"), command="b")


def test_format_duration() -> None:
    """Durations keep their two largest units."""
    assert format_duration(3 * 86400 + 4 * 3600 + 120) == "3 days 4 hours"
    assert format_duration(86400 + 60) == "1 day"
    assert format_duration(2 * 3600 + 5 * 60) == "2 hours 5 minutes"
    assert format_duration(30) == "less than a minute"


def test_codes_are_documented() -> None:
    """Every CI code is in CODES and docs/gates.md."""
    docs = (Path(__file__).parents[1] / "docs" / "gates.md").read_text()
    assert set(CODES) == {"ci.failing", "ci.pending", "ci.not-this-commit", "ci.unavailable"}
    for code in CODES:
        assert f"`{code}`" in docs
