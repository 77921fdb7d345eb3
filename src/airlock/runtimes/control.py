"""The client side of the agent's control protocol, for the runtimes that talk to an agent.

The agent (:mod:`airlock.runtimes.agent`) reads one JSON object per line, each carrying its
token, and answers one JSON object per line. The ``local`` runtime reaches it over TCP on
``127.0.0.1``; the ``ssh`` runtime through a direct-tcpip channel of its SSH connection to the
agent's host. Both hand this module a pair of streams; nothing here knows which.

This module runs on the operator's machine only; it is not part of what is shipped to a host.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from typing import Any, Protocol

from airlock.runtimes import FetchResult, InstanceStatus

__all__ = [
    "AgentInfo",
    "NoAnswer",
    "decode_reply",
    "encode_request",
    "exchange",
    "explain",
    "fetch_result",
    "status_from",
]

#: Largest reply line read from an agent (a fetched body is at most a few MiB of JSON).
REPLY_LIMIT = 64 * 1024 * 1024

# InstanceStatus fields, so that optional ones (a host name) are filled only where they exist.
_STATUS_FIELDS = frozenset(f.name for f in fields(InstanceStatus))


@dataclass(frozen=True)
class AgentInfo:
    """How to reach a running agent: its pid, control port (on its machine's loopback) and
    token, as its ``agent.json`` says."""

    pid: int
    port: int
    token: str

    @classmethod
    def from_json(cls, data: Any) -> AgentInfo | None:
        """The info in an ``agent.json`` document, or ``None`` when it is not one."""
        if not isinstance(data, dict):
            return None
        pid, port, token = data.get("pid"), data.get("port"), data.get("token")
        if not isinstance(pid, int) or not isinstance(port, int) or not isinstance(token, str):
            return None
        return cls(pid, port, token)


class NoAnswer(Exception):
    """The agent could not be reached or did not answer."""


class Reader(Protocol):
    async def read(self, n: int = -1) -> bytes: ...


class Writer(Protocol):
    def write(self, data: bytes) -> None: ...

    async def drain(self) -> None: ...


def encode_request(token: str, request: dict[str, Any]) -> bytes:
    """One request line: ``request`` with the agent's token."""
    return json.dumps({**request, "token": token}).encode() + b"\n"


def decode_reply(line: bytes) -> dict[str, Any]:
    """The agent's reply in ``line``; raises :class:`NoAnswer` when there is none."""
    if not line:
        raise NoAnswer("the agent closed the connection without answering")
    try:
        reply = json.loads(line)
    except ValueError:
        raise NoAnswer("the agent sent an unreadable answer") from None
    if not isinstance(reply, dict):
        raise NoAnswer("the agent sent an unreadable answer")
    return reply


async def exchange(
    reader: Reader,
    writer: Writer,
    token: str,
    request: dict[str, Any],
    *,
    limit: int = REPLY_LIMIT,
) -> dict[str, Any]:
    """Send one request on an open stream pair and read its reply line (at most ``limit``
    bytes). The caller owns the streams and any timeout."""
    writer.write(encode_request(token, request))
    await writer.drain()
    buffer = bytearray()
    while b"\n" not in buffer:
        chunk = await reader.read(256 * 1024)
        if not chunk:
            break
        buffer += chunk
        if len(buffer) > limit:
            raise NoAnswer(f"the agent's answer is larger than {limit} bytes")
    return decode_reply(bytes(buffer).split(b"\n", 1)[0])


def status_from(data: dict[str, Any], *, host: str | None = None) -> InstanceStatus:
    """An :class:`InstanceStatus` from the agent's JSON; on a fleet, ``where`` names ``host``
    and so does the ``host`` field where :class:`InstanceStatus` has one."""
    rss = data.get("rss_bytes")
    pid = data.get("pid")
    where = str(data.get("where") or "")
    if host is not None:
        where = f"{host} pid {pid}" if pid is not None else host
    extra: dict[str, Any] = {"host": host} if host is not None and "host" in _STATUS_FIELDS else {}
    return InstanceStatus(
        instance_id=str(data["instance_id"]),
        service=str(data["service"]),
        pid=pid if isinstance(pid, int) else None,
        port=int(data["port"]),
        running=bool(data["running"]),
        exits=int(data.get("exits", 0)),
        last_exit_code=data.get("last_exit_code"),
        serving=bool(data.get("serving", False)),
        rss_bytes=rss if isinstance(rss, int) else None,
        where=where,
        **extra,
    )


def explain(body: str) -> str:
    """The useful part of a failed probe's body: a JSON ``reason``/``error``, else its start."""
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if isinstance(data, dict):
        for key in ("reason", "error", "message", "detail"):
            if isinstance(data.get(key), str) and data[key].strip():
                return str(data[key]).strip()[:200]
    return " ".join(body.split())[:200]


def fetch_result(path: str, answer: dict[str, Any], *, prefix: str = "") -> FetchResult:
    """A :class:`FetchResult` from the agent's answer to ``get``; ``prefix`` starts the detail
    (e.g. the host's name)."""
    status = answer.get("status")
    if not isinstance(status, int):
        reason = answer.get("error") or "no answer"
        return FetchResult(None, f"{prefix}GET {path} → {reason}")
    body = str(answer.get("body") or "")
    detail = f"{prefix}GET {path} → {status}"
    if not 200 <= status < 300:
        why = explain(body)
        detail += f": {why}" if why else ""
    return FetchResult(status, detail, body, bool(answer.get("truncated")))
