"""What a service needs from the network and the host, observed (``airlock discover``).

The sealed service runs in a sandbox (:mod:`airlock.sandbox`) with the config its environment
renders and its dependencies started as in a deploy; only its own command is wrapped in
``strace -f``. It is sent its readiness path and declared ``endpoints`` for a while, then
stopped, and the trace says what it did:

* the ports it listened on;
* every address and port it connected to, short-lived and failed connections included (a
  ``connect`` refused at once, or in progress and refused later), named after the dependency
  when it is another service of the sandbox (so ``payment → account``, not a loopback port);
* every file it opened outside its sealed folder, read or written (the interpreter's and the
  system's libraries left out);
* for a Python service, a ``sitecustomize`` loaded at start (a PEP 578 audit hook and a
  recording ``os.environ``) adds the environment variables it read and the host names it
  resolved; for others, names come from the DNS queries on the wire.

A static scan of the service's sealed sources adds the environment variables read in other
languages (``getenv("X")``, ``process.env.X``, ``os.Getenv("X")``, ``ENV["X"]``,
``std::env::var("X")``, ``$X`` in shell scripts). The JSON shape is documented in
``docs/discover.md``; ``airlock preflight`` reads it, so keep it stable.

:func:`parse_strace` and :func:`scan_text` are pure; :func:`discover_service` does the IO.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from airlock.bundle import Bundle
from airlock.errors import RuntimeFailure, UsageError
from airlock.masking import Masker
from airlock.paths import state_dir
from airlock.plan import uses_database
from airlock.runtimes import InstanceSpec
from airlock.sandbox import Outcome, Sandbox

__all__ = [
    "Discovery",
    "Trace",
    "default_env",
    "discover_service",
    "parse_strace",
    "read_hook_log",
    "release_markdown",
    "scan_text",
    "strace_command",
    "write_reports",
]

#: Environment variable naming the strace binary (default: ``strace`` on PATH, /usr/bin/strace).
STRACE_VARIABLE = "AIRLOCK_STRACE"
#: The system calls traced: every network call, and the ways a file is opened.
TRACED = "trace=%network,open,openat,openat2,creat"
#: How much of a buffer strace prints: enough for a DNS query or answer.
STRING_LIMIT = 1024
#: Where the injected hook writes, and the prefix of the variables Airlock adds itself.
LOG_VARIABLE = "AIRLOCK_DISCOVER_LOG"
_OWN_VARIABLES = ("AIRLOCK_DISCOVER_", "PYTHONPATH")
#: Variables the local runtime passes to every service from its own environment, and sets.
RUNTIME_VARIABLES = (
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "SHELL",
    "LANG",
    "LC_ALL",
    "LC_CTYPE",
    "TZ",
    "PYTHONUNBUFFERED",
)
#: Names of the production environments, never the default of ``--env``.
PRODUCTION_NAMES = frozenset({"production", "prod"})
#: A failed connection: the errors a connect, or the first use of its socket, can end with.
_CONNECT_ERRORS = frozenset(
    {
        "ECONNREFUSED",
        "ECONNRESET",
        "ECONNABORTED",
        "EHOSTUNREACH",
        "ENETUNREACH",
        "ETIMEDOUT",
        "EPIPE",
        "EACCES",
        "EPERM",
        "EADDRNOTAVAIL",
    }
)
#: Files every process reads that say nothing about what the service needs of its host.
_SYSTEM_PREFIXES = (
    "/lib/",
    "/lib32/",
    "/lib64/",
    "/libx32/",
    "/usr/lib/",
    "/usr/lib32/",
    "/usr/lib64/",
    "/usr/local/lib/",
    "/usr/share/locale/",
    "/usr/share/zoneinfo/",
    "/usr/share/i18n/",
    "/etc/ld.so.",
    "/proc/",
    "/sys/",
    "/dev/",
)
_SYSTEM_FILES = frozenset(
    {
        "/etc/localtime",
        "/etc/locale.alias",
        "/etc/nsswitch.conf",
        "/etc/host.conf",
        "/etc/resolv.conf",
        "/etc/hosts",
        "/etc/gai.conf",
        "/etc/ld.so.cache",
        "/etc/ld.so.preload",
        "/etc/passwd",  # the user's own entry (home folder, name), looked up by libraries
        "/etc/group",
        "/etc/ssl/openssl.cnf",  # OpenSSL reads its configuration when `ssl` is imported
        "/usr/lib/ssl/openssl.cnf",
    }
)


# -- reading strace's output (pure) ------------------------------------------------------------


@dataclass(frozen=True)
class Listen:
    protocol: str
    address: str
    port: int


@dataclass
class Attempt:
    """One outbound connection (or datagram destination); ``error`` None when it worked."""

    protocol: str
    address: str
    port: int | None
    error: str | None
    pid: int
    fd: int
    inode: str | None = None


@dataclass(frozen=True)
class Open:
    path: str
    mode: str  # read | write | read-write
    error: str | None


@dataclass
class Trace:
    """What one strace output file says the traced processes did."""

    listens: list[Listen] = field(default_factory=list)
    attempts: list[Attempt] = field(default_factory=list)
    opens: list[Open] = field(default_factory=list)
    names: list[str] = field(default_factory=list)  # DNS questions sent on the wire
    answers: dict[str, str] = field(default_factory=dict)  # address → name, from DNS answers
    calls: int = 0


_LINE = re.compile(r"^(?:(?P<pid>\d+)\s+)?(?:\d\d:\d\d:\d\d(?:\.\d+)?\s+)?(?P<rest>.*)$")
_RESULT = re.compile(
    r"^(?P<ret>-?\d+|\?|0x[0-9a-fA-F]+)(?:<(?P<ann>.*)>)?(?:\s+(?P<err>E[A-Z0-9]+))?"
)
_SOCKET_FD = re.compile(r"^(?P<fd>\d+)<(?P<kind>[A-Za-z0-9-]+):\[(?P<inner>.*?)\]>")
_PLAIN_FD = re.compile(r"^(?P<fd>\d+)")
_INET = re.compile(r'sa_family=AF_INET, sin_port=htons\((\d+)\), sin_addr=inet_addr\("([^"]+)"\)')
_INET6 = re.compile(
    r'sa_family=AF_INET6, sin6_port=htons\((\d+)\).*?inet_pton\(AF_INET6, "([^"]+)"'
)
_UNIX = re.compile(r'sa_family=AF_UNIX, sun_path=(@?"(?:[^"\\]|\\.)*")')
_QUOTED = re.compile(r'"((?:[^"\\]|\\.)*)"')
_DIRFD = re.compile(r"^(?:AT_FDCWD|\d+)<(?P<dir>[^>]*)>")
_SENDS = frozenset({"sendto", "sendmsg", "sendmmsg"})
_RECEIVES = frozenset({"recvfrom", "recvmsg", "recvmmsg"})


def unescape(text: str) -> bytes:
    """The bytes of a string as strace prints it (``\\xNN``, octal and C escapes)."""
    out = bytearray()
    i = 0
    simple = {"n": 10, "t": 9, "r": 13, "v": 11, "f": 12, "\\": 92, '"': 34, "'": 39}
    while i < len(text):
        char = text[i]
        if char != "\\" or i + 1 == len(text):
            out += char.encode("utf-8", "surrogateescape")
            i += 1
            continue
        nxt = text[i + 1]
        if nxt == "x" and re.match(r"[0-9a-fA-F]{2}", text[i + 2 : i + 4]):
            out.append(int(text[i + 2 : i + 4], 16))
            i += 4
        elif nxt in "01234567":
            digits = re.match(r"[0-7]{1,3}", text[i + 1 : i + 4])
            assert digits is not None
            out.append(int(digits.group(0), 8) & 0xFF)
            i += 1 + len(digits.group(0))
        else:
            out.append(simple.get(nxt, ord(nxt) & 0xFF))
            i += 2
    return bytes(out)


def _endpoint(text: str) -> tuple[str, int] | None:
    """``127.0.0.1:80`` or ``[::1]:80`` → (address, port)."""
    address, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        return None
    return address.strip("[]"), int(port)


def _protocol(kind: str) -> str:
    upper = kind.upper()
    for name in ("TCP", "UDP", "UNIX", "NETLINK"):
        if upper.startswith(name):
            return name.lower()
    return upper.lower()


def _sockaddr(args: str, *, last: bool = False) -> tuple[str, str, int | None] | None:
    """The (family, address, port) of the first (or last) socket address in ``args``."""
    found: list[tuple[int, tuple[str, str, int | None]]] = []
    for match in _INET.finditer(args):
        found.append((match.start(), ("inet", match.group(2), int(match.group(1)))))
    for match in _INET6.finditer(args):
        found.append((match.start(), ("inet6", match.group(2), int(match.group(1)))))
    for match in _UNIX.finditer(args):
        raw = match.group(1)
        abstract = raw.startswith("@")
        path = unescape(raw.lstrip("@")[1:-1]).decode("utf-8", "replace")
        found.append((match.start(), ("unix", ("@" if abstract else "") + path, None)))
    if not found:
        return None
    found.sort()
    return found[-1][1] if last else found[0][1]


def _dns_question(data: bytes) -> str | None:
    """The name a DNS query (or answer) asks about, or None when ``data`` is not DNS."""
    name, _ = _dns_name(data, 12)
    if len(data) < 17 or int.from_bytes(data[4:6], "big") == 0 or not name:
        return None
    return name


def _dns_name(data: bytes, offset: int) -> tuple[str | None, int]:
    labels: list[str] = []
    end = -1
    jumps = 0
    while offset < len(data):
        size = data[offset]
        if size == 0:
            offset += 1
            break
        if size & 0xC0 == 0xC0:  # a pointer to an earlier name
            if offset + 1 >= len(data) or jumps > 10:
                return None, len(data)
            end = offset + 2 if end < 0 else end
            offset = ((size & 0x3F) << 8) | data[offset + 1]
            jumps += 1
            continue
        if size > 63 or offset + 1 + size > len(data):
            return None, len(data)
        label = data[offset + 1 : offset + 1 + size]
        if not all(33 <= b < 127 for b in label):
            return None, len(data)
        labels.append(label.decode("ascii"))
        offset += 1 + size
    else:
        return None, len(data)
    return ".".join(labels) or None, end if end >= 0 else offset


def _dns_answers(data: bytes) -> tuple[str, list[str]] | None:
    """(question, addresses) of a DNS answer; None when ``data`` is not one."""
    if len(data) < 12 or not data[2] & 0x80:
        return None
    questions = int.from_bytes(data[4:6], "big")
    answers = int.from_bytes(data[6:8], "big")
    question, offset = _dns_name(data, 12)
    if question is None or questions < 1:
        return None
    offset += 4
    addresses: list[str] = []
    for _ in range(answers):
        _, offset = _dns_name(data, offset)
        if offset + 10 > len(data):
            break
        kind = int.from_bytes(data[offset : offset + 2], "big")
        length = int.from_bytes(data[offset + 8 : offset + 10], "big")
        rdata = data[offset + 10 : offset + 10 + length]
        offset += 10 + length
        if kind == 1 and len(rdata) == 4:
            addresses.append(str(ipaddress.IPv4Address(rdata)))
        elif kind == 28 and len(rdata) == 16:
            addresses.append(str(ipaddress.IPv6Address(rdata)))
    return question, addresses


class _Reader:
    """Turns strace lines into a :class:`Trace`; see :func:`parse_strace`."""

    def __init__(self) -> None:
        self.trace = Trace()
        self.partial: dict[tuple[int, str], str] = {}
        self.pending: list[Attempt] = []  # connects in progress
        self.kinds: dict[tuple[int, int], str] = {}  # (pid, fd) → protocol, from socket()
        self.bound: dict[tuple[int, int], tuple[str, int]] = {}

    def line(self, raw: str) -> None:
        match = _LINE.match(raw.rstrip("\n"))
        if match is None:
            return
        pid = int(match.group("pid") or 0)
        rest = match.group("rest")
        if rest.startswith(("+++", "---")):
            return
        if rest.startswith("<... "):
            resumed = re.match(r"<\.\.\. (\w+) resumed>\s?(.*)$", rest)
            if resumed is None:
                return
            head = self.partial.pop((pid, resumed.group(1)), None)
            if head is None:
                return
            rest = head + resumed.group(2)
        elif rest.endswith("<unfinished ...>"):
            call = re.match(r"(\w+)\(", rest)
            if call is not None:
                self.partial[(pid, call.group(1))] = rest[: -len("<unfinished ...>")].rstrip()
            return
        call = re.match(r"(\w+)\((.*)$", rest)
        if call is None:
            return
        name, body = call.group(1), call.group(2)
        cut = body.rfind(") = ")
        if cut < 0:
            return
        result = _RESULT.match(body[cut + 4 :])
        if result is None:
            return
        self.trace.calls += 1
        self.call(pid, name, body[:cut], result)

    def call(self, pid: int, name: str, args: str, result: re.Match[str]) -> None:
        ret, error, annotation = result.group("ret"), result.group("err"), result.group("ann")
        ok = error is None and ret != "?"
        if name in {"open", "openat", "openat2", "creat"}:
            self.open(name, args, annotation if ok else None, error)
            return
        if name == "socket":
            self.socket(pid, args, ret, annotation)
            return
        sock = _SOCKET_FD.match(args)
        plain = _PLAIN_FD.match(args)
        if plain is None:
            return
        fd = int(plain.group("fd"))
        protocol = _protocol(sock.group("kind")) if sock else self.kinds.get((pid, fd), "")
        inner = sock.group("inner") if sock else ""
        inode = inner if inner.isdigit() else None
        if name == "connect":
            self.connect(pid, fd, protocol, inode, args, error)
        elif name == "bind" and ok:
            addr = _sockaddr(args)
            if addr is not None and addr[2] is not None:
                self.bound[(pid, fd)] = (addr[1], addr[2])
                if protocol == "udp" and addr[2]:
                    self.trace.listens.append(Listen("udp", addr[1], addr[2]))
        elif name == "listen" and ok:
            local = _endpoint(inner) if "->" not in inner else None
            local = local or self.bound.get((pid, fd))
            if local is not None:
                self.trace.listens.append(Listen(protocol or "tcp", local[0], local[1]))
        elif name == "getsockopt" and "SO_ERROR" in args:
            value = re.search(r"SO_ERROR, \[(\w+)\]", args)
            if value is not None:
                self.settle(
                    pid, fd, inode, inner, None if value.group(1) == "0" else value.group(1)
                )
        elif name in _SENDS or name in _RECEIVES or name == "getpeername":
            if error is None:
                self.settle(pid, fd, inode, inner, None)
            elif error in _CONNECT_ERRORS:
                self.settle(pid, fd, inode, inner, error)
            if name in _SENDS:
                self.send(pid, fd, protocol, args, inner, ok)
            elif name in _RECEIVES and ok:
                self.receive(args, inner)

    def socket(self, pid: int, args: str, ret: str, annotation: str | None) -> None:
        if not ret.isdigit():
            return
        if annotation and ":" in annotation:
            kind = _protocol(annotation.split(":", 1)[0])
        elif "AF_UNIX" in args:
            kind = "unix"
        elif "SOCK_DGRAM" in args:
            kind = "udp"
        else:
            kind = "tcp"
        self.kinds[(pid, int(ret))] = kind
        self.bound.pop((pid, int(ret)), None)

    def connect(
        self, pid: int, fd: int, protocol: str, inode: str | None, args: str, error: str | None
    ) -> None:
        addr = _sockaddr(args)
        if addr is None:
            return  # AF_UNSPEC (a datagram socket's disconnect), netlink, …
        family, address, port = addr
        if family == "unix":
            protocol = "unix"
        elif protocol not in {"tcp", "udp"}:
            protocol = "tcp"
        if family in {"inet", "inet6"} and address in {"0.0.0.0", "::"} and port == 0:
            return  # AF_UNSPEC-style disconnects of a datagram socket
        attempt = Attempt(protocol, address, port, error, pid, fd, inode)
        self.trace.attempts.append(attempt)
        if error in {"EINPROGRESS", "EALREADY", "EAGAIN"}:
            self.pending = [p for p in self.pending if not (p.pid == pid and p.fd == fd)]
            self.pending.append(attempt)

    def settle(self, pid: int, fd: int, inode: str | None, inner: str, error: str | None) -> None:
        """A connect in progress on this socket ended (``error`` None: it worked)."""
        remote = _endpoint(inner.split("->", 1)[1]) if "->" in inner else None
        candidates = [p for p in self.pending if inode is not None and p.inode == inode]
        candidates = candidates or [p for p in self.pending if p.pid == pid and p.fd == fd]
        if not candidates and remote is not None:
            candidates = [p for p in self.pending if p.fd == fd and (p.address, p.port) == remote]
        if not candidates and inode is None:
            candidates = [p for p in self.pending if p.fd == fd]
        if not candidates:
            return
        attempt = candidates[-1]
        attempt.error = error
        self.pending.remove(attempt)

    def send(self, pid: int, fd: int, protocol: str, args: str, inner: str, ok: bool) -> None:
        addr = _sockaddr(args, last=True)
        remote = _endpoint(inner.split("->", 1)[1]) if "->" in inner else None
        if addr is not None and addr[0] != "unix" and protocol == "udp":
            self.trace.attempts.append(
                Attempt("udp", addr[1], addr[2], None if ok else "send failed", pid, fd)
            )
            remote = (addr[1], addr[2] or 0)
        if remote is not None and remote[1] == 53:
            for text in _QUOTED.findall(args):
                question = _dns_question(unescape(text))
                if question and question not in self.trace.names:
                    self.trace.names.append(question)

    def receive(self, args: str, inner: str) -> None:
        addr = _sockaddr(args, last=True)
        remote = _endpoint(inner.split("->", 1)[1]) if "->" in inner else None
        port = addr[2] if addr is not None else (remote[1] if remote else None)
        if port != 53:
            return
        for text in _QUOTED.findall(args):
            found = _dns_answers(unescape(text))
            if found is not None:
                for address in found[1]:
                    self.trace.answers[address] = found[0]

    def open(self, name: str, args: str, resolved: str | None, error: str | None) -> None:
        quoted = _QUOTED.search(args)
        if quoted is None:
            return
        path = unescape(quoted.group(1)).decode("utf-8", "surrogateescape")
        flags = args[quoted.end() :]
        if resolved:
            path = resolved
        elif not path.startswith("/"):
            directory = _DIRFD.match(args)
            if directory is not None:
                path = os.path.join(directory.group("dir"), path)
        path = os.path.normpath(path)
        if name == "creat" or ("O_RDWR" not in flags and "O_WRONLY" not in flags):
            mode = "write" if name == "creat" else "read"
        else:
            mode = "read-write" if "O_RDWR" in flags else "write"
        self.trace.opens.append(Open(path, mode, error))

    def finish(self) -> Trace:
        for attempt in self.pending:  # never completed: the program gave up on it
            attempt.error = "EINPROGRESS"
        self.pending = []
        return self.trace


def parse_strace(text: str | Iterable[str]) -> Trace:
    """Read ``strace -f -tt -yy -x`` output (one file, every process): listeners, connections
    (with their outcome), files opened, and the names asked of DNS servers."""
    reader = _Reader()
    for raw in text.splitlines() if isinstance(text, str) else text:
        reader.line(raw)
    return reader.finish()


# -- the injected hook -------------------------------------------------------------------------

#: ``sitecustomize.py`` on the observed Python service's ``PYTHONPATH``.
HOOK_SOURCE = '''\
"""Loaded at start by a Python service under `airlock discover`: records the environment
variables it reads and the host names it resolves, then runs any other sitecustomize."""
import os
import sys


def _airlock_discover():
    import json
    import socket
    import threading

    path = os.environ.get("AIRLOCK_DISCOVER_LOG")
    if not path:
        return
    state = {"lock": threading.Lock(), "seen": set()}

    def emit(record):
        key = json.dumps(record, sort_keys=True)
        if key in state["seen"]:
            return
        with state["lock"]:
            state["seen"].add(key)
            try:
                fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
                try:
                    os.write(fd, (key + "\\n").encode("utf-8", "replace"))
                finally:
                    os.close(fd)
            except OSError:
                pass

    if hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=lambda: state.update(lock=threading.Lock()))
    emit({
        "kind": "start",
        "prefixes": sorted({sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}),
        "path": [p for p in sys.path if p],
    })

    def text(value):
        if isinstance(value, bytes):
            return value.decode("ascii", "replace")
        return value if isinstance(value, str) else None

    def hook(event, args):
        if event in ("socket.getaddrinfo", "socket.gethostbyname") and args:
            name = text(args[0])
            if name:
                emit({"kind": "name", "name": name})

    sys.addaudithook(hook)
    real = socket.getaddrinfo

    def getaddrinfo(host, port, *args, **kwargs):
        found = real(host, port, *args, **kwargs)
        name = text(host)
        if name:
            for item in found:
                if item[4] and isinstance(item[4][0], str):
                    port = item[4][1] if len(item[4]) > 1 else None
                    emit({"kind": "resolved", "name": name, "address": item[4][0], "port": port})
        return found

    getaddrinfo.__wrapped__ = real
    socket.getaddrinfo = getaddrinfo
    base = type(os.environ)
    read = set()

    class RecordingEnviron(base):
        """os.environ, recording each key read."""

        def __getitem__(self, key):
            if key not in read and isinstance(key, str):
                read.add(key)
                emit({"kind": "env", "name": key})
            return base.__getitem__(self, key)

    wrapped = RecordingEnviron.__new__(RecordingEnviron)
    wrapped.__dict__.update(vars(os.environ))
    os.environ = wrapped


def _next_sitecustomize():
    import importlib.machinery
    import importlib.util

    here = os.path.dirname(os.path.abspath(__file__))
    rest = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", rest)
    if spec is not None and spec.loader is not None:
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)


for _step in (_airlock_discover, _next_sitecustomize):
    try:
        _step()
    except Exception:
        pass
'''


@dataclass
class HookLog:
    """What the injected hook recorded (empty when it never ran)."""

    ran: bool = False
    prefixes: set[str] = field(default_factory=set)
    variables: list[str] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    resolved: dict[tuple[str, int | None], str] = field(default_factory=dict)  # (address, port)


def _literal(name: str) -> bool:
    """Whether ``name`` is an address already (nothing was resolved)."""
    try:
        ipaddress.ip_address(name.split("%", 1)[0])
    except ValueError:
        return False
    return True


def read_hook_log(text: str) -> HookLog:
    """Read the hook's JSON lines (a torn last line is skipped)."""
    log = HookLog()
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if not isinstance(record, dict):
            continue
        kind = record.get("kind")
        if kind == "start":
            log.ran = True
            for item in [*record.get("prefixes", []), *record.get("path", [])]:
                if isinstance(item, str) and item.startswith("/"):
                    log.prefixes.add(os.path.normpath(item))
        elif kind == "env" and isinstance(record.get("name"), str):
            if record["name"] not in log.variables:
                log.variables.append(record["name"])
        elif kind == "name" and isinstance(record.get("name"), str):
            if record["name"] not in log.names and not _literal(record["name"]):
                log.names.append(record["name"])
        elif kind == "resolved":
            name, address, port = record.get("name"), record.get("address"), record.get("port")
            if isinstance(name, str) and isinstance(address, str) and not _literal(name):
                log.resolved.setdefault((address, port if isinstance(port, int) else None), name)
    return log


