"""The log (INC15) and CI (INC16) gates of a release: real projects, git repositories, log files."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from airlock import api
from airlock.bundle import Bundle, git_source
from airlock.checks import Severity
from airlock.checks.ci import CODES as CI_CODES
from airlock.checks.logscan import CODES as LOG_CODES
from airlock.checks.logscan import scan_log_files, scan_logs
from airlock.checks.outcome import GateOutcome, Status
from airlock.checks.release_gates import CODES, ci_gate, release_prefix
from airlock.errors import UsageError
from airlock.gonogo import logs_gate
from airlock.model import Project

from .conftest import REPO, ProjectFactory

CARD = "4111111111111111"
RELEASE = "1a2b3c4d5e6f7081"
OTHER_RELEASE = "99887766554433aa"
GIT = ["-c", "user.name=t", "-c", "user.email=t@example.invalid", "-c", "commit.gpgsign=false"]
PASS_CASES = '<testcase classname="t.A" name="ok"/><testcase classname="t.A" name="ok2"/>'
FAIL_CASES = (
    '<testcase classname="t.A" name="ok"/>'
    '<testcase classname="t.A" name="broken"><failure message="x"/></testcase>'
    '<testcase classname="t.B" name="boom"><error message="y"/></testcase>'
)


# -- helpers -----------------------------------------------------------------------------------


def git(repo: Path, *args: str) -> str:
    out = subprocess.run(
        ["git", "-C", str(repo), *GIT, *args], check=True, capture_output=True, text=True
    )
    return out.stdout.strip()


def commit_all(repo: Path, message: str = "commit") -> str:
    """Make ``repo`` a git repository if it is not one, commit everything, return HEAD."""
    if not (repo / ".git").exists():
        subprocess.run(["git", "init", "-q", str(repo)], check=True)
        (repo / ".gitignore").write_text(".airlock/\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", message)
    return git(repo, "rev-parse", "HEAD")


def new_project(
    make_project: ProjectFactory, *, logs: dict[str, Any] | None = None, **gates: Any
) -> Path:
    """A one-service project (``web``) with the given gates."""
    config: dict[str, Any] = {"bake": "0.5s", "ready_timeout": "3s", **gates}
    if logs is not None:
        config["logs"] = logs
    return make_project({"web": {"config": {"VERSION": "web-1"}}}, gates=config)


def write_log(root: Path, env: str, service: str, lines: list[str]) -> Path:
    path = root / ".airlock" / "envs" / env / "logs" / f"{service}.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines))
    return path


def line(service: str, release: str, text: str, suffix: str = "0a1b2c") -> str:
    """A line an instance of ``release`` wrote, as the agent prefixes it."""
    return f"[{service}-{release[:8]}-{suffix}] {text}"


def agent_line(service: str, release: str) -> str:
    return f"--- 2024-05-01T10:00:00Z instance {service}-{release[:8]}-0a1b2c started: pid 1"


def as_json(outcome: GateOutcome) -> str:
    return json.dumps(outcome.to_dict())


def junit(path: Path, cases: str, commit: str | None) -> Path:
    props = f'<properties><property name="commit" value="{commit}"/></properties>' if commit else ""
    path.write_text(
        f'<?xml version="1.0"?>\n<testsuites><testsuite name="unit">{props}{cases}'
        "</testsuite></testsuites>\n"
    )
    return path


def status_script(folder: Path, body: str) -> str:
    """A CI status command in ``folder`` (outside the project) running ``body``."""
    path = folder / "ci-status.py"
    path.write_text(f"import sys\n{body}\n")
    return f"{sys.executable} {path} {{commit}}"


def ci_project(make_project: ProjectFactory, ci: dict[str, Any]) -> tuple[Path, Project]:
    root = new_project(make_project, ci=ci)
    return root, api.project_at(root)


def sealed_from_commit(root: Path) -> tuple[Bundle, str]:
    head = commit_all(root)
    bundle, _ = api.build(root, "v1")
    return bundle, head


# -- logscan's line filter ---------------------------------------------------------------------


def test_scan_only_lines_with_a_prefix_keeps_the_file_line_numbers(tmp_path: Path) -> None:
    """With line_prefix only the prefixed lines are scanned, located at the file's line."""
    log = tmp_path / "web.log"
    log.write_text(
        f"[web-aaaaaaaa-1] paid {CARD}\n"
        "[web-bbbbbbbb-1] hello\n"
        "--- agent line\n"
        f"[web-bbbbbbbb-1] paid 4242424242424242\n"
    )
    assert len(scan_logs([log])) == 2  # no filter: everything, as before
    [finding] = scan_logs([log], line_prefix="[web-bbbbbbbb-")
    assert finding.location is not None and finding.location.line == 4
    assert finding.evidence["masked"].endswith("4242")
    scan = scan_log_files([log], line_prefix=release_prefix("web", "bbbbbbbb12345678"))
    assert scan.lines == {str(log): 2} and len(scan.findings) == 1
    assert scan_log_files([log]).lines == {str(log): 4}


