"""What does Airlock add to a deploy? Wall time of the real CLI against the start delays' own
critical path.

    python benchmarks/deploy_overhead.py [--runs N]

An 11-service dependency graph of stub services (tests/fixtures/webapp.py), each waiting a known
delay before it listens, is deployed with the real ``airlock deploy`` (bake 0). The critical path
of the delays is the least time any deploy could take; ``ratio`` is the command's median wall time
over it (target ≤ 1.15). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from _setup import compile_airlock

ROOT = Path(__file__).resolve().parents[1]
WEBAPP = ROOT / "tests" / "fixtures" / "webapp.py"
AIRLOCK = [sys.executable, "-c", "from airlock.entry import main; main()"]
TARGET_RATIO = 1.15

# service → (start delay in seconds, dependencies): three chains that meet, and stragglers
GRAPH: dict[str, tuple[float, list[str]]] = {
    "db": (1.0, []),
    "cache": (0.5, []),
    "auth": (0.8, ["db"]),
    "account": (1.0, ["db", "auth"]),
    "audit": (0.4, ["db"]),
    "payment": (1.2, ["account", "audit"]),
    "ledger": (0.6, ["account"]),
    "search": (0.7, ["cache"]),
    "catalog": (0.9, ["cache", "db"]),
    "checkout": (0.8, ["payment", "catalog"]),
    "web": (0.5, ["checkout", "search", "ledger"]),
}


def critical_path() -> float:
    done: dict[str, float] = {}

    def ready_at(name: str) -> float:
        if name not in done:
            delay, deps = GRAPH[name]
            done[name] = delay + max((ready_at(d) for d in deps), default=0.0)
        return done[name]

    return max(ready_at(name) for name in GRAPH)


def write(project: Path, version: str) -> None:
    services = {
        name: {
            "run": "python app/webapp.py",
            "source": ["app/webapp.py"],
            "depends_on": deps,
            "config": {"VERSION": f"{name}-{version}", "START_DELAY": str(delay)},
        }
        for name, (delay, deps) in GRAPH.items()
    }
    document = {
        "project": "overhead",
        "services": services,
        "environments": {"staging": {}},
        "gates": {"bake": "0s", "ready_timeout": "30s"},
    }
    (project / "airlock.yaml").write_text(yaml.safe_dump(document, sort_keys=False))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    compile_airlock()
    workspace = Path(tempfile.mkdtemp(prefix="airlock-overhead-"))
    times = []
    try:
        (workspace / "app").mkdir()
        shutil.copyfile(WEBAPP, workspace / "app" / "webapp.py")
        for run in range(args.runs):
            write(workspace, f"v{run}")
            subprocess.run(
                [*AIRLOCK, "release", "build", "--version", f"v{run}"],
                cwd=workspace,
                capture_output=True,
                check=True,
            )
            started = time.perf_counter()
            subprocess.run(
                [*AIRLOCK, "deploy", "staging"], cwd=workspace, check=True, capture_output=True
            )
            times.append(time.perf_counter() - started)
    finally:
        subprocess.run([*AIRLOCK, "env", "stop", "staging"], cwd=workspace, capture_output=True)
        shutil.rmtree(workspace, ignore_errors=True)
    path = critical_path()
    wall = statistics.median(times)
    print(
        json.dumps(
            {
                "services": len(GRAPH),
                "runs": args.runs,
                "critical_path_seconds": round(path, 3),
                "deploy_seconds": [round(t, 3) for t in times],
                "median_deploy_seconds": round(wall, 3),
                "ratio": round(wall / path, 3),
                "target_ratio": TARGET_RATIO,
                "ok": wall / path <= TARGET_RATIO,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
