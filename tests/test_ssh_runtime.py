"""The ssh runtime on real hosts: OpenSSH servers in namespaces of their own (tests/fleet_hosts.py).

Each test seals a small project (a stdlib HTTP service that answers its version and its host's
name) and drives :class:`~airlock.runtimes.ssh.SshRuntime` directly, without the runner: the
agent installed and started on each host over SSH, probes and fetches run on the hosts, traffic
through each host's own proxy, batches, faults that name the host. Every test has its own
``BASE`` folder and environment on the hosts and stops its agents at the end.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
import textwrap
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from airlock import api
from airlock.errors import PortInUseError, RuntimeFailure
from airlock.model import Project, SshRuntimeModel, load_project
from airlock.runtimes import InstanceSpec, InstanceStatus
from airlock.runtimes.ssh import SshRuntime, SshSetupError, agent_payload, open_runtime
from tests.fleet_hosts import Fleet, FleetHost

pytestmark = pytest.mark.timeout(120)

T = TypeVar("T")

# GET / answers "VERSION HOSTNAME"; /dep the DEP_URL it was given; /readyz is 503 while the
# file UNREADY_FLAG exists on its host. It prints its secret at start (the agent must mask it).
SERVICE = textwrap.dedent(
    """
    import http.server, os, socket

    VERSION = os.environ.get("VERSION", "v0")
    FLAG = os.environ.get("UNREADY_FLAG", "")
    print(f"svc {VERSION} starting, secret {os.environ.get('SECRET', '')}", flush=True)


    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path == "/readyz" and FLAG and os.path.exists(FLAG):
                code, body = 503, '{"reason": "warming up"}'
            elif self.path == "/dep":
                code, body = 200, os.environ.get("DEP_URL", "")
            elif self.path == "/metrics":
                code, body = 200, "requests_total 1\\n"
            else:
                code, body = 200, f"{VERSION} {socket.gethostname()}"
            data = body.encode()
            self.send_response(code)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format, *args):
            print(f"{VERSION} GET {self.path}", flush=True)


    port = int(os.environ["PORT"])
    http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
    """
)


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coroutine)


@dataclass
class FleetProject:
    """A sealed project whose environment ``env`` runs on ``hosts`` under ``base``."""

    root: Path
    project: Project
    files_dir: Path
    hosts: list[FleetHost]
    env: str
    base: str
    settings: dict[str, Any]

    def runtime(self, **overrides: Any) -> SshRuntime:
        """A new runtime object (what a new CLI command makes), settings overridden."""
        settings = SshRuntimeModel.model_validate({**self.settings, **overrides})
        return open_runtime(self.project, self.env, settings, root=self.root)

    def spec(self, service: str, version: str, **env: str) -> InstanceSpec:
        secret_keys = ("SECRET",) if "SECRET" in env else ()
        return InstanceSpec(
            service=service,
            instance_id=f"{service}-{version}-{secrets.token_hex(3)}",
            argv=("python", "app/svc.py"),
            cwd=str(self.files_dir),
            env={"VERSION": version, "UNREADY_FLAG": f"{self.base}/unready", **env},
            secret_keys=secret_keys,
        )

    def agent_pid(self, host: FleetHost) -> int:
        text = host.run(["cat", f"{self.base}/envs/{self.env}/agent.json"]).stdout
        return int(json.loads(text)["pid"])


@pytest.fixture
def fleet_project(fleet: Fleet, tmp_path: Path) -> Iterator[Callable[..., FleetProject]]:
    """Makes sealed projects on the fleet; stops their agents and removes their files after."""
    made: list[FleetProject] = []

    def make(
        n: int = 3,
        *,
        placement: dict[str, list[str]] | None = None,
        batch: int | str = 1,
        blob: int = 0,
        **runtime: Any,
    ) -> FleetProject:
        hosts = fleet.hosts(n)
        root = tmp_path / f"project{len(made)}"
        (root / "app").mkdir(parents=True)
        (root / "app" / "svc.py").write_text(SERVICE)
        sources = ["app/svc.py"]
        if blob:
            (root / "app" / "blob.bin").write_bytes(secrets.token_bytes(blob))
            sources.append("app/blob.bin")
        known_hosts = fleet.write_known_hosts(tmp_path / f"known_hosts{len(made)}", hosts)
        tag = secrets.token_hex(4)
        settings: dict[str, Any] = {
            "type": "ssh",
            "hosts": {h.name: {"address": h.address} for h in hosts},
            "known_hosts": str(known_hosts),
            "key": str(fleet.client_key),
            "base_dir": f"/srv/airlock-{tag}",
            "placement": placement or {},
            "rollout": {"batch": batch},
            "connect_timeout": "3s",
            **runtime,
        }
        document = {
            "project": "shop",
            "services": {
                "api": {"run": "python app/svc.py", "source": sources},
                "web": {"run": "python app/svc.py", "source": ["app/svc.py"]},
            },
            "environments": {f"fleet{tag}": {"runtime": settings}},
        }
        (root / "airlock.yaml").write_text(yaml.safe_dump(document, sort_keys=False))
        bundle, _ = api.build(root)
        made.append(
            FleetProject(
                root=root,
                project=load_project(root),
                files_dir=bundle.files_dir,
                hosts=hosts,
                env=f"fleet{tag}",
                base=settings["base_dir"],
                settings=settings,
            )
        )
        return made[-1]

    try:
        yield make
    finally:
        problems: list[str] = []
        for setup in made:
            for host in setup.hosts:
                host.heal()
            clean = SshRuntimeModel.model_validate(setup.settings)
            runtime = open_runtime(setup.project, setup.env, clean, root=setup.root)
            try:
                run(runtime.shutdown())
            except Exception as error:  # go on: the other projects must be cleaned too
                problems.append(str(error))
            for host in setup.hosts:
                host.run(f"umount -l {setup.base} 2>/dev/null; rm -rf {setup.base}*", check=False)
        assert not problems, problems


async def wait_ready(runtime: SshRuntime, instance_id: str, path: str = "/readyz") -> None:
    for _ in range(200):
        result = await runtime.probe(instance_id, path)
        if result.ok:
            return
        assert not result.exited, result.detail
        await asyncio.sleep(0.05)
    raise AssertionError(f"{instance_id} never became ready: {result.detail}")


async def answers(hosts: list[FleetHost], port: int, path: str = "/") -> dict[str, str]:
    """What each host's proxy for ``port`` answers."""
    async with httpx.AsyncClient(timeout=5.0, trust_env=False) as client:
        replies = await asyncio.gather(
            *(client.get(f"http://{host.address}:{port}{path}") for host in hosts)
        )
    return {host.name: reply.text for host, reply in zip(hosts, replies, strict=True)}


