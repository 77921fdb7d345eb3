"""A small HTTP/1.1 reverse proxy that gives a service a stable port.

One :class:`ServiceProxy` listens on the service's stable port (127.0.0.1 only) and forwards each
request to the service's *current* backend port, chosen when the request arrives. Switching the
backend therefore takes effect with the very next request, even on a keep-alive connection that
a client keeps open, while requests already forwarded finish on the backend they started on.
That is what makes a blue-green switch drop no request.

Both sides speak HTTP/1.1 through `h11`, and bodies *stream* in both directions: the proxy reads
the next piece (at most ``chunk_size`` bytes, 64 KiB by default) from one side only after the
previous one was written to the other side and the socket buffer drained, so its memory stays
flat whatever the size of a body and however many requests are in flight. Upload and response
run at the same time, so a backend may answer before it has read the whole request body.

* A request body of at most ``buffer_bytes`` (64 KiB by default; no body at all, a small
  ``Content-Length`` one, or a chunked one that ends within that size) is read first and sent
  with ``Content-Length`` on a pooled keep-alive connection. If that connection turns out to be
  closed by the backend before any response byte, the request is sent again on another one
  (up to three attempts), which is safe because the whole body is still at hand.
* A larger body goes out as it arrives, on a new connection to the backend (a new connection
  cannot be a stale one, so no replay buffer is needed), with the framing the client used:
  ``Content-Length`` as declared, or chunked.
* Response bodies are relayed as they arrive: ``Content-Length`` framing is kept, a chunked or
  close-delimited response is sent chunked (or close-delimited to an HTTP/1.0 client). There is
  no limit on the size of a response body. Trailers are dropped.

Request bodies are limited to ``max_body_bytes`` (:data:`MAX_BODY_BYTES` by default). A request
that declares a larger ``Content-Length`` is answered ``413`` before any of its body is read; a
chunked one that grows past the limit is cut off (the backend never gets its end) and answered
``413`` if no response byte went to the client yet. A request with both ``Content-Length`` and
``Transfer-Encoding`` is answered ``400`` (RFC 9112 §6.1; `h11` itself would read it as chunked
and keep the connection). Whenever the proxy answers before it has read a whole request, it
sends ``Connection: close``, half-closes the connection and drops what the client still sends
for up to :data:`LINGER_SECONDS` before closing, so the client gets to read the answer instead
of a connection reset. A response that breaks after its first byte was relayed cannot be turned
into an error answer any more: the client connection is closed, so the client sees a truncated
response.

Only hop-by-hop headers are changed; everything else passes through as is.

The proxy counts in-flight requests per backend port so that a backend can be drained before it
is stopped (:meth:`ServiceProxy.drain`); a request counts until its response has come in whole.

Error answers are short JSON documents:

* ``503`` when no backend is set yet,
* ``502`` when the backend refuses the connection or dies before answering,
* ``504`` when the backend neither answers nor reads the body for :data:`BACKEND_TIMEOUT`,
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
#: Largest request body the proxy forwards (it never holds a body: this is a policy limit).
MAX_BODY_BYTES = 64 * 1024 * 1024
#: Largest request or response head (request line/status line plus headers).
MAX_HEAD_BYTES = 64 * 1024
#: Largest piece of a body read from one side before it is written to the other.
CHUNK_BYTES = 64 * 1024
#: Request bodies up to this size are read whole before they are sent (and can be replayed).
BUFFERED_BODY_BYTES = 64 * 1024
#: A keep-alive client connection idle for this long is closed.
CLIENT_IDLE_TIMEOUT = 75.0
#: Time a client may leave a started request without sending anything.
CLIENT_REQUEST_TIMEOUT = 60.0
#: Time a client may take to accept the next piece of a response.
CLIENT_WRITE_TIMEOUT = 60.0
#: Time to open a TCP connection to a backend.
CONNECT_TIMEOUT = 5.0
#: Time a backend may neither answer nor read the request body (``504`` before the answer).
BACKEND_TIMEOUT = 300.0
#: After answering before the end of a request: how long to drop what the client still sends.
LINGER_SECONDS = 2.0
#: Idle keep-alive connections kept per backend port.
POOL_SIZE = 8
#: A pooled backend connection idle for longer is not reused (backends close idle ones).
POOL_IDLE_TIMEOUT = 1.5

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


class _BackendTimeout(_BackendError):
    """The backend neither answered nor read the request body in time."""


class _StaleConnection(_BackendError):
    """A reused keep-alive connection turned out to be closed before any response byte."""


class _ClientError(Exception):
    """The client went away, stalled or broke the protocol in the middle of an exchange."""


class _BodyTooLarge(Exception):
    """A request body is larger than the proxy's limit."""


