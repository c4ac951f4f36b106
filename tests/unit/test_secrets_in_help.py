"""No command's ``--help`` shows a secret from the environment (``KAFKA_SASL_PASSWORD``,
``KAFKA_SSL_KEY_PASSWORD``), whatever else is set: every sub-command the parser knows is asked.

The secured-broker side of the secret search (everything the commands write, the HTTP endpoints of
a running service, its settings line at DEBUG) is in ``tests/security/test_modes.py``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

import pytest

from service.cli import make_parser

SASL_SECRET = "sasl-Secret-8c1f2e"
KEY_SECRET = "key-Secret-77ab90"


def _commands() -> list[str]:
    actions = [a for a in make_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return sorted(actions[0].choices)


def test_every_command_is_asked() -> None:
    assert {"run", "parse", "demo", "produce", "redrive"} <= set(_commands())


@pytest.mark.parametrize("command", [None, *_commands()])
def test_help_shows_no_secret(command: str | None) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("INGEST_", "KAFKA_"))}
    env.update(
        KAFKA_SECURITY_PROTOCOL="SASL_SSL",
        KAFKA_SASL_MECHANISM="PLAIN",
        KAFKA_SASL_USERNAME="svc",
        KAFKA_SASL_PASSWORD=SASL_SECRET,
        KAFKA_SSL_KEY_PASSWORD=KEY_SECRET,
        INGEST_LOG_LEVEL="DEBUG",
    )
    args = [sys.executable, "-m", "service", *([] if command is None else [command]), "--help"]
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=60, check=False)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "usage: marker-ingest" in done.stdout
    assert SASL_SECRET not in output
    assert KEY_SECRET not in output
