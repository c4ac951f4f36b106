"""docker-compose.yml and the Dockerfile agree with the settings and the package; no Docker needed."""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

import yaml

from service.settings import VARIABLES, Settings

ROOT = Path(__file__).resolve().parents[2]
TOPIC_VARIABLES = ("INGEST_INPUT_TOPIC", "INGEST_OUTPUT_TOPIC", "INGEST_DLQ_TOPIC")


def _services() -> dict[str, Any]:
    compose: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
    services: dict[str, Any] = compose["services"]
    return services


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


def _setting_variables() -> set[str]:
    return set(VARIABLES)


def _created_topics(service: dict[str, Any]) -> set[str]:
    command = service["command"]
    script = command if isinstance(command, str) else " ".join(command)
    topics = set()
    for line in script.splitlines():
        words = shlex.split(line)
        if "--create" in words:
            assert "--if-not-exists" in words, line
            topics.add(words[words.index("--topic") + 1])
    return topics


def test_every_variable_set_on_ingest_is_a_setting() -> None:
    env = _environment(_services()["ingest"])
    ours = {name for name in env if name.startswith(("INGEST_", "KAFKA_"))}
    assert ours, "the ingest service sets no INGEST_*/KAFKA_* variable"
    assert ours - _setting_variables() == set()


def test_the_ingest_environment_makes_valid_settings() -> None:
    env = _environment(_services()["ingest"])
    settings = Settings.model_validate(env)
    assert settings.kafka_bootstrap_servers == env["KAFKA_BOOTSTRAP_SERVERS"]


def test_the_endpoint_listens_beyond_loopback_where_the_probes_come_from_outside() -> None:
    # The service's own default is loopback; the compose healthcheck is inside the container, but
    # Prometheus is not, and the image serves Kubernetes too.
    assert Settings().http_host == "127.0.0.1"
    env = _environment(_services()["ingest"])
    assert env["INGEST_HTTP_PORT"]
    assert env["INGEST_HTTP_HOST"] == "0.0.0.0"
    dockerfile = (ROOT / "Dockerfile").read_text()
    runtime = dockerfile[dockerfile.rindex("\nFROM ") :]
    assert "\nENV INGEST_HTTP_HOST=0.0.0.0\n" in runtime, "the image's own stage sets it"


def test_the_topics_service_creates_the_topics_ingest_uses() -> None:
    services = _services()
    env = _environment(services["ingest"])
    assert _created_topics(services["topics"]) == {env[name] for name in TOPIC_VARIABLES}
    assert services["ingest"]["depends_on"]["topics"]["condition"] == "service_completed_successfully"


def test_ingest_can_be_scaled() -> None:
    ingest = _services()["ingest"]
    assert "container_name" not in ingest
    assert "ports" not in ingest


def test_the_image_runs_the_console_script() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    scripts = {target: name for name, target in pyproject["project"]["scripts"].items()}
    script = scripts["service.cli:main"]
    dockerfile = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    instructions = dict(re.findall(r"^(ENTRYPOINT|CMD)\s+(.+)$", dockerfile, re.MULTILINE))
    assert json.loads(instructions["ENTRYPOINT"]) == [script]
    assert json.loads(instructions["CMD"]) == ["run"]
    assert re.search(r"^USER\s+(?!root\b|0\b)\S+", dockerfile, re.MULTILINE), "the image must not run as root"


def test_the_brokers_are_the_kafka_version_the_tests_run() -> None:
    pom = (ROOT / "tests" / "kafka" / "pom.xml").read_text(encoding="utf-8")
    match = re.search(r"<kafka\.version>([^<]+)</kafka\.version>", pom)
    assert match is not None
    images = {s["image"] for s in _services().values() if "image" in s}
    assert images == {f"apache/kafka:{match.group(1)}"}


def test_the_topics_are_replicated_as_in_the_test_cluster() -> None:
    """Replication factor 3 and min.insync.replicas=2, like the cluster the fault suite runs on."""
    command = " ".join(_services()["topics"]["command"])
    creates = [shlex.split(line) for line in command.splitlines() if "--create" in line]
    assert len(creates) == 3
    for words in creates:
        assert words[words.index("--replication-factor") + 1] == "3", words
        assert words[words.index("--config") + 1] == "min.insync.replicas=2", words
    brokers = [s for name, s in _services().items() if name.startswith("kafka-")]
    assert len(brokers) == 3
