"""Delivery metrics: the pure computation on hand-made rows whose figures are worked out by hand,
and end to end on real deploys of a project in a real git repository."""

from __future__ import annotations

import json
import os
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from airlock import api
from airlock.errors import UsageError
from airlock.metrics import (
    Commit,
    DeploymentRow,
    JournalRow,
    ReleaseRow,
    commits_from_manifest,
    compute,
    parse_since,
    quantile,
    to_prometheus,
)
from airlock.state import open_state

from .conftest import ProjectFactory, airlock

T0 = datetime(2024, 5, 1, tzinfo=UTC)


def at(hours: float) -> datetime:
    return T0 + timedelta(hours=hours)


def deployment(
    id_: str,
    start: float,
    end: float | None,
    status: str = "succeeded",
    *,
    kind: str = "deploy",
    release: str = "r1",
    previous: str | None = None,
    env: str = "staging",
) -> DeploymentRow:
    return DeploymentRow(
        id=id_,
        env=env,
        kind=kind,
        release_id=release,
        previous_release_id=previous,
        status=status,
        started_at=at(start),
        finished_at=at(end) if end is not None else None,
    )


def commit(hash_: str, authored: float, committed: float | None = None) -> Commit:
    return Commit(hash_, at(authored), at(committed if committed is not None else authored))


def event(seq: int, hours: float, type_: str, **body: Any) -> JournalRow:
    return JournalRow(seq, at(hours), "event", {"type": type_, **body})


def action(seq: int, hours: float, name: str, **body: Any) -> JournalRow:
    return JournalRow(seq, at(hours), "action", {"action": name, **body})


# -- the pure computation ------------------------------------------------------------------------


def test_no_deployments_yet_is_said_and_nothing_is_measured() -> None:
    """An environment without deployments has no figures, and says so."""
    result = compute("staging", [], [], {}, now=at(1))
    data = result.to_dict()
    assert result.empty and data["deployments"] == 0
    assert data["deployment_frequency_per_week"] is None
    assert data["lead_time_hours"]["median"] is None and data["change_failure_rate"] is None
    assert data["recovery_minutes"]["median"] is None and data["detect_seconds"]["median"] is None
    assert data["notes"][0] == "no deployments to staging yet"
    assert set(data["cluster"].values()) == {None}


#: A history of four deploys and two rollbacks by hand, worked out by hand below.
#:   d1  0h → 0.5h   succeeded                               r1
#:   d2 24h → 24.5h  rolled back automatically (verdict at 24.1h)   r2
#:   d3 48h → 48.5h  succeeded, rolled back by hand at 50h (b1, done 50.25h)   r3
#:   d4 72h → 72.5h  succeeded, rolled back by hand at 100h: outside the 24 h window (b2)
HISTORY = [
    deployment("d1", 0, 0.5, release="r1"),
    deployment("d2", 24, 24.5, "rolled_back", release="r2", previous="r1"),
    deployment("d3", 48, 48.5, release="r3", previous="r1"),
    deployment("b1", 50, 50.25, kind="rollback", release="r1", previous="r3"),
    deployment("d4", 72, 72.5, release="r4", previous="r1"),
    deployment("b2", 100, 100.25, kind="rollback", release="r1", previous="r4"),
    deployment("x1", 1, 2, env="production"),  # another environment: never counted
]
JOURNAL = {
    "d2": [
        event(1, 24.0, "begin"),
        action(2, 24.01, "StartNew", service="api"),
        event(3, 24.05, "started", service="api"),
        event(4, 24.1, "failed", service="api", reason="api: /healthz answered 500"),
        action(5, 24.11, "RevertTraffic", service="api"),
        action(6, 24.2, "StopNew", service="api"),
        action(7, 24.3, "Finish", outcome="rolled_back"),
    ]
}


