"""How fast and how complete is the committed-secret scanner? Compared with detect-secrets.

    python benchmarks/secret_scan.py --commits 2000 [--seed 7] [--workers N]

Builds, in a temporary folder and with ``git fast-import``, a repository of N commits (about
50 MB of unique text at N = 2,000: Python, JavaScript, YAML, JSON, lockfiles, SQL, Markdown,
Dockerfiles, .env examples, changelogs) written by a seeded generator. The text is full of what
trips secret scanners: hash digests in lockfiles and image references, git SHAs, UUIDs, data
URIs, ``password = os.environ[...]``, ``${DB_PASSWORD}``, ``<your-key>``, ``changeme``.
Secrets of every kind the scanner knows are planted along the way, some inside function calls,
some removed by a later commit, one on a branch that was never merged.

Prints one JSON object: the scanner's speed over the whole history (``mb`` is the size of the
unique blobs it scanned), its recall (planted secrets found, by fingerprint and path) and its
false positives (findings that are not a planted secret); then the same for detect-secrets'
CLI (``detect-secrets scan`` on the final working tree, as it cannot read history), or ``null``
with a note when detect-secrets is not installed (``pip install detect-secrets``). Recall and
false positives on the final working tree are given for both, so they compare like for like.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import random
import re
import shutil
import string
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from airlock.checks.leaks import KINDS, scan_repository, scan_text
from airlock.checks.secret_formats import FORMAT_KINDS, FORMATS, sample

TARGET_BYTES_PER_COMMIT = 21 * 2**10  # about 50 MB of unique blobs at 2,000 commits
START = 1_640_995_200  # 2022-01-01
AUTHORS = [("Ana Lima", "ana"), ("Ben Okafor", "ben"), ("Chen Wei", "chen"), ("Dora Novak", "dora")]

_WORDS = (
    "account address admin alert amount api app archive audit backend balance batch billing "
    "bucket build cache cart catalog channel check client cluster config connection consumer "
    "context count customer dashboard data database default delivery deploy device discount "
    "document domain email endpoint entry error event export feature field file filter flag "
    "form gateway group handler header health history image import index inventory invoice "
    "item job key label layout ledger limit list loader log manager message metric migration "
    "model module monitor node notification offset order owner package page parser partner "
    "payload payment period plan policy pool price product profile project queue quota "
    "range rate reader record region report request resource response result retry role "
    "route rule schedule schema scope search server service session setting shipment signal "
    "snapshot source state status storage store stream subscription summary supplier sync "
    "table target task template tenant ticket timeout trace tracker transfer update upload "
    "usage user value vendor version view warehouse webhook worker"
)
WORDS = _WORDS.split()
_PROSE = (
    "the this that with from when then only each every must should will can may not also into "
    "over after before while because which where there their other more most some such than "
    "very just about again first last next new old same own both few many"
)
PROSE = _PROSE.split()


def b64(rng: random.Random, n: int, alphabet: str = string.ascii_letters + string.digits) -> str:
    return "".join(rng.choice(alphabet) for _ in range(n))


def hexs(rng: random.Random, n: int) -> str:
    return "".join(rng.choice("0123456789abcdef") for _ in range(n))


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


# -- ordinary text -----------------------------------------------------------------------------


class Text:
    """Blocks of realistic-looking lines for each kind of file."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def word(self) -> str:
        return self.rng.choice(WORDS)

    def ident(self, parts: int = 2) -> str:
        return "_".join(self.word() for _ in range(parts))

    def camel(self) -> str:
        first, second = self.word(), self.word()
        return first + second.capitalize()

    def sentence(self, n: int = 12) -> str:
        words = [self.rng.choice(WORDS if self.rng.random() < 0.5 else PROSE) for _ in range(n)]
        return " ".join(words).capitalize() + "."

    def python(self) -> list[str]:
        r, name = self.rng, self.ident()
        lines = [f"def {name}({self.word()}: {self.word().capitalize()}, *, limit: int = 100):"]
        lines.append(f'    """{self.sentence(10)}"""')
        ordinary: list[Callable[[], str]] = [
            lambda: (
                f"    {self.ident()} = {self.word()}.{self.ident()}({self.word()}, "
                f"timeout={r.randint(1, 60)})"
            ),
            lambda: f'    logger.info("{self.sentence(6)} %s", {self.word()}.id)',
            lambda: f"    if {self.word()}.{self.word()} is None:",
            lambda: f"        raise {self.camel().capitalize()}Error(f'{self.word()} missing')",
            lambda: f"    for {self.word()} in {self.ident()}[:limit]:",
            lambda: f"        {self.ident()}.append({self.word()}.{self.ident()})",
            lambda: f"    {self.ident()}_count = len({self.ident()})",
            lambda: f'    cache_key = f"{self.word()}:{{{self.word()}.id}}"',
            lambda: f'    request_id = "{self.uuid()}"',
            lambda: f'    expected_digest = "{hexs(r, 64)}"',
            lambda: f"    # {self.sentence(8)}",
            lambda: f"    return {self.word()}",
        ]
        # Lines that name secrets without holding one: what keyword scanners trip on.
        sensitive: list[Callable[[], str]] = [
            lambda: '    password = os.environ["DB_PASSWORD"]',
            lambda: '    token = request.headers.get("Authorization", "").removeprefix("Bearer ")',
            lambda: "    api_key = settings.STRIPE_API_KEY",
            lambda: '    secret_key = config("SECRET_KEY", default=None)',
            lambda: f"    token_ttl = {r.choice([300, 3600, 86400])}",
            lambda: '    auth_method = "client_secret_basic"',
            lambda: '    token_endpoint = "https://oauth2.example.org/token"',
            lambda: f'    secret_name = "prod/{self.word()}-password-v{r.randint(1, 9)}"',
            lambda: "    if not check_password(password, user.password_hash):",
        ]
        for _ in range(r.randint(8, 22)):
            pool = sensitive if r.random() < 0.06 else ordinary
            lines.append(r.choice(pool)())
        lines.append("")
        return lines

    def uuid(self) -> str:
        h = hexs(self.rng, 32)
        return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-a{h[17:20]}-{h[20:]}"

    def javascript(self) -> list[str]:
        r = self.rng
        lines = [f"export async function {self.camel()}({self.word()}, options = {{}}) {{"]
        choices: list[Callable[[], str]] = [
            lambda: f"  const {self.camel()} = await fetch(`/api/{self.word()}/${{id}}`);",
            lambda: (
                "  const authHeader = `Bearer ${token}`;"
                if r.random() < 0.2
                else f"  const {self.camel()} = new Map();"
            ),
            lambda: (
                '  const token = localStorage.getItem("accessToken");'
                if r.random() < 0.2
                else f"  await {self.camel()}.flush();"
            ),
            lambda: f"  if (!{self.camel()}.ok) throw new Error('{self.sentence(5)}');",
            lambda: f"  {self.camel()}.push({{ id: {self.word()}.id, {self.word()}: true }});",
            lambda: f"  const {self.camel()} = {r.randint(0, 5000)};",
            lambda: f"  // {self.sentence(9)}",
            lambda: (
                "  const apiKey = process.env.MAPS_API_KEY;"
                if r.random() < 0.2
                else f"  {self.camel()}.set({self.word()}.id, {self.word()});"
            ),
            lambda: f"  return {self.camel()}.map((x) => x.{self.word()});",
        ]
        lines.extend("  " + r.choice(choices)().lstrip() for _ in range(r.randint(6, 18)))
        lines += ["}", ""]
        return lines

    def yaml(self) -> list[str]:
        r, name = self.rng, self.word()
        return [
            "---",
            "apiVersion: apps/v1",
            "kind: Deployment",
            f"metadata:\n  name: {name}-{self.word()}\n  labels:\n    app: {name}",
            "spec:",
            f"  replicas: {r.randint(1, 6)}",
            "  template:\n    spec:\n      containers:",
            f"        - name: {name}",
            f"          image: registry.example.org/{name}@sha256:{hexs(r, 64)}",
            "          env:",
            *(
                [
                    "            - name: DATABASE_PASSWORD",
                    "              valueFrom:",
                    f"                secretKeyRef: {{name: {name}-secrets, key: db-password}}",
                    "            - name: API_TOKEN\n              value: ${API_TOKEN}",
                ]
                if r.random() < 0.3
                else [
                    f"            - name: {self.word().upper()}_URL\n              value: /{name}"
                ]
            ),
            f"          resources: {{limits: {{cpu: {r.randint(1, 4)}00m, memory: 512Mi}}}}",
            "",
        ]

    def compose(self) -> list[str]:
        name = self.word()
        return [
            f"  {name}:",
            f"    image: postgres:{self.rng.randint(12, 17)}",
            "    environment:",
            "      POSTGRES_PASSWORD: ${POSTGRES_PASSWORD}",
            f"      DATABASE_URL: postgres://{name}:${{DB_PASSWORD}}@db:5432/{name}",
            "      REDIS_URL: redis://cache:6379/0",
            f"    healthcheck: {{test: [CMD, pg_isready], interval: {self.rng.randint(2, 30)}s}}",
            "",
        ]

    def markdown(self) -> list[str]:
        r = self.rng
        lines = [f"## {self.word().capitalize()} {self.word()}", ""]
        lines += [self.sentence(r.randint(10, 24)) for _ in range(r.randint(2, 5))]
        extras = [
            ["", "```bash", "export API_KEY=<your-api-key>", "airlock deploy staging", "```"],
            ["", "Connect with `postgres://user:password@localhost:5432/app`."],
            ["", '```bash\ncurl -H "Authorization: Bearer $TOKEN" https://api.example.org/v1\n```'],
            ["", "Set `GITHUB_TOKEN=ghp_xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx` in CI."],
            ["", f"See commit {hexs(r, 40)} for the details."],
            ["", "| setting | default |", "|---|---|", "| `token_ttl` | 3600 |"],
        ]
        lines += r.choice(extras)
        lines.append("")
        return lines

    def package_lock(self) -> list[str]:
        name = f"{self.word()}-{self.word()}"
        version = f"{self.rng.randint(0, 9)}.{self.rng.randint(0, 30)}.{self.rng.randint(0, 9)}"
        digest = base64.b64encode(self.rng.randbytes(64)).decode()
        return [
            f'    "node_modules/{name}": {{',
            f'      "version": "{version}",',
            f'      "resolved": "https://registry.npmjs.org/{name}/-/{name}-{version}.tgz",',
            f'      "integrity": "sha512-{digest}",',
            '      "dev": true',
            "    },",
        ]

    def requirements(self) -> list[str]:
        name = f"{self.word()}-{self.word()}"
        return [
            f"{name}=={self.rng.randint(0, 9)}.{self.rng.randint(0, 30)} \\",
            f"    --hash=sha256:{hexs(self.rng, 64)} \\",
            f"    --hash=sha256:{hexs(self.rng, 64)}",
        ]

    def sql(self) -> list[str]:
        table = self.ident()
        cols = [
            f"    {self.word()}_{self.word()} text NOT NULL," for _ in range(self.rng.randint(3, 9))
        ]
        return [
            f"CREATE TABLE {table} (",
            "    id bigint PRIMARY KEY,",
            *cols,
            *(["    password_hash text NOT NULL,"] if self.rng.random() < 0.2 else []),
            "    created_at timestamptz NOT NULL DEFAULT now()",
            ");",
            f"CREATE INDEX {table}_idx ON {table} (created_at);",
            "",
        ]

    def changelog(self) -> list[str]:
        r = self.rng
        return [
            f"## {r.randint(1, 4)}.{r.randint(0, 40)}.{r.randint(0, 9)}",
            "",
            *(f"- {self.sentence(8)} ({hexs(r, 12)})" for _ in range(r.randint(2, 6))),
            "",
        ]

    def dockerfile(self) -> list[str]:
        return [
            f"FROM python:3.12-slim@sha256:{hexs(self.rng, 64)}",
            "ARG PIP_INDEX_URL",
            "ENV PYTHONDONTWRITEBYTECODE=1 APP_SECRET_FILE=/run/secrets/app",
            f"COPY {self.word()}/ /app/{self.word()}/",
            "RUN pip install --no-cache-dir -r requirements.txt",
            "",
        ]

    def env_example(self) -> list[str]:
        return [
            f"{self.word().upper()}_API_KEY=<your-api-key>",
            "DB_PASSWORD=changeme",
            "SECRET_KEY=",
            f"{self.word().upper()}_TOKEN=${{VAULT_TOKEN}}",
            f"{self.word().upper()}_TIMEOUT={self.rng.randint(1, 90)}",
        ]

    def css(self) -> list[str]:
        r = self.rng
        lines = [f".{self.word()}-{self.word()} {{"]
        lines += [f"  color: #{hexs(r, 6)};", f"  margin: {r.randint(0, 32)}px;"]
        if r.random() < 0.15:
            data = b64(r, 120, string.ascii_letters + "+/")
            lines.append(f"  background: url(data:image/png;base64,{data});")
        lines += ["}", ""]
        return lines

    def json_fixture(self) -> list[str]:
        r = self.rng
        return [
            "  {",
            f'    "id": "{self.uuid()}",',
            f'    "{self.word()}": "{self.sentence(4)}",',
            f'    "checksum": "{hexs(r, 32)}",',
            f'    "etag": "W/\\"{b64(r, 27)}\\"",',
            f'    "{self.word()}_type": "{self.word()}", "expires_in": {r.choice([3600, 7200])},',
            f'    "created_at": "2023-0{r.randint(1, 9)}-1{r.randint(0, 9)}T10:00:00Z"',
            "  },",
        ]


