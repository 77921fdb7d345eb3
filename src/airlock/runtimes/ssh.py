"""The ``ssh`` runtime: the local runtime's agent on every host of a fleet, reached over SSH.

What runs on a host
    Airlock's own agent (:mod:`airlock.runtimes.agent`) with its per-service HTTP proxy, exactly
    the code the local runtime runs, shipped from this installation: ``airlock/__init__.py``,
    ``masking.py``, ``runtimes/{__init__,agent,proxy}.py`` and the installed ``h11`` and
    ``psutil`` packages (psutil's extension is ``abi3``: the host's machine type must be this
    machine's). The payload is content-addressed (sha256 over relative paths and bytes) and
    installed under ``BASE/agent/<hash>/`` only when missing: uploaded by SFTP into a temporary
    folder, checked and byte-compiled there, then renamed (``.complete`` marks it). The host
    needs nothing but ``python3`` 3.11 or newer (``runtime.python``) and an sshd that allows TCP
    forwarding to its loopback (``AllowTcpForwarding local`` at least). One agent runs per host
    and environment, detached from the SSH session (its own session, stdin from ``/dev/null``,
    its log in ``BASE/envs/ENV/agent.log``); it outlives the CLI and a dropped connection, and
    the next command finds it again through ``agent.json`` and a ping. Its proxies listen on
    ``runtime.listen`` or the host's address; the instances on ``127.0.0.1`` of their host.

Host layout (``BASE`` is ``runtime.base_dir``, ``~/.airlock`` by default)::

    BASE/agent/<payload hash>/      the agent's code
    BASE/objects/<sha256>           sealed files, one per content (read-only)
    BASE/releases/<id>/files/       a release's files: hard links to the objects
    BASE/envs/ENV/                  the agent's folder: agent.json, ports.json, logs/, data/

    Installing a release prunes the others: a host keeps the releases a process works in and
    the ``runtime.keep_releases`` most recently used, and the objects those link to.

What crosses the network
    Everything goes through one SSH connection per host (opened lazily, in parallel, and reused
    until :meth:`SshRuntime.close`, :meth:`SshRuntime.shutdown` or the end of the event loop):
    small Python programs run by the host's ``python3`` (read from their standard input, so
    no value ever shows on a command line), SFTP uploads of the agent and of the sealed files a
    host lacks (a release already there copies nothing), SFTP downloads of service logs, and the
    agent's JSON-lines control protocol on a direct-tcpip channel to the agent's port on the
    host's loopback; no control port is opened to the network. Probes and scrapes run on the
    host: the agent GETs the instance's own port and answers with the status and body.

Releases
    An instance's ``cwd`` is a sealed release's ``files`` folder here; its ``manifest.json`` maps
    each file to its sha256. A host is sent only the objects it lacks; it checks the hash of
    every object of the release before anything starts, then links the release's folder (a
    temporary folder, renamed). The spec is mapped for each host: ``cwd`` to that folder,
    ``python``/``python3`` to ``runtime.python``, ``${env.data}`` to the host's own data folder,
    and the URL of a dependency that also runs on the host to the host's own proxy.

How secrets travel
    An instance's environment (secret values included) is sent only inside the SSH connection,
    in the ``start`` request to the agent, which keeps it in memory and hands it to the process
    it starts. Nothing on a host's disk holds a secret: not the agent's files, not the logs
    (masked by the agent), not this module's programs, uploads or temporary files, not a
    command line.

Several hosts
    A service runs on every host of its placement (``runtime.placement``). :meth:`endpoint`
    binds the same stable port on all of them; :meth:`start` starts the instance on all of them;
    :meth:`switch` moves traffic host by host in batches (``runtime.rollout.batch``), each host
    only after its own instance answers the readiness path there; a failing batch hands the
    hosts already switched back, so no host is left between versions. Each agent remembers
    which instance served before, so a forced stop of the serving instance hands that host back
    to it. Every operation that touches several hosts tries them all and raises one error that
    names each failing host (:class:`SshSetupError`, exit 2, for a fleet that is set up wrong;
    :class:`~airlock.errors.RuntimeFailure`, exit 1, for a host that failed during a release).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import os
import platform
import re
import secrets
import shlex
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

import asyncssh

import airlock
from airlock.errors import AirlockError, PortInUseError, RuntimeFailure, UsageError
from airlock.paths import env_dir, state_dir
from airlock.runtimes import (
    CheckResult,
    Endpoint,
    FetchResult,
    HostCheck,
    InstanceSpec,
    InstanceStatus,
    ProbeResult,
)
from airlock.runtimes.agent import TERM_GRACE, service_log_file
from airlock.runtimes.control import (
    AgentInfo,
    NoAnswer,
    exchange,
    fetch_result,
    status_from,
)

if TYPE_CHECKING:
    from airlock.model import Project, SshHostModel, SshRuntimeModel
    from airlock.runtimes import Runtime

__all__ = ["Payload", "SshRuntime", "SshSetupError", "agent_payload", "open_runtime"]

T = TypeVar("T")

#: The oldest Python a host may have.
MIN_PYTHON = (3, 11)
#: Time a probe's GET gets on the host; a fetch's, and the most of its body that comes back.
PROBE_TIMEOUT = 1.0
FETCH_TIMEOUT = 2.0
FETCH_LIMIT = 1024 * 1024
#: Time for the agent to stop everything and exit.
SHUTDOWN_TIMEOUT = 3 * TERM_GRACE + 5.0
#: Time for one control request beyond what the operation itself may take.
CALL_SLACK = 10.0
#: Files uploaded at once on one host.
UPLOADS_AT_ONCE = 8
#: Room left free on a host's disk beyond what an upload needs.
DISK_MARGIN = 256 * 1024
#: SSH keepalives: a dead connection is noticed after about interval × count seconds.
KEEPALIVE_INTERVAL = 5.0
KEEPALIVE_COUNT = 3

_AIRLOCK_FILES = (
    "__init__.py",
    "masking.py",
    "runtimes/__init__.py",
    "runtimes/agent.py",
    "runtimes/proxy.py",
)
_PACKAGES = ("h11", "psutil")
_JSON_MARK = "AIRLOCK-JSON "
_WILDCARDS = {"", "0.0.0.0", "::", "*"}


class SshSetupError(AirlockError):
    """A fleet host cannot be used as configured: no route to set up, a login or host key
    refused, no suitable ``python3``. Fix the setup, then run the command again (exit 2)."""

    exit_code = 2


# -- the agent's payload -----------------------------------------------------------------------


@dataclass(frozen=True)
class Payload:
    """What is shipped to a host to run the agent: relative path → local file, and its hash."""

    files: tuple[tuple[str, Path], ...]
    digest: str
    size: int


def tree_digest(files: Sequence[tuple[str, bytes]]) -> str:
    """The content address of a set of files: sha256 over sorted relative paths and bytes
    (the hosts compute the same over what they received)."""
    digest = hashlib.sha256()
    for relative, data in sorted(files):
        digest.update(relative.encode() + b"\0" + str(len(data)).encode() + b"\0")
        digest.update(data)
    return digest.hexdigest()


@functools.cache
def agent_payload() -> Payload:
    """The agent and what it imports, from this installation of Airlock."""
    import h11
    import psutil

    package = Path(airlock.__file__).resolve().parent
    chosen = [(f"airlock/{name}", package / name) for name in _AIRLOCK_FILES]
    for module in (h11, psutil):
        folder = Path(str(module.__file__)).resolve().parent
        for path in sorted(folder.rglob("*")):
            relative = path.relative_to(folder.parent).as_posix()
            parts = path.relative_to(folder).parts
            if path.is_file() and "__pycache__" not in parts and parts[0] != "tests":
                chosen.append((relative, path))
    contents = [(relative, path.read_bytes()) for relative, path in chosen]
    return Payload(
        files=tuple(chosen),
        digest=tree_digest(contents),
        size=sum(len(data) for _, data in contents),
    )


# -- what runs on a host -----------------------------------------------------------------------

# A small program the host's python3 reads from its standard input: one command per run, its
# arguments as JSON at the end, its answer one line "AIRLOCK-JSON {...}" on standard output. Its
# syntax stays plain so that an old Python can still say which version it is.
_HOST_TOOL = r"""
import errno, hashlib, json, os, pathlib, shutil, signal, subprocess, sys, time

MARK = "AIRLOCK-JSON "
AGENT_MODULE = "airlock.runtimes.agent"
INHERIT = ("PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LC_ALL", "LC_CTYPE", "TZ")


def reply(data):
    sys.stdout.write(MARK + json.dumps(data) + "\n")
    sys.stdout.flush()


def free_room(path):
    # (free bytes, free inodes) of the file system that holds (or would hold) path
    while not os.path.isdir(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    try:
        st = os.statvfs(path)
    except OSError:
        return None, None
    return st.f_bavail * st.f_frsize, (st.f_favail if st.f_files else None)


def free_bytes(path):
    return free_room(path)[0]


def sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def tree_digest(root):
    found = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        for name in names:
            if name == ".complete":
                continue
            full = os.path.join(folder, name)
            found.append((os.path.relpath(full, root).replace(os.sep, "/"), full))
    digest = hashlib.sha256()
    for relative, full in sorted(found):
        with open(full, "rb") as fh:
            data = fh.read()
        digest.update(relative.encode() + b"\0" + str(len(data)).encode() + b"\0")
        digest.update(data)
    return digest.hexdigest()


def inside(base, path):
    base = os.path.realpath(base)
    return os.path.realpath(path).startswith(base + os.sep)


def read_json(path):
    try:
        with open(path) as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None


def is_agent(pid):
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as fh:
            cmdline = fh.read()
        with open("/proc/%d/stat" % pid) as fh:
            state = fh.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z" and AGENT_MODULE.encode() in cmdline


def running_agent(env_dir):
    info = read_json(os.path.join(env_dir, "agent.json"))
    if not isinstance(info, dict) or not isinstance(info.get("pid"), int):
        return None, None
    if is_agent(info["pid"]):
        return info, None
    return None, info["pid"]


def log_tail(path, lines=8):
    try:
        with open(path, "rb") as fh:
            fh.seek(0, 2)
            fh.seek(max(0, fh.tell() - 16384))
            text = fh.read().decode("utf-8", "replace")
    except OSError:
        return ""
    kept = [l for l in text.splitlines() if l.strip() and not l.startswith((" ", "\t", "Trace"))]
    return "\n".join(kept[-lines:])


def launch(a, env_dir, payload_dir):
    for folder in (env_dir, os.path.join(env_dir, "data")):
        os.makedirs(folder, mode=0o700, exist_ok=True)
    log_path = os.path.join(env_dir, "agent.log")
    log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    env = dict((k, os.environ[k]) for k in INHERIT if k in os.environ)
    env["PYTHONPATH"] = payload_dir
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    argv = [sys.executable, "-m", AGENT_MODULE, "--env-dir", env_dir, "--env", a["env"],
            "--listen-host", a["listen"]]
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                cwd=env_dir, env=env, start_new_session=True, close_fds=True)
    finally:
        os.close(log)
    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline:
        info, _ = running_agent(env_dir)
        if info is not None and info.get("pid") == proc.pid:
            return info, None
        code = proc.poll()
        if code is not None:
            if code == 3:  # another agent won the race: use it
                info, _ = running_agent(env_dir)
                if info is not None:
                    return info, None
            return None, "the agent exited at start (code %s): %s" % (code, log_tail(log_path))
        time.sleep(0.02)
    return None, "the agent did not start within 10 s: %s" % log_tail(log_path)


