"""Shared set-up of the unit suite: hypothesis profiles.

The default profile ("dev") keeps the whole unit suite well under a minute on a small machine. Long
runs select another profile through the environment::

    HYPOTHESIS_PROFILE=fuzz pytest tests/unit/test_properties.py -q -p no:cacheprovider --timeout=0

(``--timeout=0`` lifts pytest-timeout's 300 s per test: a fuzz test runs for minutes.)
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from hypothesis import HealthCheck, settings

# The test modules import their shared builders (markertext.py) as a top-level module, whether or not
# this directory is a package.
_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

# Wall-clock deadlines are flaky on a shared machine; the budgets below bound the run time instead.
settings.register_profile("dev", max_examples=100, deadline=None)
settings.register_profile("ci", max_examples=300, deadline=None, print_blob=True)
settings.register_profile(
    "fuzz",
    max_examples=10_000,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))
