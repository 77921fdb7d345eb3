"""Provider key formats: what each provider documents its keys and tokens to look like.

Each :class:`KeyFormat` is one documented format: the ``kind`` it is reported as, its ``shapes``
(a readable template of the key, also used to make fake keys for tests and benchmarks), and the
regular expression that finds it. The scanner in :mod:`airlock.checks.leaks` turns every format
into a detector; ``docs/secrets.md`` lists them by provider.

Rules for a pattern (they keep the scanner fast, see ``leaks``):

* it starts with literal text, which ``re`` finds with a fast substring search; a format whose
  fixed part sits inside the key (``…T3BlbkFJ…``, ``…-us21``) names that part as ``anchor`` and
  its pattern is tried only around it;
* a named group ``b`` marks the random part (the placeholder and entropy tests apply to it), a
  group ``v`` the secret when it is not the whole match (``AccountKey=…``);
* ``context`` words, when given, must appear in the text (the format alone is too loose).

A format with a ``checksum`` (GitHub's and npm's CRC32, age's bech32) is reported whenever the
checksum holds, however the key looks; without a valid checksum it must pass the same tests as
any other key. Nothing here is imported by the CLI at start-up; the patterns are compiled on
first use.
"""

from __future__ import annotations

import base64
import binascii
import random
import re
import zlib
from collections.abc import Callable
from dataclasses import dataclass

#: Kinds added by this table, and what they are (the older kinds are in ``leaks.KINDS``).
FORMAT_KINDS: dict[str, str] = {
    "aws-bedrock-api-key": "Amazon Bedrock API key",
    "gitlab-token": "GitLab token",
    "google-oauth-client-secret": "Google OAuth client secret",
    "azure-client-secret": "Microsoft Entra ID (Azure AD) client secret",
    "azure-storage-key": "Azure storage account or shared access key",
    "mailgun-api-key": "Mailgun API key",
    "mailchimp-api-key": "Mailchimp API key",
    "npm-token": "npm access token",
    "pypi-token": "PyPI API token",
    "dockerhub-token": "Docker Hub access token",
    "openai-api-key": "OpenAI API key",
    "anthropic-api-key": "Anthropic API key",
    "huggingface-token": "Hugging Face access token",
    "shopify-token": "Shopify access token or shared secret",
    "digitalocean-token": "DigitalOcean token",
    "heroku-api-key": "Heroku API key",
    "square-token": "Square access token or OAuth secret",
    "atlassian-token": "Atlassian (Jira, Confluence, Bitbucket) API token",
    "discord-token": "Discord bot token",
    "discord-webhook": "Discord webhook URL",
    "teams-webhook": "Microsoft Teams incoming webhook URL",
    "telegram-bot-token": "Telegram bot token",
    "databricks-token": "Databricks access token",
    "doppler-token": "Doppler token",
    "vault-token": "HashiCorp Vault token",
    "terraform-cloud-token": "HashiCorp Terraform Cloud token",
    "postman-api-key": "Postman API key",
    "linear-api-key": "Linear API key",
    "newrelic-key": "New Relic API or license key",
    "sentry-token": "Sentry auth token",
    "grafana-token": "Grafana token",
    "age-secret-key": "age secret key",
    "onepassword-secret": "1Password secret key or service account token",
    "alibaba-access-key-id": "Alibaba Cloud access key id",
    "jfrog-token": "JFrog Artifactory API key or reference token",
    "airtable-token": "Airtable personal access token",
    "clojars-token": "Clojars deploy token",
    "contentful-token": "Contentful personal access token",
    "dropbox-token": "Dropbox access token",
    "duffel-token": "Duffel access token",
    "dynatrace-token": "Dynatrace API token",
    "easypost-api-key": "EasyPost API key",
    "facebook-access-token": "Facebook (Meta) access token",
    "flutterwave-secret-key": "Flutterwave secret key",
    "flyio-token": "Fly.io access token",
    "frameio-token": "Frame.io developer token",
    "groq-api-key": "Groq API key",
    "harness-token": "Harness access token",
    "hubspot-token": "HubSpot private app token",
    "infracost-api-key": "Infracost API key",
    "langsmith-api-key": "LangSmith API key",
    "maxmind-license-key": "MaxMind license key",
    "mapbox-secret-token": "Mapbox secret token",
    "nuget-api-key": "NuGet API key",
    "openshift-token": "OpenShift user token",
    "perplexity-api-key": "Perplexity API key",
    "planetscale-token": "PlanetScale password or token",
    "prefect-api-key": "Prefect API key",
    "pulumi-token": "Pulumi access token",
    "readme-api-key": "ReadMe API key",
    "rubygems-api-key": "RubyGems API key",
    "scalingo-token": "Scalingo API token",
    "brevo-api-key": "Brevo (Sendinblue) API key",
    "shippo-token": "Shippo API token",
    "sonarqube-token": "SonarQube token",
    "sourcegraph-token": "Sourcegraph access token",
    "typeform-token": "Typeform personal access token",
    "yandex-key": "Yandex Cloud API or access key",
    "cloudflare-origin-ca-key": "Cloudflare Origin CA key",
    "adobe-client-secret": "Adobe client secret",
    "plaid-access-token": "Plaid access token",
    "braintree-access-token": "Braintree access token",
    "octopus-api-key": "Octopus Deploy API key",
    "defined-networking-token": "Defined Networking API token",
    "intra42-secret": "42 Intra client secret",
    "url-credentials": "password in a URL",
}