def test_frequency_failure_rate_rollbacks_recovery_and_detection_by_hand() -> None:
    """Every figure of HISTORY, worked out by hand."""
    result = compute("staging", HISTORY, [], JOURNAL, now=at(7 * 24), since=T0)
    data = result.to_dict()
    assert data["deployments"] == 4  # d1..d4; rollbacks are not deploys
    # 3 deploys succeeded (d1, d3, d4) in exactly one week
    assert data["deployment_frequency_per_week"] == pytest.approx(3.0)
    assert data["evidence"]["deployment_frequency_per_week"]["deployments"] == ["d1", "d3", "d4"]
    # d2 (automatic) and d3 (by hand within 24 h) failed; d4's rollback came 27.5 h later
    assert data["change_failure_rate"] == pytest.approx(0.5)
    failed = data["evidence"]["change_failure_rate"]["failed"]
    assert [(f["deployment"], f["why"]) for f in failed] == [
        ("d2", "rolled back automatically"),
        ("d3", "rolled back by hand"),
    ]
    # rollbacks: d2 automatically, b1 and b2 by hand, over 4 deploys
    assert data["rollback_rate"] == pytest.approx(0.75)
    assert data["evidence"]["rollback_rate"]["by_hand"] == ["b1", "b2"]
    # recovery: d2 24h → 24.5h = 30 min; d3 48h → b1's end 50.25h = 135 min; median 82.5
    recoveries = {r["deployment"]: r["minutes"] for r in data["evidence"]["recovery_minutes"]}
    assert recoveries == {"d2": pytest.approx(30.0), "d3": pytest.approx(135.0)}
    assert data["recovery_minutes"]["median"] == pytest.approx(82.5)
    # detection: d2 24h → the failed event at 24.1h = 360 s; d3 48h → b1 at 50h = 7200 s
    detections = {d["deployment"]: d["seconds"] for d in data["evidence"]["detect_seconds"]}
    assert detections == {"d2": pytest.approx(360.0), "d3": pytest.approx(7200.0)}
    assert data["detect_seconds"]["median"] == pytest.approx(3780.0)
    assert data["evidence"]["detect_seconds"][0]["verdict"] == "journal #4: failed (api)"
    assert data["cluster"] == {
        "deployment_frequency_per_week": "high",
        "lead_time_hours": None,
        "change_failure_rate": "low",  # 50% is nearest to low's 40%
        "recovery_minutes": "high",
    }


def test_a_wider_rollback_window_fails_the_later_deploy_too() -> None:
    """With a 48 h window, d4's rollback by hand 27.5 h after it finished fails it as well."""
    result = compute(
        "staging", HISTORY, [], JOURNAL, now=at(7 * 24), since=T0, window=timedelta(hours=48)
    )
    assert result.change_failure_rate == pytest.approx(0.75)
    assert result.to_dict()["rollback_window_hours"] == 48.0


def test_since_keeps_earlier_rows_out_of_the_figures() -> None:
    """From 40 h on, only d3 and d4 count (d3 failed by hand); the period is 128 h."""
    result = compute("staging", HISTORY, [], JOURNAL, now=at(7 * 24), since=at(40))
    assert result.deployments == 2
    assert result.deployment_frequency_per_week == pytest.approx(2 / (128 / 168))
    assert result.change_failure_rate == pytest.approx(0.5)
    assert result.rollback_rate == pytest.approx(1.0)  # b1 and b2 over d3 and d4


def test_a_deploy_still_running_is_not_counted() -> None:
    rows = [deployment("d1", 0, 1), deployment("d2", 2, None, "running")]
    result = compute("staging", rows, [], {}, now=at(30))
    assert result.deployments == 1
    assert "1 deployment(s) still running, not counted" in result.notes


def test_a_short_period_counts_as_a_day() -> None:
    """Three deploys within the first hour are three a day, 21 a week: elite."""
    rows = [deployment(f"d{i}", i * 0.2, i * 0.2 + 0.1) for i in range(3)]
    result = compute("staging", rows, [], {}, now=at(1))
    assert result.deployment_frequency_per_week == pytest.approx(21.0)
    assert result.cluster["deployment_frequency_per_week"] == "elite"


#: r1 brings c1 (authored -10h) and c2 (authored -4h, committed -3h), r2 brings c3 (authored
#: 1h, committed 2h); r2b was sealed after r2 but never deployed, r3 brings c5.
RELEASES = [
    ReleaseRow("r1", at(-1), "c2", (commit("c2", -4, -3), commit("c1", -10))),
    ReleaseRow("r2", at(2.5), "c3", (commit("c3", 1, 2),)),
    ReleaseRow("r2b", at(3), "c4", (commit("c4", 3),)),
    ReleaseRow("r3", at(4), "c5", (commit("c5", 3.5),)),
]
LEAD_ROWS = [
    deployment("d1", 1.5, 2, release="r1"),  # carries c1, c2
    deployment("d2", 4, 5, release="r2", previous="r1"),  # carries c3
    deployment("d3", 6, 8, release="r3", previous="r2"),  # carries c4 (r2b) and c5
    deployment("d4", 9, 10, release="r1", previous="r3"),  # r1 again: nothing new
]


