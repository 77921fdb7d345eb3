"""The dashboard's application: pages, the JSON API, live updates, and who may do what.

Rules of access, enforced by :class:`Guard` before any route runs:

- every write (``POST``: approve a release, roll an environment back) needs the token, as
  ``Authorization: Bearer TOKEN`` or (from the pages' forms) a ``token`` form field; without a
  configured token, writes are off;
- bound to a loopback address, reads are open, but only to requests that name a loopback host
  (a page of another site cannot read the dashboard through DNS rebinding);
- bound to any other address, reads need the token too: the bearer header, or the session
  cookie that ``/login`` sets (an HMAC of the token, never the token itself).

Pages are rendered from the templates in ``templates/``; the only script, ``static/live.js``,
listens to ``/events`` and swaps the page's ``data-live`` parts when the state store changes.
Everything shown comes from :mod:`airlock.api`; the audit log and delivery metrics pages show
"not available" when the library lacks the function they need.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import json
import logging
from collections.abc import AsyncIterator, Callable, MutableMapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qs, quote

import jinja2
from fastapi import Body, FastAPI, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from starlette.datastructures import MutableHeaders
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from airlock import api
from airlock.errors import (
    AirlockError,
    AuditFailed,
    GateFailed,
    LockedError,
    ReleaseError,
    ReleaseFailed,
    RuntimeFailure,
    StateError,
    UsageError,
)
from airlock.web import charts

HERE = Path(__file__).resolve().parent
log = logging.getLogger("airlock.dashboard")

#: Names the pages and routes accept for environments and release references.
ENV_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"
REF_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,127}$"
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1", "[::1]"}
SESSION_COOKIE = "airlock_session"
#: How long an ``/events`` stream lasts before the browser reconnects (it does so by itself).
STREAM_SECONDS = 300.0
KEEPALIVE_SECONDS = 15.0

EnvName = Annotated[str, PathParam(pattern=ENV_PATTERN, description="Environment name.")]
ReleaseRef = Annotated[
    str, PathParam(pattern=REF_PATTERN, description="Release id, id prefix or version.")
]


@dataclass(frozen=True)
class Settings:
    """What the dashboard serves and to whom."""

    project: Path
    token: str | None = None  # writes (and, off loopback, reads) need it; None: writes are off
    token_env: str = "AIRLOCK_DASHBOARD_TOKEN"
    loopback: bool = True
    poll_seconds: float = 1.0  # how often /events looks for a change in the state store

    @property
    def session(self) -> str | None:
        """The session cookie's value: derived from the token, which it does not reveal."""
        if not self.token:
            return None
        return hmac.new(
            self.token.encode(), b"airlock-dashboard-session", hashlib.sha256
        ).hexdigest()


def _is_loopback_name(host: str) -> bool:
    """A Host a loopback dashboard answers: localhost, or any loopback address (127.0.0.0/8,
    ::1) — never a name that a DNS server could point at it (rebinding)."""
    if host.rstrip(".") in LOOPBACK_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def token_matches(given: str | None, token: str | None) -> bool:
    if not given or not token:
        return False
    return hmac.compare_digest(given.encode(), token.encode())


def bearer_of(headers: Any) -> str | None:
    value = headers.get("authorization") or ""
    scheme, _, credentials = value.partition(" ")
    return credentials.strip() if scheme.lower() == "bearer" and credentials.strip() else None


def _host_name(host_header: str) -> str:
    if host_header.startswith("["):
        return host_header[: host_header.find("]") + 1]
    return host_header.rsplit(":", 1)[0] if host_header.count(":") == 1 else host_header


SECURITY_HEADERS = (
    (
        "content-security-policy",
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        "frame-ancestors 'none'; form-action 'self'",
    ),
    ("x-content-type-options", "nosniff"),
    ("x-frame-options", "DENY"),
    ("referrer-policy", "no-referrer"),
    ("cache-control", "no-store"),
)


