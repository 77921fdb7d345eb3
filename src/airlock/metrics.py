"""Delivery metrics from Airlock's own records (INC20): rows in, figures out, no IO.

For one environment, from its deployments, their journals and the sealed releases' commits:

- **deployment frequency**: deploys that succeeded, per week;
- **lead time for changes**: from a commit to the deploy that first carried it (median, p90);
- **change failure rate**: deploys that failed, were rolled back automatically, or were rolled
  back by hand within :data:`ROLLBACK_WINDOW` of finishing, over every deploy that ended;
- **failed deployment recovery time**: from the start of a failed deploy until the previous
  release served again (an automatic rollback's end, or the later rollback deploy's end);
- **rollback rate**: rollbacks (automatic or by hand) per deploy;
- **time to detect**: from the start of a bad deploy to the verdict that failed it.

Each figure comes with its evidence (the deployment, release and commit ids it was computed
from) and, for the four DORA keys, the performance cluster of the 2024 Accelerate State of
DevOps report it falls in (:data:`DORA_2024`). Definitions, in full: ``docs/metrics.md``.

The reader (:func:`airlock.api.metrics`) turns the state store's rows and the manifests into
the records below; everything here is a function of them and of ``now``, so it is tested with
hand-made rows.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any, Literal

from airlock.errors import UsageError

__all__ = [
    "DORA_2024",
    "LEAD_TIME_DEFINITIONS",
    "ROLLBACK_WINDOW",
    "Commit",
    "DeploymentRow",
    "EnvMetrics",
    "JournalRow",
    "ReleaseRow",
    "commits_from_manifest",
    "compute",
    "parse_since",
    "quantile",
    "to_prometheus",
]

LeadTime = Literal["first-commit", "merge"]
#: ``first-commit``: each commit's author time → the deploy that first carried it (one sample
#: per commit); ``merge``: the commit time of the release's HEAD → that deploy (one per deploy).
LEAD_TIME_DEFINITIONS: tuple[LeadTime, ...] = ("first-commit", "merge")
#: A rollback by hand that starts within this long after a deploy finished fails that deploy.
ROLLBACK_WINDOW = timedelta(hours=24)

HOUR = 3600.0
DAY = 24 * HOUR
WEEK = 7 * DAY
MONTH = 365.25 / 12 * DAY

#: The four keys' performance clusters of the 2024 Accelerate State of DevOps report (DORA,
#: Google Cloud; the software delivery performance levels table), as published.
DORA_2024: dict[str, dict[str, str]] = {
    "deployment_frequency_per_week": {
        "elite": "on demand (multiple deploys per day)",
        "high": "between once per day and once per week",
        "medium": "between once per week and once per month",
        "low": "between once per month and once every six months",
    },
    "lead_time_hours": {
        "elite": "less than one day",
        "high": "between one day and one week",
        "medium": "between one week and one month",
        "low": "between one month and six months",
    },
    "change_failure_rate": {"elite": "5%", "high": "20%", "medium": "10%", "low": "40%"},
    "recovery_minutes": {
        "elite": "less than one hour",
        "high": "less than one day",
        "medium": "less than one day",
        "low": "between one week and one month",
    },
}
#: Change failure rate of each 2024 cluster (the report gives one value, not a range).
_CFR_2024 = (("elite", 0.05), ("medium", 0.10), ("high", 0.20), ("low", 0.40))
_ENDED = frozenset({"succeeded", "rolled_back", "failed", "aborted"})
_ROLLBACK_ACTIONS = frozenset({"RevertTraffic", "StopNew"})


# -- the rows --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Commit:
    hash: str
    author_time: datetime
    commit_time: datetime


@dataclass(frozen=True)
class ReleaseRow:
    """A sealed release: when, from which commit, and the commits it brings (None: not
    recorded — sealed outside git, or by an Airlock that did not record them)."""

    id: str
    sealed_at: datetime
    head: str | None
    commits: tuple[Commit, ...] | None


@dataclass(frozen=True)
class DeploymentRow:
    """A row of the ``deployments`` table (times aware, UTC)."""

    id: str
    env: str
    kind: str  # deploy | rollback
    release_id: str
    previous_release_id: str | None
    status: str  # running | succeeded | rolled_back | failed | aborted
    started_at: datetime
    finished_at: datetime | None


@dataclass(frozen=True)
class JournalRow:
    """A record of a deployment's journal: ``event`` (engine events) or ``action`` and others."""

    seq: int
    at: datetime
    type: str
    body: Mapping[str, Any]


