"""A testbed of remote hosts on one machine: OpenSSH servers, each in namespaces of its own.

A :class:`Fleet` puts a Linux bridge (``alkbr0``, 10.213.0.1/24) in the root network namespace
and, for host ``i`` (1, 2, …), a network namespace ``alk-h{i}`` joined to the bridge by a veth
pair (``alk-v{i}`` on the bridge; ``eth0`` with 10.213.0.{10+i}/24 inside, default route via
the bridge). Each host runs a real ``/usr/sbin/sshd`` in mount, PID and UTS namespaces of its
own: private tmpfs over ``/tmp``, ``/var/tmp``, ``/root``, ``/srv`` and ``/run/airlock`` (a
parameter) and over ``/etc/ssh`` (its host key, ``sshd_config``, ``authorized_keys``), its own
``/proc`` (it sees its own processes only), its host name, and the rest of the file system
read-only (a parameter). The operator's project under ``/tmp`` and the pyenv Python under
``/root`` are invisible on a host, so whatever a host needs has to come over SSH; a host's
Python is Debian's ``/usr/bin/python3``.

It needs root on Linux, iproute2, util-linux and Debian's ``openssh-server``: see
:func:`fleet_support`. ``airlock demo --fleet`` and ``benchmarks/fleet.py`` use it, and the tests
through the fixtures of ``tests/fleet_hosts.py``. Traffic stays on the machine: the bridge's
subnet is private to it and IP forwarding is not turned on.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.metadata
import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path, PurePosixPath
from types import TracebackType
from typing import IO

import psutil
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

BRIDGE = "alkbr0"
SUBNET = ipaddress.IPv4Network("10.213.0.0/24")
GATEWAY = "10.213.0.1"
HOST_PREFIX = "alk-h"  # network namespaces alk-h1, alk-h2, …
FIREWALL_TABLE = "airlock_testbed"  # nftables table of a host's rules (drop_inbound)
VETH_PREFIX = "alk-v"  # their veth ends on the bridge
PEER_PREFIX = "alk-p"  # the other end, renamed eth0 once inside the namespace
SSH_PORT = 22
MAX_HOSTS = 99
DEFAULT_PRIVATE_DIRS: tuple[str, ...] = ("/tmp", "/var/tmp", "/root", "/srv", "/run/airlock")
# hidden (empty) on the hosts: this copy of Airlock and its Python environment, so that a host
# can only run what came over SSH
DEFAULT_HIDDEN_DIRS: tuple[str, ...] = tuple(
    dict.fromkeys([str(Path(__file__).resolve().parents[1]), sys.prefix])
)
SSH_DIR = "/etc/ssh"  # always private: each host's own keys and configuration
SSHD = "/usr/sbin/sshd"
STATE_FILE = Path("/run/alk-fleet.state")  # lock of the live fleet; what it created
HOST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
TOOLS = ("ip", "unshare", "nsenter", "mount", "sh", "install", "stat", "grep")
HOST_PYTHON = "/usr/bin/python3"  # the hosts' Python (and their init)
READY_TIMEOUT = 15.0
STOP_TIMEOUT = 5.0
#: Where :meth:`FleetHost.install_python_packages` puts packages (services need PYTHONPATH)
HOST_PYTHON_LIB = "/srv/lib/python"

_REQUIREMENT_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")
_NETNS_NAME = re.compile(rf"^{re.escape(HOST_PREFIX)}\d+$")
_VETH_NAME = re.compile(rf"^({re.escape(VETH_PREFIX)}|{re.escape(PEER_PREFIX)})\d+$")

# The host's first process (PID 1 of its PID namespace, by `ip netns exec … unshare …`), with
# the arguments: staging folder, host name, read-only root (1/0), python, init program, then as
# many private:/path (a writable tmpfs of its own) or hidden:/path (an empty read-only tmpfs). It
# copies sshd's files from the staging folder (which the private /tmp is about to hide) into a
# private /etc/ssh, mounts the folders, binds the fleet's /etc/hosts and /etc/resolv.conf (read
# only), and becomes the init program.
_HOST_SCRIPT = r"""
set -eu
staging=$1 name=$2 read_only=$3 python=$4 init=$5
shift 5
echo "$name" >/proc/sys/kernel/hostname
mount -t tmpfs -o mode=0755 alk-etc-ssh /etc/ssh
install -m 0600 "$staging/ssh_host_ed25519_key" /etc/ssh/ssh_host_ed25519_key
for file in ssh_host_ed25519_key.pub sshd_config ssh_config moduli; do
    if [ -f "$staging/$file" ]; then install -m 0644 "$staging/$file" "/etc/ssh/$file"; fi
