"""The stable-port proxy on its own: bodies stream through, limits and framing are enforced.

Every test runs a real :class:`ServiceProxy` (in an event loop on a thread, with small buffers)
in front of real HTTP servers on 127.0.0.1, and talks to it over real sockets.
"""

from __future__ import annotations

import asyncio
import hashlib
import http.server
import json
import os
import socket
import socketserver
import threading
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import httpx
import pytest

from airlock.runtimes.proxy import ServiceProxy

pytestmark = pytest.mark.timeout(60)

T = TypeVar("T")

KIB = 1024
MIB = 1024 * KIB
#: Small buffers, so that every body in these tests is many times larger than any of them.
BUFFERS: dict[str, int] = {"chunk_size": 16 * KIB, "buffer_bytes": 16 * KIB}
BIG = 12 * MIB
WAIT = 10.0  # how long a test waits for something that must happen before it fails


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- a real backend ----------------------------------------------------------------------------


def read_body(handler: http.server.BaseHTTPRequestHandler) -> Iterator[bytes]:
    """The request body in pieces, Content-Length or chunked; raises ``EOFError`` when the
    connection ends before the body does."""
    if handler.headers.get("Transfer-Encoding", "").lower() == "chunked":
        while True:
            line = handler.rfile.readline()
            if not line:
                raise EOFError("connection closed in a chunk header")
            size = int(line.split(b";")[0], 16)
            if size == 0:
                while handler.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass
                return
            while size:
                piece = handler.rfile.read(min(size, 64 * KIB))
                if not piece:
                    raise EOFError("connection closed in a chunk")
                size -= len(piece)
                yield piece
            handler.rfile.readline()
    else:
        left = int(handler.headers.get("Content-Length", "0"))
        while left:
            piece = handler.rfile.read(min(left, 64 * KIB))
            if not piece:
                raise EOFError("connection closed in the body")
            left -= len(piece)
            yield piece


