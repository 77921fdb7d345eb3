"""The local runtime with real processes and real HTTP: agent, supervision, proxy, logs."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from airlock.errors import PortInUseError, RuntimeFailure
from airlock.runtimes import InstanceSpec
from airlock.runtimes.local import LocalRuntime, agent_running, log_path, stop_environment

pytestmark = pytest.mark.timeout(60)

# A tiny service: `/` answers the version, `/slow` answers it after 0.2 s, `/readyz` is 200
# (or 500 in "unready" mode), POST echoes the body length. "crash" mode exits at once with 3.
SERVICE = r"""
import http.server, os, sys, time

VERSION, MODE = sys.argv[1], sys.argv[2]
print(f"booting {VERSION} token={os.environ.get('API_TOKEN', '')} "
      f"short={os.environ.get('SHORT', '')}", flush=True)
if MODE == "crash":
    print("fatal: cannot connect to the database", flush=True)
    sys.exit(3)


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    wbufsize = 65536
    disable_nagle_algorithm = True

    def _answer(self, status, body):
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path == "/readyz":
            if MODE == "unready":
                self._answer(500, b"not ready: migrations pending")
            else:
                self._answer(200, b"ready")
            return
        if self.path == "/slow":
            time.sleep(0.2)
        self._answer(200, VERSION.encode())

    def do_POST(self):
        size = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(size)
        self._answer(200, f"{VERSION}:{len(body)}".encode())

    def log_message(self, format, *args):
        pass


server = http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler)
print(f"listening on {os.environ['PORT']}", flush=True)
server.serve_forever()
"""

SECRET = "s3cr3t-Pa55word"


@pytest.fixture
def app(tmp_path: Path) -> Path:
    path = tmp_path / "service.py"
    path.write_text(SERVICE)
    return path


@pytest.fixture
def env_dir(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "env"
    yield path
    stop_environment(path)


def make_spec(
    app: Path, instance_id: str, *, mode: str = "ok", service: str = "web"
) -> InstanceSpec:
    return InstanceSpec(
        service=service,
        instance_id=instance_id,
        argv=(sys.executable, str(app), instance_id, mode),
        cwd=str(app.parent),
        env={"API_TOKEN": SECRET, "SHORT": "abc"},
        secret_keys=("API_TOKEN", "SHORT"),
    )


async def wait_ready(rt: LocalRuntime, instance_id: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        result = await rt.probe(instance_id, "/readyz")
        if result.ok:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{instance_id} not ready: {result.detail}")
        await asyncio.sleep(0.05)


def gone(pid: int) -> bool:
    """Whether ``pid`` no longer runs (an unreaped zombie counts as gone)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def agent_pid(env_dir: Path) -> int:
    return int(json.loads((env_dir / "agent.json").read_text())["pid"])


def get(port: int, path: str = "/") -> httpx.Response:
    return httpx.get(f"http://127.0.0.1:{port}{path}", trust_env=False, timeout=5.0)


def test_start_endpoint_switch_serves_through_stable_port(app: Path, env_dir: Path) -> None:
    """A started instance serves through the service's stable port once switched to."""
    rt = LocalRuntime(env_dir, "dev")

    async def deploy() -> int:
        port = (await rt.endpoint("web", None)).port
        assert (await rt.endpoint("web", None)).port == port
        status = await rt.start(make_spec(app, "v1"))
        assert status.running and not status.serving and status.port != port
        await wait_ready(rt, "v1")
        return port

    port = asyncio.run(deploy())
    before = get(port)
    assert before.status_code == 503
    assert before.json()["error"] == "no_backend"

    asyncio.run(rt.switch("web", "v1"))
    response = get(port)
    assert response.status_code == 200 and response.text == "v1"
    posted = httpx.post(f"http://127.0.0.1:{port}/", content=b"x" * 100_000, trust_env=False)
    assert posted.text == "v1:100000"
    chunked = httpx.post(
        f"http://127.0.0.1:{port}/", content=iter([b"ab", b"cde"]), trust_env=False
    )
    assert chunked.text == "v1:5"

    [status] = asyncio.run(rt.status())
    assert status.serving and status.running and status.exits == 0
    with pytest.raises(RuntimeFailure, match="serves service 'web'"):
        asyncio.run(rt.stop("v1"))
    assert agent_running(env_dir)


