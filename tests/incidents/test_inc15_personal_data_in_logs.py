"""INC15: a service logged customers' card numbers and e-mail addresses while serving requests.

A real service process handles real HTTP requests and writes its log; the log scan finds the card
number and the e-mail address, masks both, and no finding or output shows either in full.
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import httpx

from airlock import api
from airlock.checks.logscan import scan_logs, scan_responses

from ..conftest import ProjectFactory, airlock

CARD = "4111111111111111"
EMAIL = "maria.lopez@example.com"

SERVICE = """
import json, logging, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

logging.basicConfig(filename=sys.argv[1], level=logging.INFO,
                    format="%(asctime)s %(levelname)s %(message)s")
log = logging.getLogger("payments")

class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        log.info("charge order=%s card=%s email=%s", body["order"], body["card"], body["email"])
        reply = json.dumps({"order": body["order"], "status": "paid"}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def do_GET(self):
        log.info("health check from %s", self.client_address[0])
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass

server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()
"""


def test_card_and_email_logged_by_a_running_service_are_found_masked(tmp_path: Path) -> None:
    """Both values the service logged are found, masked, and never shown in full."""
    (tmp_path / "service.py").write_text(SERVICE)
    log = tmp_path / "service.log"
    proc = subprocess.Popen(
        [sys.executable, str(tmp_path / "service.py"), str(log)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        base = f"http://127.0.0.1:{port}"
        replies = []
        for order in (1234567890123456, 1234567890123457, 1234567890123458):
            data = json.dumps({"order": order, "card": CARD, "email": EMAIL}).encode()
            request = urllib.request.Request(f"{base}/charge", data=data, method="POST")
            with urllib.request.urlopen(request, timeout=5) as response:
                replies.append((f"POST /charge ({order})", response.read()))
        with urllib.request.urlopen(f"{base}/health", timeout=5) as response:
            replies.append(("GET /health", response.read()))
    finally:
        proc.terminate()
        proc.wait(timeout=5)

    assert CARD in log.read_text()  # the incident: the service really logged it
    findings = scan_logs([log])
    by_code = {f.code: f for f in findings}
    assert set(by_code) == {"logs.card-number", "logs.email"}  # order ids are not cards
    card, email = by_code["logs.card-number"], by_code["logs.email"]
    assert card.evidence["masked"] == "************1111" and card.evidence["count"] == 3
    assert email.evidence["masked"] == "m***@example.com" and email.evidence["count"] == 3
    assert card.location is not None and card.location.file == str(log)
    assert card.location.line == 1 and card.evidence["lines"] == [1, 2, 3]

    output = json.dumps([f.to_dict() for f in findings]) + "".join(map(str, findings))
    assert CARD not in output and CARD[-8:] not in output
    assert EMAIL not in output and "maria" not in output

    assert scan_responses(replies) == []  # the responses themselves do not echo the data


def test_a_card_number_in_the_logs_makes_it_no_go_without_echoing_the_number(
    make_project: ProjectFactory,
) -> None:
    """A release whose service logs card numbers during its staging bake is NO-GO for
    production: the log gate names the file and line, and never shows the number."""
    project = make_project(
        {"web": {"config": {"VERSION": "w-1", "LOG_CARD": CARD}}},
        environments={"staging": {}, "production": {}},
        gates={"bake": "0.5s", "ready_timeout": "5s", "logs": {}},
    )
    api.build(project, "v1")
    staging = api.deploy(project, "staging")
    httpx.get(staging.endpoints["web"] + "/")

    result = airlock("gonogo", "production", "--format", "json", cwd=project)

    assert result.returncode == 1, result.stderr
    data = json.loads(result.stdout)
    assert data["verdict"] == "NO-GO"
    logs = next(g for g in data["gates"] if g["gate"] == "logs")
    assert logs["status"] == "fail"
    card = next(f for f in logs["findings"] if f["code"] == "logs.card-number")
    assert card["location"]["file"].endswith("envs/staging/logs/web.log")
    assert isinstance(card["location"]["line"], int) and card["location"]["line"] > 1
    assert CARD not in result.stdout + result.stderr
    for path in data["files"].values():
        assert CARD not in Path(path).read_text()
