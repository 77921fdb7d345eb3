"""Checks run where the services will run, before a release: ``airlock preflight``.

Standard library only and plain syntax: the ``ssh`` runtime sends this file's source to a host's
``python3`` as the program (its arguments, JSON, on the last line), so an old Python can still
say which version it is; the ``local`` runtime calls :func:`run_checks` directly.

Each check is ``{"kind": …, …}``; each answer ``{"ok": bool, "detail": one line, …}``:

- ``port_free``: ``port`` (and ``address``, default every address) can be bound;
- ``connect``: a TCP connection to ``host``:``port`` opens within ``timeout`` seconds
  (``reason``: ``refused``, ``timeout``, ``unreachable`` or the error);
- ``resolve``: ``name`` resolves (its addresses);
- ``file``: ``path`` exists and can be read (``mode`` ``r``), or written (``w``: the file or the
  folder that would hold it);
- ``python``: the version (``minimum`` ``[3, 11]``);
- ``disk``: free bytes where ``path`` is (or its nearest existing parent) ≥ ``need``;
- ``clock``: this host's time (the caller compares it with its own).

:func:`hold_ports` listens on ports nobody holds, so that a ``connect`` from another host proves
the path through every firewall on the way, not only that a host answered.

Its annotations are strings, not evaluated: so that Python 3.6 (RHEL 8's python3) still reads
the file and can say which version it is.
"""

import errno
import json
import os
import shutil
import socket
import sys
import time
from typing import Any

MARK = "AIRLOCK-JSON "


def _reason(exc: BaseException) -> str:
    code = getattr(exc, "errno", None)
    if isinstance(exc, socket.timeout) or code in (errno.ETIMEDOUT,):
        return "timeout"
    if code == errno.ECONNREFUSED:
        return "refused"
    if code in (errno.EHOSTUNREACH, errno.ENETUNREACH):
        return "unreachable"
    return getattr(exc, "strerror", None) or type(exc).__name__


def check_port_free(a: "dict[str, Any]") -> "dict[str, Any]":
    port = int(a["port"])
    address = a.get("address") or ""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((address, port))
        return {"ok": True, "detail": f"port {port} is free"}
    except OSError as exc:
        why = "in use" if exc.errno == errno.EADDRINUSE else (exc.strerror or str(exc))
        return {"ok": False, "detail": f"port {port}: {why}", "reason": why}
    finally:
        sock.close()


def check_connect(a: "dict[str, Any]") -> "dict[str, Any]":
    host, port = a["host"], int(a["port"])
    timeout = float(a.get("timeout", 3.0))
    started = time.monotonic()
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as exc:
        reason = _reason(exc)
        return {
            "ok": False,
            "detail": f"TCP {host}:{port}: {reason} after {time.monotonic() - started:.1f} s",
            "reason": reason,
        }
    return {"ok": True, "detail": f"TCP {host}:{port}: connected"}


def check_resolve(a: "dict[str, Any]") -> "dict[str, Any]":
    name = a["name"]
    try:
        found = sorted({str(info[4][0]) for info in socket.getaddrinfo(name, None)})
    except OSError as exc:
        return {"ok": False, "detail": f"{name} does not resolve: {exc}", "reason": "dns"}
    return {"ok": True, "detail": "{} → {}".format(name, ", ".join(found)), "addresses": found}


def check_file(a: "dict[str, Any]") -> "dict[str, Any]":
    path = os.path.expanduser(a["path"])
    if a.get("mode", "r") == "w":
        target = path if os.path.exists(path) else os.path.dirname(path) or "."
        if os.access(target, os.W_OK):
            return {"ok": True, "detail": f"{path} is writable"}
        return {"ok": False, "detail": f"{path} cannot be written", "reason": "not writable"}
    if not os.path.exists(path):
        return {"ok": False, "detail": f"{path} does not exist", "reason": "missing"}
    if not os.access(path, os.R_OK):
        return {"ok": False, "detail": f"{path} cannot be read", "reason": "not readable"}
    return {"ok": True, "detail": f"{path} exists"}


def check_python(a: "dict[str, Any]") -> "dict[str, Any]":
    have = list(sys.version_info[:3])
    minimum = list(a.get("minimum", [3, 11]))
    ok = have[: len(minimum)] >= minimum
    detail = "Python {} ({})".format(".".join(map(str, have)), sys.executable)
    return {"ok": ok, "detail": detail, "version": have}


def check_disk(a: "dict[str, Any]") -> "dict[str, Any]":
    path = os.path.expanduser(a.get("path") or "~")
    while not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    free = shutil.disk_usage(path).free
    need = int(a.get("need", 0))
    detail = f"{free / 2.0**30:.1f} GiB free at {path}"
    return {"ok": free >= need, "detail": detail, "free": free, "need": need}


def check_clock(a: "dict[str, Any]") -> "dict[str, Any]":
    now = time.time()
    return {"ok": True, "detail": f"host time {now:.3f}", "time": now}


CHECKS = {  # type: dict[str, Any]
    "port_free": check_port_free,
    "connect": check_connect,
    "resolve": check_resolve,
    "file": check_file,
    "python": check_python,
    "disk": check_disk,
    "clock": check_clock,
}


def run_checks(checks: "list[dict[str, Any]]") -> "list[dict[str, Any]]":
    """Each check's answer, in order; a check that raises answers with the error. They run at
    once (threads): twenty dropped paths take one timeout, not twenty."""
    from concurrent.futures import ThreadPoolExecutor

    def one(check: "dict[str, Any]") -> "dict[str, Any]":
        try:
            return CHECKS[check["kind"]](check)  # type: ignore[no-any-return]
        except Exception as exc:
            return {"ok": False, "detail": f"{type(exc).__name__}: {exc}"}

    if not checks:
        return []
    with ThreadPoolExecutor(max_workers=min(32, len(checks))) as pool:
        return list(pool.map(one, checks))


def hold_ports(
    ports: "list[int]", address: str = ""
) -> "tuple[list[socket.socket], list[int], list[int]]":
    """Listen on each port nobody holds; (sockets, ports held, ports already in use).
    ``address`` as the runtime's ``listen`` setting spells it: empty or ``*`` for every
    address, an IPv6 one (``::``) for that family."""
    address = "" if address in ("*", "0.0.0.0") else address
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    held = []  # type: list[int]
    busy = []  # type: list[int]
    sockets = []  # type: list[socket.socket]
    for port in ports:
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((address.strip("[]"), int(port)))
            sock.listen(64)
        except OSError:
            sock.close()
            busy.append(port)
            continue
        sockets.append(sock)
        held.append(port)
    return sockets, held, busy


def main(arguments: str) -> None:
    """Run as a program: ``{"checks": [...]}`` answers at once; ``{"hold": [ports]}`` says which
    ports it holds, then holds them until its standard input closes."""
    a = json.loads(arguments)
    if "hold" in a:
        sockets, held, busy = hold_ports(a["hold"], a.get("address", ""))
        sys.stdout.write(MARK + json.dumps({"held": held, "busy": busy}) + "\n")
        sys.stdout.flush()
        sys.stdin.read()  # the caller closes it when its connects are done
        for sock in sockets:
            sock.close()
        return
    sys.stdout.write(MARK + json.dumps({"answers": run_checks(a["checks"])}) + "\n")
    sys.stdout.flush()