# -- checksums ---------------------------------------------------------------------------------

BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_BASE62_INDEX = {ord(c): i for i, c in enumerate(BASE62)}


def base62(number: int, width: int) -> str:
    """``number`` in base 62 (digits, upper, lower case), left-padded with ``0`` to ``width``."""
    digits = []
    while number:
        number, rest = divmod(number, 62)
        digits.append(BASE62[rest])
    return "".join(reversed(digits)).rjust(width, "0")


def crc32_base62_ok(body: bytes) -> bool:
    """GitHub's (and npm's) checksum: the last 6 characters are the CRC32 of the 30 before them.

    ``ghp_`` + 30 random base62 characters + ``base62(crc32(those 30), 6)``.
    """
    if len(body) != 36:
        return False
    value = 0
    for c in body[30:]:
        if c not in _BASE62_INDEX:
            return False
        value = value * 62 + _BASE62_INDEX[c]
    return zlib.crc32(body[:30]) == value


BECH32 = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
_BECH32_INDEX = {ord(c): i for i, c in enumerate(BECH32)}
_BECH32_GEN = (0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)


def _bech32_polymod(values: list[int]) -> int:
    check = 1
    for value in values:
        top = check >> 25
        check = (check & 0x1FFFFFF) << 5 ^ value
        for i, gen in enumerate(_BECH32_GEN):
            if (top >> i) & 1:
                check ^= gen
    return check


def _hrp_expand(hrp: str) -> list[int]:
    return [ord(c) >> 5 for c in hrp] + [0] + [ord(c) & 31 for c in hrp]


def bech32_ok(hrp: str, data: bytes) -> bool:
    """Whether ``data`` (the characters after ``hrp`` and ``1``) ends in a valid bech32 checksum."""
    try:
        values = [_BECH32_INDEX[c] for c in data.lower()]
    except KeyError:
        return False
    return _bech32_polymod(_hrp_expand(hrp) + values) == 1


def bech32_encode(hrp: str, payload: bytes) -> str:
    """``payload`` in bech32 with ``hrp`` (lowercase; age writes secret keys in upper case)."""
    bits, acc, values = 0, 0, []
    for byte in payload:
        acc = acc << 8 | byte
        bits += 8
        while bits >= 5:
            bits -= 5
            values.append(acc >> bits & 31)
    if bits:
        values.append(acc << (5 - bits) & 31)
    polymod = _bech32_polymod([*_hrp_expand(hrp), *values, 0, 0, 0, 0, 0, 0]) ^ 1
    values += [polymod >> 5 * (5 - i) & 31 for i in range(6)]
    return hrp + "1" + "".join(BECH32[v] for v in values)


def _age_ok(body: bytes) -> bool:
    return bech32_ok("age-secret-key-", body)


