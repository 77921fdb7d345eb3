"""`airlock discover`: a sealed service runs in a sandbox under strace and what it needs from
the network and the host is recorded (INC17). Real processes, a real strace, real sockets."""

from __future__ import annotations

import json
import os
import shutil
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from airlock import api
from airlock.discover import (
    Discovery,
    parse_strace,
    read_hook_log,
    scan_text,
    strace_command,
    strace_problem,
)
from airlock.errors import UsageError

from .conftest import WEBAPP, airlock

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "discover_service.py"


def require_strace() -> None:
    """strace must be able to trace here; under CI (CI=true) a failure, never a skip."""
    try:
        problem = strace_problem(strace_command())
    except UsageError as exc:
        problem = exc.message
    if problem is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"strace cannot trace a process here: {problem}")
    pytest.skip(f"strace cannot trace a process here: {problem}")


# -- strace output, read as text ---------------------------------------------------------------

#: Captured `strace -f -tt -yy -x` lines, addresses changed to documentation ranges.
CAPTURED = (Path(__file__).resolve().parent / "fixtures" / "strace_sample.txt").read_text()


def test_strace_text_gives_listeners_connections_outcomes_files_and_names() -> None:
    """A listener on an ephemeral port, a connection that worked, one refused after
    EINPROGRESS, one refused at once, an interrupted IPv6 call that worked, a relative read,
    a write, a missing file, a read-write, a DNS question and answer, and a connect that never
    completed."""
    trace = parse_strace(CAPTURED)
    assert [(x.protocol, x.address, x.port) for x in trace.listens] == [("tcp", "127.0.0.1", 39117)]
    outcomes = [(a.protocol, a.address, a.port, a.error) for a in trace.attempts]
    assert outcomes == [
        ("tcp", "127.0.0.1", 8081, None),
        ("tcp", "127.0.0.1", 1, "ECONNREFUSED"),
        ("tcp", "127.0.0.1", 2, "ECONNREFUSED"),
        ("tcp", "2001:db8::1", 443, None),
        ("udp", "10.0.0.2", 53, None),
        ("tcp", "93.184.216.34", 5432, "EINPROGRESS"),
    ]
    opens = {(o.path, o.mode, o.error) for o in trace.opens}
    assert opens == {
        ("/srv/app/data/in.txt", "read", None),
        ("/var/log/app.log", "write", None),
        ("/etc/app/missing.conf", "read", "ENOENT"),
        ("/etc/app/rw.db", "read-write", None),
    }
    assert trace.names == ["api.example.com"]
    assert trace.answers == {"93.184.216.34": "api.example.com"}


def test_a_torn_trace_is_read_as_far_as_it_goes() -> None:
    """A trace cut mid-line (a process killed) gives what came before, never an error."""
    text = CAPTURED.splitlines()[2] + "\n700 11:31:35.4 connect(4<TCP:[1]>, {sa_fam"
    trace = parse_strace(text)
    assert [x.port for x in trace.listens] == [39117]
    assert trace.attempts == []


def test_hook_log_keeps_variables_names_and_addresses() -> None:
    text = "\n".join(
        [
            json.dumps({"kind": "start", "prefixes": ["/opt/py"], "path": ["/opt/py/lib"]}),
            json.dumps({"kind": "env", "name": "GREETING"}),
            json.dumps({"kind": "name", "name": "localhost"}),
            json.dumps({"kind": "name", "name": "127.0.0.1"}),
            json.dumps(
                {"kind": "resolved", "name": "localhost", "address": "127.0.0.1", "port": 80}
            ),
            json.dumps({"kind": "resolved", "name": "10.1.2.3", "address": "10.1.2.3"}),
            '{"kind": "env", "na',
        ]
    )
    log = read_hook_log(text)
    assert log.ran and log.prefixes == {"/opt/py", "/opt/py/lib"}
    assert log.variables == ["GREETING"] and log.names == ["localhost"]
    assert log.resolved == {("127.0.0.1", 80): "localhost"}  # an address is no name