def by_host(statuses: list[InstanceStatus], instance_id: str) -> dict[str, InstanceStatus]:
    return {s.where.split()[0]: s for s in statuses if s.instance_id == instance_id}


# -- a release on the fleet --------------------------------------------------------------------


def test_start_probe_switch_status_and_logs_on_every_host(
    fleet_project: Callable[..., FleetProject],
) -> None:
    setup = fleet_project(3, placement={"web": ["alk-h2", "alk-h3"]})
    h1, h2, h3 = setup.hosts

    async def scenario() -> None:
        runtime = setup.runtime()
        api_endpoint = await runtime.endpoint("api", None)
        web_endpoint = await runtime.endpoint("web", None)
        # the first host of each service's placement, one port on all of its hosts
        assert api_endpoint.host == h1.address
        assert web_endpoint.host == h2.address
        assert await runtime.endpoints() == {"api": api_endpoint, "web": web_endpoint}
        api_v1 = setup.spec("api", "v1")
        web_v1 = setup.spec("web", "v1", DEP_URL=api_endpoint.url)
        started = await runtime.start(api_v1)
        await runtime.start(web_v1)
        assert not started.serving
        assert started.where.startswith("alk-h1 pid ") and "alk-h3 pid" in started.where
        await wait_ready(runtime, api_v1.instance_id)
        await wait_ready(runtime, web_v1.instance_id)
        await runtime.switch("api", api_v1.instance_id)
        await runtime.switch("web", web_v1.instance_id)

        # each host's own proxy, on its own address, reaches its own instance
        assert await answers([h1, h2, h3], api_endpoint.port) == {
            "alk-h1": "v1 alk-h1",
            "alk-h2": "v1 alk-h2",
            "alk-h3": "v1 alk-h3",
        }
        assert await answers([h2, h3], web_endpoint.port) == {
            "alk-h2": "v1 alk-h2",
            "alk-h3": "v1 alk-h3",
        }
        # a dependency that runs on the same host is reached through that host's proxy
        for host in (h2, h3):
            dep = await runtime.fetch(web_v1.instance_id, "/dep", host=host.name)
            assert dep.ok and dep.body == f"http://{host.address}:{api_endpoint.port}"
        first = await runtime.fetch(web_v1.instance_id, "/")
        assert (first.status, first.body) == (200, "v1 alk-h2")
        scraped = await runtime.fetch(api_v1.instance_id, "/metrics", host="alk-h3")
        assert scraped.ok and scraped.body == "requests_total 1\n"
        missing = await runtime.fetch("api-v9-000000", "/metrics", host="alk-h3")
        assert missing.status is None and "alk-h3" in missing.detail

        statuses = await runtime.status()
        api_hosts = by_host(statuses, api_v1.instance_id)
        assert set(api_hosts) == {"alk-h1", "alk-h2", "alk-h3"}
        assert set(by_host(statuses, web_v1.instance_id)) == {"alk-h2", "alk-h3"}
        for name, status in api_hosts.items():
            assert status.where == f"{name} pid {status.pid}"
            assert status.running and status.serving and status.exits == 0
            assert status.rss_bytes is not None and status.rss_bytes > 1_000_000

        lines = await runtime.logs("api", 50)
        for host in ("alk-h1", "alk-h2", "alk-h3"):
            assert f"{host}: [{api_v1.instance_id}] v1 GET /" in lines
        assert all(line.split(": ", 1)[0] in {"alk-h1", "alk-h2", "alk-h3"} for line in lines)

        files = await runtime.log_files()
        assert set(files) == {"api", "web"}
        merged = files["api"].read_text().splitlines()
        assert sum("svc v1 starting" in line for line in merged) == 3  # one per host
        assert all(line.startswith(("[", "---")) for line in merged)
        copies = setup.root / ".airlock" / "envs" / setup.env / "hosts"
        assert sorted(p.name for p in copies.iterdir()) == ["alk-h1", "alk-h2", "alk-h3"]

        assert await runtime.shutdown() is True
        assert await setup.runtime().status() == []
        assert await setup.runtime().shutdown() is False

    run(scenario())