@dataclass
class _Upstream:
    """One connection from the proxy to a backend."""

    port: int
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    conn: Any = field(default_factory=lambda: h11.Connection(h11.CLIENT, MAX_HEAD_BYTES))
    reused: bool = False
    received: bool = False  # has any byte of the current response arrived?
    idle_since: float = 0.0

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()


@dataclass
class _Answer:
    """A complete response the proxy makes itself."""

    status: int
    headers: Headers
    body: bytes
    reason: bytes = b""


@dataclass
class _Exchange:
    """What one forwarded request has done so far."""

    responded: bool = False  # has the response head gone to the client?
    uploading: bool = False  # is the request body still being streamed to the backend?
    progress_at: float = 0.0  # loop time the upload last moved a piece


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


def _header(headers: Headers, name: bytes) -> bytes | None:
    """The value of header ``name`` (h11 lower-cases names and merges equal lengths)."""
    for key, value in headers:
        if key == name:
            return value
    return None


def _response_headers(response: Any, method: bytes) -> Headers:
    """The headers to send the client for the backend's ``response`` to a ``method`` request."""
    received: Headers = list(response.headers)
    headers = _end_to_end(received)
    length = _header(received, b"content-length")
    if length is None or response.status_code == 204:
        return headers
    if (
        method == b"HEAD"
        or response.status_code == 304
        or _header(received, b"transfer-encoding") is None
    ):
        headers.append((b"content-length", length))
    return headers


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


async def _read_event(conn: Any, reader: asyncio.StreamReader, chunk: int) -> Any:
    """The next h11 event of ``conn``, reading at most ``chunk`` bytes at a time."""
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await reader.read(chunk))
            continue
        return event


async def _to_client(writer: asyncio.StreamWriter, data: bytes) -> None:
    """Write ``data`` to the client and wait until the socket buffer drained."""
    try:
        writer.write(data)
        async with asyncio.timeout(CLIENT_WRITE_TIMEOUT):
            await writer.drain()
    except (ConnectionError, OSError) as exc:  # TimeoutError is an OSError
        raise _ClientError(f"cannot write to the client ({exc!r})") from None


async def _linger(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, chunk: int) -> None:
    """Half-close, then drop what the client still sends for a moment.

    Closing a socket with unread input resets the connection, and a reset can destroy the
    answer before the client read it. A client still sending a body it was told not to send
    gets the answer and the end of the stream first; it stops and closes its side soon after.
    """
    try:
        if writer.can_write_eof():
            writer.write_eof()
        async with asyncio.timeout(LINGER_SECONDS):
            while await reader.read(chunk):
                pass
    except (ConnectionError, OSError):  # includes TimeoutError
        pass


async def _settle(*tasks: asyncio.Task[None]) -> None:
    """Cancel ``tasks``, wait for them and fetch their exceptions (nobody else will)."""
    for task in tasks:
        task.cancel()
    await asyncio.wait(tasks)
    for task in tasks:
        if not task.cancelled():
            task.exception()


