"""A small traffic generator: steady requests against running environments, failures counted.

It runs in its own thread with its own event loop, so a deploy in the foreground cannot slow it
down, and counts every request per *window* (the demo opens one window per step). A request
fails when it gets no response or a 5xx; business answers (402 insufficient funds) are served.
"""

from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx

Request = Callable[[random.Random], tuple[str, str, dict[str, object] | None]]


@dataclass
class Window:
    """Counts for one stretch of time."""

    name: str
    served: int = 0
    failed: int = 0
    samples: list[str] = field(default_factory=list)


def phoenix_requests(urls: dict[str, str]) -> list[Request]:
    """The Phoenix example's public calls, against one environment's stable URLs."""

    def payment(rng: random.Random) -> tuple[str, str, dict[str, object] | None]:
        body: dict[str, object] = {"account": rng.randint(1, 100), "amount": rng.randint(1, 500)}
        return "POST", f"{urls['payment']}/payments", body

    def transfer(rng: random.Random) -> tuple[str, str, dict[str, object] | None]:
        source, target = rng.sample(range(1, 101), 2)
        body: dict[str, object] = {"from": source, "to": target, "amount": rng.randint(1, 500)}
        return "POST", f"{urls['transaction']}/transactions", body

    def notify(rng: random.Random) -> tuple[str, str, dict[str, object] | None]:
        body = {"account": rng.randint(1, 100), "message": "statement ready"}
        return "POST", f"{urls['notification']}/notifications", body

    def balance(rng: random.Random) -> tuple[str, str, dict[str, object] | None]:
        return "GET", f"{urls['account']}/accounts/{rng.randint(1, 100)}", None

    return [payment, transfer, notify, balance]


class TrafficGenerator:
    """Sends requests with ``workers`` concurrent clients until stopped."""

    def __init__(self, *, workers: int = 4, pause: float = 0.02, seed: int = 7) -> None:
        self.workers = workers
        self.pause = pause
        self._rng = random.Random(seed)
        self._targets: list[Request] = []
        self._lock = threading.Lock()
        self._windows: list[Window] = [Window("(warm-up)")]
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, requests: list[Request]) -> None:
        with self._lock:
            self._targets.extend(requests)

    def window(self, name: str) -> Window:
        """Start counting into a new window; returns it (it fills while traffic runs)."""
        with self._lock:
            self._windows.append(Window(name))
            return self._windows[-1]

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="traffic", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def __enter__(self) -> TrafficGenerator:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _record(self, ok: bool, detail: str) -> None:
        with self._lock:
            window = self._windows[-1]
            if ok:
                window.served += 1
            else:
                window.failed += 1
                if len(window.samples) < 5:
                    window.samples.append(detail)

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        limits = httpx.Limits(max_keepalive_connections=self.workers * 2)
        async with httpx.AsyncClient(timeout=5.0, limits=limits) as client:
            await asyncio.gather(*(self._worker(client, i) for i in range(self.workers)))

    async def _worker(self, client: httpx.AsyncClient, index: int) -> None:
        rng = random.Random(self._rng.random() + index)
        while not self._stop.is_set():
            with self._lock:
                targets = list(self._targets)
            if not targets:
                await asyncio.sleep(0.05)
                continue
            method, url, body = rng.choice(targets)(rng)
            try:
                response = await client.request(method, url, json=body)
                ok = response.status_code < 500
                self._record(ok, f"{method} {url} → {response.status_code}")
            except httpx.HTTPError as exc:
                self._record(False, f"{method} {url} → {type(exc).__name__}: {exc}")
            await asyncio.sleep(self.pause)
