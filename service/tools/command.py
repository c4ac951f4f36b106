"""What every ``marker-ingest`` sub-command shares: the connection flags, the settings built from
the environment and the flags (with the one-line error and the warnings about unknown variables),
and the logging of an operator tool. ``cli`` and the operator tools import it; it imports neither.
The exit statuses are ``service.errors.ExitStatus``.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import logging
import os
import sys
from collections.abc import Callable, Iterator, Mapping

import structlog

from service.core.kafka_names import topic_name_problem
from service.ops.logs import configure_logging
from service.settings import PREFIXES, VARIABLES, Settings, load_settings

_FLAG_TO_FIELD = {
    "bootstrap_servers": "kafka_bootstrap_servers",
    "input_topic": "input_topic",
    "output_topic": "output_topic",
    "dlq_topic": "dlq_topic",
    "group_id": "group_id",
    "max_messages": "max_messages",
    "burst": "burst",
    "http_port": "http_port",
    "log_format": "log_format",
    "log_level": "log_level",
    "max_payload_bytes": "max_payload_bytes",
}


def unknown_variables(environ: Mapping[str, str] | None = None) -> list[tuple[str, str | None]]:
    """The ``KAFKA_*`` and ``INGEST_*`` variables (in any case) that are no setting, with the nearest
    setting's name (None when none is near): a typo would otherwise be ignored in silence."""
    env = os.environ if environ is None else environ
    known = list(VARIABLES)
    found = []
    for name in sorted(env):
        if name in VARIABLES or not name.upper().startswith(PREFIXES):
            continue
        nearest = difflib.get_close_matches(name.upper(), known, n=1, cutoff=0.75)
        found.append((name, nearest[0] if nearest else None))
    return found


def describe_unknown(name: str, nearest: str | None) -> str:
    """The warning line for one unknown variable."""
    hint = f" (did you mean {nearest}?)" if nearest else ""
    return f"unknown setting {name} ignored{hint}"


Warn = Callable[[str, str | None], None]
"""Told each unknown ``KAFKA_*``/``INGEST_*`` variable and the nearest setting's name."""


def warn_on_stderr(name: str, nearest: str | None) -> None:
    """A warning line on stderr, for the commands whose stdout carries their output."""
    sys.stderr.write(f"marker-ingest: warning: {describe_unknown(name, nearest)}\n")


def build_settings(args: argparse.Namespace, *, warn: Warn | None = warn_on_stderr) -> Settings:
    """Settings from the environment, overridden by the flags that were given.

    Raises ``SettingsError`` naming the bad variable, or the flag when a flag gave the value. Each
    unknown ``KAFKA_*``/``INGEST_*`` variable is passed to ``warn`` (a typo must not pass unseen).
    """
    given = {flag: getattr(args, flag) for flag in _FLAG_TO_FIELD if getattr(args, flag, None) is not None}
    settings = load_settings(
        {_FLAG_TO_FIELD[flag]: value for flag, value in given.items()},
        flags={_FLAG_TO_FIELD[flag]: "--" + flag.replace("_", "-") for flag in given},
    )
    if warn is not None:
        for name, nearest in unknown_variables():
            warn(name, nearest)
    if warn is warn_on_stderr:
        for line in settings.warnings():
            sys.stderr.write(f"marker-ingest: warning: {line}\n")
    return settings


def display_name(path: str | os.PathLike[str]) -> str:
    """``path`` as text that can always be printed and put into JSON: bytes that are not UTF-8 (a
    file name such as ``bad\\xffname.txt``) are shown as ``\\xff``."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def describe_kafka_error(exc: BaseException) -> str:
    """A Kafka client error in one line: its class and its message (each once)."""
    name, text = type(exc).__name__, str(exc).strip()
    if not text:
        return name
    return text if name in text else f"{name}: {text}"


def topic_name(text: str) -> str:
    """An argparse type: a legal Kafka topic name."""
    problem = topic_name_problem(text)
    if problem is not None:
        raise argparse.ArgumentTypeError(problem)
    return text


def add_connection_flags(p: argparse.ArgumentParser) -> None:
    """Flags shared by every command that talks to Kafka (the rest comes from the environment)."""
    p.add_argument("--bootstrap-servers", metavar="HOST:PORT,...", help="overrides KAFKA_BOOTSTRAP_SERVERS")
    p.add_argument("--input-topic", metavar="TOPIC", help="overrides INGEST_INPUT_TOPIC")
    p.add_argument(
        "--log-format",
        type=str.lower,
        choices=["auto", "json", "console"],
        help="overrides INGEST_LOG_FORMAT",
    )
    p.add_argument(
        "--log-level",
        type=str.upper,
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="overrides INGEST_LOG_LEVEL",
    )


CONFIGURATION_EPILOG = (
    "Everything else is set by environment variables: KAFKA_* for the connection (servers, "
    "security, idempotence), INGEST_* for the topics, limits, batching, shutdown, HTTP endpoint, "
    "logging and safety switch. Each is listed with its default in docs/configuration.md. "
    "An invalid value stops the command with exit status 2 and one line naming it."
)


@contextlib.contextmanager
def tool_logging(settings: Settings) -> Iterator[None]:
    """Logging for an operator tool (the Kafka client's warnings on stderr), restored afterwards.

    The tools print their reports themselves; restoring the configuration keeps an in-process call
    (as the tests make) from changing how the rest of the process logs.
    """
    configured, config = structlog.is_configured(), structlog.get_config()
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    configure_logging(settings.log_format, settings.log_level)
    try:
        yield
    finally:
        if configured:
            structlog.configure(**config)
        else:
            structlog.reset_defaults()
        root.handlers[:] = handlers
        root.setLevel(level)
