"""The ``local`` runtime: service processes on this machine, supervised by an agent.

Each environment directory gets one detached agent process
(:mod:`airlock.runtimes.agent`) that owns the environment's service processes and the stable
port of every service. :class:`LocalRuntime` is its client: every call opens a short TCP
connection to the agent, so a release can span several CLI commands, each with its own
``asyncio.run(...)``. The agent is started on demand by :meth:`LocalRuntime.endpoint` and
:meth:`LocalRuntime.start`; the read-only calls never start one.

Files in the environment directory:

``agent.json``
    pid, control port and token of the running agent (mode 0600).
``agent.log``
    the agent's own log (never any environment value).
``ports.json``
    the stable port of every service, kept across agent restarts.
``instances.json``
    the agent's processes, so that a new agent can kill those of a killed one.
``logs/<service>.log``
    the output of the service's instances, secret values masked.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import psutil

import airlock
from airlock.errors import AirlockError, PortInUseError, RuntimeFailure, UsageError
from airlock.paths import env_dir
from airlock.runtimes import (
    CheckResult,
    Endpoint,
    FetchResult,
    HostCheck,
    InstanceSpec,
    InstanceStatus,
    ProbeResult,
)
from airlock.runtimes.agent import (
    AGENT_FILE,
    EXIT_ALREADY_RUNNING,
    HOST,
    LOG_DIR,
    TERM_GRACE,
    kill_recorded_instances,
    read_json,
    service_log_file,
)
from airlock.runtimes.control import (
    AgentInfo,
    NoAnswer,
    decode_reply,
    encode_request,
    explain,
    status_from,
)

if TYPE_CHECKING:
    from airlock.model import LocalRuntimeModel, Project

__all__ = ["LocalRuntime", "agent_running", "log_path", "open_runtime", "stop_environment"]

#: Time a freshly started agent gets to answer.
AGENT_START_TIMEOUT = 10.0
#: Time a probe request gets.
PROBE_TIMEOUT = 1.0
#: Time a fetch (e.g. a scrape of ``/metrics``) gets, and the most of its body that is read.
FETCH_TIMEOUT = 2.0
FETCH_LIMIT = 1024 * 1024
#: Time ``stop_environment`` waits for the agent to stop everything and exit.
SHUTDOWN_TIMEOUT = 3 * TERM_GRACE + 5.0
_AGENT_LOG = "agent.log"
_AGENT_MODULE = "airlock.runtimes.agent"
_REPLY_LIMIT = 16 * 1024 * 1024

# Agents this process started: polling them reaps them, so they never linger as zombies.
_children: dict[int, subprocess.Popen[bytes]] = {}


# -- module-level helpers ----------------------------------------------------------------------


def log_path(env_dir: Path, service: str) -> Path:
    """The file the output of ``service``'s instances goes to."""
    return Path(env_dir) / service_log_file(service)


def agent_running(env_dir: Path) -> bool:
    """Whether an agent runs for ``env_dir`` and answers."""
    info = _read_agent_info(Path(env_dir))
    if info is None or not _pid_alive(info.pid):
        return False
    try:
        _sync_call(info, {"op": "ping"}, timeout=2.0)
    except NoAnswer:
        return False
    return True


def stop_environment(env_dir: Path) -> bool:
    """Stop the agent of ``env_dir`` and every process it runs; wait until they are gone.

    Returns whether an agent was running. Processes left behind by an agent that was killed
    are stopped as well.
    """
    env_dir = Path(env_dir)
    info = _read_agent_info(env_dir)
    if info is None or not _is_agent(info.pid):
        kill_recorded_instances(env_dir)  # what a killed agent may have left behind
        if info is not None:
            with contextlib.suppress(OSError):
                (env_dir / AGENT_FILE).unlink()
        return False
    with contextlib.suppress(NoAnswer):
        _sync_call(info, {"op": "shutdown"}, timeout=SHUTDOWN_TIMEOUT)
    if not _wait_gone(info.pid, SHUTDOWN_TIMEOUT):
        # the agent does not answer or hangs: signal it, then clean up behind it
        for sig, wait in ((signal.SIGTERM, SHUTDOWN_TIMEOUT), (signal.SIGKILL, 5.0)):
            if not _is_agent(info.pid):
                break
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(info.pid, sig)
            if _wait_gone(info.pid, wait):
                break
        kill_recorded_instances(env_dir)
        current = _read_agent_info(env_dir)
        if current is not None and current.pid == info.pid:
            with contextlib.suppress(OSError):
                (env_dir / AGENT_FILE).unlink()
    return True