def test_blue_green_switch_under_load_drops_no_request(app: Path, env_dir: Path) -> None:
    """Switching from v1 to v2 and stopping v1 under continuous load fails no request."""
    rt = LocalRuntime(env_dir, "dev")

    async def first() -> int:
        port = (await rt.endpoint("web", None)).port
        await rt.start(make_spec(app, "v1"))
        await wait_ready(rt, "v1")
        await rt.switch("web", "v1")
        return port

    port = asyncio.run(first())
    url = f"http://127.0.0.1:{port}"
    done = threading.Event()
    results: dict[str, list[str]] = {"pooled-1": [], "pooled-2": [], "fresh": []}
    failures: list[str] = []

    def pooled(name: str) -> None:
        with httpx.Client(trust_env=False, timeout=5.0) as client:
            n = 0
            while not done.is_set():
                n += 1
                try:
                    if n % 10 == 0:
                        response = client.post(url + "/", content=b"payload")
                        text = response.text.split(":")[0]
                    else:
                        response = client.get(url + ("/slow" if n % 10 == 1 else "/"))
                        text = response.text
                except httpx.HTTPError as exc:
                    failures.append(f"{name}: {exc!r}")
                    continue
                if response.status_code != 200:
                    failures.append(f"{name}: {response.status_code} {response.text}")
                results[name].append(text)

    def fresh() -> None:
        # no keep-alive: every request opens a new connection to the proxy
        limits = httpx.Limits(max_keepalive_connections=0)
        with httpx.Client(trust_env=False, timeout=5.0, limits=limits) as client:
            while not done.is_set():
                try:
                    response = client.get(url + "/")
                except httpx.HTTPError as exc:
                    failures.append(f"fresh: {exc!r}")
                    continue
                if response.status_code != 200:
                    failures.append(f"fresh: {response.status_code} {response.text}")
                results["fresh"].append(response.text)

    threads = [threading.Thread(target=pooled, args=(f"pooled-{i}",)) for i in (1, 2)]
    threads.append(threading.Thread(target=fresh))
    for thread in threads:
        thread.start()
    try:

        async def release() -> None:
            await asyncio.sleep(0.3)
            await rt.start(make_spec(app, "v2"))
            await wait_ready(rt, "v2")
            await asyncio.sleep(0.2)
            await rt.switch("web", "v2")
            await rt.stop("v1", drain_seconds=5.0)
            await asyncio.sleep(0.3)

        asyncio.run(release())
    finally:
        done.set()
        for thread in threads:
            thread.join(10)

    assert failures == []
    for name, texts in results.items():
        assert texts[0] == "v1", name
        assert texts[-1] == "v2", name
        switched_at = texts.index("v2")
        assert set(texts[switched_at:]) == {"v2"}, f"{name} went back to v1"
    [status] = asyncio.run(rt.status())
    assert status.instance_id == "v2" and status.serving


def test_crashing_instance_is_restarted_with_backoff(app: Path, env_dir: Path) -> None:
    """An instance that keeps exiting is restarted with growing delays and its exits counted."""
    rt = LocalRuntime(env_dir, "dev")
    began = time.monotonic()
    first = asyncio.run(rt.start(make_spec(app, "v1", mode="crash")))

    def exits() -> int:
        [status] = asyncio.run(rt.status())
        assert status.port == first.port and status.last_exit_code in (None, 3)
        return status.exits

    assert wait_until(lambda: exits() >= 3)
    # restarts come 0.25 s and 0.5 s after the first two exits, the next one only after 1 s
    assert time.monotonic() - began >= 0.75
    seen = exits()
    time.sleep(0.4)
    assert exits() == seen
    probe = asyncio.run(rt.probe("v1", "/readyz"))
    assert not probe.ok and probe.exited
    log = log_path(env_dir, "web").read_text()
    assert "[v1] fatal: cannot connect to the database" in log
    assert "instance v1 exited" in log and "exit code 3" in log


def test_probe_reports_status_and_body_of_an_unready_instance(app: Path, env_dir: Path) -> None:
    """A readiness probe answered with 500 is not ok and quotes the status and body."""
    rt = LocalRuntime(env_dir, "dev")
    asyncio.run(rt.start(make_spec(app, "v1", mode="unready")))

    async def probe_until_answered() -> str:
        for _ in range(200):
            result = await rt.probe("v1", "/readyz")
            assert not result.ok and not result.exited
            if "refused" not in result.detail:
                return result.detail
            await asyncio.sleep(0.05)
        raise AssertionError("the service never listened")

    assert asyncio.run(probe_until_answered()) == "GET /readyz → 500: not ready: migrations pending"
    unknown = asyncio.run(rt.probe("nope", "/readyz"))
    assert not unknown.ok and unknown.exited


def test_log_gets_output_with_secret_values_masked(app: Path, env_dir: Path) -> None:
    """Instance output lands in the service log with secret values (4+ chars) masked."""
    rt = LocalRuntime(env_dir, "dev")

    async def run() -> int | None:
        status = await rt.start(make_spec(app, "v1"))
        await wait_ready(rt, "v1")
        await rt.stop("v1")
        return status.pid

    pid = asyncio.run(run())
    log = log_path(env_dir, "web").read_text()
    assert "[v1] booting v1 token=**** short=abc" in log
    assert "listening on" in log
    assert f"instance v1 started: pid {pid}" in log
    assert f"instance v1 stopped: pid {pid}" in log
    for path in env_dir.rglob("*"):
        if path.is_file():
            assert SECRET not in path.read_text(errors="replace"), path