GO_SOURCE = """\
package main

import "os"

func main() {
	url := os.Getenv("PAYMENTS_URL")
	if v, ok := os.LookupEnv("FEATURE_FLAGS"); ok { _ = v }
	_ = url
}
"""
NODE_SOURCE = """\
const key = process.env.STRIPE_KEY_ID;
const region = process.env["AWS_REGION"];
"""


def test_static_scan_finds_variables_in_go_node_and_other_languages() -> None:
    assert [n for n, _ in scan_text("main.go", GO_SOURCE)] == ["PAYMENTS_URL", "FEATURE_FLAGS"]
    assert scan_text("server.js", NODE_SOURCE) == [("STRIPE_KEY_ID", 1), ("AWS_REGION", 2)]
    assert [n for n, _ in scan_text("a.rb", 'x = ENV["REDIS_URL"]')] == ["REDIS_URL"]
    assert [n for n, _ in scan_text("A.java", 'System.getenv("JAVA_OPT")')] == ["JAVA_OPT"]
    assert [n for n, _ in scan_text("m.rs", 'std::env::var("RUST_SET")')] == ["RUST_SET"]
    assert [n for n, _ in scan_text("m.c", 'getenv("C_SET")')] == ["C_SET"]
    shell = "LOCAL=1\necho \"$LOCAL ${FROM_HOST} $OTHER\" '$QUOTED'\nfor f in x; do echo $f; done\n"
    assert [n for n, _ in scan_text("run.sh", shell)] == ["FROM_HOST", "OTHER"]


# -- a real discovery --------------------------------------------------------------------------


def write_project(root: Path, outside: Path, *, mode: str = "ok") -> Path:
    """account (the stdlib webapp) and payment (the fixture using every channel)."""
    (root / "app").mkdir(parents=True)
    shutil.copyfile(WEBAPP, root / "app" / "webapp.py")
    shutil.copyfile(FIXTURE, root / "app" / "discover_service.py")
    (outside / "input.txt").write_text("data\n")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    document: dict[str, Any] = {
        "project": "shop",
        "services": {
            "account": {"run": "python app/webapp.py", "source": ["app/webapp.py"]},
            "payment": {
                "run": "python app/discover_service.py",
                "source": ["app/discover_service.py"],
                "depends_on": ["account"],
                "endpoints": ["GET /work"],
                "config": {
                    "GREETING": "hello",
                    "MODE": mode,
                    "DEPENDENCY_URL": "${services.account.url}",
                    "READ_FILE": str(outside / "input.txt"),
                    "WRITE_FILE": str(outside / "output.txt"),
                    "SHORT_PORT": "{short}",
                    "CLOSED_PORT": str(closed),
                },
            },
        },
        "environments": {"production": {}, "staging": {}},
        "gates": {"bake": "0.5s", "ready_timeout": "5s"},
    }
    (root / "airlock.yaml").write_text(yaml.safe_dump(document, sort_keys=False))
    return root