def test_batches_switch_each_host_only_once_ready_there_and_a_failed_batch_goes_back(
    fleet_project: Callable[..., FleetProject],
) -> None:
    setup = fleet_project(3, batch=2)
    h1, h2, h3 = setup.hosts

    async def scenario() -> None:
        runtime = setup.runtime()
        port = (await runtime.endpoint("api", None)).port
        v1, v2 = setup.spec("api", "v1"), setup.spec("api", "v2")
        await runtime.start(v1)
        await wait_ready(runtime, v1.instance_id)
        await runtime.switch("api", v1.instance_id)
        await runtime.start(v2)
        await wait_ready(runtime, v2.instance_id)

        # alk-h3's new instance is not ready: the first batch (h1, h2) switches, h3 refuses,
        # and h1 and h2 go back, so no host is left on another version than the others
        h3.run(f"touch {setup.base}/unready")
        probe = await runtime.probe(v2.instance_id, "/readyz")
        assert not probe.ok and not probe.exited
        assert probe.detail.startswith("alk-h3: GET /readyz → 503: warming up")
        with pytest.raises(RuntimeFailure) as failed:
            await runtime.switch("api", v2.instance_id)
        message = str(failed.value)
        assert "host alk-h3 (10.213.0.13)" in message and "is not ready" in message
        assert "alk-h1, alk-h2 went back to the previous instance" in message
        assert await answers([h1, h2, h3], port) == {
            "alk-h1": "v1 alk-h1",
            "alk-h2": "v1 alk-h2",
            "alk-h3": "v1 alk-h3",
        }

        h3.run(f"rm {setup.base}/unready")
        await wait_ready(runtime, v2.instance_id)
        await runtime.switch("api", v2.instance_id)
        assert set((await answers([h1, h2, h3], port)).values()) == {
            "v2 alk-h1",
            "v2 alk-h2",
            "v2 alk-h3",
        }

        # the runner's RevertTraffic: back to v1 everywhere, then forward again
        await runtime.switch("api", v1.instance_id)
        assert all(a.startswith("v1 ") for a in (await answers([h1, h2, h3], port)).values())
        await runtime.switch("api", v2.instance_id)

        # a serving instance is not stopped without force, on any host
        with pytest.raises(RuntimeFailure, match="serves traffic on alk-h1, alk-h2, alk-h3"):
            await runtime.stop(v2.instance_id)
        # with force, each host hands its traffic back to the instance that served before
        await runtime.stop(v2.instance_id, force=True)
        assert all(a.startswith("v1 ") for a in (await answers([h1, h2, h3], port)).values())
        statuses = await runtime.status()
        assert not by_host(statuses, v2.instance_id)
        assert all(s.serving for s in by_host(statuses, v1.instance_id).values())

    run(scenario())