# -- the static scan (pure) --------------------------------------------------------------------

_NAME = r"([A-Za-z_][A-Za-z0-9_]*)"
_Q = r"""["']"""
_STATIC = [
    re.compile(rf"\bgetenv\(\s*{_Q}{_NAME}{_Q}", re.IGNORECASE),  # C, Go, Java, PHP, Python
    re.compile(rf"\bLookupEnv\(\s*{_Q}{_NAME}{_Q}"),
    re.compile(rf"\bprocess\.env\.{_NAME}"),
    re.compile(rf"\bprocess\.env\[\s*{_Q}{_NAME}{_Q}\s*\]"),
    re.compile(rf"\bENV\[\s*{_Q}{_NAME}{_Q}\s*\]"),
    re.compile(rf"\bENV\.fetch\(\s*{_Q}{_NAME}{_Q}"),
    re.compile(rf"\benv::var(?:_os)?\(\s*{_Q}{_NAME}{_Q}"),
    re.compile(rf"\benviron\[\s*{_Q}{_NAME}{_Q}\s*\]"),
    re.compile(rf"\benviron\.get\(\s*{_Q}{_NAME}{_Q}"),
]
_SHELL_READ = re.compile(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)")
_SHELL_SET = re.compile(
    r"(?:^|[;&|]\s*|\b(?:export|local|readonly|declare(?:\s+-\w+)*)\s+)([A-Za-z_][A-Za-z0-9_]*)="
)
_SHELL_LOOP = re.compile(r"\b(?:for|read(?:\s+-\w+)*)\s+([A-Za-z_][A-Za-z0-9_]*)")
_SHELL_SUFFIXES = (".sh", ".bash", ".ksh", ".zsh")
_SCAN_LIMIT = 1024 * 1024


