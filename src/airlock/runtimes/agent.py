"""The per-environment agent of the ``local`` and ``ssh`` runtimes.

The agent is a small detached process, one per environment directory. It owns the service
processes of that environment and their stable ports, so a release started from one CLI
command can be switched or stopped from the next one::

    python -m airlock.runtimes.agent --env-dir DIR --env NAME [--listen-host ADDRESS]

The ``local`` runtime runs it on this machine; the ``ssh`` runtime ships this module (with
``proxy``, ``masking``, ``h11`` and ``psutil``) to each host of a fleet and runs it there with the
host's own ``python3`` (3.11+), so it imports nothing else of Airlock and no other package.

What it does:

* listens for control requests on ``127.0.0.1`` (a random port): newline-delimited JSON over
  TCP, each request carrying the random token written, with the port and pid, to
  ``DIR/agent.json`` (mode 0600; removed on exit);
* binds one :class:`~airlock.runtimes.proxy.ServiceProxy` per service on its stable port
  (remembered in ``DIR/ports.json``) and switches it between instances; the proxies listen on
  ``127.0.0.1`` unless ``--listen-host`` names another address (a fleet host's own address, or
  ``0.0.0.0``); instances always listen on ``127.0.0.1``;
* remembers, per service, the instance that served before the last switch, so that stopping the
  serving instance with ``force`` and ``fallback`` hands the traffic back to it;
* answers ``get``: a GET of a path on an instance's own port, made here (where the instance
  runs), for probes and scrapes of remote instances;
* starts instances in their own process group with a free backend port in ``PORT``, restarts an
  instance that exits on its own with exponential backoff, and stops instances by draining
  their in-flight requests, then ``SIGTERM``, then ``SIGKILL`` of the whole group;
* copies each instance's output to ``DIR/logs/<service>.log`` with secret values masked;
* records its instances in ``DIR/instances.json`` so that the next agent can kill the ones an
  agent killed with ``SIGKILL`` left behind.

Requests are ``{"token": ..., "op": ..., ...}``; replies are ``{"ok": true, "result": ...}`` or
``{"ok": false, "error": {"code": ..., "message": ..., ...}}``. The agent never writes an
environment value anywhere (instances get theirs in memory, through ``exec``), nor its token
anywhere but ``agent.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import fcntl
import functools
import hmac
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

import h11
import psutil

from airlock.masking import Masker
from airlock.runtimes import InstanceSpec, InstanceStatus
from airlock.runtimes.proxy import ServiceProxy

__all__ = [
    "AGENT_FILE",
    "EXIT_ALREADY_RUNNING",
    "INSTANCES_FILE",
    "LOCK_FILE",
    "PORTS_FILE",
    "Agent",
    "AgentError",
    "kill_recorded_instances",
    "main",
    "mask",
    "service_log_file",
]

log = logging.getLogger("airlock.agent")

AGENT_FILE = "agent.json"
PORTS_FILE = "ports.json"
INSTANCES_FILE = "instances.json"
LOCK_FILE = "agent.lock"
LOG_DIR = "logs"

#: Exit code of an agent that found another agent already running for its directory.
EXIT_ALREADY_RUNNING = 3

HOST = "127.0.0.1"
#: Time a process group gets between SIGTERM and SIGKILL.
TERM_GRACE = 5.0
DEFAULT_DRAIN_SECONDS = 5.0
BACKOFF_FIRST = 0.25
BACKOFF_MAX = 30.0
#: An instance that stayed up this long before exiting restarts with the first backoff again.
BACKOFF_RESET_AFTER = 60.0
#: A log line longer than this is written in pieces.
MAX_LOG_LINE = 1024 * 1024
#: Largest control request line.
MAX_REQUEST = 4 * 1024 * 1024
#: ``get``: the longest a GET may take, and the largest body it returns.
MAX_GET_TIMEOUT = 30.0
MAX_GET_BYTES = 16 * 1024 * 1024
#: Time the readiness check of ``switch`` gets.
SWITCH_READY_TIMEOUT = 1.0

# Variables a service inherits from the agent unless its spec sets them.
_INHERITED_ENV = ("PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LC_ALL", "LC_CTYPE", "TZ")


class AgentError(Exception):
    """A control request failed; becomes an error reply with ``code`` and extra ``data``."""

    def __init__(self, code: str, message: str, **data: Any) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data


# -- small helpers shared with the client -------------------------------------------------------


def mask(text: str, secret_values: Iterable[str]) -> str:
    """``text`` with every secret value, and its common encodings, replaced by ``****``."""
    return Masker(*secret_values).mask(text)


def write_private_json(path: Path, data: Any) -> None:
    """Write ``data`` as JSON to ``path`` atomically, readable by the owner only."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=2, sort_keys=True)
        fh.write("\n")
    os.replace(tmp, path)