# -- the figures -----------------------------------------------------------------------------


@dataclass
class EnvMetrics:
    """The figures of one environment, with their evidence."""

    env: str
    since: datetime
    until: datetime
    lead_time_definition: str
    rollback_window_hours: float
    deployments: int = 0
    deployment_frequency_per_week: float | None = None
    lead_time_median_hours: float | None = None
    lead_time_p90_hours: float | None = None
    lead_time_samples: int = 0
    change_failure_rate: float | None = None
    recovery_median_minutes: float | None = None
    recovery_samples: int = 0
    rollback_rate: float | None = None
    detect_median_seconds: float | None = None
    detect_samples: int = 0
    cluster: dict[str, str | None] = field(default_factory=dict)
    evidence: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return self.deployments == 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "env": self.env,
            "since": _iso(self.since),
            "until": _iso(self.until),
            "deployments": self.deployments,
            "deployment_frequency_per_week": _round(self.deployment_frequency_per_week),
            "lead_time_hours": {
                "median": _round(self.lead_time_median_hours),
                "p90": _round(self.lead_time_p90_hours),
                "samples": self.lead_time_samples,
                "definition": self.lead_time_definition,
            },
            "change_failure_rate": _round(self.change_failure_rate),
            "recovery_minutes": {
                "median": _round(self.recovery_median_minutes),
                "samples": self.recovery_samples,
            },
            "rollback_rate": _round(self.rollback_rate),
            "detect_seconds": {
                "median": _round(self.detect_median_seconds),
                "samples": self.detect_samples,
            },
            "rollback_window_hours": self.rollback_window_hours,
            "cluster": dict(self.cluster),
            "evidence": self.evidence,
            "notes": list(self.notes),
        }


# -- inputs --------------------------------------------------------------------------------------

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNITS = {"s": 1.0, "m": 60.0, "h": HOUR, "d": DAY, "w": WEEK}


def parse_since(text: str, now: datetime) -> datetime:
    """``--since``: a date (``2024-05-01``), a time (``2024-05-01T10:00``, UTC unless it says
    otherwise) or a duration back from ``now`` (``90m``, ``12h``, ``30d``, ``4w``)."""
    value = text.strip()
    match = _DURATION.match(value)
    if match:
        try:
            moment = now - timedelta(seconds=float(match[1]) * _UNITS[match[2]])
        except OverflowError:
            raise UsageError(
                f"--since {value!r} reaches before any date",
                hint="give a date (2024-05-01) or a shorter duration (30d, 12w)",
            ) from None
    else:
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            try:
                day = date.fromisoformat(value)
            except ValueError:
                raise UsageError(
                    f"--since {text!r} is neither a date nor a duration",
                    hint="give a date (2024-05-01), a time (2024-05-01T10:00, UTC) or a "
                    "duration back from now: 90m, 12h, 30d, 4w",
                ) from None
            parsed = datetime(day.year, day.month, day.day)
        moment = parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    if moment > now:
        raise UsageError(
            f"--since {text!r} is in the future ({_iso(moment)})",
            hint="give a moment in the past, or a duration such as 30d",
        )
    return moment.astimezone(UTC)