def test_the_instance_prefix_itself_is_not_scanned(tmp_path: Path) -> None:
    """A pattern that would match the instance id does not match the prefix, only the text."""
    log = tmp_path / "web.log"
    log.write_text(line("web", RELEASE, "nothing to see") + "\n")
    findings = scan_logs(
        [log], patterns={"hex": r"[0-9a-f]{8}"}, line_prefix=release_prefix("web", RELEASE)
    )
    assert findings == []


# -- logs gate ---------------------------------------------------------------------------------


def test_logs_gate_is_skipped_when_not_configured(make_project: ProjectFactory) -> None:
    """Without gates.logs the gate is skipped, whatever the logs hold."""
    root = new_project(make_project)
    write_log(root, "staging", "web", [line("web", RELEASE, f"card {CARD}")])
    outcome = logs_gate(api.project_at(root), root, RELEASE)
    assert outcome.status is Status.SKIPPED and outcome.passed
    assert "gates.logs" in outcome.summary


def test_card_number_in_a_release_line_fails_masked(make_project: ProjectFactory) -> None:
    """A card number the release logged fails the gate at file:line, masked everywhere."""
    root = new_project(make_project, logs={})
    path = write_log(
        root,
        "staging",
        "web",
        [
            agent_line("web", RELEASE),
            line("web", RELEASE, "GET / 200"),
            line("web", RELEASE, f"charged card {CARD}"),
        ],
    )
    outcome = logs_gate(api.project_at(root), root, RELEASE)
    assert outcome.status is Status.FAIL
    [finding] = outcome.findings
    assert finding.code == "logs.card-number" and finding.severity is Severity.ERROR
    assert finding.location is not None
    assert finding.location.file == str(path) and finding.location.line == 3
    assert f"{path}:3" in finding.message and "************1111" in outcome.summary
    assert CARD not in as_json(outcome)
    assert outcome.evidence["lines_scanned"] == 2 and outcome.evidence["card_numbers"] == 1
    assert outcome.evidence["files"] == {str(path): 2}


def test_lines_of_another_release_are_ignored(make_project: ProjectFactory) -> None:
    """Another release's card number does not count against this one."""
    root = new_project(make_project, logs={})
    write_log(
        root,
        "staging",
        "web",
        [
            line("web", OTHER_RELEASE, f"charged card {CARD}"),
            agent_line("web", OTHER_RELEASE),
            line("web", RELEASE, "GET / 200"),
        ],
    )
    outcome = logs_gate(api.project_at(root), root, RELEASE)
    assert outcome.status is Status.PASS and outcome.findings == []
    assert outcome.evidence["lines_scanned"] == 1
    assert "1 log line" in outcome.summary
    assert logs_gate(api.project_at(root), root, OTHER_RELEASE).status is Status.FAIL


def test_email_is_a_warning_and_the_gate_passes(make_project: ProjectFactory) -> None:
    """An e-mail address gives a masked warning; the gate still passes."""
    root = new_project(make_project, logs={})
    write_log(root, "staging", "web", [line("web", RELEASE, "signup maria.lopez@example.com")])
    outcome = logs_gate(api.project_at(root), root, RELEASE)
    assert outcome.status is Status.PASS and outcome.passed
    [finding] = outcome.findings
    assert finding.code == "logs.email" and finding.severity is Severity.WARNING
    assert "m***@example.com" in finding.message and "maria.lopez" not in as_json(outcome)
    assert "1 e-mail address" in outcome.summary
    new_project(make_project, logs={"emails": False})  # the same project, e-mails off
    assert logs_gate(api.project_at(root), root, RELEASE).findings == []


def test_no_logs_anywhere_fails(make_project: ProjectFactory) -> None:
    """A release that never wrote a log line cannot be judged: logs.no-logs, FAIL."""
    root = new_project(make_project, logs={})
    project = api.project_at(root)
    outcome = logs_gate(project, root, RELEASE)
    assert outcome.status is Status.FAIL
    [finding] = outcome.findings
    assert finding.code == "logs.no-logs" and finding.severity is Severity.ERROR
    assert "has not run in any environment yet" in finding.message
    assert "deploy it to staging first" in finding.message
    # only another release's lines and the agent's own lines: still no logs for this one
    write_log(
        root,
        "staging",
        "web",
        [agent_line("web", RELEASE), line("web", OTHER_RELEASE, "hello")],
    )
    assert logs_gate(project, root, RELEASE).findings[0].code == "logs.no-logs"