def scan_text(path: str, text: str) -> list[tuple[str, int]]:
    """The environment variables ``text`` (the file ``path``) reads: (name, line), in order."""
    found: list[tuple[str, int]] = []
    shell = path.endswith(_SHELL_SUFFIXES) or (
        text.startswith("#!") and re.match(r"#!.*\b(?:ba|k|z|da)?sh\b", text) is not None
    )
    assigned: set[str] = set()
    if shell:
        for line in text.splitlines():
            code = line.split("#", 1)[0] if not line.lstrip().startswith("#!") else ""
            assigned.update(m.group(1) for m in _SHELL_SET.finditer(code))
            assigned.update(m.group(1) for m in _SHELL_LOOP.finditer(code))
    for number, line in enumerate(text.splitlines(), 1):
        for pattern in _STATIC:
            found.extend((m.group(1), number) for m in pattern.finditer(line))
        if shell and not line.lstrip().startswith("#"):
            code = re.sub(r"'[^']*'", "", line)  # nothing expands inside single quotes
            for match in _SHELL_READ.finditer(code):
                if match.group(1) not in assigned:
                    found.append((match.group(1), number))
    return found


def static_variables(bundle: Bundle, service: str) -> dict[str, str]:
    """Variables the service's sealed sources read: name → first ``file:line``."""
    sources = bundle.manifest.get("services", {}).get(service, {}).get("sources", [])
    found: dict[str, str] = {}
    for relative in sorted(sources):
        path = bundle.files_dir / relative
        try:
            if path.stat().st_size > _SCAN_LIMIT:
                continue
            data = path.read_bytes()
        except OSError:
            continue
        if b"\0" in data[:4096]:
            continue
        for name, line in scan_text(relative, data.decode("utf-8", errors="replace")):
            found.setdefault(name, f"{relative}:{line}")
    return found


