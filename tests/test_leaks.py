"""The committed-secret scanner and its baseline, on texts and on real git repositories."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import re
import string
import subprocess
import zlib
from pathlib import Path

import pytest

from airlock.checks import leaks
from airlock.checks.baseline import (
    BASELINE_PATH,
    default_reviewer,
    filter_findings,
    load_baseline,
    write_baseline,
)
from airlock.checks.leaks import scan_repository, scan_staged, scan_text, scan_working_tree
from airlock.checks.secret_formats import (
    FORMATS,
    KeyFormat,
    bech32_ok,
    crc32_base62_ok,
    sample,
)
from airlock.errors import UsageError

UPPER = string.ascii_uppercase + string.digits
ALNUM = string.ascii_letters + string.digits
HEX = "0123456789abcdef"
GIT_ENV = {
    "GIT_AUTHOR_NAME": "Ana Lima",
    "GIT_AUTHOR_EMAIL": "ana@example.org",
    "GIT_COMMITTER_NAME": "Ana Lima",
    "GIT_COMMITTER_EMAIL": "ana@example.org",
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_CONFIG_NOSYSTEM": "1",
}


def fake(prefix: str, length: int, alphabet: str = ALNUM, *, seed: int = 0) -> str:
    """A made-up secret: ``prefix`` and ``length`` random characters, the same on every run.

    Secrets are assembled at run time so that this file holds no complete key itself.
    """
    rng = random.Random(f"{prefix}/{length}/{alphabet}/{seed}")
    return prefix + "".join(rng.choice(alphabet) for _ in range(length))


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def sha256(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


class GitRepo:
    """A real git repository in a temporary folder, with deterministic authors and dates."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.git("init", "-q", "-b", "main")

    def git(self, *args: str, date: str | None = None) -> str:
        env = {**os.environ, **GIT_ENV}
        if date is not None:
            env["GIT_AUTHOR_DATE"] = env["GIT_COMMITTER_DATE"] = date
        proc = subprocess.run(
            ["git", *args], cwd=self.root, env=env, capture_output=True, text=True, check=True
        )
        return proc.stdout.strip()

    def write(self, path: str, content: str | bytes) -> None:
        file = self.root / path
        file.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            file.write_bytes(content)
        else:
            file.write_text(content)

    def remove(self, path: str) -> None:
        (self.root / path).unlink()

    def commit(self, message: str, date: str) -> str:
        self.git("add", "-A")
        self.git("commit", "-q", "-m", message, date=date)
        return self.git("rev-parse", "HEAD")


@pytest.fixture
def repo(tmp_path: Path) -> GitRepo:
    return GitRepo(tmp_path / "repo")


def private_key(seed: int = 0) -> tuple[str, str]:
    """A PEM block with a random body, and the body (what the scanner fingerprints)."""
    body = base64.b64encode(random.Random(seed).randbytes(600)).decode()
    rows = [body[i : i + 64] for i in range(0, len(body), 64)]
    kind = "RSA PRIVATE KEY"
    return "\n".join([f"-----BEGIN {kind}-----", *rows, f"-----END {kind}-----"]), body


def jwt(header: dict[str, str]) -> str:
    payload = b64url(json.dumps({"sub": "42", "iat": 1700000000}).encode())
    signature = b64url(random.Random(7).randbytes(32))
    return f"{b64url(json.dumps(header).encode())}.{payload}.{signature}"


PEM, PEM_BODY = private_key()
TWILIO_SID = fake("AC", 32, HEX)