def commits_from_manifest(manifest: Mapping[str, Any]) -> tuple[Commit, ...] | None:
    """The commits a manifest records (see :func:`airlock.bundle.sealed_commits`); None when
    it records none (sealed outside git or before they were recorded) or they are malformed."""
    raw = manifest.get("commits")
    if not isinstance(raw, list):
        return None
    commits = []
    for item in raw:
        if not isinstance(item, Mapping):
            return None
        try:
            commits.append(
                Commit(
                    str(item["hash"]),
                    _aware(datetime.fromisoformat(str(item["author_time"]))),
                    _aware(datetime.fromisoformat(str(item["commit_time"]))),
                )
            )
        except (KeyError, ValueError):
            return None
    return tuple(commits)


# -- the computation -------------------------------------------------------------------------------


def quantile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values``, linear between the closest ranks (the median of
    an even count is the mean of the middle two)."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    position = (len(ordered) - 1) * q
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def compute(
    env: str,
    deployments: Iterable[DeploymentRow],
    releases: Iterable[ReleaseRow],
    journals: Mapping[str, Sequence[JournalRow]],
    *,
    now: datetime,
    since: datetime | None = None,
    lead_time: str = "first-commit",
    window: timedelta = ROLLBACK_WINDOW,
) -> EnvMetrics:
    """The figures of ``env`` over ``[since, now]`` (``since`` None: from its first deployment).

    ``deployments`` may hold every environment's rows and any history: only ``env``'s count,
    and rows before ``since`` still tell which commits were already carried and which deploy a
    rollback undid. ``journals`` holds the journal of each deployment rolled back automatically
    (for its verdict's time); a missing one only leaves that detection unmeasured.
    """
    if lead_time not in LEAD_TIME_DEFINITIONS:
        raise UsageError(
            f"unknown lead time definition {lead_time!r}",
            hint="use " + " or ".join(LEAD_TIME_DEFINITIONS),
        )
    rows = sorted((d for d in deployments if d.env == env), key=lambda d: (d.started_at, d.id))
    start = since if since is not None else (rows[0].started_at if rows else now)
    result = EnvMetrics(
        env=env,
        since=start,
        until=now,
        lead_time_definition=lead_time,
        rollback_window_hours=window.total_seconds() / HOUR,
    )
    in_window = [d for d in rows if start <= d.started_at <= now]
    deploys = [d for d in in_window if d.kind != "rollback" and d.status in _ENDED]
    running = [d.id for d in in_window if d.status not in _ENDED]
    if running:
        result.notes.append(f"{len(running)} deployment(s) still running, not counted")
    result.deployments = len(deploys)
    if not deploys:
        result.cluster = dict.fromkeys(DORA_2024)
        said = f"no deployments to {env} yet" if not rows else f"no deploys since {_iso(start)}"
        result.notes.insert(0, said)
        return result

    undone = _rollbacks_by_hand(rows)
    _frequency(result, deploys, start, now)
    _lead_time(result, rows, list(releases), start, now, lead_time)
    _failures(result, deploys, undone, journals, window)
    rollbacks = [d for d in in_window if d.kind == "rollback" and d.status in _ENDED]
    automatic = [d.id for d in deploys if d.status == "rolled_back"]
    result.rollback_rate = (len(automatic) + len(rollbacks)) / len(deploys)
    result.evidence["rollback_rate"] = {
        "deploys": [d.id for d in deploys],
        "automatic": automatic,
        "by_hand": [d.id for d in rollbacks],
    }
    result.cluster = {
        "deployment_frequency_per_week": _frequency_cluster(result.deployment_frequency_per_week),
        "lead_time_hours": _lead_time_cluster(result.lead_time_median_hours),
        "change_failure_rate": _failure_rate_cluster(result.change_failure_rate),
        "recovery_minutes": _recovery_cluster(result.recovery_median_minutes),
    }
    return result


def _frequency(
    result: EnvMetrics, deploys: list[DeploymentRow], start: datetime, now: datetime
) -> None:
    succeeded = [d for d in deploys if d.status == "succeeded"]
    # A period under a day counts as a day: three deploys in the first hour are three a day.
    seconds = max((now - start).total_seconds(), DAY)
    result.deployment_frequency_per_week = len(succeeded) / (seconds / WEEK)
    result.evidence["deployment_frequency_per_week"] = {
        "deployments": [d.id for d in succeeded],
        "period_days": round(seconds / DAY, 3),
    }