KINDS_BY_EXT: dict[str, Callable[[Text], list[str]]] = {
    ".py": Text.python,
    ".js": Text.javascript,
    ".yaml": Text.yaml,
    ".yml": Text.compose,
    ".md": Text.markdown,
    "package-lock.json": Text.package_lock,
    "requirements.txt": Text.requirements,
    ".sql": Text.sql,
    "CHANGELOG.md": Text.changelog,
    "Dockerfile": Text.dockerfile,
    ".env.example": Text.env_example,
    ".css": Text.css,
    ".json": Text.json_fixture,
}


def generator_for(path: str) -> Callable[[Text], list[str]]:
    name = path.rsplit("/", 1)[-1]
    if name in KINDS_BY_EXT:
        return KINDS_BY_EXT[name]
    return KINDS_BY_EXT["." + name.rsplit(".", 1)[-1]]


# -- planted secrets ---------------------------------------------------------------------------


@dataclass
class Plant:
    """A secret put into one file by one commit (and maybe taken out by a later one)."""

    kind: str
    value: str
    lines: list[str]
    path: str = ""
    commit: int = 0
    removed_at: int | None = None

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(self.value.encode()).hexdigest()


def planted(rng: random.Random, kind: str, variant: int) -> Plant:
    """A fresh random secret of ``kind`` written the ``variant``-th way (calls, config …)."""
    upper = string.ascii_uppercase + "234567"
    alnum = string.ascii_letters + string.digits
    if kind == "aws-access-key-id":
        v = "AKIA" + b64(rng, 16, upper)
        forms = [
            f'AWS_ACCESS_KEY_ID = "{v}"',
            f"aws_access_key_id: {v}",
            f's3 = boto3.client("s3", aws_access_key_id="{v}")',
        ]
    elif kind == "aws-secret-access-key":
        v = b64(rng, 40, alnum + "/+")
        forms = [
            f"aws_secret_access_key = {v}",
            f'AWS_SECRET_ACCESS_KEY="{v}"',
            f'session = Session(aws_secret_access_key="{v}")',
        ]
    elif kind == "stripe-live-key":
        v = rng.choice(["sk_live_", "rk_live_"]) + b64(rng, rng.choice([24, 99]))
        forms = [f'stripe.api_key = "{v}"', f'client = Stripe("{v}")', f"STRIPE_SECRET_KEY={v}"]
    elif kind == "stripe-test-key":
        v = "sk_test_" + b64(rng, 24)
        forms = [f'stripe.api_key = "{v}"', f"  stripe_key: {v}"]
    elif kind == "twilio-auth-token":
        v = hexs(rng, 32)
        sid = "AC" + hexs(rng, 32)
        forms = [f'client = Client("{sid}", "{v}")', f'TWILIO_AUTH_TOKEN = "{v}"']
    elif kind == "twilio-api-key":
        v = "SK" + hexs(rng, 32)
        forms = [f'twilio_api_key = "{v}"', f'client = Client("{v}", api_secret, account_sid)']
    elif kind == "sendgrid-api-key":
        v = f"SG.{b64(rng, 22, alnum + '-_')}.{b64(rng, 43, alnum + '-_')}"
        forms = [f'sg = SendGridAPIClient("{v}")', f"SENDGRID_API_KEY={v}"]
    elif kind == "github-token":
        v = rng.choice(["ghp_", "gho_", "ghs_"]) + b64(rng, 36)
        if variant == 2:
            v = f"github_pat_{b64(rng, 22)}_{b64(rng, 59)}"
        forms = [f'gh = Github("{v}")', f"GITHUB_TOKEN={v}", f'    "token": "{v}",']
    elif kind == "slack-token":
        v = f"xoxb-{rng.randint(10**9, 10**12)}-{rng.randint(10**9, 10**12)}-{b64(rng, 24)}"
        forms = [f'slack = WebClient(token="{v}")', f"SLACK_BOT_TOKEN={v}"]
    elif kind == "slack-webhook":
        team, channel = b64(rng, 8, upper), b64(rng, 8, upper)
        v = f"https://hooks.slack.com/services/T{team}/B{channel}/{b64(rng, 24)}"
        forms = [f'requests.post("{v}", json={{"text": msg}})', f"  webhook_url: {v}"]
    elif kind == "google-api-key":
        v = "AIza" + b64(rng, 35, alnum + "-_")
        forms = [f'gmaps = googlemaps.Client(key="{v}")', f'const MAPS_KEY = "{v}";']
    elif kind == "private-key":
        body = base64.b64encode(rng.randbytes(48 * 20)).decode()
        v = body
        rows = [body[i : i + 64] for i in range(0, len(body), 64)]
        forms = [
            "\n".join(["-----BEGIN RSA PRIVATE KEY-----", *rows, "-----END RSA PRIVATE KEY-----"])
        ]
    elif kind == "jwt":
        header = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
        payload = b64url(
            json.dumps({"sub": str(rng.randint(1, 10**6)), "iat": 1700000000}).encode()
        )
        v = f"{header}.{payload}.{b64url(rng.randbytes(32))}"
        forms = [
            f'EXPIRED_TOKEN = "{v}"',
            f'resp = client.get("/me", headers={{"Authorization": "Bearer {v}"}})',
        ]
    elif kind == "database-url":
        v = b64(rng, 18)
        scheme, user = rng.choice(
            [
                ("postgres", "app"),
                ("mysql", "shop"),
                ("mongodb+srv", "svc"),
                ("redis", "default"),
                ("amqp", "worker"),
            ]
        )
        forms = [
            f"DATABASE_URL={scheme}://{user}:{v}@db.internal.example.org:5432/main",
            f'engine = create_engine("{scheme}://{user}:{v}@10.0.3.7/main")',
        ]
    elif kind in FORMAT_KINDS:
        shapes = [shape for fmt in FORMATS if fmt.kind == kind for shape in fmt.shapes]
        v = sample(rng.choice(shapes), rng)
        name = kind.upper().replace("-", "_")
        forms = [f'{name} = "{v}"', f"  {kind}: {v}", f'    "{kind}": "{v}",']
    else:  # generic-secret
        v = b64(rng, rng.choice([16, 24, 32]), alnum + "!#%^*-_")
        while not any(c.isdigit() for c in v):
            v = b64(rng, len(v), alnum)
        forms = [
            f'client = ApiClient(api_key="{v}")',
            f"conn = login(user, password='{v}')",
            f"DB_PASSWORD={v}",
            f'    "client_secret": "{v}",',
            f"  auth_token: {v}",
        ]
    return Plant(kind, v, forms[variant % len(forms)].split("\n"))