# kind, text with a secret of that kind, a near miss that must not be reported
CASES = [
    (
        "aws-access-key-id",
        f'AWS_ACCESS_KEY_ID = "{fake("AKIA", 16, UPPER)}"',
        f'user_id = "{fake("AKIA", 15, UPPER)}"',
    ),
    (
        "aws-secret-access-key",
        f"aws_secret_access_key = {fake('', 40, ALNUM + '/+')}",
        f'aws_commit_sha = "{fake("", 40, HEX)}"',
    ),
    (
        "stripe-live-key",
        f'client = Stripe("{fake("sk_" + "live_", 24)}")',
        f'publishable = "{fake("pk_" + "live_", 24)}"',
    ),
    (
        "stripe-test-key",
        f'stripe.api_key = "{fake("sk_" + "test_", 24)}"',
        f'stripe.api_key = "sk_{"test"}_{"x" * 24}"',
    ),
    (
        "stripe-webhook-secret",
        f"STRIPE_WEBHOOK_SECRET={fake('whsec_', 32)}",
        f'endpoint = "{fake("whsec_", 10)}"',
    ),
    (
        "twilio-auth-token",
        f'client = Client("{TWILIO_SID}", "{fake("", 32, HEX)}")',
        f'client = Client("{TWILIO_SID}", region="ie1")',
    ),
    (
        "twilio-api-key",
        f'key_sid = "{fake("SK", 32, HEX)}"',
        f'key_sid = "{fake("SK", 31, HEX)}"',
    ),
    (
        "sendgrid-api-key",
        f'sg = SendGridAPIClient("{fake("SG.", 22)}.{fake("", 43)}")',
        f'version = "{fake("SG.", 22)}.{fake("", 10)}"',
    ),
    (
        "github-token",
        f'gh = Github("{fake("ghp_", 36)}")',
        f'gh = Github("{fake("ghp_", 20)}")',
    ),
    (
        "github-token",
        f"GH_PAT={fake('github_' + 'pat_', 22)}_{fake('', 59)}",
        "GH_PAT=github_pat_<your-token>",
    ),
    (
        "slack-token",
        f"SLACK_BOT_TOKEN=xoxb-{fake('', 12, string.digits)}-{fake('', 12, string.digits)}-"
        f"{fake('', 24)}",
        "SLACK_BOT_TOKEN=xoxb-your-bot-token-here",
    ),
    (
        "slack-webhook",
        f'url = "https://hooks.slack.com/services/{fake("T", 8, UPPER)}/{fake("B", 8, UPPER)}/'
        f'{fake("", 24)}"',
        'url = "https://hooks.slack.com/services/T000/B000/XXXXXXXXXXXXXXXXXXXXXXXX"',
    ),
    (
        "google-api-key",
        f'gmaps = googlemaps.Client(key="{fake("AIza", 35)}")',
        f'gmaps = googlemaps.Client(key="{fake("AIza", 30)}")',
    ),
    (
        "private-key",
        PEM,
        "-----BEGIN RSA PRIVATE KEY-----\nMIIEow...\n-----END RSA PRIVATE KEY-----",
    ),
    (
        "jwt",
        f'EXPIRED = "{jwt({"alg": "HS256", "typ": "JWT"})}"',
        f'EXPIRED = "{jwt({"typ": "JWT", "kid": "k1"})}"',
    ),
    (
        "database-url",
        f"DATABASE_URL=postgres://app:{fake('', 18)}@db.internal:5432/app",
        "DATABASE_URL=postgres://app:${DB_PASSWORD}@db.internal:5432/app",
    ),
    (
        "generic-secret",
        f'api_key = "{fake("", 24)}"',
        'api_key = os.environ["API_KEY"]',
    ),
    (
        "url-credentials",
        f'PIP_INDEX_URL = "https://deploy:{fake("", 20)}@pypi.internal.example.org/simple"',
        'PIP_INDEX_URL = "https://deploy:${PYPI_PASSWORD}@pypi.internal.example.org/simple"',
    ),
]


@pytest.mark.parametrize(("kind", "positive", "near_miss"), CASES)
def test_each_detector_finds_its_secret_and_not_a_near_miss(
    kind: str, positive: str, near_miss: str
) -> None:
    """Every detector reports its kind of secret and nothing for a look-alike."""
    hits = scan_text(f"# config\n{positive}\n", path="app/settings.py")
    assert kind in {hit.kind for hit in hits}
    assert all(hit.line >= 2 for hit in hits)
    assert scan_text(f"# config\n{near_miss}\n", path="app/settings.py") == []


def test_every_kind_has_a_case() -> None:
    """The detector table above and the provider formats cover every kind the scanner knows."""
    covered = {kind for kind, _, _ in CASES} | {fmt.kind for fmt in FORMATS}
    assert covered == set(leaks.KINDS)


# -- provider formats --------------------------------------------------------------------------

# How files hold keys: (path, text around ``{v}``, the name the key is given)
FILE_CONTEXTS = [
    ("config/app.toml", '[upstream]\nhost = "api.internal"\ncredential = "{v}"\nretries = 3\n'),
    (".env", "# worker settings\nLOG_LEVEL=info\n{name}={v}\nPORT=8080\n"),
    ("src/app/client.py", 'import httpx\n\n\ndef client():\n    return Client(auth="{v}")\n'),
    (
        "fixtures/service.json",
        '{{\n  "service": "billing",\n  "auth": "{v}",\n  "retries": 3\n}}\n',
    ),
]


def format_texts(seed: int = 0) -> list[tuple[str, str, str, str, str]]:
    """(kind, shape, path, text, key): every shape of every format, in every file context."""
    rng = random.Random(seed)
    texts = []
    for fmt in FORMATS:
        lead = f"# {fmt.context[0].decode()} settings\n" if fmt.context else ""
        for shape in fmt.shapes:
            for path, context in FILE_CONTEXTS:
                value = sample(shape, rng)
                text = lead + context.format(v=value, name=fmt.kind.upper().replace("-", "_"))
                texts.append((fmt.kind, shape, path, text, secret_of(fmt, value)))
    return texts


def secret_of(fmt: KeyFormat, value: str) -> str:
    """The part of a sample the scanner reports (``AccountKey=…`` reports what follows ``=``)."""
    m = re.search(fmt.pattern, value.encode())
    assert m is not None, f"{fmt.kind}: the sample {value[:12]}… does not match its own pattern"
    return m["v"].decode() if "v" in m.re.groupindex else value


FORMAT_TEXTS = format_texts()


@pytest.mark.parametrize(
    ("kind", "path", "text", "key"),
    [(kind, path, text, key) for kind, _, path, text, key in FORMAT_TEXTS],
    ids=[f"{shape[:16]}-{path}" for _, shape, path, _, _ in FORMAT_TEXTS],
)
def test_every_provider_format_is_found_in_config_env_code_and_json(
    kind: str, path: str, text: str, key: str
) -> None:
    """Each documented format is reported with its kind, on its line, in every kind of file."""
    hits = scan_text(text, path=path)
    assert [(hit.kind, hit.value) for hit in hits] == [(kind, key)]
    (hit,) = hits
    assert hit.line == text[: text.index(key)].count("\n") + 1
    assert hit.masked == key[:4] + "…" and key[4:] not in repr(hit)


