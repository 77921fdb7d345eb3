"""A small HTTP/1.1 reverse proxy that gives a service a stable port.

One :class:`ServiceProxy` listens on the service's stable port (127.0.0.1 only) and forwards each
request to the service's *current* backend port, chosen when the request arrives. Switching the
backend therefore takes effect with the very next request, even on a keep-alive connection that
a client keeps open, while requests already forwarded finish on the backend they started on.
That is what makes a blue-green switch drop no request.

Both sides speak HTTP/1.1 through `h11`. Request and response bodies are buffered (up to
:data:`MAX_BODY_BYTES`), so the upstream side always uses ``Content-Length`` framing whatever
framing the peer used. Only hop-by-hop headers are changed; everything else passes through as is.

The proxy counts in-flight requests per backend port so that a backend can be drained before it
is stopped (:meth:`ServiceProxy.drain`).

Error answers are short JSON documents:

* ``503`` when no backend is set yet,
* ``502`` when the backend refuses the connection or dies mid-request,
* ``504`` when the backend does not answer within :data:`BACKEND_TIMEOUT`,
* ``400``/``413``/``405`` for requests the proxy cannot forward.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

import h11

__all__ = [
    "BACKEND_TIMEOUT",
    "MAX_BODY_BYTES",
    "ServiceProxy",
]

log = logging.getLogger(__name__)

LISTEN_HOST = "127.0.0.1"
#: Largest request or response body the proxy buffers.
MAX_BODY_BYTES = 64 * 1024 * 1024
#: Largest request or response head (request line/status line plus headers).
MAX_HEAD_BYTES = 64 * 1024
#: A keep-alive client connection idle for this long is closed.
CLIENT_IDLE_TIMEOUT = 75.0
#: Time a client gets to send a whole request once it started one.
CLIENT_REQUEST_TIMEOUT = 60.0
#: Time to open a TCP connection to a backend.
CONNECT_TIMEOUT = 5.0
#: Time a backend gets to send its whole response.
BACKEND_TIMEOUT = 300.0
#: Idle keep-alive connections kept per backend port.
POOL_SIZE = 8
#: A pooled backend connection idle for longer is not reused (backends close idle ones).
POOL_IDLE_TIMEOUT = 1.5

_READ_CHUNK = 64 * 1024

# RFC 9110 §7.6.1 plus the legacy ones still seen in the wild.
_HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)

Headers = list[tuple[bytes, bytes]]


class _BackendError(Exception):
    """The backend could not be reached or broke the exchange."""


class _StaleConnection(_BackendError):
    """A reused keep-alive connection turned out to be closed before any response byte."""


class _BodyTooLarge(Exception):
    """A body is larger than :data:`MAX_BODY_BYTES`."""


@dataclass
class _Upstream:
    """One connection from the proxy to a backend."""

    port: int
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    conn: Any = field(default_factory=lambda: h11.Connection(h11.CLIENT, MAX_HEAD_BYTES))
    reused: bool = False
    idle_since: float = 0.0

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()


@dataclass
class _Answer:
    """A complete response to send to the client."""

    status: int
    headers: Headers
    body: bytes
    reason: bytes = b""


def _connection_tokens(headers: Headers) -> set[bytes]:
    """Header names listed in ``Connection`` (they are hop-by-hop for this message)."""
    tokens: set[bytes] = set()
    for name, value in headers:
        if name == b"connection":
            tokens.update(t.strip().lower() for t in value.split(b",") if t.strip())
    return tokens


def _end_to_end(headers: Headers, *, drop: frozenset[bytes] = frozenset()) -> Headers:
    """``headers`` without hop-by-hop headers, ``Content-Length`` and the names in ``drop``."""
    listed = _connection_tokens(headers)
    return [
        (name, value)
        for name, value in headers
        if name not in _HOP_BY_HOP
        and name not in listed
        and name != b"content-length"
        and name not in drop
    ]


def _reason(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b""


def _json_answer(status: int, error: str, service: str, detail: str) -> _Answer:
    body = json.dumps({"error": error, "service": service, "detail": detail}).encode() + b"\n"
    headers: Headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-store"),
    ]
    return _Answer(status, headers, body, _reason(status))


async def _read_event(conn: Any, reader: asyncio.StreamReader) -> Any:
    """The next h11 event of ``conn``, reading from ``reader`` as needed."""
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await reader.read(_READ_CHUNK))
            continue
        return event


class ServiceProxy:
    """The stable-port proxy of one service.

    Call :meth:`listen` once, :meth:`switch` whenever the serving instance changes, and
    :meth:`close` at the end.
    """

    def __init__(self, service: str) -> None:
        self.service = service
        self._server: asyncio.Server | None = None
        self._port: int | None = None
        self._backend: int | None = None
        self._inflight: dict[int, int] = {}
        self._idle: dict[int, asyncio.Event] = {}
        self._pool: dict[int, list[_Upstream]] = {}
        self._clients: dict[asyncio.Task[None], asyncio.StreamWriter] = {}
        self._closing = False

    # -- public API ---------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The port the proxy listens on."""
        if self._port is None:
            raise RuntimeError("proxy is not listening")
        return self._port

    @property
    def backend(self) -> int | None:
        """The backend port new requests go to, or ``None`` (the proxy answers 503)."""
        return self._backend

    async def listen(self, port: int) -> int:
        """Listen on ``127.0.0.1:port`` (``0`` picks a free port); returns the bound port.

        Raises :class:`OSError` (``EADDRINUSE``) when the port is taken.
        """
        server = await asyncio.start_server(
            self._on_client, LISTEN_HOST, port, reuse_address=True, backlog=256
        )
        self._server = server
        self._port = int(server.sockets[0].getsockname()[1])
        return self._port

    def switch(self, backend_port: int | None) -> None:
        """Send every request that arrives from now on to ``backend_port``."""
        self._backend = backend_port

    def inflight(self, backend_port: int) -> int:
        """Requests currently forwarded to ``backend_port`` and not yet answered by it."""
        return self._inflight.get(backend_port, 0)

    async def drain(self, backend_port: int, timeout: float) -> bool:
        """Wait until no request is in flight to ``backend_port``; ``False`` on timeout."""
        if self.inflight(backend_port) == 0:
            return True
        event = self._idle_event(backend_port)
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def forget_backend(self, backend_port: int) -> None:
        """Close the idle keep-alive connections to ``backend_port`` (it is going away)."""
        for upstream in self._pool.pop(backend_port, []):
            upstream.close()
        if self.inflight(backend_port) == 0:
            self._inflight.pop(backend_port, None)
            self._idle.pop(backend_port, None)

    async def close(self, grace: float = 0.0) -> None:
        """Stop listening, give in-flight requests up to ``grace`` seconds, then close all."""
        self._closing = True
        if self._server is not None:
            self._server.close()
        if grace > 0:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + grace
            for port in list(self._inflight):
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                await self.drain(port, remaining)
        for task, writer in list(self._clients.items()):
            with contextlib.suppress(Exception):
                writer.close()
            task.cancel()
        if self._clients:
            await asyncio.wait(list(self._clients), timeout=2.0)
        for port in list(self._pool):
            self.forget_backend(port)
        if self._server is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)

    # -- in-flight accounting -----------------------------------------------------------------

    def _idle_event(self, port: int) -> asyncio.Event:
        event = self._idle.get(port)
        if event is None:
            event = self._idle[port] = asyncio.Event()
            if self.inflight(port) == 0:
                event.set()
        return event

    def _begin(self, port: int) -> None:
        self._inflight[port] = self.inflight(port) + 1
        self._idle_event(port).clear()

    def _end(self, port: int) -> None:
        count = self.inflight(port) - 1
        self._inflight[port] = count
        if count <= 0:
            self._inflight[port] = 0
            self._idle_event(port).set()

    # -- client side --------------------------------------------------------------------------

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._clients[task] = writer
        try:
            await self._serve_client(reader, writer)
        except (ConnectionError, OSError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            pass
        except Exception:  # a bug must not take the proxy down: log it, drop this connection
            log.exception(
                "proxy for service %r: unexpected error on a client connection", self.service
            )
        finally:
            self._clients.pop(task, None)
            with contextlib.suppress(Exception):
                writer.close()

    async def _serve_client(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
        peer = writer.get_extra_info("peername")
        client_ip = peer[0].encode() if isinstance(peer, tuple) and peer else b"127.0.0.1"
        while not self._closing:
            try:
                async with asyncio.timeout(CLIENT_IDLE_TIMEOUT):
                    event = await _read_event(conn, reader)
            except TimeoutError:
                return
            except h11.RemoteProtocolError as exc:
                status = getattr(exc, "error_status_hint", 400)
                await self._reply(
                    conn, writer, b"GET", self._error(status, "bad_request", str(exc))
                )
                return
            if not isinstance(event, h11.Request):
                return  # ConnectionClosed, or anything unexpected
            await self._handle(conn, reader, writer, event, client_ip)
            if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                return
            conn.start_next_cycle()

    async def _handle(
        self,
        conn: Any,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        request: Any,
        client_ip: bytes,
    ) -> None:
        backend = self._backend  # routing is decided the moment the request arrives
        method: bytes = request.method
        if backend is not None:
            self._begin(backend)
        try:
            try:
                async with asyncio.timeout(CLIENT_REQUEST_TIMEOUT):
                    body = await self._read_request_body(conn, reader, writer)
            except _BodyTooLarge:
                answer = self._error(413, "body_too_large", "the request body is too large")
                await self._reply(conn, writer, method, answer)
                return
            except (TimeoutError, h11.RemoteProtocolError):
                return  # the client is broken or gone; close its connection
            if method == b"CONNECT":
                answer = self._error(405, "method_not_allowed", "CONNECT is not supported")
            elif backend is None:
                answer = self._error(
                    503, "no_backend", f"no instance of service {self.service!r} is serving now"
                )
            else:
                answer = await self._forward(backend, request, body, client_ip)
        finally:
            if backend is not None:
                self._end(backend)
        await self._reply(conn, writer, method, answer)

    async def _read_request_body(
        self, conn: Any, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bytes:
        chunks: list[bytes] = []
        size = 0
        while True:
            if conn.they_are_waiting_for_100_continue:
                continue_ = h11.InformationalResponse(
                    status_code=100, headers=[], reason=b"Continue"
                )
                writer.write(conn.send(continue_))
                await writer.drain()
            event = await _read_event(conn, reader)
            if isinstance(event, h11.Data):
                size += len(event.data)
                if size > MAX_BODY_BYTES:
                    raise _BodyTooLarge
                chunks.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                return b"".join(chunks)
            else:  # ConnectionClosed mid-body
                raise h11.RemoteProtocolError("client closed the connection mid-request")

    def _error(self, status: int, error: str, detail: str) -> _Answer:
        return _json_answer(status, error, self.service, detail)

    async def _reply(
        self, conn: Any, writer: asyncio.StreamWriter, method: bytes, answer: _Answer
    ) -> None:
        if conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        no_body = method == b"HEAD" or answer.status in (204, 304) or answer.status < 200
        headers = answer.headers
        if not no_body:
            headers = [(n, v) for n, v in headers if n != b"content-length"]
            headers.append((b"content-length", str(len(answer.body)).encode()))
        elif answer.status == 204:
            headers = [(n, v) for n, v in headers if n != b"content-length"]
        data = conn.send(
            h11.Response(status_code=answer.status, headers=headers, reason=answer.reason)
        )
        if answer.body and not no_body:
            data += conn.send(h11.Data(data=answer.body))
        data += conn.send(h11.EndOfMessage())
        writer.write(data)
        await writer.drain()

    # -- backend side -------------------------------------------------------------------------

    async def _forward(self, port: int, request: Any, body: bytes, client_ip: bytes) -> _Answer:
        headers = _end_to_end(list(request.headers), drop=frozenset({b"expect"}))
        if not any(name == b"host" for name, _ in headers):
            headers.insert(0, (b"host", f"{LISTEN_HOST}:{self.port}".encode()))
        forwarded = [v for n, v in headers if n == b"x-forwarded-for"]
        headers = [(n, v) for n, v in headers if n != b"x-forwarded-for"]
        headers.append((b"x-forwarded-for", b", ".join([*forwarded, client_ip])))
        had_body = body or any(
            name in (b"content-length", b"transfer-encoding") for name, _ in request.headers
        )
        if had_body:
            headers.append((b"content-length", str(len(body)).encode()))
        upstream_request = h11.Request(
            method=request.method, target=request.target, headers=headers
        )
        try:
            async with asyncio.timeout(BACKEND_TIMEOUT):
                return await self._exchange(port, upstream_request, body, request.method)
        except TimeoutError:
            return self._error(
                504, "gateway_timeout", f"backend 127.0.0.1:{port} did not answer in time"
            )
        except _BackendError as exc:
            return self._error(502, "bad_gateway", f"backend 127.0.0.1:{port}: {exc}")

    async def _exchange(self, port: int, request: Any, body: bytes, method: bytes) -> _Answer:
        for _attempt in range(3):
            upstream = self._checkout(port)
            if upstream is None:
                upstream = await self._connect(port)
            try:
                answer = await self._roundtrip(upstream, request, body, method)
            except _StaleConnection:
                upstream.close()
                continue  # the backend closed an idle connection: retry on another one
            except BaseException:
                upstream.close()
                raise
            self._checkin(upstream)
            return answer
        raise _BackendError("the backend keeps closing connections without answering")

    def _checkout(self, port: int) -> _Upstream | None:
        pool = self._pool.get(port)
        now = time.monotonic()
        while pool:
            upstream = pool.pop()
            if (
                upstream.reader.at_eof()
                or upstream.writer.is_closing()
                or now - upstream.idle_since > POOL_IDLE_TIMEOUT
            ):
                upstream.close()
                continue
            upstream.reused = True
            return upstream
        return None

    def _checkin(self, upstream: _Upstream) -> None:
        conn = upstream.conn
        if (
            self._closing
            or conn.our_state is not h11.DONE
            or conn.their_state is not h11.DONE
            or upstream.port != self._backend  # keep connections to the serving backend only
        ):
            upstream.close()
            return
        conn.start_next_cycle()
        upstream.reused = False
        upstream.idle_since = time.monotonic()
        pool = self._pool.setdefault(upstream.port, [])
        if len(pool) >= POOL_SIZE:
            upstream.close()
        else:
            pool.append(upstream)

    async def _connect(self, port: int) -> _Upstream:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(LISTEN_HOST, port, limit=_READ_CHUNK * 4), CONNECT_TIMEOUT
            )
        except ConnectionRefusedError:
            raise _BackendError("connection refused") from None
        except TimeoutError:
            raise _BackendError("connection timed out") from None
        except OSError as exc:
            raise _BackendError(f"cannot connect ({exc.strerror or exc})") from None
        return _Upstream(port, reader, writer)

    async def _roundtrip(
        self, upstream: _Upstream, request: Any, body: bytes, method: bytes
    ) -> _Answer:
        conn = upstream.conn
        received = False  # has any byte of the response arrived?
        response: Any = None
        chunks: list[bytes] = []
        size = 0
        try:
            data = conn.send(request)
            if body:
                data += conn.send(h11.Data(data=body))
            data += conn.send(h11.EndOfMessage())
            upstream.writer.write(data)
            await upstream.writer.drain()
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    chunk = await upstream.reader.read(_READ_CHUNK)
                    received = received or bool(chunk)
                    conn.receive_data(chunk)
                elif isinstance(event, h11.Response):
                    response = event
                elif isinstance(event, h11.Data):
                    size += len(event.data)
                    if size > MAX_BODY_BYTES:
                        raise _BackendError("the response body is too large")
                    chunks.append(bytes(event.data))
                elif isinstance(event, h11.EndOfMessage):
                    break
                elif not isinstance(event, h11.InformationalResponse):
                    raise _BackendError("the backend closed the connection mid-response")
        except h11.RemoteProtocolError as exc:
            if upstream.reused and not received:
                raise _StaleConnection(str(exc)) from None
            if not received:
                raise _BackendError("the backend closed the connection without answering") from None
            if response is not None:
                raise _BackendError("the backend closed the connection mid-response") from None
            raise _BackendError(f"invalid HTTP response ({exc})") from None
        except (ConnectionError, OSError) as exc:
            if upstream.reused and not received:
                raise _StaleConnection(str(exc)) from None
            raise _BackendError(f"connection lost ({exc.strerror or exc})") from None
        headers = _end_to_end(list(response.headers))
        if method == b"HEAD" or response.status_code == 304:
            headers.extend((n, v) for n, v in response.headers if n == b"content-length")
        return _Answer(response.status_code, headers, b"".join(chunks), response.reason)