class _ClientBody:
    """The body of the current request, read from the client piece by piece."""

    def __init__(
        self,
        conn: Any,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        limit: int,
        chunk: int,
    ) -> None:
        self._conn = conn
        self._reader = reader
        self._writer = writer
        self._limit = limit
        self._chunk = chunk
        self.size = 0

    async def read(self) -> bytes | None:
        """The next piece of the body, ``None`` at its end.

        Raises :class:`_BodyTooLarge` past the limit and :class:`_ClientError` when the client
        stalls, breaks the framing or goes away.
        """
        conn = self._conn
        while True:
            if conn.they_are_waiting_for_100_continue:
                continue_ = h11.InformationalResponse(
                    status_code=100, headers=[], reason=b"Continue"
                )
                await _to_client(self._writer, conn.send(continue_))
            try:
                async with asyncio.timeout(CLIENT_REQUEST_TIMEOUT):
                    event = await _read_event(conn, self._reader, self._chunk)
            except h11.RemoteProtocolError as exc:
                raise _ClientError(f"invalid request body ({exc})") from None
            except (ConnectionError, OSError) as exc:  # TimeoutError is an OSError
                raise _ClientError(f"cannot read the request body ({exc!r})") from None
            if isinstance(event, h11.Data):
                if not event.data:
                    continue
                self.size += len(event.data)
                if self.size > self._limit:
                    raise _BodyTooLarge
                return bytes(event.data)
            if isinstance(event, h11.EndOfMessage):
                return None
            raise _ClientError("the client closed the connection mid-request")

    async def head(self, limit: int) -> tuple[bytes, bool]:
        """Read until the end of the body or past ``limit`` bytes: the bytes, and whether
        that was the whole body."""
        parts: list[bytes] = []
        size = 0
        while size <= limit:
            piece = await self.read()
            if piece is None:
                return b"".join(parts), True
            parts.append(piece)
            size += len(piece)
        return b"".join(parts), False


