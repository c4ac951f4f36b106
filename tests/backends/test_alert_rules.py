"""The shipped Prometheus rules (deploy/prometheus/alerts.yml): promtool checks and unit-tests them,
and they hold to what the service exposes and to the runbooks in docs/operations.md."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from service.ops.metrics import Metrics
from tests.backends.prometheus import RULES, duration_seconds, promtool, shortened

pytestmark = pytest.mark.backends

ROOT = Path(__file__).parents[2]
RULE_TESTS = RULES.with_name("alerts.test.yml")
OPERATIONS = ROOT / "docs" / "operations.md"


def _rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def _alerts() -> list[dict[str, Any]]:
    return [rule for rule in _rules() if "alert" in rule]


def _anchor(heading: str) -> str:
    """The anchor GitHub gives a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _doc_anchors() -> set[str]:
    headings = re.findall(r"^#{1,6} (.+)$", OPERATIONS.read_text(), flags=re.MULTILINE)
    return {_anchor(h) for h in headings}


def test_promtool_finds_the_rules_valid(promtool_path: str) -> None:
    done = promtool("check", "rules", str(RULES))
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(_rules())} rules found" in done.stdout


def test_every_alert_goes_pending_fires_and_resolves_in_promtool(promtool_path: str) -> None:
    done = promtool("test", "rules", RULE_TESTS.name, cwd=RULE_TESTS.parent)
    assert done.returncode == 0, done.stdout + done.stderr
    tested = set(re.findall(r"alertname: (\w+)", RULE_TESTS.read_text()))
    assert tested == {rule["alert"] for rule in _alerts()}, "every alert has a promtool test"


def test_every_alert_has_a_window_a_severity_and_a_runbook_in_the_docs() -> None:
    anchors = _doc_anchors()
    for rule in _alerts():
        name = rule["alert"]
        assert duration_seconds(rule["for"]) >= 60, name
        assert rule["labels"]["severity"] in ("critical", "warning"), name
        assert rule["annotations"]["summary"], name
        runbook = rule["annotations"]["runbook_url"]
        assert runbook == f"docs/operations.md#{_anchor(name)}", name
        assert _anchor(name) in anchors, f"docs/operations.md has no section {name}"


def test_the_docs_describe_no_alert_the_rules_lack() -> None:
    documented = set(re.findall(r"^#{1,6} (MarkerIngest\w+)$", OPERATIONS.read_text(), flags=re.MULTILINE))
    assert documented == {rule["alert"] for rule in _alerts()}


def test_the_rules_read_only_metrics_the_service_exposes() -> None:
    metrics = Metrics("0.0.0")
    metrics.set_lag("news.raw", 0, 1)  # the lag series exist once partitions are assigned
    exposed = {
        sample.name
        for family in text_string_to_metric_families(metrics.render().decode())
        for sample in family.samples
    }
    used = set()
    for rule in _rules():
        used |= set(re.findall(r"(?<![\w:])marker_ingest_\w+", rule["expr"]))
    assert used, "the pattern finds the metric names"
    assert used <= exposed, f"not exposed by the service: {sorted(used - exposed)}"


def test_the_shortened_rules_change_only_the_windows() -> None:
    original = yaml.safe_load(RULES.read_text())
    short = yaml.safe_load(shortened(RULES.read_text(), 60))
    for group, short_group in zip(original["groups"], short["groups"], strict=True):
        for rule, short_rule in zip(group["rules"], short_group["rules"], strict=True):
            if "for" in rule:
                assert duration_seconds(short_rule["for"]) == duration_seconds(rule["for"]) / 60
                rule.pop("for"), short_rule.pop("for")
            assert short_rule == rule
