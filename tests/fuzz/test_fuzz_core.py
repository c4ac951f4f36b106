"""A CI-sized run of the core's fuzzer (``scripts/fuzz_core.py``), and a check that its oracle bites.

Long runs are a separate command: ``python scripts/fuzz_core.py --seconds 600``. ``FUZZ_SECONDS``
sets the length of the run here (default 20).
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from service.core.events import Source, process_payload
from service.core.limits import Limits

pytestmark = [pytest.mark.fuzz]

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "fuzz_core.py"
SECONDS = float(os.environ.get("FUZZ_SECONDS", "20"))


def _load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fuzz_core", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.timeout(SECONDS + 120)
def test_a_short_fuzz_run_of_the_core_finds_nothing() -> None:
    run = subprocess.run(
        [sys.executable, str(SCRIPT), "--seconds", str(SECONDS)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=SECONDS + 100,
        check=False,
    )
    print(run.stdout)
    assert run.returncode == 0, run.stdout[-5000:] + run.stderr[-3000:]
    figures = dict(re.findall(r"^(examples run|examples/s|failures)\s+(\d+)", run.stdout, re.M))
    assert figures["failures"] == "0"
    assert int(figures["examples run"]) >= 20 * SECONDS, "the run was too slow to mean much"
    outcomes = run.stdout.split("outcomes", 1)[1]
    for kind in ("article", "invalid_encoding", "no_markers", "unterminated_field", "invalid_field"):
        assert f"{kind}=" in outcomes, f"the run never produced {kind}: {outcomes}"


SOURCE = Source("fuzz.in", 3, 77, 1_700_000_000_000, b"k")
TWO_RECORDS = (
    b"F-N-S-T-A-R-T. 1 F-N-E-N-D. D-A-T-E-S-T-A-R-T. 2024-01-24 D-A-T-E-E-N-D. "
    b"T-I-T-L-E-S-T-A-R-T. t T-I-T-L-E-E-N-D. T-E-X-T-S-T-A-R-T. x T-E-X-T-E-N-D. "
    b"F-N-S-T-A-R-T. 2 F-N-E-N-D. D-A-T-E-S-T-A-R-T. 2024-02-30 D-A-T-E-E-N-D. "
    b"T-I-T-L-E-S-T-A-R-T. t T-I-T-L-E-E-N-D. T-E-X-T-S-T-A-R-T. x T-E-X-T-E-N-D."
)


def test_the_oracle_accepts_the_real_core() -> None:
    fuzz = _load_script()
    stats: Counter[str] = Counter()
    for payload in (TWO_RECORDS, None, b"\xc0\xaf", b"no markers", b"F-N-S-T-A-R-T. " * 3):
        fuzz.check(payload, SOURCE, Limits(), stats)
    assert stats["article"] == 1
    assert stats["invalid_field"] == 1


def _drop_last(*args: Any, **kwargs: Any) -> list[Any]:
    return process_payload(*args, **kwargs)[:-1]


def _wrong_id(*args: Any, **kwargs: Any) -> list[Any]:
    outcomes = process_payload(*args, **kwargs)
    return [outcomes[0]._replace(event_id="other:0:0:0"), *outcomes[1:]]


def _raises(*args: Any, **kwargs: Any) -> list[Any]:
    raise ValueError("boom")


@pytest.mark.parametrize("broken", [_drop_last, _wrong_id, _raises])
def test_the_oracle_catches_a_broken_core(broken: Any) -> None:
    fuzz = _load_script()
    fuzz.process_payload = broken
    with pytest.raises((AssertionError, ValueError)):
        fuzz.check(TWO_RECORDS, SOURCE, Limits(), Counter())
