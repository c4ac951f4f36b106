"""The chaos suite runs only when asked for (``-m chaos``): each run takes minutes, and CI gives it
a block of its own in scripts/test. The summaries of the runs are printed at the end."""

from __future__ import annotations

import pytest

SUMMARIES = pytest.StashKey[list[str]]()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect the chaos runs unless the marker expression names them."""
    if "chaos" in (config.getoption("markexpr") or ""):
        return
    chaos = [item for item in items if item.get_closest_marker("chaos") is not None]
    if chaos:
        config.hook.pytest_deselected(items=chaos)
        items[:] = [item for item in items if item.get_closest_marker("chaos") is None]


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    """The summary of every chaos run of the session."""
    summaries = config.stash.get(SUMMARIES, [])
    if summaries:
        terminalreporter.section("chaos runs")
        for text in summaries:
            terminalreporter.write_line(text)