def _lead_time(
    result: EnvMetrics,
    rows: list[DeploymentRow],
    releases: list[ReleaseRow],
    start: datetime,
    now: datetime,
    definition: LeadTime,
) -> None:
    """Each commit is carried by the first deploy that succeeded with a release sealed at or
    after the one that recorded it (releases are taken as sealed from one line of history)."""
    by_id = {r.id: r for r in releases}
    sealed = sorted(releases, key=lambda r: (r.sealed_at, r.id))
    known = {c.hash: c for r in releases for c in r.commits or ()}
    carried: set[str] = set()
    samples: list[float] = []
    evidence: list[dict[str, Any]] = []
    missing: set[str] = set()
    unrecorded: set[str] = set()
    succeeded = [d for d in rows if d.status == "succeeded" and d.finished_at is not None]
    for deploy in sorted(succeeded, key=lambda d: (d.finished_at or d.started_at, d.id)):
        release = by_id.get(deploy.release_id)
        counts = start <= deploy.started_at <= now
        if release is None:
            if counts:
                missing.add(deploy.release_id)
            continue
        if counts and release.commits is None:
            unrecorded.add(release.id)
        finished = deploy.finished_at
        assert finished is not None
        new: list[tuple[ReleaseRow, Commit]] = []
        for earlier in sealed:
            if (earlier.sealed_at, earlier.id) > (release.sealed_at, release.id):
                break
            for commit in earlier.commits or ():
                if commit.hash not in carried:
                    carried.add(commit.hash)
                    new.append((earlier, commit))
        if not counts or not new:
            continue
        if definition == "first-commit":
            for earlier, commit in new:
                hours = (finished - commit.author_time).total_seconds() / HOUR
                samples.append(hours)
                evidence.append(
                    {
                        "commit": commit.hash,
                        "release": earlier.id,
                        "deployment": deploy.id,
                        "hours": round(hours, 4),
                    }
                )
        else:
            head = known.get(release.head or "")
            if head is None:
                continue
            hours = (finished - head.commit_time).total_seconds() / HOUR
            samples.append(hours)
            evidence.append(
                {
                    "commit": head.hash,
                    "release": release.id,
                    "deployment": deploy.id,
                    "commits": len(new),
                    "hours": round(hours, 4),
                }
            )
    if samples:
        result.lead_time_median_hours = quantile(samples, 0.5)
        result.lead_time_p90_hours = quantile(samples, 0.9)
        result.lead_time_samples = len(samples)
    result.evidence["lead_time_hours"] = evidence
    if missing:
        result.notes.append(
            "lead time: release(s) not sealed in this working copy, their commits unknown: "
            + ", ".join(sorted(missing))
        )
    if unrecorded:
        result.notes.append(
            "lead time: release(s) with no commits recorded (sealed outside git, or before "
            "Airlock recorded commits): " + ", ".join(sorted(unrecorded))
        )
    if not samples and not missing and not unrecorded:
        result.notes.append("lead time: no deploy in this period brought new commits")


def _rollbacks_by_hand(rows: list[DeploymentRow]) -> dict[str, list[DeploymentRow]]:
    """Each deploy undone by hand, and the rollbacks that undid it: a rollback undoes the
    deployment that served when it started (the last that succeeded before it), when that one
    was a deploy of the release the rollback replaced."""
    undone: dict[str, list[DeploymentRow]] = {}
    for rollback in rows:
        if rollback.kind != "rollback":
            continue
        served = [
            d
            for d in rows
            if d.status == "succeeded"
            and d.finished_at is not None
            and d.finished_at <= rollback.started_at
        ]
        if not served:
            continue
        last = max(served, key=lambda d: (d.finished_at or d.started_at, d.id))
        if last.kind == "rollback":
            continue
        if rollback.previous_release_id not in (None, last.release_id):
            continue
        undone.setdefault(last.id, []).append(rollback)
    return undone


