"""Fixtures of the fault-injection suite: a fleet of service processes, cleaned up whatever happens."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults.harness import Fleet


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    """Starts ``python -m service run`` processes; kills any still running when the test ends."""
    fleet = Fleet(tmp_path)
    try:
        yield fleet
    finally:
        fleet.cleanup()
