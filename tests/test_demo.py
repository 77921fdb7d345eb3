"""`airlock demo` end to end, as a user runs it, from an unrelated folder."""

from __future__ import annotations

import json
from pathlib import Path

from .conftest import airlock, processes_under


def test_demo_runs_from_any_folder_and_cleans_up(tmp_path: Path) -> None:
    """The demo deploys v1 to staging, load-tests it, gets GO for production, promotes it,
    upgrades to v2, catches v3's leak during bake and rolls it back, drops no request and leaves
    nothing."""
    workspace = tmp_path / "ws"
    result = airlock(
        "demo", "--format", "json", cwd=tmp_path, timeout=300, env={"TMPDIR": str(tmp_path)}
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads(result.stdout)
    steps = {s["name"]: s for s in summary["steps"]}
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
        "load": "pass",
        "posture": "skipped",
        "logs": "pass",
        "ci": "skipped",
    }
    assert summary["load"]["requests"] > 0 and summary["load"]["error_rate"] == 0
    upgrade, rollback = steps["upgrade production to v2"], leak
    assert upgrade["served"] > 0 and rollback["served"] > 0
    assert upgrade["failed"] == 0 and rollback["failed"] == 0
    assert summary["targets"]["left_running"]["value"] == 0
    assert rollback["rollback_seconds"] is not None
    assert processes_under(tmp_path) == []
    assert not workspace.exists()
    assert not any(tmp_path.glob("airlock-demo-*"))