RUN = "AsDfGhJk"


@pytest.mark.parametrize(
    "key",
    [
        "ghp_" + fake("", 10, seed=1) + RUN + fake("", 18, seed=1),
        "sk_" + "live_" + fake("", 8, seed=2) + RUN + fake("", 16, seed=2),
        "rk_" + "live_" + fake("", 8, seed=3) + RUN + fake("", 83, seed=3),
        "glpat-" + fake("", 4, seed=4) + RUN + fake("", 8, seed=4),
        "xoxb-"
        + fake("", 13, string.digits)
        + "-"
        + fake("", 12, string.digits)
        + "-"
        + fake("", 8, seed=5)
        + RUN
        + fake("", 8, seed=5),
        "hf_"
        + fake("", 10, string.ascii_letters)
        + "QwErTyUiOp"
        + fake("", 14, string.ascii_letters),
        "AIza" + fake("", 12, seed=6) + "AbCdEfGhIj" + fake("", 13, seed=6),
    ],
    ids=["github", "stripe-live", "stripe-restricted", "gitlab", "slack", "huggingface", "google"],
)
def test_a_key_with_a_mixed_case_keyboard_run_is_not_a_placeholder(key: str) -> None:
    """A mixed-case run like ``AsDfGhJk`` or ``QwErTyUi`` inside a known key format is chance."""
    (hit,) = scan_text(f'TOKEN = "{key}"\n', path="app.py")
    assert hit.value == key


@pytest.mark.parametrize(
    "value",
    [
        "ghp_" + "x" * 36,
        "ghp_" + "asdfghjk" * 4 + "1234",
        "glpat-" + "X" * 20,
        "glpat-your_token_here_123",
        "sk-proj-<TOKEN>",
        "hf_" + "a" * 34,
        "npm_" + "EXAMPLE" * 5 + "1",
        "xoxb-" + "0" * 12 + "-" + "0" * 12 + "-" + "x" * 24,
    ],
)
def test_obvious_placeholders_in_a_key_format_are_still_placeholders(value: str) -> None:
    """``xxxx``, ``your_token_here``, ``<TOKEN>``, single-case runs and repeats are not keys."""
    assert scan_text(f"TOKEN={value}\n", path=".env") == []


def test_checksums_are_verified() -> None:
    """GitHub's and npm's CRC32 and age's bech32 checksums hold for real shapes, not for others."""
    rng = random.Random(3)
    github = sample("ghp_{b62:30}{crc}", rng)
    assert crc32_base62_ok(github[4:].encode())
    assert not crc32_base62_ok((github[4:-1] + ("A" if github[-1] != "A" else "B")).encode())
    age = sample("{age}", rng)
    assert bech32_ok("age-secret-key-", age[len("AGE-SECRET-KEY-1") :].encode())
    assert not bech32_ok("age-secret-key-", age[len("AGE-SECRET-KEY-1") : -1].encode() + b"Q")


def test_a_key_with_a_valid_checksum_is_reported_however_it_looks() -> None:
    """A GitHub token whose checksum holds is real even if its random part looks like a word."""
    body = "Example" + "Token" * 4 + "abcdefgh"[:3]
    token = "ghp_" + body + leaks_base62_crc(body)
    (hit,) = scan_text(f"GH_TOKEN={token}\n", path=".env")
    assert hit.value == token


def leaks_base62_crc(body: str) -> str:
    from airlock.checks.secret_formats import base62

    return base62(zlib.crc32(body.encode()), 6)


@pytest.mark.parametrize(
    "text",
    [
        # Slack: app-level, configuration and refresh, legacy tokens; workflow and trigger URLs
        "SLACK_APP_TOKEN=xapp-1-A"
        + fake("", 10, UPPER)
        + "-"
        + fake("", 13, string.digits)
        + "-"
        + fake("", 64, HEX),
        "SLACK_CONFIG_TOKEN=xoxe.xoxp-1-" + fake("", 163),
        "SLACK_REFRESH_TOKEN=xoxe-1-" + fake("", 146),
        "token: xoxs-"
        + "-".join(fake("", 10, string.digits, seed=n) for n in range(3))
        + "-"
        + fake("", 10, HEX),
        "url = https://hooks.slack.com/workflows/"
        + fake("T", 10, UPPER)
        + "/"
        + fake("A", 10, UPPER)
        + "/"
        + fake("", 18, string.digits)
        + "/"
        + fake("", 24),
        "url = https://hooks.slack.com/triggers/"
        + fake("T", 10, UPPER)
        + "/"
        + fake("", 13, string.digits)
        + "/"
        + fake("", 32, HEX),
        # Stripe restricted keys
        f'stripe.api_key = "{fake("rk_" + "live_", 99)}"',
        f'stripe.api_key = "{fake("rk_" + "test_", 99)}"',
        # OpenAI project keys
        f'OpenAI(api_key="sk-proj-{fake("", 74, ALNUM + "_-")}T3BlbkFJ'
        f'{fake("", 74, ALNUM + "_-", seed=1)}")',
    ],
)
def test_token_families_that_used_to_be_missed(text: str) -> None:
    """Slack app/config/legacy tokens and workflow URLs, Stripe restricted keys, OpenAI keys."""
    assert len(scan_text(text + "\n", path="app.py")) == 1