class ServiceProxy:
    """The stable-port proxy of one service.

    Call :meth:`listen` once, :meth:`switch` whenever the serving instance changes, and
    :meth:`close` at the end. ``max_body_bytes`` limits request bodies, ``chunk_size`` is the
    largest piece of a body read at once and ``buffer_bytes`` the largest request body read
    whole before it is sent (see the module documentation).
    """

    def __init__(
        self,
        service: str,
        *,
        max_body_bytes: int = MAX_BODY_BYTES,
        chunk_size: int = CHUNK_BYTES,
        buffer_bytes: int = BUFFERED_BODY_BYTES,
    ) -> None:
        if chunk_size < 1 or buffer_bytes < 0 or max_body_bytes < 0:
            raise ValueError("chunk_size must be positive, the other sizes not negative")
        self.service = service
        self.max_body_bytes = max_body_bytes
        self.chunk_size = chunk_size
        self.buffer_bytes = buffer_bytes
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
            self._on_client,
            LISTEN_HOST,
            port,
            reuse_address=True,
            backlog=256,
            limit=self.chunk_size,
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
        except (ConnectionError, OSError, asyncio.IncompleteReadError, _ClientError):
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
                    event = await _read_event(conn, reader, self.chunk_size)
            except TimeoutError:
                return
            except h11.RemoteProtocolError as exc:
                status = getattr(exc, "error_status_hint", 400)
                answer = self._error(status, "bad_request", str(exc))
                await self._reply(conn, writer, b"GET", answer, close=True)
                await _linger(reader, writer, self.chunk_size)
                return
            if not isinstance(event, h11.Request):
                return  # ConnectionClosed, or anything unexpected
            await self._handle(conn, reader, writer, event, client_ip)
            if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
                conn.start_next_cycle()
                continue
            if conn.our_state in (h11.DONE, h11.MUST_CLOSE) and conn.their_state is h11.SEND_BODY:
                await _linger(reader, writer, self.chunk_size)  # answered before the body's end
            return

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
        headers: Headers = list(request.headers)
        declared = _header(headers, b"content-length")
        if declared is not None and _header(headers, b"transfer-encoding") is not None:
            detail = "a request must not have both Content-Length and Transfer-Encoding"
            answer = self._error(400, "bad_request", detail)
            await self._reply(conn, writer, method, answer, close=True)
            return
        length = None if declared is None else int(declared)
        if length is not None and length > self.max_body_bytes:
            await self._reply(conn, writer, method, self._too_large(), close=True)
            return
        if method == b"CONNECT":
            answer = self._error(405, "method_not_allowed", "CONNECT is not supported")
            await self._refuse(conn, reader, writer, method, answer)
            return
        if backend is None:
            detail = f"no instance of service {self.service!r} is serving now"
            await self._refuse(conn, reader, writer, method, self._error(503, "no_backend", detail))
            return
        self._begin(backend)
        try:
            await self._forward(backend, conn, reader, writer, request, length, client_ip)
        finally:
            self._end(backend)

    async def _refuse(
        self,
        conn: Any,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        method: bytes,
        answer: _Answer,
    ) -> None:
        """Answer ``answer`` instead of forwarding; read and drop the body first, if any, so
        that the connection can stay open (unless the client still waits for 100 Continue)."""
        if not conn.they_are_waiting_for_100_continue:
            body = _ClientBody(conn, reader, writer, self.max_body_bytes, self.chunk_size)
            try:
                while await body.read() is not None:
                    pass
            except _ClientError:
                return
            except _BodyTooLarge:
                answer = self._too_large()
        await self._reply(conn, writer, method, answer)

    def _error(self, status: int, error: str, detail: str) -> _Answer:
        return _json_answer(status, error, self.service, detail)

    def _too_large(self) -> _Answer:
        detail = f"the request body is larger than {self.max_body_bytes} bytes"
        return self._error(413, "body_too_large", detail)

    async def _reply(
        self,
        conn: Any,
        writer: asyncio.StreamWriter,
        method: bytes,
        answer: _Answer,
        *,
        close: bool = False,
    ) -> None:
        """Send the proxy's own ``answer``, unless a response was started already.

        The connection is closed afterwards when ``close`` or when the request was not read to
        its end (so that the rest of it is never taken for the next request).
        """
        if conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        no_body = method == b"HEAD" or answer.status in (204, 304) or answer.status < 200
        headers = answer.headers
        if not no_body:
            headers = [(n, v) for n, v in headers if n != b"content-length"]
            headers.append((b"content-length", str(len(answer.body)).encode()))
        elif answer.status == 204:
            headers = [(n, v) for n, v in headers if n != b"content-length"]
        if close or conn.their_state is not h11.DONE:
            headers = [*headers, (b"connection", b"close")]
        data = conn.send(
            h11.Response(status_code=answer.status, headers=headers, reason=answer.reason)
        )
        if answer.body and not no_body:
            data += conn.send(h11.Data(data=answer.body))
        data += conn.send(h11.EndOfMessage())
        await _to_client(writer, data)

    # -- backend side -------------------------------------------------------------------------

    def _upstream_headers(self, request: Any, client_ip: bytes) -> Headers:
        """The request's headers for the backend, without framing headers."""
        headers = _end_to_end(list(request.headers), drop=frozenset({b"expect"}))
        if not any(name == b"host" for name, _ in headers):
            headers.insert(0, (b"host", f"{LISTEN_HOST}:{self.port}".encode()))
        forwarded = [v for n, v in headers if n == b"x-forwarded-for"]
        headers = [(n, v) for n, v in headers if n != b"x-forwarded-for"]
        headers.append((b"x-forwarded-for", b", ".join([*forwarded, client_ip])))
        return headers

    async def _forward(
        self,
        port: int,
        conn: Any,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        request: Any,
        length: int | None,
        client_ip: bytes,
    ) -> None:
        method: bytes = request.method
        chunked = _header(list(request.headers), b"transfer-encoding") is not None
        headers = self._upstream_headers(request, client_ip)
        body = _ClientBody(conn, reader, writer, self.max_body_bytes, self.chunk_size)
        exchange = _Exchange()
        try:
            if length is not None and length > self.buffer_bytes:
                start, whole = b"", False
            else:
                start, whole = await body.head(self.buffer_bytes)
            if whole:
                if length is not None or chunked:
                    headers.append((b"content-length", str(len(start)).encode()))
                upstream_request = h11.Request(
                    method=method, target=request.target, headers=headers
                )
                await self._send_buffered(exchange, port, upstream_request, start, conn, writer)
            else:
                if chunked:
                    headers.append((b"transfer-encoding", b"chunked"))
                else:
                    headers.append((b"content-length", str(length).encode()))
                upstream_request = h11.Request(
                    method=method, target=request.target, headers=headers
                )
                await self._send_streamed(
                    exchange, port, upstream_request, start, body, conn, writer
                )
        except _ClientError:
            return  # the client is broken or gone; close its connection
        except _BodyTooLarge:
            answer = self._too_large()
        except _BackendTimeout:
            answer = self._error(
                504, "gateway_timeout", f"backend 127.0.0.1:{port} did not answer in time"
            )
        except _BackendError as exc:
            answer = self._error(502, "bad_gateway", f"backend 127.0.0.1:{port}: {exc}")
        else:
            return
        # Nothing happens when a response was started already: the connection gets closed.
        await self._reply(conn, writer, method, answer)

    async def _send_buffered(
        self,
        exchange: _Exchange,
        port: int,
        request: Any,
        body: bytes,
        conn: Any,
        writer: asyncio.StreamWriter,
    ) -> None:
        """Send a request whose whole body is at hand, on a pooled connection if there is one;
        again on another connection when a pooled one turns out to be stale."""
        for _attempt in range(3):
            upstream = self._checkout(port)
            if upstream is None:
                upstream = await self._connect(port)
            try:
                await self._exchange(exchange, upstream, request, body, None, conn, writer)
            except _StaleConnection:
                upstream.close()
                continue  # the backend closed an idle connection: retry on another one
            except BaseException:
                upstream.close()
                raise
            self._checkin(upstream)
            return
        raise _BackendError("the backend keeps closing connections without answering")

    async def _send_streamed(
        self,
        exchange: _Exchange,
        port: int,
        request: Any,
        start: bytes,
        body: _ClientBody,
        conn: Any,
        writer: asyncio.StreamWriter,
    ) -> None:
        """Send a request whose body streams from the client, on a new connection."""
        upstream = await self._connect(port)
        try:
            await self._exchange(exchange, upstream, request, start, body, conn, writer)
        except BaseException:
            upstream.close()
            raise
        self._checkin(upstream)

    async def _exchange(
        self,
        exchange: _Exchange,
        upstream: _Upstream,
        request: Any,
        start: bytes,
        rest: _ClientBody | None,
        conn: Any,
        writer: asyncio.StreamWriter,
    ) -> None:
        """Send ``request`` with ``start`` (and then ``rest``, if any, as it arrives) to the
        backend while relaying its response to the client."""
        uconn = upstream.conn
        data = uconn.send(request)
        if start:
            data += uconn.send(h11.Data(data=start))
        if rest is None:
            data += uconn.send(h11.EndOfMessage())
        # When the backend breaks the upload, its response (or its absence) tells what happened.
        sent = await self._to_backend(upstream, data)
        if rest is None or not sent:
            await self._relay(exchange, upstream, conn, writer, request.method)
            return
        exchange.uploading = True
        exchange.progress_at = asyncio.get_running_loop().time()
        upload = asyncio.create_task(self._upload(exchange, upstream, rest))
        relay = asyncio.create_task(self._relay(exchange, upstream, conn, writer, request.method))
        try:
            await asyncio.wait((upload, relay), return_when=asyncio.FIRST_COMPLETED)
            if relay.done():
                relay.result()  # answered, perhaps before the whole body was sent; or failed
            elif (error := upload.exception()) is not None:
                raise error
            else:
                await relay
        finally:
            exchange.uploading = False
            await _settle(upload, relay)

    async def _upload(self, exchange: _Exchange, upstream: _Upstream, body: _ClientBody) -> None:
        """Stream the rest of the request body to the backend, one piece at a time."""
        uconn = upstream.conn
        loop = asyncio.get_running_loop()
        while True:
            piece = await body.read()
            event = h11.EndOfMessage() if piece is None else h11.Data(data=piece)
            try:
                data = uconn.send(event)
            except h11.LocalProtocolError:
                return  # the exchange with the backend failed already; the relay reports it
            if not await self._to_backend(upstream, data):
                return
            exchange.progress_at = loop.time()
            if piece is None:
                return

    async def _to_backend(self, upstream: _Upstream, data: bytes) -> bool:
        """Write ``data`` to the backend; ``False`` when the connection broke."""
        try:
            upstream.writer.write(data)
            async with asyncio.timeout(BACKEND_TIMEOUT):
                await upstream.writer.drain()
        except TimeoutError:
            raise _BackendTimeout("the backend does not read the request") from None
        except (ConnectionError, OSError):
            return False
        return True

    async def _from_backend(self, exchange: _Exchange, upstream: _Upstream) -> bytes:
        """The next bytes from the backend. Waiting counts as a timeout only while the upload
        (if any) has not moved either."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                async with asyncio.timeout(BACKEND_TIMEOUT):
                    return await upstream.reader.read(self.chunk_size)
            except TimeoutError:
                if exchange.uploading and loop.time() - exchange.progress_at < BACKEND_TIMEOUT:
                    continue
                raise _BackendTimeout("the backend did not answer in time") from None

    async def _relay(
        self,
        exchange: _Exchange,
        upstream: _Upstream,
        conn: Any,
        writer: asyncio.StreamWriter,
        method: bytes,
    ) -> None:
        """Relay the backend's response to the client as it arrives."""
        uconn = upstream.conn
        response: Any = None
        try:
            while True:
                event = uconn.next_event()
                if event is h11.NEED_DATA:
                    data = await self._from_backend(exchange, upstream)
                    upstream.received = upstream.received or bool(data)
                    uconn.receive_data(data)
                elif isinstance(event, h11.Response):
                    response = event
                    head = h11.Response(
                        status_code=event.status_code,
                        headers=_response_headers(event, method),
                        reason=event.reason,
                    )
                    exchange.responded = True
                    await _to_client(writer, conn.send(head))
                elif isinstance(event, h11.Data):
                    await _to_client(writer, conn.send(h11.Data(data=event.data)))
                elif isinstance(event, h11.EndOfMessage):
                    await _to_client(writer, conn.send(h11.EndOfMessage()))
                    return
                elif not isinstance(event, h11.InformationalResponse):
                    raise _BackendError("the backend closed the connection mid-response")
        except h11.RemoteProtocolError as exc:
            if upstream.reused and not upstream.received:
                raise _StaleConnection(str(exc)) from None
            if not upstream.received:
                raise _BackendError("the backend closed the connection without answering") from None
            if response is not None:
                raise _BackendError("the backend closed the connection mid-response") from None
            raise _BackendError(f"invalid HTTP response ({exc})") from None
        except (ConnectionError, OSError) as exc:
            if upstream.reused and not upstream.received:
                raise _StaleConnection(str(exc)) from None
            raise _BackendError(f"connection lost ({exc.strerror or exc})") from None

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
            upstream.received = False
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
        upstream.received = False
        upstream.idle_since = time.monotonic()
        pool = self._pool.setdefault(upstream.port, [])
        if len(pool) >= POOL_SIZE:
            upstream.close()
        else:
            pool.append(upstream)

    async def _connect(self, port: int) -> _Upstream:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(LISTEN_HOST, port, limit=self.chunk_size),
                CONNECT_TIMEOUT,
            )
        except ConnectionRefusedError:
            raise _BackendError("connection refused") from None
        except TimeoutError:
            raise _BackendError("connection timed out") from None
        except OSError as exc:
            raise _BackendError(f"cannot connect ({exc.strerror or exc})") from None
        return _Upstream(port, reader, writer)
