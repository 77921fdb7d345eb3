"""Serving the dashboard: where it binds, who may reach it, and uvicorn.

The address is bound here, before uvicorn starts, so that a port in use or an address this host
does not have is an :class:`~airlock.errors.AirlockError` (the CLI says so and exits 2), and so
that ``--port 0`` can say which port it got.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
from collections.abc import Callable
from pathlib import Path

from airlock import api
from airlock.errors import PortInUseError, UsageError

DEFAULT_TOKEN_ENV = "AIRLOCK_DASHBOARD_TOKEN"


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address (``localhost`` counts; other names do not)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def bind(host: str, port: int) -> socket.socket:
    """A listening-ready socket on ``host:port`` (port 0: any free one)."""
    address = host.strip("[]")
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((address, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise PortInUseError(
                f"port {port} on {host} is in use by another program",
                hint="pick another with --port N (or --port 0 for any free one)",
            ) from None
        if exc.errno == errno.EACCES:
            raise UsageError(
                f"not allowed to listen on port {port} of {host}",
                hint="ports below 1024 need privileges: pick a port above 1024",
            ) from None
        raise UsageError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}",
            hint="--host takes an address of this machine, such as 127.0.0.1",
        ) from None
    except (socket.gaierror, OverflowError) as exc:
        sock.close()
        raise UsageError(f"cannot listen on {host}:{port}: {exc}") from None
    sock.listen(128)  # connections wait in the queue until the server takes them
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/"


def serve(
    project: Path,
    *,
    host: str = "127.0.0.1",
    port: int = 8321,
    token_env: str = DEFAULT_TOKEN_ENV,
    on_ready: Callable[[str, bool], None] | None = None,
) -> None:
    """Serve the dashboard of ``project`` until interrupted. The token is read from the
    environment variable ``token_env``; off loopback, the dashboard refuses to start without
    one. ``on_ready(url, writable)`` is called once the address is bound."""
    import uvicorn

    from airlock.web.app import Settings, create_app

    token = os.environ.get(token_env) or None
    loopback = is_loopback(host)
    if not loopback and token is None:
        raise UsageError(
            f"refusing to serve the dashboard on {host}, which is not a loopback address, "
            "without a token",
            hint=f"set ${token_env} to a secret token, or serve on 127.0.0.1",
        )
    api.history(project, None, 1)  # the project is there (its airlock.yaml may be broken)
    settings = Settings(project=project, token=token, token_env=token_env, loopback=loopback)
    sock = bind(host, port)
    config = uvicorn.Config(
        create_app(settings),
        log_level="warning",
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=2,
    )
    if on_ready is not None:
        on_ready(url_of(sock), token is not None)
    uvicorn.Server(config).run(sockets=[sock])