# -- one service's report ----------------------------------------------------------------------


@dataclass
class Discovery:
    """What one service was seen to need (see docs/discover.md for the JSON)."""

    service: str
    release: str
    version: str
    env: str
    seconds: float
    python: bool
    listen: list[dict[str, Any]]
    connect: list[dict[str, Any]]
    files: list[dict[str, Any]]
    variables: list[dict[str, Any]]
    names: list[str]
    requests: list[dict[str, Any]]
    complete: bool
    note: str
    depends_on: list[str] = field(default_factory=list)
    stable_port: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "service": self.service,
            "release": self.release,
            "version": self.version,
            "environment": self.env,
            "seconds": self.seconds,
            "python": self.python,
            "listen": self.listen,
            "connect": self.connect,
            "files": self.files,
            "env": self.variables,
            "names": self.names,
            "requests": self.requests,
            "complete": self.complete,
            "note": self.note,
        }

    def outbound(self) -> list[dict[str, Any]]:
        """Destinations that are not another service of the release."""
        return [c for c in self.connect if not c.get("service")]

    def to_markdown(self, callers: Sequence[str] = ()) -> str:
        lines = [
            f"# {self.service}: network and host requirements",
            "",
            f"Release {self.version} (`{self.release[:12]}`), observed in the `{self.env}` "
            f"sandbox for {self.seconds:g} s with strace"
            + (" and a Python audit hook." if self.python else "."),
            "",
        ]
        if not self.complete:
            lines += [f"**Incomplete:** {self.note}", ""]
        elif self.note:
            lines += [f"Note: {self.note}", ""]
        lines += ["## Inbound", ""]
        port = str(self.stable_port) if self.stable_port else "chosen per environment (`auto`)"
        served = [x for x in self.listen if x.get("role") == "service"]
        others = [x for x in self.listen if x.get("role") != "service"]
        if served:
            who = ", ".join(callers) if callers else "its clients"
            lines.append(
                f"- its service port: {port}, TCP, from {who} (in the sandbox it listened on "
                f"{served[0]['address']}:{served[0]['port']})"
            )
        for item in others:
            lines.append(
                f"- {item['protocol'].upper()} {item['port']} on {item['address']} "
                "(opened by the service itself, not its service port)"
            )
        if not self.listen:
            lines.append("- none seen")
        lines += ["", "## Outbound", ""]
        services = [c for c in self.connect if c.get("service")]
        for item in services:
            extra = "" if item.get("declared", True) else " (**not in depends_on**)"
            failed = f", {item['failed']} failed" if item["failed"] else ""
            lines.append(
                f"- service `{item['service']}`{extra}: TCP to its stable port "
                f"({item['seen']} connection(s){failed})"
            )
        for item in self.outbound():
            where = item["address"] + (f":{item['port']}" if item["port"] is not None else "")
            host = f"{item['host']} ({where})" if item.get("host") else where
            failed = (
                f", {item['failed']} failed ({', '.join(item['errors'])})" if item["failed"] else ""
            )
            lines.append(
                f"- {host}, {item['protocol'].upper()} ({item['seen']} attempt(s){failed})"
            )
        if not self.connect:
            lines.append("- none seen")
        lines += ["", "## DNS names", ""]
        lines += [f"- `{n}`" for n in self.names] or ["- none resolved"]
        lines += ["", "## Settings (environment variables)", ""]
        if self.variables:
            lines += ["| name | provided by | found |", "|---|---|---|"]
            for var in self.variables:
                given = var.get("provided") or "**the host (not in airlock.yaml)**"
                how = var["how"] + (f" ({var['where']})" if var.get("where") else "")
                lines.append(f"| `{var['name']}` | {given} | {how} |")
        else:
            lines.append("- none seen")
        lines += ["", "## Files outside the release", ""]
        if self.files:
            for item in self.files:
                missing = f", failed: {item['error']}" if item.get("error") else ""
                lines.append(f"- `{item['path']}` ({item['mode']}{missing})")
        else:
            lines.append("- none")
        return "\n".join(lines) + "\n"


