"""Benchmark the memory the stable-port proxy needs for large uploads.

Runs the proxy the way a release does: a real per-environment agent
(:class:`~airlock.runtimes.local.LocalRuntime` in a temporary environment folder) binds the
service's stable port and switches it to a real backend instance, a small HTTP server that
hashes each upload as it reads it (it never keeps a body) and answers the SHA-256 and the size.
All traffic stays on 127.0.0.1.

It measures the agent process's resident memory (RSS, psutil, sampled every ``--interval``
seconds by a thread):

``idle_mib``
    after a few small requests, before any upload.
``peak_1_mib`` / ``peak_4_mib``
    the highest sample while one upload / ``--concurrency`` concurrent uploads of ``--size-mb``
    MB each (``Content-Length`` framing, sent in 1 MiB writes) go through the proxy.
``over_idle_1_mib`` / ``over_idle_4_mib``
    those peaks minus ``idle_mib``.
``after_mib``
    one second after the last upload was answered.
``target_over_idle_mib`` / ``ok``
    the target for both ``over_idle`` figures, and whether both meet it and every upload
    arrived intact (the backend's hash equals the sent body's).

Prints exactly one JSON object. Usage::

    python benchmarks/proxy_memory.py
    python benchmarks/proxy_memory.py --size-mb 50 --concurrency 4
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import http.client
import json
import os
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil

try:
    import airlock.runtimes.local  # noqa: F401
except ImportError:  # running from a checkout without installing it
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from airlock.runtimes import InstanceSpec
from airlock.runtimes.local import LocalRuntime, stop_environment

MIB = 1024 * 1024
TARGET_OVER_IDLE_MIB = 64
UPLOAD_TIMEOUT = 120.0

# The backend: hashes what it reads in 64 KiB pieces (Content-Length or chunked framing).
BACKEND = r"""
import hashlib, http.server, os


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _answer(self, status, body):
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _chunks(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return
                while size:
                    piece = self.rfile.read(min(size, 65536))
                    size -= len(piece)
                    yield piece
                self.rfile.readline()
        else:
            left = int(self.headers.get("Content-Length", "0"))
            while left:
                piece = self.rfile.read(min(left, 65536))
                if not piece:
                    return
                left -= len(piece)
                yield piece

    def do_GET(self):
        self._answer(200, b"ready")

    def do_POST(self):
        digest, size = hashlib.sha256(), 0
        for piece in self._chunks():
            digest.update(piece)
            size += len(piece)
        self._answer(200, f"{digest.hexdigest()} {size}".encode())

    def log_message(self, format, *args):
        pass


server = http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler)
server.daemon_threads = True
server.serve_forever()
"""


class Sampler:
    """Samples the RSS of one process every ``interval`` seconds on a thread."""

    def __init__(self, pid: int, interval: float) -> None:
        self.process = psutil.Process(pid)
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def rss(self) -> int:
        return int(self.process.memory_info().rss)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss())
            self._stop.wait(self.interval)

    def __enter__(self) -> Sampler:
        self.peak = self.rss()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5.0)
        self.peak = max(self.peak, self.rss())


def body_blocks(block: bytes, count: int) -> Iterator[bytes]:
    for _ in range(count):
        yield block


def upload(port: int, block: bytes, count: int, expected: str, errors: list[str]) -> None:
    """POST ``count`` copies of ``block`` with Content-Length; check the backend's hash."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=UPLOAD_TIMEOUT)
    try:
        conn.request(
            "POST",
            "/upload",
            body=body_blocks(block, count),
            headers={"Content-Length": str(len(block) * count)},
        )
        response = conn.getresponse()
        text = response.read().decode(errors="replace")
        if response.status != 200 or text != f"{expected} {len(block) * count}":
            errors.append(f"{response.status} {text[:200]}")
    except OSError as exc:
        errors.append(repr(exc))
    finally:
        conn.close()


def uploads(port: int, concurrency: int, block: bytes, count: int, expected: str) -> list[str]:
    errors: list[str] = []
    threads = [
        threading.Thread(target=upload, args=(port, block, count, expected, errors))
        for _ in range(concurrency)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(UPLOAD_TIMEOUT + 10)
    return errors


def idle_rss(pid: int, seconds: float = 0.5) -> int:
    process = psutil.Process(pid)
    samples = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        samples.append(int(process.memory_info().rss))
        time.sleep(0.05)
    return sorted(samples)[len(samples) // 2]


async def deploy(rt: LocalRuntime, folder: Path) -> int:
    """Bind the stable port, start the backend, wait until it answers, switch to it."""
    script = folder / "backend.py"
    script.write_text(BACKEND)
    port = (await rt.endpoint("sink", None)).port
    spec = InstanceSpec(
        service="sink", instance_id="sink-1", argv=(sys.executable, str(script)), cwd=str(folder)
    )
    await rt.start(spec)
    deadline = time.monotonic() + 20.0
    while not (await rt.probe("sink-1", "/readyz")).ok:
        if time.monotonic() > deadline:
            raise RuntimeError("the backend did not become ready")
        await asyncio.sleep(0.05)
    await rt.switch("sink", "sink-1")
    return port


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=50, help="size of each upload (MB)")
    parser.add_argument("--concurrency", type=int, default=4, help="uploads in the second round")
    parser.add_argument("--interval", type=float, default=0.02, help="RSS sampling interval (s)")
    args = parser.parse_args(argv)

    block = os.urandom(MIB)
    count = max(1, args.size_mb * 1_000_000 // MIB)
    digest = hashlib.sha256()
    for piece in body_blocks(block, count):
        digest.update(piece)
    expected = digest.hexdigest()

    with tempfile.TemporaryDirectory(prefix="airlock-proxy-bench-") as tmp:
        folder = Path(tmp)
        env_dir = folder / "env"
        rt = LocalRuntime(env_dir, "bench")
        try:
            port = asyncio.run(deploy(rt, folder))
            pid = int(json.loads((env_dir / "agent.json").read_text())["pid"])
            for _ in range(5):  # warm up: the pooled backend connection, the client side
                uploads(port, 1, b"x" * 1024, 1, hashlib.sha256(b"x" * 1024).hexdigest())
            idle = idle_rss(pid)
            errors: list[str] = []
            with Sampler(pid, args.interval) as one:
                errors += uploads(port, 1, block, count, expected)
            with Sampler(pid, args.interval) as many:
                errors += uploads(port, args.concurrency, block, count, expected)
            time.sleep(1.0)
            after = idle_rss(pid)
        finally:
            stop_environment(env_dir)

    over_1 = (one.peak - idle) / MIB
    over_n = (many.peak - idle) / MIB
    result = {
        "size_mb": args.size_mb,
        "concurrency": args.concurrency,
        "idle_mib": round(idle / MIB, 1),
        "peak_1_mib": round(one.peak / MIB, 1),
        "peak_4_mib": round(many.peak / MIB, 1),
        "over_idle_1_mib": round(over_1, 1),
        "over_idle_4_mib": round(over_n, 1),
        "after_mib": round(after / MIB, 1),
        "target_over_idle_mib": TARGET_OVER_IDLE_MIB,
        "errors": errors,
        "ok": not errors and max(over_1, over_n) <= TARGET_OVER_IDLE_MIB,
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