PLANT_KINDS = [
    ("aws-access-key-id", 3),
    ("aws-secret-access-key", 3),
    ("stripe-live-key", 3),
    ("stripe-test-key", 2),
    ("twilio-auth-token", 2),
    ("twilio-api-key", 2),
    ("sendgrid-api-key", 2),
    ("github-token", 3),
    ("slack-token", 2),
    ("slack-webhook", 2),
    ("google-api-key", 2),
    ("private-key", 2),
    ("jwt", 2),
    ("database-url", 4),
    ("generic-secret", 6),
    ("gitlab-token", 1),
    ("openai-api-key", 1),
    ("anthropic-api-key", 1),
    ("npm-token", 1),
    ("pypi-token", 1),
    ("huggingface-token", 1),
    ("age-secret-key", 1),
    ("telegram-bot-token", 1),
]


# -- the per-family corpus ---------------------------------------------------------------------
#
# Fake keys of every documented format (``secret_formats.FORMATS``), drawn from a seeded RNG with
# valid checksums where the format has one, each written the ways real files hold keys; and
# texts that look like keys but are not. Scanned with ``scan_text``, one text at a time.

CONTEXTS: list[tuple[str, Callable[[str, str], str]]] = [
    (".env", lambda name, v: f"# {name.lower()} for the worker\n{name}={v}\n"),
    ("settings.py", lambda name, v: f'import os\n\n{name} = os.environ.get("{name}", "{v}")\n'),
    ("client.js", lambda name, v: f'const client = new Client({{ auth: "{v}" }});\n'),
    ("config.json", lambda name, v: f'{{\n  "service": "billing",\n  "credentials": "{v}"\n}}\n'),
    ("deploy.yaml", lambda name, v: f"env:\n  - name: {name}\n    value: {v}\n"),
    ("app.ini", lambda name, v: f"[upstream]\nhost = api.internal\nkey = {v}\n"),
    ("notes.md", lambda name, v: f"Run it with `curl -H 'X-Key: {v}' https://api.internal/`.\n"),
]
MIXED_CASE_RUN = "AsDfGhJk"
_LONG_FIELD = re.compile(r"\{(b62|url|b64|alpha):(\d+)\}")