def read_json(path: Path) -> Any:
    """The JSON content of ``path``, or ``None`` when it is missing or unreadable."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _same_process(pid: int, create_time: float | None) -> psutil.Process | None:
    """The live process ``pid`` if it is the one created at ``create_time``."""
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        if create_time is not None and abs(proc.create_time() - create_time) > 0.05:
            return None
        return proc
    except (psutil.Error, OSError):
        return None


def _signal_group(pid: int, sig: int) -> None:
    """Send ``sig`` to the process group led by ``pid`` (or to ``pid`` alone if it leads none)."""
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def kill_recorded_instances(env_dir: Path, *, grace: float = TERM_GRACE) -> list[int]:
    """Kill the process groups recorded in ``instances.json`` that are still alive.

    A process counts only if both its pid and its creation time match the record, so a pid
    reused by an unrelated program is left alone. Returns the pids that were killed.
    """
    records = read_json(env_dir / INSTANCES_FILE)
    if not isinstance(records, list):
        return []
    alive: list[psutil.Process] = []
    for record in records:
        if not isinstance(record, dict) or not isinstance(record.get("pid"), int):
            continue
        create_time = record.get("create_time")
        proc = _same_process(
            record["pid"], float(create_time) if isinstance(create_time, int | float) else None
        )
        if proc is not None and proc.pid != os.getpid():
            alive.append(proc)
    for proc in alive:
        _signal_group(proc.pid, signal.SIGTERM)
    _gone, still = psutil.wait_procs(alive, timeout=grace)
    for proc in still:
        _signal_group(proc.pid, signal.SIGKILL)
    if still:
        psutil.wait_procs(still, timeout=2.0)
    for proc in alive:  # leftovers of the groups whose leader is gone
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
    return [proc.pid for proc in alive]


def _port_holder(port: int) -> tuple[int | None, str | None]:
    """The pid and name of the process listening on ``port``, when the OS tells us."""
    try:
        connections = psutil.net_connections(kind="tcp")
    except (psutil.Error, OSError):
        return None, None
    for conn in connections:
        if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port:
            if conn.pid is None:
                return None, None
            try:
                return conn.pid, psutil.Process(conn.pid).name()
            except psutil.Error:
                return conn.pid, None
    return None, None


def _free_port(avoid: set[int]) -> int:
    """A TCP port on 127.0.0.1 that is free right now and not in ``avoid``."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((HOST, 0))
            port = int(sock.getsockname()[1])
        if port not in avoid:
            return port
    raise AgentError("no_free_port", "could not find a free TCP port on 127.0.0.1")


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


# -- instances ---------------------------------------------------------------------------------


@dataclass
class Instance:
    """One supervised instance of a service."""

    spec: InstanceSpec
    port: int
    env: dict[str, str]
    proc: asyncio.subprocess.Process | None = None
    create_time: float | None = None
    exits: int = 0
    last_exit_code: int | None = None
    stopping: bool = False
    started_at: float = 0.0
    supervisor: asyncio.Task[None] | None = None
    pump: asyncio.Task[None] | None = None
    wake: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    @property
    def secret_values(self) -> list[str]:
        return [self.spec.env[k] for k in self.spec.secret_keys if k in self.spec.env]

    @functools.cached_property
    def masker(self) -> Masker:
        return Masker(*self.secret_values)