done
mkdir -m 0755 /etc/ssh/authorized_keys
install -m 0644 "$staging/authorized_keys" /etc/ssh/authorized_keys/root
for file in hosts resolv.conf; do  # the fleet's names; no DNS server, so lookups end at once
    if [ -f "/etc/$file" ]; then
        mount --bind "$staging/../$file" "/etc/$file"
        mount -o remount,bind,ro "/etc/$file"
    fi
done
for arg in "$@"; do
    dir=${arg#*:}
    mkdir -p "$dir"
    case $arg in
        private:*) mount -t tmpfs -o "mode=$(stat -c %a "$dir")" alk-private "$dir" ;;
        hidden:*) mount -t tmpfs -o ro,mode=0755 alk-hidden "$dir" ;;
    esac
done
if [ "$read_only" = 1 ]; then mount -o remount,bind,ro /; fi
export ALK_INIT_START="/usr/sbin/sshd -D -e -f /etc/ssh/sshd_config"
exec "$python" -I -S -c "$init"
"""

# The host's init: starts sshd, then reaps every process that ends in the host (orphans
# included) and holds the host's namespaces while sshd is down, until the fleet kills it.
# (sshd's command comes in the environment, so that `pgrep -f sshd` on a host finds sshd only.)
_INIT = """
import os, signal
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
command = os.environ.pop("ALK_INIT_START").split()
if os.fork() == 0:
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    os.execv(command[0], command)
while True:
    try:
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass
    except ChildProcessError:
        pass
    signal.sigwait({signal.SIGCHLD})
