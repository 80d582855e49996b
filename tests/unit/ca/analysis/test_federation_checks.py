"""Federation checks of ``analyze`` (ca/analysis/federation_checks.py): each finds its seeded problem
and stays silent on a relationship fetched a minute ago with a long-lived partner root."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta

from ca.analysis import federation_checks as checks
from ca.analysis.findings import Check, Context, Severity
from ca.store.records import FederationRelationship
from spiffe_core.bundle import Bundle
from spiffe_core.spiffe_id import TrustDomain
from tests.support.analysis import DAY, HOUR, broken, ca
from tests.support.store import NOW

PARTNER = TrustDomain("partner.example")
SUBJECT = "federation partner.example"


def bundle_expiring(at: datetime) -> str:
    root = ca("Partner Root", NOW - 30 * DAY, at)
    return Bundle(PARTNER, (root.certificate,), (), 1, 300).to_json()


def partner(**changes: object) -> Context:
    relationship = FederationRelationship(
        trust_domain=PARTNER,
        bundle_endpoint_url="https://ca.partner.example:8443/",
        profile="https_spiffe",
        endpoint_spiffe_id=None,
        bundle=bundle_expiring(NOW + 300 * DAY),
        created_at=NOW - 30 * DAY,
        last_attempt_at=NOW - timedelta(minutes=1),
        last_success_at=NOW - timedelta(minutes=1),
        next_refresh_at=NOW + timedelta(minutes=4),
    )
    return broken(relationships=(dataclasses.replace(relationship, **changes),))  # type: ignore[arg-type]


def found(check: Check, context: Context) -> list[tuple[Severity, str]]:
    return [(f.severity, f.subject) for f in check(context)]


def test_a_relationship_without_a_bundle_is_an_error() -> None:
    assert found(checks.check_no_bundle, partner(bundle=None)) == [(Severity.ERROR, SUBJECT)]


def test_a_held_bundle_is_silent_for_no_bundle() -> None:
    assert found(checks.check_no_bundle, partner()) == []


def test_a_failed_last_fetch_is_a_warning_naming_the_error() -> None:
    [finding] = checks.check_failing(partner(last_error="connection refused"))
    assert (finding.severity, finding.message) == (
        Severity.WARNING,
        "fetching the bundle of partner.example from https://ca.partner.example:8443/ failed: connection refused",
    )


def test_a_good_last_fetch_is_silent_for_failing() -> None:
    assert found(checks.check_failing, partner()) == []


def test_no_good_fetch_for_three_refresh_intervals_is_an_error() -> None:
    [finding] = checks.check_stale(partner(last_success_at=NOW - 4 * HOUR))
    assert finding.severity is Severity.ERROR
    assert finding.message == (
        "the bundle of partner.example is stale: last fetched 4h ago, over 3 x federation.max_refresh (3h)"
    )


def test_a_never_fetched_relationship_counts_from_its_creation() -> None:
    assert found(checks.check_stale, partner(last_success_at=None)) == [(Severity.ERROR, SUBJECT)]


def test_a_fresh_fetch_is_silent_for_stale() -> None:
    assert found(checks.check_stale, partner()) == []


def test_a_partner_whose_last_root_expired_is_an_error() -> None:
    assert found(checks.check_partner_key_expiring, partner(bundle=bundle_expiring(NOW - HOUR))) == [
        (Severity.ERROR, SUBJECT)
    ]


def test_a_partner_whose_last_root_expires_within_a_day_is_a_warning() -> None:
    assert found(checks.check_partner_key_expiring, partner(bundle=bundle_expiring(NOW + 2 * HOUR))) == [
        (Severity.WARNING, SUBJECT)
    ]


def test_a_partner_with_a_long_lived_root_is_silent() -> None:
    assert found(checks.check_partner_key_expiring, partner()) == []