class Listener:
    """A real TCP listener that accepts and closes: the short-lived connection's target."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            conn.close()

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(scope="module")
def short() -> Iterator[Listener]:
    listener = Listener()
    yield listener
    listener.close()


def sealed(tmp: Path, short: Listener, *, mode: str = "ok") -> tuple[Path, Path]:
    outside = tmp / "outside"
    outside.mkdir()
    project = write_project(tmp / "shop", outside, mode=mode)
    text = (project / "airlock.yaml").read_text().replace("'{short}'", f"'{short.port}'")
    (project / "airlock.yaml").write_text(text)
    api.build(project)
    return project, outside


@pytest.fixture(scope="module")
def payment(
    tmp_path_factory: pytest.TempPathFactory, short: Listener
) -> tuple[Discovery, list[Path], Path, Path]:
    require_strace()
    project, outside = sealed(tmp_path_factory.mktemp("discover"), short)
    found, written = api.discover(project, "payment", seconds=1.5)
    return found[0], written, project, outside


def test_it_runs_in_the_first_environment_that_is_not_production(payment: Any) -> None:
    discovery = payment[0]
    assert discovery.env == "staging"
    assert discovery.complete, discovery.note
    assert discovery.python
    assert {"request": "GET /work", "status": 200} in discovery.requests


def test_the_listener_is_the_service_port(payment: Any) -> None:
    listen = payment[0].listen
    assert [x["role"] for x in listen if x["protocol"] == "tcp"] == ["service"]
    assert listen[0]["address"] == "127.0.0.1"


def test_the_dependency_is_named_not_a_loopback_port(payment: Any) -> None:
    account = [c for c in payment[0].connect if c["service"] == "account"]
    assert len(account) == 1
    assert account[0]["host"] == "account" and account[0]["declared"] is True
    assert account[0]["failed"] == 0 and account[0]["seen"] >= 1


def test_a_short_lived_connection_and_a_refused_one_are_both_seen(
    payment: Any, short: Listener
) -> None:
    by_port = {c["port"]: c for c in payment[0].connect if c["service"] is None}
    assert by_port[short.port]["seen"] >= 1 and by_port[short.port]["failed"] == 0
    closed = [c for c in by_port.values() if c["errors"] == ["ECONNREFUSED"]]
    assert len(closed) == 1 and closed[0]["failed"] == closed[0]["seen"] >= 1
    assert by_port[short.port]["host"] is None  # reached by address: no name to show


def test_files_read_and_written_outside_its_folder(payment: Any) -> None:
    outside = payment[3]
    files = {f["path"]: f["mode"] for f in payment[0].files}
    assert files[str(outside / "input.txt")] == "read"
    assert files[str(outside / "output.txt")] == "write"
    assert not [p for p in files if "/.airlock/" in p]  # its own sealed folder is left out


def test_names_and_variables_from_the_audit_hook(payment: Any) -> None:
    discovery = payment[0]
    assert discovery.names == ["localhost"]
    variables = {v["name"]: v for v in discovery.variables}
    assert variables["GREETING"]["how"] == "runtime"
    assert variables["GREETING"]["provided"] == "config"
    assert variables["OPTIONAL_SETTING"]["provided"] is None
    assert variables["PATH"]["provided"] == "runtime"
    assert not [n for n in variables if n.startswith("AIRLOCK_DISCOVER")]


def test_the_json_and_markdown_are_written_with_the_release(payment: Any) -> None:
    discovery, written, _, _ = payment
    names = sorted(p.name for p in written)
    assert names == ["payment.json", "payment.md"]
    folder = written[0].parent
    assert folder.parent.name == "reports" and folder.name == "discover"
    record = json.loads((folder / "payment.json").read_text())
    assert set(record) >= {"service", "release", "environment", "listen", "connect", "files"}
    assert record["env"] == discovery.to_dict()["env"]
    assert record["complete"] is True and record["environment"] == "staging"
    markdown = (folder / "payment.md").read_text()
    assert "service `account`" in markdown and "OPTIONAL_SETTING" in markdown


def test_a_crashing_service_still_reports_what_it_saw(tmp_path: Path, short: Listener) -> None:
    """It exits before becoming ready: complete is false, the note says so, exit 1, and the
    file it read before crashing is in the report."""
    require_strace()
    project, outside = sealed(tmp_path, short, mode="crash")
    result = airlock("discover", "payment", "--seconds", "0.5", "--format", "json", cwd=project)
    assert result.returncode == 1, result.stderr
    record = json.loads(result.stdout)
    assert record["complete"] is False
    assert "never became ready" in record["note"]
    assert str(outside / "input.txt") in [f["path"] for f in record["files"]]


def test_every_service_and_the_release_document(tmp_path: Path, short: Listener) -> None:
    """--all observes each service and writes the release's requirements document."""
    require_strace()
    project, _ = sealed(tmp_path, short)
    result = airlock("discover", "--all", "--seconds", "0.5", "--env", "staging", cwd=project)
    assert result.returncode == 0, result.stdout + result.stderr
    folder = next((project / ".airlock" / "releases").iterdir()) / "reports" / "discover"
    assert sorted(p.name for p in folder.iterdir()) == [
        "account.json",
        "account.md",
        "payment.json",
        "payment.md",
        "release.json",
        "release.md",
    ]
    document = (folder / "release.md").read_text()
    assert "| `payment` | `account` | yes |" in document
    assert "OPTIONAL_SETTING" in document