@pytest.mark.parametrize(
    "header",
    [
        '{ "alg": "RS256", "typ": "JWT" }',
        '{\n  "alg": "ES256",\n  "kid": "2024-01"\n}',
        '{\r\n"typ":"JWT",\r\n"alg":"HS512"}',
        '{\t"alg": "EdDSA"}',
        '{"kid":"k1","typ":"at+jwt","alg":"PS256","x5t#S256":"abc"}',
    ],
)
def test_jwts_with_unusual_headers_are_found(header: str) -> None:
    """Headers that start with a space, newline or tab, or name ``alg`` late, are JWTs too."""
    token = jwt_with_raw_header(header)
    (hit,) = scan_text(f'EXPIRED = "{token}"\n', path="tests/test_auth.py")
    assert (hit.kind, hit.value) == ("jwt", token)


def jwt_with_raw_header(header: str) -> str:
    payload = b64url(json.dumps({"sub": "42", "iat": 1700000000}).encode())
    return f"{b64url(header.encode())}.{payload}.{b64url(random.Random(8).randbytes(64))}"


def false_positive_texts() -> list[tuple[str, str]]:
    """Texts full of things that look like keys and are not: hashes, ids, images, examples."""
    rng = random.Random(11)
    hexes = ["".join(rng.choice(HEX) for _ in range(n)) for n in (32, 40, 64, 128)]
    uuids = [
        f"{h[:8]}-{h[8:12]}-4{h[13:16]}-a{h[17:20]}-{h[20:32]}"
        for h in ("".join(rng.choice(HEX) for _ in range(32)) for _ in range(5))
    ]
    image = base64.b64encode(rng.randbytes(600)).decode()
    integrity = base64.b64encode(rng.randbytes(64)).decode()
    sri = base64.b64encode(rng.randbytes(48)).decode()
    go_sum = base64.b64encode(rng.randbytes(32)).decode()
    return [
        ("src/hashes.py", "\n".join(f'DIGEST_{i} = "{h}"' for i, h in enumerate(hexes)) + "\n"),
        ("fixtures/ids.json", json.dumps({"ids": uuids, "etag": hexes[0]}, indent=2)),
        ("web/logo.css", f".logo {{ background: url(data:image/png;base64,{image}); }}\n"),
        (
            "web/package-lock.json",
            f'{{"node_modules/left-pad": {{"integrity": "sha512-{integrity}"}}}}\n',
        ),
        ("web/index.html", f'<script src="a.js" integrity="sha384-{sri}"></script>\n'),
        ("go.sum", f"example.org/mod v1.2.3 h1:{go_sum}\n"),
        (
            "uv.lock",
            f'sdist = {{ url = "https://files.example.org/a.tgz", hash = "sha256:{hexes[2]}" }}\n',
        ),
        ("deploy/app.yaml", f"image: registry.example.org/app@sha256:{hexes[2]}\n"),
        (
            "docs/setup.md",
            "\n".join(
                [
                    "GITHUB_TOKEN=ghp_xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
                    "GITLAB_TOKEN=glpat-xxxxxxxxxxxxxxxxxxxx",
                    "OPENAI_API_KEY=sk-proj-your-key-here",
                    'ANTHROPIC_API_KEY="sk-ant-api03-<your-key>"',
                    "SLACK_APP_TOKEN=xapp-1-XXXXXXXXXXX-0000000000000-" + "x" * 64,
                    "SLACK_BOT_TOKEN=xoxb-your-bot-token",
                    "NPM_TOKEN=npm_<TOKEN>",
                    "HF_TOKEN=hf_your_token_here",
                    "DOCKERHUB_TOKEN=dckr_pat_XXXXXXXXXXXXXXXXXXXXXXXXXXX",
                    "DO_TOKEN=dop_v1_" + "0" * 64,
                    "AGE_KEY=AGE-SECRET-KEY-1" + "Q" * 58,
                    "DATABRICKS_TOKEN=dapi" + "x" * 32,
                    "TELEGRAM_TOKEN=123456789:AA" + "x" * 33,
                    "Tokens look like `ghp_abcdefghijklmnopqrstuvwxyz0123456789`.",
                    "Proxy: `https://user:password@proxy.example.org:3128`.",
                    "JWTs have three parts: `header.payload.signature`.",
                    "AWS example: AKIA" + "IOSFODNN7EXAMPLE",
                ]
            )
            + "\n",
        ),
        ("src/app/view.py", 'SESSION_COOKIE = "session"\ncache_key = f"key-{user.id}"\n'),
        (
            "tests/test_urls.py",
            'URL("https://jo%40example.org:a%20secret@example.org:1234/")\n'
            '"http://john%40example.org:P%40SSWORD@localhost:3128/"\n'
            "MultiHostUrl('https://foo.example.org:123,foo:bar@bar.example.org/path')\n",
        ),
    ]


def test_every_kind_is_documented() -> None:
    """docs/secrets.md names every kind the scanner reports."""
    docs = (Path(__file__).parent.parent / "docs" / "secrets.md").read_text()
    assert [kind for kind in leaks.KINDS if f"`{kind}`" not in docs] == []


@pytest.mark.parametrize(("path", "text"), false_positive_texts())
def test_nothing_is_found_in_the_false_positive_corpus(path: str, text: str) -> None:
    """Hashes, UUIDs, base64 images, lockfile integrity strings, placeholders and documented
    examples are not secrets."""
    assert scan_text(text, path=path) == []


VALUE = fake("", 20, ALNUM + "#%!", seed=3)