def with_mixed_case_run(shape: str) -> str | None:
    """``shape`` with a keyboard run in mixed case inside its first long random field."""
    m = next((m for m in _LONG_FIELD.finditer(shape) if int(m.group(2)) >= 16), None)
    if m is None:
        return None
    rest = int(m.group(2)) - len(MIXED_CASE_RUN) - 4
    return (
        f"{shape[: m.start()]}{{{m.group(1)}:4}}{MIXED_CASE_RUN}{{{m.group(1)}:{rest}}}"
        + (shape[m.end() :])
    )


def true_positives(seed: int) -> list[tuple[str, str, str, str]]:
    """(family, path, text, value): every format's shapes, in every context, plus one key of
    each format with a mixed-case keyboard run in its random part."""
    rng = random.Random(seed)
    cases = []
    for fmt in FORMATS:
        name = fmt.kind.upper().replace("-", "_")
        lead = f"# {fmt.context[0].decode()}\n" if fmt.context else ""
        shapes = list(fmt.shapes)
        mixed = [m for m in map(with_mixed_case_run, shapes) if m]
        for shape in shapes + mixed[:1]:
            for path, context in CONTEXTS:
                value = sample(shape, rng)
                secret = re.search(fmt.pattern, value.encode())  # the secret in the sample
                key = secret["v"].decode() if secret and "v" in secret.re.groupindex else value
                cases.append((fmt.kind, path, lead + context(name, value), key))
    return cases


