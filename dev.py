#!/usr/bin/env python3
"""Developer entry point that needs nothing but Python 3 and this checkout.

    python3 dev.py demo    # create .venv, install Airlock, run `airlock demo`
    python3 dev.py test    # create .venv, install Airlock with test tools, run the whole suite

The virtual environment is created once and reinstalled only when pyproject.toml changes.
Extra arguments go to the command: `python3 dev.py test -k deploy`, `python3 dev.py demo --keep`.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
STAMP = VENV / ".dev-installed"


def run(*args: str | Path) -> int:
    print("+", " ".join(str(a) for a in args), flush=True)
    return subprocess.call([str(a) for a in args], cwd=ROOT)


def ensure_venv(extras: str) -> None:
    """Create .venv and install the project (editable) when missing or out of date."""
    if sys.version_info < (3, 11):  # noqa: UP036 - dev.py runs on any python3 to say so
        sys.exit(f"Airlock needs Python 3.11 or newer; this is {sys.version.split()[0]}")
    wanted = hashlib.sha256((ROOT / "pyproject.toml").read_bytes() + extras.encode()).hexdigest()
    if STAMP.is_file() and STAMP.read_text() == wanted:
        return
    if not (BIN / "python").exists():
        print(f"creating {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    pip = [BIN / "python", "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    target = f".[{extras}]" if extras else "."
    if run(*pip, "-e", target) != 0:
        sys.exit("installing Airlock into .venv failed (see pip's message above)")
    STAMP.write_text(wanted)


SARIF_PACKAGE = "@microsoft/jest-sarif@1.0.0-beta.0"  # ships the official SARIF 2.1.0 schema
SARIF_MEMBER = "package/lib/schemas/sarif-2.1.0-rtm.5.json"
SARIF_SCHEMA = ROOT / ".cache" / "sarif-2.1.0.json"


def ensure_sarif_schema() -> None:
    """Fetch the SARIF 2.1.0 JSON Schema once (from the npm registry), for the SARIF test."""
    if SARIF_SCHEMA.is_file() or shutil.which("npm") is None:
        return
    SARIF_SCHEMA.parent.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        result = subprocess.run(
            ["npm", "pack", SARIF_PACKAGE, "--pack-destination", tmp, "--silent"],
            capture_output=True,
            text=True,
            check=False,
        )
        archives = list(Path(tmp).glob("*.tgz"))
        if result.returncode != 0 or not archives:
            print("note: could not fetch the SARIF schema; its test will be skipped", flush=True)
            return
        with tarfile.open(archives[0]) as archive:
            member = archive.extractfile(SARIF_MEMBER)
            if member is not None:
                SARIF_SCHEMA.write_bytes(member.read())


def test(args: list[str]) -> int:
    ensure_venv("test")
    ensure_sarif_schema()
    python = BIN / "python"
    for step in (
        [python, "-m", "ruff", "check", "src", "tests", "benchmarks", "examples"],
        [python, "-m", "ruff", "format", "--check", "src", "tests", "benchmarks", "examples"],
        [python, "-m", "mypy"],
        [BIN / "airlock", "secrets", "scan", "."],  # no committed secrets here either
    ):
        if run(*step) != 0:
            return 1
    code = run(python, "-m", "pytest", *args)
    if code == 5:
        print("error: pytest collected no tests; refusing to call that a pass", file=sys.stderr)
    return code


def demo(args: list[str]) -> int:
    ensure_venv("")
    return run(BIN / "airlock", "demo", *args)


def main() -> int:
    commands = {"test": test, "demo": demo}
    if len(sys.argv) < 2 or sys.argv[1] not in commands:
        print(__doc__)
        return 2
    return commands[sys.argv[1]](sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
