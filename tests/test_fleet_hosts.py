"""The fleet of SSH test hosts, used the way the SSH runtime will: through SSH, with asyncssh."""

from __future__ import annotations

import asyncio
import os
import secrets
from pathlib import Path

import asyncssh
import pytest

from airlock.testbed import Fleet, FleetHost
from tests.fleet_hosts import HIDDEN


async def connect(
    host: FleetHost, known_hosts: str, *, connect_timeout: float = 10
) -> asyncssh.SSHClientConnection:
    """A strict connection: the client key only, host keys from ``known_hosts`` only."""
    return await asyncssh.connect(
        host.address,
        host.port,
        username=host.user,
        client_keys=[str(host.client_key)],
        known_hosts=asyncssh.import_known_hosts(known_hosts),
        agent_path=None,
        config=[],
        connect_timeout=connect_timeout,
    )


async def ssh_run(
    host: FleetHost, known_hosts: str, command: str, *, connect_timeout: float = 10
) -> str:
    """Run ``command`` on ``host`` over SSH; its stdout (it must exit 0)."""
    async with await connect(host, known_hosts, connect_timeout=connect_timeout) as conn:
        result = await conn.run(command, check=True)
    return str(result.stdout)


async def ssh_status(host: FleetHost, known_hosts: str, command: str) -> int:
    async with await connect(host, known_hosts) as conn:
        result = await conn.run(command, check=False)
    assert result.exit_status is not None
    return result.exit_status


def test_every_host_answers_over_ssh_with_debians_python(
    fleet: Fleet, fleet_hosts: list[FleetHost]
) -> None:
    known_hosts = fleet.known_hosts(fleet_hosts)

    async def check(host: FleetHost) -> tuple[str, str]:
        async with await connect(host, known_hosts) as conn:
            version = await conn.run(
                'python3 -c "import sys; print(sys.version_info[:2])"', check=True
            )
            name = await conn.run("hostname", check=True)
        return str(version.stdout).strip(), str(name.stdout).strip()

    async def main() -> list[tuple[str, str]]:
        return list(await asyncio.gather(*(check(host) for host in fleet_hosts)))

    answers = asyncio.run(main())
    assert answers == [("(3, 11)", host.name) for host in fleet_hosts]
    assert len({host.address for host in fleet_hosts}) == 3
    assert len({host.host_key for host in fleet_hosts}) == 3


def test_the_operators_files_are_not_on_the_hosts(
    fleet: Fleet, fleet_hosts: list[FleetHost], tmp_path: Path
) -> None:
    token = f"operator-{secrets.token_hex(8)}"
    mine = tmp_path / "operator-only.txt"
    mine.write_text(token)
    known_hosts = fleet.known_hosts(fleet_hosts)
    checkout = HIDDEN[0]
    for host in fleet_hosts:
        assert asyncio.run(ssh_status(host, known_hosts, f"test -e {mine}")) == 1
        assert asyncio.run(ssh_status(host, known_hosts, "test -e /root/.pyenv")) == 1
        assert asyncio.run(ssh_status(host, known_hosts, f"test -e {checkout}/pyproject.toml")) == 1
        assert asyncio.run(ssh_status(host, known_hosts, f"test -e {tmp_path.parent}")) == 1
        assert host.find_text(token) == []
        assert not host.path(str(mine)).exists()


def test_files_written_on_one_host_stay_on_that_host(
    fleet: Fleet, fleet_hosts: list[FleetHost]
) -> None:
    first, second, _ = fleet_hosts
    known_hosts = fleet.known_hosts(fleet_hosts)
    token = f"host-{secrets.token_hex(8)}"
    written = [f"/srv/{token}.txt", f"/tmp/{token}.txt", f"/root/{token}.txt"]
    script = "; ".join(f"echo {token} > {path}" for path in written)
    asyncio.run(ssh_run(first, known_hosts, script))

    assert first.find_text(token) == sorted(written)
    assert first.run(f"cat {written[0]}").stdout.strip() == token
    assert first.path(written[0]).read_text().strip() == token
    assert second.find_text(token) == []
    for path in written:
        assert asyncio.run(ssh_status(second, known_hosts, f"test -e {path}")) == 1
        assert not Path(path).exists()  # nor on the operator's side


def test_a_host_cannot_write_outside_its_own_folders(
    fleet: Fleet, fleet_hosts: list[FleetHost]
) -> None:
    host = fleet_hosts[0]
    name = f"alk-{secrets.token_hex(8)}"

    async def attempt() -> asyncssh.SSHCompletedProcess:
        async with await connect(host, fleet.known_hosts([host])) as conn:
            result = await conn.run(f"touch /usr/local/{name}", check=False)
        return result

    result = asyncio.run(attempt())
    assert result.exit_status != 0
    assert "Read-only file system" in str(result.stderr)
    assert not Path(f"/usr/local/{name}").exists()


def test_a_host_sees_its_own_processes_only(fleet: Fleet, fleet_hosts: list[FleetHost]) -> None:
    host = fleet_hosts[0]
    listing = asyncio.run(ssh_run(host, fleet.known_hosts([host]), "ps -eo pid=,args="))
    processes = dict(line.split(None, 1) for line in listing.splitlines())
    assert processes["1"].startswith("/usr/bin/python3 -I -S -c")  # the host's own init
    assert any(args.startswith("sshd: ") for args in processes.values())
    assert not any("pytest" in args for args in processes.values())