"""

# A clean environment for everything started in a host: nothing of the operator's.
_HOST_ENV = {
    "PATH": HOST_PATH,
    "HOME": "/root",
    "USER": "root",
    "LOGNAME": "root",
    "LANG": "C.UTF-8",
}


# -- can this machine do it -------------------------------------------------------------------


def fleet_support() -> tuple[bool, str]:
    """Whether this machine can run a fleet, and if not, why not (``(True, "")`` when it can)."""
    if not sys.platform.startswith("linux"):
        return False, f"needs Linux namespaces; this is {sys.platform}"
    if os.geteuid() != 0:
        return False, "needs root (network namespaces, bridges, mounts)"
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        packages = "iproute2, util-linux, coreutils"
        return False, f"missing tools: {', '.join(missing)} (Debian: {packages})"
    if not os.access(SSHD, os.X_OK):
        return False, f"no {SSHD} (Debian: apt-get install openssh-server)"
    if not os.access(HOST_PYTHON, os.X_OK):
        return False, f"no {HOST_PYTHON} (Debian: apt-get install python3)"
    import pwd  # POSIX only, like the rest: imported where needed, so Windows can import this

    try:
        pwd.getpwnam("sshd")
    except KeyError:
        return False, "no 'sshd' user for sshd's privilege separation (openssh-server)"
    probe = _call(["unshare", "--net", "--mount", "--uts", "true"], check=False)
    if probe.returncode != 0:
        return False, f"cannot create namespaces: {probe.stderr.strip() or probe.returncode}"
    addresses = _call(["ip", "-j", "-4", "addr", "show"], check=False)
    if addresses.returncode != 0:
        return False, f"'ip' does not work: {addresses.stderr.strip()}"
    for link in json.loads(addresses.stdout or "[]"):
        name = link.get("ifname", "")
        if name == BRIDGE:
            continue
        for info in link.get("addr_info", []):
            if ipaddress.IPv4Address(info["local"]) in SUBNET:
                return False, f"{SUBNET} is already used on this machine (by {name})"
    return True, ""


# -- small helpers ----------------------------------------------------------------------------


def _call(
    args: Sequence[str], *, check: bool = True, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        list(args), capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and result.returncode != 0:
        raise RuntimeError(
            f"{' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}"
        )
    return result


# looked up now, for a forked child must not load anything; Linux only
_prctl = getattr(ctypes.CDLL(None), "prctl", None) if sys.platform.startswith("linux") else None


def _die_with_parent() -> None:
    """In a child before exec: SIGKILL when the test process dies (PR_SET_PDEATHSIG)."""
    if _prctl is not None:
        _prctl(1, signal.SIGKILL)


def _netns_names() -> list[str]:
    result = _call(["ip", "netns", "list"], check=False)
    names = [line.split()[0] for line in result.stdout.splitlines() if line.strip()]
    return [name for name in names if _NETNS_NAME.match(name)]


def _fleet_links() -> list[str]:
    result = _call(["ip", "-o", "link", "show"], check=False)
    names = []
    for line in result.stdout.splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3:
            names.append(parts[1].strip().split("@")[0])
    return [name for name in names if name == BRIDGE or _VETH_NAME.match(name)]


def _pids_in_netns(path: Path) -> list[int]:
    """Processes whose network namespace is the one bound at ``path`` (/run/netns/…)."""
    try:
        target = os.stat(path)
    except OSError:
        return []
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            ns = os.stat(f"/proc/{entry}/ns/net")
        except OSError:
            continue
        if (ns.st_dev, ns.st_ino) == (target.st_dev, target.st_ino):
            pids.append(int(entry))
    return pids


def _stop_processes(pids: Sequence[int], *, graceful: bool = True) -> None:
    """SIGTERM (when ``graceful``), then SIGKILL what is left; reaps our own children."""
    procs = []
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            procs.append(psutil.Process(pid))
    alive = procs
    if graceful:
        for proc in procs:
            with contextlib.suppress(psutil.Error):
                proc.terminate()
        _, alive = psutil.wait_procs(procs, timeout=STOP_TIMEOUT)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    _, alive = psutil.wait_procs(alive, timeout=STOP_TIMEOUT)
    if alive:
        raise RuntimeError(f"processes did not stop: {[proc.pid for proc in alive]}")


def _make_dirs(path: Path) -> list[Path]:
    """``mkdir -p``; returns the folders it created, outermost first."""
    missing = []
    current = path
    while not current.exists():
        missing.append(current)
        current = current.parent
    for folder in reversed(missing):
        folder.mkdir(mode=0o755)
    return list(reversed(missing))


def _remove_dirs(folders: Sequence[str]) -> None:
    for folder in reversed(folders):
        with contextlib.suppress(OSError):
            os.rmdir(folder)  # only when empty: never anything that is not ours


def _remove_stale() -> None:
    """Whatever a fleet that crashed left: processes, namespaces, links."""
    for name in _netns_names():
        # a host's PID 1 ignores SIGTERM from outside: straight to SIGKILL
        _stop_processes(_pids_in_netns(Path("/run/netns") / name), graceful=False)
        _call(["ip", "netns", "delete", name], check=False)
    for name in _fleet_links():
        _call(["ip", "link", "delete", name], check=False)
    deadline = time.monotonic() + STOP_TIMEOUT
    while (_netns_names() or _fleet_links()) and time.monotonic() < deadline:
        time.sleep(0.05)  # the kernel frees a namespace's veth a moment after deletion
    leftovers = _netns_names() + _fleet_links()
    if leftovers:
        raise RuntimeError(f"could not remove a previous fleet's {', '.join(leftovers)}")


# -- one host ---------------------------------------------------------------------------------


class FleetHost:
    """One test host: reach it over SSH at ``address:port`` as ``user`` with ``client_key``."""

    def __init__(self, fleet: Fleet, index: int) -> None:
        self.fleet = fleet
        self.index = index
        self.name = f"{HOST_PREFIX}{index}"  # its network namespace, and its host name
        self.address = str(SUBNET.network_address + 10 + index)
        self.port = SSH_PORT
        self.user = "root"
        self.veth = f"{VETH_PREFIX}{index}"  # the end on the bridge, in the root namespace
        self.netns = Path("/run/netns") / self.name
        self.client_key: Path = fleet.client_key
        self.private_dirs: tuple[str, ...] = (SSH_DIR, *fleet.private_dirs)
        self.staging = fleet.workdir / self.name
        self.log = fleet.workdir / f"{self.name}-sshd.log"  # sshd's stderr (-e)
        key = Ed25519PrivateKey.generate()
        self._host_private = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
        public = key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
        self.host_key: str = public.decode()  # "ssh-ed25519 AAAA…"
        self._launcher: subprocess.Popen[bytes] | None = None  # unshare, parent of the init
        self._restarted: subprocess.Popen[bytes] | None = None  # nsenter of start_sshd()
        self._init: int | None = None

    def __repr__(self) -> str:
        return f"FleetHost({self.name}, {self.address})"

    @property
    def known_hosts_line(self) -> str:
        """This host's line for a known_hosts file."""
        where = self.address if self.port == 22 else f"[{self.address}]:{self.port}"
        return f"{where} {self.host_key}"

    @property
    def init_pid(self) -> int:
        """The host's PID 1 (as the operator numbers it); it holds the host's namespaces."""
        if self._init is None or not psutil.pid_exists(self._init):
            raise RuntimeError(f"{self.name}: the host is gone")
        return self._init

    @property
    def sshd_pid(self) -> int | None:
        """The listening sshd's process id (as the operator numbers it), None while down."""
        sshds = {pid: ppid for pid, ppid in self._sshds()}
        masters = [pid for pid, ppid in sshds.items() if ppid not in sshds]
        return min(masters) if masters else None

    @property
    def sshd_running(self) -> bool:
        return self.sshd_pid is not None

    @property
    def root(self) -> Path:
        """The host's file system as the operator sees it: ``/proc/<init>/root``."""
        return Path(f"/proc/{self.init_pid}/root")

    def path(self, path: str) -> Path:
        """Where the host's absolute ``path`` is, seen from the operator (for reading)."""
        if not path.startswith("/"):
            raise ValueError(f"not an absolute path: {path}")
        return self.root / path.lstrip("/")

    # -- commands inside the host ------------------------------------------------------------

    def nsenter_args(self) -> list[str]:
        """``nsenter …`` that puts a command into this host's namespaces (prefix for argv)."""
        init = self.init_pid
        return [
            "nsenter",
            f"--net={self.netns}",
            f"--mount=/proc/{init}/ns/mnt",
            f"--pid=/proc/{init}/ns/pid",
            f"--uts=/proc/{init}/ns/uts",
            "--wd=/",
            "--",
        ]

    def run(
        self,
        cmd: str | Sequence[str],
        *,
        check: bool = True,
        timeout: float = 30,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``cmd`` (a shell line, or argv) as root inside the host, not through SSH.

        For assertions about the host; the environment is a clean root login's, not ours.
        """
        argv = ["sh", "-c", cmd] if isinstance(cmd, str) else list(cmd)
        result = subprocess.run(
            [*self.nsenter_args(), *argv],
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            cwd="/",
            env=_HOST_ENV,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"{self.name}: {cmd!r} failed ({result.returncode}):\n"
                f"{result.stdout}{result.stderr}"
            )
        return result

    def find_text(self, text: str, dirs: Sequence[str] | None = None) -> list[str]:
        """Files of the host (under ``dirs``, default its private folders) that contain ``text``.

        The text goes to grep on its standard input, never on a command line.
        """
        if not text or "\n" in text:
            raise ValueError("one non-empty line of text")
        result = self.run(
            ["grep", "-rlF", "-f", "-", "--", *(dirs or self.private_dirs)],
            input=text + "\n",
            check=False,
        )
        if result.returncode not in (0, 1):
            raise RuntimeError(f"{self.name}: grep failed: {result.stderr.strip()}")
        return sorted(result.stdout.splitlines())

    def processes(self) -> list[psutil.Process]:
        """Every process in the host but its own machinery (init, sshd, the launchers): what
        was started in it, e.g. over SSH."""
        own = {self._init, *(p.pid for p in (self._launcher, self._restarted) if p is not None)}
        found = []
        for pid in _pids_in_netns(self.netns):
            if pid in own:
                continue
            with contextlib.suppress(psutil.Error):
                proc = psutil.Process(pid)
                if proc.status() != psutil.STATUS_ZOMBIE and proc.exe() != SSHD:
                    found.append(proc)
        return found

    # -- provisioning --------------------------------------------------------------------------

    def install_python_packages(
        self,
        names: Sequence[str],
        *,
        optional: Sequence[str] = (),
        target: str = HOST_PYTHON_LIB,
    ) -> list[str]:
        """Copy installed Python distributions of this machine into the host's ``target``.

        What a sysadmin does with ``pip install --target``, from what the operator has: the
        distributions ``names`` (each must be installed here), those of ``optional`` that are,
        and what they require (unconditionally or for this Python; extras are not followed),
        each with the files of its ``RECORD`` (compiled extensions and their bundled libraries
        too; no byte code, no scripts). The host's Python must match this one's version and
        machine type for compiled parts; the services find the packages through
        ``PYTHONPATH=target``. ``target`` must be inside one of the host's private folders.
        Returns the distributions copied, as ``name version``.
        """
        if not any(_inside(target, private) for private in self.fleet.private_dirs):
            raise ValueError(
                f"{target} is not inside a private folder of the hosts "
                f"({', '.join(self.fleet.private_dirs)}): it would be written on this machine"
            )
        chosen = _distributions(names, optional)
        root = self.path(target)
        copied = []
        for dist in chosen:
            files = dist.files
            if files is None:
                raise RuntimeError(f"{dist.metadata['Name']} has no RECORD of its files")
            for entry in files:
                relative = PurePosixPath(str(entry))
                if ".." in relative.parts or relative.is_absolute():
                    continue  # scripts and data outside the package folder
                if "__pycache__" in relative.parts or relative.suffix == ".pyc":
                    continue
                source = Path(str(dist.locate_file(entry)))
                if not source.is_file():
                    continue
                destination = root / relative
                destination.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, destination)
            copied.append(f"{dist.metadata['Name']} {dist.version}")
        return copied

    # -- faults ------------------------------------------------------------------------------

    def cut_link(self) -> None:
        """Take the host off the network (its veth end on the bridge goes down)."""
        _call(["ip", "link", "set", self.veth, "down"])

    def restore_link(self) -> None:
        """Bring the host back on the network; returns once its sshd answers from here.

        The root namespace remembers the address as unresolvable (a FAILED neighbour entry)
        from the tries made while the link was down; that entry goes, so the first connection
        after this returns does not fail for a stale reason.
        """
        _call(["ip", "link", "set", self.veth, "up"])
        self._wait(self.link_up, "its link to come up")
        _call(["ip", "neigh", "flush", "to", self.address])
        self._wait(self._reachable, "its sshd to answer over the bridge")

    def drop_inbound(self, source: str, port: int) -> None:
        """A firewall rule on the host (nftables, in its own network namespace): TCP from
        ``source`` to ``port`` is dropped, as a forgotten firewall port would."""
        table = ["ip", "netns", "exec", self.name, "nft"]
        _call([*table, "add", "table", "inet", FIREWALL_TABLE])
        _call(
            [
                *table,
                "add chain inet " + FIREWALL_TABLE + " input "
                "{ type filter hook input priority 0 ; policy accept ; }",
            ]
        )
        _call(
            [
                *table,
                f"add rule inet {FIREWALL_TABLE} input ip saddr {source} tcp dport {port} drop",
            ]
        )

    def clear_firewall(self) -> None:
        """Remove every rule :meth:`drop_inbound` added."""
        _call(
            ["ip", "netns", "exec", self.name, "nft", "delete", "table", "inet", FIREWALL_TABLE],
            check=False,
        )

    def link_up(self) -> bool:
        base = Path("/sys/class/net") / self.veth
        try:
            operstate = (base / "operstate").read_text().strip()
            port_state = (base / "brport" / "state").read_text().strip()
        except OSError:
            return False
        return operstate == "up" and port_state == "3"  # BR_STATE_FORWARDING

    def kill_sshd(self) -> None:
        """Stop the host's sshd: the listener and every SSH session's sshd process.

        The host itself (its namespaces, its files, processes started through SSH) stays.
        """
        _stop_processes([pid for pid, _ in self._sshds()])
        if self._restarted is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._restarted.wait(timeout=STOP_TIMEOUT)
            self._restarted = None

    def start_sshd(self) -> None:
        """Start sshd again inside the host (after :meth:`kill_sshd`); returns once it listens."""
        if self.sshd_running:
            return
        with open(self.log, "ab") as log:
            self._restarted = subprocess.Popen(
                [*self.nsenter_args(), SSHD, "-D", "-e", "-f", "/etc/ssh/sshd_config"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=_HOST_ENV,
                cwd="/",
                start_new_session=True,  # a ^C to the tests is not one to the hosts
                preexec_fn=_die_with_parent,
            )
        self._wait(self._listening, "sshd to listen")

    def heal(self) -> None:
        """Undo the faults: link up and sshd listening."""
        if not self.link_up():
            self.restore_link()
        if not self.sshd_running:
            self.start_sshd()

    # -- life cycle --------------------------------------------------------------------------

    def _sshds(self) -> list[tuple[int, int]]:
        """(pid, parent pid) of every sshd process in the host."""
        found = []
        for pid in _pids_in_netns(self.netns):
            with contextlib.suppress(psutil.Error):
                proc = psutil.Process(pid)
                if proc.exe() == SSHD and proc.status() != psutil.STATUS_ZOMBIE:
                    found.append((pid, proc.ppid()))
        return found

    def _listening(self) -> bool:
        """Whether the host has a TCP socket listening on address:port (its /proc/net/tcp)."""
        wanted = f"{socket.inet_aton(self.address)[::-1].hex().upper()}:{self.port:04X}"
        try:
            lines = Path(f"/proc/{self.init_pid}/net/tcp").read_text().splitlines()[1:]
        except OSError:
            return False
        return any(
            len(fields) > 3 and fields[1] == wanted and fields[3] == "0A"
            for fields in (line.split() for line in lines)
        )

    def _reachable(self) -> bool:
        """Whether a TCP connection to the host's sshd opens from the root namespace."""
        try:
            with socket.create_connection((self.address, self.port), timeout=1.0):
                return True
        except OSError:
            return False

    def _wait(self, condition: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while not condition():
            for process in (self._launcher, self._restarted):
                if process is not None and process.poll() is not None:
                    raise RuntimeError(f"{self.name}: exited:\n{self._log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name}: timed out waiting for {what}")
            time.sleep(0.02)

    def _log_tail(self) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-20:])
        except OSError:
            return "(no log)"

    def _write_staging(self) -> None:
        self.staging.mkdir(mode=0o700)
        key = self.staging / "ssh_host_ed25519_key"
        key.touch(mode=0o600)
        key.write_bytes(self._host_private)
        (self.staging / "ssh_host_ed25519_key.pub").write_text(self.host_key + "\n")
        (self.staging / "authorized_keys").write_text(self.fleet.client_public_key + "\n")
        for name in ("moduli", "ssh_config"):
            source = Path(SSH_DIR) / name
            if source.is_file():
                shutil.copyfile(source, self.staging / name)
        (self.staging / "sshd_config").write_text(
            f"# test host {self.name}, written by tests/fleet_hosts.py\n"
            f"ListenAddress {self.address}:{self.port}\n"
            "AddressFamily inet\n"
            "HostKey /etc/ssh/ssh_host_ed25519_key\n"
            "PidFile none\n"
            "PermitRootLogin prohibit-password\n"
            "PubkeyAuthentication yes\n"
            "AuthorizedKeysFile /etc/ssh/authorized_keys/%u .ssh/authorized_keys\n"
            "PasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\n"
            "UsePAM no\n"
            "StrictModes no\n"
            "UseDNS no\n"
            "X11Forwarding no\n"
            "PrintMotd no\n"
            "PrintLastLog no\n"
            "MaxStartups 64:30:128\n"
            "MaxSessions 64\n"
            "Subsystem sftp internal-sftp\n"
        )

    def _start(self) -> None:
        self._write_staging()
        _call(["ip", "netns", "add", self.name])
        peer = f"{PEER_PREFIX}{self.index}"
        _call(["ip", "link", "add", self.veth, "type", "veth", "peer", "name", peer])
        _call(["ip", "link", "set", peer, "netns", self.name])
        _call(["ip", "link", "set", self.veth, "master", BRIDGE])
        _call(["ip", "link", "set", self.veth, "up"])
        inside = ["ip", "-n", self.name]
        _call([*inside, "link", "set", peer, "name", "eth0"])
        _call([*inside, "addr", "add", f"{self.address}/{SUBNET.prefixlen}", "dev", "eth0"])
        _call([*inside, "link", "set", "lo", "up"])
        _call([*inside, "link", "set", "eth0", "up"])
        _call([*inside, "route", "add", "default", "via", GATEWAY])
        argv = [
            *("ip", "netns", "exec", self.name),
            # the forked child is the host's PID 1; when unshare dies, it dies, and so the host
            *("unshare", "--mount", "--uts", "--pid", "--mount-proc", "--kill-child"),
            *("--propagation", "private"),
            *("sh", "-c", _HOST_SCRIPT, "sh", str(self.staging), self.name),
            *("1" if self.fleet.read_only_root else "0", HOST_PYTHON, _INIT),
            *(f"private:{folder}" for folder in self.fleet.private_dirs),
            *(f"hidden:{folder}" for folder in self.fleet.hidden_dirs),
        ]
        with open(self.log, "ab") as log:
            self._launcher = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=_HOST_ENV,
                cwd="/",
                start_new_session=True,  # a ^C to the tests is not one to the hosts
                preexec_fn=_die_with_parent,
            )
        launcher = psutil.Process(self._launcher.pid)

        def init_started() -> bool:
            with contextlib.suppress(psutil.Error):
                children = launcher.children()
                if children and children[0].exe() == os.path.realpath(HOST_PYTHON):
                    self._init = children[0].pid
            return self._init is not None

        self._wait(init_started, "its init")
        self._wait(self._listening, "sshd to listen")
        self._wait(self.link_up, "its link to come up")

    def _destroy(self) -> None:
        """Kill every process in the host, delete its namespace and link."""
        if self._init is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._init, signal.SIGKILL)  # the kernel kills the rest of the host
        if self._launcher is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._launcher.wait(timeout=STOP_TIMEOUT)
        # any nsenter left in the namespace
        _stop_processes(_pids_in_netns(self.netns), graceful=False)
        for process in (self._launcher, self._restarted):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait(timeout=STOP_TIMEOUT)
        self._launcher = self._restarted = None
        self._init = None
        if self.netns.exists():
            _call(["ip", "netns", "delete", self.name])
        if self.veth in _fleet_links():
            _call(["ip", "link", "delete", self.veth], check=False)