def test_a_release_already_on_a_host_copies_nothing_and_the_agent_outlives_the_connection(
    fleet_project: Callable[..., FleetProject],
) -> None:
    setup = fleet_project(2)
    h1, h2 = setup.hosts

    async def first_command() -> tuple[int, str]:
        runtime = setup.runtime()
        port = (await runtime.endpoint("api", None)).port
        v1 = setup.spec("api", "v1")
        await runtime.start(v1)
        # two sealed files (airlock.yaml, app/svc.py) to each host
        assert runtime.objects_copied == {"alk-h1": 2, "alk-h2": 2}
        await runtime.start(setup.spec("api", "v1b"))  # same release again
        assert runtime.objects_copied == {"alk-h1": 2, "alk-h2": 2}
        await wait_ready(runtime, v1.instance_id)
        await runtime.switch("api", v1.instance_id)
        return port, v1.instance_id

    port, v1 = run(first_command())
    agents = {host.name: setup.agent_pid(host) for host in setup.hosts}

    # the SSH server goes away (every session with it): the agent and its proxy stay
    h1.kill_sshd()
    assert run(answers([h1], port)) == {"alk-h1": "v1 alk-h1"}
    with pytest.raises(RuntimeFailure) as failed:
        run(setup.runtime().status())
    assert "host alk-h1 (10.213.0.11)" in str(failed.value)
    assert "alk-h2" not in str(failed.value)
    h1.start_sshd()

    async def next_command() -> None:
        runtime = setup.runtime()  # re-attaches to the running agents
        statuses = await runtime.status()
        assert set(by_host(statuses, v1)) == {"alk-h1", "alk-h2"}
        assert all(s.serving for s in by_host(statuses, v1).values())
        v2 = setup.spec("api", "v2")
        await runtime.start(v2)
        assert runtime.objects_copied == {"alk-h1": 0, "alk-h2": 0}
        await wait_ready(runtime, v2.instance_id)
        await runtime.switch("api", v2.instance_id)
        assert await answers([h1, h2], port) == {"alk-h1": "v2 alk-h1", "alk-h2": "v2 alk-h2"}

    run(next_command())
    assert {host.name: setup.agent_pid(host) for host in setup.hosts} == agents
    # one runtime object across event loops, as the library's status command uses it
    runtime = setup.runtime()
    assert len(run(runtime.status())) == 6
    assert set(run(runtime.endpoints())) == {"api"}