class Guard:
    """The access rules of the module docstring, and the security headers of every answer."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = self.refusal(Request(scope))
        if refusal is not None:
            await refusal(scope, receive, self._with_headers(send))
            return
        await self.app(scope, receive, self._with_headers(send))

    def _with_headers(self, send: Send) -> Send:
        async def sending(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS:
                    headers.setdefault(name, value)
            await send(message)

        return sending

    def refusal(self, request: Request) -> Response | None:
        settings, path = self.settings, request.url.path
        is_api = path.startswith("/api/")
        if settings.loopback:
            host = _host_name(request.headers.get("host", ""))
            if not _is_loopback_name(host):
                return _refused(
                    is_api,
                    421,
                    f"this dashboard answers requests for a loopback host, not {host!r}",
                    "open it as http://127.0.0.1:PORT/",
                )
        given = bearer_of(request.headers)
        if request.method not in {"GET", "HEAD", "OPTIONS"} and is_api:
            problem = write_problem(settings, given)
            return None if problem is None else _refused(True, *problem)
        if settings.loopback or path in {"/login"} or path.startswith("/static/"):
            return None
        if token_matches(given, settings.token):
            return None
        cookie = request.cookies.get(SESSION_COOKIE)
        if (
            cookie
            and settings.session
            and hmac.compare_digest(cookie.encode(), settings.session.encode())
        ):
            return None
        if is_api or path == "/events":
            return _refused(True, 401, "this dashboard needs its token", "send it as a bearer")
        return RedirectResponse("/login?next=" + quote(path), status_code=303)


def write_problem(settings: Settings, given: str | None) -> tuple[int, str, str] | None:
    """None when ``given`` is the token; else why a write is refused: (status, message, hint)."""
    if not settings.token:
        return (
            403,
            "writes are turned off: the dashboard was started without a token",
            f"start it with ${settings.token_env} set to a secret token",
        )
    if not given:
        return 401, "this needs the dashboard's token", "give the token"
    if not token_matches(given, settings.token):
        return 403, "the token is not the dashboard's token", "check it"
    return None


def _refused(is_api: bool, status: int, message: str, hint: str) -> Response:
    headers = {"www-authenticate": "Bearer"} if status == 401 else None
    if is_api:
        return JSONResponse({"error": message, "hint": hint}, status, headers=headers)
    page = (
        _templates()
        .get_template("error.html")
        .render(title="Refused", status=status, message=message, hint=hint, nav=None)
    )
    return HTMLResponse(page, status, headers=headers)


def status_of(exc: AirlockError) -> int:
    """The HTTP status for an Airlock error."""
    if isinstance(exc, Unavailable):
        return 501
    if isinstance(exc, ReleaseError) and exc.message.startswith("no release"):
        return 404
    if isinstance(exc, LockedError | GateFailed | AuditFailed | ReleaseFailed):
        return 409
    if isinstance(exc, StateError):
        return 503
    if isinstance(exc, RuntimeFailure):
        return 502
    return 400


# -- rendering helpers -----------------------------------------------------------------------------


def _templates() -> jinja2.Environment:
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters["when"] = when
    environment.filters["seconds"] = seconds
    environment.filters["percent"] = percent
    environment.filters["short"] = lambda value, n=12: str(value)[:n] if value else "-"
    environment.filters["pretty"] = lambda value: json.dumps(value, indent=2, default=str)
    return environment


def when(stamp: Any) -> str:
    """An ISO time as ``2024-05-01 12:30:05 UTC``."""
    if not stamp:
        return "-"
    text = str(stamp).replace("T", " ")
    return text[:19] + " UTC"


def seconds(value: Any) -> str:
    if value is None:
        return "-"
    number = float(value)
    if number < 120:
        return f"{number:.1f} s"
    if number < 7200:
        return f"{number / 60:.1f} min"
    return f"{number / 3600:.1f} h"


def percent(value: Any) -> str:
    return "-" if value is None else f"{float(value):.1%}"


def _epoch(stamp: str) -> float:
    moment = datetime.fromisoformat(stamp)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _clock(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%m-%d %H:%M:%S")


def _span(value: float) -> str:
    return f"{value:g} s"


# -- what the pages show (plain data from the library) ---------------------------------------------


class Views:
    """Each page's data, read through :mod:`airlock.api` for one project."""

    def __init__(self, project: Path) -> None:
        self.project = project

    def environments(self) -> list[str]:
        """The project's environments; from the history when ``airlock.yaml`` is broken."""
        try:
            return list(api.project_at(self.project).environments)
        except AirlockError:
            return list(dict.fromkeys(d.env for d in api.history(self.project, None, 500)))

    def approvals_required(self) -> dict[str, int]:
        try:
            loaded = api.project_at(self.project)
        except AirlockError:
            return {}
        return {name: env.approvals for name, env in loaded.environments.items()}

    def versions(self) -> dict[str, str]:
        try:
            return {b.id: b.version for b in api.releases(self.project)}
        except AirlockError:
            return {}

    def status(self, env: str) -> dict[str, Any]:
        data = api.status(self.project, env)
        versions = self.versions()
        for service in data["services"]:
            service["version"] = versions.get(service["release"], service["release"][:12])
        return data

    def releases(self) -> list[dict[str, Any]]:
        found = []
        for bundle in reversed(api.releases(self.project)):
            found.append({**bundle.summary(), "label": bundle.label, "commit": bundle.commit})
        return found

    def release(self, ref: str) -> dict[str, Any]:
        bundle, record = api.release_record(self.project, ref)
        return {
            **bundle.summary(),
            "label": bundle.label,
            "commit": bundle.commit,
            "dirty": bundle.dirty,
            "files": dict(sorted(bundle.manifest["files"].items())),
            "record": record,
        }

    def fingerprint(self) -> str:
        """Changes when the state store does: the newest deployments and audit entry."""
        rows = [(d.id, d.status) for d in api.history(self.project, None, 20)]
        newest: Any = None
        show = getattr(api, "audit_show", None)
        if show is not None:
            try:
                entries = show(self.project, None, 1)
                newest = entries[0]["seq"] if entries else 0
            except AirlockError:
                newest = None
        return json.dumps([rows, newest], default=str)


