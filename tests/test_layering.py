"""The layering of docs/architecture.md, enforced: an import that crosses it fails this test.

Every ``import airlock…`` in ``src/airlock`` is read (also those inside functions; not those
under ``if TYPE_CHECKING:``, which exist for type hints only) and checked against the table
below, which is the table of the architecture page.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "airlock"

SHARED = {
    "airlock",
    "airlock.errors",
    "airlock.findings",
    "airlock.paths",
    "airlock.masking",
    "airlock.clock",
    "airlock.graph",
}
#: The Runtime protocol and open_runtime; concrete runtimes are airlock.runtimes.<name>.
PROTOCOL = "airlock.runtimes"

#: layer (a module or a package) → what it may import besides the shared types and itself.
ALLOWED: dict[str, set[str]] = {
    "airlock.model": set(),
    "airlock.engine": set(),
    "airlock.plan": {"airlock.model", "airlock.engine"},
    "airlock.secrets": {"airlock.model"},
    "airlock.state": set(),
    "airlock.metrics": set(),
    "airlock.runtimes": {"airlock.model"},
    "airlock.checks": {"airlock.model", "airlock.plan", "airlock.secrets", PROTOCOL},
    "airlock.bundle": {"airlock.model", "airlock.plan", "airlock.checks", "airlock.state"},
    "airlock.db": {"airlock.model", "airlock.secrets", "airlock.bundle"},
    "airlock.simulate": {"airlock.engine", PROTOCOL},
    "airlock.runner": {
        "airlock.engine",
        "airlock.plan",
        "airlock.model",
        "airlock.secrets",
        "airlock.bundle",
        "airlock.checks",
        "airlock.db",
        "airlock.state",
        PROTOCOL,
    },
}
LIBRARY = {
    "airlock.api",
    "airlock.gonogo",
    "airlock.demo",
    "airlock.testbed",
    "airlock.traffic",
    "airlock.sandbox",
    "airlock.rollback_proof",
    "airlock.discover",
    "airlock.preflight",
}
FACES = {"airlock.cli", "airlock.web", "airlock.entry"}


def module_name(path: Path, src: Path = SRC) -> str:
    parts = path.relative_to(src.parent).with_suffix("").parts
    name = ".".join(parts)
    return name.removesuffix(".__init__")


def layer_of(module: str) -> str:
    for layer in sorted([*ALLOWED, *LIBRARY, *FACES, *SHARED], key=len, reverse=True):
        if module == layer or module.startswith(layer + "."):
            return layer
    raise AssertionError(f"{module} belongs to no layer of the table: add it")


def imports(path: Path, src: Path = SRC) -> Iterator[tuple[int, str]]:
    """(line, imported module) for each ``airlock`` import outside ``if TYPE_CHECKING:``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    typing_only: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                for inner in ast.walk(child):
                    typing_only.add(id(inner))
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "airlock":
                    yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] != "airlock":
                continue
            for alias in node.names:
                # `from airlock import api` imports the module airlock.api
                candidate = f"{node.module}.{alias.name}"
                file = src.parent / Path(*candidate.split("."))
                is_module = file.with_suffix(".py").is_file() or file.is_dir()
                yield node.lineno, candidate if is_module else node.module


def crossings(src: Path = SRC) -> list[str]:
    found = []
    for path in sorted(src.rglob("*.py")):
        module = module_name(path, src)
        layer = layer_of(module)
        for line, target in imports(path, src):
            where = f"{path.relative_to(src.parent)}:{line}: {module} imports {target}"
            target_layer = layer_of(target)
            if target_layer in SHARED or target_layer == layer:
                continue
            if target_layer in FACES and layer not in FACES:
                found.append(f"{where} (nothing but a face imports a face)")
            elif target.startswith(PROTOCOL + ".") and layer != PROTOCOL:
                found.append(f"{where} (a concrete runtime: use airlock.runtimes.open_runtime)")
            elif layer in FACES or layer in LIBRARY:
                continue
            elif layer in SHARED:
                found.append(f"{where} (shared types import nothing of ours)")
            elif target_layer in LIBRARY or (
                target_layer not in ALLOWED[layer]
                and not (target == PROTOCOL and PROTOCOL in ALLOWED[layer])
            ):
                found.append(where)
    return found


def test_no_import_crosses_the_layering_table() -> None:
    assert crossings() == []


def test_the_checker_reports_crossings(tmp_path: Path) -> None:
    """On a made-up tree: an engine importing a runtime, checks importing a concrete runtime
    and the state store, a lazy import in a function, and a type-only import (allowed)."""
    src = tmp_path / "airlock"
    (src / "runtimes").mkdir(parents=True)
    (src / "checks").mkdir()
    for name in ("__init__.py", "runtimes/__init__.py", "runtimes/local.py", "checks/__init__.py"):
        (src / name).write_text("")
    (src / "state.py").write_text("")
    (src / "model.py").write_text("")
    (src / "engine.py").write_text("from airlock.runtimes import Runtime\n")
    (src / "checks" / "load.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "from airlock.runtimes import open_runtime\n"
        "if TYPE_CHECKING:\n"
        "    from airlock.state import StateStore\n"
        "def run() -> None:\n"
        "    from airlock.runtimes.local import LocalRuntime\n"
        "    from airlock.state import open_state\n"
    )
    assert crossings(src) == [
        "airlock/checks/load.py:6: airlock.checks.load imports airlock.runtimes.local "
        "(a concrete runtime: use airlock.runtimes.open_runtime)",
        "airlock/checks/load.py:7: airlock.checks.load imports airlock.state",
        "airlock/engine.py:1: airlock.engine imports airlock.runtimes",
    ]


def test_every_layer_of_the_table_is_on_the_architecture_page() -> None:
    page = (SRC.parents[1] / "docs" / "architecture.md").read_text(encoding="utf-8")
    for layer in [*ALLOWED, *LIBRARY, *FACES, *(SHARED - {"airlock"})]:
        assert f"`{layer}`" in page, f"{layer} is not on docs/architecture.md"