def test_secret_values_reach_the_instance_in_memory_and_never_a_hosts_disk(
    fleet_project: Callable[..., FleetProject],
) -> None:
    setup = fleet_project(2)
    secret = f"planted-{secrets.token_hex(12)}"

    async def scenario() -> list[InstanceStatus]:
        runtime = setup.runtime()
        await runtime.endpoint("api", None)
        spec = setup.spec("api", "v1", SECRET=secret)
        await runtime.start(spec)
        await wait_ready(runtime, spec.instance_id)
        lines = await runtime.logs("api", 20)
        assert any(line.endswith("svc v1 starting, secret ****") for line in lines)
        assert not any(secret in line for line in lines)
        merged = (await runtime.log_files())["api"].read_text()
        assert "secret ****" in merged and secret not in merged
        return await runtime.status()

    statuses = run(scenario())
    # an instance got the value in its environment (memory) ...
    for status in statuses:
        host = next(h for h in setup.hosts if h.name == status.where.split()[0])
        assert host.find_text(secret, [f"/proc/{status.pid}/environ"])
    # ... and no file of any host holds it, nor any command line there
    show_cmdlines = (
        "import os, sys\n"
        "needle = sys.stdin.read().strip().encode()\n"
        "for pid in filter(str.isdigit, os.listdir('/proc')):\n"
        "    try:\n"
        "        if needle in open(f'/proc/{pid}/cmdline', 'rb').read(): print(pid)\n"
        "    except OSError: pass\n"
    )
    for host in setup.hosts:
        assert host.find_text(secret) == [], host.name
        assert host.run(["python3", "-c", show_cmdlines], input=secret).stdout == ""


def test_hosts_verify_the_sealed_files_before_anything_starts(
    fleet_project: Callable[..., FleetProject],
) -> None:
    setup = fleet_project(2)
    sealed = setup.files_dir / "app" / "svc.py"
    sealed.chmod(0o644)
    sealed.write_text(SERVICE.replace("VERSION =", "VERSION = 'tampered' or"))

    async def scenario() -> None:
        runtime = setup.runtime()
        await runtime.endpoint("api", None)
        spec = setup.spec("api", "v1")
        with pytest.raises(RuntimeFailure) as failed:
            await runtime.start(spec)
        message = str(failed.value)
        assert "on 2 hosts" in message
        for host in setup.hosts:
            assert (
                f"host {host.name} ({host.address}): release {setup.files_dir.parent.name} was "
                "not started there: the host found files that do not match their sealed "
                "sha256: app/svc.py"
            ) in message
        assert not by_host(await runtime.status(), spec.instance_id)

    run(scenario())
    for host in setup.hosts:  # nothing of the release was linked, the bad copy was removed
        assert host.run(["ls", f"{setup.base}/releases"], check=False).stdout.strip() == ""


# -- faults name the host ----------------------------------------------------------------------


def test_an_unreachable_host_is_named(fleet_project: Callable[..., FleetProject]) -> None:
    setup = fleet_project(2, connect_timeout="1s")
    setup.hosts[1].cut_link()
    runtime = setup.runtime()

    async def scenario() -> None:
        with pytest.raises(RuntimeFailure) as failed:
            await runtime.endpoint("api", None)
        assert failed.value.exit_code == 1
        message = failed.value.message
        assert message.endswith(
            "host alk-h2 (10.213.0.12): cannot connect to 10.213.0.12:22: no answer within 1 s"
        )
        assert "alk-h1" not in message
        # right after, the lost host is not waited for again (a rollback stays fast)
        with pytest.raises(RuntimeFailure, match="not waited for again yet"):
            await runtime.status()

    run(scenario())


