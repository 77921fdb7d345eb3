"""The load gate (INC10): ``airlock gate load ENV`` puts the running environment under load.

`Locust <https://locust.io>`_ runs headless, as a library, in a child process of its own
(:mod:`airlock.checks.locust_worker`): importing Locust monkey-patches the whole process with
gevent, so this module never imports it. The child gets a JSON spec, runs ``gates.load.users``
users (started at ``spawn_rate`` per second) for ``duration`` seconds against the services' stable
URLs (as the environment's runtime gives them), and writes its figures to a JSON file; this
module compares them with ``gates.load`` and returns a :class:`~airlock.checks.outcome.GateOutcome`.
:func:`airlock.gonogo.run_load_gate` finds the URLs and stores the outcome with the release.

What the users do:

* **Default** (no ``gates.load.locustfile``): one user class sends every ``endpoints`` entry of
  every service (``"METHOD /path"``), in turn, to that service, with 0.1–0.5 s of think time
  between requests. Each request is named ``"service METHOD /path"`` in the statistics.
* **The project's locustfile** (path relative to ``airlock.yaml``): its user classes run as they
  are. The child's environment has ``AIRLOCK_URL_<SERVICE>`` (upper case, ``-`` → ``_``) set to
  each running service's base URL, and user classes without a ``host`` get the URL of the first
  service (in ``airlock.yaml`` order) that runs. Load-test shapes in the file are ignored.

A gate that cannot decide fails (``load.unavailable``): a locustfile that does not import (the
finding names ``file:line``) or defines no user class, an environment that never answered, a child
process that crashed or overran its time limit (``duration`` + :data:`STOP_GRACE_S` +
:data:`START_MARGIN_S`, after which its whole process group is killed).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from airlock.checks.outcome import GateOutcome
from airlock.errors import Location, UsageError
from airlock.findings import Finding, Severity
from airlock.model import LoadGateModel, Project

CODES: dict[str, str] = {
    "load.p50": "The median latency under load is above gates.load.p50_ms.",
    "load.p95": "The 95th percentile latency under load is above gates.load.p95_ms.",
    "load.p99": "The 99th percentile latency under load is above gates.load.p99_ms.",
    "load.error-rate": "The share of failed requests under load is above gates.load.error_rate.",
    "load.unavailable": "The load test could not decide: the locustfile does not load or has no "
    "user class, the environment did not answer, or the test crashed or overran its time.",
}

GATE = "load"

RESPONSE_SAMPLES = 3
"""Response bodies kept per request name, scanned for personal data when gates.logs is set."""

STOP_GRACE_S = 10.0
"""When the load ends, users get this long to finish the request they are waiting for."""

START_MARGIN_S = 60.0
"""Time allowed on top of the load itself for the child to start, load the locustfile and stop."""

WORKER_MODULE = "airlock.checks.locust_worker"
OUTPUT_TAIL_LINES = 5
"""Last lines of the child's output shown when it crashes."""

Progress = Callable[[str], None]


@dataclass(frozen=True)
class LoadTarget:
    """One request of the default user: a declared endpoint of a running service."""

    service: str
    method: str
    path: str
    url: str

    @property
    def name(self) -> str:
        """The name the request has in the statistics: ``service METHOD /path``."""
        return f"{self.service} {self.method} {self.path}"

    def to_spec(self) -> dict[str, str]:
        return {"name": self.name, "method": self.method, "url": self.url}


def url_variable(service: str) -> str:
    """``AIRLOCK_URL_<SERVICE>``: the variable holding a service's base URL for a locustfile."""
    return "AIRLOCK_URL_" + service.upper().replace("-", "_")


def running_urls(project: Project, urls: Mapping[str, str]) -> dict[str, str]:
    """The base URLs of the project's services that run, in ``airlock.yaml`` order."""
    return {name: urls[name].rstrip("/") for name in project.services if name in urls}


def default_host(project: Project, urls: Mapping[str, str]) -> str | None:
    """The URL of the first service (in ``airlock.yaml`` order) that runs."""
    running = running_urls(project, urls)
    return next(iter(running.values())) if running else None


def default_targets(project: Project, urls: Mapping[str, str]) -> list[LoadTarget]:
    """What the default locustfile sends: every declared endpoint of every running service."""
    targets = []
    for service, url in running_urls(project, urls).items():
        for endpoint in project.services[service].endpoints:
            method, path = endpoint.split()
            targets.append(LoadTarget(service, method.upper(), path, url + path))
    return targets