# -- the fleet --------------------------------------------------------------------------------


class Fleet:
    """A bridge and test hosts on it; ``hosts(n)`` starts them as needed. Close when done."""

    def __init__(
        self,
        workdir: Path,
        *,
        private_dirs: Sequence[str] = DEFAULT_PRIVATE_DIRS,
        hidden_dirs: Sequence[str] = DEFAULT_HIDDEN_DIRS,
        read_only_root: bool = True,
    ) -> None:
        for folder in (*private_dirs, *hidden_dirs):
            if not folder.startswith("/") or os.path.normpath(folder) in ("/", SSH_DIR):
                raise ValueError(f"cannot give the hosts a folder of their own at {folder!r}")
        self.workdir = workdir
        # parents before children, so that a child is mounted on top of its parent's tmpfs
        self.private_dirs: tuple[str, ...] = tuple(
            sorted({os.path.normpath(folder) for folder in private_dirs}, key=_depth)
        )
        # a folder inside a private one is hidden already
        self.hidden_dirs: tuple[str, ...] = tuple(
            folder
            for folder in sorted({os.path.normpath(f) for f in hidden_dirs}, key=_depth)
            if not any(_inside(folder, private) for private in self.private_dirs)
        )
        self.read_only_root = read_only_root
        self.bridge = BRIDGE
        self.gateway = GATEWAY
        self.subnet = SUBNET
        self._hosts: list[FleetHost] = []
        self._created: list[str] = []
        self._state: IO[str] | None = None
        self._bridge_made = False
        key = Ed25519PrivateKey.generate()
        client = workdir / "client"
        client.mkdir(mode=0o700, exist_ok=True)
        self.client_key = client / "id_ed25519"
        self.client_key.touch(mode=0o600)
        self.client_key.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.OpenSSH,
                serialization.NoEncryption(),
            )
        )
        public = key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
        self.client_public_key = f"{public.decode()} airlock-fleet-client"
        (client / "id_ed25519.pub").write_text(self.client_public_key + "\n")
        names = "".join(
            f"{SUBNET.network_address + 10 + index}\t{HOST_PREFIX}{index}\n"
            for index in range(1, MAX_HOSTS + 1)
        )
        (workdir / "hosts").write_text(
            f"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
            f"{GATEWAY}\talk-gateway\n{names}"
        )
        (workdir / "resolv.conf").write_text(
            "# fleet test hosts have no DNS server: lookups fail at once\n"
            "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n"
        )
        try:
            self._start()
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> Fleet:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()

    def hosts(self, n: int) -> list[FleetHost]:
        """The first ``n`` hosts, started when new, healed when faulted (link up, sshd on).

        Hosts live for the whole session: files written on them by earlier tests remain.
        """
        if not 1 <= n <= MAX_HOSTS:
            raise ValueError(f"between 1 and {MAX_HOSTS} hosts, not {n}")
        if self._state is None:
            raise RuntimeError("the fleet is closed")
        while len(self._hosts) < n:
            host = FleetHost(self, len(self._hosts) + 1)
            self._hosts.append(host)  # before it starts: close() cleans up a half-made host
            host._start()
        chosen = self._hosts[:n]
        for host in chosen:
            host.heal()
        return chosen

    def known_hosts(self, hosts: Sequence[FleetHost] | None = None) -> str:
        """known_hosts text for ``hosts`` (default: every host started so far)."""
        return "".join(f"{host.known_hosts_line}\n" for host in (hosts or self._hosts))

    def write_known_hosts(self, path: Path, hosts: Sequence[FleetHost] | None = None) -> Path:
        path.write_text(self.known_hosts(hosts))
        return path

    def _start(self) -> None:
        import fcntl

        STATE_FILE.touch(mode=0o600)
        self._state = open(STATE_FILE, "r+")  # noqa: SIM115 - held until close()
        try:
            fcntl.flock(self._state, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._state.close()
            self._state = None
            raise RuntimeError(
                f"another test session on this machine runs a fleet (lock {STATE_FILE})"
            ) from None
        previous = self._state.read().strip()
        _remove_stale()
        if previous:  # a crashed fleet's mount points
            with contextlib.suppress(ValueError, KeyError, TypeError):
                _remove_dirs(json.loads(previous)["created"])
        # mount points must exist before the hosts' root goes read-only
        for folder in (*self.private_dirs, *self.hidden_dirs, "/run/sshd"):
            self._created += [str(made) for made in _make_dirs(Path(folder))]
            self._save_state()
        _call(["ip", "link", "add", BRIDGE, "type", "bridge", "stp_state", "0"])
        self._bridge_made = True
        _call(["ip", "link", "set", BRIDGE, "type", "bridge", "forward_delay", "0"])
        _call(["ip", "addr", "add", f"{GATEWAY}/{SUBNET.prefixlen}", "dev", BRIDGE])
        _call(["ip", "link", "set", BRIDGE, "up"])

    def _save_state(self) -> None:
        assert self._state is not None
        self._state.seek(0)
        self._state.truncate()
        self._state.write(json.dumps({"pid": os.getpid(), "created": self._created}))
        self._state.flush()

    def close(self) -> None:
        """Stop every host and remove everything the fleet made; safe to call twice."""
        if self._state is None:
            return
        errors: list[str] = []
        for host in reversed(self._hosts):
            try:
                host._destroy()
            except Exception as error:  # go on: the rest must still go
                errors.append(f"{host.name}: {error}")
        self._hosts.clear()
        if self._bridge_made:
            _call(["ip", "link", "delete", BRIDGE], check=False)
            self._bridge_made = False
        try:
            _remove_stale()  # anything a failed step above left
        except Exception as error:
            errors.append(str(error))
        _remove_dirs(self._created)
        self._created = []
        with contextlib.suppress(OSError):
            STATE_FILE.unlink()
        self._state.close()  # releases the lock
        self._state = None
        if errors:
            raise RuntimeError("fleet teardown: " + "; ".join(errors))


def _distributions(
    names: Sequence[str], optional: Sequence[str]
) -> list[importlib.metadata.Distribution]:
    """``names`` (required), the installed ones of ``optional``, and everything they require
    that is installed here, each once."""
    found: dict[str, importlib.metadata.Distribution] = {}
    wanted = [(name, True) for name in names] + [(name, False) for name in optional]
    while wanted:
        name, required = wanted.pop(0)
        key = re.sub(r"[-_.]+", "-", name).lower()
        if key in found:
            continue
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            if required:
                raise RuntimeError(f"the Python package {name!r} is not installed here") from None
            continue
        found[key] = dist
        for requirement in dist.requires or []:
            spec, _, marker = requirement.partition(";")
            matched = _REQUIREMENT_NAME.match(spec)
            if matched and "extra" not in marker:
                # a requirement for another Python or platform is simply not installed here
                wanted.append((matched.group(1), False))
    return list(found.values())


def _depth(folder: str) -> tuple[int, str]:
    return (folder.count("/"), folder)


def _inside(folder: str, parent: str) -> bool:
    return folder == parent or folder.startswith(parent.rstrip("/") + "/")