def _read_agent_info(env_dir: Path) -> AgentInfo | None:
    return AgentInfo.from_json(read_json(env_dir / AGENT_FILE))


def _pid_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not count)."""
    child = _children.get(pid)
    if child is not None:
        if child.poll() is None:
            return True
        del _children[pid]
        return False
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _is_agent(pid: int) -> bool:
    """Whether ``pid`` is alive and is an Airlock agent (not a program that reused the pid)."""
    if not _pid_alive(pid):
        return False
    try:
        return _AGENT_MODULE in " ".join(psutil.Process(pid).cmdline())
    except psutil.Error:
        return False


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _pid_alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)
    return True


def _sync_call(info: AgentInfo, request: dict[str, Any], timeout: float) -> dict[str, Any]:
    try:
        with socket.create_connection(("127.0.0.1", info.port), timeout=timeout) as sock:
            sock.sendall(encode_request(info.token, request))
            with sock.makefile("rb") as stream:
                return decode_reply(stream.readline(_REPLY_LIMIT))
    except OSError as exc:
        raise NoAnswer(exc.strerror or str(exc) or type(exc).__name__) from None


async def _async_call(info: AgentInfo, request: dict[str, Any], timeout: float) -> dict[str, Any]:
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", info.port, limit=_REPLY_LIMIT), 5.0
        )
    except (OSError, TimeoutError) as exc:
        raise NoAnswer(getattr(exc, "strerror", None) or "cannot connect") from None
    try:
        writer.write(encode_request(info.token, request))
        await writer.drain()
        return decode_reply(await asyncio.wait_for(reader.readline(), timeout))
    except TimeoutError:
        raise NoAnswer(f"no answer within {timeout:g} s") from None
    except (OSError, ValueError) as exc:
        raise NoAnswer(getattr(exc, "strerror", None) or str(exc)) from None
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


def _log_tail(path: Path, lines: int = 5) -> str:
    """The last lines of the agent's log, without traceback frames."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    kept = [
        line
        for line in text.splitlines()
        if line.strip() and not line.startswith((" ", "\t", "Traceback"))
    ]
    return "\n".join(kept[-lines:])


# -- the runtime -------------------------------------------------------------------------------


def _request(check: HostCheck) -> dict[str, Any]:
    """A host check as :mod:`airlock.runtimes.hostcheck` takes it; a service is on 127.0.0.1."""
    return {"kind": check.kind, **check.args, **({"host": HOST} if check.to_service else {})}


def open_runtime(
    project: Project, env: str, settings: LocalRuntimeModel, *, root: Path
) -> LocalRuntime:
    """The local runtime of ``env``: its agent lives in ``settings.dir`` (relative to the
    project) or ``.airlock/envs/ENV``."""
    if settings.dir:
        folder = Path(os.path.expanduser(settings.dir.replace("{env}", env)))
        folder = folder if folder.is_absolute() else root / folder
    else:
        folder = env_dir(root, env)
    return LocalRuntime(folder, env)