def false_positives(seed: int) -> list[tuple[str, str]]:
    """(path, text): what looks like a key and is not, as it appears in real files."""
    rng = random.Random(seed)
    text = Text(rng)
    out: list[tuple[str, str]] = []
    for _ in range(40):
        out.append(("src/app/hashes.py", f'DIGESTS = ["{hexs(rng, 64)}", "{hexs(rng, 40)}"]\n'))
        out.append(("db/fixtures.json", f'{{"id": "{text.uuid()}", "etag": "{hexs(rng, 32)}"}}\n'))
        image = base64.b64encode(rng.randbytes(300)).decode()
        out.append(
            ("web/logo.css", f".logo {{ background: url(data:image/png;base64,{image}); }}\n")
        )
        out.append(("package-lock.json", "\n".join(text.package_lock()) + "\n"))
        out.append(("requirements.txt", "\n".join(text.requirements()) + "\n"))
        out.append(("CHANGELOG.md", "\n".join(text.changelog()) + "\n"))
        out.append(("deploy/app.yaml", "\n".join(text.yaml()) + "\n"))
        out.append(("src/app/view.py", "\n".join(text.python()) + "\n"))
        sri = base64.b64encode(rng.randbytes(48)).decode()
        out.append(("web/index.html", f'<script src="app.js" integrity="sha384-{sri}"></script>\n'))
        out.append(
            (
                "go.sum",
                f"example.org/mod v1.2.3 h1:{base64.b64encode(rng.randbytes(32)).decode()}\n",
            )
        )
    placeholders = [
        "GITHUB_TOKEN=ghp_xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
        "GITLAB_TOKEN=glpat-xxxxxxxxxxxxxxxxxxxx",
        "OPENAI_API_KEY=sk-proj-your-key-here",
        'ANTHROPIC_API_KEY="sk-ant-api03-<your-key>"',
        "SLACK_APP_TOKEN=xapp-1-XXXXXXXXXXX-0000000000000-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
        "SLACK_BOT_TOKEN=xoxb-your-bot-token",
        "STRIPE_SECRET_KEY=sk_live_************************",
        "NPM_TOKEN=npm_<TOKEN>",
        "HF_TOKEN=hf_your_token_here",
        "PYPI_TOKEN=pypi-<your-token>",
        "DOCKERHUB_TOKEN=dckr_pat_XXXXXXXXXXXXXXXXXXXXXXXXXXX",
        "SENTRY_AUTH_TOKEN=sntrys_YOUR_TOKEN_HERE",
        "LINEAR_API_KEY=lin_api_0000000000000000000000000000000000000000",
        "DO_TOKEN=dop_v1_" + "0" * 64,
        "age: AGE-SECRET-KEY-1QQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQ",
        "VAULT_TOKEN=hvs.<token>",
        "DATABRICKS_TOKEN=dapi" + "x" * 32,
        "export TF_TOKEN=xxxxxxxxxxxxxx.atlasv1." + "x" * 67,
        "TELEGRAM_TOKEN=123456789:AAxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
        "GRAFANA_TOKEN=glsa_xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx_xxxxxxxx",
        "Use `https://user:password@proxy.example.org:3128` as the proxy.",
        'auth = "Bearer <TOKEN>"',
    ]
    out.extend(("docs/setup.md", f"```bash\n{line}\n```\n") for line in placeholders)
    # documentation examples that show a format with a made-up, obviously fake value
    docs = [
        "Tokens look like `ghp_` and 36 characters: `ghp_abcdefghijklmnopqrstuvwxyz0123456789`.",
        "A Slack webhook: "
        "`https://hooks.slack.com/services/T00000000/B00000000/XXXXXXXXXXXXXXXXXXXXXXXX`.",
        "The key id is `AKIAIOSFODNN7EXAMPLE`, "
        "the secret `wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY`.",
        "Set `OPENAI_API_KEY` (it starts with `sk-`) in your shell.",
        "JWTs have three parts: `header.payload.signature`.",
    ]
    out.extend(("docs/tokens.md", line + "\n") for line in docs)
    return out


