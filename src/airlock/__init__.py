"""Airlock: safe, fast and measured releases of multi-service systems.

The library face is :mod:`airlock.api` (every CLI command is a function there); the release
engine is :mod:`airlock.engine`; :mod:`airlock.simulate` drives it on a virtual clock.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("airlock")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0"

__all__ = ["__version__"]