class LogSink:
    """Appends lines to one service's log file (mode 0600), opened on first use."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fh: IO[str] | None = None

    def write(self, line: str) -> None:
        try:
            if self._fh is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
                self._fh = os.fdopen(fd, "a", encoding="utf-8", errors="replace")
            self._fh.write(line if line.endswith("\n") else line + "\n")
            self._fh.flush()
        except OSError as exc:
            log.warning("cannot write %s: %s", self.path, exc.strerror or exc)

    def close(self) -> None:
        if self._fh is not None:
            with contextlib.suppress(OSError):
                self._fh.close()
            self._fh = None


class _HostProxy(ServiceProxy):
    """A service proxy that listens on ``host`` (``ServiceProxy`` itself listens on 127.0.0.1)."""

    def __init__(self, service: str, host: str) -> None:
        super().__init__(service)
        self.host = host

    async def listen(self, port: int) -> int:
        if self.host == HOST:
            return await super().listen(port)
        server = await asyncio.start_server(
            self._on_client,
            self.host,
            port,
            reuse_address=True,
            backlog=256,
            limit=self.chunk_size,
        )
        self._server = server
        self._port = int(server.sockets[0].getsockname()[1])
        return self._port


async def http_get(port: int, path: str, timeout: float, limit: int) -> dict[str, Any]:
    """GET ``path`` on ``127.0.0.1:port``: ``{"status", "body", "truncated", "error"}``.

    ``status`` is ``None`` (and ``error`` says why) when no answer came within ``timeout``;
    ``body`` holds at most ``limit`` bytes of the answer, decoded as its charset says.
    """
    answer: dict[str, Any] = {"status": None, "body": "", "truncated": False, "error": None}
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(HOST, port)
            conn = h11.Connection(h11.CLIENT)
            request = h11.Request(
                method="GET",
                target=path,
                headers=[
                    ("Host", f"{HOST}:{port}"),
                    ("User-Agent", "airlock-agent"),
                    ("Connection", "close"),
                ],
            )
            writer.write(conn.send(request) + conn.send(h11.EndOfMessage()))
            await writer.drain()
            chunks: list[bytes] = []
            size = 0
            charset = "utf-8"
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(await reader.read(64 * 1024))
                    continue
                if isinstance(event, h11.Response):
                    answer["status"] = event.status_code
                    for name, value in event.headers:
                        if name == b"content-type" and b"charset=" in value:
                            raw = value.split(b"charset=", 1)[1].split(b";")[0]
                            charset = raw.decode("ascii", "replace").strip(" \"'") or "utf-8"
                elif isinstance(event, h11.Data):
                    chunks.append(bytes(event.data))
                    size += len(event.data)
                    if size > limit:
                        answer["truncated"] = True
                        break
                elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                    break
            data = b"".join(chunks)[:limit]
            try:
                answer["body"] = data.decode(charset, errors="replace")
            except LookupError:
                answer["body"] = data.decode("utf-8", errors="replace")
    except TimeoutError:
        answer.update(status=None, error=f"no answer within {timeout:g} s")
    except ConnectionRefusedError:
        answer.update(status=None, error="connection refused")
    except h11.ProtocolError as exc:
        answer.update(status=None, error=f"invalid HTTP answer ({exc})")
    except (ConnectionError, OSError) as exc:
        answer.update(status=None, error=exc.strerror or type(exc).__name__)
    finally:
        if writer is not None:
            writer.close()
    return answer


# -- the agent ---------------------------------------------------------------------------------


class Agent:
    """The agent of one environment directory; its proxies listen on ``listen_host``."""

    def __init__(self, env_dir: Path, env: str, *, listen_host: str = HOST) -> None:
        self.env_dir = env_dir
        self.env = env
        self.listen_host = listen_host
        self.token = secrets.token_urlsafe(32)
        self.instances: dict[str, Instance] = {}
        self.proxies: dict[str, ServiceProxy] = {}
        #: service → the instance that served it before the last switch
        self.previous: dict[str, str] = {}
        self.logs: dict[str, LogSink] = {}
        self._endpoint_lock = asyncio.Lock()
        self._exit = asyncio.Event()
        self._shutdown_task: asyncio.Task[None] | None = None
        self._server: asyncio.Server | None = None
        self._control: set[asyncio.StreamWriter] = set()
        self._ops: dict[str, Callable[[dict[str, Any]], Awaitable[Any]]] = {
            "ping": self.op_ping,
            "endpoint": self.op_endpoint,
            "start": self.op_start,
            "switch": self.op_switch,
            "stop": self.op_stop,
            "status": self.op_status,
            "get": self.op_get,
            "shutdown": self.op_shutdown,
        }

    # -- life cycle ---------------------------------------------------------------------------

    async def run(self) -> int:
        """Serve until asked to shut down; returns the exit code."""
        self.env_dir.mkdir(parents=True, exist_ok=True)
        lock_fd = os.open(self.env_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(lock_fd)
            log.info("another agent already runs for %s; exiting", self.env_dir)
            return EXIT_ALREADY_RUNNING
        try:
            return await self._run_locked()
        finally:
            os.close(lock_fd)  # releases the lock

    async def _run_locked(self) -> int:
        killed = await asyncio.to_thread(kill_recorded_instances, self.env_dir)
        if killed:
            log.info("killed %d instance(s) left behind by a previous agent", len(killed))
        self._save_instances()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal)
        self._server = await asyncio.start_server(
            self._on_control, HOST, 0, limit=MAX_REQUEST, reuse_address=True
        )
        port = int(self._server.sockets[0].getsockname()[1])
        write_private_json(
            self.env_dir / AGENT_FILE,
            {"pid": os.getpid(), "port": port, "token": self.token, "started_at": _now()},
        )
        log.info(
            "agent for environment %r listening on %s:%d (pid %d)",
            self.env,
            HOST,
            port,
            os.getpid(),
        )
        try:
            await self._exit.wait()
            if self._shutdown_task is not None:
                await self._shutdown_task
        finally:
            await self._stop_everything()
            self._remove_agent_file()
            self._server.close()
            for writer in list(self._control):
                writer.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)
        log.info("agent for environment %r stopped", self.env)
        return 0

    def _on_signal(self) -> None:
        self._begin_shutdown()
        self._exit.set()

    def _begin_shutdown(self) -> asyncio.Task[None]:
        if self._shutdown_task is None:
            self._shutdown_task = asyncio.get_running_loop().create_task(self._stop_everything())
        return self._shutdown_task

    async def _stop_everything(self) -> None:
        await asyncio.gather(*(self._terminate(inst) for inst in list(self.instances.values())))
        self.instances.clear()
        self._save_instances()
        await asyncio.gather(*(proxy.close() for proxy in self.proxies.values()))
        self.proxies.clear()
        for sink in self.logs.values():
            sink.close()

    def _remove_agent_file(self) -> None:
        path = self.env_dir / AGENT_FILE
        data = read_json(path)
        if isinstance(data, dict) and data.get("pid") == os.getpid():
            with contextlib.suppress(OSError):
                path.unlink()

    # -- control connections ------------------------------------------------------------------

    async def _on_control(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._control.add(writer)
        try:
            while True:
                try:
                    line = await reader.readline()
                except (ValueError, asyncio.LimitOverrunError):
                    await self._send(writer, self._error_reply("bad_request", "request too large"))
                    return
                if not line:
                    return
                try:
                    request = json.loads(line)
                    if not isinstance(request, dict):
                        raise ValueError
                except ValueError:
                    await self._send(writer, self._error_reply("bad_request", "not a JSON object"))
                    return
                token = request.get("token")
                if not isinstance(token, str) or not hmac.compare_digest(
                    token.encode(), self.token.encode()
                ):
                    await self._send(writer, self._error_reply("unauthorized", "bad token"))
                    return
                if request.get("op") != "shutdown":
                    await self._send(writer, await self._dispatch(request))
                    continue
                try:  # reply first, then let run() finish the exit
                    await self._send(writer, await self._dispatch(request))
                finally:
                    self._exit.set()
                return
        except (ConnectionError, OSError):
            pass
        finally:
            self._control.discard(writer)
            writer.close()

    async def _dispatch(self, request: dict[str, Any]) -> dict[str, Any]:
        op = request.get("op")
        handler = self._ops.get(op) if isinstance(op, str) else None
        if handler is None:
            return self._error_reply("unknown_op", f"unknown operation {op!r}")
        try:
            return {"ok": True, "result": await handler(request)}
        except AgentError as exc:
            return self._error_reply(exc.code, exc.message, **exc.data)
        except Exception as exc:  # reply instead of dying; details go to agent.log
            log.exception("operation %r failed", op)
            return self._error_reply(
                "internal", f"{op} failed inside the agent: {type(exc).__name__}"
            )

    @staticmethod
    def _error_reply(code: str, message: str, **data: Any) -> dict[str, Any]:
        return {"ok": False, "error": {"code": code, "message": message, **data}}

    @staticmethod
    async def _send(writer: asyncio.StreamWriter, reply: dict[str, Any]) -> None:
        writer.write(json.dumps(reply).encode() + b"\n")
        await writer.drain()

    # -- operations ---------------------------------------------------------------------------

    async def op_ping(self, request: dict[str, Any]) -> dict[str, Any]:
        return {"pid": os.getpid(), "env": self.env}

    async def op_endpoint(self, request: dict[str, Any]) -> dict[str, Any]:
        service = _required_str(request, "service")
        wanted = request.get("port")
        if wanted is not None and (not isinstance(wanted, int) or not 0 < wanted < 65536):
            raise AgentError("bad_request", f"invalid port {wanted!r} for service {service!r}")
        async with self._endpoint_lock:
            return {"service": service, "port": await self._endpoint(service, wanted)}

    async def _endpoint(self, service: str, wanted: int | None) -> int:
        current = self.proxies.get(service)
        if current is not None and (wanted is None or wanted == current.port):
            return current.port
        remembered = self._load_ports().get(service)
        port = wanted if wanted is not None else remembered
        proxy = _HostProxy(service, self.listen_host)
        if port is not None:
            try:
                await proxy.listen(port)
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:
                    reason = os.strerror(exc.errno) if exc.errno else str(exc)
                    raise AgentError(
                        "bind_failed",
                        f"cannot listen on {self.listen_host}:{port} for service {service!r}: "
                        f"{reason}",
                        port=port,
                        service=service,
                    ) from None
                if wanted is not None:
                    raise self._port_in_use(service, port) from None
                # an automatic port another program took meanwhile: pick a new one
                log.warning(
                    "remembered port %d of service %r is taken; choosing another", port, service
                )
                await proxy.listen(0)
        else:
            await proxy.listen(0)
        if current is not None:  # the service moved to another port
            proxy.switch(current.backend)
            del self.proxies[service]
            asyncio.get_running_loop().create_task(current.close(grace=DEFAULT_DRAIN_SECONDS))
        self.proxies[service] = proxy
        ports = self._load_ports()
        ports[service] = proxy.port
        write_private_json(self.env_dir / PORTS_FILE, ports)
        log.info("service %r has stable port %s:%d", service, self.listen_host, proxy.port)
        return proxy.port

    def _port_in_use(self, service: str, port: int) -> AgentError:
        holder: str | None = None
        pid, name = None, None
        for other, proxy in self.proxies.items():
            if proxy.port == port:
                holder = f"service {other!r} of this environment"
        for inst in self.instances.values():
            if inst.port == port:
                holder = f"instance {inst.spec.instance_id} of service {inst.spec.service!r}"
        if holder is None:
            pid, name = _port_holder(port)
            if pid is not None:
                holder = f"pid {pid} ({name})" if name else f"pid {pid}"
        return AgentError(
            "port_in_use",
            f"port {port} is already in use" + (f" by {holder}" if holder else ""),
            port=port,
            service=service,
            pid=pid,
            name=name,
            holder=holder,
        )

    def _load_ports(self) -> dict[str, int]:
        data = read_json(self.env_dir / PORTS_FILE)
        if not isinstance(data, dict):
            return {}
        return {k: v for k, v in data.items() if isinstance(k, str) and isinstance(v, int)}

    async def op_start(self, request: dict[str, Any]) -> dict[str, Any]:
        spec = _spec_from(request.get("spec"))
        if spec.instance_id in self.instances:
            raise AgentError(
                "instance_exists", f"instance {spec.instance_id} is already known to the agent"
            )
        env = {k: os.environ[k] for k in _INHERITED_ENV if k in os.environ}
        env["PYTHONUNBUFFERED"] = "1"
        env.update(spec.env)
        problem = _spawn_problem(spec, env)
        if problem is not None:
            raise AgentError("spawn_failed", mask(problem, _secret_values(spec)))
        avoid = {inst.port for inst in self.instances.values()}
        avoid.update(proxy.port for proxy in self.proxies.values())
        avoid.update(self._load_ports().values())
        port = _free_port(avoid)
        env["PORT"] = str(port)
        inst = Instance(spec=spec, port=port, env=env)
        await self._spawn(inst)  # raises AgentError(spawn_failed)
        self.instances[spec.instance_id] = inst
        self._save_instances()
        inst.supervisor = asyncio.get_running_loop().create_task(self._supervise(inst))
        return asdict(self._status_of(inst))

    async def op_switch(self, request: dict[str, Any]) -> dict[str, Any]:
        service = _required_str(request, "service")
        inst = self._instance(_required_str(request, "instance_id"))
        if inst.spec.service != service:
            raise AgentError(
                "wrong_service",
                f"instance {inst.spec.instance_id} belongs to service {inst.spec.service!r}, "
                f"not {service!r}",
            )
        proxy = self.proxies.get(service)
        if proxy is None:
            raise AgentError(
                "no_endpoint", f"service {service!r} has no stable port yet (call endpoint first)"
            )
        if "ready_path" in request and proxy.backend != inst.port:
            await self._check_ready(inst, request.get("ready_path"))
        previous = proxy.backend
        proxy.switch(inst.port)
        if previous is not None and previous != inst.port:
            proxy.forget_backend(previous)
            before = self._serving_at(service, previous)
            if before is not None:
                self.previous[service] = before.spec.instance_id
        log.info("service %r now served by instance %s", service, inst.spec.instance_id)
        return {"service": service, "instance_id": inst.spec.instance_id, "port": inst.port}

    async def _check_ready(self, inst: Instance, path: Any) -> None:
        """Refuse to switch to an instance that is not running, or not ready at ``path``."""
        what = f"instance {inst.spec.instance_id} of service {inst.spec.service!r}"
        if not inst.running:
            code = f" (last exit code {inst.last_exit_code})" if inst.exits else ""
            raise AgentError("not_running", f"{what} is not running{code}")
        if not isinstance(path, str) or not path:
            return
        path = path if path.startswith("/") else "/" + path
        answer = await http_get(inst.port, path, SWITCH_READY_TIMEOUT, 4096)
        status = answer["status"]
        if status is None or not 200 <= status < 300:
            outcome = answer["error"] if status is None else str(status)
            raise AgentError("not_ready", f"{what} is not ready: GET {path} → {outcome}")

    def _serving_at(self, service: str, port: int) -> Instance | None:
        for inst in self.instances.values():
            if inst.spec.service == service and inst.port == port:
                return inst
        return None

    async def op_stop(self, request: dict[str, Any]) -> dict[str, Any]:
        instance_id = _required_str(request, "instance_id")
        inst = self.instances.get(instance_id)
        if inst is None:
            return {"instance_id": instance_id, "stopped": False}
        drain = request.get("drain_seconds")
        drain_seconds = float(drain) if isinstance(drain, int | float) else DEFAULT_DRAIN_SECONDS
        service = inst.spec.service
        proxy = self.proxies.get(service)
        fell_back_to: str | None = None
        if proxy is not None and proxy.backend == inst.port:
            if not request.get("force"):
                raise AgentError(
                    "instance_serving",
                    f"instance {instance_id} serves service {service!r}; switch the "
                    "service to another instance first (or stop with force)",
                )
            fallback = self._fallback(inst) if request.get("fallback") else None
            proxy.switch(fallback.port if fallback is not None else None)
            if fallback is not None:
                fell_back_to = fallback.spec.instance_id
                self.previous.pop(service, None)
                log.info("service %r handed back to instance %s", service, fell_back_to)
        if self.previous.get(service) == instance_id:
            del self.previous[service]
        if proxy is not None:
            drained = await proxy.drain(inst.port, max(drain_seconds, 0.0))
            if not drained:
                log.warning(
                    "instance %s still had %d request(s) in flight after %.1f s",
                    instance_id,
                    proxy.inflight(inst.port),
                    drain_seconds,
                )
            proxy.forget_backend(inst.port)
        await self._terminate(inst)
        self.instances.pop(instance_id, None)
        self._save_instances()
        return {
            "instance_id": instance_id,
            "stopped": True,
            "exit_code": inst.last_exit_code,
            "fell_back_to": fell_back_to,
        }

    def _fallback(self, inst: Instance) -> Instance | None:
        """The running instance that served ``inst``'s service before it, if any."""
        before = self.instances.get(self.previous.get(inst.spec.service, ""))
        if before is None or before is inst or not before.running:
            return None
        return before

    async def op_status(self, request: dict[str, Any]) -> dict[str, Any]:
        return {
            "instances": [asdict(self._status_of(inst)) for inst in self.instances.values()],
            "services": {name: proxy.port for name, proxy in self.proxies.items()},
            "previous": {
                service: instance_id
                for service, instance_id in self.previous.items()
                if instance_id in self.instances
            },
        }

    async def op_get(self, request: dict[str, Any]) -> dict[str, Any]:
        """GET a path on an instance's own port, from here: what probes and scrapes of an
        instance on another machine need. Unknown instances answer ``{"found": false}``."""
        instance_id = _required_str(request, "instance_id")
        path = _required_str(request, "path")
        path = path if path.startswith("/") else "/" + path
        if any(c.isspace() or ord(c) < 32 for c in path):
            raise AgentError("bad_request", "'path' must not contain spaces or control characters")
        timeout, limit = request.get("timeout"), request.get("limit")
        timeout = min(float(timeout), MAX_GET_TIMEOUT) if isinstance(timeout, int | float) else 1.0
        limit = min(int(limit), MAX_GET_BYTES) if isinstance(limit, int) else 1024 * 1024
        inst = self.instances.get(instance_id)
        if inst is None:
            return {"found": False, "instance_id": instance_id}
        status = asdict(self._status_of(inst))
        if not inst.running:
            answer = {"status": None, "body": "", "truncated": False, "error": "not running"}
        else:
            answer = await http_get(inst.port, path, max(timeout, 0.05), max(limit, 0))
        return {"found": True, "instance": status, **answer}

    async def op_shutdown(self, request: dict[str, Any]) -> dict[str, Any]:
        await self._begin_shutdown()
        return {"stopped": True}

    # -- instances ----------------------------------------------------------------------------

    def _instance(self, instance_id: str) -> Instance:
        inst = self.instances.get(instance_id)
        if inst is None:
            raise AgentError(
                "unknown_instance", f"instance {instance_id} is not known to the agent"
            )
        return inst

    def _status_of(self, inst: Instance) -> InstanceStatus:
        proxy = self.proxies.get(inst.spec.service)
        return InstanceStatus(
            instance_id=inst.spec.instance_id,
            service=inst.spec.service,
            pid=inst.proc.pid if inst.proc is not None else None,
            port=inst.port,
            running=inst.running,
            exits=inst.exits,
            last_exit_code=inst.last_exit_code,
            serving=proxy is not None and proxy.backend == inst.port,
            rss_bytes=_rss(inst.proc.pid) if inst.running and inst.proc is not None else None,
            where=f"pid {inst.proc.pid}" if inst.proc is not None else "",
        )

    def _sink(self, service: str) -> LogSink:
        sink = self.logs.get(service)
        if sink is None:
            sink = self.logs[service] = LogSink(self.env_dir / service_log_file(service))
        return sink

    async def _spawn(self, inst: Instance) -> None:
        spec = inst.spec
        try:
            proc = await asyncio.create_subprocess_exec(
                *spec.argv,
                cwd=spec.cwd,
                env=inst.env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
            )
        except OSError as exc:
            message = (
                f"cannot start instance {spec.instance_id} of service {spec.service!r}: "
                f"{spec.argv[0]!r} failed to execute ({exc.strerror or type(exc).__name__})"
            )
            raise AgentError("spawn_failed", inst.masker.mask(message)) from None
        inst.proc = proc
        inst.started_at = time.monotonic()
        try:
            inst.create_time = psutil.Process(proc.pid).create_time()
        except psutil.Error:
            inst.create_time = None
        self._sink(spec.service).write(
            f"--- {_now()} instance {spec.instance_id} started: pid {proc.pid}, port {inst.port}"
        )
        log.info("started instance %s of %r (pid %d)", spec.instance_id, spec.service, proc.pid)
        assert proc.stdout is not None
        inst.pump = asyncio.get_running_loop().create_task(self._pump(inst, proc.stdout))

    async def _pump(self, inst: Instance, stream: asyncio.StreamReader) -> None:
        """Copy an instance's output to its service log, line by line, secrets masked."""
        sink = self._sink(inst.spec.service)
        masker = inst.masker
        prefix = f"[{inst.spec.instance_id}] "
        pending = b""
        while True:
            try:
                chunk = await stream.read(64 * 1024)
            except (ConnectionError, OSError):
                chunk = b""
            if not chunk:
                break
            pending += chunk
            *lines, pending = pending.split(b"\n")
            if len(pending) > MAX_LOG_LINE:
                lines.append(pending)
                pending = b""
            for raw in lines:
                text = raw.decode("utf-8", errors="replace").rstrip("\r")
                sink.write(prefix + masker.mask(text))
        if pending:
            sink.write(prefix + masker.mask(pending.decode("utf-8", errors="replace")))

    async def _wait_exit(self, inst: Instance) -> int:
        proc = inst.proc
        assert proc is not None
        code = await proc.wait()
        if inst.pump is not None:
            # a grandchild may hold the pipe open; do not wait for it forever
            await asyncio.wait({inst.pump}, timeout=1.0)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # leftovers of the group
        return code

    async def _supervise(self, inst: Instance) -> None:
        """Wait for the instance to exit; restart it with backoff unless it is being stopped."""
        backoff = BACKOFF_FIRST
        spec = inst.spec
        while True:
            assert inst.proc is not None
            pid = inst.proc.pid
            code = await self._wait_exit(inst)
            inst.last_exit_code = code
            if inst.stopping:
                self._sink(spec.service).write(
                    f"--- {_now()} instance {spec.instance_id} stopped: pid {pid}, exit code {code}"
                )
                return
            inst.exits += 1
            if time.monotonic() - inst.started_at >= BACKOFF_RESET_AFTER:
                backoff = BACKOFF_FIRST
            self._sink(spec.service).write(
                f"--- {_now()} instance {spec.instance_id} exited: pid {pid}, exit code {code}; "
                f"restarting in {backoff:g} s"
            )
            log.warning(
                "instance %s of %r exited with code %s; restart in %g s",
                spec.instance_id,
                spec.service,
                code,
                backoff,
            )
            while True:
                inst.wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(inst.wake.wait(), backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)
                if inst.stopping:
                    return
                try:
                    await self._spawn(inst)
                    break
                except AgentError as exc:
                    inst.exits += 1
                    self._sink(spec.service).write(f"--- {_now()} {exc.message}")
            self._save_instances()
            if inst.stopping and inst.proc is not None:  # stop() came while we were spawning
                _signal_group(inst.proc.pid, signal.SIGTERM)

    async def _terminate(self, inst: Instance) -> None:
        """Stop an instance's process group: SIGTERM, up to 5 s, then SIGKILL."""
        inst.stopping = True
        inst.wake.set()
        proc = inst.proc
        if proc is not None and proc.returncode is None:
            _signal_group(proc.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(asyncio.shield(proc.wait()), TERM_GRACE)
            except TimeoutError:
                _signal_group(proc.pid, signal.SIGKILL)
                await proc.wait()
        if inst.supervisor is not None:
            await asyncio.wait({inst.supervisor}, timeout=TERM_GRACE)
        proc = inst.proc  # the supervisor may have restarted it just before it noticed
        if proc is not None and proc.returncode is None:
            _signal_group(proc.pid, signal.SIGKILL)
            await proc.wait()
        log.info("stopped instance %s of %r", inst.spec.instance_id, inst.spec.service)

    def _save_instances(self) -> None:
        records = [
            {
                "instance_id": inst.spec.instance_id,
                "service": inst.spec.service,
                "pid": inst.proc.pid,
                "create_time": inst.create_time,
                "port": inst.port,
            }
            for inst in self.instances.values()
            if inst.proc is not None
        ]
        try:
            write_private_json(self.env_dir / INSTANCES_FILE, records)
        except OSError as exc:
            log.warning("cannot write %s: %s", INSTANCES_FILE, exc.strerror or exc)


# -- request parsing ---------------------------------------------------------------------------


def _required_str(request: dict[str, Any], key: str) -> str:
    value = request.get(key)
    if not isinstance(value, str) or not value:
        raise AgentError("bad_request", f"{key!r} must be a non-empty string")
    return value


def _spec_from(data: Any) -> InstanceSpec:
    if not isinstance(data, dict):
        raise AgentError("bad_request", "'spec' must be an object")
    argv = data.get("argv")
    env = data.get("env") or {}
    secret_keys = data.get("secret_keys") or []
    if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
        raise AgentError("bad_request", "'argv' must be a non-empty list of strings")
    if not isinstance(env, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in env.items()
    ):
        raise AgentError("bad_request", "'env' must map strings to strings")
    if not isinstance(secret_keys, list) or not all(isinstance(k, str) for k in secret_keys):
        raise AgentError("bad_request", "'secret_keys' must be a list of strings")
    cwd = data.get("cwd")
    if not isinstance(cwd, str) or not cwd:
        raise AgentError("bad_request", "'cwd' must be a non-empty string")
    return InstanceSpec(
        service=_required_str(data, "service"),
        instance_id=_required_str(data, "instance_id"),
        argv=tuple(argv),
        cwd=cwd,
        env=dict(env),
        secret_keys=tuple(secret_keys),
    )


def _rss(pid: int) -> int | None:
    """Resident memory of a process, in bytes (None when it cannot be read)."""
    try:
        return int(psutil.Process(pid).memory_info().rss)
    except psutil.Error:
        return None


def _secret_values(spec: InstanceSpec) -> list[str]:
    return [spec.env[k] for k in spec.secret_keys if k in spec.env]


def _spawn_problem(spec: InstanceSpec, env: dict[str, str]) -> str | None:
    """Why ``spec`` cannot be started, in one sentence, or ``None`` if it looks fine."""
    what = f"cannot start instance {spec.instance_id} of service {spec.service!r}"
    if not os.path.isdir(spec.cwd):
        return f"{what}: working directory {spec.cwd} does not exist"
    command = spec.argv[0]
    if os.sep in command:
        path = os.path.join(spec.cwd, command)
        if not os.path.exists(path):
            return f"{what}: command {command!r} does not exist (relative to {spec.cwd})"
        if os.path.isdir(path) or not os.access(path, os.X_OK):
            return f"{what}: command {command!r} is not an executable file"
        return None
    if shutil.which(command, path=env.get("PATH", os.defpath)) is None:
        return f"{what}: command {command!r} was not found on PATH"
    return None


def service_log_file(service: str) -> str:
    """The log file of ``service``, relative to the environment directory."""
    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in service).lstrip(".")
    return f"{LOG_DIR}/{name or '_'}.log"


# -- entry point -------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """Run the agent for one environment directory until it is told to stop."""
    parser = argparse.ArgumentParser(
        prog="python -m airlock.runtimes.agent",
        description="Supervise the service processes of one Airlock environment.",
    )
    parser.add_argument("--env-dir", required=True, type=Path, help="the environment's directory")
    parser.add_argument("--env", required=True, help="the environment's name")
    parser.add_argument(
        "--listen-host",
        default=HOST,
        help=f"address the services' stable ports listen on (default {HOST})",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s [agent %(process)d] %(message)s",
        stream=sys.stderr,
    )
    agent = Agent(args.env_dir.resolve(), args.env, listen_host=args.listen_host)
    return asyncio.run(agent.run())


if __name__ == "__main__":
    sys.exit(main())