@pytest.mark.parametrize(
    "line",
    [
        f'password = "{VALUE}"',
        f"db_password: {VALUE}",
        f"DB_PASSWORD={VALUE}",
        f'export API_KEY="{VALUE}"',
        f'"client_secret": "{VALUE}",',
        f'token: str = "{VALUE}"',
        f'os.environ["AUTH_TOKEN"] = "{VALUE}"',
        f'client = ApiClient(api_key="{VALUE}", timeout=3)',
        f"conn = login(user, password='{VALUE}')",
        f'auth.set_token("{VALUE}")',
        f'os.environ.setdefault("SECRET_KEY", "{VALUE}")',
        f'headers = {{"Authorization": "Bearer {VALUE}"}}',
        f'<database host="db" password="{VALUE}" />',
    ],
)
def test_secret_assignments_are_found_in_every_form(line: str) -> None:
    """A random value given to a secret-like name is found as config, code or a call argument."""
    hits = scan_text(line + "\n", path="src/app.py")
    assert [(hit.kind, hit.fingerprint) for hit in hits] == [("generic-secret", sha256(VALUE))]


@pytest.mark.parametrize(
    "line",
    [
        "password = changeme",
        'api_key = "<your-api-key>"',
        "API_TOKEN=${API_TOKEN}",
        'token = "xxxxxxxxxxxxxxxxxxxx"',
        'secret = "aaaaaaaaaaaaaaaa"',
        'password = "12345678910"',
        'AWS_ACCESS_KEY_ID = "AKIA' + "IOSFODNN7" + 'EXAMPLE"',
        "api_key = settings.STRIPE_API_KEY",
        'token = request.headers.get("Authorization")',
        'secret_name = "prod/billing-password-v2"',
        'auth_method = "client_secret_basic"',
        'token_endpoint = "https://oauth2.example.org/token"',
        "private_key: PKCS7PrivateKeyTypes,",
        "password_field = forms.CharField(max_length=128)",
        'csrf_token = "{{ csrf_token }}"',
        "author = 'Grace Hopper'",
        "DATABASE_URL=postgres://user:password@localhost:5432/app",
        "REDIS_URL=redis://app:app@cache:6379/0",
        "export GITHUB_TOKEN=ghp_" + "x" * 36,
    ],
)
def test_placeholders_and_references_are_not_secrets(line: str) -> None:
    """Placeholders, references, names, URLs and documented examples are not reported."""
    assert scan_text(line + "\n", path="src/app.py") == []


def test_lockfile_and_digest_hashes_are_not_secrets() -> None:
    """Integrity hashes in lockfiles and sha256 digests are not secrets."""
    digest = base64.b64encode(random.Random(1).randbytes(64)).decode()
    lock = f'{{"packages": {{"node_modules/left-pad": {{"integrity": "sha512-{digest}"}}}}}}'
    assert scan_text(lock, path="web/package-lock.json") == []
    requirements = f"airlock==1.0 \\\n    --hash=sha256:{fake('', 64, HEX)}\n"
    assert scan_text(requirements, path="requirements.txt") == []
    image = f'image: "app@sha256:{fake("", 64, HEX)}"\nsecret_digest = "sha256:{fake("", 64, HEX)}"'
    assert scan_text(image, path="deploy/app.yaml") == []


@pytest.mark.parametrize(
    "alphabet", [ALNUM, HEX, string.ascii_lowercase + string.digits, ALNUM + "+/", ALNUM + "!#%-_"]
)
def test_random_values_of_sixteen_characters_or_more_count_as_secrets(alphabet: str) -> None:
    """Nearly every random value (99 % or more) passes the entropy and shape tests."""
    rng = random.Random(alphabet)
    values = ["".join(rng.choice(alphabet) for _ in range(rng.randint(16, 48))) for _ in range(500)]
    found = sum(leaks.is_secret_like(value.encode()) for value in values)
    assert found >= 0.99 * len(values)


def test_a_hit_keeps_its_value_out_of_its_repr() -> None:
    """A hit's value is usable in memory but absent from its repr, with a 4-character mask."""
    (hit,) = scan_text(f'api_key = "{VALUE}"\n', path="a.py")
    assert hit.value == VALUE and VALUE not in repr(hit)
    assert hit.masked == VALUE[:4] + "…" and hit.fingerprint == sha256(VALUE)


# -- repositories ------------------------------------------------------------------------------

STRIPE = fake("sk_" + "live_", 24, seed=1)
PASSWORD = fake("", 22, ALNUM, seed=2)


def test_a_removed_secret_is_found_in_history_with_its_commit_and_date(repo: GitRepo) -> None:
    """A secret removed by a later commit is reported with the commit and date that added it."""
    repo.write("app/billing.py", "import stripe\n\n" + f'stripe.api_key = "{STRIPE}"\n')
    added = repo.commit("Add billing", "2023-03-14T09:26:53+00:00")
    repo.write("app/billing.py", 'import stripe\n\nstripe.api_key = os.environ["STRIPE_KEY"]\n')
    repo.commit("Read the key from the environment", "2023-04-01T10:00:00+00:00")

    result = scan_repository(repo.root)
    (finding,) = result.findings
    assert finding.code == "secret.committed" and finding.severity == "error"
    assert (finding.location.file, finding.location.line) == ("app/billing.py", 3)
    assert finding.evidence == {
        "kind": "stripe-live-key",
        "commit": added,
        "date": "2023-03-14T09:26:53+00:00",
        "in_working_tree": False,
        "fingerprint": sha256(STRIPE),
        "masked": "sk_l…",
    }
    assert "stripe-live-key" in finding.message and "rotate" in (finding.hint or "")
    assert result.commits == 2 and result.blobs_scanned == 2 and result.bytes_scanned > 0