def test_login_and_host_key_faults_are_setup_errors_naming_the_host(
    fleet_project: Callable[..., FleetProject], fleet: Fleet, tmp_path: Path
) -> None:
    setup = fleet_project(2)
    h1, h2 = setup.hosts

    wrong = tmp_path / "wrong_key"
    wrong.write_bytes(
        Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
    )
    wrong.chmod(0o600)
    with pytest.raises(SshSetupError) as failed:
        run(setup.runtime(key=str(wrong)).status())
    assert failed.value.exit_code == 2
    assert "on 2 hosts" in str(failed.value)
    assert f"host alk-h2 (10.213.0.12): root@10.213.0.12:22 refused the login with {wrong}" in (
        str(failed.value)
    )

    other = (
        Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    )
    changed = tmp_path / "changed_known_hosts"
    changed.write_text(f"{h1.known_hosts_line}\n{h2.address} {other.decode()}\n")
    with pytest.raises(SshSetupError) as failed:
        run(setup.runtime(known_hosts=str(changed)).status())
    message = str(failed.value)
    assert "host alk-h2 (10.213.0.12): the host key of 10.213.0.12:22 CHANGED" in message
    assert "alk-h1" not in message

    unknown = tmp_path / "partial_known_hosts"
    unknown.write_text(f"{h1.known_hosts_line}\n")
    with pytest.raises(SshSetupError, match=r"alk-h2 \(10.213.0.12\): the host key .* is unknown"):
        run(setup.runtime(known_hosts=str(unknown)).status())

    # pin: trusted and recorded the first time, a changed key refused afterwards
    run(setup.runtime(host_keys="pin").status())
    pinned = setup.root / ".airlock" / "known_hosts"
    assert sorted(pinned.read_text().splitlines()) == [h1.known_hosts_line, h2.known_hosts_line]
    run(setup.runtime(host_keys="pin").status())
    pinned.write_text(f"{h1.known_hosts_line}\n{h2.address} {other.decode()}\n")
    with pytest.raises(SshSetupError, match=r"alk-h2 \(10.213.0.12\): the host key .* CHANGED"):
        run(setup.runtime(host_keys="pin").status())


def test_a_host_keeps_the_releases_in_use_and_the_newest_and_removes_the_rest(
    fleet_project: Callable[..., FleetProject],
) -> None:
    setup = fleet_project(1, keep_releases=2)
    [host] = setup.hosts
    sealed: list[Path] = []
    for n in range(1, 6):  # five releases: app/svc.py differs, airlock.yaml is shared
        with (setup.root / "app" / "svc.py").open("a") as fh:
            fh.write(f"# release {n}\n")
        sealed.append(api.build(setup.root)[0].files_dir)

    def on_host() -> tuple[set[str], set[str]]:
        listed = [
            host.run(["ls", "-A", f"{setup.base}/{d}"]).stdout for d in ("releases", "objects")
        ]
        return set(listed[0].split()), set(listed[1].split())

    def releases(*indexes: int) -> set[str]:
        return {json.loads((sealed[i].parent / "manifest.json").read_text())["id"] for i in indexes}

    def objects_of(*indexes: int) -> set[str]:
        return {
            hashlib.sha256(path.read_bytes()).hexdigest()
            for i in indexes
            for path in sealed[i].rglob("*")
            if path.is_file()
        }

    async def scenario() -> None:
        runtime = setup.runtime()
        await runtime.endpoint("api", None)
        specs = [
            replace(setup.spec("api", f"v{n + 1}"), cwd=str(folder))
            for n, folder in enumerate(sealed)
        ]
        await runtime.start(specs[0])  # release 1 keeps running throughout
        for spec in specs[1:4]:
            await runtime.start(spec)
            await runtime.stop(spec.instance_id)
        # release 2 is neither running nor among the two most recently used: removed, and
        # its own svc.py with it; airlock.yaml stays, the other releases link it
        assert on_host() == (releases(0, 2, 3), objects_of(0, 2, 3))
        await runtime.stop(specs[0].instance_id)
        await runtime.start(specs[4])
        assert on_host() == (releases(3, 4), objects_of(3, 4))
        await runtime.stop(specs[4].instance_id)

    run(scenario())


def test_python_missing_or_too_old_is_named(fleet_project: Callable[..., FleetProject]) -> None:
    setup = fleet_project(2)
    fake = f"{setup.base}-python/python3"
    for host in setup.hosts:
        body = 'echo "Python 3.9.2"' if host.name == "alk-h2" else 'exec /usr/bin/python3 "$@"'
        host.run(f"mkdir -p {setup.base}-python && printf '#!/bin/sh\\n{body}\\n' > {fake}")
        host.run(f"chmod +x {fake}")

    with pytest.raises(SshSetupError) as failed:
        run(setup.runtime(python=fake).endpoint("api", None))
    message = str(failed.value)
    assert f"host alk-h2 (10.213.0.12): {fake} on the host is Python 3.9" in message
    assert "alk-h1" not in message

    with pytest.raises(SshSetupError) as failed:
        run(setup.runtime(python="/opt/nowhere/python3").status())
    assert "on 2 hosts" in str(failed.value)
    assert "host alk-h1 (10.213.0.11): /opt/nowhere/python3 was not found" in str(failed.value)


