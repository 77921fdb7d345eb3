"""Plans: start order, waves, and what changes against what is deployed (table-driven)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from airlock import api
from airlock.bundle import build_release
from airlock.model import load_project
from airlock.plan import DeployedService, find_cycle, make_plan, topological_order, waves

from .conftest import airlock


@pytest.mark.parametrize(
    ("graph", "order", "levels"),
    [
        ({"a": [], "b": ["a"], "c": ["b"]}, ["a", "b", "c"], [["a"], ["b"], ["c"]]),
        (
            {"app": ["db", "cache"], "db": [], "cache": [], "web": ["app"]},
            ["cache", "db", "app", "web"],
            [["cache", "db"], ["app"], ["web"]],
        ),
        ({"x": [], "y": []}, ["x", "y"], [["x", "y"]]),
    ],
)
def test_order_and_waves(
    graph: dict[str, list[str]], order: list[str], levels: list[list[str]]
) -> None:
    """Dependencies come first; waves group services by depth."""
    assert topological_order(graph) == order
    assert waves(graph) == levels


def test_find_cycle_returns_the_loop() -> None:
    """A cycle is returned as a closed path."""
    assert find_cycle({"a": ["b"], "b": ["a"], "c": []}) == ["a", "b", "a"]
    assert find_cycle({"a": [], "b": ["a"]}) is None


def test_phoenix_plan_against_nothing_then_against_itself(phoenix: Path) -> None:
    """A first deploy starts everything; the same release again keeps everything."""
    project = load_project(phoenix)
    bundle, _ = build_release(project, "v1")
    first = make_plan(
        env="staging",
        release=bundle.id,
        version="v1",
        project=bundle.project,
        digests=bundle.digests("staging"),
        config=bundle.config("staging"),
        deployed={},
        previous_release=None,
    )
    assert [s.action for s in first.services] == ["start"] * 5
    assert first.waves == (("account", "audit"), ("payment", "transaction"), ("notification",))
    deployed = {
        name: DeployedService(bundle.id, digest, bundle.config("staging")[name])
        for name, digest in bundle.digests("staging").items()
    }
    again = make_plan(
        env="staging",
        release=bundle.id,
        version="v1",
        project=bundle.project,
        digests=bundle.digests("staging"),
        config=bundle.config("staging"),
        deployed=deployed,
        previous_release=bundle.id,
    )
    assert [s.action for s in again.services] == ["keep"] * 5
    engine = again.engine_plan()
    assert all(step.action == "keep" and step.has_old for step in engine.services)


def test_a_config_change_starts_only_that_service_and_lists_keys(phoenix: Path) -> None:
    """Changing one service's config redeploys it alone; removed services are stopped."""
    bundle, _ = build_release(load_project(phoenix), "v1")
    deployed = {
        name: DeployedService(bundle.id, digest, bundle.config("staging")[name])
        for name, digest in bundle.digests("staging").items()
    }
    deployed["legacy"] = DeployedService(bundle.id, "f" * 64, {"X": "1"})
    text = (
        (phoenix / "airlock.yaml")
        .read_text()
        .replace(
            "      DATABASE_URL: ${database.url}\n\n  payment:",
            "      DATABASE_URL: ${database.url}\n      RETENTION_DAYS: 30\n\n  payment:",
        )
    )
    (phoenix / "airlock.yaml").write_text(text)
    changed, _ = build_release(load_project(phoenix), "v1.1")
    plan = make_plan(
        env="staging",
        release=changed.id,
        version="v1.1",
        project=changed.project,
        digests=changed.digests("staging"),
        config=changed.config("staging"),
        deployed=deployed,
        previous_release=bundle.id,
    )
    actions = {s.name: s.action for s in plan.services}
    assert actions == {
        "account": "keep",
        "audit": "start",
        "payment": "keep",
        "transaction": "keep",
        "notification": "keep",
        "legacy": "remove",
    }
    [change] = plan.service("audit").config_changes
    assert (change.key, change.change, change.new) == ("RETENTION_DAYS", "added", "30")
    assert plan.engine_plan().remove == ("legacy",)


def test_plan_command_json_shows_waves_and_masks_secrets(phoenix: Path) -> None:
    """`airlock plan --format json` shows waves and config as references only."""
    api.build(phoenix, "v1")
    result = airlock("plan", "staging", "--format", "json", cwd=phoenix)
    assert result.returncode == 0, result.stderr
    assert '"waves"' in result.stdout
    assert "${secret:PHOENIX_JWT_SECRET}" in result.stdout
    assert "phoenix-test-secret-3f9a1c" not in result.stdout
    unknown = airlock("plan", "nowhere", cwd=phoenix)
    assert unknown.returncode == 2 and "no environment 'nowhere'" in unknown.stderr


def test_plan_lists_pending_migrations_with_lint_findings(phoenix: Path) -> None:
    """With a database, the plan names the migrations a deploy would apply first."""
    migration = phoenix / "db" / "migrations" / "V1.1__index.sql"
    migration.write_text("CREATE INDEX accounts_balance ON accounts (balance);\n")
    api.build(phoenix, "v1")
    result = airlock("plan", "staging", "--format", "json", cwd=phoenix)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert [m["script"] for m in data["migrations"]] == [
        "V1__initial_schema.sql",
        "V1.1__index.sql",
    ]
    # accounts is created by the pending V1, so indexing it normally is fine
    assert data["migration_findings"] == []
    text = airlock("plan", "staging", cwd=phoenix)
    assert "V1.1__index.sql" in text.stdout
