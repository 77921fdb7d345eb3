"""How fast is a bad release caught and undone? A memory leak during bake, and a failed readiness.

    python benchmarks/detection.py

Deploys, on this machine, a small service (tests/fixtures/webapp.py) as v1, then a v2 that
leaks 100 MB/min against a 50 MB/min budget, then a v3 whose readiness answers 500. Prints one
JSON object: ``leak_detect_seconds`` (from the start of the bake to the failure verdict),
``rollback_seconds`` (from the verdict to the previous version serving alone again) for the leak,
and the same rollback figure for the readiness failure. Targets: leak detected within 20 s of
bake; rollback ≤ 5 s.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import yaml

from airlock import api
from airlock.runtimes.local import stop_environment

WEBAPP = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "webapp.py"


def write(project: Path, config: dict[str, str], gates: dict[str, Any]) -> None:
    document = {
        "project": "bench",
        "services": {
            "api": {"run": "python app/webapp.py", "source": ["app/webapp.py"], "config": config}
        },
        "environments": {"staging": {}},
        "gates": gates,
    }
    (project / "airlock.yaml").write_text(yaml.safe_dump(document))


def run() -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="airlock-bench-") as tmp:
        project = Path(tmp) / "bench"
        (project / "app").mkdir(parents=True)
        shutil.copyfile(WEBAPP, project / "app" / "webapp.py")
        gates = {"bake": "30s", "ready_timeout": "5s", "memory_growth_mb_per_min": 50}
        try:
            write(project, {"VERSION": "v1"}, {**gates, "bake": "1s"})
            api.build(project, "v1")
            assert api.deploy(project, "staging").outcome == "succeeded"

            write(project, {"VERSION": "v2", "MODE": "leak", "LEAK_MB_PER_MIN": "100"}, gates)
            api.build(project, "v2")
            leak = api.deploy(project, "staging")

            write(project, {"VERSION": "v3", "MODE": "ready500"}, gates)
            api.build(project, "v3")
            unready = api.deploy(project, "staging")
        finally:
            stop_environment(project / ".airlock" / "envs" / "staging")
        return {
            "leak_outcome": leak.outcome,
            "leak_reason": leak.reason,
            "leak_detect_seconds": _round(leak.detect_seconds),
            "rollback_seconds": _round(leak.rollback_seconds),
            "readiness_outcome": unready.outcome,
            "readiness_rollback_seconds": _round(unready.rollback_seconds),
            "targets": {"leak_detect_seconds": 20, "rollback_seconds": 5},
            "targets_met": (
                leak.outcome == "rolled_back"
                and (leak.detect_seconds or 99) <= 20
                and (leak.rollback_seconds or 99) <= 5
                and (unready.rollback_seconds or 99) <= 5
            ),
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


if __name__ == "__main__":
    print(json.dumps(run()))