def cmd_hello(a):
    answer = {"python": list(sys.version_info[:3]), "executable": sys.executable}
    if sys.version_info < (3, 11):
        return answer
    import platform
    base = os.path.abspath(os.path.expanduser(a["base"]))
    env_dir = os.path.join(base, "envs", a["env"])
    payload_dir = os.path.join(base, "agent", a["payload"])
    answer.update(machine=platform.machine(), base=base, env_dir=env_dir,
                  payload_dir=payload_dir, free=free_bytes(base),
                  payload=os.path.isfile(os.path.join(payload_dir, ".complete")))
    info, dead = running_agent(env_dir)
    answer["dead_pid"] = dead
    if info is None and a.get("start") and answer["payload"]:
        info, problem = launch(a, env_dir, payload_dir)
        answer["launched"] = info is not None
        answer["problem"] = problem
    if info is not None:
        os.makedirs(os.path.join(env_dir, "data"), mode=0o700, exist_ok=True)
        answer["agent"] = {"pid": info["pid"], "port": info["port"], "token": info["token"]}
    elif dead is not None:
        answer["log_tail"] = log_tail(os.path.join(env_dir, "agent.log"))
    releases = {}
    objects = os.path.join(base, "objects")
    for release in a.get("releases", []):
        files_dir = os.path.join(base, "releases", release["id"], "files")
        if os.path.isdir(files_dir):
            releases[release["id"]] = {"complete": True, "dir": files_dir, "missing": []}
            try:
                os.utime(os.path.dirname(files_dir))  # most recently used: not pruned next
            except OSError:
                pass
        else:
            missing = [h for h in release["hashes"] if not os.path.isfile(os.path.join(objects, h))]
            releases[release["id"]] = {"complete": False, "missing": missing}
    answer["releases"] = releases
    return answer


def cmd_install_payload(a):
    base = os.path.abspath(os.path.expanduser(a["base"]))
    target = os.path.join(base, "agent", a["digest"])
    staged = a["staged"]
    if not inside(base, staged):
        return {"error": "refusing a folder outside BASE: %s" % staged}
    if os.path.isfile(os.path.join(target, ".complete")):
        shutil.rmtree(staged, ignore_errors=True)
        return {"ok": True}
    got = tree_digest(staged)
    if got != a["digest"]:
        shutil.rmtree(staged, ignore_errors=True)
        return {"error": "the agent's files arrived damaged (sha256 %s, sent %s)" % (
            got[:12], a["digest"][:12])}
    import compileall
    compileall.compile_dir(staged, quiet=1)
    with open(os.path.join(staged, ".complete"), "w") as fh:
        fh.write(a["digest"] + "\n")
    try:
        os.rename(staged, target)
    except OSError:
        if not os.path.isfile(os.path.join(target, ".complete")):
            raise
        shutil.rmtree(staged, ignore_errors=True)  # another run installed it meanwhile
    return {"ok": True}


def releases_in_use(base):
    # the releases some process of this host works in (its working folder is inside one)
    root = os.path.join(os.path.realpath(base), "releases") + os.sep
    used = set()
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                cwd = os.readlink("/proc/%s/cwd" % name)
            except OSError:
                continue
            if cwd.startswith(root):
                used.add(cwd[len(root):].split(os.sep, 1)[0])
    return used


def prune(base, keep, current):
    # Remove the releases no process works in, except the `keep` most recently used, then
    # every object no release links to any more (its link count is down to 1).
    folder = os.path.join(base, "releases")
    found = []
    for name in os.listdir(folder):
        if not name.startswith("."):  # ".tmp-…": a release another run is linking
            try:
                found.append((os.stat(os.path.join(folder, name)).st_mtime, name))
            except OSError:
                pass
    found.sort(reverse=True)
    kept = set(name for _, name in found[:keep]) | releases_in_use(base) | {current}
    releases = 0
    for _, name in found:
        if name not in kept:
            shutil.rmtree(os.path.join(folder, name), ignore_errors=True)
            releases += 1
    objects, size = 0, 0
    store = os.path.join(base, "objects")
    for name in os.listdir(store) if releases else ():
        path = os.path.join(store, name)
        try:
            st = os.lstat(path)
        except OSError:
            continue
        if not name.startswith(".") and st.st_nlink == 1:
            try:
                os.unlink(path)
            except OSError:  # cleaning up is never worth failing the install for
                continue
            objects, size = objects + 1, size + st.st_size
    return {"releases": releases, "objects": objects, "bytes": size}


