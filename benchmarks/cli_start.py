"""How fast does the command line start? Median wall times against bare Python.

    python benchmarks/cli_start.py [--runs N]

Times, each ``--runs`` times (default 9), ``python3 -c pass``, ``airlock --help``, ``airlock
status ENV`` on a deployed one-service project, and a no-op ``airlock deploy`` (the release
already serves: nothing starts). Prints one JSON object with the medians in seconds and
``help_over_python`` (target: ``airlock --help`` within 0.25 s of bare Python).
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
TARGET_HELP_OVER_PYTHON = 0.25


def median_seconds(command: list[str], cwd: Path, runs: int) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(command, cwd=cwd, capture_output=True, check=True)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=9)
    args = parser.parse_args()
    compile_airlock()
    workspace = Path(tempfile.mkdtemp(prefix="airlock-cli-start-"))
    try:
        (workspace / "app").mkdir()
        shutil.copyfile(WEBAPP, workspace / "app" / "webapp.py")
        document = {
            "project": "bench",
            "services": {"api": {"run": "python app/webapp.py", "source": ["app/webapp.py"]}},
            "environments": {"staging": {}},
            "gates": {"bake": "0s", "ready_timeout": "10s"},
        }
        (workspace / "airlock.yaml").write_text(yaml.safe_dump(document))
        for step in (["release", "build", "--version", "v1"], ["deploy", "staging"]):
            subprocess.run([*AIRLOCK, *step], cwd=workspace, capture_output=True, check=True)
        python = median_seconds([sys.executable, "-c", "pass"], workspace, args.runs)
        help_ = median_seconds([*AIRLOCK, "--help"], workspace, args.runs)
        status = median_seconds([*AIRLOCK, "status", "staging"], workspace, args.runs)
        noop = median_seconds([*AIRLOCK, "deploy", "staging"], workspace, args.runs)
    finally:
        subprocess.run([*AIRLOCK, "env", "stop", "staging"], cwd=workspace, capture_output=True)
        shutil.rmtree(workspace, ignore_errors=True)
    over = help_ - python
    print(
        json.dumps(
            {
                "runs": args.runs,
                "python_seconds": round(python, 3),
                "help_seconds": round(help_, 3),
                "status_seconds": round(status, 3),
                "noop_deploy_seconds": round(noop, 3),
                "help_over_python": round(over, 3),
                "target_help_over_python": TARGET_HELP_OVER_PYTHON,
                "ok": over <= TARGET_HELP_OVER_PYTHON,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