@pytest.mark.parametrize(
    ("definition", "since", "samples", "median", "p90"),
    [
        # per commit, from its author time: c1 12h, c2 6h, c3 4h, c4 5h, c5 4.5h
        ("first-commit", None, {"c1": 12, "c2": 6, "c3": 4, "c4": 5, "c5": 4.5}, 5.0, 9.6),
        # per deploy, from its HEAD's commit time: d1 c2 5h, d2 c3 3h, d3 c5 4.5h
        ("merge", None, {"c2": 5, "c3": 3, "c5": 4.5}, 4.5, 4.9),
        # from 3h on: d1's commits were carried before, so they are not counted again
        ("first-commit", at(3), {"c3": 4, "c4": 5, "c5": 4.5}, 4.5, 4.9),
    ],
)
def test_lead_time_from_each_commit_or_from_the_merge(
    definition: str, since: datetime | None, samples: dict[str, float], median: float, p90: float
) -> None:
    """Each commit counts once, at the first deploy that carried it; a release sealed but
    never deployed is carried by the next one deployed."""
    result = compute(
        "staging", LEAD_ROWS, RELEASES, {}, now=at(24), since=since, lead_time=definition
    )
    data = result.to_dict()
    got = {e["commit"]: e["hours"] for e in data["evidence"]["lead_time_hours"]}
    assert got == {key: pytest.approx(value) for key, value in samples.items()}
    assert data["lead_time_hours"]["median"] == pytest.approx(median)
    assert data["lead_time_hours"]["p90"] == pytest.approx(p90)
    assert data["lead_time_hours"]["definition"] == definition
    assert data["cluster"]["lead_time_hours"] == "elite"  # under a day


def test_releases_without_commits_or_bundle_are_named() -> None:
    """No git when sealed, or a release not in this working copy: lead time says why."""
    releases = [ReleaseRow("r1", at(0), None, None)]
    rows = [deployment("d1", 1, 2, release="r1"), deployment("d2", 3, 4, release="gone")]
    result = compute("staging", rows, releases, {}, now=at(5))
    assert result.lead_time_median_hours is None and result.lead_time_samples == 0
    said = " ".join(result.notes)
    assert "no commits recorded (sealed outside git" in said and "r1" in said
    assert "not sealed in this working copy" in said and "gone" in said


def test_an_unknown_lead_time_definition_is_refused() -> None:
    with pytest.raises(UsageError, match="unknown lead time definition 'last-commit'"):
        compute("staging", [], [], {}, now=at(1), lead_time="last-commit")


@pytest.mark.parametrize(
    ("per_week", "lead_hours", "failure_rate", "recovery_minutes", "expected"),
    [
        (14.0, 2.0, 0.0, 5.0, ("elite", "elite", "elite", "elite")),
        (7.0, 24.0, 0.075, 60.0, ("high", "high", "elite", "high")),
        (1.0, 168.0, 0.08, 1439.0, ("high", "high", "medium", "high")),
        (0.5, 169.0, 0.15, 1440.0, ("medium", "medium", "high", "low")),
        (0.2, 24 * 30.0, 0.16, 60 * 24 * 10.0, ("low", "medium", "high", "low")),
        (0.1, 24 * 31.0, 0.31, 60.0 * 24 * 40, ("low", "low", "low", "low")),
    ],
)
def test_dora_2024_clusters_at_their_boundaries(
    per_week: float,
    lead_hours: float,
    failure_rate: float,
    recovery_minutes: float,
    expected: tuple[str, str, str, str],
) -> None:
    """Frequency: elite above daily, high daily..weekly, medium weekly..monthly; lead time:
    elite under a day, high to a week, medium to a month; failure rate: the nearest of 5%, 10%
    (medium), 20% (high), 40%, a tie to the better cluster; recovery: elite under an hour, high
    under a day, else low."""
    from airlock import metrics

    got = (
        metrics._frequency_cluster(per_week),
        metrics._lead_time_cluster(lead_hours),
        metrics._failure_rate_cluster(failure_rate),
        metrics._recovery_cluster(recovery_minutes),
    )
    assert got == expected