def test_a_full_disk_on_one_host_stops_the_start_on_every_host(
    fleet_project: Callable[..., FleetProject],
) -> None:
    room = 3 * agent_payload().size  # room for the agent, not for the release
    setup = fleet_project(2, blob=2 * agent_payload().size)
    h2 = setup.hosts[1]
    h2.run(f"mkdir -p {setup.base} && mount -t tmpfs -o size={room} alk-full {setup.base}")

    async def scenario() -> None:
        runtime = setup.runtime()
        await runtime.endpoint("api", None)
        spec = setup.spec("api", "v1")
        with pytest.raises(RuntimeFailure) as failed:
            await runtime.start(spec)
        message = str(failed.value)
        assert "host alk-h2 (10.213.0.12): not enough disk space for the sealed files" in message
        assert "alk-h1 (" not in message
        # it started nowhere: where it did, it was stopped again
        assert not by_host(await runtime.status(), spec.instance_id)

    run(scenario())


def test_a_disk_that_fills_up_while_copying_is_named(
    fleet_project: Callable[..., FleetProject],
) -> None:
    setup = fleet_project(2)
    h2 = setup.hosts[1]
    h2.run(f"mkdir -p {setup.base} && mount -t tmpfs -o size=64m alk-full {setup.base}")

    async def scenario() -> None:
        runtime = setup.runtime()
        await runtime.endpoint("api", None)  # the agent is installed and runs
        # plenty of bytes left, but one inode: the copy fails half way (a real ENOSPC)
        total, free = h2.run(["stat", "-f", "-c", "%c %d", setup.base]).stdout.split()
        h2.run(f"mount -o remount,nr_inodes={int(total) - int(free) + 1} {setup.base}")
        spec = setup.spec("api", "v1")
        with pytest.raises(RuntimeFailure) as failed:
            await runtime.start(spec)
        message = str(failed.value)
        assert "host alk-h2 (10.213.0.12): the disk filled up while copying the sealed" in message
        assert "no free inodes" in message and "alk-h1 (" not in message
        assert not by_host(await runtime.status(), spec.instance_id)
        leftovers = h2.run(["find", f"{setup.base}/objects", "-name", ".incoming-*"]).stdout
        assert leftovers == ""

    run(scenario())


def test_an_agent_killed_on_one_host_is_named_and_replaced_by_the_next_start(
    fleet_project: Callable[..., FleetProject],
) -> None:
    setup = fleet_project(2)
    h2 = setup.hosts[1]
    v1 = setup.spec("api", "v1")

    async def deploy() -> None:
        runtime = setup.runtime()
        await runtime.endpoint("api", None)
        await runtime.start(v1)
        await wait_ready(runtime, v1.instance_id)
        await runtime.switch("api", v1.instance_id)

    run(deploy())
    killed = setup.agent_pid(h2)
    h2.run(["kill", "-9", str(killed)])

    async def after() -> None:
        runtime = setup.runtime()
        probe = await runtime.probe(v1.instance_id, "/healthz")
        assert probe.exited and not probe.ok
        assert probe.detail.startswith("alk-h2: ") and "is not running" in probe.detail
        with pytest.raises(RuntimeFailure) as failed:
            await runtime.status()
        assert "host alk-h2 (10.213.0.12)" in str(failed.value)
        assert "alk-h1" not in str(failed.value)
        # the next deploy starts a new agent there, which stops what the old one left
        await runtime.endpoint("api", None)
        statuses = await runtime.status()
        assert set(by_host(statuses, v1.instance_id)) == {"alk-h1"}

    run(after())
    assert setup.agent_pid(h2) != killed