def test_endpoint_on_a_taken_port_raises_port_in_use(env_dir: Path) -> None:
    """Asking for a port another program listens on raises PortInUseError naming it."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        rt = LocalRuntime(env_dir, "staging")
        with pytest.raises(PortInUseError) as caught:
            asyncio.run(rt.endpoint("account", port))
    message = str(caught.value)
    assert f"port {port} needed by service 'account' in environment 'staging'" in message
    assert f"pid {os.getpid()}" in message
    assert "choose another port in airlock.yaml" in message


def test_missing_command_gives_a_clear_runtime_failure(app: Path, env_dir: Path) -> None:
    """Commands that do not exist or cannot run fail with a message naming them."""
    rt = LocalRuntime(env_dir, "dev")
    cases = {
        (str(app.parent / "missing-binary"),): "does not exist",
        ("no-such-command-airlock-test",): "was not found on PATH",
        (str(app),): "is not an executable file",
    }
    for argv, expected in cases.items():
        spec = InstanceSpec("web", "v1", argv, str(app.parent), {"API_TOKEN": SECRET}, ())
        with pytest.raises(RuntimeFailure) as caught:
            asyncio.run(rt.start(spec))
        message = str(caught.value)
        assert expected in message and argv[0] in message
        assert "Traceback" not in message and SECRET not in message
    assert asyncio.run(rt.status()) == []


def test_shutdown_leaves_no_process_running(app: Path, env_dir: Path) -> None:
    """shutdown() stops every instance and the agent; stop_environment then finds nothing."""
    rt = LocalRuntime(env_dir, "dev")

    async def deploy() -> list[int]:
        a = await rt.start(make_spec(app, "a1", service="a"))
        b = await rt.start(make_spec(app, "b1", service="b"))
        await rt.endpoint("a", None)
        await wait_ready(rt, "a1")
        await rt.switch("a", "a1")
        return [pid for pid in (a.pid, b.pid) if pid is not None]

    pids = asyncio.run(deploy())
    pids.append(agent_pid(env_dir))
    assert len(pids) == 3 and not any(gone(pid) for pid in pids)
    asyncio.run(rt.shutdown())
    assert all(gone(pid) for pid in pids)
    assert not (env_dir / "agent.json").exists()
    assert not agent_running(env_dir)
    assert stop_environment(env_dir) is False


def test_stop_environment_stops_the_agent_and_its_instances(app: Path, env_dir: Path) -> None:
    """stop_environment() returns True and waits until the agent and its instances are gone."""
    rt = LocalRuntime(env_dir, "dev")
    status = asyncio.run(rt.start(make_spec(app, "v1")))
    assert status.pid is not None
    pids = [status.pid, agent_pid(env_dir)]
    assert stop_environment(env_dir) is True
    assert all(gone(pid) for pid in pids)


def test_orphans_of_a_killed_agent_are_killed_by_the_next_agent(app: Path, env_dir: Path) -> None:
    """Instances left by an agent killed with SIGKILL are killed when the next agent starts."""
    rt = LocalRuntime(env_dir, "dev")

    async def deploy() -> int | None:
        status = await rt.start(make_spec(app, "v1"))
        await wait_ready(rt, "v1")
        return status.pid

    pid = asyncio.run(deploy())
    assert pid is not None
    old_agent = agent_pid(env_dir)
    os.kill(old_agent, signal.SIGKILL)
    assert wait_until(lambda: not agent_running(env_dir))
    assert not gone(pid)  # the orphan survives its agent

    asyncio.run(LocalRuntime(env_dir, "dev").endpoint("web", None))
    assert agent_pid(env_dir) != old_agent
    assert wait_until(lambda: gone(pid), 2.0)
    assert asyncio.run(LocalRuntime(env_dir, "dev").status()) == []


def test_ports_stay_stable_across_agent_restarts(app: Path, env_dir: Path) -> None:
    """A service gets the same automatic stable port after the agent restarts."""

    async def endpoints() -> tuple[int, int]:
        rt = LocalRuntime(env_dir, "dev")
        return (await rt.endpoint("web", None)).port, (await rt.endpoint("api", None)).port

    first = asyncio.run(endpoints())
    assert first[0] != first[1]
    assert stop_environment(env_dir)
    assert asyncio.run(endpoints()) == first

    async def serve() -> str:
        rt = LocalRuntime(env_dir, "dev")
        await rt.start(make_spec(app, "v3"))
        await wait_ready(rt, "v3")
        await rt.switch("web", "v3")
        return (await asyncio.to_thread(get, first[0])).text

    assert asyncio.run(serve()) == "v3"


def test_without_start_agent_nothing_is_started(env_dir: Path) -> None:
    """A runtime told not to start an agent reports a clear failure and starts nothing."""
    rt = LocalRuntime(env_dir, "dev", start_agent=False)
    assert asyncio.run(rt.status()) == []
    with pytest.raises(RuntimeFailure, match="no agent runs for environment 'dev'"):
        asyncio.run(rt.endpoint("web", None))
    assert not agent_running(env_dir)