class Handler(http.server.BaseHTTPRequestHandler):
    """``POST /hash`` answers the SHA-256 and size of the body; ``POST /gate`` too, but tells
    the test once half of the body arrived; ``GET /big?N`` sends N bytes (Content-Length),
    ``GET /chunked`` a chunked body, ``GET /gated`` half of a body and the rest once the test
    says the client has the first half; ``GET /`` the backend's name."""

    protocol_version = "HTTP/1.1"
    server: Backend

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _answer(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self.server.record(self, "get")
        if self.path.startswith("/big?"):
            self._answer(200, self.server.data[: int(self.path.split("?")[1])])
        elif self.path == "/chunked":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            data = self.server.data[:BIG]
            for start in range(0, len(data), 300 * KIB):
                piece = data[start : start + 300 * KIB]
                self.wfile.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
            self.wfile.write(b"0\r\n\r\n")
        elif self.path == "/gated":
            data = self.server.data[:BIG]
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: BIG // 2])
            self.wfile.flush()
            if self.server.client_has_half.wait(WAIT):
                self.wfile.write(data[BIG // 2 :])
        else:
            self._answer(200, self.server.name.encode())

    def do_POST(self) -> None:
        framing = "chunked" if "Transfer-Encoding" in self.headers else "length"
        digest, size = hashlib.sha256(), 0
        try:
            for piece in read_body(self):
                digest.update(piece)
                size += len(piece)
                if self.path == "/gate" and size >= BIG // 2:
                    self.server.half_received.set()
        except (EOFError, ValueError, OSError):
            self.server.record(self, "incomplete", size)
            self.close_connection = True
            return
        self.server.record(self, framing, size)
        self._answer(200, f"{digest.hexdigest()} {size}".encode())


class Backend(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, name: str) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.name = name
        self.data = os.urandom(BIG)
        self.requests: list[tuple[str, str, int]] = []  # (path, framing, body size)
        self.recorded = threading.Condition()
        self.half_received = threading.Event()
        self.client_has_half = threading.Event()
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def record(self, handler: Handler, framing: str, size: int = 0) -> None:
        with self.recorded:
            self.requests.append((handler.path, framing, size))
            self.recorded.notify_all()

    def wait_for_requests(self, count: int) -> list[tuple[str, str, int]]:
        with self.recorded:
            assert self.recorded.wait_for(lambda: len(self.requests) >= count, WAIT)
            return list(self.requests)

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


class DropsSecondRequest(socketserver.ThreadingTCPServer):
    """Answers the first request on each connection (keep-alive) and closes the connection
    without a word when a second request arrives on it, as a backend does that closes an idle
    keep-alive connection just as the proxy reuses it."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), self._Handler)
        self.connections = 0
        self.dropped = 0
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    class _Handler(socketserver.StreamRequestHandler):
        server: DropsSecondRequest

        def handle(self) -> None:
            self.server.connections += 1
            head = read_head(self.rfile)
            length = int(head.headers.get("content-length", "0"))
            body = self.rfile.read(length)
            answer = f"{sha(body)} {len(body)}".encode()
            self.wfile.write(
                b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(answer), answer)
            )
            self.wfile.flush()
            if self.rfile.readline():  # the next request line: drop it
                self.server.dropped += 1

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


# -- the proxy, on an event loop of its own ----------------------------------------------------


class RunningProxy:
    def __init__(self, **options: int) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.proxy = ServiceProxy("web", **options)
        self.port = self.run(self.proxy.listen(0))

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(WAIT * 2)

    def call(self, fn: Callable[[], T]) -> T:
        async def call() -> T:
            return fn()

        return self.run(call())

    def switch(self, port: int | None) -> None:
        self.call(lambda: self.proxy.switch(port))

    def stop(self) -> None:
        self.run(self.proxy.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture
def backend() -> Iterator[Backend]:
    server = Backend("A")
    yield server
    server.stop()


@pytest.fixture
def start_proxy() -> Iterator[Callable[..., RunningProxy]]:
    started: list[RunningProxy] = []

    def start(backend: int | None = None, **options: int) -> RunningProxy:
        running = RunningProxy(**{**BUFFERS, **options})
        running.switch(backend)
        started.append(running)
        return running

    yield start
    for running in started:
        running.stop()


# -- a raw client ------------------------------------------------------------------------------


class Stream(Protocol):
    def readline(self, size: int = -1, /) -> bytes: ...
    def read(self, size: int = -1, /) -> bytes: ...


@dataclass
class Head:
    status: int
    headers: dict[str, str]


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


def read_head(stream: Stream) -> Head:
    """A request or status line and headers (names lower-cased)."""
    first = stream.readline()
    if not first:
        raise EOFError("connection closed before a head")
    parts = first.split()
    status = int(parts[1]) if first.startswith(b"HTTP/") else 0
    headers: dict[str, str] = {}
    while (line := stream.readline()) not in (b"\r\n", b"\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    return Head(status, headers)


def read_answer(stream: Stream) -> Answer:
    """One response (skipping 1xx ones): Content-Length, chunked or until the end."""
    head = read_head(stream)
    while head.status < 200:
        head = read_head(stream)
    if head.headers.get("transfer-encoding", "").lower() == "chunked":
        parts = []
        while size := int(stream.readline().split(b";")[0], 16):
            parts.append(stream.read(size))
            stream.readline()
        while stream.readline() not in (b"\r\n", b""):
            pass
        body = b"".join(parts)
    elif "content-length" in head.headers:
        body = stream.read(int(head.headers["content-length"]))
    else:
        body = stream.read()
    return Answer(head.status, head.headers, body)


class Client:
    """One connection to the proxy, written to and read from by hand."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
        self.stream = self.sock.makefile("rb")

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def post_head(self, path: str, *headers: str) -> None:
        lines = [f"POST {path} HTTP/1.1", "Host: test", *headers, "", ""]
        self.send("\r\n".join(lines).encode())

    def answer(self) -> Answer:
        return read_answer(self.stream)

    def closed(self) -> bool:
        """Whether the proxy ended the connection (waits up to WAIT seconds)."""
        try:
            return self.stream.read(1) == b""
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.stream.close()
        self.sock.close()


@pytest.fixture
def connect() -> Iterator[Callable[[int], Client]]:
    clients: list[Client] = []

    def make(port: int) -> Client:
        clients.append(Client(port))
        return clients[-1]

    yield make
    for client in clients:
        client.close()


def chunked(data: bytes, piece: int = 100 * KIB) -> bytes:
    parts = [
        f"{len(data[i : i + piece]):x}\r\n".encode() + data[i : i + piece] + b"\r\n"
        for i in range(0, len(data), piece)
    ]
    return b"".join(parts) + b"0\r\n\r\n"


# -- bodies stream -----------------------------------------------------------------------------


def test_large_upload_arrives_intact_and_the_connection_stays_open(
    backend: Backend, start_proxy: Callable[..., RunningProxy], connect: Callable[[int], Client]
) -> None:
    """A body many times larger than the proxy's buffers arrives byte for byte; the client's
    keep-alive connection then serves the next request."""
    proxy = start_proxy(backend.port)
    client = connect(proxy.port)
    client.post_head("/hash", f"Content-Length: {BIG}")
    client.send(backend.data)
    answer = client.answer()
    assert answer.status == 200
    assert answer.body.decode() == f"{sha(backend.data)} {BIG}"
    assert backend.requests[-1] == ("/hash", "length", BIG)

    client.send(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
    assert client.answer().body == b"A"


def test_upload_reaches_the_backend_before_the_client_finished_sending(
    backend: Backend, start_proxy: Callable[..., RunningProxy], connect: Callable[[int], Client]
) -> None:
    """The backend reads the first half of a body while the client holds back the second half:
    the proxy forwards what it has instead of waiting for the whole body."""
    proxy = start_proxy(backend.port)
    client = connect(proxy.port)
    client.post_head("/gate", f"Content-Length: {BIG}")
    client.send(backend.data[: BIG // 2])
    assert backend.half_received.wait(WAIT), "the first half never reached the backend"
    client.send(backend.data[BIG // 2 :])
    assert client.answer().body.decode() == f"{sha(backend.data)} {BIG}"


def test_upload_with_expect_100_continue_streams(
    backend: Backend, start_proxy: Callable[..., RunningProxy], connect: Callable[[int], Client]
) -> None:
    """A client that waits for ``100 Continue`` gets it, then its large body streams through."""
    proxy = start_proxy(backend.port)
    client = connect(proxy.port)
    client.post_head("/hash", f"Content-Length: {BIG}", "Expect: 100-continue")
    assert read_head(client.stream).status == 100
    client.send(backend.data)
    assert client.answer().body.decode() == f"{sha(backend.data)} {BIG}"


def test_chunked_requests_pass_through(
    backend: Backend, start_proxy: Callable[..., RunningProxy], connect: Callable[[int], Client]
) -> None:
    """A large chunked body goes to the backend chunked; a small one (it fits the proxy's
    buffer) with Content-Length, as backends that cannot read chunked bodies need."""
    proxy = start_proxy(backend.port)
    client = connect(proxy.port)
    client.post_head("/hash", "Transfer-Encoding: chunked")
    client.send(chunked(backend.data))
    assert client.answer().body.decode() == f"{sha(backend.data)} {BIG}"
    assert backend.requests[-1] == ("/hash", "chunked", BIG)

    small = backend.data[:5000]
    client.post_head("/hash", "Transfer-Encoding: chunked")
    client.send(chunked(small, 1000))
    assert client.answer().body.decode() == f"{sha(small)} 5000"
    assert backend.requests[-1] == ("/hash", "length", 5000)


def test_chunked_upload_from_httpx(
    backend: Backend, start_proxy: Callable[..., RunningProxy]
) -> None:
    """An HTTP client that streams a body of unknown length gets the right answer."""
    proxy = start_proxy(backend.port)
    pieces = [backend.data[i : i + MIB] for i in range(0, 4 * MIB, MIB)]
    response = httpx.post(
        f"http://127.0.0.1:{proxy.port}/hash", content=iter(pieces), trust_env=False
    )
    assert response.text == f"{sha(b''.join(pieces))} {4 * MIB}"


def test_large_and_chunked_responses_arrive_intact(
    backend: Backend, start_proxy: Callable[..., RunningProxy]
) -> None:
    """A Content-Length response larger than any buffer keeps its framing; a chunked one
    reaches the client chunked; both intact."""
    proxy = start_proxy(backend.port)
    with httpx.Client(base_url=f"http://127.0.0.1:{proxy.port}", trust_env=False) as client:
        large = client.get(f"/big?{BIG}")
        assert large.status_code == 200
        assert large.headers["content-length"] == str(BIG)
        assert sha(large.content) == sha(backend.data)

        streamed = client.get("/chunked")
        assert streamed.headers["transfer-encoding"] == "chunked"
        assert "content-length" not in streamed.headers
        assert sha(streamed.content) == sha(backend.data)


def test_response_reaches_the_client_before_the_backend_finished_sending(
    backend: Backend, start_proxy: Callable[..., RunningProxy], connect: Callable[[int], Client]
) -> None:
    """The client reads the first half of a response the backend sends the second half of only
    after that: the proxy relays what it has instead of waiting for the whole response."""
    proxy = start_proxy(backend.port)
    client = connect(proxy.port)
    client.send(b"GET /gated HTTP/1.1\r\nHost: test\r\n\r\n")
    head = read_head(client.stream)
    assert head.status == 200 and head.headers["content-length"] == str(BIG)
    first = client.stream.read(BIG // 2)
    assert first == backend.data[: BIG // 2]
    backend.client_has_half.set()
    assert client.stream.read(BIG // 2) == backend.data[BIG // 2 : BIG]


# -- limits and framing ------------------------------------------------------------------------


def test_oversize_content_length_is_refused_before_the_body(
    backend: Backend, start_proxy: Callable[..., RunningProxy], connect: Callable[[int], Client]
) -> None:
    """A declared body over the limit gets 413 on its headers alone (the client sends no body
    byte), then the connection is closed; the backend never hears of it."""
    proxy = start_proxy(backend.port, max_body_bytes=MIB)
    client = connect(proxy.port)
    client.post_head("/hash", f"Content-Length: {MIB + 1}")
    answer = client.answer()
    assert answer.status == 413
    assert json.loads(answer.body)["error"] == "body_too_large"
    assert answer.headers["connection"] == "close"
    assert client.closed()
    assert backend.requests == []


def test_oversize_upload_from_an_http_client_gets_413(
    backend: Backend, start_proxy: Callable[..., RunningProxy]
) -> None:
    """A client that sends its whole oversize body anyway still reads the 413 (the proxy
    does not reset the connection under it)."""
    proxy = start_proxy(backend.port, max_body_bytes=MIB)
    response = httpx.post(
        f"http://127.0.0.1:{proxy.port}/hash", content=backend.data[: 4 * MIB], trust_env=False
    )
    assert response.status_code == 413
    assert backend.requests == []


def test_chunked_body_growing_past_the_limit_is_cut_off(
    backend: Backend, start_proxy: Callable[..., RunningProxy], connect: Callable[[int], Client]
) -> None:
    """A chunked body that passes the limit while it streams gets 413 and a closed connection;
    the backend sees its request end before the body did, never a complete one."""
    proxy = start_proxy(backend.port, max_body_bytes=MIB)
    client = connect(proxy.port)
    client.post_head("/hash", "Transfer-Encoding: chunked")
    client.send(chunked(backend.data[: 3 * MIB]))
    answer = client.answer()
    assert answer.status == 413
    assert answer.headers["connection"] == "close"
    assert client.closed()
    [(path, framing, size)] = backend.wait_for_requests(1)
    assert (path, framing) == ("/hash", "incomplete")
    assert size <= MIB


def test_content_length_with_transfer_encoding_gets_400_and_close(
    backend: Backend, start_proxy: Callable[..., RunningProxy], connect: Callable[[int], Client]
) -> None:
    """A request with both framings is refused and its connection closed, so nothing after
    it (here a smuggled second request) is ever read as a request."""
    proxy = start_proxy(backend.port)
    client = connect(proxy.port)
    client.send(
        b"POST /hash HTTP/1.1\r\nHost: test\r\nContent-Length: 5\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
        b"GET /smuggled HTTP/1.1\r\nHost: test\r\n\r\n"
    )
    answer = client.answer()
    assert answer.status == 400
    assert answer.headers["connection"] == "close"
    assert client.closed()
    assert backend.requests == []


def test_refused_request_body_is_read_and_the_connection_kept(
    start_proxy: Callable[..., RunningProxy], connect: Callable[[int], Client]
) -> None:
    """Without a backend, a POST gets 503 and the connection serves the next request."""
    proxy = start_proxy(None)
    client = connect(proxy.port)
    for _ in range(2):
        client.post_head("/hash", "Content-Length: 100000")
        client.send(b"x" * 100000)
        answer = client.answer()
        assert answer.status == 503
        assert json.loads(answer.body)["error"] == "no_backend"
        assert "connection" not in answer.headers


def test_unreachable_backend_gets_502_also_for_a_streamed_body(
    start_proxy: Callable[..., RunningProxy],
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proxy = start_proxy(port)
    url = f"http://127.0.0.1:{proxy.port}/hash"
    for body in (b"", b"y" * (2 * MIB)):
        response = httpx.post(url, content=body, trust_env=False)
        assert response.status_code == 502
        assert response.json()["error"] == "bad_gateway"


# -- pooled connections, switching -------------------------------------------------------------


def test_stale_pooled_connection_is_retried_with_the_body(
    start_proxy: Callable[..., RunningProxy], connect: Callable[[int], Client]
) -> None:
    """A small request sent on a pooled connection the backend drops is sent again, body and
    all, on a new one; a large one goes out on a new connection in the first place."""
    server = DropsSecondRequest()
    try:
        proxy = start_proxy(server.port)
        client = connect(proxy.port)
        client.send(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
        assert client.answer().body == f"{sha(b'')} 0".encode()  # now pooled
        client.post_head("/", "Content-Length: 5")
        client.send(b"hello")
        assert client.answer().body == f"{sha(b'hello')} 5".encode()
        assert server.dropped == 1 and server.connections == 2

        big = os.urandom(2 * MIB)
        client.post_head("/", f"Content-Length: {len(big)}")
        client.send(big)
        assert client.answer().body == f"{sha(big)} {len(big)}".encode()
        assert server.dropped == 1 and server.connections == 3
    finally:
        server.stop()


def test_upload_in_flight_finishes_on_its_backend_after_a_switch(
    backend: Backend, start_proxy: Callable[..., RunningProxy], connect: Callable[[int], Client]
) -> None:
    """A switch while a large upload streams sends new requests to the new backend; the upload
    finishes on the old one, which counts as in flight until then and drains after."""
    other = Backend("B")
    try:
        proxy = start_proxy(backend.port)
        uploading = connect(proxy.port)
        uploading.post_head("/gate", f"Content-Length: {BIG}")
        uploading.send(backend.data[: BIG // 2])
        assert backend.half_received.wait(WAIT)

        proxy.switch(other.port)
        assert proxy.call(lambda: proxy.proxy.inflight(backend.port)) == 1
        assert httpx.get(f"http://127.0.0.1:{proxy.port}/", trust_env=False).text == "B"

        uploading.send(backend.data[BIG // 2 :])
        assert uploading.answer().body.decode() == f"{sha(backend.data)} {BIG}"
        assert proxy.run(proxy.proxy.drain(backend.port, WAIT))
        assert proxy.call(lambda: proxy.proxy.inflight(backend.port)) == 0
    finally:
        other.stop()


def test_concurrent_uploads_and_downloads_all_arrive_intact(
    backend: Backend, start_proxy: Callable[..., RunningProxy]
) -> None:
    proxy = start_proxy(backend.port)
    url = f"http://127.0.0.1:{proxy.port}"
    results: list[bool] = []

    def upload() -> None:
        response = httpx.post(url + "/hash", content=backend.data, trust_env=False)
        results.append(response.text == f"{sha(backend.data)} {BIG}")

    def download() -> None:
        response = httpx.get(url + f"/big?{BIG}", trust_env=False)
        results.append(sha(response.content) == sha(backend.data))

    threads = [threading.Thread(target=fn) for fn in (upload, upload, download, download)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT * 3)
    assert results == [True] * 4
