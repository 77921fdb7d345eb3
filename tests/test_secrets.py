"""Secret providers: env, file and command, per environment; values never leak."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from airlock.errors import SecretError
from airlock.masking import Masker
from airlock.model import SecretsModel
from airlock.secrets import SecretResolver, parse_dotenv

PLANTED = "pl4nted-s3cret-value-771"


def test_dotenv_parsing() -> None:
    """export prefixes, quotes and comments are understood."""
    text = "# comment\nexport A=1\nB=\"two words\"\nC='x#y'\nD=plain # trailing\n\nbad line\n"
    assert parse_dotenv(text) == {"A": "1", "B": "two words", "C": "x#y", "D": "plain"}


def test_env_provider_with_prefix(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The env provider reads <prefix>NAME from the process environment."""
    monkeypatch.setenv("PROD_TOKEN", PLANTED)
    resolver = SecretResolver("production", SecretsModel(prefix="PROD_"), root=tmp_path)
    assert resolver.require("TOKEN") == PLANTED
    assert resolver.lookup("MISSING") is None
    with pytest.raises(SecretError) as info:
        resolver.require("MISSING", used_by="api.KEY")
    assert "PROD_NAME" in str(info.value) and "api.KEY" in str(info.value)


def test_file_provider(tmp_path: Path) -> None:
    """The file provider reads a dotenv file; a missing file is a clear error."""
    secrets_file = tmp_path / "prod.env"
    secrets_file.write_text(f"TOKEN={PLANTED}\n")
    resolver = SecretResolver(
        "production", SecretsModel(provider="file", path=str(secrets_file)), root=tmp_path
    )
    assert resolver.require("TOKEN") == PLANTED
    missing = SecretResolver(
        "production", SecretsModel(provider="file", path="nope.env"), root=tmp_path
    )
    with pytest.raises(SecretError) as info:
        missing.lookup("TOKEN")
    assert "does not exist" in str(info.value) and str(tmp_path / "nope.env") in str(info.value)


def script(tmp_path: Path, body: str) -> str:
    path = tmp_path / "provider.py"
    path.write_text(body)
    return f"{sys.executable} {path} {{name}}"


def test_command_provider(tmp_path: Path) -> None:
    """The command provider runs the command with the name and reads stdout."""
    command = script(tmp_path, f"import sys\nprint('{PLANTED}-' + sys.argv[1])\n")
    resolver = SecretResolver(
        "production", SecretsModel(provider="command", command=command), root=tmp_path
    )
    assert resolver.require("TOKEN") == f"{PLANTED}-TOKEN"


def test_a_failing_command_is_a_clear_error(tmp_path: Path) -> None:
    """A command that exits non-zero names the secret and the exit code, not a value."""
    command = script(
        tmp_path, "import sys\nsys.stderr.write('vault: permission denied')\nsys.exit(3)\n"
    )
    resolver = SecretResolver(
        "production", SecretsModel(provider="command", command=command), root=tmp_path
    )
    with pytest.raises(SecretError) as info:
        resolver.lookup("TOKEN")
    assert "exit 3" in str(info.value) and "permission denied" in str(info.value)


def test_a_hanging_command_times_out(tmp_path: Path) -> None:
    """A command that waits forever (a login prompt?) is stopped after the timeout."""
    command = script(tmp_path, "import time\ntime.sleep(30)\n")
    resolver = SecretResolver(
        "production",
        SecretsModel(provider="command", command=command, timeout=0.5),
        root=tmp_path,
    )
    with pytest.raises(SecretError) as info:
        resolver.lookup("TOKEN")
    assert "did not answer within 0.5s" in str(info.value)


def test_a_missing_command_is_a_clear_error(tmp_path: Path) -> None:
    """A provider command that does not exist says so."""
    resolver = SecretResolver(
        "production",
        SecretsModel(provider="command", command="no-such-vault get {name}"),
        root=tmp_path,
    )
    with pytest.raises(SecretError) as info:
        resolver.lookup("TOKEN")
    assert "'no-such-vault' was not found" in str(info.value)


def test_masker_masks_longest_first() -> None:
    """Known values are replaced, longer ones first; short ones are left alone."""
    masker = Masker("abc", "secret-1", "secret-1-long")
    assert masker.mask("x secret-1-long y secret-1 abc") == "x **** y **** abc"