def _failures(
    result: EnvMetrics,
    deploys: list[DeploymentRow],
    undone: Mapping[str, list[DeploymentRow]],
    journals: Mapping[str, Sequence[JournalRow]],
    window: timedelta,
) -> None:
    failed: list[dict[str, Any]] = []
    recoveries: list[dict[str, Any]] = []
    detections: list[dict[str, Any]] = []
    for deploy in deploys:
        if deploy.status == "rolled_back":
            failed.append({"deployment": deploy.id, "why": "rolled back automatically"})
            if deploy.finished_at is not None:
                recoveries.append(_recovery(deploy, deploy.id, deploy.finished_at))
            verdict = _verdict(journals.get(deploy.id, ()))
            if verdict is not None:
                at, what = verdict
                detections.append(_detection(deploy, at, what))
            continue
        if deploy.status in ("failed", "aborted"):
            failed.append({"deployment": deploy.id, "why": deploy.status})
            continue
        by_hand = [
            r
            for r in undone.get(deploy.id, ())
            if deploy.finished_at is not None and r.started_at - deploy.finished_at <= window
        ]
        if not by_hand:
            continue
        first = min(by_hand, key=lambda r: (r.started_at, r.id))
        failed.append({"deployment": deploy.id, "why": "rolled back by hand", "rollback": first.id})
        detections.append(_detection(deploy, first.started_at, f"rollback {first.id} started"))
        done = [r for r in by_hand if r.status == "succeeded" and r.finished_at is not None]
        if done:
            last = min(done, key=lambda r: (r.finished_at or r.started_at, r.id))
            assert last.finished_at is not None
            recoveries.append(_recovery(deploy, last.id, last.finished_at))
    result.change_failure_rate = len(failed) / len(deploys)
    result.evidence["change_failure_rate"] = {
        "deploys": [d.id for d in deploys],
        "failed": failed,
    }
    minutes = [r.pop("_minutes") for r in recoveries]
    if minutes:
        result.recovery_median_minutes = quantile(minutes, 0.5)
        result.recovery_samples = len(minutes)
    result.evidence["recovery_minutes"] = recoveries
    unrecovered = [
        f["deployment"]
        for f in failed
        if not any(r["deployment"] == f["deployment"] for r in recoveries)
    ]
    if unrecovered:
        result.notes.append(
            "recovery: not measured for "
            + ", ".join(unrecovered)
            + " (ended failed or aborted, or no rollback by hand finished)"
        )
    seconds = [d.pop("_seconds") for d in detections]
    if seconds:
        result.detect_median_seconds = quantile(seconds, 0.5)
        result.detect_samples = len(seconds)
    result.evidence["detect_seconds"] = detections


def _recovery(deploy: DeploymentRow, by: str, at: datetime) -> dict[str, Any]:
    minutes = (at - deploy.started_at).total_seconds() / 60
    return {
        "deployment": deploy.id,
        "recovered_by": by,
        "recovered_at": _iso(at),
        "minutes": round(minutes, 4),
        "_minutes": minutes,
    }


def _detection(deploy: DeploymentRow, at: datetime, verdict: str) -> dict[str, Any]:
    seconds = (at - deploy.started_at).total_seconds()
    return {
        "deployment": deploy.id,
        "verdict": verdict,
        "at": _iso(at),
        "seconds": round(seconds, 3),
        "_seconds": seconds,
    }


def _verdict(journal: Sequence[JournalRow]) -> tuple[datetime, str] | None:
    """When the engine failed a deploy: the last event journaled before its first rollback
    action (traffic reverted, a new version stopped, or the release finished rolled back)."""
    last_event: JournalRow | None = None
    for record in sorted(journal, key=lambda r: r.seq):
        if record.type == "event":
            last_event = record
            continue
        if record.type != "action":
            continue
        action = record.body.get("action")
        rolling_back = action in _ROLLBACK_ACTIONS or (
            action == "Finish" and record.body.get("outcome") == "rolled_back"
        )
        if rolling_back:
            verdict = last_event or record
            what = str(verdict.body.get("type") or verdict.body.get("action") or verdict.type)
            service = verdict.body.get("service")
            label = f"journal #{verdict.seq}: {what}" + (f" ({service})" if service else "")
            return verdict.at, label
    return None