def corpus(scan: Callable[..., Any] = scan_text, seed: int = 7) -> dict[str, Any]:
    """Recall and false positives per family on the corpus (``scan`` is ``scan_text``)."""
    per: dict[str, dict[str, int]] = {}
    positives = true_positives(seed)
    mixed = [0, 0]  # planted, found
    for family, path, text, value in positives:
        row = per.setdefault(family, {"planted": 0, "found": 0, "false_positives": 0})
        row["planted"] += 1
        mixed[0] += MIXED_CASE_RUN in value
        hits = scan(text, path=path)
        if any(hit.value == value for hit in hits):
            row["found"] += 1
            mixed[1] += MIXED_CASE_RUN in value
        row["false_positives"] += sum(1 for hit in hits if hit.value not in value)
    negatives = false_positives(seed)
    fp_kinds: dict[str, int] = {}
    for path, text in negatives:
        for hit in scan(text, path=path):
            fp_kinds[hit.kind] = fp_kinds.get(hit.kind, 0) + 1
    for kind, count in fp_kinds.items():
        per.setdefault(kind, {"planted": 0, "found": 0, "false_positives": 0})
        per[kind]["false_positives"] += count
    found = sum(row["found"] for row in per.values())
    return {
        "corpus_families": len({fmt.kind for fmt in FORMATS}),
        "corpus_planted": len(positives),
        "corpus_recall": round(found / max(len(positives), 1), 3),
        "corpus_negative_texts": len(negatives),
        "corpus_false_positives": sum(row["false_positives"] for row in per.values()),
        "corpus_mixed_case_run_planted": mixed[0],
        "corpus_mixed_case_run_found": mixed[1],
        "corpus_per_family": {
            kind: {
                **row,
                "recall": round(row["found"] / row["planted"], 3) if row["planted"] else None,
            }
            for kind, row in sorted(per.items())
        },
        "corpus_unknown_kinds": sorted(set(per) - set(KINDS)),
    }


# -- the repository ----------------------------------------------------------------------------


@dataclass
class Repo:
    rng: random.Random
    files: dict[str, list[str]] = field(default_factory=dict)
    plants: list[Plant] = field(default_factory=list)

    def protected(self, path: str) -> list[range]:
        """Line ranges of the secrets planted in ``path``: edits leave them alone."""
        lines = self.files[path]
        found = (block(lines, p) for p in self.plants if p.path == path)
        return [r for r in found if r is not None]

    def edit(self, path: str, text: Text) -> None:
        """Delete a block of lines (sometimes) and insert a new one, never inside a secret."""
        lines, generate = self.files[path], generator_for(path)
        if len(lines) > 500 or (lines and self.rng.random() < 0.35):
            start = self.rng.randrange(len(lines))
            end = min(len(lines), start + self.rng.randint(5, 40))
            if not any(start < r.stop and r.start < end for r in self.protected(path)):
                del lines[start:end]
        keep = self.protected(path)
        at = self.rng.randint(0, len(lines))
        while any(r.start < at < r.stop for r in keep):
            at = self.rng.randint(0, len(lines))
        lines[at:at] = generate(text)

    def content(self, path: str) -> bytes:
        return ("\n".join(self.files[path]) + "\n").encode()