@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [([3.0], 0.5, 3.0), ([1.0, 2.0], 0.5, 1.5), ([4.0, 6.0, 12.0], 0.9, 10.8), ([5, 1, 3], 0.5, 3)],
)
def test_quantiles_interpolate_between_ranks(
    values: list[float], q: float, expected: float
) -> None:
    assert quantile(values, q) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30d", at(24 * 10 - 24 * 30)),
        ("12h", at(24 * 10 - 12)),
        ("2w", at(24 * 10 - 24 * 14)),
        ("90m", at(24 * 10 - 1.5)),
        ("2024-05-01", T0),
        ("2024-05-01T10:00", at(10)),
        ("2024-05-01T10:00+02:00", at(8)),
    ],
)
def test_since_takes_dates_and_durations(text: str, expected: datetime) -> None:
    assert parse_since(text, at(24 * 10)) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("yesterday", "is neither a date nor a duration"),
        ("30 days", "is neither a date nor a duration"),
        ("2024-13-01", "is neither a date nor a duration"),
        ("2030-01-01", "is in the future"),
        ("1000000d", "reaches before any date"),
        ("99999999999w", "reaches before any date"),
    ],
)
def test_a_bad_since_is_a_clear_error(text: str, message: str) -> None:
    with pytest.raises(UsageError, match=message) as caught:
        parse_since(text, at(24 * 10))
    assert caught.value.hint and "30d" in caught.value.hint


def test_commits_are_read_from_a_manifest() -> None:
    manifest = {
        "commits": [
            {
                "hash": "abc",
                "author_time": "2024-05-01T00:00:00+00:00",
                "commit_time": "2024-05-01T01:00:00+00:00",
            }
        ]
    }
    assert commits_from_manifest(manifest) == (Commit("abc", T0, at(1)),)
    assert commits_from_manifest({"commits": None}) is None
    assert commits_from_manifest({}) is None
    assert commits_from_manifest({"commits": [{"hash": "abc"}]}) is None


def prometheus_samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    from prometheus_client.parser import text_string_to_metric_families

    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_prometheus_gauges_carry_the_environment() -> None:
    """Every figure is a gauge labelled env; one that was not measured has no sample."""
    staging = compute("staging", HISTORY, [], JOURNAL, now=at(7 * 24), since=T0)
    production = compute("production", [], [], {}, now=at(7 * 24))
    text = to_prometheus([staging, production])
    assert "# TYPE airlock_change_failure_rate gauge" in text
    samples = prometheus_samples(text)

    def value(name: str, **labels: str) -> float | None:
        return samples.get((name, frozenset(labels.items())))

    assert value("airlock_change_failure_rate", env="staging") == 0.5
    assert value("airlock_deployment_frequency_per_week", env="staging") == pytest.approx(3.0)
    assert value("airlock_rollback_rate", env="staging") == 0.75
    assert value("airlock_recovery_minutes", env="staging", quantile="0.5") == pytest.approx(82.5)
    assert value("airlock_detect_seconds", env="staging", quantile="0.5") == pytest.approx(3780)
    assert value("airlock_deployments", env="production") == 0.0
    assert value("airlock_change_failure_rate", env="production") is None
    # no commits recorded: lead time is not measured, so it has no sample
    assert value("airlock_lead_time_hours", env="staging", quantile="0.5") is None
    cluster = value(
        "airlock_dora_cluster", env="staging", figure="change_failure_rate", cluster="low"
    )
    assert cluster == 1.0


# -- end to end: real deploys of a project in a real git repository -----------------------------


GIT_ENV = {
    "GIT_AUTHOR_NAME": "Ana Example",
    "GIT_AUTHOR_EMAIL": "ana@example.org",
    "GIT_COMMITTER_NAME": "Ana Example",
    "GIT_COMMITTER_EMAIL": "ana@example.org",
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_CONFIG_NOSYSTEM": "1",
}