def bake_charts(deployment: dict[str, Any]) -> list[str]:
    """Charts of one deployment's bake: memory, error rate and p95 per service over time."""
    bake = deployment.get("bake")
    if not bake:
        return []
    services: dict[str, dict[str, Any]] = bake.get("services") or {}
    limits = bake.get("limits") or {}
    memory, errors, p95 = [], [], []
    for name, figures in services.items():
        samples = figures.get("samples") or {}
        memory.append(
            charts.Series(name, [(float(t), v) for t, v in samples.get("memory_mb") or []])
        )
        traffic = samples.get("traffic") or []
        errors.append(
            charts.Series(
                name,
                [(float(t), None if r is None else r * 100) for t, r, _p in traffic],
            )
        )
        p95.append(charts.Series(name, [(float(t), p) for t, _r, p in traffic]))
    rate_limit = limits.get("error_rate")
    return [
        charts.line_chart(
            "memory",
            memory,
            unit="MB",
            x_label=_span,
            x_title="seconds into the bake",
            empty="no memory samples were recorded",
        ),
        charts.line_chart(
            "error rate since the first scrape",
            errors,
            unit="%",
            limit=None if rate_limit is None else rate_limit * 100,
            x_label=_span,
            x_title="seconds into the bake",
            empty="no metrics were scraped (a service without `metrics:` or no traffic gate)",
        ),
        charts.line_chart(
            "p95 latency since the first scrape",
            p95,
            unit="ms",
            limit=limits.get("p95_ms"),
            x_label=_span,
            x_title="seconds into the bake",
            empty="no latency was measured",
        ),
    ]