def worker_environment(project: Project, urls: Mapping[str, str]) -> dict[str, str]:
    """The child's environment: ours, plus ``AIRLOCK_URL_<SERVICE>`` for each running service,
    the services' hosts kept away from HTTP proxies, and this copy of Airlock importable."""
    env = {k: v for k, v in os.environ.items() if k != "LOCUST_SKIP_MONKEY_PATCH"}
    hosts = ["localhost"]
    for service, url in running_urls(project, urls).items():
        env[url_variable(service)] = url
        host = urlsplit(url).hostname
        if host and host not in hosts:
            hosts.append(host)
    for key in ("NO_PROXY", "no_proxy"):
        present = [item for item in env.get(key, "").split(",") if item]
        env[key] = ",".join([*present, *(h for h in hosts if h not in present)])
    source = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (source, env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def thresholds(config: LoadGateModel) -> dict[str, float | None]:
    return {
        "p50_ms": config.p50_ms,
        "p95_ms": config.p95_ms,
        "p99_ms": config.p99_ms,
        "error_rate": config.error_rate,
    }


def time_limit(config: LoadGateModel) -> float:
    """How long the child may run before it is killed."""
    return config.duration + STOP_GRACE_S + START_MARGIN_S


# -- the gate ------------------------------------------------------------------------------------


def run_load(
    project: Project,
    urls: Mapping[str, str],
    *,
    release: str | None = None,
    progress: Progress | None = None,
    timeout: float | None = None,
) -> GateOutcome:
    """Run ``gates.load`` against the services at ``urls`` (service → stable base URL) and
    judge the figures; nothing is recorded. ``timeout`` overrides :func:`time_limit`."""
    config = project.gates.load
    if config is None:
        return GateOutcome.skipped(GATE, "gates.load is not configured in airlock.yaml")
    running = running_urls(project, urls)
    host = default_host(project, running)
    if host is None:
        raise UsageError("no service runs, so there is nothing to put under load")
    evidence: dict[str, Any] = {
        "release": release,
        "locustfile": config.locustfile or "default",
        "users": config.users,
        "spawn_rate": config.spawn_rate,
        "duration_s": config.duration,
        "thresholds": thresholds(config),
        "urls": dict(running),
        **dict.fromkeys(("requests", "failures", "error_rate", "p50_ms", "p95_ms", "p99_ms")),
        "rps": None,
        "endpoints": [],
    }
    findings: list[Finding] = []
    spec: dict[str, Any] = {
        "root": str(project.root),
        "host": host,
        "users": config.users,
        "spawn_rate": config.spawn_rate,
        "duration": config.duration,
        "stop_timeout": STOP_GRACE_S,
        "samples": RESPONSE_SAMPLES if project.gates.logs is not None else 0,
    }
    if config.locustfile:
        path = (project.root / config.locustfile).resolve()
        if not path.is_file():
            raise UsageError(
                f"{project.locate('gates', 'load', 'locustfile')}: the locustfile "
                f"{config.locustfile} does not exist",
                hint="fix gates.load.locustfile (a path relative to airlock.yaml), or remove it "
                "to send each service's declared endpoints",
            )
        spec.update(mode="locustfile", locustfile=str(path))
        what = f"locustfile {config.locustfile}"
    else:
        targets = default_targets(project, running)
        silent = [
            name for name, svc in project.services.items() if svc.endpoints and name not in running
        ]
        for name in silent:
            findings.append(
                Finding(
                    "load.unavailable",
                    Severity.ERROR,
                    f"service {name} declares endpoints but does not run, so it cannot be "
                    "put under load",
                    project.locate("services", name, "endpoints"),
                    hint="deploy the environment again, then rerun the gate",
                )
            )
        if not targets and not silent:
            raise UsageError(
                "there is nothing to put under load: no service declares `endpoints` and "
                "gates.load has no locustfile",
                hint="declare e.g. `endpoints: [GET /]` under a service, or set "
                "gates.load.locustfile",
            )
        if not targets:
            return GateOutcome.from_findings(GATE, findings, ok="", evidence=evidence)
        spec.update(mode="default", targets=[t.to_spec() for t in targets])
        what = f"{len(targets)} endpoint{'s' if len(targets) != 1 else ''}"

    limit = time_limit(config) if timeout is None else timeout
    if progress:
        progress(
            f"load: {config.users} users ({config.spawn_rate:g}/s) for {config.duration:g} s, "
            f"{what}"
        )
    result, problem = _run_worker(project, running, spec, limit)
    if problem is not None:
        findings.append(problem)
    else:
        assert result is not None
        samples = result.pop("samples", None) or []  # bodies: scanned, never kept
        figures = _evidence_figures(result)
        evidence.update(figures)
        findings += judge(result, config, project)
        findings += _personal_data(project, samples)
        if project.gates.logs is not None:
            evidence["responses_scanned"] = len(samples)
        if progress:
            progress(
                f"load: {figures['requests']} requests, p95 {figures['p95_ms']} ms, "
                f"{_percent(figures['error_rate'])} errors"
            )
    return GateOutcome.from_findings(GATE, findings, ok=_summary(evidence), evidence=evidence)


# -- judging -------------------------------------------------------------------------------------


def _personal_data(project: Project, samples: list[dict[str, Any]]) -> list[Finding]:
    """Card numbers, e-mail addresses and ``gates.logs`` patterns in sampled responses (INC15:
    the site itself leaking card numbers); values masked."""
    from airlock.checks.logscan import scan_responses

    logs = project.gates.logs
    if logs is None or not samples:
        return []
    grouped: dict[str, list[str]] = {}
    for sample in samples:  # one finding per request and value, not per sampled response
        grouped.setdefault(f"response to {sample['name']}", []).append(str(sample["body"]))
    bodies = [(label, "\n".join(texts).encode()) for label, texts in grouped.items()]
    try:
        return scan_responses(bodies, patterns=logs.patterns, emails=logs.emails)
    except UsageError as exc:  # an invalid pattern: the logs gate reports it too
        return [Finding("load.unavailable", Severity.ERROR, exc.message, hint=exc.hint)]


def judge(result: Mapping[str, Any], config: LoadGateModel, project: Project) -> list[Finding]:
    """Findings for the figures of a run that completed (the worker's result)."""
    requests = int(result.get("requests") or 0)
    failures = int(result.get("failures") or 0)
    answered = int(result.get("answered", requests) or 0)
    if requests == 0:
        return [_nothing_completed(result, config)]
    if answered == 0:
        errors = result.get("errors") or []
        first = f": {errors[0]['name']}: {errors[0]['error']}" if errors else ""
        return [
            Finding(
                "load.unavailable",
                Severity.ERROR,
                f"the environment did not answer any of {requests} requests{first}",
                hint="is the environment up? check `airlock status` and `airlock logs`",
                evidence={"errors": errors},
            )
        ]
    findings = []
    entries = list(result.get("entries") or [])
    for figure, code in (("p50_ms", "load.p50"), ("p95_ms", "load.p95"), ("p99_ms", "load.p99")):
        target = getattr(config, figure)
        value = result.get(figure)
        if target is None or value is None or value <= target:
            continue
        label = figure.removesuffix("_ms")
        message = f"{label} {value:g} ms above the target of {target:g} ms"
        slowest = max(entries, key=lambda e: e.get(figure) or 0, default=None)
        if slowest is not None and len(entries) > 1:
            message += f" (slowest: {slowest['name']} at {slowest[figure]:g} ms)"
        findings.append(
            Finding(
                code,
                Severity.ERROR,
                message,
                project.locate("gates", "load", figure),
                hint="find what makes it slow under load before releasing",
                evidence={"figure": figure, "value": value, "threshold": target},
            )
        )
    rate = failures / requests
    if config.error_rate is not None and rate > config.error_rate:
        errors = result.get("errors") or []
        example = f"; e.g. {errors[0]['name']}: {errors[0]['error']}" if errors else ""
        findings.append(
            Finding(
                "load.error-rate",
                Severity.ERROR,
                f"error rate {_percent(rate)} above the target of {config.error_rate * 100:g}% "
                f"({failures} of {requests} requests failed{example})",
                project.locate("gates", "load", "error_rate"),
                hint="see evidence.errors and the services' logs (`airlock logs`)",
                evidence={
                    "figure": "error_rate",
                    "value": round(rate, 4),
                    "threshold": config.error_rate,
                    "errors": errors,
                },
            )
        )
    return findings


def _nothing_completed(result: Mapping[str, Any], config: LoadGateModel) -> Finding:
    exceptions = result.get("exceptions") or []
    if exceptions:
        first = exceptions[0]
        where = f" ({first['where']})" if first.get("where") else ""
        message = (
            f"no request completed in {config.duration:g} s: the locustfile's tasks raised "
            f"{first['message']}{where}"
        )
        hint = "fix the locustfile's tasks"
    else:
        message = f"no request completed in {config.duration:g} s: the environment did not answer"
        hint = "is the environment up? check `airlock status` and `airlock logs`"
    return Finding(
        "load.unavailable", Severity.ERROR, message, hint=hint, evidence={"exceptions": exceptions}
    )


def _evidence_figures(result: Mapping[str, Any]) -> dict[str, Any]:
    requests = int(result.get("requests") or 0)
    failures = int(result.get("failures") or 0)
    endpoints = []
    for entry in result.get("entries") or []:
        count = int(entry.get("requests") or 0)
        endpoints.append(
            {
                **entry,
                "error_rate": round(int(entry.get("failures") or 0) / count, 4) if count else None,
            }
        )
    has_latency = requests > 0
    return {
        "requests": requests,
        "failures": failures,
        "answered": result.get("answered"),
        "error_rate": round(failures / requests, 4) if requests else None,
        "p50_ms": result.get("p50_ms") if has_latency else None,
        "p95_ms": result.get("p95_ms") if has_latency else None,
        "p99_ms": result.get("p99_ms") if has_latency else None,
        "rps": result.get("rps"),
        "duration_s": result.get("duration_s"),
        "users_reached": result.get("users"),
        "endpoints": endpoints,
        "errors": result.get("errors") or [],
        "exceptions": result.get("exceptions") or [],
    }


def _percent(rate: float | None) -> str:
    return "n/a" if rate is None else f"{rate * 100:.1f}%"


def _summary(evidence: Mapping[str, Any]) -> str:
    return (
        f"p50 {evidence['p50_ms']} ms, p95 {evidence['p95_ms']} ms, p99 {evidence['p99_ms']} ms, "
        f"{_percent(evidence['error_rate'])} errors over {evidence['requests']} requests "
        f"({evidence['rps']} req/s, {evidence['users']} users, {evidence['duration_s']} s)"
    )


# -- the child process ---------------------------------------------------------------------------


def _run_worker(
    project: Project, running: Mapping[str, str], spec: dict[str, Any], limit: float
) -> tuple[dict[str, Any] | None, Finding | None]:
    """Run the Locust child; its result, or a ``load.unavailable`` finding saying why not."""
    with tempfile.TemporaryDirectory(prefix="airlock-load-") as tmp:
        folder = Path(tmp)
        result_path = folder / "result.json"
        spec_path = folder / "spec.json"
        output_path = folder / "output.log"
        spec_path.write_text(json.dumps({**spec, "result": str(result_path)}), encoding="utf-8")
        with output_path.open("wb") as output:
            proc = subprocess.Popen(
                [sys.executable, "-m", WORKER_MODULE, str(spec_path)],
                cwd=project.root,
                env=worker_environment(project, running),
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            try:
                code = proc.wait(timeout=limit)
            except subprocess.TimeoutExpired:
                _kill_group(proc)
                return None, _unavailable(
                    f"load test did not finish within {limit:g} s; it was stopped",
                    hint="a locustfile that blocks (at import or in on_start) or a service that "
                    "never answers can cause this",
                )
            finally:
                if proc.poll() is None:  # interrupted (KeyboardInterrupt ...): leave nothing behind
                    _kill_group(proc)
        tail = _tail(output_path)
        result = _read_result(result_path)
    if result is None:
        how = f"was killed by signal {-code}" if code < 0 else f"exited with status {code}"
        last = f": {tail[-1]}" if tail else ""
        return None, _unavailable(
            f"the load test crashed (it {how}){last}", evidence={"output": tail}
        )
    if "error" in result:
        return None, _worker_error(project, result, tail)
    return result, None


def _worker_error(project: Project, result: Mapping[str, Any], tail: list[str]) -> Finding:
    message = str(result["error"])
    kind = result.get("kind")
    file = result.get("file")
    line = result.get("line")
    evidence: dict[str, Any] = {"kind": kind}
    if kind == "crash":
        evidence["output"] = tail
        return _unavailable(f"the load test crashed: {message}", evidence=evidence)
    if file is None:
        return _unavailable(message, evidence=evidence)
    shown = _display_path(Path(file), project.root)
    place = f"{shown}:{line}" if line else shown
    if kind == "no-users":
        return _unavailable(
            f"{place}: {message}",
            location=Location(shown, line),
            hint="define e.g. `class WebsiteUser(HttpUser)` with at least one @task",
            evidence=evidence,
        )
    return _unavailable(
        f"the locustfile does not load: {place}: {message}",
        location=Location(shown, line),
        hint="fix the locustfile, then run the gate again",
        evidence=evidence,
    )


def _unavailable(
    message: str,
    *,
    location: Location | None = None,
    hint: str | None = None,
    evidence: dict[str, Any] | None = None,
) -> Finding:
    return Finding("load.unavailable", Severity.ERROR, message, location, hint, evidence or {})


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)


def _read_result(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _tail(path: Path, lines: int = OUTPUT_TAIL_LINES) -> list[str]:
    """The last lines of the child's output (it may be large: only its end is read)."""
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - 16384))
            text = handle.read().decode("utf-8", errors="replace")
    except OSError:
        return []
    return [line.rstrip() for line in text.splitlines() if line.strip()][-lines:]


def _display_path(path: Path, root: Path) -> str:
    try:
        return str(path.resolve().relative_to(root.resolve()))
    except ValueError:
        return str(path)