def test_a_secret_still_present_is_marked_in_the_working_tree(repo: GitRepo) -> None:
    """A secret still in the files is reported with its current line and in_working_tree true."""
    repo.write("config.env", f"DB_PASSWORD={PASSWORD}\n")
    first = repo.commit("Config", "2023-01-02T03:04:05+00:00")
    repo.write("config.env", f"# moved down\n\nDB_PASSWORD={PASSWORD}\n")
    repo.commit("Comment", "2023-01-03T03:04:05+00:00")

    (finding,) = scan_repository(repo.root).findings
    assert finding.evidence["in_working_tree"] is True
    assert finding.evidence["commit"] == first
    assert finding.location.line == 3


def test_the_same_secret_in_five_commits_is_reported_once(repo: GitRepo) -> None:
    """A secret kept in a file that changes five times is one finding, from the first commit."""
    commits = []
    for day in range(1, 6):
        repo.write("app/pay.py", f'client = Stripe("{STRIPE}")\n' + f"# edit {day}\n" * day)
        commits.append(repo.commit(f"edit {day}", f"2023-02-0{day}T12:00:00+00:00"))
    result = scan_repository(repo.root)
    assert result.blobs_scanned == 5
    (finding,) = result.findings
    assert finding.evidence["commit"] == commits[0]


def test_the_same_secret_in_two_files_is_reported_per_file(repo: GitRepo) -> None:
    """A secret copied into a second file is reported there too, with that file's commit."""
    repo.write("a.py", f'stripe.api_key = "{STRIPE}"\n')
    repo.commit("a", "2023-02-01T12:00:00+00:00")
    repo.write("b.py", f'stripe.api_key = "{STRIPE}"\n')
    second = repo.commit("b", "2023-02-02T12:00:00+00:00")
    findings = scan_repository(repo.root).findings
    assert [f.location.file for f in findings] == ["a.py", "b.py"]
    assert findings[1].evidence["commit"] == second


def test_a_secret_inside_a_function_call_is_found_in_history(repo: GitRepo) -> None:
    """Keyword arguments of a call are scanned in every blob of the history."""
    repo.write("app/client.py", f'api = Client(base_url=URL, api_key="{PASSWORD}")\n')
    repo.commit("client", "2023-05-05T08:00:00+00:00")
    repo.write("app/client.py", "api = Client(base_url=URL)\n")
    repo.commit("no key", "2023-05-06T08:00:00+00:00")
    (finding,) = scan_repository(repo.root).findings
    assert finding.evidence["kind"] == "generic-secret"
    assert finding.evidence["in_working_tree"] is False


def test_secrets_on_other_branches_and_untracked_files_are_found(repo: GitRepo) -> None:
    """Every branch of the history is read, and untracked files that are not ignored too."""
    repo.write("README.md", "# app\n")
    repo.commit("init", "2023-01-01T00:00:00+00:00")
    repo.git("checkout", "-q", "-b", "spike")
    repo.write("spike.py", f'stripe.api_key = "{STRIPE}"\n')
    repo.commit("spike", "2023-01-02T00:00:00+00:00")
    repo.git("checkout", "-q", "main")
    repo.write(".gitignore", "local.env\n")
    repo.write("local.env", f"DB_PASSWORD={PASSWORD}\n")
    repo.write("notes.txt", f"password: {PASSWORD}\n")

    findings = {f.location.file: f for f in scan_repository(repo.root).findings}
    assert set(findings) == {"spike.py", "notes.txt"}
    assert findings["spike.py"].evidence["in_working_tree"] is False
    assert findings["notes.txt"].evidence["commit"] is None
    assert findings["notes.txt"].evidence["in_working_tree"] is True


def test_a_secret_added_while_resolving_a_merge_conflict_is_found(repo: GitRepo) -> None:
    """A secret that only a merge commit's conflict resolution introduced is found there."""
    repo.write("app.cfg", "mode = a\n")
    repo.commit("init", "2023-01-01T00:00:00+00:00")
    repo.git("checkout", "-q", "-b", "other")
    repo.write("app.cfg", "mode = b\n")
    repo.commit("b", "2023-01-02T00:00:00+00:00")
    repo.git("checkout", "-q", "main")
    repo.write("app.cfg", "mode = c\n")
    repo.commit("c", "2023-01-03T00:00:00+00:00")
    merge = subprocess.run(["git", "merge", "-q", "other"], cwd=repo.root, capture_output=True)
    assert merge.returncode != 0  # a conflict
    repo.write("app.cfg", f"mode = c\napi_key = {PASSWORD}\n")
    merged = repo.commit("merge other", "2023-01-04T00:00:00+00:00")
    (finding,) = scan_repository(repo.root).findings
    assert finding.evidence["commit"] == merged
    assert scan_repository(repo.root).commits == 4


