"""Benchmark the release scheduler on a large random dependency graph.

Builds a random DAG of ``--services`` services (each depends on 0 to ``--max-deps`` services
among the ``--window`` declared just before it, so the graph is deep as well as wide), gives every
service a random start duration (uniform between 0.2 and 5 seconds), runs a whole release through
the simulator on a virtual clock and prints one JSON object:

``makespan``
    virtual seconds until every new version is ready.
``critical_path``
    the longest chain of durations: no schedule can be faster.
``lower_bound``
    ``critical_path``, or the total work divided by ``--max-parallel`` when that is larger.
``ratio`` / ``bound_ratio``
    ``makespan`` divided by ``critical_path`` / by ``lower_bound`` (1.0 is optimal).
``waves_makespan`` / ``waves_ratio``
    the same for starting the graph level by level, each level waiting for the slowest service of
    the previous one.
``engine_seconds``
    real seconds spent inside the engine's ``handle`` calls.
``simulation_seconds``
    real seconds for the whole simulated release (engine and simulator).

Usage::

    python benchmarks/scheduler.py --services 1000 --seed 1
    python benchmarks/scheduler.py --services 10000 --seed 1 --max-parallel 32
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

try:
    import airlock.engine  # noqa: F401
except ImportError:  # running from a checkout without installing it
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from airlock.engine import EnginePlan, ServiceStep
from airlock.simulate import critical_path, simulate, waves, waves_makespan


def random_plan(
    services: int,
    seed: int,
    *,
    max_deps: int,
    window: int,
    max_parallel: int | None,
    hints: bool,
) -> tuple[EnginePlan, dict[str, float]]:
    """A seeded random DAG and the start duration of each service."""
    rng = random.Random(seed)
    steps = []
    durations: dict[str, float] = {}
    for i in range(services):
        name = f"svc{i:05d}"
        earlier = range(max(0, i - window), i)
        deps = rng.sample(earlier, min(len(earlier), rng.randint(0, max_deps)))
        durations[name] = round(rng.uniform(0.2, 5.0), 3)
        steps.append(
            ServiceStep(
                name=name,
                depends_on=tuple(f"svc{j:05d}" for j in sorted(deps)),
                action="start",
                ready_timeout=60.0,
                has_old=rng.random() < 0.8,
                # The runner can estimate this from earlier releases; --no-hints leaves it at 1.
                expected_seconds=durations[name] if hints else 1.0,
            )
        )
    rng.shuffle(steps)  # declaration order must not matter
    plan = EnginePlan(services=tuple(steps), max_parallel=max_parallel)
    return plan, durations


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--services", type=int, default=1000, help="number of services")
    parser.add_argument("--seed", type=int, default=1, help="random seed")
    parser.add_argument("--max-parallel", type=int, default=None, help="start at most M at once")
    parser.add_argument("--max-deps", type=int, default=3, help="most dependencies per service")
    parser.add_argument("--window", type=int, default=50, help="dependencies among the last W")
    parser.add_argument(
        "--no-hints", action="store_true", help="do not tell the engine the expected durations"
    )
    args = parser.parse_args(argv)

    plan, durations = random_plan(
        args.services,
        args.seed,
        max_deps=args.max_deps,
        window=args.window,
        max_parallel=args.max_parallel,
        hints=not args.no_hints,
    )
    t0 = time.perf_counter()
    result = simulate(plan, durations)
    simulation_seconds = time.perf_counter() - t0
    if result.outcome != "succeeded" or result.all_ready_at is None:
        print(json.dumps({"error": result.reason}), file=sys.stderr)
        return 1

    makespan = result.all_ready_at
    cp = critical_path(plan, durations)
    lower_bound = cp
    if args.max_parallel:
        lower_bound = max(cp, sum(durations.values()) / args.max_parallel)
    waves_time = waves_makespan(plan, durations)
    report = {
        "services": args.services,
        "edges": sum(len(s.depends_on) for s in plan.services),
        "depth": len(waves(plan)),
        "seed": args.seed,
        "max_parallel": args.max_parallel,
        "makespan": round(makespan, 3),
        "critical_path": round(cp, 3),
        "lower_bound": round(lower_bound, 3),
        "ratio": round(makespan / cp, 4) if cp else 1.0,
        "bound_ratio": round(makespan / lower_bound, 4) if lower_bound else 1.0,
        "waves_makespan": round(waves_time, 3),
        "waves_ratio": round(waves_time / cp, 4) if cp else 1.0,
        "engine_seconds": round(result.engine_seconds, 4),
        "simulation_seconds": round(simulation_seconds, 4),
    }
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