def findings_of(reports: list[dict[str, Any]], prefixes: tuple[str, ...]) -> list[dict[str, Any]]:
    """Findings of the newest report of each environment whose code starts with a prefix."""
    seen: set[str] = set()
    found = []
    for report in reports:
        if report["env"] in seen:
            continue
        seen.add(report["env"])
        for gate in report["gates"]:
            for finding in gate.get("findings") or []:
                if str(finding.get("code", "")).startswith(prefixes) or gate["gate"] == "posture":
                    found.append({**finding, "env": report["env"], "gate": gate["gate"]})
    return found


def metric_trends(project: Path, weeks: int) -> tuple[list[dict[str, Any]], list[str]]:
    """Weekly delivery metrics per environment (oldest first) and their charts."""
    compute = getattr(api, "metrics", None)
    if compute is None:
        return [], []
    now = datetime.now(UTC)
    per_env: dict[str, list[tuple[float, Any]]] = {}
    for back in range(weeks - 1, -1, -1):
        end = now - timedelta(weeks=back)
        for item in compute(project, None, end - timedelta(weeks=1), now=end):
            per_env.setdefault(item.env, []).append((end.timestamp(), item))

    def series(pick: Callable[[Any], float | None]) -> list[charts.Series]:
        return [
            charts.Series(env, [(at, pick(item)) for at, item in rows])
            for env, rows in per_env.items()
        ]

    def day(at: float) -> str:
        return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d")

    def rate(item: Any) -> float | None:
        value = item.change_failure_rate
        return None if value is None else value * 100

    trend = [
        charts.line_chart(
            "deployments a week",
            series(lambda i: float(i.deployments)),
            x_label=day,
            x_title="week ending",
        ),
        charts.line_chart(
            "change failure rate", series(rate), unit="%", x_label=day, x_title="week ending"
        ),
        charts.line_chart(
            "lead time, median",
            series(lambda i: i.lead_time_median_hours),
            unit="h",
            x_label=day,
            x_title="week ending",
            empty="no lead time measured",
        ),
        charts.line_chart(
            "failed deployment recovery, median",
            series(lambda i: i.recovery_median_minutes),
            unit="min",
            x_label=day,
            x_title="week ending",
            empty="no failure recovered",
        ),
    ]
    current = [item.to_dict() for item in compute(project, None, now - timedelta(weeks=weeks))]
    return current, trend


# -- the JSON API's request bodies -----------------------------------------------------------------


class ApproveRequest(BaseModel):
    env: str = Field(pattern=ENV_PATTERN, description="The environment it is approved for.")
    release: str = Field(pattern=REF_PATTERN, description="Release id, id prefix or version.")
    by: str = Field(min_length=1, max_length=200, description="Who approves.")
    note: str | None = Field(default=None, max_length=2000)


class RollbackRequest(BaseModel):
    env: str = Field(pattern=ENV_PATTERN)
    to: str | None = Field(
        default=None, pattern=REF_PATTERN, description="Default: the previous good release."
    )


# -- the application ------------------------------------------------------------------------------