def test_every_environment_is_scanned_unless_some_are_named(make_project: ProjectFactory) -> None:
    """The release's lines in production count too; envs= narrows the scan."""
    root = new_project(make_project, logs={})
    project = api.project_at(root)
    path = write_log(root, "production", "web", [line("web", RELEASE, f"card {CARD}")])
    outcome = logs_gate(project, root, RELEASE)
    assert outcome.status is Status.FAIL and outcome.findings[0].location is not None
    assert outcome.findings[0].location.file == str(path)
    narrowed = logs_gate(project, root, RELEASE, envs=["staging"])
    assert narrowed.findings[0].code == "logs.no-logs"
    with pytest.raises(UsageError, match="no environment 'qa'"):
        logs_gate(project, root, RELEASE, envs=["qa"])


def test_custom_pattern_fails_masked(make_project: ProjectFactory) -> None:
    """A configured pattern fails the gate, naming the pattern, with the value masked."""
    root = new_project(make_project, logs={"patterns": {"ssn": r"\b\d{3}-\d{2}-\d{4}\b"}})
    write_log(root, "staging", "web", [line("web", RELEASE, "customer ssn 078-05-1120")])
    outcome = logs_gate(api.project_at(root), root, RELEASE)
    assert outcome.status is Status.FAIL
    [finding] = outcome.findings
    assert finding.code == "logs.pattern" and "'ssn'" in finding.message
    assert "078-05-1120" not in as_json(outcome) and outcome.evidence["patterns"] == 1


def test_invalid_pattern_fails_instead_of_raising(make_project: ProjectFactory) -> None:
    """An invalid pattern is logs.unavailable, naming it, not an exception."""
    root = new_project(make_project, logs={"patterns": {"broken": "(unclosed"}})
    write_log(root, "staging", "web", [line("web", RELEASE, "hello")])
    outcome = logs_gate(api.project_at(root), root, RELEASE)
    assert outcome.status is Status.FAIL
    assert outcome.findings[0].code == "logs.unavailable" and "broken" in outcome.summary


# -- the bundle records its commit -------------------------------------------------------------


def test_bundle_records_the_commit_and_a_clean_tree(make_project: ProjectFactory) -> None:
    """A release sealed from a clean checkout records HEAD, not dirty, outside its id."""
    root = new_project(make_project)
    bundle, head = sealed_from_commit(root)
    assert bundle.commit == head and not bundle.dirty
    assert bundle.source == {"commit": head, "dirty": False}
    manifest = json.loads((bundle.path / "manifest.json").read_text())
    assert manifest["source"] == {"commit": head, "dirty": False}
    bundle.verify()


def test_bundle_records_a_dirty_tree(make_project: ProjectFactory) -> None:
    """Uncommitted changes to a tracked file, or a sealed file git does not track, are dirty."""
    root = new_project(make_project)
    head = commit_all(root)
    (root / "app" / "webapp.py").write_text(
        (root / "app" / "webapp.py").read_text() + "\n# edited\n"
    )
    bundle, _ = api.build(root, "v2")
    assert bundle.commit == head and bundle.dirty
    git(root, "checkout", "--", ".")
    (root / "app" / "extra.py").write_text("X = 1\n")
    document = make_project.read(root)
    document["services"]["web"]["source"].append("app/extra.py")
    make_project.write(root, document)
    git(root, "add", "airlock.yaml")
    git(root, "commit", "-qm", "extra source, but not the file")
    assert git_source(root, ["airlock.yaml", "app/webapp.py"])["dirty"] is False
    assert git_source(root, ["airlock.yaml", "app/extra.py"])["dirty"] is True
    assert api.build(root, "v3")[0].dirty


def test_rebuilding_the_same_content_once_committed_records_the_commit(
    make_project: ProjectFactory,
) -> None:
    """Sealed dirty, then committed unchanged: building again reuses the bundle, now clean."""
    root = new_project(make_project)
    commit_all(root)
    (root / "app" / "webapp.py").write_text(
        (root / "app" / "webapp.py").read_text() + "\n# edited\n"
    )
    first, new = api.build(root, "v2")
    assert new and first.dirty
    head = commit_all(root, "the edit")
    again, new = api.build(root, "v2")
    assert not new and again.id == first.id
    assert again.source == {"commit": head, "dirty": False}
    assert api.release(root, first.id).source == {"commit": head, "dirty": False}
    again.verify()


