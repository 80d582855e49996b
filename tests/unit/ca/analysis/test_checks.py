"""Running ``analyze``'s checks (ca/analysis/checks.py): errors first, exit 1 on an error, a check that
cannot judge its data reported instead of stopping the rest, and every check documented."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from ca.analysis import checks
from ca.analysis.checks import CHECKS, CheckSpec, exit_code, run_checks
from ca.analysis.findings import Context, Finding, Severity
from tests.support.analysis import HOUR, broken, entry, healthy

DOCS = Path(__file__).parents[4] / "docs" / "analyze.md"


def test_a_healthy_state_has_no_finding_beyond_info() -> None:
    findings = run_checks(healthy())
    assert {f.severity for f in findings} <= {Severity.INFO}
    assert exit_code(findings) == 0


def test_findings_come_errors_first_and_any_error_exits_1() -> None:
    findings = run_checks(broken(entries=(entry("/web", x509_ttl=48 * HOUR, dns_names=("localhost",)),)))
    assert [(f.severity, f.check) for f in findings][:2] == [
        (Severity.ERROR, "entry.ttl_over_max"),
        (Severity.WARNING, "entry.dns_localhost"),
    ]
    assert exit_code(findings) == 1


def test_a_check_that_cannot_judge_its_data_is_reported_and_the_others_still_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def unparsable(_context: Context) -> list[Finding]:
        raise ValueError("error parsing asn1 value")

    broken_check = CheckSpec("entry.dns_wildcard", unparsable, "wildcards")
    monkeypatch.setattr(checks, "CHECKS", (broken_check, *[c for c in CHECKS if c.id != "entry.dns_wildcard"]))
    findings = run_checks(healthy())
    assert findings[0] == Finding(
        "analyze.check_failed",
        Severity.ERROR,
        "entry.dns_wildcard",
        "check entry.dns_wildcard could not judge what it read: error parsing asn1 value",
        "report this with the datastore's state; the other checks ran",
    )
    assert [f.check for f in findings[1:]] == ["config.key_custody"]


def test_check_ids_are_unique() -> None:
    ids = [check.id for check in CHECKS]
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize("check", [pytest.param(c, id=c.id) for c in CHECKS])
def test_every_check_is_documented_in_the_analyze_guide(check: CheckSpec) -> None:
    assert f"`{check.id}`" in DOCS.read_text()


def test_only_the_config_checks_run_without_a_state() -> None:
    context = dataclasses.replace(healthy(), state=None)
    assert [f.check for f in run_checks(context)] == ["config.key_custody"]