def test_parallel_workers_give_the_same_findings(repo: GitRepo) -> None:
    """Scanning in two worker processes finds exactly what one process finds."""
    for n in range(6):
        repo.write(f"f{n}.py", f'key = "{fake("AKIA", 16, UPPER, seed=n)}"\n' + "x = 1\n" * 50)
        repo.commit(f"c{n}", f"2023-06-0{n + 1}T00:00:00+00:00")
    one = scan_repository(repo.root, workers=1)
    two = scan_repository(repo.root, workers=2)
    assert [f.to_dict() for f in one.findings] == [f.to_dict() for f in two.findings]
    assert len(one.findings) == 6 and one.bytes_scanned == two.bytes_scanned
    with pytest.raises(UsageError, match="workers"):
        scan_repository(repo.root, workers=0)


def test_binary_and_huge_files_are_skipped_and_counted(
    repo: GitRepo, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Binary blobs and blobs over the size limit are not scanned; the stats count them."""
    monkeypatch.setattr(leaks, "MAX_FILE_BYTES", 4096)
    repo.write("logo.png", b"\x89PNG\0\0" + f'api_key = "{PASSWORD}"'.encode())
    repo.write("dump.sql", f"-- password = '{PASSWORD}'\n" + "x" * 5000)
    repo.write("ok.py", "print('hello')\n")
    repo.commit("assets", "2023-01-01T00:00:00+00:00")
    result = scan_repository(repo.root)
    assert result.findings == []
    assert (result.skipped_binary, result.skipped_large, result.skipped) == (1, 1, 2)
    tree = scan_working_tree(repo.root)
    assert (tree.skipped_binary, tree.skipped_large, tree.files_scanned) == (1, 1, 1)


def test_not_a_git_repository_is_a_clear_error_unless_history_is_off(tmp_path: Path) -> None:
    """History scans need a repository; without history a plain folder is scanned."""
    (tmp_path / "app.env").write_text(f"DB_PASSWORD={PASSWORD}\n")
    (tmp_path / "node_modules").mkdir()
    (tmp_path / "node_modules" / "x.env").write_text(f"DB_PASSWORD={PASSWORD}\n")
    with pytest.raises(UsageError, match="not a git repository") as error:
        scan_repository(tmp_path)
    assert "history=False" in str(error.value)
    result = scan_repository(tmp_path, history=False)
    assert [f.location.file for f in result.findings] == ["app.env"]
    with pytest.raises(UsageError, match="not a folder"):
        scan_repository(tmp_path / "missing")


def test_an_empty_repository_scans_its_working_tree(repo: GitRepo) -> None:
    """A repository without commits is no error: its files are scanned."""
    repo.write("settings.py", f'SECRET_KEY = "{PASSWORD}"\n')
    result = scan_repository(repo.root)
    assert result.commits == 0
    (finding,) = result.findings
    assert finding.evidence["commit"] is None and finding.evidence["in_working_tree"] is True


def test_missing_git_is_a_clear_error(repo: GitRepo, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without git on PATH the scan says so instead of failing with a traceback."""
    monkeypatch.setenv("PATH", str(repo.root / "no-such-bin"))
    with pytest.raises(UsageError, match="git is not installed"):
        scan_repository(repo.root)


def test_staged_scan_reports_only_secrets_the_commit_would_add(repo: GitRepo) -> None:
    """The pre-commit scan reports a newly staged secret, not old ones nor unstaged edits."""
    old = fake("", 20, ALNUM, seed=9)
    repo.write("app.py", f'api_key = "{old}"\n')
    repo.commit("old secret", "2023-01-01T00:00:00+00:00")
    assert scan_staged(repo.root).findings == []

    repo.write("app.py", f'api_key = "{old}"\npassword = "{PASSWORD}"\n')
    repo.git("add", "app.py")
    repo.write("later.py", f'stripe.api_key = "{STRIPE}"\n')  # not staged
    result = scan_staged(repo.root)
    (finding,) = result.findings
    assert finding.evidence["fingerprint"] == sha256(PASSWORD)
    assert (finding.location.file, finding.location.line) == ("app.py", 2)
    assert "staged" in finding.message and result.blobs_scanned == 1


def test_staged_scan_works_before_the_first_commit(repo: GitRepo, tmp_path: Path) -> None:
    """In a repository without commits every staged file is new and scanned."""
    repo.write("app.py", f'stripe.api_key = "{STRIPE}"\n')
    repo.git("add", "app.py")
    (finding,) = scan_staged(repo.root).findings
    assert finding.evidence["kind"] == "stripe-live-key"
    with pytest.raises(UsageError, match="not a git repository"):
        scan_staged(tmp_path)


# -- baseline ----------------------------------------------------------------------------------


def test_the_baseline_silences_a_moved_secret_but_not_a_new_one(repo: GitRepo) -> None:
    """A reviewed secret stays silenced in another file; a new secret on its line is reported."""
    repo.write("tests/fixtures.py", f'password = "{PASSWORD}"\n')
    repo.commit("fixture", "2023-01-01T00:00:00+00:00")
    findings = scan_repository(repo.root).findings
    path = write_baseline(
        repo.root, findings, reason="fake SMTP password", reviewed_by="ana@example.org"
    )
    assert path == repo.root / BASELINE_PATH
    entry = json.loads(path.read_text())["entries"][0]
    assert entry["fingerprint"] == sha256(PASSWORD) and entry["kind"] == "generic-secret"
    assert entry["reviewed_by"] == "ana@example.org" and entry["reviewed_at"].endswith("Z")

    repo.remove("tests/fixtures.py")
    repo.write("tests/smtp/fixtures.py", f'\n\npassword = "{PASSWORD}"\n')
    repo.commit("move", "2023-01-02T00:00:00+00:00")
    remaining, silenced = filter_findings(
        scan_repository(repo.root).findings, load_baseline(repo.root)
    )
    assert remaining == [] and len(silenced) == 2

    other = fake("", 22, ALNUM, seed=5)
    repo.write("tests/smtp/fixtures.py", f'\n\npassword = "{other}"\n')
    repo.commit("new secret, same line", "2023-01-03T00:00:00+00:00")
    remaining, _ = filter_findings(scan_repository(repo.root).findings, load_baseline(repo.root))
    assert [f.evidence["fingerprint"] for f in remaining] == [sha256(other)]


def test_writing_the_baseline_keeps_earlier_reviews_and_needs_a_reason(repo: GitRepo) -> None:
    """Earlier entries keep their reviewer; a review without reason or reviewer is refused."""
    repo.write("a.py", f'password = "{PASSWORD}"\n')
    repo.commit("a", "2023-01-01T00:00:00+00:00")
    write_baseline(repo.root, scan_repository(repo.root).findings, reason="r1", reviewed_by="ana")
    repo.write("b.py", f'stripe.api_key = "{STRIPE}"\n')
    repo.commit("b", "2023-01-02T00:00:00+00:00")
    write_baseline(repo.root, scan_repository(repo.root).findings, reason="r2", reviewed_by="ben")
    entries = load_baseline(repo.root).entries
    assert {(e.file, e.reviewed_by) for e in entries} == {("a.py", "ana"), ("b.py", "ben")}
    with pytest.raises(UsageError, match="reason"):
        write_baseline(repo.root, [], reason=" ", reviewed_by="ana")
    with pytest.raises(UsageError, match="reviewer"):
        write_baseline(repo.root, [], reason="ok", reviewed_by="")
    repo.git("config", "user.email", "dora@example.org")
    assert default_reviewer(repo.root) == "dora@example.org"


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ('{"version": 1, "entries": [', "invalid JSON at line 1"),
        ("[]", "top level: must be an object"),
        ('{"version": 2, "entries": []}', "version: must be 1"),
        ('{"version": 1, "entries": {}}', "entries: must be a list"),
        ('{"version": 1, "entries": [{"kind": "jwt"}]}', "entries[0]: `fingerprint` is missing"),
        (
            '{"version": 1, "entries": [{"fingerprint": "abc", "kind": "jwt", "reason": "r", '
            '"reviewed_by": "a", "reviewed_at": "2024-01-01T00:00:00Z"}]}',
            "entries[0].fingerprint: must be 64 lowercase hex digits",
        ),
        (
            '{"version": 1, "entries": [{"fingerprint": "' + "a" * 64 + '", "kind": "jwt", '
            '"reason": "r", "reviewed_by": "a", "reviewed_at": "yesterday"}]}',
            "entries[0].reviewed_at: must be an ISO 8601 time",
        ),
        (
            '{"version": 1, "entries": [{"fingerprint": "' + "a" * 64 + '", "kind": "jwt", '
            '"reason": "r", "reviewed_by": "a", "reviewed_at": "2024-01-01", "value": "x"}]}',
            "entries[0]: unknown key 'value'",
        ),
    ],
)
def test_an_invalid_baseline_is_a_clear_error(repo: GitRepo, content: str, problem: str) -> None:
    """A broken baseline file is refused with its path and what is wrong with it."""
    path = repo.root / BASELINE_PATH
    path.parent.mkdir(parents=True)
    path.write_text(content)
    with pytest.raises(UsageError) as error:
        load_baseline(repo.root)
    assert str(path) in error.value.message and problem in error.value.message
    with pytest.raises(UsageError):
        write_baseline(repo.root, [], reason="r", reviewed_by="a")  # a broken file is kept
    assert path.read_text() == content