def test_non_git_project_records_no_commit(make_project: ProjectFactory, tmp_path: Path) -> None:
    """Outside git the commit is None (and building does not fail)."""
    root = new_project(make_project)
    bundle, _ = api.build(root, "v1")
    assert bundle.commit is None and not bundle.dirty
    assert git_source(tmp_path / "nowhere") == {"commit": None, "dirty": False}


def test_older_manifest_without_source_is_none_safe(make_project: ProjectFactory) -> None:
    """A manifest written before the source was recorded reads as no commit."""
    root = new_project(make_project)
    bundle, _ = api.build(root, "v1")
    manifest = {k: v for k, v in bundle.manifest.items() if k != "source"}
    old = Bundle(bundle.path, manifest)
    assert old.commit is None and old.source == {"commit": None, "dirty": False}


# -- CI gate -----------------------------------------------------------------------------------


def test_ci_gate_is_skipped_when_not_configured(make_project: ProjectFactory) -> None:
    root = new_project(make_project)
    bundle, _ = api.build(root, "v1")
    outcome = ci_gate(api.project_at(root), root, bundle)
    assert outcome.status is Status.SKIPPED and "gates.ci" in outcome.summary


def test_junit_passing_for_the_sealed_commit_passes(make_project: ProjectFactory) -> None:
    """A green JUnit report for the commit the release was sealed from passes."""
    root, project = ci_project(make_project, {"junit": "build/junit.xml"})
    bundle, head = sealed_from_commit(root)
    (root / "build").mkdir()
    junit(root / "build" / "junit.xml", PASS_CASES, head)
    outcome = ci_gate(project, root, bundle)
    assert outcome.status is Status.PASS, outcome.summary
    assert outcome.findings == [] and head[:12] in outcome.summary
    assert outcome.evidence["commit"] == head and outcome.evidence["tests"] == 2
    assert outcome.evidence["release"] == bundle.id


def test_junit_failing_fails_with_the_number_of_failed_tests(make_project: ProjectFactory) -> None:
    root, project = ci_project(make_project, {"junit": "junit.xml"})
    bundle, head = sealed_from_commit(root)
    junit(root / "junit.xml", FAIL_CASES, head)
    outcome = ci_gate(project, root, bundle)
    assert outcome.status is Status.FAIL
    assert outcome.summary == f"CI failing (2 failed tests) for commit {head[:12]}"
    assert outcome.findings[0].code == "ci.failing"


def test_red_status_says_for_how_long(make_project: ProjectFactory) -> None:
    """A failure reported since three days gives 'CI failing for 3 days 2 hours'."""
    since = (datetime.now(UTC) - timedelta(days=3, hours=2, minutes=5)).isoformat()
    command = status_script(
        make_project.root, f'print(\'{{"state": "failure", "since": "{since}"}}\')'
    )
    root, project = ci_project(make_project, {"command": command})
    bundle, _ = sealed_from_commit(root)
    outcome = ci_gate(project, root, bundle)
    assert outcome.status is Status.FAIL
    assert outcome.summary.startswith("CI failing for 3 days 2 hours")
    assert outcome.evidence["red_seconds"] >= 3 * 86400


def test_status_command_gets_the_sealed_commit(make_project: ProjectFactory) -> None:
    """The command is asked about the bundle's commit, even after HEAD has moved on."""
    green = make_project.root / "green.sha"
    command = status_script(
        make_project.root,
        f"print('success' if sys.argv[1] == open({str(green)!r}).read() else 'failure')",
    )
    root, project = ci_project(make_project, {"command": command})
    bundle, head = sealed_from_commit(root)
    green.write_text(head)
    (root / "NOTES").write_text("later\n")
    commit_all(root, "later commit")
    assert ci_gate(project, root, bundle).status is Status.PASS


def test_report_for_another_commit_fails(make_project: ProjectFactory) -> None:
    root, project = ci_project(make_project, {"junit": "junit.xml"})
    bundle, _ = sealed_from_commit(root)
    other = "fedcba9876543210fedcba9876543210fedcba98"
    junit(root / "junit.xml", PASS_CASES, other)
    outcome = ci_gate(project, root, bundle)
    assert outcome.status is Status.FAIL
    assert outcome.findings[0].code == "ci.not-this-commit" and other[:12] in outcome.summary