def git(root: Path, *args: str, date: datetime | None = None) -> str:
    env = {**os.environ, **GIT_ENV}
    if date is not None:
        env["GIT_AUTHOR_DATE"] = env["GIT_COMMITTER_DATE"] = date.isoformat()
    done = subprocess.run(
        ["git", *args], cwd=root, env=env, capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


def commit_all(root: Path, message: str, date: datetime) -> str:
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", message, date=date)
    return git(root, "rev-parse", "HEAD")


def set_config(factory: ProjectFactory, project: Path, **values: str) -> None:
    document = factory.read(project)
    document["services"]["api"]["config"].update(values)
    factory.write(project, document)


def when(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp)


def test_metrics_of_real_deploys_match_the_journal(make_project: ProjectFactory) -> None:
    """A good deploy, one rolled back by hand, one rolled back automatically: every figure
    equals what the state store's own times give."""
    project = make_project({"api": {"config": {"VERSION": "api-1"}}})
    (project / ".gitignore").write_text(".airlock/\n")
    git(project, "init", "-q", "-b", "main")
    now = datetime.now(UTC).replace(microsecond=0)
    first = commit_all(project, "api 1", now - timedelta(hours=5))
    v1, _ = api.build(project, "v1")
    assert v1.manifest["commits"] == [
        {
            "hash": first,
            "author_time": (now - timedelta(hours=5)).isoformat(),
            "commit_time": (now - timedelta(hours=5)).isoformat(),
        }
    ]
    assert api.deploy(project, "staging").outcome == "succeeded"

    set_config(make_project, project, VERSION="api-2")
    second = commit_all(project, "api 2", now - timedelta(hours=2))
    v2, _ = api.build(project, "v2")
    assert [c["hash"] for c in v2.manifest["commits"]] == [second]
    assert v2.manifest["commits_since"] == first
    assert api.deploy(project, "staging").outcome == "succeeded"
    assert api.rollback(project, "staging").outcome == "succeeded"  # back to v1, by hand

    set_config(make_project, project, VERSION="api-3", MODE="exit")
    commit_all(project, "api 3 exits at once", now - timedelta(hours=1))
    api.build(project, "v3")
    assert api.deploy(project, "staging", "v3").outcome == "rolled_back"

    history = {d.version: d for d in api.history(project, "staging") if d.kind == "deploy"}
    [by_hand] = [d for d in api.history(project, "staging") if d.kind == "rollback"]
    good, undone, bad = history["v1"], history["v2"], history["v3"]
    with open_state(project, readonly=True) as store:
        journal = store.records(bad.id, "event")
    verdict = next(r for r in journal if r["body"]["type"] in ("exited", "failed"))

    [result] = api.metrics(project, "staging")
    data = result.to_dict()
    assert data["deployments"] == 3
    # two succeeded within a day (a period under a day counts as one): 2 × 7 a week
    assert data["deployment_frequency_per_week"] == pytest.approx(14.0)
    assert data["evidence"]["deployment_frequency_per_week"]["deployments"] == [
        good.id,
        undone.id,
    ]
    assert data["change_failure_rate"] == pytest.approx(2 / 3, abs=1e-4)
    assert {f["deployment"] for f in data["evidence"]["change_failure_rate"]["failed"]} == {
        undone.id,
        bad.id,
    }
    assert data["rollback_rate"] == pytest.approx(2 / 3, abs=1e-4)
    assert data["evidence"]["rollback_rate"] == {
        "deploys": [good.id, undone.id, bad.id],
        "automatic": [bad.id],
        "by_hand": [by_hand.id],
    }

    def minutes(start: str, end: str | None) -> float:
        assert end is not None
        return (when(end) - when(start)).total_seconds() / 60

    recoveries = {r["deployment"]: r for r in data["evidence"]["recovery_minutes"]}
    assert recoveries[undone.id]["recovered_by"] == by_hand.id
    assert recoveries[undone.id]["minutes"] == pytest.approx(
        minutes(undone.started_at, by_hand.finished_at), abs=1e-3
    )
    assert recoveries[bad.id]["minutes"] == pytest.approx(
        minutes(bad.started_at, bad.finished_at), abs=1e-3
    )
    assert result.recovery_median_minutes == pytest.approx(
        (minutes(undone.started_at, by_hand.finished_at) + minutes(bad.started_at, bad.finished_at))
        / 2
    )
    detections = {d["deployment"]: d["seconds"] for d in data["evidence"]["detect_seconds"]}
    assert detections[bad.id] == pytest.approx(
        (when(verdict["at"]) - when(bad.started_at)).total_seconds(), abs=1e-3
    )
    assert detections[undone.id] == pytest.approx(
        (when(by_hand.started_at) - when(undone.started_at)).total_seconds(), abs=1e-3
    )
    # lead time: commit 1 went out with v1, commit 2 with v2; commit 3 never served
    lead = {e["commit"]: e for e in data["evidence"]["lead_time_hours"]}
    assert set(lead) == {first, second}
    assert good.finished_at is not None and undone.finished_at is not None
    expected = [
        (when(good.finished_at) - (now - timedelta(hours=5))).total_seconds() / 3600,
        (when(undone.finished_at) - (now - timedelta(hours=2))).total_seconds() / 3600,
    ]
    assert lead[first]["deployment"] == good.id and lead[second]["deployment"] == undone.id
    assert result.lead_time_median_hours == pytest.approx(sum(expected) / 2)
    assert result.lead_time_p90_hours == pytest.approx(
        min(expected) + 0.9 * abs(expected[0] - expected[1])
    )
    merged = api.metrics(project, "staging", lead_time="merge")[0]
    assert merged.lead_time_definition == "merge" and merged.lead_time_samples == 2

    # the command line: JSON, Prometheus, text; the empty environment; bad input
    shown = airlock("metrics", "staging", "--format", "json", cwd=project)
    assert shown.returncode == 0, shown.stderr
    [row] = json.loads(shown.stdout)
    for key in (
        "deployment_frequency_per_week",
        "lead_time_hours",
        "change_failure_rate",
        "recovery_minutes",
        "rollback_rate",
        "detect_seconds",
        "cluster",
        "evidence",
    ):
        assert key in row
    assert set(row["lead_time_hours"]) >= {"median", "p90"}
    prometheus = airlock("metrics", "--format", "prometheus", cwd=project)
    assert prometheus.returncode == 0, prometheus.stderr
    assert 'airlock_rollback_rate{env="staging"}' in prometheus.stdout
    assert 'airlock_deployments{env="production"} 0.0' in prometheus.stdout
    text = airlock("metrics", cwd=project, env={"COLUMNS": "80"})
    assert text.returncode == 0, text.stderr
    assert max(len(line) for line in text.stdout.splitlines()) <= 80, text.stdout
    assert "change failure rate" in text.stdout and "67% (2 of 3)" in text.stdout
    assert "no deployments to production yet" in text.stdout
    for args, message in (
        (("metrics", "qa"), "no environment 'qa'"),
        (("metrics", "staging", "--since", "soon"), "is neither a date nor a duration"),
    ):
        refused = airlock(*args, cwd=project)
        assert refused.returncode == 2 and message in refused.stderr, refused.stderr
        assert "Traceback" not in refused.stderr


def test_sealing_records_the_commits_since_the_previous_release(
    make_project: ProjectFactory,
) -> None:
    """Since an ancestor: every commit between; from another line of history: HEAD alone;
    outside git: none."""
    project = make_project({"api": {"config": {"VERSION": "api-1"}}})
    outside, _ = api.build(project, "v0")
    assert outside.manifest["commits"] is None
    [result] = api.metrics(project, "staging")
    assert result.empty and result.notes == ["no deployments to staging yet"]

    (project / ".gitignore").write_text(".airlock/\n")
    git(project, "init", "-q", "-b", "main")
    start = datetime(2024, 5, 1, 9, tzinfo=UTC)
    base = commit_all(project, "base", start)
    set_config(make_project, project, VERSION="api-2")
    v1, _ = api.build(project, "v1")  # uncommitted: HEAD is base
    assert v1.dirty and [c["hash"] for c in v1.manifest["commits"]] == [base]
    one = commit_all(project, "one", start + timedelta(hours=1))
    again, new = api.build(project, "v1")  # the same content, now committed: recorded again
    assert not new and not again.dirty
    assert [c["hash"] for c in again.manifest["commits"]] == [one]
    set_config(make_project, project, VERSION="api-3")
    two = commit_all(project, "two", start + timedelta(hours=2))
    set_config(make_project, project, VERSION="api-4")
    three = commit_all(project, "three", start + timedelta(hours=3))
    v2, _ = api.build(project, "v2")
    assert [c["hash"] for c in v2.manifest["commits"]] == [three, two]
    assert v2.manifest["commits_since"] == one
    assert v2.manifest["commits"][1]["author_time"] == "2024-05-01T11:00:00+00:00"
    git(project, "checkout", "-q", "-b", "other", base)
    set_config(make_project, project, VERSION="api-5")
    side = commit_all(project, "side", start + timedelta(hours=3))
    v3, _ = api.build(project, "v3")
    assert [c["hash"] for c in v3.manifest["commits"]] == [side]
    assert v3.manifest["commits_since"] == three
