"""Time, injected: the runner reads and waits through a :class:`Clock`, never ``time`` itself.

:data:`SYSTEM` is the real monotonic clock; :class:`VirtualClock` jumps instead of waiting, so a
release with a bake of minutes runs on a simulated runtime in milliseconds, the same way every
time.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol

__all__ = ["SYSTEM", "Clock", "SystemClock", "VirtualClock"]


class Clock(Protocol):
    def now(self) -> float:
        """Seconds on a monotonic scale (only differences mean anything)."""

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` (or let that much virtual time pass)."""


class SystemClock:
    """The machine's monotonic clock."""

    def now(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class VirtualClock:
    """A clock that only moves when someone sleeps: each sleep advances it at once."""

    def __init__(self, start: float = 0.0) -> None:
        self.time = start

    def now(self) -> float:
        return self.time

    async def sleep(self, seconds: float) -> None:
        self.time += max(seconds, 0.0)
        await asyncio.sleep(0)  # let other tasks run, as a real sleep would

    def advance(self, seconds: float) -> None:
        self.time += max(seconds, 0.0)


SYSTEM: Clock = SystemClock()
