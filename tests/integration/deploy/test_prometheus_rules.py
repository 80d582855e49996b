"""The shipped alerting rules (deploy/prometheus/trustmesh-rules.yml) pass ``promtool check rules``, and
their unit tests — synthetic series that make each alert fire beside healthy ones that must not — pass
``promtool test rules`` (issue 11 acceptance). promtool is Debian's (scripts/ensure-promtool)."""

from __future__ import annotations

import re

from tests.support.prometheus import RULE_TESTS, RULES, alert_names, promtool


def test_promtool_accepts_the_shipped_rules() -> None:
    result = promtool("check", "rules", RULES.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_names())} rules found" in result.stdout


def test_the_rules_unit_tests_pass() -> None:
    result = promtool("test", "rules", RULE_TESTS.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_has_a_test_in_which_it_fires() -> None:
    tests = RULE_TESTS.read_text()
    firing = {
        name
        for name, expected in re.findall(
            r"alertname: (\w+)\n\s+exp_alerts:(.*?)(?=\n\s+- eval_time|\n  - name|\Z)", tests, re.S
        )
        if "exp_labels" in expected
    }
    assert [name for name in alert_names() if name not in firing] == []
    assert len(alert_names()) >= 9  # expiry x4, rotation, federation x2, issuance errors, agent readiness
