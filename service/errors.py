"""Every error marker-ingest raises on purpose, and the exit status each one ends a command with::

    MarkerIngestError            str(exc) is one line to show; exit_status ends the command
    ├── UsageError               exit 2: the command cannot run as it was told
    │   ├── SettingsError        a setting is invalid (the line names the variable or the flag)
    │   ├── Misconfigured        the cluster refuses the configuration or the credentials
    │   ├── TopicsMissing        a topic the service needs does not exist, or its name is invalid
    │   └── TracingUnavailable   OTEL_TRACES_EXPORTER asks for tracing the install cannot give
    └── Failed                   exit 1: the command ran, and could not finish its work
        ├── GraceExpired         the grace period ended before in-flight work was acknowledged
        ├── BrokerUnreachable    a burst run found no broker answering within its time
        └── EndpointUnavailable  the HTTP endpoint could not bind its address

Foreign exceptions (Kafka's, the operating system's) are mapped to these at the shell's
boundaries (``service.kafka.failures.classify`` for Kafka's); the exit status of each is its
class's, and nowhere else. Infrastructure faults that retrying can cure are not errors here: they
are retried, never raised to the command.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import IntEnum


class ExitStatus(IntEnum):
    """How a ``marker-ingest`` command ends."""

    OK = 0
    """Done."""
    FAILED = 1
    """Something failed or was refused (``parse``: a record was dead-lettered)."""
    USAGE = 2
    """A usage or configuration error: nothing was done."""


class MarkerIngestError(Exception):
    """The root: ``str(exc)`` is one line for the operator, ``exit_status`` how the command ends."""

    exit_status: ExitStatus = ExitStatus.FAILED


class UsageError(MarkerIngestError):
    """The command cannot run as it was told (exit 2)."""

    exit_status = ExitStatus.USAGE


class SettingsError(UsageError):
    """The settings are invalid; the line names each bad variable (or the flag that gave it)."""


class Misconfigured(UsageError):
    """The cluster refuses the configuration or the credentials; retrying cannot cure it.

    ``fields`` are the failure as log fields (``cause``, ``setting``, ``detail``, and for an ACL
    ``resource`` and ``missing_permission``).
    """

    def __init__(self, line: str, fields: Mapping[str, str]) -> None:
        super().__init__(line)
        self.fields = dict(fields)


class TopicsMissing(UsageError):
    """A topic the service needs does not exist, or its name is invalid.

    ``problems`` maps each setting to (the topic, the broker's error).
    """

    def __init__(self, problems: Mapping[str, tuple[str, str]]) -> None:
        super().__init__(", ".join(f"{setting}={topic}: {why}" for setting, (topic, why) in problems.items()))
        self.problems = dict(problems)


class TracingUnavailable(UsageError):
    """``OTEL_TRACES_EXPORTER`` asks for tracing that cannot be set up: the SDK (the ``tracing``
    extra) or the named exporter is not installed, or an ``OTEL_*`` variable is invalid."""


class Failed(MarkerIngestError):
    """The command ran and could not finish its work (exit 1)."""

    exit_status = ExitStatus.FAILED


class GraceExpired(Failed):
    """The grace period ended before in-flight work was acknowledged; it was not committed.

    Raised by a wait that must finish before the service stops (acknowledgements, commits).
    """

    def __init__(self, line: str = "in-flight work was not acknowledged; not committed") -> None:
        super().__init__(line)


class BrokerUnreachable(Failed):
    """A burst run (a batch job) found no broker answering within ``KAFKA_REQUEST_TIMEOUT_MS``."""


class EndpointUnavailable(Failed):
    """The HTTP endpoint could not bind ``INGEST_HTTP_HOST``:``INGEST_HTTP_PORT``."""