def block(lines: list[str], plant: Plant) -> range | None:
    """Where ``plant``'s lines are in ``lines`` (found by the line holding its value)."""
    needle = plant.value[:30]
    offset = next((k for k, line in enumerate(plant.lines) if needle in line), 0)
    for n, line in enumerate(lines):
        if needle in line:
            return range(n - offset, n - offset + len(plant.lines))
    return None


FOLDERS = {
    "src/app": ".py",
    "src/app/api": ".py",
    "src/app/billing": ".py",
    "web/src": ".js",
    "deploy": ".yaml",
    "docs": ".md",
    "db/migrations": ".sql",
    "tests/fixtures": ".json",
    "web/styles": ".css",
    "ops": ".yml",
}


def new_path(rng: random.Random, index: int) -> str:
    folder = rng.choice(list(FOLDERS))
    return f"{folder}/{rng.choice(WORDS)}_{index}{FOLDERS[folder]}"


def build(repo_dir: Path, commits: int, seed: int) -> list[Plant]:
    """Write the repository with ``git fast-import``; return the planted secrets."""
    rng = random.Random(seed)
    text = Text(rng)
    repo = Repo(rng)
    for fixed in (
        "package-lock.json",
        "requirements.txt",
        "CHANGELOG.md",
        "Dockerfile",
        ".env.example",
    ):
        repo.files[fixed] = []
    for i in range(60):
        repo.files[new_path(rng, i)] = []
    for path in repo.files:
        for _ in range(rng.randint(3, 8)):
            repo.files[path] += generator_for(path)(text)

    todo = [planted(rng, kind, v) for kind, n in PLANT_KINDS for v in range(n)]
    for plant in todo:
        plant.commit = rng.randrange(1, max(2, commits - 2))
        if rng.random() < 0.35:
            plant.removed_at = rng.randrange(plant.commit + 1, max(plant.commit + 2, commits))
    by_commit: dict[int, list[Plant]] = {}
    for plant in todo:
        by_commit.setdefault(plant.commit, []).append(plant)
    removals: dict[int, list[Plant]] = {}
    for plant in todo:
        if plant.removed_at is not None:
            removals.setdefault(plant.removed_at, []).append(plant)
    # One secret lives only on a branch that was never merged.
    stray = planted(rng, "generic-secret", 1)

    subprocess.run(["git", "init", "-q", "-b", "main", str(repo_dir)], check=True)
    proc = subprocess.Popen(["git", "fast-import", "--quiet"], cwd=repo_dir, stdin=subprocess.PIPE)
    assert proc.stdin is not None
    out = proc.stdin
    period = (730 * 86400) // max(commits, 1)

    def commit(
        ref: str,
        index: int,
        mark: int,
        parent: int | None,
        changes: list[str],
        merge: int | None = None,
    ) -> None:
        name, login = AUTHORS[index % len(AUTHORS)]
        when = START + index * period
        message = f"{text.sentence(6)}\n".encode()
        out.write(f"commit {ref}\nmark :{mark}\n".encode())
        for role in ("author", "committer"):
            out.write(f"{role} {name} <{login}@example.org> {when} +0000\n".encode())
        out.write(f"data {len(message)}\n".encode() + message)
        if parent is not None:
            out.write(f"from :{parent}\n".encode())
        if merge is not None:
            out.write(f"merge :{merge}\n".encode())
        for path in changes:
            if path.startswith("D "):
                out.write(f"{path}\n".encode())
                continue
            data = repo.content(path)
            out.write(f"M 100644 inline {path}\ndata {len(data)}\n".encode() + data + b"\n")

    mark, parent = 1, None
    next_file = 60
    for index in range(commits):
        changed: set[str] = set()
        if index == 0:
            changed = set(repo.files)
        else:
            budget = TARGET_BYTES_PER_COMMIT * rng.uniform(0.5, 1.5)
            while budget > 0:
                if rng.random() < 0.03:
                    path = new_path(rng, next_file)
                    next_file += 1
                    repo.files[path] = generator_for(path)(text) * 3
                else:
                    path = rng.choice(list(repo.files))
                    repo.edit(path, text)
                changed.add(path)
                budget -= len(repo.content(path))
        for plant in by_commit.get(index, []):
            candidates = [
                p
                for p in repo.files
                if p.endswith((".py", ".js", ".yaml", ".yml", ".md", ".json"))
                and p != "package-lock.json"
            ]
            plant.path = rng.choice(candidates)
            lines = repo.files[plant.path]
            keep = repo.protected(plant.path)
            at = rng.randint(0, len(lines))
            while any(r.start < at < r.stop for r in keep):
                at = rng.randint(0, len(lines))
            lines[at:at] = plant.lines
            repo.plants.append(plant)
            changed.add(plant.path)
        for plant in removals.get(index, []):
            where = block(repo.files[plant.path], plant)
            if where is not None:
                del repo.files[plant.path][where.start : where.stop]
            changed.add(plant.path)
        commit("refs/heads/main", index, mark, parent, sorted(changed))
        parent, mark = mark, mark + 1
        if index and index % 250 == 0:  # a short feature branch, merged back
            feature = f"feature/{text.word()}-{index}"
            path = f"src/app/{feature.split('/')[1].replace('-', '_')}.py"
            repo.files[path] = text.python() * 4
            commit(f"refs/heads/{feature}", index, mark, parent, [path])
            commit("refs/heads/main", index, mark + 1, parent, [path], merge=mark)
            parent, mark = mark + 1, mark + 2
    stray.path = "src/app/experiment.py"
    repo.files[stray.path] = text.python() + stray.lines
    commit("refs/heads/wip/experiment", commits, mark, parent, [stray.path])
    del repo.files[stray.path]
    repo.plants.append(stray)
    out.close()
    if proc.wait() != 0:
        raise SystemExit("git fast-import failed")
    subprocess.run(["git", "reset", "-q", "--hard", "main"], cwd=repo_dir, check=True)
    return repo.plants