class LocalRuntime:
    """Runs services as local processes through the environment's agent."""

    name = "local"

    def __init__(self, env_dir: Path, env: str, *, start_agent: bool = True) -> None:
        self.env_dir = Path(env_dir)
        self.env = env
        self.start_agent = start_agent
        self._info: AgentInfo | None = None

    # -- Runtime protocol ---------------------------------------------------------------------

    @property
    def data_dir(self) -> str:
        return str(self.env_dir / "data")

    async def endpoint(self, service: str, port: int | None) -> Endpoint:
        """Bind the stable port of ``service`` (``port``, the remembered one, or a free one)."""
        (self.env_dir / "data").mkdir(parents=True, exist_ok=True)
        result = await self._request(
            {"op": "endpoint", "service": service, "port": port}, timeout=15.0, start=True
        )
        return Endpoint(HOST, int(result["port"]))

    async def start(self, spec: InstanceSpec) -> InstanceStatus:
        """Start an instance next to the serving one; it gets no traffic until :meth:`switch`.

        ``python``/``python3`` at the head of its command means the interpreter running Airlock.
        """
        if spec.argv and spec.argv[0] in {"python", "python3"}:
            spec = replace(spec, argv=(sys.executable, *spec.argv[1:]))
        result = await self._request(
            {"op": "start", "spec": asdict(spec)}, timeout=20.0, start=True
        )
        return status_from(result)

    async def probe(self, instance_id: str, path: str) -> ProbeResult:
        """GET ``path`` on the instance's own port (1 s timeout); 2xx is healthy."""
        instance, result = await self._get(instance_id, path, PROBE_TIMEOUT)
        if instance is None:
            return ProbeResult(ok=False, detail=result.detail, exited=True)
        exited = not instance.running or instance.exits > 0
        return ProbeResult(result.ok, result.detail, exited)

    async def fetch(self, instance_id: str, path: str, *, host: str | None = None) -> FetchResult:
        """GET ``path`` on the instance's own port; its status and (at most ``FETCH_LIMIT``
        bytes of) body. No answer within ``FETCH_TIMEOUT`` gives ``status=None``, never an
        exception."""
        try:
            return (await self._get(instance_id, path, FETCH_TIMEOUT))[1]
        except AirlockError as exc:
            path = path if path.startswith("/") else "/" + path
            return FetchResult(None, f"GET {path} → {exc.message.splitlines()[0]}")

    async def _get(
        self, instance_id: str, path: str, timeout: float
    ) -> tuple[InstanceStatus | None, FetchResult]:
        """GET ``path`` on the instance's own port: the instance (None when it is not running)
        and what it answered. Raises only when the agent cannot be asked for the instance."""
        path = path if path.startswith("/") else "/" + path
        found = [s for s in await self.status() if s.instance_id == instance_id]
        if not found:
            detail = f"instance {instance_id} is not running in environment {self.env!r}"
            return None, FetchResult(None, detail)
        instance = found[0]
        url = f"http://127.0.0.1:{instance.port}{path}"
        chunks: list[bytes] = []
        size = 0
        try:
            async with (
                _local_client(timeout) as client,
                client.stream("GET", url) as response,
            ):
                async for chunk in response.aiter_bytes():
                    chunks.append(chunk)
                    size += len(chunk)
                    if size > FETCH_LIMIT:
                        break
        except httpx.ConnectError:
            return instance, FetchResult(None, f"GET {path} → connection refused")
        except httpx.TimeoutException:
            return instance, FetchResult(None, f"GET {path} → no answer within {timeout:g} s")
        except httpx.HTTPError as exc:
            return instance, FetchResult(None, f"GET {path} → {type(exc).__name__}")
        data = b"".join(chunks)
        truncated = len(data) > FETCH_LIMIT
        text = data[:FETCH_LIMIT].decode(response.encoding or "utf-8", errors="replace")
        detail = f"GET {path} → {response.status_code}"
        if not 200 <= response.status_code < 300:
            body = explain(text)
            detail += f": {body}" if body else ""
        return instance, FetchResult(response.status_code, detail, text, truncated)

    async def switch(self, service: str, instance_id: str) -> None:
        """Route the service's next requests to ``instance_id``."""
        await self._request(
            {"op": "switch", "service": service, "instance_id": instance_id}, timeout=10.0
        )

    async def stop(
        self, instance_id: str, *, drain_seconds: float = 5.0, force: bool = False
    ) -> None:
        """Drain and stop one instance; one that serves traffic is refused unless ``force``."""
        if not await self._connected():
            return  # no agent, so nothing of this environment runs
        await self._request(
            {
                "op": "stop",
                "instance_id": instance_id,
                "drain_seconds": drain_seconds,
                "force": force,
            },
            timeout=drain_seconds + 3 * TERM_GRACE + 5.0,
        )

    async def status(self) -> list[InstanceStatus]:
        """Every instance of the environment (none when no agent runs)."""
        if not await self._connected():
            return []
        result = await self._request({"op": "status"}, timeout=10.0)
        return [status_from(item) for item in result["instances"]]

    async def endpoints(self) -> dict[str, Endpoint]:
        """The stable endpoint of every service that has one bound now."""
        if not await self._connected():
            return {}
        result = await self._request({"op": "status"}, timeout=10.0)
        return {str(k): Endpoint(HOST, int(v)) for k, v in result["services"].items()}

    async def logs(self, service: str, lines: int) -> list[str]:
        """The last ``lines`` lines of the service's log file (masked by the agent)."""
        path = log_path(self.env_dir, service)
        if not path.is_file():
            raise UsageError(
                f"no logs for {service!r} in {self.env!r} yet ({path})",
                hint=f"deploy first: `airlock deploy {self.env}`",
            )
        with path.open(encoding="utf-8", errors="replace") as handle:
            return [line.rstrip("\n") for line in deque(handle, maxlen=lines)]

    async def log_files(self) -> dict[str, Path]:
        folder = self.env_dir / LOG_DIR
        found = sorted(folder.glob("*.log")) if folder.is_dir() else []
        return {path.stem: path for path in found}

    async def shutdown(self) -> bool:
        """Stop every instance and the agent; return once they are all gone."""
        self._info = None
        return await asyncio.to_thread(stop_environment, self.env_dir)

    async def check_hosts(self, checks: Sequence[HostCheck]) -> list[CheckResult]:
        """Run the checks on this machine; a ``connect`` to a service goes to its stable port
        on 127.0.0.1, held open here for the time of the checks where nothing listens."""
        from airlock.runtimes import hostcheck

        where = socket.gethostname()
        wanted = sorted({int(c.args["port"]) for c in checks if c.to_service is not None})

        def work() -> list[CheckResult]:
            alone = [i for i, c in enumerate(checks) if c.to_service is None]
            paths = [i for i, c in enumerate(checks) if c.to_service is not None]
            answers: dict[int, dict[str, Any]] = dict(
                zip(alone, hostcheck.run_checks([_request(checks[i]) for i in alone]), strict=True)
            )
            sockets, _held, _busy = hostcheck.hold_ports(wanted, HOST)
            try:
                found = hostcheck.run_checks([_request(checks[i]) for i in paths])
                answers.update(zip(paths, found, strict=True))
            finally:
                for sock in sockets:
                    sock.close()
            return [
                CheckResult(
                    check=check,
                    host=where,
                    ok=bool(answer.get("ok")),
                    detail=str(answer.get("detail", "")),
                    target=f"{HOST}:{check.args['port']}" if check.to_service else None,
                    data=answer,
                )
                for check, answer in zip(
                    checks, (answers[i] for i in range(len(checks))), strict=True
                )
            ]

        return await asyncio.to_thread(work)

    # -- talking to the agent -----------------------------------------------------------------

    async def _request(
        self, request: dict[str, Any], *, timeout: float, start: bool = False
    ) -> dict[str, Any]:
        info = await self._agent(start=start)
        try:
            reply = await _async_call(info, request, timeout)
        except NoAnswer as exc:
            self._info = None
            raise RuntimeFailure(
                f"the agent of environment {self.env!r} (pid {info.pid}) did not answer "
                f"{request['op']!r}: {exc}",
                hint=self._log_hint(),
            ) from None
        if not reply.get("ok"):
            raise self._failure(request, reply.get("error"))
        result = reply.get("result")
        return result if isinstance(result, dict) else {}

    async def _connected(self) -> bool:
        """Whether an agent runs (connecting to it without starting one)."""
        try:
            await self._agent(start=False)
        except RuntimeFailure:
            return False
        return True

    async def _agent(self, *, start: bool) -> AgentInfo:
        if self._info is not None and _pid_alive(self._info.pid):
            return self._info
        self._info = None
        info = await self._find_agent()
        if info is None:
            if not (start and self.start_agent):
                raise RuntimeFailure(
                    f"no agent runs for environment {self.env!r} ({self.env_dir})",
                    hint="deploy the environment first; its agent starts with the first release",
                )
            info = await self._launch_agent()
        self._info = info
        return info

    async def _find_agent(self) -> AgentInfo | None:
        info = _read_agent_info(self.env_dir)
        if info is None or not _pid_alive(info.pid):
            return None
        try:
            reply = await _async_call(info, {"op": "ping"}, timeout=2.0)
        except NoAnswer:
            return None
        return info if reply.get("ok") else None

    async def _launch_agent(self) -> AgentInfo:
        self.env_dir.mkdir(parents=True, exist_ok=True)
        stale = _read_agent_info(self.env_dir)
        log_file = self.env_dir / _AGENT_LOG
        env = dict(os.environ)
        # make sure the agent imports this very copy of Airlock
        package_root = str(Path(airlock.__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (package_root, env.get("PYTHONPATH", "")) if p
        )
        fd = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    _AGENT_MODULE,
                    "--env-dir",
                    str(self.env_dir.resolve()),
                    "--env",
                    self.env,
                ],
                start_new_session=True,
                stdin=subprocess.DEVNULL,
                stdout=fd,
                stderr=fd,
                close_fds=True,
                cwd=str(self.env_dir),
                env=env,
            )
        except OSError as exc:
            raise RuntimeFailure(
                f"cannot start the agent of environment {self.env!r}: "
                f"{exc.strerror or type(exc).__name__}",
                hint=f"check that {sys.executable} can run",
            ) from None
        finally:
            os.close(fd)
        _children[proc.pid] = proc
        deadline = time.monotonic() + AGENT_START_TIMEOUT
        while time.monotonic() < deadline:
            info = _read_agent_info(self.env_dir)
            if info is not None and info != stale and _pid_alive(info.pid):
                with contextlib.suppress(NoAnswer):
                    reply = await _async_call(info, {"op": "ping"}, timeout=2.0)
                    if reply.get("ok"):
                        return info
            code = proc.poll()
            if code is not None and code != EXIT_ALREADY_RUNNING:
                raise RuntimeFailure(
                    f"the agent of environment {self.env!r} exited at start (code {code})"
                    + self._tail_text(),
                    hint=f"see {log_file}",
                )
            await asyncio.sleep(0.02)
        raise RuntimeFailure(
            f"the agent of environment {self.env!r} did not answer within "
            f"{AGENT_START_TIMEOUT:g} s" + self._tail_text(),
            hint=f"see {log_file}; if an old agent hangs, stop it and retry",
        )

    def _tail_text(self) -> str:
        tail = _log_tail(self.env_dir / _AGENT_LOG)
        return f"; last lines of agent.log:\n{tail}" if tail else ""

    def _log_hint(self) -> str:
        return f"see {self.env_dir / _AGENT_LOG}"

    def _failure(self, request: dict[str, Any], error: Any) -> AirlockError:
        if not isinstance(error, dict):
            error = {}
        code = str(error.get("code", "unknown"))
        message = str(error.get("message", "the agent reported an unknown error"))
        service = error.get("service") or request.get("service") or "?"
        if code == "port_in_use":
            holder = error.get("holder") or "another program"
            return PortInUseError(
                f"port {error.get('port')} needed by service {service!r} in environment "
                f"{self.env!r} is already in use by {holder}; stop that program or choose "
                "another port in airlock.yaml"
            )
        hints = {
            "spawn_failed": "check the service's command and working directory in airlock.yaml",
            "bind_failed": "choose another port for the service in airlock.yaml",
            "instance_serving": "switch the service to another instance before stopping this one",
            "unknown_instance": "run `airlock status` to see the instances that run now",
            "no_endpoint": "give the service its stable port (endpoint) before switching",
        }
        return RuntimeFailure(
            f"local runtime, environment {self.env!r}: {message}",
            hint=hints.get(code, self._log_hint()),
        )


def _local_client(timeout: float) -> httpx.AsyncClient:
    """A client for plain HTTP on 127.0.0.1: no proxies from the environment, and no TLS
    context (loading the CA bundle costs ~70 ms a client, and the bake polls every instance
    several times a second)."""
    return httpx.AsyncClient(timeout=timeout, trust_env=False, verify=False)