def test_a_host_lost_mid_rollout_leaves_every_host_on_one_version_and_rollback_goes_on(
    fleet_project: Callable[..., FleetProject],
) -> None:
    setup = fleet_project(3, batch=1)
    h1, h2, h3 = setup.hosts

    async def scenario() -> None:
        runtime = setup.runtime()
        port = (await runtime.endpoint("api", None)).port
        v1, v2 = setup.spec("api", "v1"), setup.spec("api", "v2")
        await runtime.start(v1)
        await wait_ready(runtime, v1.instance_id)
        await runtime.switch("api", v1.instance_id)
        await runtime.start(v2)
        await wait_ready(runtime, v2.instance_id)

        # once the first host switched, alk-h2's SSH server (and our session) goes away
        request = runtime._request

        async def dropping(host: Any, message: dict[str, Any], *args: Any, **kw: Any) -> Any:
            result = await request(host, message, *args, **kw)
            if message.get("op") == "switch" and message.get("instance_id") == v2.instance_id:
                await asyncio.to_thread(h2.kill_sshd)
            return result

        runtime._request = dropping  # type: ignore[method-assign]
        with pytest.raises(RuntimeFailure) as failed:
            await runtime.switch("api", v2.instance_id)
        runtime._request = request  # type: ignore[method-assign]
        message = str(failed.value)
        assert "host alk-h2 (10.213.0.12)" in message
        assert "alk-h1 went back to the previous instance" in message
        assert await answers([h1, h2, h3], port) == {
            "alk-h1": "v1 alk-h1",
            "alk-h2": "v1 alk-h2",
            "alk-h3": "v1 alk-h3",
        }
        # while alk-h2 is away, no switch forward starts at all
        with pytest.raises(RuntimeFailure, match=r"alk-h2 .*; no host was switched"):
            await runtime.switch("api", v2.instance_id)

        # back on v2 everywhere; then alk-h2 goes away again and the release is rolled back:
        # the hosts that answer switch back and stop v2, the error names the one that did not
        h2.start_sshd()
        await runtime.switch("api", v2.instance_id)
        h2.kill_sshd()
        with pytest.raises(RuntimeFailure) as failed:
            await runtime.switch("api", v1.instance_id)
        assert "host alk-h2 (10.213.0.12)" in str(failed.value)
        assert failed.value.message.endswith("; alk-h1, alk-h3 now serve it")
        with pytest.raises(RuntimeFailure) as failed:
            await runtime.stop(v2.instance_id, force=True)
        assert "host alk-h2 (10.213.0.12)" in str(failed.value)
        assert failed.value.message.endswith("; stopped on alk-h1, alk-h3")
        assert await answers([h1, h2, h3], port) == {
            "alk-h1": "v1 alk-h1",
            "alk-h2": "v2 alk-h2",  # unreachable over SSH, its agent still serves
            "alk-h3": "v1 alk-h3",
        }
        h2.start_sshd()
        await runtime.switch("api", v1.instance_id)
        await runtime.stop(v2.instance_id, force=True)
        assert set(by_host(await runtime.status(), v1.instance_id)) == {
            "alk-h1",
            "alk-h2",
            "alk-h3",
        }
        assert not by_host(await runtime.status(), v2.instance_id)

    run(scenario())


def test_a_port_taken_on_another_host_is_named(
    fleet_project: Callable[..., FleetProject],
) -> None:
    setup = fleet_project(2)
    h2 = setup.hosts[1]
    port = 20000 + secrets.randbelow(20000)
    listen = (
        "import socket, time; s = socket.socket(); "
        f"s.bind(('0.0.0.0', {port})); s.listen(); time.sleep(120)"
    )
    h2.run(f'python3 -c "{listen}" >/dev/null 2>&1 & echo $! > {setup.base}-holder.pid')
    try:
        with pytest.raises(PortInUseError) as failed:
            run(setup.runtime().endpoint("api", port))
        message = str(failed.value)
        assert f"host alk-h2 (10.213.0.12): port {port} is already in use by pid" in message
        assert "alk-h1 (" not in message
        assert failed.value.exit_code == 2
    finally:
        h2.run(f"kill $(cat {setup.base}-holder.pid)", check=False)