def cmd_install_release(a):
    # One install or prune at a time on a host: a prune must not remove the objects another
    # run has just put in place and not yet linked.
    import fcntl
    base = os.path.abspath(os.path.expanduser(a["base"]))
    os.makedirs(base, mode=0o755, exist_ok=True)
    with open(os.path.join(base, ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        answer = install_release(a, base)
        if answer.get("ok"):
            os.utime(os.path.dirname(answer["dir"]))  # most recently used
            answer["pruned"] = prune(base, a["keep"], a["id"])
        return answer


def install_release(a, base):
    objects = os.path.join(base, "objects")
    os.makedirs(objects, mode=0o755, exist_ok=True)
    incoming = a.get("incoming")
    damaged = []
    if incoming:
        if not inside(base, incoming):
            return {"error": "refusing a folder outside BASE: %s" % incoming}
        for name in sorted(os.listdir(incoming)):
            path = os.path.join(incoming, name)
            if sha256(path) == name:
                os.chmod(path, 0o444)
                os.replace(path, os.path.join(objects, name))
            else:
                damaged.append(name)
        shutil.rmtree(incoming, ignore_errors=True)
    missing = []
    for digest in sorted(set(a["files"].values())):
        path = os.path.join(objects, digest)
        if not os.path.isfile(path):
            missing.append(digest)
        elif sha256(path) != digest:
            damaged.append(digest)
            os.unlink(path)
    if damaged or missing:
        return {"error": "verify", "damaged": sorted(set(damaged)), "missing": missing}
    release_dir = os.path.join(base, "releases", a["id"])
    files_dir = os.path.join(release_dir, "files")
    if os.path.isdir(files_dir):
        return {"ok": True, "dir": files_dir, "copied": False}
    staged = os.path.join(base, "releases", ".tmp-%s-%d-%s" % (a["id"], os.getpid(), a["nonce"]))
    try:
        for relative, digest in sorted(a["files"].items()):
            parts = relative.split("/")
            if relative.startswith("/") or ".." in parts or "" in parts:
                return {"error": "refusing the file name %r" % relative}
            target = os.path.join(staged, "files", *parts)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            try:
                os.link(os.path.join(objects, digest), target)
            except OSError:
                shutil.copyfile(os.path.join(objects, digest), target)
                os.chmod(target, 0o444)
        os.makedirs(os.path.join(staged, "files"), exist_ok=True)
        try:
            os.rename(staged, release_dir)
        except OSError:
            if not os.path.isdir(files_dir):
                raise
    finally:
        shutil.rmtree(staged, ignore_errors=True)
    return {"ok": True, "dir": files_dir, "copied": True}


def cmd_tail(a):
    base = os.path.abspath(os.path.expanduser(a["base"]))
    path = os.path.join(base, "envs", a["env"], a["file"])
    try:
        with open(path, "rb") as fh:
            fh.seek(0, 2)
            end = fh.tell()
            position, data = end, b""
            while position > 0 and data.count(b"\n") <= a["lines"]:
                step = min(65536, position)
                position -= step
                fh.seek(position)
                data = fh.read(step) + data
    except FileNotFoundError:
        return {"found": False}
    lines = data.decode("utf-8", "replace").splitlines()
    return {"found": True, "lines": lines[-a["lines"]:] if a["lines"] > 0 else []}


def cmd_logs(a):
    base = os.path.abspath(os.path.expanduser(a["base"]))
    folder = os.path.join(base, "envs", a["env"], "logs")
    try:
        names = sorted(n for n in os.listdir(folder) if n.endswith(".log"))
    except FileNotFoundError:
        names = []
    return {"folder": folder,
            "files": dict((n, os.path.getsize(os.path.join(folder, n))) for n in names)}


def cmd_reap(a):
    base = os.path.abspath(os.path.expanduser(a["base"]))
    env_dir = os.path.join(base, "envs", a["env"])
    pid = a.get("pid")
    deadline = time.monotonic() + a.get("wait", 0)
    if pid:
        for sig, wait in ((None, 0), (signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
            if sig is not None and is_agent(pid):
                try:
                    os.kill(pid, sig)
                except OSError:
                    pass
                deadline = time.monotonic() + wait
            while is_agent(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if not is_agent(pid):
                break
    killed = []
    payloads = sorted(
        (os.path.join(base, "agent", d) for d in os.listdir(os.path.join(base, "agent"))
         if os.path.isfile(os.path.join(base, "agent", d, ".complete"))),
        key=lambda p: p != os.path.join(base, "agent", a["payload"]),
    ) if os.path.isdir(os.path.join(base, "agent")) else []
    if payloads and os.path.isfile(os.path.join(env_dir, "instances.json")):
        sys.path.insert(0, payloads[0])
        from airlock.runtimes.agent import kill_recorded_instances
        killed = kill_recorded_instances(pathlib.Path(env_dir))
    info = read_json(os.path.join(env_dir, "agent.json"))
    if isinstance(info, dict) and isinstance(info.get("pid"), int) and not is_agent(info["pid"]):
        try:
            os.unlink(os.path.join(env_dir, "agent.json"))
        except OSError:
            pass
    return {"killed": killed}


def cmd_cleanup(a):
    base = os.path.abspath(os.path.expanduser(a["base"]))
    before, inodes = free_room(base)
    for path in a["paths"]:
        if inside(base, path):
            shutil.rmtree(path, ignore_errors=True)
    return {"free_before": before, "inodes_before": inodes, "free": free_bytes(base)}


def main(arguments):
    a = json.loads(arguments)
    try:
        reply(globals()["cmd_" + a["command"]](a))
    except OSError as exc:
        reply({"error": exc.strerror or str(exc), "errno": errno.errorcode.get(exc.errno or 0),
               "filename": exc.filename})
"""


# -- errors on one host ------------------------------------------------------------------------


class _HostFailure(Exception):
    """Something failed on one host; the runtime gathers these into one error."""

    def __init__(
        self,
        message: str,
        hint: str | None = None,
        *,
        setup: bool = False,
        code: str | None = None,
        data: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.setup = setup
        self.code = code
        self.data = data or {}
        #: the request reached the host's agent, which may have carried it out
        self.sent = False
        #: the host did not answer in time (so it is not asked again right away)
        self.slow = False


class _AgentGone(_HostFailure):
    """The host's agent does not run (any more)."""


_AGENT_HINTS = {
    "spawn_failed": "check the service's command in airlock.yaml and runtime.python",
    "bind_failed": "choose another port for the service in airlock.yaml",
    "instance_serving": "switch the service to another instance before stopping this one",
    "unknown_instance": "run `airlock status` to see the instances that run now",
    "no_endpoint": "give the service its stable port (endpoint) before switching",
    "not_ready": "wait until the new instance is ready on every host, then switch",
    "not_running": "the instance exited on that host; see `airlock logs`",
}


# -- hosts -------------------------------------------------------------------------------------


@dataclass
class _Host:
    """One host of the fleet and what this runtime knows of it."""

    name: str
    model: SshHostModel
    user: str
    key: str | None
    conn: asyncssh.SSHClientConnection | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # opening the connection
    preparing: asyncio.Lock = field(default_factory=asyncio.Lock)  # installing, starting
    #: the expanded BASE, the agent's folder, from the host's last hello
    base: str | None = None
    env_dir: str | None = None
    info: AgentInfo | None = None
    #: an agent that agent.json names but that does not run (killed), and its log's last lines
    dead_agent: tuple[int, str] | None = None
    #: when the host last failed to answer in time, and how
    silent: tuple[float, _HostFailure] | None = None
    releases: dict[str, str] = field(default_factory=dict)  # release id → files folder there

    @property
    def address(self) -> str:
        return self.model.address

    def reset(self) -> None:
        """Forget the connection (it broke, or belonged to an event loop that ended)."""
        self.conn = None
        self.lock = asyncio.Lock()
        self.preparing = asyncio.Lock()


@dataclass(frozen=True)
class _Release:
    """The sealed files of a release on this machine: relative path → sha256."""

    id: str
    folder: Path
    files: dict[str, str]

    @property
    def hashes(self) -> list[str]:
        return sorted(set(self.files.values()))


class _HostKeyCheck(asyncssh.SSHClient):
    """Sees the key a host offers when it is not a trusted one; trusts it only when pinning
    and nothing is known of the host yet."""

    def __init__(self, pin: bool, matched: list[bool]) -> None:
        self.pin = pin
        self.matched = matched  # filled by the known_hosts lookup: did the host have keys?
        self.offered: asyncssh.SSHKey | None = None
        self.accepted = False

    def validate_host_public_key(
        self, host: str, addr: str, port: int, key: asyncssh.SSHKey
    ) -> bool:
        self.offered = key
        self.accepted = self.pin and not any(self.matched)
        return self.accepted


# -- the runtime -------------------------------------------------------------------------------


def open_runtime(
    project: Project, env: str, settings: SshRuntimeModel, *, root: Path
) -> SshRuntime:
    """The ``ssh`` runtime of ``env``: its hosts are ``settings.hosts``."""
    return SshRuntime(project, env, settings, root=root)


class SshRuntime:
    """Runs services on a fleet of hosts, through Airlock's agent on each of them."""

    name = "ssh"

    def __init__(
        self, project: Project, env: str, settings: SshRuntimeModel, *, root: Path
    ) -> None:
        self.project = project
        self.env = env
        self.settings = settings
        self.root = Path(root)
        self.hosts: dict[str, _Host] = {
            name: _Host(
                name=name,
                model=model,
                user=model.user or settings.user,
                key=model.key or settings.key,
            )
            for name, model in settings.hosts.items()
        }
        #: sealed files uploaded (objects), per host: a release already there adds nothing
        self.objects_copied: dict[str, int] = {name: 0 for name in self.hosts}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._keeper: asyncio.Task[None] | None = None
        self._ports: dict[str, int] = {}  # service → its stable port on every host
        self._services: dict[str, str] = {}  # instance id → service
        self._ready_paths: dict[str, str] = {}  # instance id → the path its probes passed
        self._releases: dict[str, _Release] = {}  # local files folder → its release
        self._release_locks: dict[tuple[str, str], asyncio.Lock] = {}

    # -- Runtime protocol ---------------------------------------------------------------------

    @property
    def data_dir(self) -> str:
        """``BASE/envs/ENV/data`` on the hosts (as the first host spells it once known; each
        host's instances get their own host's folder)."""
        first = self.hosts[next(iter(self.hosts))]
        if first.env_dir is not None:
            return f"{first.env_dir}/data"
        return f"{self.settings.base_dir.rstrip('/')}/envs/{self.env}/data"

    async def endpoint(self, service: str, port: int | None) -> Endpoint:
        """Bind the service's stable port on every host of its placement, the same number on
        all of them: the first host picks it (``port``, the remembered one or a free one), the
        others are asked for that one."""
        hosts = self._placement(service)
        await self._each(hosts, self._prepare, f"cannot prepare the hosts of {service!r}")
        first, rest = hosts[0], hosts[1:]

        async def bind(host: _Host, wanted: int | None) -> int:
            request = {"op": "endpoint", "service": service, "port": wanted}
            return int((await self._request(host, request, 15.0, start=True))["port"])

        outcome = (await self._gather([first], functools.partial(bind, wanted=port)))[first.name]
        if isinstance(outcome, BaseException):
            raise self._bind_error(service, port, {first.name: outcome})
        outcomes = await self._gather(rest, functools.partial(bind, wanted=outcome))
        failures = {name: exc for name, exc in outcomes.items() if isinstance(exc, BaseException)}
        if failures:
            raise self._bind_error(service, outcome, failures)
        self._ports[service] = outcome
        return Endpoint(self._public_address(first), outcome)

    def _bind_error(
        self, service: str, port: int | None, failures: dict[str, BaseException]
    ) -> AirlockError:
        what = f"port {port}" if port is not None else "a port"
        error = self._combine(f"cannot bind {what} of {service!r} on every host", failures)
        taken = [n for n, e in failures.items() if getattr(e, "code", None) == "port_in_use"]
        if not taken or len(taken) < len(failures):
            return error
        return PortInUseError(
            error.message,
            hint=f"free port {port} on {', '.join(taken)} or give {service!r} another port in "
            "airlock.yaml (the service has the same port on all its hosts)",
        )

    async def endpoints(self) -> dict[str, Endpoint]:
        """The stable endpoint of every service bound now (on the first host that runs it);
        nothing is started."""
        replies = await self._each(
            list(self.hosts.values()), self._status_reply, "cannot read the fleet's endpoints"
        )
        bound: dict[str, dict[str, int]] = {}  # service → host → port
        for name, reply in replies.items():
            for service, port in (reply or {}).get("services", {}).items():
                bound.setdefault(str(service), {})[name] = int(port)
        found: dict[str, Endpoint] = {}
        for service, ports in bound.items():
            order = [*self.settings.hosts_of(service), *self.hosts]
            owner = next(name for name in order if name in ports)
            found[service] = Endpoint(self._public_address(self.hosts[owner]), ports[owner])
            self._ports.setdefault(service, ports[owner])
        return found

    async def start(self, spec: InstanceSpec) -> InstanceStatus:
        """Copy the release's files where they are missing and start the instance on every
        host of the service; it gets no traffic until :meth:`switch`. The instance runs on all
        of them or on none: where it started, it is stopped again if another host failed."""
        hosts = self._placement(spec.service)
        release = await asyncio.to_thread(self._release_of, spec.cwd)
        if not self._ports:
            with contextlib.suppress(AirlockError):
                await self.endpoints()
        self._services[spec.instance_id] = spec.service

        async def start_on(host: _Host) -> InstanceStatus:
            await self._prepare(host)
            folder = await self._install_release(host, release)
            request = {"op": "start", "spec": asdict(self._host_spec(spec, host, folder))}
            reply = await self._request(host, request, 30.0, start=True)
            return status_from(reply, host=host.name)

        outcomes = await self._gather(hosts, start_on)
        failures = {name: exc for name, exc in outcomes.items() if isinstance(exc, BaseException)}
        if failures:
            started = [
                self.hosts[n] for n, r in outcomes.items() if not isinstance(r, BaseException)
            ]
            stop = {"op": "stop", "instance_id": spec.instance_id, "drain_seconds": 0.0}
            await self._gather(started, lambda host: self._request(host, stop, SHUTDOWN_TIMEOUT))
            raise self._combine(
                f"cannot start instance {spec.instance_id} of {spec.service!r}", failures
            )
        statuses = [r for r in outcomes.values() if isinstance(r, InstanceStatus)]
        return replace(statuses[0], where=", ".join(s.where for s in statuses))

    async def probe(self, instance_id: str, path: str) -> ProbeResult:
        """GET ``path`` on the instance on each of its hosts (1 s each, run on the host): ok
        when every host's instance answers 2xx; ``exited`` when one of them exited; the detail
        names the first host that is not ready."""
        path = path if path.startswith("/") else "/" + path
        hosts = await self._hosts_of_instance(instance_id)
        outcomes = await self._gather(
            hosts, lambda host: self._get(host, instance_id, path, PROBE_TIMEOUT, 64 * 1024)
        )
        results: list[ProbeResult] = []
        for name, outcome in outcomes.items():
            if isinstance(outcome, _AgentGone):
                results.append(ProbeResult(False, f"{name}: {outcome.message}", exited=True))
            elif isinstance(outcome, BaseException):
                results.append(ProbeResult(False, f"{name}: {_message(outcome)}"))
            elif not outcome.get("found"):
                detail = f"{name}: instance {instance_id} is not running there"
                results.append(ProbeResult(False, detail, exited=True))
            else:
                instance = outcome.get("instance") or {}
                gone = not instance.get("running") or int(instance.get("exits") or 0) > 0
                fetched = fetch_result(path, outcome, prefix=f"{name}: ")
                results.append(ProbeResult(fetched.ok, fetched.detail, gone))
        if all(r.ok and not r.exited for r in results):
            self._ready_paths[instance_id] = path
            where = ", ".join(outcomes)
            return ProbeResult(True, f"GET {path} → 2xx on {where}")
        exited = [r for r in results if r.exited]
        if exited:
            return ProbeResult(False, exited[0].detail, exited=True)
        return next(r for r in results if not r.ok)

    async def fetch(self, instance_id: str, path: str, *, host: str | None = None) -> FetchResult:
        """GET ``path`` on the instance (on ``host``, or on the first of its hosts) from that
        host; never raises for an instance that does not answer."""
        path = path if path.startswith("/") else "/" + path
        if host is not None and host not in self.hosts:
            return FetchResult(None, f"GET {path} → no host {host!r} in environment {self.env!r}")
        try:
            target = self.hosts[host] if host else (await self._hosts_of_instance(instance_id))[0]
        except AirlockError as exc:
            return FetchResult(None, f"GET {path} → {exc.message.splitlines()[0]}")
        try:
            answer = await self._guarded(
                target, lambda: self._get(target, instance_id, path, FETCH_TIMEOUT, FETCH_LIMIT)
            )
        except (_HostFailure, AirlockError) as exc:
            return FetchResult(None, f"{target.name}: GET {path} → {_message(exc)}")
        if not answer.get("found"):
            return FetchResult(None, f"{target.name}: instance {instance_id} is not running there")
        return fetch_result(path, answer, prefix=f"{target.name}: ")

    async def switch(self, service: str, instance_id: str) -> None:
        """Route the service's traffic to ``instance_id`` on every host of its placement.

        Hosts where ``instance_id`` served before the current instance (a revert) switch all
        at once; the others in batches of ``runtime.rollout.batch``, each host only once the
        instance answers its readiness path there. When a batch fails, the hosts this call
        switched go back to what they served before, and one error names the failing hosts.

        A host that cannot be asked (unreachable, its agent gone, the instance missing there)
        stops a switch forward before any host moves; a switch back (``instance_id`` served
        before on every host that answers) still switches the hosts that answer, then the
        error names the others.
        """
        hosts = self._placement(service)
        outcomes = await self._gather(hosts, self._status_reply)
        failures = {n: e for n, e in outcomes.items() if isinstance(e, BaseException)}
        serving: dict[str, str | None] = {}
        pending: list[_Host] = []
        reverting: list[_Host] = []
        for host in hosts:
            outcome = outcomes[host.name]
            if isinstance(outcome, BaseException):
                continue
            reply = outcome or {}
            instances = {i["instance_id"]: i for i in reply.get("instances", [])}
            current = next(
                (i for i, s in instances.items() if s["service"] == service and s["serving"]),
                None,
            )
            serving[host.name] = current
            if instance_id not in instances:
                failures[host.name] = _HostFailure(
                    f"instance {instance_id} does not run there",
                    hint="start it on every host of the service first",
                )
            elif current != instance_id:
                back = reply.get("previous", {}).get(service) == instance_id
                (reverting if back else pending).append(host)
        self._services[instance_id] = service
        what = f"cannot switch {service!r} to {instance_id}"
        if failures and pending:
            error = self._combine(what, failures)
            raise type(error)(error.message + "; no host was switched", hint=error.hint)
        if failures:  # a switch back: every host that answers goes back now
            back_outcomes = await self._gather(
                reverting,
                lambda host: self._request(
                    host,
                    {"op": "switch", "service": service, "instance_id": instance_id},
                    15.0,
                ),
            )
            failures.update(
                {n: e for n, e in back_outcomes.items() if isinstance(e, BaseException)}
            )
            done = [h for h in hosts if h.name not in failures]
            error = self._combine(what, failures)
            note = f"; {', '.join(h.name for h in done)} now serve it" if done else ""
            raise type(error)(error.message + note, hint=error.hint)
        ready = self._ready_path(service, instance_id)
        switched: list[_Host] = []

        async def switch_on(host: _Host, *, check: bool) -> None:
            request: dict[str, Any] = {
                "op": "switch",
                "service": service,
                "instance_id": instance_id,
                "ready_path": ready if check else None,
            }
            await self._request(host, request, 15.0)

        batches = [reverting] if reverting else []
        size = self.settings.rollout.size(len(hosts))
        batches += [pending[i : i + size] for i in range(0, len(pending), size)]
        for batch in batches:
            check = batch is not reverting
            outcomes = await self._gather(batch, functools.partial(switch_on, check=check))
            switched += [h for h in batch if not isinstance(outcomes[h.name], BaseException)]
            failures = {n: e for n, e in outcomes.items() if isinstance(e, BaseException)}
            if failures:
                error = self._combine(f"cannot switch {service!r} to {instance_id}", failures)
                note = await self._switch_back(service, switched, serving)
                unsure = [n for n, e in failures.items() if getattr(e, "sent", False)]
                if unsure:
                    note += (
                        f"; {', '.join(unsure)} may have switched before the connection broke "
                        "(switch the service back once the host answers again)"
                    )
                raise type(error)(error.message + note, hint=error.hint)

    async def stop(
        self, instance_id: str, *, drain_seconds: float = 5.0, force: bool = False
    ) -> None:
        """Drain and stop the instance on every host. One that serves traffic is refused
        (before any host is touched) unless ``force``; then a host hands its traffic back to
        the instance that served it before, when that one still runs. A host that cannot be
        reached does not keep the others from stopping it; the error names it afterwards."""
        hosts = await self._hosts_of_instance(instance_id)
        replies = await self._gather(hosts, self._status_reply)
        failures = {n: e for n, e in replies.items() if isinstance(e, BaseException)}
        running: list[_Host] = []
        serving: list[str] = []
        for host in hosts:
            reply = replies[host.name]
            if reply is None or isinstance(reply, BaseException):
                continue
            mine = [i for i in reply.get("instances", []) if i["instance_id"] == instance_id]
            if mine:
                running.append(host)
                serving += [host.name for item in mine if item["serving"]]
        if serving and not force:
            raise RuntimeFailure(
                f"ssh runtime, environment {self.env!r}: instance {instance_id} serves traffic "
                f"on {', '.join(serving)}; not stopped",
                hint=_AGENT_HINTS["instance_serving"],
            )
        request = {
            "op": "stop",
            "instance_id": instance_id,
            "drain_seconds": drain_seconds,
            "force": force,
            "fallback": True,
        }
        timeout = drain_seconds + 3 * TERM_GRACE + CALL_SLACK
        stopped = await self._gather(running, lambda host: self._request(host, request, timeout))
        failures.update({n: e for n, e in stopped.items() if isinstance(e, BaseException)})
        if failures:
            done = [h.name for h in running if h.name not in failures]
            error = self._combine(f"cannot stop instance {instance_id}", failures)
            note = f"; stopped on {', '.join(done)}" if done else ""
            raise type(error)(error.message + note, hint=error.hint)

    async def status(self) -> list[InstanceStatus]:
        """Every instance on every host (one entry per host), with ``where`` naming the host
        and the resident memory measured there; nothing is started."""
        replies = await self._each(
            list(self.hosts.values()), self._status_reply, "cannot read the fleet's status"
        )
        found: list[InstanceStatus] = []
        for name, reply in replies.items():
            for item in (reply or {}).get("instances", []):
                status = status_from(item, host=name)
                self._services[status.instance_id] = status.service
                found.append(status)
        return found

    async def logs(self, service: str, lines: int) -> list[str]:
        """The last ``lines`` lines of the service's log on each of its hosts, each line
        starting with the host's name (values masked by the agents)."""
        hosts = self._placement(service)

        async def tail(host: _Host) -> list[str] | None:
            base = await self._base(host)
            answer = await self._tool(
                host,
                {
                    "command": "tail",
                    "base": base,
                    "env": self.env,
                    "file": service_log_file(service),
                    "lines": max(lines, 0),
                },
            )
            return [str(line) for line in answer["lines"]] if answer.get("found") else None

        found = await self._each(hosts, tail, f"cannot read the logs of {service!r}")
        if all(value is None for value in found.values()):
            raise UsageError(
                f"no logs for {service!r} in {self.env!r} yet (hosts: "
                f"{', '.join(h.name for h in hosts)})",
                hint=f"deploy first: `airlock deploy {self.env}`",
            )
        return [
            f"{name}: {line}" for name, tail_lines in found.items() for line in tail_lines or []
        ]

    async def log_files(self) -> dict[str, Path]:
        """Copy every host's service logs into ``.airlock/envs/ENV/hosts/<host>/`` (only what
        was appended since the last copy) and merge them, host after host, into one file per
        service under ``.airlock/envs/ENV/logs/`` (lines as the agents wrote them)."""
        local = env_dir(self.root, self.env)
        copied = await self._each(
            list(self.hosts.values()),
            lambda host: self._download_logs(host, local / "hosts" / host.name),
            "cannot copy the fleet's logs",
        )
        merged_dir = local / "logs"
        merged_dir.mkdir(parents=True, exist_ok=True)
        services: dict[str, list[Path]] = {}
        for name in self.hosts:
            for path in copied[name]:
                services.setdefault(path.stem, []).append(path)
        result: dict[str, Path] = {}
        for service, parts in sorted(services.items()):
            target = merged_dir / f"{service}.log"
            await asyncio.to_thread(_concatenate, parts, target)
            result[service] = target
        return result

    async def shutdown(self) -> bool:
        """Stop every agent (and so every instance) on every host; True if anything ran."""
        payload = agent_payload().digest

        async def stop_host(host: _Host) -> bool:
            base = await self._base(host)
            info = await self._agent(host, start=False)
            if info is not None:
                with contextlib.suppress(_HostFailure, NoAnswer):
                    await self._call(host, info, {"op": "shutdown"}, SHUTDOWN_TIMEOUT)
            answer = await self._tool(
                host,
                {
                    "command": "reap",
                    "base": base,
                    "env": self.env,
                    "payload": payload,
                    "pid": info.pid if info is not None else None,
                    "wait": SHUTDOWN_TIMEOUT,
                },
                timeout=3 * SHUTDOWN_TIMEOUT,
            )
            host.info = None
            return info is not None or bool(answer.get("killed"))

        try:
            ran = await self._each(
                list(self.hosts.values()), stop_host, f"cannot stop environment {self.env!r}"
            )
        finally:
            await self.close()
        return any(ran.values())

    async def check_hosts(self, checks: Sequence[HostCheck]) -> list[CheckResult]:
        """Run the checks from the hosts themselves, each host's in one program: first those
        that need nothing, then — with every port a ``connect`` goes to held open on its hosts
        where nothing listens — the connections; then the ports are let go. A host that cannot
        be reached fails its checks."""
        alone = [c for c in checks if c.to_service is None]
        paths = [c for c in checks if c.to_service is not None]
        first = await self._check_hosts(alone) if alone else []
        return first + (await self._check_hosts(paths) if paths else [])

    async def _check_hosts(self, checks: Sequence[HostCheck]) -> list[CheckResult]:
        holds: dict[str, set[int]] = {}
        plan: dict[str, list[tuple[HostCheck, dict[str, Any], str | None]]] = {}
        for check in checks:
            sources = self._placement(check.service) if check.service else self.hosts.values()
            for source in sources:
                mine = plan.setdefault(source.name, [])
                if check.to_service is None:
                    mine.append((check, {"kind": check.kind, **check.args}, None))
                    continue
                port = int(check.args["port"])
                for dest in self._placement(check.to_service):
                    holds.setdefault(dest.name, set()).add(port)
                    request = {"kind": check.kind, **check.args, "host": self._public_address(dest)}
                    mine.append((check, request, f"{dest.name}:{port}"))
        held: list[asyncssh.SSHClientProcess[str]] = []

        async def hold(host: _Host) -> None:
            held.append(await self._hold_ports(host, sorted(holds[host.name])))

        async def run(host: _Host) -> list[dict[str, Any]]:
            requests = [request for _, request, _ in plan[host.name]]
            answer = await self._host_check(host, {"checks": requests})
            return list(answer.get("answers") or [])

        try:
            held_on = await self._gather([self.hosts[n] for n in holds], hold)
            answers = await self._gather([self.hosts[n] for n in plan], run)
        finally:
            for process in held:
                with contextlib.suppress(Exception):
                    process.stdin.write_eof()
                    await asyncio.wait_for(process.wait_closed(), 5.0)
                process.close()
        results: list[CheckResult] = []
        for name, entries in plan.items():
            outcome = answers[name]
            for index, (check, _request, target) in enumerate(entries):
                dest_name = target.split(":")[0] if target else None
                blocked = held_on.get(dest_name) if dest_name else None
                if isinstance(outcome, BaseException):
                    detail = f"the checks could not run on the host: {_message(outcome)}"
                    results.append(CheckResult(check, name, False, detail, target))
                elif isinstance(blocked, BaseException):
                    detail = f"could not listen on {target} to test the path: {_message(blocked)}"
                    results.append(CheckResult(check, name, False, detail, target))
                else:
                    answer = outcome[index] if index < len(outcome) else {}
                    ok, detail = bool(answer.get("ok")), str(answer.get("detail", ""))
                    results.append(CheckResult(check, name, ok, detail, target, answer))
        return results

    async def _host_check(self, host: _Host, arguments: dict[str, Any]) -> dict[str, Any]:
        """Run :mod:`airlock.runtimes.hostcheck` on the host with ``arguments``; its answer."""
        conn = await self._connect(host)
        command = self._host_check_command(arguments)
        try:
            result = await asyncio.wait_for(conn.run(command, check=False), 60.0)
        except TimeoutError:
            raise _HostFailure("the preflight checks did not finish within 60 s") from None
        for line in str(result.stdout or "").splitlines():
            if line.startswith(_JSON_MARK):
                answer = json.loads(line[len(_JSON_MARK) :])
                if isinstance(answer, dict):
                    return answer
        said = " ".join(str(result.stderr or result.stdout or "").split())[:300]
        raise _HostFailure(
            f"{self.settings.python} did not run the checks (exit status {result.exit_status}): "
            f"{said or 'no output'}"
        )

    async def _hold_ports(self, host: _Host, ports: list[int]) -> asyncssh.SSHClientProcess[str]:
        """Listen on ``ports`` of the host where nothing does, until the process's input ends."""
        conn = await self._connect(host)
        arguments = {"hold": ports, "address": self._listen_address(host)}
        process = await conn.create_process(self._host_check_command(arguments))
        try:
            line = await asyncio.wait_for(process.stdout.readline(), 30.0)
        except TimeoutError:
            process.close()
            raise _HostFailure("holding ports for the checks did not answer in 30 s") from None
        if not str(line).startswith(_JSON_MARK):
            process.close()
            raise _HostFailure(f"holding ports for the checks failed: {str(line).strip()[:200]}")
        return process

    def _host_check_command(self, arguments: dict[str, Any]) -> str:
        from airlock.runtimes import hostcheck

        program = Path(hostcheck.__file__).read_text() + f"\nmain({json.dumps(arguments)!r})\n"
        return f"{shlex.quote(self.settings.python)} -I -c {shlex.quote(program)}"

    async def close(self) -> None:
        """Close the SSH connections (the agents keep running)."""
        for host in self.hosts.values():
            conn, host.conn = host.conn, None
            if conn is not None:
                conn.close()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(conn.wait_closed(), 2.0)

    # -- placement and addresses --------------------------------------------------------------

    def _placement(self, service: str) -> list[_Host]:
        names = self.settings.hosts_of(service)
        if not names:
            raise SshSetupError(
                f"service {service!r} has no host in environment {self.env!r}: its placement "
                f"{self.settings.placement.get(service)!r} names none of "
                f"{', '.join(self.hosts)}",
                hint="fix runtime.placement in airlock.yaml (host names or role:NAME)",
            )
        return [self.hosts[name] for name in names]

    def _public_address(self, host: _Host) -> str:
        """Where clients reach a host's proxies."""
        listen = (self.settings.listen or "").strip()
        return host.address if listen in _WILDCARDS else listen

    def _listen_address(self, host: _Host) -> str:
        return (self.settings.listen or "").strip() or host.address

    async def _hosts_of_instance(self, instance_id: str) -> list[_Host]:
        service = self._services.get(instance_id)
        if service is None:
            # the runner's instance ids start with the service's name
            names = sorted(
                (s for s in self.project.services if instance_id.startswith(f"{s}-")), key=len
            )
            service = names[-1] if names else None
        if service is None:
            await self.status()
            service = self._services.get(instance_id)
        if service is None:
            return list(self.hosts.values())
        return self._placement(service)

    def _ready_path(self, service: str, instance_id: str) -> str | None:
        model = self.project.services.get(service)
        if model is not None:
            return model.ready or model.health
        return self._ready_paths.get(instance_id)

    def _host_spec(self, spec: InstanceSpec, host: _Host, folder: str) -> InstanceSpec:
        """The spec as ``host`` runs it: its release folder, its python, and the URLs of
        dependencies that also run on it pointing at its own proxies."""
        argv = list(spec.argv)
        if argv and argv[0] in {"python", "python3"}:
            argv[0] = self.settings.python
        rewrites: list[tuple[re.Pattern[str], str]] = []
        for service, port in self._ports.items():
            names = self.settings.hosts_of(service)
            if not names or host.name not in names or names[0] == host.name:
                continue
            first = Endpoint(self._public_address(self.hosts[names[0]]), port).url
            mine = Endpoint(self._public_address(host), port).url
            if first != mine:
                rewrites.append((re.compile(re.escape(first) + r"(?![0-9])"), mine))
        data_first, data_mine = self.data_dir, f"{host.env_dir}/data"
        env: dict[str, str] = {}
        for key, value in spec.env.items():
            for pattern, mine in rewrites:
                value = pattern.sub(mine, value)
            if host.env_dir is not None and data_first != data_mine:
                value = value.replace(data_first, data_mine)
            env[key] = value
        return replace(spec, argv=tuple(argv), cwd=folder, env=env)

    # -- releases -----------------------------------------------------------------------------

    def _release_of(self, cwd: str) -> _Release:
        """The sealed files of the release at ``cwd`` (its ``manifest.json`` one level up, or
        the folder's files hashed here when it has none)."""
        cached = self._releases.get(cwd)
        if cached is not None:
            return cached
        folder = Path(cwd)
        manifest = folder.parent / "manifest.json"
        files: dict[str, str] = {}
        release_id = ""
        try:
            data = json.loads(manifest.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            data = None
        if isinstance(data, dict) and isinstance(data.get("files"), dict):
            files = {str(k): str(v) for k, v in data["files"].items()}
            release_id = str(data.get("id") or folder.parent.name)
        elif folder.is_dir():
            for path in sorted(folder.rglob("*")):
                if path.is_file():
                    files[path.relative_to(folder).as_posix()] = _sha256(path)
            listing = json.dumps(sorted(files.items())).encode()
            release_id = "dir-" + hashlib.sha256(listing).hexdigest()[:16]
        else:
            raise UsageError(
                f"the release folder {cwd} does not exist on this machine",
                hint="seal the release with `airlock release build` first",
            )
        if not re.fullmatch(r"[A-Za-z0-9._-]+", release_id) or release_id.startswith("."):
            raise UsageError(f"unusable release id {release_id!r} in {manifest}")
        lost = [relative for relative in files if not (folder / relative).is_file()]
        if lost:
            raise UsageError(
                f"release {release_id} lacks {len(lost)} of its sealed files on this machine "
                f"(e.g. {lost[0]})",
                hint="seal the release again with `airlock release build`",
            )
        release = _Release(release_id, folder, files)
        self._releases[cwd] = release
        return release

    async def _install_release(self, host: _Host, release: _Release) -> str:
        """Make sure the release's files are on the host: upload the objects it lacks, let the
        host verify every hash, link the release's folder. Returns that folder."""
        done = host.releases.get(release.id)
        if done is not None:
            return done
        lock = self._release_locks.setdefault((host.name, release.id), asyncio.Lock())
        async with lock:
            if release.id in host.releases:
                return host.releases[release.id]
            base = await self._base(host)
            hello = await self._hello(host, start=False, releases=[release])
            there = hello["releases"][release.id]
            if there["complete"]:
                host.releases[release.id] = str(there["dir"])
                return host.releases[release.id]
            missing: list[str] = list(there["missing"])
            incoming: str | None = None
            if missing:
                incoming = f"{base}/objects/.incoming-{secrets.token_hex(6)}"
                sources = {digest: path for path, digest in release.files.items()}
                uploads = [(release.folder / sources[d], f"{incoming}/{d}") for d in missing]
                size = sum(path.stat().st_size for path, _ in uploads)
                await self._upload(host, uploads, incoming, size, hello.get("free"), "sealed files")
                self.objects_copied[host.name] += len(uploads)
            answer = await self._tool(
                host,
                {
                    "command": "install_release",
                    "base": base,
                    "id": release.id,
                    "files": release.files,
                    "incoming": incoming,
                    "nonce": secrets.token_hex(4),
                    "keep": self.settings.keep_releases,
                },
                timeout=600.0,
            )
            if answer.get("error") == "verify":
                damaged = [self._path_of(release, d) for d in answer.get("damaged", [])]
                lost = [self._path_of(release, d) for d in answer.get("missing", [])]
                what = []
                if damaged:
                    what.append(
                        "files that do not match their sealed sha256: " + ", ".join(damaged)
                    )
                if lost:
                    what.append("files that never arrived: " + ", ".join(lost))
                raise _HostFailure(
                    f"release {release.id} was not started there: the host found "
                    + "; ".join(what),
                    hint="verify the release here (`airlock release show`) and deploy again; "
                    "a damaged copy on the host was removed",
                )
            self._raise_tool_error(host, answer, f"installing release {release.id}")
            host.releases[release.id] = str(answer["dir"])
            return host.releases[release.id]

    @staticmethod
    def _path_of(release: _Release, digest: str) -> str:
        return next((p for p, d in release.files.items() if d == digest), digest[:12])

    async def _upload(
        self,
        host: _Host,
        files: Sequence[tuple[Path, str]],
        folder: str,
        size: int,
        free: Any,
        what: str,
    ) -> None:
        """Upload ``files`` (local path, remote path) into the new ``folder`` by SFTP; check
        the room first; on failure remove the folder and say whether the disk was full."""
        base = host.base or ""
        if isinstance(free, int) and free < size + DISK_MARGIN:
            raise _HostFailure(
                f"not enough disk space for the {what}: {_size(size)} needed, "
                f"{_size(free)} free in {base}",
                hint=f"free space on {host.name} (or set runtime.base_dir to a larger disk)",
            )
        conn = await self._connect(host)
        gate = asyncio.Semaphore(UPLOADS_AT_ONCE)

        async def put(sftp: asyncssh.SFTPClient, local: Path, remote: str) -> None:
            async with gate:
                await sftp.put(str(local), remote)

        try:
            async with conn.start_sftp_client() as sftp:
                folders = sorted({remote.rsplit("/", 1)[0] for _, remote in files} | {folder})
                for path in folders:
                    await sftp.makedirs(path, exist_ok=True)
                await asyncio.gather(*(put(sftp, local, remote) for local, remote in files))
        except (asyncssh.SFTPError, OSError) as exc:
            reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or str(exc)
            # sftp-server says "Failure" for a full disk: look at the disk before cleaning up
            room: dict[str, Any] = {}
            with contextlib.suppress(Exception):
                room = await self._tool(
                    host, {"command": "cleanup", "base": base, "paths": [folder]}
                )
            left, inodes = room.get("free_before"), room.get("inodes_before")
            no_inodes = isinstance(inodes, int) and inodes < 2
            if (
                isinstance(exc, asyncssh.SFTPNoSpaceOnFilesystem)
                or no_inodes
                or (isinstance(left, int) and left < DISK_MARGIN)
            ):
                shown = "no free inodes" if no_inodes else f"{_size(left or 0)} free"
                raise _HostFailure(
                    f"the disk filled up while copying the {what} ({_size(size)}) into {base} "
                    f"({shown}); the partial copy was removed",
                    hint=f"free space on {host.name} (or set runtime.base_dir to a larger disk)",
                ) from None
            if isinstance(exc, asyncssh.SFTPError) or not _connection_error(exc):
                raise _HostFailure(f"copying the {what} failed: {reason}") from None
            raise

    # -- connections ----------------------------------------------------------------------------

    def _own_loop(self) -> None:
        """Connections belong to the event loop that opened them: a new loop starts afresh,
        and the connections are closed when their loop ends."""
        loop = asyncio.get_running_loop()
        if self._loop is loop:
            return
        self._loop = loop
        for host in self.hosts.values():
            host.reset()
        self._release_locks.clear()
        self._keeper = loop.create_task(self._close_at_loop_end())

    async def _close_at_loop_end(self) -> None:
        try:
            await asyncio.Event().wait()
        finally:
            for host in self.hosts.values():
                if host.conn is not None:
                    host.conn.close()
                    host.conn = None

    async def _connect(self, host: _Host) -> asyncssh.SSHClientConnection:
        """The host's connection, opened when needed. A host that just failed to answer in
        time is not waited for again within ``connect_timeout``: a rollback past a lost host
        stays fast."""
        self._own_loop()
        async with host.lock:
            if host.conn is not None and not host.conn.is_closed():
                return host.conn
            if host.silent is not None:
                since = time.monotonic() - host.silent[0]
                if since < self.settings.connect_timeout:
                    earlier = host.silent[1]
                    raise _HostFailure(
                        f"{earlier.message} ({since:.0f} s ago; not waited for again yet)",
                        hint=earlier.hint,
                    )
            try:
                host.conn = await self._open(host)
            except _HostFailure as exc:
                if exc.slow:
                    host.silent = (time.monotonic(), exc)
                raise
            host.silent = None
            return host.conn

    async def _open(self, host: _Host) -> asyncssh.SSHClientConnection:
        model = host.model
        where = f"{model.address}:{model.port}"
        keys: Any = ()
        if host.key:
            key_path = self._local_path(host.key)
            if not key_path.is_file():
                raise _HostFailure(
                    f"the key file {key_path} does not exist",
                    hint="fix runtime.key (or hosts.NAME.key) in airlock.yaml",
                    setup=True,
                )
            keys = [str(key_path)]
        pin = self.settings.host_keys == "pin"
        known_file = self._known_hosts_file()
        known = await asyncio.to_thread(_read_known_hosts, known_file, pin)
        matched: list[bool] = []

        def trusted(host_name: str, addr: str, port: int | None) -> Any:
            result = known.match(host_name, addr, port)
            matched.append(bool(result[0] or result[1]))
            return result

        checker: list[_HostKeyCheck] = []

        def factory() -> _HostKeyCheck:
            check = _HostKeyCheck(pin, matched)
            checker.append(check)
            return check

        try:
            conn = await asyncssh.connect(
                model.address,
                model.port,
                username=host.user,
                client_keys=keys,
                known_hosts=trusted,
                client_factory=factory,
                connect_timeout=self.settings.connect_timeout,
                login_timeout=max(self.settings.connect_timeout, 10.0),
                keepalive_interval=KEEPALIVE_INTERVAL,
                keepalive_count_max=KEEPALIVE_COUNT,
            )
        except TimeoutError:
            failure = _HostFailure(
                f"cannot connect to {where}: no answer within {self.settings.connect_timeout:g} s",
                hint="check that the host is up and reachable from here "
                "(runtime.connect_timeout sets the wait)",
            )
            failure.slow = True
            raise failure from None
        except asyncssh.HostKeyNotVerifiable:
            offered = checker[-1].offered if checker else None
            fingerprint = offered.get_fingerprint() if offered is not None else "unknown"
            if any(matched):
                raise _HostFailure(
                    f"the host key of {where} CHANGED: it offered {fingerprint}, which is not "
                    f"the key recorded in {known_file}; refusing to connect",
                    hint="if the host was reinstalled, check its new key out of band and "
                    f"replace its line in {known_file}; otherwise someone may be in the middle",
                    setup=True,
                ) from None
            raise _HostFailure(
                f"the host key of {where} is unknown: it offered {fingerprint}, which is not "
                f"in {known_file}",
                hint=f"check the fingerprint and add the host's key to {known_file} "
                "(ssh-keyscan), or set runtime.host_keys: pin to trust hosts on first use",
                setup=True,
            ) from None
        except asyncssh.PermissionDenied:
            key_text = host.key or "the default keys and ssh-agent"
            raise _HostFailure(
                f"{host.user}@{where} refused the login with {key_text}",
                hint=f"authorize that key for {host.user} on the host, or set runtime.key / "
                "runtime.user (or hosts.NAME.key / .user) in airlock.yaml",
                setup=True,
            ) from None
        except (OSError, asyncssh.Error) as exc:
            reason = getattr(exc, "reason", None) or str(exc)
            if isinstance(exc, OSError) and exc.errno:
                reason = os.strerror(exc.errno)
            raise _HostFailure(
                f"cannot connect to {where}: {reason}",
                hint="check that the host is up, its sshd listens, and the address and port "
                "in airlock.yaml",
            ) from None
        if pin and checker and checker[-1].accepted and checker[-1].offered is not None:
            await asyncio.to_thread(self._pin, model, checker[-1].offered)
        return conn

    def _known_hosts_file(self) -> Path:
        if self.settings.host_keys == "pin":
            return state_dir(self.root) / "known_hosts"
        if self.settings.known_hosts:
            return self._local_path(self.settings.known_hosts)
        return Path("~/.ssh/known_hosts").expanduser()

    def _local_path(self, text: str) -> Path:
        path = Path(os.path.expanduser(text))
        return path if path.is_absolute() else self.root / path

    def _pin(self, model: SshHostModel, key: asyncssh.SSHKey) -> None:
        path = state_dir(self.root) / "known_hosts"
        path.parent.mkdir(parents=True, exist_ok=True)
        where = model.address if model.port == 22 else f"[{model.address}]:{model.port}"
        line = f"{where} {key.export_public_key('openssh').decode().strip()}\n"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(fd, "a", encoding="utf-8") as handle:
            handle.write(line)

    async def _guarded(self, host: _Host, work: Callable[[], Awaitable[T]]) -> T:
        """Run ``work`` for ``host``, turning a broken connection into a failure naming it."""
        try:
            return await work()
        except _HostFailure:
            raise
        except OSError as exc:
            if exc.filename is None or isinstance(exc, ConnectionError):
                raise self._broken(host, exc) from None
            raise _HostFailure(  # a file on this machine
                f"{exc.strerror or type(exc).__name__}: {exc.filename} (on this machine)"
            ) from None
        except (asyncssh.Error, TimeoutError) as exc:
            raise self._broken(host, exc) from None

    def _broken(self, host: _Host, exc: BaseException) -> _HostFailure:
        """The failure for a connection that broke; it is dropped (the next call reconnects)."""
        conn, host.conn = host.conn, None
        if conn is not None:
            conn.close()
        if isinstance(exc, TimeoutError):
            reason = "timed out"
        else:
            reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or str(exc)
        return _HostFailure(
            f"the SSH connection to {host.address} failed ({reason or type(exc).__name__})",
            hint="check the host and the network; the agent there keeps running, and the next "
            "command reconnects",
        )

    async def _gather(
        self, hosts: Sequence[_Host], work: Callable[[_Host], Awaitable[T]]
    ) -> dict[str, T | BaseException]:
        """Run ``work`` on every host at once; each host's result or exception."""
        results = await asyncio.gather(
            *(self._guarded(host, functools.partial(work, host)) for host in hosts),
            return_exceptions=True,
        )
        for result in results:
            if isinstance(result, asyncio.CancelledError | KeyboardInterrupt):
                raise result
        return {host.name: result for host, result in zip(hosts, results, strict=True)}

    async def _each(
        self, hosts: Sequence[_Host], work: Callable[[_Host], Awaitable[T]], what: str
    ) -> dict[str, T]:
        """Run ``work`` on every host; raise one error naming every host that failed."""
        outcomes = await self._gather(hosts, work)
        failures = {n: e for n, e in outcomes.items() if isinstance(e, BaseException)}
        if failures:
            raise self._combine(what, failures)
        return {n: r for n, r in outcomes.items() if not isinstance(r, BaseException)}

    def _combine(self, what: str, failures: dict[str, BaseException]) -> AirlockError:
        """One error for failures on several hosts, each named with its address."""
        setup = all(isinstance(e, _HostFailure) and e.setup for e in failures.values())
        lines: list[str] = []
        hints: list[str] = []
        order = list(self.hosts)
        for name, exc in sorted(failures.items(), key=lambda item: order.index(item[0])):
            host = self.hosts[name]
            lines.append(f"host {name} ({host.address}): {_message(exc)}")
            hint = getattr(exc, "hint", None)
            if hint and hint not in hints:
                hints.append(hint)
        head = f"ssh runtime, environment {self.env!r}: {what}"
        message = (
            f"{head}: {lines[0]}"
            if len(lines) == 1
            else f"{head} on {len(lines)} hosts:\n  " + "\n  ".join(lines)
        )
        kind: type[AirlockError] = SshSetupError if setup else RuntimeFailure
        return kind(message, hint="; ".join(hints) or None)

    # -- talking to a host ----------------------------------------------------------------------

    async def _tool(
        self, host: _Host, arguments: dict[str, Any], *, timeout: float = 60.0
    ) -> dict[str, Any]:
        """Run one command of the host tool with the host's python3; its JSON answer."""
        conn = await self._connect(host)
        program = f"{_HOST_TOOL}\nmain({json.dumps(arguments)!r})\n"
        python = self.settings.python
        command = f"{shlex.quote(python)} -I -"
        try:
            result = await asyncio.wait_for(self._run_with_input(conn, command, program), timeout)
        except TimeoutError:
            raise _HostFailure(
                f"{arguments['command']} on the host did not finish within {timeout:g} s"
            ) from None
        out = str(result.stdout or "")
        for line in out.splitlines():
            if line.startswith(_JSON_MARK):
                answer = json.loads(line[len(_JSON_MARK) :])
                if isinstance(answer, dict):
                    return answer
        err = str(result.stderr or "").strip()
        said = " ".join((out.strip() + " " + err).split())[:300]
        if result.exit_status == 127 or (result.exit_status and "not found" in err):
            raise _HostFailure(
                f"{python} was not found on the host ({said or 'exit status 127'})",
                hint=f"install Python {MIN_PYTHON[0]}.{MIN_PYTHON[1]}+ there, or point "
                "runtime.python at it",
                setup=True,
            )
        version = re.search(r"Python (\d+)\.(\d+)(?:\.(\d+))?", out + " " + err)
        if version and (int(version[1]), int(version[2])) < MIN_PYTHON:
            raise _HostFailure(
                f"{python} on the host is Python {version[1]}.{version[2]}; Airlock's agent "
                f"needs {MIN_PYTHON[0]}.{MIN_PYTHON[1]} or newer",
                hint=f"install Python {MIN_PYTHON[0]}.{MIN_PYTHON[1]}+ there, or point "
                "runtime.python at it",
                setup=True,
            )
        raise _HostFailure(
            f"{python} on the host did not run Airlock's helper (exit status "
            f"{result.exit_status}): {said or 'no output'}",
            hint="check runtime.python and that the host's disk is not full",
        )

    @staticmethod
    async def _run_with_input(
        conn: asyncssh.SSHClientConnection, command: str, program: str
    ) -> asyncssh.SSHCompletedProcess:
        """Run ``command`` with ``program`` as its input; its completed process.

        A command that exits before reading its input (a python3 that is not there) closes
        the channel under the write: its exit status and error output say why, not the
        write's "channel not open for sending".
        """
        process = await conn.create_process(command)
        try:
            process.stdin.write(program)
            process.stdin.write_eof()
        except (BrokenPipeError, ConnectionResetError):
            pass
        return await process.wait(check=False)

    def _raise_tool_error(self, host: _Host, answer: dict[str, Any], doing: str) -> None:
        error = answer.get("error")
        if not error:
            return
        if answer.get("errno") in {"ENOSPC", "EDQUOT"}:
            raise _HostFailure(
                f"the disk is full ({doing}): {error} ({answer.get('filename') or host.base})",
                hint=f"free space on {host.name} (or set runtime.base_dir to a larger disk)",
            )
        where = f" ({answer['filename']})" if answer.get("filename") else ""
        raise _HostFailure(f"{doing} failed: {error}{where}")

    async def _hello(
        self, host: _Host, *, start: bool, releases: Sequence[_Release] = ()
    ) -> dict[str, Any]:
        """Ask the host about itself (Python, machine, BASE, the payload, the agent, the
        given releases), starting the agent when ``start`` and the payload is there."""
        arguments = {
            "command": "hello",
            "base": self.settings.base_dir,
            "env": self.env,
            "payload": agent_payload().digest,
            "listen": self._listen_address(host),
            "start": start,
            "releases": [{"id": r.id, "hashes": r.hashes} for r in releases],
        }
        answer = await self._tool(host, arguments, timeout=30.0)
        version = tuple(answer.get("python") or (0, 0))
        if version[:2] < MIN_PYTHON:
            shown = ".".join(str(v) for v in version)
            raise _HostFailure(
                f"{self.settings.python} on the host is Python {shown}; Airlock's agent needs "
                f"{MIN_PYTHON[0]}.{MIN_PYTHON[1]} or newer",
                hint=f"install Python {MIN_PYTHON[0]}.{MIN_PYTHON[1]}+ there, or point "
                "runtime.python at it",
                setup=True,
            )
        self._raise_tool_error(host, answer, "looking at the host")
        mine = platform.machine()
        if answer.get("machine") != mine:
            raise _HostFailure(
                f"the host is {answer.get('machine')!r} but this machine is {mine!r}: the agent "
                "needs psutil's compiled extension, which Airlock ships from this installation",
                hint="run Airlock from a machine of the hosts' type",
                setup=True,
            )
        host.base = str(answer["base"])
        host.env_dir = str(answer["env_dir"])
        host.info = AgentInfo.from_json(answer.get("agent"))
        dead = answer.get("dead_pid")
        host.dead_agent = (dead, str(answer.get("log_tail") or "")) if dead else None
        if start and host.info is None and answer.get("payload") and answer.get("problem"):
            raise _HostFailure(
                f"cannot start the agent of environment {self.env!r}: {answer['problem']}",
                hint=f"see {host.env_dir}/agent.log on {host.name}",
            )
        return answer

    async def _base(self, host: _Host) -> str:
        if host.base is None:
            await self._hello(host, start=False)
        assert host.base is not None
        return host.base

    async def _prepare(self, host: _Host) -> None:
        """Connect, install the agent's code when missing, start the agent when not running."""
        if host.info is not None and host.conn is not None and not host.conn.is_closed():
            return
        await self._connect(host)  # binds the locks to this event loop
        async with host.preparing:
            if host.info is not None and host.conn is not None and not host.conn.is_closed():
                return
            await self._prepare_now(host)

    async def _prepare_now(self, host: _Host) -> None:
        answer = await self._hello(host, start=True)
        if not answer.get("payload"):
            await self._install_payload(host, answer.get("free"))
            answer = await self._hello(host, start=True)
        if host.info is None:
            raise _HostFailure(
                f"the agent of environment {self.env!r} did not start",
                hint=f"see {host.env_dir}/agent.log on {host.name}",
            )
        try:
            await self._call(host, host.info, {"op": "ping"}, 10.0)
        except _AgentGone:
            host.info = None
            raise

    async def _install_payload(self, host: _Host, free: Any) -> None:
        payload = agent_payload()
        base = await self._base(host)
        staged = f"{base}/agent/.tmp-{payload.digest[:12]}-{secrets.token_hex(4)}"
        uploads = [(path, f"{staged}/{relative}") for relative, path in payload.files]
        # byte-compiled files take about as much room again
        await self._upload(host, uploads, staged, 2 * payload.size, free, "agent's code")
        answer = await self._tool(
            host,
            {
                "command": "install_payload",
                "base": base,
                "digest": payload.digest,
                "staged": staged,
            },
            timeout=120.0,
        )
        self._raise_tool_error(host, answer, "installing the agent")

    async def _agent(self, host: _Host, *, start: bool) -> AgentInfo | None:
        """The host's agent (started when ``start``), or None when it runs none."""
        if start:
            await self._prepare(host)
            return host.info
        if host.info is None or host.conn is None or host.conn.is_closed():
            await self._hello(host, start=False)
        return host.info

    async def _request(
        self, host: _Host, request: dict[str, Any], timeout: float, *, start: bool = False
    ) -> dict[str, Any]:
        """One request to the host's agent; its result. Raises :class:`_HostFailure`."""
        for attempt in (1, 2):
            info = await self._agent(host, start=start)
            if info is None and host.dead_agent is not None:
                raise self._gone(*host.dead_agent)
            if info is None:
                raise _AgentGone(
                    f"no agent of environment {self.env!r} runs there",
                    hint=f"deploy first: `airlock deploy {self.env}`",
                )
            try:
                reply = await self._call(host, info, request, timeout)
                break
            except _AgentGone:
                host.info = None
                if not start or attempt == 2:
                    raise
        if not reply.get("ok"):
            error = reply.get("error")
            error = error if isinstance(error, dict) else {}
            code = str(error.get("code", "unknown"))
            message = str(error.get("message", "the agent reported an unknown error"))
            raise _HostFailure(message, hint=_AGENT_HINTS.get(code), code=code, data=dict(error))
        result = reply.get("result")
        return result if isinstance(result, dict) else {}

    async def _call(
        self, host: _Host, info: AgentInfo, request: dict[str, Any], timeout: float
    ) -> dict[str, Any]:
        """Send one request through a direct-tcpip channel to the agent's loopback port."""
        conn = await self._connect(host)
        sent = False
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await conn.open_connection("127.0.0.1", info.port)
                sent = True
                try:
                    return await exchange(reader, writer, info.token, request)
                finally:
                    writer.close()
        except (asyncssh.ConnectionLost, asyncssh.DisconnectError, ConnectionError) as exc:
            failure = self._broken(host, exc)
            failure.sent = sent
            raise failure from None
        except asyncssh.ChannelOpenError as exc:
            if exc.code == asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED:
                raise _HostFailure(
                    "its sshd refuses forwarding to the agent's port on the host's loopback "
                    f"({exc.reason})",
                    hint="allow it in the host's sshd_config: AllowTcpForwarding local",
                    setup=True,
                ) from None
            if conn.is_closed() or "connection closed" in str(exc.reason).lower():
                raise self._broken(host, exc) from None
            raise await self._agent_gone(host, info, str(exc.reason)) from None
        except NoAnswer as exc:
            raise _HostFailure(
                f"the agent (pid {info.pid}) did not answer {request['op']!r}: {exc}"
            ) from None
        except TimeoutError:
            conn.close()
            host.conn = None
            failure = _HostFailure(
                f"the agent (pid {info.pid}) did not answer {request['op']!r} within "
                f"{timeout:g} s (the host or the connection may be down)",
                hint="check the host; the next command reconnects",
            )
            failure.sent = sent
            failure.slow = True
            host.silent = (time.monotonic(), failure)
            raise failure from None

    async def _agent_gone(self, host: _Host, info: AgentInfo, reason: str) -> _HostFailure:
        """Why the agent's port refused a channel: the agent is gone (and what its log says
        last), or the host could not be asked."""
        try:
            answer = await self._hello(host, start=False)
        except _HostFailure as exc:
            return exc
        except (asyncssh.Error, OSError, TimeoutError) as exc:
            return self._broken(host, exc)
        if host.info is not None and host.info.pid == info.pid:
            return _HostFailure(f"cannot reach the agent (pid {info.pid}) on its port: {reason}")
        gone = self._gone(info.pid, str(answer.get("log_tail") or ""))
        host.info = None
        return gone

    def _gone(self, pid: int, tail: str) -> _AgentGone:
        text = f"; last lines of its log:\n{tail}" if tail else ""
        return _AgentGone(
            f"the agent of environment {self.env!r} (pid {pid}) is not running any more "
            f"(killed?){text}",
            hint="its instances on that host are no longer supervised; the next deploy starts "
            "a new agent there, which stops what the old one left",
        )

    async def _status_reply(self, host: _Host) -> dict[str, Any] | None:
        """The host agent's status, or None when no agent ran there (one that was killed is
        an error: its instances run unsupervised)."""
        if await self._agent(host, start=False) is None:
            if host.dead_agent is not None:
                raise self._gone(*host.dead_agent)
            return None
        return await self._request(host, {"op": "status"}, 10.0)

    async def _get(
        self, host: _Host, instance_id: str, path: str, timeout: float, limit: int
    ) -> dict[str, Any]:
        request = {
            "op": "get",
            "instance_id": instance_id,
            "path": path,
            "timeout": timeout,
            "limit": limit,
        }
        return await self._request(host, request, timeout + CALL_SLACK)

    async def _switch_back(
        self, service: str, hosts: Sequence[_Host], before: dict[str, str | None]
    ) -> str:
        """Hand ``hosts`` back to the instance each served before; what happened, as the end
        of an error message."""
        back = [h for h in hosts if before.get(h.name) is not None]
        kept = [h.name for h in hosts if before.get(h.name) is None]

        async def switch_back(host: _Host) -> None:
            request = {"op": "switch", "service": service, "instance_id": before[host.name]}
            await self._request(host, request, 15.0)

        outcomes = await self._gather(back, switch_back)
        failed = {n: e for n, e in outcomes.items() if isinstance(e, BaseException)}
        went = [h.name for h in back if h.name not in failed]
        notes = []
        if went:
            notes.append(f"{', '.join(went)} went back to the previous instance")
        if kept:
            notes.append(f"{', '.join(kept)} kept the new one (nothing served there before)")
        notes += [f"{n} could not switch back: {_message(e)}" for n, e in failed.items()]
        return "".join(f"; {note}" for note in notes)

    async def _download_logs(self, host: _Host, folder: Path) -> list[Path]:
        """Bring the host's service logs up to date in ``folder``; the local files."""
        base = await self._base(host)
        listing = await self._tool(host, {"command": "logs", "base": base, "env": self.env})
        remote_dir = str(listing["folder"])
        sizes: dict[str, int] = {str(k): int(v) for k, v in listing.get("files", {}).items()}
        folder.mkdir(parents=True, exist_ok=True)
        if not sizes:
            return []
        conn = await self._connect(host)
        paths: list[Path] = []
        async with conn.start_sftp_client() as sftp:
            for name, size in sorted(sizes.items()):
                target = folder / name
                have = target.stat().st_size if target.is_file() else 0
                if have > size:  # the host's log was rotated or replaced: copy it whole
                    have = 0
                    target.unlink()
                if have < size:
                    async with sftp.open(f"{remote_dir}/{name}", "rb") as remote:
                        await remote.seek(have)
                        with target.open("ab" if have else "wb") as local:
                            while have < size:
                                data = await remote.read(min(1 << 20, size - have))
                                if not data:
                                    break
                                local.write(cast(bytes, data))
                                have += len(data)
                paths.append(target)
        return paths


# -- small helpers -----------------------------------------------------------------------------


def _message(exc: BaseException) -> str:
    if isinstance(exc, _HostFailure | AirlockError):
        return exc.message
    return str(exc) or type(exc).__name__


def _connection_error(exc: BaseException) -> bool:
    return isinstance(exc, asyncssh.Error | ConnectionError | TimeoutError)


def _read_known_hosts(path: Path, pin: bool) -> asyncssh.SSHKnownHosts:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if not pin:
            raise _HostFailure(
                f"the known_hosts file {path} does not exist",
                hint="set runtime.known_hosts to a file with the hosts' keys, or use "
                "runtime.host_keys: pin",
                setup=True,
            ) from None
        text = ""
    except OSError as exc:
        raise _HostFailure(
            f"cannot read the known_hosts file {path}: {exc.strerror}", setup=True
        ) from None
    return asyncssh.import_known_hosts(text)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} bytes"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB"):
        value /= 1024
        if value < 1024 or unit == "GiB":
            break
    return f"{value:.1f} {unit}"


def _concatenate(parts: Sequence[Path], target: Path) -> None:
    """``target`` = ``parts`` one after the other (each ends with a newline), atomically."""
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    with temporary.open("wb") as out:
        for part in parts:
            with part.open("rb") as handle:
                data = handle.read()
            out.write(data)
            if data and not data.endswith(b"\n"):
                out.write(b"\n")
    os.replace(temporary, target)


if TYPE_CHECKING:

    def _is_a_runtime(runtime: SshRuntime) -> Runtime:
        return runtime  # mypy checks that SshRuntime implements the Runtime protocol