def test_release_sealed_from_a_dirty_tree_fails(make_project: ProjectFactory) -> None:
    """Uncommitted changes: CI for HEAD cannot vouch for the release, even if green."""
    root, project = ci_project(make_project, {"junit": "junit.xml"})
    head = commit_all(root)
    (root / "app" / "webapp.py").write_text(
        (root / "app" / "webapp.py").read_text() + "\n# not committed\n"
    )
    bundle, _ = api.build(root, "v1")
    junit(root / "junit.xml", PASS_CASES, head)
    outcome = ci_gate(project, root, bundle)
    assert outcome.status is Status.FAIL
    [finding] = outcome.findings
    assert finding.code == "ci.not-this-commit" and "uncommitted changes" in finding.message
    assert outcome.evidence["dirty"] is True


def test_release_sealed_outside_git_fails(make_project: ProjectFactory) -> None:
    root, project = ci_project(make_project, {"junit": "junit.xml"})
    bundle, _ = api.build(root, "v1")
    outcome = ci_gate(project, root, bundle)
    assert outcome.status is Status.FAIL
    assert outcome.findings[0].code == "ci.not-this-commit"
    assert "not sealed from a git commit" in outcome.summary


def test_missing_junit_report_fails_unavailable(make_project: ProjectFactory) -> None:
    root, project = ci_project(make_project, {"junit": "build/junit.xml"})
    bundle, _ = sealed_from_commit(root)
    outcome = ci_gate(project, root, bundle)
    assert outcome.status is Status.FAIL
    assert outcome.findings[0].code == "ci.unavailable" and "junit.xml" in outcome.summary


def test_unusable_command_fails_unavailable_instead_of_raising(
    make_project: ProjectFactory,
) -> None:
    """A UsageError of the CI check (a command that cannot be split) becomes ci.unavailable."""
    root, project = ci_project(make_project, {"command": "ci-status 'unclosed {commit}"})
    bundle, _ = sealed_from_commit(root)
    outcome = ci_gate(project, root, bundle)
    assert outcome.status is Status.FAIL
    assert outcome.findings[0].code == "ci.unavailable" and "cannot be read" in outcome.summary


def test_hanging_command_fails_quickly(make_project: ProjectFactory) -> None:
    """A status command that does not answer within the timeout fails the gate, soon."""
    root, project = ci_project(make_project, {"command": "sleep 30", "timeout": 1})
    bundle, _ = sealed_from_commit(root)
    started = time.monotonic()
    outcome = ci_gate(project, root, bundle)
    assert time.monotonic() - started < 10
    assert outcome.status is Status.FAIL
    assert outcome.findings[0].code == "ci.unavailable" and "within 1s" in outcome.summary


# -- codes and docs ----------------------------------------------------------------------------


def test_codes_are_documented() -> None:
    """The new codes and the logs.*/ci.* codes are explained in docs/findings.md."""
    docs = (REPO / "docs" / "findings.md").read_text()
    for code in {**CODES, **LOG_CODES, **CI_CODES}:
        assert f"`{code}`" in docs, code
    assert all(text.endswith(".") for text in CODES.values())


# -- end to end --------------------------------------------------------------------------------


def test_a_deployed_release_that_logs_a_card_number_fails(make_project: ProjectFactory) -> None:
    """Deploy a service that logs a card on GET /, call it: the gate fails at its log file."""
    root = make_project(
        {"web": {"config": {"VERSION": "web-1", "LOG_CARD": CARD}}},
        gates={"bake": "0.5s", "ready_timeout": "3s", "logs": {}},
    )
    bundle, _ = api.build(root, "v1")
    project = api.project_at(root)
    assert logs_gate(project, root, bundle.id).findings[0].code == "logs.no-logs"
    result = api.deploy(root, "staging")
    assert httpx.get(result.endpoints["web"] + "/", timeout=5).status_code == 200
    log = root / ".airlock" / "envs" / "staging" / "logs" / "web.log"
    deadline = time.monotonic() + 10
    while CARD not in (log.read_text() if log.is_file() else "") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert CARD in log.read_text()  # the incident is real: the service logged it

    outcome = logs_gate(project, root, bundle.id)
    assert outcome.status is Status.FAIL
    cards = [f for f in outcome.findings if f.code == "logs.card-number"]
    assert cards and cards[0].location is not None
    assert cards[0].location.file == str(log)
    assert str(log) in outcome.summary and "************1111" in outcome.summary
    assert CARD not in as_json(outcome)
    assert outcome.evidence["files"] and outcome.evidence["lines_scanned"] >= 1
    assert logs_gate(project, root, OTHER_RELEASE).findings[0].code == "logs.no-logs"