def create_app(settings: Settings) -> FastAPI:
    """The dashboard for ``settings.project``."""
    app = FastAPI(
        title="Airlock dashboard",
        summary="Read what runs where, releases, gates and delivery metrics; approve and roll "
        "back with the dashboard's token.",
        version="1",
        openapi_url="/api/openapi.json",
        docs_url=None,
        redoc_url=None,
    )
    views = Views(settings.project)
    templates = _templates()
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")

    def page(request: Request, name: str, code: int = 200, **context: Any) -> HTMLResponse:
        text = templates.get_template(name).render(
            nav=request.url.path, writable=bool(settings.token), **context
        )
        return HTMLResponse(text, code)

    @app.exception_handler(AirlockError)
    async def airlock_error(request: Request, exc: AirlockError) -> Response:
        status = status_of(exc)
        if request.url.path.startswith("/api/"):
            return JSONResponse({"error": exc.message, "hint": exc.hint}, status)
        return page(
            request,
            "error.html",
            status,
            title="Error",
            status=status,
            message=exc.message,
            hint=exc.hint,
        )

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> Response:
        log.error("internal error on %s", request.url.path, exc_info=exc)
        message = "internal error: this is a bug in Airlock; the server's log has the details"
        if request.url.path.startswith("/api/"):
            return JSONResponse({"error": message, "hint": None}, 500)
        return HTMLResponse(message, 500)

    # -- pages ---------------------------------------------------------------------------------

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def environments_page(request: Request) -> HTMLResponse:
        envs = [views.status(env) for env in views.environments()]
        return page(request, "environments.html", title="Environments", envs=envs)

    @app.get("/environments/{env}", response_class=HTMLResponse, include_in_schema=False)
    def environment_page(request: Request, env: EnvName) -> HTMLResponse:
        data = views.status(env)
        rows = [d.to_dict() for d in api.history(settings.project, env, 50)]
        return page(
            request,
            "environment.html",
            title=env,
            env=data,
            deployments=rows,
            message=request.query_params.get("done"),
        )

    @app.post("/environments/{env}/rollback", include_in_schema=False)
    async def rollback_form(request: Request, env: EnvName) -> Response:
        form = await _form(request)
        problem = write_problem(settings, form.get("token") or bearer_of(request.headers))
        if problem is not None:
            return _refused(False, *problem)
        result = await asyncio.to_thread(
            api.rollback, settings.project, env, form.get("to") or None
        )
        done = f"rollback to {result.version}: {result.outcome.replace('_', ' ')}"
        return RedirectResponse(f"/environments/{quote(env)}?done={quote(done)}", 303)

    @app.get("/timeline", response_class=HTMLResponse, include_in_schema=False)
    def timeline_page(request: Request) -> HTMLResponse:
        per_env = {env: api.history(settings.project, env, 200) for env in views.environments()}
        marks = {
            env: [
                charts.Mark(
                    _epoch(d.started_at),
                    d.status,
                    f"{d.kind} of {d.version} to {env}: {d.status.replace('_', ' ')}",
                    f"/releases/{quote(d.release_id)}",
                )
                for d in rows
            ]
            for env, rows in per_env.items()
        }
        return page(
            request,
            "timeline.html",
            title="Timeline",
            chart=charts.timeline(marks, x_label=_clock),
            per_env={env: [d.to_dict() for d in rows] for env, rows in per_env.items()},
            releases=views.releases(),
        )

    @app.get("/releases", response_class=HTMLResponse, include_in_schema=False)
    def releases_page(request: Request) -> HTMLResponse:
        return page(request, "releases.html", title="Releases", releases=views.releases())

    @app.get("/releases/{ref}", response_class=HTMLResponse, include_in_schema=False)
    def release_page(request: Request, ref: ReleaseRef) -> HTMLResponse:
        return _release_page(request, ref)

    def _release_page(
        request: Request,
        ref: str,
        *,
        status: int = 200,
        problem: str | None = None,
        form: dict[str, str] | None = None,
    ) -> HTMLResponse:
        release = views.release(ref)
        evidence = api.release_evidence(settings.project, release["id"])
        deployments = [{**d, "charts": bake_charts(d)} for d in evidence["deployments"]]
        reports = evidence["reports"]
        migrations = [
            {"env": r["env"], "report": r["id"], **gate}
            for r in reports
            for gate in r["gates"]
            if gate["gate"] == "migrations"
        ]
        return page(
            request,
            "release.html",
            status,
            title=f"Release {release['version']}",
            release=release,
            deployments=deployments,
            reports=reports,
            migrations=migrations,
            security=findings_of(reports, ("secret.", "posture.", "tls.", "header.")),
            required=views.approvals_required(),
            problem=problem,
            form=form or {},
            message=request.query_params.get("done"),
        )

    @app.post("/releases/{ref}/approve", include_in_schema=False)
    async def approve_form(request: Request, ref: ReleaseRef) -> Response:
        form = await _form(request)
        given = form.get("token") or bearer_of(request.headers)
        kept = {key: value for key, value in form.items() if key != "token"}
        problem = write_problem(settings, given)
        if problem is not None:
            status, message, hint = problem
            answer = await asyncio.to_thread(
                _release_page, request, ref, status=status, problem=f"{message} ({hint})", form=kept
            )
            if status == 401:
                answer.headers["www-authenticate"] = "Bearer"
            return answer
        env, by = form.get("env", ""), form.get("by", "").strip()
        try:
            if not by:
                raise UsageError("an approval needs a name", hint="fill in “approved by”")
            data = await asyncio.to_thread(
                api.approve, settings.project, env, ref, approver=by, note=form.get("note") or None
            )
        except AirlockError as exc:
            return await asyncio.to_thread(
                _release_page,
                request,
                ref,
                status=status_of(exc),
                problem=exc.message + (f" ({exc.hint})" if exc.hint else ""),
                form=kept,
            )
        done = (
            f"{data['approver']} approved it for {env} ({data['approvals']} of {data['required']})"
        )
        return RedirectResponse(f"/releases/{quote(ref)}?done={quote(done)}", 303)

    @app.get("/metrics", response_class=HTMLResponse, include_in_schema=False)
    def metrics_page(request: Request, weeks: int = Query(8, ge=1, le=52)) -> HTMLResponse:
        available = hasattr(api, "metrics")
        current, trend = metric_trends(settings.project, weeks) if available else ([], [])
        verify = getattr(api, "audit_verify", None)
        show = getattr(api, "audit_show", None)
        audit = verify(settings.project) if verify is not None else None
        entries = show(settings.project, None, 20) if show is not None else None
        return page(
            request,
            "metrics.html",
            title="Delivery metrics",
            available=available,
            weeks=weeks,
            current=current,
            trend=trend,
            audit=audit,
            entries=entries,
        )

    @app.get("/login", response_class=HTMLResponse, include_in_schema=False)
    def login_page(request: Request) -> HTMLResponse:
        return page(request, "login.html", title="Sign in", problem=None, next=_next(request))

    @app.post("/login", include_in_schema=False)
    async def login(request: Request) -> Response:
        form = await _form(request)
        if not token_matches(form.get("token"), settings.token) or settings.session is None:
            return page(
                request,
                "login.html",
                403,
                title="Sign in",
                problem="that is not the token",
                next=_next(request),
            )
        answer = RedirectResponse(_next(request), 303)
        answer.set_cookie(
            SESSION_COOKIE, settings.session, httponly=True, samesite="strict", path="/"
        )
        return answer

    # -- live updates --------------------------------------------------------------------------

    @app.get("/events", include_in_schema=False)
    async def events(request: Request) -> StreamingResponse:
        async def stream() -> AsyncIterator[str]:
            loop = asyncio.get_running_loop()
            started = last_sent = loop.time()
            yield "retry: 2000\n\n"
            seen: str | None = None
            mark: str | None
            while loop.time() - started < STREAM_SECONDS:
                try:
                    mark = await asyncio.to_thread(views.fingerprint)
                except AirlockError:
                    mark = seen
                if seen is not None and mark != seen:
                    yield "event: change\ndata: {}\n\n"
                    last_sent = loop.time()
                elif loop.time() - last_sent > KEEPALIVE_SECONDS:
                    yield ": keep-alive\n\n"
                    last_sent = loop.time()
                seen = mark
                if await request.is_disconnected():
                    return
                await asyncio.sleep(settings.poll_seconds)

        return StreamingResponse(
            stream(), media_type="text/event-stream", headers={"x-accel-buffering": "no"}
        )

    # -- the JSON API --------------------------------------------------------------------------

    @app.get("/api/environments", tags=["read"])
    def api_environments() -> list[str]:
        """The project's environments."""
        return views.environments()

    @app.get("/api/status/{env}", tags=["read"])
    def api_status(env: EnvName) -> dict[str, Any]:
        """What runs in an environment: release, services, their URLs and instances, any lock
        (``airlock status``)."""
        return views.status(env)

    @app.get("/api/history", tags=["read"])
    def api_history(
        env: Annotated[str | None, Query(pattern=ENV_PATTERN)] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    ) -> list[dict[str, Any]]:
        """Deployments, newest first, of one environment or all (``airlock history``)."""
        return [d.to_dict() for d in api.history(settings.project, env, limit)]

    @app.get("/api/releases", tags=["read"])
    def api_releases() -> list[dict[str, Any]]:
        """Every sealed release, newest first (``airlock release list``)."""
        return views.releases()

    @app.get("/api/releases/{ref}", tags=["read"])
    def api_release(ref: ReleaseRef) -> dict[str, Any]:
        """A release: its files, gate runs and approvals (``airlock release show``)."""
        return views.release(ref)

    @app.get("/api/releases/{ref}/evidence", tags=["read"])
    def api_release_evidence(ref: ReleaseRef) -> dict[str, Any]:
        """A release's go/no-go reports in full and each of its deployments with what its bake
        measured and what its migrations did."""
        return api.release_evidence(settings.project, ref)

    @app.get("/api/metrics", tags=["read"])
    def api_metrics(
        env: Annotated[str | None, Query(pattern=ENV_PATTERN)] = None,
        since: Annotated[str | None, Query(max_length=40)] = None,
    ) -> list[dict[str, Any]]:
        """Delivery metrics per environment (``airlock metrics``)."""
        compute = getattr(api, "metrics", None)
        if compute is None:
            raise Unavailable("delivery metrics are not available in this version")
        return [item.to_dict() for item in compute(settings.project, env, since)]

    @app.get("/api/audit", tags=["read"])
    def api_audit(
        env: Annotated[str | None, Query(pattern=ENV_PATTERN)] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    ) -> list[dict[str, Any]]:
        """The audit log's newest entries (``airlock audit show``)."""
        show = getattr(api, "audit_show", None)
        if show is None:
            raise Unavailable("the audit log is not available in this version")
        entries: list[dict[str, Any]] = show(settings.project, env, limit)
        return entries

    @app.get("/api/audit/verify", tags=["read"])
    def api_audit_verify() -> dict[str, Any]:
        """Whether the audit log verifies (``airlock audit verify``)."""
        verify = getattr(api, "audit_verify", None)
        if verify is None:
            raise Unavailable("the audit log is not available in this version")
        report: dict[str, Any] = verify(settings.project)
        return report

    @app.post("/api/approve", tags=["write"])
    def api_approve(body: Annotated[ApproveRequest, Body()]) -> dict[str, Any]:
        """Approve a release's GO report for an environment (``airlock approve``). Needs the
        token as a bearer."""
        return api.approve(
            settings.project, body.env, body.release, approver=body.by, note=body.note
        )

    @app.post("/api/rollback", tags=["write"])
    def api_rollback(body: Annotated[RollbackRequest, Body()]) -> dict[str, Any]:
        """Roll an environment back to the previous good release, or ``to`` (``airlock
        rollback``). Needs the token as a bearer."""
        return api.rollback(settings.project, body.env, body.to).to_dict()

    app.add_middleware(Guard, settings=settings)
    return app


class Unavailable(AirlockError):
    """A function the library of this version does not have (answered 501)."""


async def _form(request: Request) -> dict[str, str]:
    """An ``application/x-www-form-urlencoded`` body (the pages' forms), at most 64 KiB."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > 65536:
            break
    fields = parse_qs(body[:65536].decode("utf-8", errors="replace"), keep_blank_values=True)
    return {key: values[-1] for key, values in fields.items()}


def _next(request: Request) -> str:
    target: str = request.query_params.get("next") or "/"
    return target if target.startswith("/") and not target.startswith("//") else "/"
