"""What does observing a service cost, and how long does discovering a whole system take?

    python benchmarks/discover.py [--requests N] [--seconds S]

1. ``latency_ratio``: the stub service (tests/fixtures/webapp.py) answers N sequential GETs
   plain, then under strace exactly as ``airlock discover`` runs it; the ratio of the two
   median latencies (p50 under observation ÷ p50 plain).
2. ``phoenix_seconds``: the Phoenix example deployed to staging (its embedded PostgreSQL
   migrated), then ``airlock discover --all`` on its five services against that database, each
   observed for S seconds (default 10); wall time, target ≤ 30 s.

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from _setup import compile_airlock
from airlock import api
from airlock.db.target import embedded_server, environment_database_url
from airlock.demo import SECRET_NAME, example_dir
from airlock.discover import observed_command, strace_command

ROOT = Path(__file__).resolve().parents[1]
WEBAPP = ROOT / "tests" / "fixtures" / "webapp.py"
TARGET_PHOENIX_SECONDS = 30.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def p50_of(argv: list[str], requests: int) -> float:
    """Start ``argv`` (the stub on a free port), wait for it, time ``requests`` GETs; the p50."""
    port = free_port()
    env = {**os.environ, "PORT": str(port), "VERSION": "bench"}
    process = subprocess.Popen(
        argv,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # stopped as a group, strace and the service alike
    )
    url = f"http://127.0.0.1:{port}/"
    try:
        with httpx.Client(trust_env=False, timeout=5) as client:
            deadline = time.monotonic() + 20
            while True:
                try:
                    client.get(url)
                    break
                except httpx.HTTPError:
                    if time.monotonic() > deadline or process.poll() is not None:
                        raise RuntimeError("the stub did not start") from None
                    time.sleep(0.02)
            for _ in range(20):  # warm up
                client.get(url)
            times = []
            for _ in range(requests):
                started = time.perf_counter()
                client.get(url).raise_for_status()
                times.append(time.perf_counter() - started)
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    return statistics.median(times)


def latency(requests: int) -> dict[str, float]:
    plain = p50_of([sys.executable, str(WEBAPP)], requests)
    with tempfile.TemporaryDirectory() as folder:
        trace = Path(folder) / "trace.txt"
        command = observed_command(strace_command(), trace, [sys.executable, str(WEBAPP)])
        observed = p50_of(list(command), requests)
    return {
        "p50_plain_ms": round(plain * 1000, 3),
        "p50_observed_ms": round(observed * 1000, 3),
        "latency_ratio": round(observed / plain, 2),
    }


def phoenix(seconds: float) -> dict[str, object]:
    workspace = Path(tempfile.mkdtemp(prefix="airlock-discover-bench-"))
    project = workspace / "phoenix"
    shutil.copytree(
        example_dir(), project, ignore=shutil.ignore_patterns("releases", "__pycache__")
    )
    os.environ.setdefault(f"STAGING_{SECRET_NAME}", "discover-benchmark-secret")
    try:
        api.build(project, "v1")
        deployed = api.deploy(project, "staging")
        if deployed.outcome != "succeeded":
            raise RuntimeError(f"the Phoenix deploy failed: {deployed.reason}")
        url, _secrets = environment_database_url(
            api.project_at(project), "staging", state_root=project
        )
        started = time.perf_counter()
        found, written = api.discover(
            project, env="staging", seconds=seconds, every=True, database_url=url
        )
        took = time.perf_counter() - started
        return {
            "phoenix_services": len(found),
            "phoenix_complete": sum(1 for d in found if d.complete),
            "phoenix_seconds": round(took, 2),
            "phoenix_observed_seconds_each": seconds,
            "phoenix_documents": len(written),
            "target_phoenix_seconds": TARGET_PHOENIX_SECONDS,
            "phoenix_ok": took <= TARGET_PHOENIX_SECONDS and all(d.complete for d in found),
        }
    finally:
        api.stop_env(project, "staging")
        embedded_server(project, "staging").destroy()
        shutil.rmtree(workspace, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    compile_airlock()
    result: dict[str, object] = {"requests": args.requests, **latency(args.requests)}
    result.update(phoenix(args.seconds))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
