"""A CI-sized run of the compiled path's differential fuzzer (``scripts/fuzz_compiled.py``), and a
check that it bites.

Long runs are a separate command: ``python scripts/fuzz_compiled.py --inputs 1000000``.
``FUZZ_SECONDS`` sets the length of the run here (default 20).
"""

from __future__ import annotations

import importlib.util
import os
import random
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from service.core import events
from service.core.events import Outcome, Source, compiled_articles
from service.core.limits import Limits

pytestmark = [
    pytest.mark.fuzz,
    pytest.mark.skipif(not events.COMPILED, reason="the compiled record path is not built"),
]

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "fuzz_compiled.py"
SECONDS = float(os.environ.get("FUZZ_SECONDS", "20"))
SEED = (ROOT / "tests" / "fixtures" / "seed_2433.txt").read_bytes()
SOURCE = Source("fuzz.in", 3, 77, 1_700_000_000_000, b"k")


def _load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fuzz_compiled", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.timeout(SECONDS + 120)
def test_a_short_differential_run_finds_nothing() -> None:
    run = subprocess.run(
        [sys.executable, str(SCRIPT), "--inputs", "10000000", "--seconds", str(SECONDS)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=SECONDS + 100,
        check=False,
    )
    print(run.stdout)
    assert run.returncode == 0, run.stdout[-5000:] + run.stderr[-3000:]
    figures = dict(re.findall(r"^(inputs|failures)\s+(\d+)", run.stdout, re.M))
    assert figures["failures"] == "0"
    assert int(figures["inputs"]) >= 20 * SECONDS, "the run was too slow to mean much"
    match = re.search(r"^compiled path\s+took (\d+), declined (\d+)", run.stdout, re.M)
    assert match is not None
    taken, declined = map(int, match.groups())
    # Both sides of the comparison are exercised: answers compared byte for byte, and fallbacks.
    assert taken >= 0.2 * (taken + declined)
    assert declined >= 0.2 * (taken + declined)


def test_the_checks_accept_the_real_paths() -> None:
    fuzz = _load_script()
    stats: Counter[str] = Counter()
    gen = fuzz.Gen(random.Random(1))
    for _ in range(200):
        fuzz.check(*gen.case(), stats)
    assert stats["taken"] > 0
    assert stats["declined"] > 0


def _flips_a_byte(*args: Any, **kwargs: Any) -> list[Outcome] | None:
    outcomes = compiled_articles(*args, **kwargs)
    if not outcomes:
        return outcomes
    first = outcomes[0]
    value = first.value.replace(b'"fn":', b'"fn": ', 1)
    return [first._replace(value=value), *outcomes[1:]]


def _declines_everything(*args: Any, **kwargs: Any) -> list[Outcome] | None:
    return None


def _takes_too_much(*args: Any, **kwargs: Any) -> list[Outcome] | None:
    from service.core.events import process_payload_reference

    payload, source, limits = args
    outcomes = compiled_articles(*args, **kwargs)
    if outcomes is None:
        return process_payload_reference(payload, source, limits, now=kwargs["now"], version="fuzz")
    return outcomes


@pytest.mark.parametrize(
    ("broken", "payload"),
    [
        (_flips_a_byte, SEED),
        (_declines_everything, SEED),
        (_takes_too_much, SEED + b" stray"),
    ],
)
def test_the_checks_catch_a_broken_compiled_path(broken: Any, payload: bytes) -> None:
    fuzz = _load_script()
    fuzz.compiled_articles = broken
    with pytest.raises(fuzz.Disagreement):
        fuzz.check(payload, SOURCE, Limits(), None, Counter())
