"""INC09: a memory leak (heap climbing until a crash every few hours) reached production.

During the bake period Airlock samples each new process's memory; a steady climb beyond the
configured budget fails the release and rolls it back, naming the service and the growth rate.
"""

from __future__ import annotations

import re

import httpx

from airlock import api

from ..conftest import ProjectFactory, running_from


def test_a_leaking_version_is_rolled_back_during_bake(make_project: ProjectFactory) -> None:
    """notification v2 grows ~300 MB/min against a 50 MB/min budget: rolled back, named."""
    project = make_project(
        {"api": {"config": {"VERSION": "api-1"}}, "notification": {"config": {"VERSION": "n-1"}}},
        gates={"bake": "8s", "ready_timeout": "5s", "memory_growth_mb_per_min": 50},
    )
    api.build(project, "v1")
    good = api.deploy(project, "staging")
    assert good.outcome == "succeeded"
    document = make_project.read(project)
    document["services"]["notification"]["config"].update(
        {"VERSION": "n-2", "MODE": "leak", "LEAK_MB_PER_MIN": "300"}
    )
    make_project.write(project, document)
    api.build(project, "v2")
    bad = api.deploy(project, "staging")
    assert bad.outcome == "rolled_back"
    assert bad.failed_service == "notification"
    assert bad.reason is not None
    match = re.search(r"memory grows \(MB/min\) ([\d.]+) above the limit of 50", bad.reason)
    assert match and float(match.group(1)) > 100, bad.reason
    assert httpx.get(good.endpoints["notification"] + "/").json() == {"version": "n-1"}
    assert running_from(project, bad.release) == []


def test_a_steady_version_passes_the_same_bake(make_project: ProjectFactory) -> None:
    """Without a leak the same gate lets the release through."""
    project = make_project(
        {"api": {"config": {"VERSION": "api-1"}}},
        gates={"bake": "4s", "ready_timeout": "5s", "memory_growth_mb_per_min": 50},
    )
    api.build(project, "v1")
    assert api.deploy(project, "staging").outcome == "succeeded"
