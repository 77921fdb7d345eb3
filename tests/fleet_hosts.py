"""pytest fixtures for the testbed of SSH hosts (:mod:`airlock.testbed`).

Registered by ``pytest_plugins = ["tests.fleet_hosts"]`` in ``tests/conftest.py``:

* ``fleet`` (session): the :class:`~airlock.testbed.Fleet`; ``fleet.hosts(n)`` gives ``n``
  hosts, ready.
* ``fleet_hosts``: ``fleet.hosts(3)``.

Where the machine cannot do it (see :func:`~airlock.testbed.fleet_support`) they skip, and under
``CI=true`` they fail: a skipped fleet must not pass CI.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest

from airlock.testbed import Fleet, FleetHost, fleet_support

__all__ = ["Fleet", "FleetHost", "fleet", "fleet_hosts", "fleet_support"]

#: hidden (empty) on the hosts: this checkout, with its .venv and the airlock sources
HIDDEN = (str(Path(__file__).resolve().parents[1]),)


# -- pytest fixtures --------------------------------------------------------------------------


def _unavailable(reason: str) -> NoReturn:
    if os.environ.get("CI") == "true":
        pytest.fail(f"fleet test hosts are required in CI: {reason}", pytrace=False)
    pytest.skip(f"fleet test hosts unavailable: {reason}")


@pytest.fixture(scope="session")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """The session's fleet of SSH test hosts; ``fleet.hosts(n)`` for ``n`` of them."""
    ok, reason = fleet_support()
    if not ok:
        _unavailable(reason)
    with Fleet(tmp_path_factory.mktemp("fleet"), hidden_dirs=HIDDEN) as session_fleet:
        yield session_fleet


@pytest.fixture
def fleet_hosts(fleet: Fleet) -> list[FleetHost]:
    """Three hosts of the session's fleet, link up and sshd listening."""
    return fleet.hosts(3)