def _pypi_ok(body: bytes) -> bool:
    """A PyPI token is a macaroon whose first field names its index (``pypi.org``)."""
    head = body[:40]
    try:
        decoded = base64.urlsafe_b64decode(head[: len(head) // 4 * 4])
    except (ValueError, binascii.Error):
        return False
    return b"pypi.org" in decoded


# -- the formats -------------------------------------------------------------------------------


@dataclass(frozen=True)
class KeyFormat:
    """One documented key format of one provider (see the module docstring for the rules)."""

    kind: str
    shapes: tuple[str, ...]
    pattern: bytes
    anchor: bytes = b""
    context: tuple[bytes, ...] = ()
    left: str = "alnum"  # what may not come right before: "alnum", "token" (+ _ -), "name" (+ .)
    checksum: Callable[[bytes], bool] | None = None
    entropy: float = 3.0  # bits per character the random part must reach
    min_length: int = 0  # of the random part
    min_digits: int = 0  # in the random part
    window: int = 256  # around an anchor: how far the key may extend on either side


def _f(kind: str, shapes: str | tuple[str, ...], pattern: bytes, **kw: object) -> KeyFormat:
    return KeyFormat(kind, (shapes,) if isinstance(shapes, str) else shapes, pattern, **kw)  # type: ignore[arg-type]


_END = rb"(?![A-Za-z0-9])"
_END_TOKEN = rb"(?![A-Za-z0-9_-])"
_UUID = rb"[a-f0-9]{8}-[a-f0-9]{4}-[a-f0-9]{4}-[a-f0-9]{4}-[a-f0-9]{12}"

# fmt: off
FORMATS: tuple[KeyFormat, ...] = (
    _f("aws-bedrock-api-key", "ABSKQmVkcm9ja0FQSUtleS{b64:110}",
       rb"ABSKQmVkcm9ja0FQSUtleS(?P<b>[A-Za-z0-9+/]{40,400}={0,2})(?![A-Za-z0-9+/=])"),
    _f("github-token", tuple(f"gh{t}_{{b62:30}}{{crc}}" for t in "pousr"),
       rb"gh[pousr]_(?P<b>[A-Za-z0-9]{36,251})(?![A-Za-z0-9_])", left="token",
       checksum=crc32_base62_ok),
    _f("github-token", "github_pat_{b62:22}_{b62:59}",
       rb"github_pat_(?P<b>[A-Za-z0-9]{22}_[A-Za-z0-9]{59})(?![A-Za-z0-9_])", left="token"),
    _f("gitlab-token", ("glpat-{url:20}", "glpat-{url:27}.01.{low:9}", "gldt-{url:20}",
                        "glrt-{url:20}", "gloas-{hex:64}", "glcbt-{hex:2}_{url:20}",
                        "glptt-{hex:40}", "glft-{url:20}", "glimt-{low:25}",
                        "glagent-{url:50}", "glsoat-{url:20}", "glffct-{url:20}"),
       rb"gl(?:pat|oas|dt|rt|cbt|ptt|ft|imt|agent|soat|ffct)-"
       rb"(?P<b>[0-9A-Za-z_-]{20,300}(?:\.[0-9A-Za-z_-]+)*)(?![0-9A-Za-z_.-])", left="token"),
    _f("gitlab-token", "GR1348941{url:20}", rb"GR1348941(?P<b>[0-9A-Za-z_-]{20})" + _END_TOKEN),
    _f("google-oauth-client-secret", "GOCSPX-{url:28}",
       rb"GOCSPX-(?P<b>[A-Za-z0-9_-]{28})" + _END_TOKEN),
    _f("azure-client-secret", "{b62:3}8Q~{azure:34}",
       rb"(?<![A-Za-z0-9_~.-])[A-Za-z0-9_~.-]{3}[0-9]Q~(?P<b>[A-Za-z0-9_~.-]{31,34})"
       rb"(?![A-Za-z0-9_~.-])", anchor=b"Q~", window=48),
    _f("azure-storage-key", "AccountKey={b64:86}==",
       rb"AccountKey=(?P<v>(?P<b>[A-Za-z0-9+/]{86})==)"),
    _f("azure-storage-key", "SharedAccessKey={b64:43}=",
       rb"SharedAccessKey=(?P<v>(?P<b>[A-Za-z0-9+/]{43})=)"),
    _f("slack-token", ("xoxb-{dig:13}-{dig:13}-{b62:24}",
                       "xoxp-{dig:12}-{dig:12}-{dig:12}-{hex:32}", "xoxe-1-{b62:146}",
                       "xoxs-{dig:10}-{dig:10}-{dig:10}-{hex:10}",
                       "xoxa-2-{dig:9}-{dig:11}-{dig:13}-{hex:18}", "xoxr-{b62:30}"),
       rb"xox[abeoprs]-(?P<b>(?:[0-9A-Za-z]+-)*[0-9A-Za-z]{6,})(?![A-Za-z0-9-])", left="name",
       min_length=20, min_digits=4),
    _f("slack-token", "xapp-1-A{up:10}-{dig:13}-{hex:64}",
       rb"xapp-(?P<b>[0-9]-[A-Z0-9]{9,12}-[0-9]{9,14}-[A-Za-z0-9]{32,80})" + _END),
    _f("slack-token", ("xoxe.xoxp-1-{b62:163}", "xoxe.xoxb-1-{b62:165}"),
       rb"xoxe\.xox[bp]-(?P<b>[0-9]-[A-Za-z0-9]{100,200})" + _END),
    _f("mailgun-api-key", "key-{hex:32}", rb"key-(?P<b>[0-9a-f]{32})" + _END, left="name",
       context=(b"mailgun",)),
    _f("mailchimp-api-key", "{hex:32}-us{dig:2}",
       rb"(?<![A-Za-z0-9])(?P<b>[0-9a-f]{32})-us[0-9]{1,2}" + _END, anchor=b"-us", window=40),
    _f("npm-token", "npm_{b62:30}{crc}", rb"npm_(?P<b>[A-Za-z0-9]{36})" + _END, left="token",
       checksum=crc32_base62_ok),
    _f("pypi-token", ("pypi-{pypi:150}", "pypi-{testpypi:150}"),
       rb"pypi-(?P<b>AgE[A-Za-z0-9_-]{50,})" + _END_TOKEN, checksum=_pypi_ok),
    _f("dockerhub-token", ("dckr_pat_{url:27}", "dckr_oat_{url:32}"),
       rb"dckr_(?:pat|oat)_(?P<b>[A-Za-z0-9_-]{27,})" + _END_TOKEN),
    _f("openai-api-key", ("sk-{b62:20}T3BlbkFJ{b62:20}", "sk-proj-{url:74}T3BlbkFJ{url:74}",
                          "sk-svcacct-{url:74}T3BlbkFJ{url:74}",
                          "sk-admin-{url:58}T3BlbkFJ{url:58}"),
       rb"sk-(?:(?:proj|svcacct|admin|None)-)?(?P<b>[A-Za-z0-9_-]{16,200}T3BlbkFJ"
       rb"[A-Za-z0-9_-]{16,200})" + _END_TOKEN, anchor=b"T3BlbkFJ", left="token", window=240),
    _f("anthropic-api-key", ("sk-ant-api03-{url:93}AA", "sk-ant-admin01-{url:93}AA"),
       rb"sk-ant-(?:api|admin|oat|ort)[0-9]{2}-(?P<b>[A-Za-z0-9_-]{80,120})" + _END_TOKEN,
       left="token"),
    _f("huggingface-token", "hf_{alpha:34}",
       rb"hf_(?P<b>[A-Za-z]{34})" + _END, left="token"),
    _f("huggingface-token", "api_org_{alpha:34}", rb"api_org_(?P<b>[A-Za-z]{34})" + _END,
       left="token"),
    _f("shopify-token", ("shpat_{hex:32}", "shpca_{hex:32}", "shppa_{hex:32}", "shpss_{hex:32}"),
       rb"shp(?:at|ca|pa|ss)_(?P<b>[a-fA-F0-9]{32})" + _END),
    _f("digitalocean-token", ("dop_v1_{hex:64}", "doo_v1_{hex:64}", "dor_v1_{hex:64}"),
       rb"do[opr]_v1_(?P<b>[a-f0-9]{64})" + _END),
    _f("heroku-api-key", "HRKU-AA{url:58}", rb"HRKU-(?P<b>[0-9A-Za-z_-]{58,64})" + _END_TOKEN),
    _f("square-token", ("sq0atp-{url:22}", "sq0csp-{url:43}"),
       rb"sq0(?:atp|csp)-(?P<b>[0-9A-Za-z_-]{22,43})" + _END_TOKEN),
    _f("square-token", "EAAA{url:60}", rb"EAAA(?P<b>[0-9A-Za-z_-]{60})" + _END_TOKEN,
       left="token"),
    _f("atlassian-token", "ATATT3xFfGF0{url:170}={HEX:8}",
       rb"ATATT3(?P<b>[A-Za-z0-9_=-]{150,250})(?![A-Za-z0-9_=-])"),
    _f("atlassian-token", "ATBB{b62:28}{HEX:4}", rb"ATBB(?P<b>[A-Za-z0-9]{32})" + _END),
    _f("discord-token", "{discord}.{url:6}.{url:38}",
       rb"(?<![A-Za-z0-9_-])[MNO][A-Za-z0-9_-]{23,27}\.(?P<b>[A-Za-z0-9_-]{6}\.[A-Za-z0-9_-]{27,40})"
       + _END_TOKEN, context=(b"discord",)),
    _f("discord-webhook", "https://discord.com/api/webhooks/{dig:19}/{url:68}",
       rb"https://(?:ptb\.|canary\.)?discord(?:app)?\.com/api/webhooks/[0-9]{17,20}/"
       rb"(?P<b>[A-Za-z0-9_-]{60,70})" + _END_TOKEN, context=(b"discord",), left="none"),
    _f("teams-webhook",
       "https://contoso.webhook.office.com/webhookb2/{uuid}@{uuid}/IncomingWebhook/{hex:32}/{uuid}",
       rb"https://[a-z0-9-]+\.webhook\.office\.com/webhookb2/(?P<b>" + _UUID + rb"@" + _UUID
       + rb"/IncomingWebhook/[a-f0-9]{32}/" + _UUID + rb")(?:/[A-Za-z0-9_-]{20,})?",
       context=(b"webhook.office.com",), left="none"),
    _f("telegram-bot-token", "{dig:10}:AA{url:33}",
       rb"(?<![0-9A-Za-z])[0-9]{8,10}:(?P<b>AA[A-Za-z0-9_-]{33})" + _END_TOKEN, anchor=b":AA",
       window=48),
    _f("databricks-token", "dapi{hex:32}", rb"dapi(?P<b>[a-f0-9]{32})(?:-[0-9])?" + _END),
    _f("doppler-token", ("dp.pt.{b62:43}", "dp.st.prd.{b62:40}", "dp.sa.{b62:43}",
                         "dp.ct.{b62:43}", "dp.scim.{b62:43}", "dp.audit.{b62:43}"),
       rb"dp\.(?:pt|st|sa|ct|scim|audit)\.(?:[a-z0-9_-]{1,40}\.)?(?P<b>[A-Za-z0-9]{40,44})" + _END,
       left="name"),
    _f("vault-token", ("hvs.CAESI{url:86}", "hvb.AAAAAQ{url:132}"),
       rb"hv[sbr]\.(?P<b>[A-Za-z0-9_-]{80,300})" + _END_TOKEN, left="name"),
    _f("terraform-cloud-token", "{b62:14}.atlasv1.{b62:67}",
       rb"(?<![A-Za-z0-9])[A-Za-z0-9]{14}\.atlasv1\.(?P<b>[A-Za-z0-9_=-]{60,70})"
       rb"(?![A-Za-z0-9_=-])", anchor=b".atlasv1.", window=80),
    _f("postman-api-key", "PMAK-{hex:24}-{hex:34}",
       rb"PMAK-(?P<b>[a-f0-9]{24}-[a-f0-9]{34})" + _END),
    _f("linear-api-key", ("lin_api_{b62:40}", "lin_oauth_{hex:64}"),
       rb"lin_(?:api|oauth)_(?P<b>[A-Za-z0-9]{40,64})" + _END, left="token"),
    _f("newrelic-key", ("NRAK-{up:27}", "NRAA-{up:27}", "NRII-{url:32}"),
       rb"NR(?:AK|AA|II|IQ)-(?P<b>[A-Za-z0-9_-]{27,32})" + _END_TOKEN),
    _f("newrelic-key", "{hex:36}NRAL", rb"(?<![A-Za-z0-9])(?P<b>[a-f0-9]{36})NRAL" + _END,
       anchor=b"NRAL", window=40),
    _f("sentry-token", ("sntrys_eyJpYXQiOjE3{b64:120}_{b62:43}", "sntryu_{hex:64}"),
       rb"sntry[su]_(?P<b>[A-Za-z0-9+/=_-]{60,400})(?![A-Za-z0-9+/=_-])"),
    _f("grafana-token", "glc_eyJvIjoi{b64:120}",
       rb"glc_(?P<b>[A-Za-z0-9+/]{32,400}={0,2})(?![A-Za-z0-9+/=])", left="token"),
    _f("grafana-token", "glsa_{b62:32}_{hex:8}",
       rb"glsa_(?P<b>[A-Za-z0-9]{32}_[A-Fa-f0-9]{8})" + _END, left="token"),
    _f("grafana-token", "eyJrIjoi{b64:72}",
       rb"eyJrIjoi(?P<b>[A-Za-z0-9+/]{60,120}={0,2})(?![A-Za-z0-9+/=.])"),
    _f("age-secret-key", "{age}",
       rb"AGE-SECRET-KEY-1(?P<b>[QPZRY9X8GF2TVDW0S3JN54KHCE6MUA7L]{58})(?![A-Z0-9])",
       checksum=_age_ok),
    _f("onepassword-secret", "ops_eyJ{b64:300}",
       rb"ops_eyJ(?P<b>[A-Za-z0-9+/]{250,}={0,3})(?![A-Za-z0-9+/=])", left="token"),
    _f("onepassword-secret", "A3-{up:6}-{up:6}-{up:5}-{up:5}-{up:5}-{up:5}",
       rb"A3-(?P<b>[A-Z0-9]{6}-(?:[A-Z0-9]{11}|[A-Z0-9]{6}-[A-Z0-9]{5})(?:-[A-Z0-9]{5}){3})"
       rb"(?![A-Z0-9-])", entropy=3.5),
    _f("alibaba-access-key-id", "LTAI{b62:20}", rb"LTAI(?P<b>[A-Za-z0-9]{20})" + _END),
    _f("jfrog-token", "AKCp{b62:69}", rb"AKCp(?P<b>[A-Za-z0-9]{69})" + _END),
    _f("jfrog-token", "cmVmdGtuOjAxOjE{b62:49}", rb"cmVmdGtu(?P<b>[A-Za-z0-9]{56})" + _END),
    _f("airtable-token", "pat{b62:14}.{hex:64}",
       rb"pat(?P<b>[A-Za-z0-9]{14}\.[a-f0-9]{64})" + _END),
    _f("clojars-token", "CLOJARS_{low:60}", rb"CLOJARS_(?P<b>[a-z0-9]{60})" + _END),
    _f("contentful-token", "CFPAT-{url:43}", rb"CFPAT-(?P<b>[A-Za-z0-9_-]{43})" + _END_TOKEN),
    _f("dropbox-token", ("sl.B{url:135}", "sl.u.{url:400}"),
       rb"sl\.(?P<b>(?:u\.)?[A-Za-z0-9_-]{130,1500})" + _END_TOKEN, left="name"),
    _f("duffel-token", ("duffel_test_{url:43}", "duffel_live_{url:43}"),
       rb"duffel_(?:test|live)_(?P<b>[A-Za-z0-9_=-]{43})(?![A-Za-z0-9_=-])"),
    _f("dynatrace-token", "dt0c01.{up:24}.{up:64}",
       rb"dt0c01\.(?P<b>[A-Z0-9]{24}\.[A-Z0-9]{64})" + _END),
    _f("easypost-api-key", ("EZAK{b62:54}", "EZTK{b62:54}"),
       rb"EZ[AT]K(?P<b>[A-Za-z0-9]{54})" + _END),
    _f("facebook-access-token", "EAACEdEose0cBA{b62:150}",
       rb"EAA(?P<b>[A-Za-z0-9]{100,400})" + _END, left="token"),
    _f("flutterwave-secret-key", ("FLWSECK_TEST-{hex:32}-X", "FLWSECK-{hex:32}-X"),
       rb"FLWSECK(?:_TEST)?-(?P<b>[a-h0-9]{32})-X" + _END),
    _f("flyio-token", "fo1_{url:43}", rb"fo1_(?P<b>[A-Za-z0-9_-]{43})" + _END_TOKEN, left="token"),
    _f("flyio-token", "fm2_{b64:150}",
       rb"fm[12][ar]?_(?P<b>[A-Za-z0-9+/]{100,}={0,3})(?![A-Za-z0-9+/=])", left="token"),
    _f("frameio-token", "fio-u-{url:64}", rb"fio-u-(?P<b>[A-Za-z0-9_=-]{64})(?![A-Za-z0-9_=-])"),
    _f("groq-api-key", "gsk_{b62:52}", rb"gsk_(?P<b>[A-Za-z0-9]{52})" + _END, left="token"),
    _f("harness-token", "pat.{url:22}.{hex:24}.{b62:20}",
       rb"pat\.(?P<b>[A-Za-z0-9_-]{22}\.[a-f0-9]{24}\.[A-Za-z0-9]{20})" + _END, left="name"),
    _f("harness-token", "sat.{url:22}.{hex:24}.{b62:20}",
       rb"sat\.(?P<b>[A-Za-z0-9_-]{22}\.[a-f0-9]{24}\.[A-Za-z0-9]{20})" + _END, left="name"),
    _f("hubspot-token", ("pat-na1-{uuid}", "pat-eu1-{uuid}"),
       rb"pat-(?:na|eu|ap)[0-9]-(?P<b>" + _UUID + rb")" + _END),
    _f("infracost-api-key", "ico-{b62:32}", rb"ico-(?P<b>[A-Za-z0-9]{32})" + _END),
    _f("langsmith-api-key", ("lsv2_pt_{hex:32}_{hex:10}", "lsv2_sk_{hex:32}_{hex:10}"),
       rb"lsv2_(?:pt|sk)_(?P<b>[a-f0-9]{32}_[a-f0-9]{10})" + _END),
    _f("maxmind-license-key", "{b62:6}_{b62:29}_mmk",
       rb"(?<![A-Za-z0-9_])(?P<b>[A-Za-z0-9]{6}_[A-Za-z0-9]{29})_mmk" + _END, anchor=b"_mmk",
       window=40),
    _f("mapbox-secret-token", "sk.eyJ1Ijoi{url:60}.{url:22}",
       rb"sk\.eyJ(?P<b>[A-Za-z0-9_-]{50,}\.[A-Za-z0-9_-]{20,})" + _END_TOKEN, left="name"),
    _f("nuget-api-key", "oy2{low:43}", rb"oy2(?P<b>[a-z0-9]{43})" + _END),
    _f("openshift-token", "sha256~{url:43}", rb"sha256~(?P<b>[A-Za-z0-9_-]{43})" + _END_TOKEN),
    _f("perplexity-api-key", "pplx-{b62:48}", rb"pplx-(?P<b>[A-Za-z0-9]{48})" + _END),
    _f("planetscale-token", ("pscale_pw_{url:43}", "pscale_tkn_{url:43}", "pscale_oauth_{url:43}"),
       rb"pscale_(?:pw|tkn|oauth)_(?P<b>[A-Za-z0-9_=.-]{32,64})(?![A-Za-z0-9_=.-])"),
    _f("prefect-api-key", "pnu_{b62:36}", rb"pnu_(?P<b>[A-Za-z0-9]{36})" + _END, left="token"),
    _f("pulumi-token", "pul-{hex:40}", rb"pul-(?P<b>[a-f0-9]{40})" + _END),
    _f("readme-api-key", "rdme_{low:70}", rb"rdme_(?P<b>[a-z0-9]{70})" + _END),
    _f("rubygems-api-key", "rubygems_{hex:48}", rb"rubygems_(?P<b>[a-f0-9]{48})" + _END),
    _f("scalingo-token", "tk-us-{url:48}", rb"tk-us-(?P<b>[A-Za-z0-9_-]{48})" + _END_TOKEN),
    _f("brevo-api-key", "xkeysib-{hex:64}-{b62:16}",
       rb"xkeysib-(?P<b>[a-f0-9]{64}-[A-Za-z0-9]{16})" + _END),
    _f("shippo-token", ("shippo_live_{hex:40}", "shippo_test_{hex:40}"),
       rb"shippo_(?:live|test)_(?P<b>[a-f0-9]{40})" + _END),
    _f("sonarqube-token", ("squ_{hex:40}", "sqp_{hex:40}", "sqa_{hex:40}"),
       rb"sq[upa]_(?P<b>[a-f0-9]{40})" + _END, left="token"),
    _f("sourcegraph-token", ("sgp_{hex:40}", "sgp_{hex:16}_{hex:40}"),
       rb"sgp_(?P<b>(?:[a-f0-9]{16}_)?[a-f0-9]{40})" + _END, left="token"),
    _f("typeform-token", "tfp_{url:44}_{url:14}",
       rb"tfp_(?P<b>[A-Za-z0-9_.=-]{55,70})(?![A-Za-z0-9_.=-])", left="token"),
    _f("yandex-key", "AQVN{url:36}", rb"AQVN(?P<b>[A-Za-z0-9_-]{35,38})" + _END_TOKEN),
    _f("yandex-key", "YCA{url:37}", rb"YC(?P<b>[A-Za-z0-9_-]{38})" + _END_TOKEN, entropy=3.8),
    _f("cloudflare-origin-ca-key", "v1.0-{hex:24}-{hex:146}",
       rb"v1\.0-(?P<b>[a-f0-9]{24}-[a-f0-9]{146})" + _END),
    _f("adobe-client-secret", "p8e-{url:32}", rb"p8e-(?P<b>[A-Za-z0-9_-]{32})" + _END_TOKEN),
    _f("plaid-access-token", ("access-sandbox-{uuid}", "access-production-{uuid}"),
       rb"access-(?:sandbox|development|production)-(?P<b>" + _UUID + rb")" + _END, left="name"),
    _f("braintree-access-token", "access_token$production${low:16}${hex:32}",
       rb"access_token\$(?:production|sandbox)\$(?P<b>[a-z0-9]{16}\$[a-f0-9]{32})" + _END),
    _f("octopus-api-key", "API-{up:26}", rb"API-(?P<b>[A-Z0-9]{26,32})" + _END, entropy=3.6),
    _f("defined-networking-token", "dnkey-{low:26}-{low:52}",
       rb"dnkey-(?P<b>[a-z0-9=_-]{26}-[a-z0-9=_-]{52})(?![a-z0-9=_-])"),
    _f("intra42-secret", ("s-s4t2ud-{hex:64}", "s-s4t2af-{hex:64}"),
       rb"s-s4t2(?:ud|af)-(?P<b>[a-f0-9]{64})" + _END),
)
# fmt: on


# -- fake keys ---------------------------------------------------------------------------------

_ALPHABETS = {
    "b62": BASE62,
    "hex": "0123456789abcdef",
    "HEX": "0123456789ABCDEF",
    "dig": "0123456789",
    "up": "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789",
    "low": "abcdefghijklmnopqrstuvwxyz0123456789",
    "alpha": "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz",
    "url": BASE62 + "_-",
    "b64": BASE62 + "+/",
    "azure": BASE62 + "_~.-",
}
_FIELD = re.compile(r"\{(\w+)(?::(\d+))?\}")


def sample(shape: str, rng: random.Random) -> str:
    """A fake key of ``shape``, drawn from ``rng``: random where the format is random, with a
    valid checksum where it has one. For tests and benchmarks; never a real key.

    Fields: ``{b62:N}``, ``{hex:N}``, ``{HEX:N}``, ``{dig:N}``, ``{up:N}``, ``{low:N}``,
    ``{alpha:N}``, ``{url:N}``, ``{b64:N}`` (N characters of that alphabet), ``{uuid}``,
    ``{crc}`` (GitHub's checksum of the random characters so far), ``{age}`` (an age secret
    key), ``{pypi:N}``/``{testpypi:N}`` (a PyPI token body), ``{discord}`` (a base64 user id).
    """
    out: list[str] = []
    drawn: list[str] = []
    pos = 0
    for m in _FIELD.finditer(shape):
        out.append(shape[pos : m.start()])
        pos = m.end()
        name, count = m.group(1), int(m.group(2) or 0)
        if name in _ALPHABETS:
            text = "".join(rng.choice(_ALPHABETS[name]) for _ in range(count))
            drawn.append(text)
        elif name == "crc":
            text = base62(zlib.crc32("".join(drawn).encode()), 6)
        elif name == "uuid":
            h = "".join(rng.choice("0123456789abcdef") for _ in range(32))
            text = f"{h[:8]}-{h[8:12]}-4{h[13:16]}-a{h[17:20]}-{h[20:]}"
        elif name == "age":
            text = bech32_encode("age-secret-key-", rng.randbytes(32)).upper()
        elif name in ("pypi", "testpypi"):
            index = b"pypi.org" if name == "pypi" else b"test.pypi.org"
            head = b"\x02\x01\x08" + index if name == "pypi" else b"\x02\x01\x0d" + index
            raw = head + b"\x02\x25\x00" + rng.randbytes(count * 3 // 4)
            text = base64.urlsafe_b64encode(raw).decode().rstrip("=")
        elif name == "discord":
            text = base64.b64encode(str(rng.randint(10**17, 10**18)).encode()).decode()
            text = text.rstrip("=")
        else:
            raise ValueError(f"unknown field {{{name}}} in shape {shape!r}")
        out.append(text)
    out.append(shape[pos:])
    return "".join(out)