def _loopback(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address == "localhost"
    mapped = getattr(ip, "ipv4_mapped", None)
    return bool(ip.is_loopback or (mapped is not None and mapped.is_loopback))


def _under(path: str, folders: Iterable[str]) -> bool:
    return any(path == f or path.startswith(f.rstrip("/") + "/") for f in folders)


@dataclass
class Context:
    """What the sandbox knows, to label what the trace shows."""

    service: str
    depends_on: list[str]
    endpoints: dict[int, str]  # sandbox port → service
    service_ports: set[int]  # the observed instance's own $PORT
    database: tuple[set[str], int] | None  # addresses, port
    own_folders: list[str]  # never reported (the sealed files, the sandbox, the work folder)
    runtime_folders: set[str]  # read-only opens here are the interpreter's own
    configured: dict[str, str]  # variable → who provides it
    stable_port: int | None = None


def summarize(
    trace: Trace, hook: HookLog, static: dict[str, str], context: Context
) -> tuple[
    list[dict[str, Any]],
    list[dict[str, Any]],
    list[dict[str, Any]],
    list[dict[str, Any]],
    list[str],
]:
    """listen, connect, files, variables and names, labelled and deduplicated."""
    listen: dict[tuple[str, int], dict[str, Any]] = {}
    for item in trace.listens:
        key = (item.protocol, item.port)
        role = (
            "service" if item.port in context.service_ports and item.protocol == "tcp" else "other"
        )
        listen.setdefault(
            key,
            {"port": item.port, "protocol": item.protocol, "address": item.address, "role": role},
        )

    def resolved(address: str, port: int | None) -> str | None:
        name = hook.resolved.get((address, port))
        return name or (None if _loopback(address) else trace.answers.get(address))

    connect: dict[tuple[str, str, int | None], dict[str, Any]] = {}
    for attempt in trace.attempts:
        if attempt.protocol == "unix" and attempt.error is not None:
            continue  # a local socket that is not there (e.g. nscd): nothing to open
        if attempt.protocol not in {"tcp", "udp", "unix"}:
            continue
        service = None
        if attempt.port is not None and _loopback(attempt.address):
            service = context.endpoints.get(attempt.port)
            if service == context.service:
                service = None
        database = context.database
        if (
            service is None
            and database is not None
            and (attempt.address, attempt.port) in {(a, database[1]) for a in database[0]}
        ):
            service = "database"
        target = (attempt.protocol, attempt.address, attempt.port)
        entry = connect.get(target)
        if entry is None:
            host = service or resolved(attempt.address, attempt.port)
            entry = connect[target] = {
                "host": host,
                "address": attempt.address,
                "port": attempt.port,
                "protocol": attempt.protocol,
                "service": service,
                "seen": 0,
                "failed": 0,
                "errors": [],
            }
            if service is not None and service != "database":
                entry["declared"] = service in context.depends_on
        entry["seen"] += 1
        if attempt.error is not None:
            entry["failed"] += 1
            if attempt.error not in entry["errors"]:
                entry["errors"].append(attempt.error)
    files: dict[str, dict[str, Any]] = {}
    for opened in trace.opens:
        path = opened.path
        if _under(path, context.own_folders):
            continue
        writes = opened.mode != "read"
        if not writes and (
            path in _SYSTEM_FILES
            or path.startswith(_SYSTEM_PREFIXES)
            or _under(path, context.runtime_folders)
        ):
            continue
        if writes and path.startswith(("/dev/", "/proc/", "/sys/")):
            continue
        entry = files.get(path)
        if entry is None:
            files[path] = {"path": path, "mode": opened.mode, "error": opened.error}
            continue
        if entry["mode"] != opened.mode:
            entry["mode"] = "read-write"
        if opened.error is None:
            entry["error"] = None
    variables: dict[str, dict[str, Any]] = {}
    for name in hook.variables:
        if name.startswith(_OWN_VARIABLES):
            continue
        variables[name] = {"name": name, "how": "runtime", "provided": context.configured.get(name)}
    for name, where in static.items():
        if name.startswith(_OWN_VARIABLES):
            continue
        if name in variables:
            variables[name]["where"] = where
        else:
            variables[name] = {
                "name": name,
                "how": "static",
                "provided": context.configured.get(name),
                "where": where,
            }
    names = list(dict.fromkeys([*hook.names, *trace.names]))
    return (
        sorted(listen.values(), key=lambda x: (x["protocol"], x["port"])),
        sorted(
            connect.values(),
            key=lambda x: (x["service"] is None, str(x["host"]), x["address"], x["port"] or 0),
        ),
        sorted(files.values(), key=lambda x: x["path"]),
        sorted(variables.values(), key=lambda x: x["name"]),
        names,
    )


# -- running one discovery ---------------------------------------------------------------------


def default_env(environments: Sequence[str]) -> str:
    """The first environment that is not production, else the first."""
    for name in environments:
        if name.lower() not in PRODUCTION_NAMES:
            return name
    return environments[0]


def strace_command() -> str:
    """The strace binary; a clear error naming the Debian package when there is none."""
    wanted = os.environ.get(STRACE_VARIABLE)
    if wanted:
        found = shutil.which(wanted)
        if found is None:
            raise UsageError(
                f"strace not found: ${STRACE_VARIABLE} names {wanted!r}, which is not an "
                "executable",
                hint=f"install the Debian package `strace` (apt-get install strace) or fix "
                f"${STRACE_VARIABLE}",
            )
        return found
    found = shutil.which("strace") or (
        "/usr/bin/strace" if os.access("/usr/bin/strace", os.X_OK) else None
    )
    if found is None:
        raise UsageError(
            "strace is not installed: `airlock discover` observes the service with it",
            hint="install the Debian package `strace` (apt-get install strace)",
        )
    return found


def strace_problem(strace: str) -> str | None:
    """Why strace cannot trace a child here (its own message), or None when it can."""
    try:  # exactly as discovery runs it: an older strace lacks --seccomp-bpf or openat2
        done = subprocess.run(
            list(observed_command(strace, Path(os.devnull), [sys.executable, "-c", "pass"])),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{strace}: {getattr(exc, 'strerror', None) or exc}"
    if done.returncode != 0:
        return done.stderr.strip() or f"{strace} exited with code {done.returncode}"
    return None


def is_python(argv: Sequence[str], cwd: Path) -> bool:
    """Whether the command runs Python: ``python``, ``python3.12``, or a script whose first
    line names python."""
    if not argv:
        return False
    head = argv[0]
    if head == sys.executable or re.fullmatch(r"python(\d+(\.\d+)?)?", Path(head).name):
        return True
    script = cwd / head if not os.path.isabs(head) else Path(head)
    try:
        with script.open("rb") as handle:
            first = handle.readline(256)
    except OSError:
        return False
    return first.startswith(b"#!") and b"python" in first


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _database(url: str) -> tuple[set[str], int] | None:
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port or 5432
    except ValueError:
        return None
    if not host:
        return None
    addresses = {host}
    if host == "localhost":
        addresses |= {"127.0.0.1", "::1"}
    with contextlib.suppress(OSError):
        addresses |= {str(i[4][0]) for i in socket.getaddrinfo(host, port)}
    return addresses, port


def discover_service(
    bundle: Bundle,
    service: str,
    env: str,
    *,
    project_root: Path,
    seconds: float = 10.0,
    database_url: str | None = None,
    strace: str | None = None,
) -> Discovery:
    """Run ``service`` of ``bundle`` as ``env`` renders it, under strace, for ``seconds``."""
    project = bundle.project
    if service not in project.services:
        known = ", ".join(sorted(project.services))
        raise UsageError(
            f"release {bundle.label} has no service {service!r}", hint=f"its services: {known}"
        )
    if env not in project.environments:
        known = ", ".join(project.environments)
        raise UsageError(
            f"release {bundle.label} has no environment {env!r}", hint=f"its environments: {known}"
        )
    strace = strace or strace_command()
    problem = strace_problem(strace)
    if problem is not None:
        raise RuntimeFailure(
            f"strace cannot trace a process here: {problem}",
            hint="strace needs ptrace: run as root, or allow it (kernel.yama.ptrace_scope, "
            "the container's seccomp profile or --cap-add SYS_PTRACE)",
        )
    return asyncio.run(_observe(bundle, service, env, project_root, seconds, database_url, strace))


async def _observe(
    bundle: Bundle,
    service: str,
    env: str,
    project_root: Path,
    seconds: float,
    database_url: str | None,
    strace: str,
) -> Discovery:
    project = bundle.project
    model = project.services[service]
    state_dir(project_root).mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="discover-", dir=state_dir(project_root)))
    trace_file, hook_file = work / "trace.txt", work / "hook.jsonl"
    python = is_python(model.argv, bundle.files_dir)
    placeholder = database_url is None
    url = database_url or f"postgresql://discover@127.0.0.1:{_free_port()}/discover"
    notes: list[str] = []
    try:
        (work / "hook").mkdir()
        (work / "hook" / "sitecustomize.py").write_text(HOOK_SOURCE, encoding="utf-8")
        prepare = _wrapper(service, strace, trace_file, hook_file, work / "hook", python)
        masker = Masker()
        box = Sandbox(
            bundle,
            env,
            project_root=project_root,
            services=[service],
            database_url=url,
            masker=masker,
            prepare=prepare,
        )
        outcome = Outcome()
        exits: int | None = None
        service_ports: set[int] = set()
        strace_lines: list[str] = []
        async with box:
            await box.start(outcome)
            if service not in outcome.not_ready:
                await _exercise(box, service, outcome, seconds)
            for status in await box.runtime.status():
                if status.instance_id == box.instances.get(service):
                    exits = status.exits
                    service_ports.add(status.port)
                    if status.exits:
                        notes.append(
                            f"it exited {status.exits} time(s) while observed (last exit code "
                            f"{status.last_exit_code})"
                        )
            with contextlib.suppress(Exception):
                strace_lines = [
                    line.split("] ", 1)[-1]
                    for line in await box.runtime.logs(service, 200)
                    if "strace: " in line
                ]
            endpoints = {e.port: name for name, e in box.endpoints.items()}
            sandbox_folder = str(box.folder)
        complete = True
        for name, why in outcome.not_ready.items():
            complete = False
            what = "it" if name == service else f"its dependency {name!r}"
            notes.insert(0, f"{what} never became ready: {why}")
            if name == service and outcome.logs.get(name):
                notes.append("its last log lines: " + " | ".join(outcome.logs[name][-3:]))
        if exits:
            complete = False
        text = (
            trace_file.read_text(encoding="utf-8", errors="replace") if trace_file.exists() else ""
        )
        if strace_lines:
            notes.append("strace said: " + " | ".join(dict.fromkeys(strace_lines)))
        if service in box.instances and not text.strip():
            complete = False
            notes.append("strace recorded nothing")
        trace = parse_strace(text)
        hook = (
            read_hook_log(hook_file.read_text(encoding="utf-8", errors="replace"))
            if hook_file.exists()
            else HookLog()
        )
        if not python:
            notes.append(
                "not a Python service: no audit hook, so environment variables come from the "
                "static scan of its sources only and names from DNS queries on the wire"
            )
        elif not hook.ran and service in box.instances:
            notes.append(
                "the Python audit hook did not load (PYTHONPATH ignored, e.g. python -I or -E?): "
                "environment variables come from the static scan only"
            )
        if placeholder and uses_database(bundle.config(env)[service]):
            notes.append(
                "no database was given (--database-url): its URL pointed at a closed local port, "
                "labelled `database`"
            )
        configured = {key: "config" for key in bundle.config(env)[service]}
        configured.setdefault("PORT", "airlock")
        for name in RUNTIME_VARIABLES:
            configured.setdefault(name, "runtime")
        runtime_folders = set(hook.prefixes)
        if python:
            runtime_folders |= {
                sys.prefix,
                sys.exec_prefix,
                *(p for p in sys.path if p.startswith("/")),
            }
        runtime_folders = {
            f
            for f in runtime_folders
            if os.path.normpath(f) not in {"/", "/usr", "/usr/local", "/etc", "/tmp"}
        }
        context = Context(
            service=service,
            depends_on=list(model.depends_on),
            endpoints=endpoints,
            service_ports=service_ports,
            database=_database(url),
            own_folders=[
                str(bundle.files_dir.resolve()),
                str(bundle.files_dir),
                sandbox_folder,
                str(work),
            ],
            runtime_folders=runtime_folders,
            configured=configured,
        )
        listen, connect, files, variables, names = summarize(
            trace, hook, static_variables(bundle, service), context
        )
        return Discovery(
            service=service,
            release=bundle.id,
            version=bundle.label,
            env=env,
            seconds=seconds,
            python=python,
            listen=listen,
            connect=connect,
            files=files,
            variables=variables,
            names=names,
            requests=[
                {"request": e.request, "status": e.status}
                for e in outcome.exchanges
                if e.service == service
            ],
            complete=complete,
            note=masker.mask("; ".join(notes)),
            depends_on=list(model.depends_on),
            stable_port=model.port if isinstance(model.port, int) else None,
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _wrapper(
    service: str, strace: str, trace_file: Path, hook_file: Path, hook_dir: Path, python: bool
) -> Callable[[InstanceSpec], InstanceSpec]:
    """Wrap the observed service's command (and only it) in strace; inject the hook."""

    def prepare(spec: InstanceSpec) -> InstanceSpec:
        if spec.service != service:
            return spec
        argv = list(spec.argv)
        if argv and argv[0] in {"python", "python3"}:
            argv[0] = sys.executable  # what the local runtime runs for `python`
        env = dict(spec.env)
        if python:
            env["PYTHONPATH"] = os.pathsep.join(
                p for p in (str(hook_dir), env.get("PYTHONPATH", "")) if p
            )
            env[LOG_VARIABLE] = str(hook_file)
        return replace(spec, argv=observed_command(strace, trace_file, argv), env=env)

    return prepare


def observed_command(strace: str, trace_file: Path, argv: Sequence[str]) -> tuple[str, ...]:
    """``argv`` under strace as discovery runs it: every child followed, the network and file
    calls only (a seccomp filter lets every other call through untouched), into ``trace_file``."""
    return (
        strace,
        "-f",
        "--seccomp-bpf",
        "-qq",
        "-tt",
        "-yy",
        "-x",
        "-s",
        str(STRING_LIMIT),
        "-A",
        "-o",
        str(trace_file),
        "-e",
        TRACED,
        "-e",
        "signal=none",
        "--",
        *argv,
    )


async def _exercise(box: Sandbox, service: str, outcome: Outcome, seconds: float) -> None:
    """Send the service its readiness path and endpoints, round after round, for ``seconds``."""
    deadline = time.monotonic() + seconds
    await box.exercise(outcome, [service])
    while time.monotonic() < deadline:
        await asyncio.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
        if time.monotonic() >= deadline:
            break
        await box.exercise(Outcome(not_ready=dict(outcome.not_ready)), [service])


# -- the release's documents -------------------------------------------------------------------


def callers_of(discoveries: Sequence[Discovery]) -> dict[str, list[str]]:
    """service → the services seen connecting to it."""
    found: dict[str, list[str]] = {}
    for item in discoveries:
        for entry in item.connect:
            target = entry.get("service")
            if target and target != "database" and item.service not in found.setdefault(target, []):
                found[target].append(item.service)
    return found


def release_markdown(discoveries: Sequence[Discovery], bundle: Bundle) -> str:
    """One requirements document for the release: what each host must open, and to where."""
    project = bundle.project
    env = discoveries[0].env if discoveries else ""
    callers = callers_of(discoveries)
    lines = [
        f"# Network and host requirements of release {bundle.label}",
        "",
        f"Release `{bundle.id[:12]}`, each service observed in the `{env}` sandbox. What the "
        "hosts of each environment must allow before release day.",
        "",
    ]
    incomplete = [d for d in discoveries if not d.complete]
    if incomplete:
        lines += ["**Incomplete discoveries:**", ""]
        lines += [f"- `{d.service}`: {d.note}" for d in incomplete]
        lines.append("")
    lines += ["## Inbound ports", "", "| service | port | protocol | from |", "|---|---|---|---|"]
    for item in discoveries:
        model = project.services[item.service]
        port = str(model.port) if isinstance(model.port, int) else "auto"
        dependents = sorted(
            set(callers.get(item.service, []))
            | {n for n, s in project.services.items() if item.service in s.depends_on}
        )
        who = ", ".join(f"`{d}`" for d in dependents) or "its clients"
        if any(x.get("role") == "service" for x in item.listen):
            lines.append(f"| `{item.service}` | {port} (service port) | TCP | {who} |")
        for extra in item.listen:
            if extra.get("role") != "service":
                lines.append(
                    f"| `{item.service}` | {extra['port']} on {extra['address']} | "
                    f"{extra['protocol'].upper()} | (its own listener) |"
                )
    lines += ["", "## Between services", "", "| from | to | declared |", "|---|---|---|"]
    for item in discoveries:
        for entry in item.connect:
            if entry.get("service") and entry["service"] != "database":
                declared = "yes" if entry.get("declared", True) else "**no**"
                lines.append(f"| `{item.service}` | `{entry['service']}` | {declared} |")
    lines += [
        "",
        "## Outbound destinations",
        "",
        "| from | destination | port | protocol | outcome |",
        "|---|---|---|---|---|",
    ]
    for item in discoveries:
        for entry in item.connect:
            if entry.get("service") and entry["service"] != "database":
                continue
            where = (
                f"{entry['host']} ({entry['address']})" if entry.get("host") else entry["address"]
            )
            outcome = (
                f"{entry['failed']} of {entry['seen']} failed ({', '.join(entry['errors'])})"
                if entry["failed"]
                else f"{entry['seen']} ok"
            )
            port = entry["port"] if entry["port"] is not None else "-"
            lines.append(
                f"| `{item.service}` | {where} | {port} | {entry['protocol'].upper()} | {outcome} |"
            )
    lines += ["", "## DNS names", ""]
    names = [(n, d.service) for d in discoveries for n in d.names]
    lines += [f"- `{n}` (`{s}`)" for n, s in names] or ["- none resolved"]
    lines += [
        "",
        "## Settings the hosts must provide",
        "",
        "Environment variables read but not set by airlock.yaml:",
        "",
    ]
    unset = [(v, d.service) for d in discoveries for v in d.variables if not v.get("provided")]
    own: dict[
        str, list[str]
    ] = {}  # read by the service's own code (or found in its sources): name → services
    libraries: set[str] = set()  # looked up by a library it uses: usually optional
    for variable, service in unset:
        if own_code(variable):
            where = f"`{service}`, {variable['where']}" if variable.get("where") else f"`{service}`"
            own.setdefault(variable["name"], []).append(where)
        else:
            libraries.add(variable["name"])
    lines += [f"- `{name}` ({'; '.join(where)})" for name, where in sorted(own.items())] or [
        "- none"
    ]
    if libraries:
        lines += [
            "",
            "Also looked up by the libraries the services use (usually optional): "
            + ", ".join(f"`{name}`" for name in sorted(libraries - set(own))),
        ]
    lines += ["", "## Files outside the release", ""]
    files: dict[tuple[str, str], list[str]] = {}
    for d in discoveries:
        for f in d.files:
            files.setdefault((f["path"], f["mode"]), []).append(d.service)
    lines += [
        f"- `{path}` ({mode}: {', '.join(f'`{s}`' for s in services)})"
        for (path, mode), services in files.items()
    ] or ["- none"]
    return "\n".join(lines) + "\n"


def own_code(variable: Mapping[str, Any]) -> bool:
    """Whether a variable was read by the service's own code (its sources name it), not only
    looked up by a library it uses."""
    return variable.get("how") == "static" or bool(variable.get("where"))


def reports_folder(bundle: Bundle) -> Path:
    return bundle.path / "reports" / "discover"


def write_reports(
    bundle: Bundle, discoveries: Sequence[Discovery], *, release_documents: bool
) -> list[Path]:
    """Write SERVICE.json and SERVICE.md per service (and release.json, release.md) into the
    release's ``reports/discover/``; returns the files written."""
    folder = reports_folder(bundle)
    folder.mkdir(parents=True, exist_ok=True)
    callers = callers_of(discoveries)
    project = bundle.project
    written: list[Path] = []
    for item in discoveries:
        who = sorted(
            set(callers.get(item.service, []))
            | {n for n, s in project.services.items() if item.service in s.depends_on}
        )
        for suffix, text in (
            (".json", json.dumps(item.to_dict(), indent=2) + "\n"),
            (".md", item.to_markdown(who)),
        ):
            path = folder / f"{item.service}{suffix}"
            path.write_text(text, encoding="utf-8")
            written.append(path)
    if release_documents:
        document = {
            "release": bundle.id,
            "version": bundle.label,
            "services": [d.to_dict() for d in discoveries],
        }
        for name, text in (
            ("release.json", json.dumps(document, indent=2) + "\n"),
            ("release.md", release_markdown(discoveries, bundle)),
        ):
            path = folder / name
            path.write_text(text, encoding="utf-8")
            written.append(path)
    return written