def test_a_service_that_is_not_python_gets_the_static_scan_and_a_note(
    tmp_path: Path,
) -> None:
    require_strace()
    root = tmp_path / "gateway"
    (root / "app").mkdir(parents=True)
    shutil.copyfile(WEBAPP, root / "app" / "webapp.py")
    (root / "app" / "run.sh").write_text(
        'echo "starting ${GATEWAY_MODE}"\nexec python3 app/webapp.py\n'
    )
    (root / "app" / "main.go").write_text(GO_SOURCE)
    (root / "app" / "server.js").write_text(NODE_SOURCE)
    document = {
        "project": "gateway",
        "services": {"gateway": {"run": "sh app/run.sh", "source": ["app"]}},
        "environments": {"staging": {}},
        "gates": {"ready_timeout": "5s"},
    }
    (root / "airlock.yaml").write_text(yaml.safe_dump(document))
    api.build(root)
    found, _ = api.discover(root, "gateway", seconds=0.5)
    discovery = found[0]
    assert discovery.complete and not discovery.python
    assert "not a Python service" in discovery.note
    static = {v["name"]: v for v in discovery.variables if v["how"] == "static"}
    assert {"PAYMENTS_URL", "FEATURE_FLAGS", "STRIPE_KEY_ID", "AWS_REGION", "GATEWAY_MODE"} <= set(
        static
    )
    assert static["PAYMENTS_URL"]["where"] == "app/main.go:6"
    assert [x["role"] for x in discovery.listen] == ["service"]


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["discover", "nosuch"], {}, "no service 'nosuch'"),
        (["discover", "payment", "--env", "qa"], {}, "no environment 'qa'"),
        (["discover"], {}, "name one service, or --all"),
        (["discover", "payment"], {"AIRLOCK_STRACE": "/nonexistent/strace"}, "`strace`"),
    ],
)
def test_bad_input_is_a_clear_error(
    tmp_path: Path, short: Listener, args: list[str], env: dict[str, str], message: str
) -> None:
    project, _ = sealed(tmp_path, short)
    result = airlock(*args, cwd=project, env=env)
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_nothing_it_did_not_do_is_reported(payment: Any, short: Listener) -> None:
    """Precision, not only recall: one listener, three destinations, two files, and exactly the
    variables its own code reads (library reads carry no `where`)."""
    discovery, _written, _project, outside = payment
    assert [(x["protocol"], x["role"]) for x in discovery.listen] == [("tcp", "service")]
    destinations = {(c["service"], c["failed"] == c["seen"]) for c in discovery.connect}
    assert len(discovery.connect) == 3
    assert destinations == {("account", False), (None, False), (None, True)}
    assert {f["path"] for f in discovery.files} == {
        str(outside / "input.txt"),
        str(outside / "output.txt"),
    }
    own = {v["name"] for v in discovery.variables if str(v.get("where", "")).startswith("app/")}
    assert own == {
        "GREETING",
        "OPTIONAL_SETTING",
        "READ_FILE",
        "WRITE_FILE",
        "DEPENDENCY_URL",
        "SHORT_PORT",
        "CLOSED_PORT",
        "MODE",
        "PORT",
    }
    assert discovery.names == ["localhost"]