def test_hosts_reach_each_other_over_the_bridge(fleet: Fleet) -> None:
    first, second = fleet.hosts(2)
    known_hosts = fleet.known_hosts([first, second])
    token = f"bridge-{secrets.token_hex(8)}"
    port = 8000
    fetch = (
        "import time, urllib.request\n"
        "for attempt in range(100):\n"
        "    try:\n"
        f"        with urllib.request.urlopen('http://{second.address}:{port}/{token}.txt',"
        " timeout=5) as answer:\n"
        "            print(answer.read().decode().strip())\n"
        "            break\n"
        "    except OSError:\n"
        "        time.sleep(0.1)\n"
        "else:\n"
        "    raise SystemExit('the second host never answered')\n"
    )

    async def main() -> str:
        async with (
            await connect(second, known_hosts) as server_conn,
            await connect(first, known_hosts) as client_conn,
        ):
            await server_conn.run(f"mkdir -p /srv/web && echo {token} > /srv/web/{token}.txt")
            server = await server_conn.create_process(
                "echo $$; exec timeout 60 python3 -m http.server "
                f"{port} --bind {second.address} --directory /srv/web"
            )
            pid = int(await server.stdout.readline())
            try:
                fetched = await client_conn.run("python3 -", input=fetch, check=True)
                # the file exists on the second host only
                seen = await client_conn.run(f"test -e /srv/web/{token}.txt", check=False)
            finally:
                await server_conn.run(f"kill {pid}", check=False)
                await server.wait(timeout=10)
        assert seen.exit_status == 1
        return str(fetched.stdout).strip()

    assert asyncio.run(main()) == token


def test_a_cut_link_makes_a_host_unreachable_until_restored(
    fleet: Fleet, fleet_hosts: list[FleetHost]
) -> None:
    first, second, _ = fleet_hosts
    known_hosts = fleet.known_hosts(fleet_hosts)
    first.cut_link()
    try:
        with pytest.raises(OSError):  # TimeoutError or unreachable, never a connection
            asyncio.run(ssh_run(first, known_hosts, "true", connect_timeout=1))
        assert asyncio.run(ssh_run(second, known_hosts, "hostname")).strip() == second.name
    finally:
        first.restore_link()
    assert asyncio.run(ssh_run(first, known_hosts, "hostname")).strip() == first.name


def test_a_killed_sshd_refuses_connections_and_the_host_keeps_its_files(
    fleet: Fleet, fleet_hosts: list[FleetHost]
) -> None:
    host = fleet_hosts[2]
    known_hosts = fleet.known_hosts([host])
    token = f"survivor-{secrets.token_hex(8)}"
    asyncio.run(ssh_run(host, known_hosts, f"echo {token} > /srv/{token}.txt"))
    host.kill_sshd()
    try:
        assert not host.sshd_running
        with pytest.raises(ConnectionRefusedError):
            asyncio.run(ssh_run(host, known_hosts, "true", connect_timeout=5))
    finally:
        host.start_sshd()
    assert host.sshd_running
    answer = asyncio.run(ssh_run(host, known_hosts, f"cat /srv/{token}.txt"))
    assert answer.strip() == token


def test_a_wrong_or_unknown_host_key_is_refused(fleet: Fleet, fleet_hosts: list[FleetHost]) -> None:
    first, second, _ = fleet_hosts
    wrong = f"{first.address} {second.host_key}\n"
    with pytest.raises(asyncssh.HostKeyNotVerifiable):
        asyncio.run(ssh_run(first, wrong, "true"))
    with pytest.raises(asyncssh.HostKeyNotVerifiable):
        asyncio.run(ssh_run(first, fleet.known_hosts([second]), "true"))


def test_only_the_client_key_logs_in(fleet: Fleet, fleet_hosts: list[FleetHost]) -> None:
    host = fleet_hosts[0]
    stranger = asyncssh.generate_private_key("ssh-ed25519")

    async def attempt() -> None:
        async with asyncssh.connect(
            host.address,
            host.port,
            username=host.user,
            client_keys=[stranger],
            known_hosts=asyncssh.import_known_hosts(fleet.known_hosts([host])),
            agent_path=None,
            config=[],
            password=None,
            connect_timeout=10,
        ):
            pass

    with pytest.raises(asyncssh.PermissionDenied):
        asyncio.run(attempt())


def test_the_fleet_grows_on_demand(fleet: Fleet) -> None:
    hosts = fleet.hosts(4)
    assert [host.name for host in hosts] == ["alk-h1", "alk-h2", "alk-h3", "alk-h4"]
    assert [host.address for host in hosts][-1] == "10.213.0.14"
    assert all(host.sshd_running and host.link_up() for host in hosts)
    known_hosts = fleet.known_hosts(hosts)
    assert asyncio.run(ssh_run(hosts[3], known_hosts, "hostname")).strip() == "alk-h4"
    assert os.path.exists(f"/run/netns/{hosts[3].name}")
