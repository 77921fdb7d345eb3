"""`airlock demo` end to end, as a user runs it, from an unrelated folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from airlock.demo import run_fleet_demo
from airlock.testbed import STATE_FILE, fleet_support

from .conftest import airlock, processes_under


def test_demo_runs_from_any_folder_and_cleans_up(tmp_path: Path) -> None:
    """The demo deploys v1 to staging, load-tests it, gets GO for production, promotes it,
    upgrades to v2, catches v3's leak during bake and rolls it back, drops no request and leaves
    nothing."""
    workspace = tmp_path / "ws"
    result = airlock(
        "demo", "--format", "json", cwd=tmp_path, timeout=300, env={"TMPDIR": str(tmp_path)}
    )
    # The demo exits 1 when it misses one of its own targets, the time ones included; a busy
    # machine may make it slower, so this test checks what happened, not how fast.
    assert result.returncode in (0, 1), result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads(result.stdout)
    steps = {s["name"]: s for s in summary["steps"]}
    timed = {"total_seconds", "rollback_seconds"}
    missed = [name for name, t in summary["targets"].items() if not t["met"] and name not in timed]
    assert missed == [], summary["targets"]
    assert [s["outcome"] for s in summary["steps"]] == [
        "succeeded",
        "succeeded",
        "succeeded",
        "rolled_back",
    ]
    assert steps["deploy v1 to staging"]["release"] == steps["promote v1 to production"]["release"]
    assert [s["migrations"] for s in summary["steps"]] == [
        ["V1__initial_schema.sql"],
        ["V1__initial_schema.sql"],
        ["V2__payment_fee_and_currency.sql"],
        [],
    ]
    leak = steps["deploy leaking v3 to production"]
    assert leak["reason"].startswith("notification: memory grows"), leak["reason"]
    assert summary["gonogo"]["verdict"] == "GO"
    assert summary["gonogo"]["gates"] == {
        "static": "pass",
        "migrations": "pass",
        "preflight": "pass",
        "load": "pass",
        "posture": "skipped",
        "logs": "pass",
        "ci": "skipped",
    }
    assert summary["load"]["requests"] > 0 and summary["load"]["error_rate"] == 0
    # Airlock's own records of the demo: production's figures, and a log that verifies
    assert summary["audit"]["ok"] is True and summary["audit"]["entries"] > 0
    figures = summary["metrics"]
    assert figures["env"] == "production" and figures["deployments"] == 3
    assert figures["change_failure_rate"] == figures["rollback_rate"] == round(1 / 3, 4)
    upgrade, rollback = steps["upgrade production to v2"], leak
    assert upgrade["served"] > 0 and rollback["served"] > 0
    assert upgrade["failed"] == 0 and rollback["failed"] == 0
    assert summary["targets"]["left_running"]["value"] == 0
    assert rollback["rollback_seconds"] is not None
    assert processes_under(tmp_path) == []
    assert not workspace.exists()
    assert not any(tmp_path.glob("airlock-demo-*"))


#: ``airlock demo --fleet`` as a user who is not root runs it (the process only says so).
NOT_ROOT = (
    "import os, sys; os.geteuid = lambda: 1000; from airlock.cli import main; main(sys.argv[1:])"
)


def test_demo_fleet_without_root_exits_2_saying_what_it_needs(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", NOT_ROOT, "demo", "--fleet"],
        cwd=tmp_path,
        env={**os.environ, "COLUMNS": "200", "TMPDIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    message = " ".join(result.stderr.split())
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert "airlock demo --fleet needs Linux and root" in message, message
    assert "needs root" in message and "openssh-server" in message, message
    assert "`airlock demo`" in message, message  # the local demo needs neither
    assert list(tmp_path.iterdir()) == []  # nothing was made


def _fleet_of_this_session() -> bool:
    """Whether this test session's own fleet (tests/fleet_hosts.py) holds the machine's one
    testbed already: then the demo runs on its hosts, in this process."""
    try:
        holder = json.loads(STATE_FILE.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(holder, dict) and holder.get("pid") == os.getpid()


@pytest.mark.slow
def test_demo_on_a_fleet_upgrades_every_host_and_rolls_a_leak_back(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """`airlock demo --fleet` builds three SSH hosts, prepares them, deploys Phoenix with
    services on two or three hosts each, upgrades every host under traffic without a failed
    request, rolls v3's leak back on every host, and leaves nothing behind."""
    possible, reason = fleet_support()
    if not possible:
        if os.environ.get("CI") == "true":
            pytest.fail(f"the fleet demo must run in CI: {reason}", pytrace=False)
        pytest.skip(f"no testbed here: {reason}")
    if _fleet_of_this_session():
        summary = run_fleet_demo(workspace=tmp_path / "ws", fleet=request.getfixturevalue("fleet"))
        assert summary.passed, summary.to_dict()
        outcome = summary.to_dict()
    else:
        result = airlock(
            "demo",
            "--fleet",
            "--format",
            "json",
            cwd=tmp_path,
            timeout=300,
            env={"TMPDIR": str(tmp_path)},
        )
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        outcome = json.loads(result.stdout)
        assert not STATE_FILE.exists(), "the demo's testbed was not removed"
        assert not any(tmp_path.glob("airlock-demo-fleet-*"))
    assert outcome["passed"] is True
    steps = outcome["steps"]
    assert [s["outcome"] for s in steps] == ["succeeded", "succeeded", "rolled_back"]
    assert [s["migrations"] for s in steps] == [
        ["V1__initial_schema.sql"],
        ["V2__payment_fee_and_currency.sql"],
        [],
    ]
    upgrade, leak = steps[1], steps[2]
    assert upgrade["served"] > 0 and leak["served"] > 0
    assert upgrade["failed"] == 0 and leak["failed"] == 0, leak["failure_samples"]
    assert leak["reason"].startswith("notification on alk-h"), leak["reason"]
    assert "memory grows" in leak["reason"]
    assert leak["rollback_seconds"] is not None
    hosts = outcome["hosts"]
    assert sorted(hosts) == ["alk-h1", "alk-h2", "alk-h3"]
    placement = outcome["placement"]
    assert sorted(placement) == ["account", "audit", "notification", "payment", "transaction"]
    assert {len(names) for names in placement.values()} == {2, 3}
    assert sorted(outcome["ports"]) == sorted(placement)
    assert any(p.startswith("psycopg ") for p in outcome["packages"])
    assert outcome["database"].startswith("postgresql://postgres@10.213.0.1:")
    assert outcome["left_running"] == []