def test_no_output_error_finding_or_baseline_contains_a_secret(
    repo: GitRepo, capsys: pytest.CaptureFixture[str]
) -> None:
    """Nothing the scanner returns, writes or raises holds a planted value."""
    planted = [text for _, text, _ in CASES] + [text for *_, text, _ in FORMAT_TEXTS[::4]]
    repo.write("everything.py", "\n".join(planted) + "\n")
    repo.commit("all kinds", "2023-01-01T00:00:00+00:00")
    repo.remove("everything.py")
    repo.commit("removed", "2023-01-02T00:00:00+00:00")
    repo.write("staged.py", "\n".join(planted) + "\n")
    repo.git("add", "staged.py")

    result = scan_repository(repo.root)
    staged = scan_staged(repo.root)
    assert {f.evidence["kind"] for f in result.findings} == set(leaks.KINDS)
    assert {f.evidence["kind"] for f in staged.findings} == set(leaks.KINDS)
    path = write_baseline(repo.root, result.findings, reason="test", reviewed_by="ana")
    with pytest.raises(UsageError) as error:
        scan_repository(repo.root.parent)
    everything = "\n".join(
        [
            repr(result),
            repr(staged),
            json.dumps([f.to_dict() for f in result.findings + staged.findings]),
            path.read_text(),
            str(error.value),
            *capsys.readouterr(),
        ]
    )
    values = [hit.value for text in planted for hit in scan_text(text, path="x.py")]
    assert len(values) >= len(planted)
    for value in values:
        assert value not in everything
        assert value[4:12] not in everything  # only a 4-character prefix may be shown