# -- clusters ------------------------------------------------------------------------------------


def _frequency_cluster(per_week: float | None) -> str | None:
    if per_week is None:
        return None
    if per_week > 7:
        return "elite"
    if per_week >= 1:
        return "high"
    if per_week >= WEEK / MONTH:
        return "medium"
    return "low"


def _lead_time_cluster(hours: float | None) -> str | None:
    if hours is None:
        return None
    seconds = hours * HOUR
    if seconds < DAY:
        return "elite"
    if seconds <= WEEK:
        return "high"
    if seconds <= MONTH:
        return "medium"
    return "low"


def _failure_rate_cluster(rate: float | None) -> str | None:
    """The cluster whose 2024 rate is nearest (the report gives one rate per cluster, and
    medium's 10% is below high's 20%); a tie goes to the better cluster."""
    if rate is None:
        return None
    order = ("elite", "high", "medium", "low")
    return min(_CFR_2024, key=lambda item: (round(abs(rate - item[1]), 9), order.index(item[0])))[0]


def _recovery_cluster(minutes: float | None) -> str | None:
    """Under an hour elite; under a day high (the report's high and medium both say "less than
    one day": the better one is named); anything longer low."""
    if minutes is None:
        return None
    seconds = minutes * 60
    if seconds < HOUR:
        return "elite"
    if seconds < DAY:
        return "high"
    return "low"


# -- Prometheus ----------------------------------------------------------------------------------


def to_prometheus(results: Sequence[EnvMetrics]) -> str:
    """The figures as Prometheus text: gauges labelled with ``env`` (and ``quantile`` for the
    times), from a registry of their own; a figure that could not be measured has no sample."""
    from prometheus_client import CollectorRegistry, Gauge, generate_latest

    registry = CollectorRegistry(auto_describe=True)

    def gauge(name: str, text: str, *labels: str) -> Gauge:
        return Gauge(name, text, ["env", *labels], registry=registry)

    deployments = gauge("airlock_deployments", "Deploys that ended in the period.")
    frequency = gauge("airlock_deployment_frequency_per_week", "Deploys that succeeded, per week.")
    lead = gauge(
        "airlock_lead_time_hours", "Lead time for changes, commit to deploy, hours.", "quantile"
    )
    failure = gauge("airlock_change_failure_rate", "Share of deploys that failed (0..1).")
    recovery = gauge(
        "airlock_recovery_minutes", "Failed deployment recovery time, minutes.", "quantile"
    )
    rollback = gauge("airlock_rollback_rate", "Rollbacks (automatic or by hand) per deploy.")
    detect = gauge("airlock_detect_seconds", "Time to detect a bad deploy, seconds.", "quantile")
    cluster = gauge(
        "airlock_dora_cluster", "The DORA 2024 cluster a figure falls in (1).", "figure", "cluster"
    )
    for item in results:
        env = item.env
        deployments.labels(env).set(item.deployments)
        for target, value, labels in (
            (frequency, item.deployment_frequency_per_week, ()),
            (lead, item.lead_time_median_hours, ("0.5",)),
            (lead, item.lead_time_p90_hours, ("0.9",)),
            (failure, item.change_failure_rate, ()),
            (recovery, item.recovery_median_minutes, ("0.5",)),
            (rollback, item.rollback_rate, ()),
            (detect, item.detect_median_seconds, ("0.5",)),
        ):
            if value is not None:
                target.labels(env, *labels).set(value)
        for figure, name in item.cluster.items():
            if name is not None:
                cluster.labels(env, figure, name).set(1)
    return generate_latest(registry).decode()


# -- helpers -------------------------------------------------------------------------------------


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds")


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)