# -- measuring ---------------------------------------------------------------------------------


def in_final_tree(repo_dir: Path, plants: list[Plant]) -> dict[int, tuple[str, int, int]]:
    """Planted secrets still on disk: index -> (path, first line, last line) of their lines."""
    where = {}
    for i, plant in enumerate(plants):
        file = repo_dir / plant.path
        if file.is_file() and (lines := block(file.read_text().splitlines(), plant)):
            where[i] = (plant.path, lines.start + 1, lines.stop)
    return where


def detect_secrets(
    repo_dir: Path, plants: list[Plant], present: dict[int, tuple[str, int, int]]
) -> dict[str, Any]:
    exe = shutil.which("detect-secrets") or str(Path(sys.executable).parent / "detect-secrets")
    if not Path(exe).exists():
        return {
            "baseline_seconds": None,
            "baseline_mb_per_s": None,
            "baseline_recall": None,
            "baseline_false_positives": None,
            "baseline_note": "detect-secrets is not installed: `pip install detect-secrets`",
        }
    files = subprocess.run(
        ["git", "ls-files", "-z"], cwd=repo_dir, capture_output=True, check=True
    ).stdout
    size = sum((repo_dir / p.decode()).stat().st_size for p in files.split(b"\0") if p)
    started = time.perf_counter()
    proc = subprocess.run([exe, "scan"], cwd=repo_dir, capture_output=True, text=True, check=True)
    seconds = time.perf_counter() - started
    results = json.loads(proc.stdout)["results"]
    reported = {(path, r["line_number"]) for path, rows in results.items() for r in rows}
    found, matched = set(), set()
    for i, (path, first, last) in present.items():
        for line in range(first, last + 1):
            if (path, line) in reported:
                found.add(i)
                matched.add((path, line))
    return {
        "baseline_seconds": round(seconds, 2),
        "baseline_mb": round(size / 2**20, 2),
        "baseline_mb_per_s": round(size / 2**20 / seconds, 2),
        "baseline_recall": round(len(found) / len(plants), 3),
        "baseline_recall_in_working_tree": round(len(found) / max(len(present), 1), 3),
        "baseline_false_positives": len(reported - matched),
        "baseline_version": subprocess.run(
            [exe, "--version"], capture_output=True, text=True, check=False
        ).stdout.strip(),
    }


def run(commits: int, seed: int, workers: int | None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="airlock-secrets-bench-") as tmp:
        repo_dir = Path(tmp) / "repo"
        built = time.perf_counter()
        plants = build(repo_dir, commits, seed)
        build_seconds = time.perf_counter() - built

        result = scan_repository(repo_dir, workers=workers)
        planted_keys = {(p.fingerprint, p.path) for p in plants}
        planted_prints = {p.fingerprint for p in plants}
        found_keys = {
            (f.evidence["fingerprint"], f.location.file if f.location else "")
            for f in result.findings
        }
        false_positives = [
            f for f in result.findings if f.evidence["fingerprint"] not in planted_prints
        ]
        present = in_final_tree(repo_dir, plants)
        present_prints = {plants[i].fingerprint for i in present}
        in_tree = [f for f in result.findings if f.evidence["in_working_tree"]]
        mb = result.bytes_scanned / 2**20
        report: dict[str, Any] = {
            "commits": commits,
            "seed": seed,
            "mb": round(mb, 2),
            "blobs": result.blobs_scanned,
            "history_seconds": round(result.seconds, 2),
            "mb_per_s": round(mb / result.seconds, 1),
            "workers": workers or os.cpu_count(),
            "planted": len(plants),
            "planted_in_working_tree": len(present),
            "recall": round(len(planted_keys & found_keys) / len(planted_keys), 3),
            "false_positives": len(false_positives),
            "recall_in_working_tree": round(
                len({f.evidence["fingerprint"] for f in in_tree} & present_prints)
                / max(len(present), 1),
                3,
            ),
            "false_positives_in_working_tree": sum(
                1 for f in in_tree if f.evidence["fingerprint"] not in planted_prints
            ),
            "missed_kinds": sorted(
                {p.kind for p in plants if (p.fingerprint, p.path) not in found_keys}
            ),
            "false_positive_kinds": sorted({str(f.evidence["kind"]) for f in false_positives}),
            "build_seconds": round(build_seconds, 1),
        }
        report.update(detect_secrets(repo_dir, plants, present))
        report.update(corpus(seed=seed))
        return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commits", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--workers", type=int, default=None, help="scanner processes (default: one per core)"
    )
    args = parser.parse_args()
    print(json.dumps(run(args.commits, args.seed, args.workers)))


if __name__ == "__main__":
    main()
