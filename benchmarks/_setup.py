"""Shared set-up of the benchmarks."""

from __future__ import annotations

import compileall
from pathlib import Path

import airlock


def compile_airlock() -> None:
    """Write the bytecode of the ``airlock`` package, as an installed wheel has it.

    A development checkout run with ``PYTHONDONTWRITEBYTECODE=1`` would otherwise compile every
    module from source at each CLI start (about 0.1 s here), which no installed copy does.
    """
    compileall.compile_dir(Path(airlock.__file__).parent, quiet=1, force=False)
