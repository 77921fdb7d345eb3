"""Airlock: safe, fast and measured releases of multi-service systems.

The library face is :mod:`airlock.api` (every CLI command is a function there); the release
engine is :mod:`airlock.engine`; :mod:`airlock.simulate` drives it on a virtual clock.
"""

from __future__ import annotations

from typing import Any

__all__ = ["__version__"]


def __getattr__(name: str) -> Any:
    # importlib.metadata takes a tenth of a second to import: only pay for it when asked
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("airlock")
        except PackageNotFoundError:  # running from a source tree that was not installed
            return "0.0.0"
    raise AttributeError(f"module 'airlock' has no attribute {name!r}")
