"""Authority, upstream and CRL checks of ``analyze`` (ca/analysis/authority_checks.py): each finds its
seeded problem and stays silent on a healthy state."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

from ca.analysis import authority_checks as checks
from ca.analysis.findings import Check, Context, PublishedCrls, Severity
from ca.authority import AuthorityState
from ca.store.records import AuthorityRecord
from tests.support.analysis import (
    AUTHORITY,
    DAY,
    HOUR,
    broken,
    ca,
    crl_of,
    entry,
    healthy,
    healthy_state,
    jwt_record,
    x509_record,
)
from tests.support.store import NOW

JWT = jwt_record("jwt-1", AuthorityState.ACTIVE, created_at=NOW - DAY, not_after=NOW + 6 * DAY)


def found(check: Check, context: Context) -> list[tuple[Severity, str]]:
    return [(f.severity, f.subject) for f in check(context)]


def messages(check: Check, context: Context) -> list[str]:
    return [f.message for f in check(context)]


def with_x509(*records: AuthorityRecord, crls: PublishedCrls | None = None, **changes: object) -> Context:
    """The healthy state with these X.509 authority records (and the healthy JWT key) instead of its own."""
    return broken(authorities=(*records, JWT), crls=healthy_state().crls if crls is None else crls, **changes)


# --- authority.no_active -------------------------------------------------------------------------------


def test_no_active_jwt_key_is_an_error() -> None:
    retired = dataclasses.replace(JWT, state=AuthorityState.RETIRED)
    context = broken(authorities=(x509_record(AUTHORITY, AuthorityState.ACTIVE, created_at=NOW - DAY), retired))
    assert found(checks.check_no_active, context) == [(Severity.ERROR, "jwt")]


def test_an_empty_datastore_says_it_holds_no_authorities() -> None:
    assert [
        m.endswith("(the datastore holds no authorities at all)")
        for m in messages(checks.check_no_active, broken(authorities=()))
    ] == [True, True]


def test_no_active_is_silent_with_both_kinds_active() -> None:
    assert found(checks.check_no_active, healthy()) == []


# --- authority.expiring --------------------------------------------------------------------------------


def test_an_expired_active_authority_is_an_error() -> None:
    expired = ca("old", NOW - 7 * DAY, NOW - HOUR)
    record = x509_record(expired, AuthorityState.ACTIVE, created_at=NOW - 7 * DAY)
    [(severity, subject)] = found(checks.check_expiring, with_x509(record))
    assert (severity, subject) == (Severity.ERROR, record.id)
    assert messages(checks.check_expiring, with_x509(record))[0].endswith(
        "expired at " + expired.certificate.not_valid_after_utc.isoformat() + ": nothing of its kind can be signed"
    )


def test_an_authority_past_five_sixths_without_a_successor_is_an_error() -> None:
    late = ca("late", NOW - 6 * DAY, NOW + 12 * HOUR)
    record = x509_record(late, AuthorityState.ACTIVE, created_at=NOW - 6 * DAY)
    assert found(checks.check_expiring, with_x509(record)) == [(Severity.ERROR, record.id)]


def test_an_authority_past_five_sixths_with_a_prepared_successor_is_a_warning() -> None:
    late = x509_record(ca("late", NOW - 6 * DAY, NOW + 12 * HOUR), AuthorityState.ACTIVE, created_at=NOW - 6 * DAY)
    successor = x509_record(ca("next", NOW - DAY, NOW + 6 * DAY), AuthorityState.PREPARED, created_at=NOW - DAY)
    assert found(checks.check_expiring, with_x509(late, successor)) == [(Severity.WARNING, late.id)]


def test_an_authority_past_two_thirds_without_a_prepared_successor_is_a_warning() -> None:
    record = x509_record(ca("mid", NOW - 5 * DAY, NOW + 2 * DAY), AuthorityState.ACTIVE, created_at=NOW - 5 * DAY)
    assert found(checks.check_expiring, with_x509(record)) == [(Severity.WARNING, record.id)]


def test_expiring_is_silent_early_in_an_authoritys_life() -> None:
    assert found(checks.check_expiring, healthy()) == []


# --- authority.svid_ttl_capped -------------------------------------------------------------------------


def test_svid_ttls_longer_than_the_authority_has_left_are_warnings() -> None:
    late = ca("late", NOW - 7 * DAY, NOW + timedelta(minutes=30))
    record = x509_record(late, AuthorityState.ACTIVE, created_at=NOW - 7 * DAY)
    context = with_x509(record, entries=(entry("/web", x509_ttl=HOUR / 4),))
    assert found(checks.check_svid_ttl_capped, context) == [
        (Severity.WARNING, "agent_svid.ttl"),
        (Severity.WARNING, "x509_svid.default_ttl"),
    ]


def test_svid_ttls_within_what_the_authority_has_left_are_silent() -> None:
    assert found(checks.check_svid_ttl_capped, healthy()) == []


# --- upstream.expiring ---------------------------------------------------------------------------------


def under(root_lifetime: timedelta, intermediate: bool = False) -> Context:
    root = ca("Corp Root", NOW - 300 * DAY, NOW + root_lifetime)
    chain = [root]
    if intermediate:
        chain.insert(0, ca("Corp Issuing", NOW - 30 * DAY, NOW + root_lifetime, issuer=root))
    authority = ca("trustmesh CA", NOW - DAY, NOW + 6 * DAY, issuer=chain[0])
    return with_x509(x509_record(authority, AuthorityState.ACTIVE, created_at=NOW - DAY, upstream=chain))


def test_an_upstream_root_expiring_before_a_new_authority_could_live_its_ttl_is_an_error() -> None:
    [finding] = checks.check_upstream_expiring(under(timedelta(days=5)))
    assert (finding.severity, finding.subject) == (Severity.ERROR, "upstream root CN=Corp Root")
    assert "less than ca.ttl (7d), so no successor authority can outlive the active one" in finding.message


def test_an_upstream_root_expiring_within_30_days_is_an_error() -> None:
    assert found(checks.check_upstream_expiring, under(timedelta(days=20))) == [
        (Severity.ERROR, "upstream root CN=Corp Root")
    ]


def test_an_upstream_root_expiring_within_a_year_is_a_warning() -> None:
    assert found(checks.check_upstream_expiring, under(timedelta(days=200))) == [
        (Severity.WARNING, "upstream root CN=Corp Root")
    ]


def test_an_upstream_intermediate_is_warned_about_two_months_ahead() -> None:
    assert found(checks.check_upstream_expiring, under(timedelta(days=50), intermediate=True)) == [
        (Severity.WARNING, "upstream intermediate CN=Corp Issuing"),
        (Severity.WARNING, "upstream root CN=Corp Root"),
    ]


def test_a_configured_upstream_file_is_checked_too() -> None:
    root = ca("Next Root", NOW - DAY, NOW + 10 * DAY)
    context = broken(upstream_certificates=(root.certificate,))
    assert found(checks.check_upstream_expiring, context) == [(Severity.ERROR, "upstream root CN=Next Root")]


def test_upstream_is_silent_for_a_self_signed_authority_and_a_long_lived_root() -> None:
    assert found(checks.check_upstream_expiring, healthy()) == []
    assert found(checks.check_upstream_expiring, under(timedelta(days=900))) == []


# --- crl.missing ---------------------------------------------------------------------------------------


def test_an_authority_under_an_upstream_intermediate_means_no_crls_at_all() -> None:
    context = under(timedelta(days=900), intermediate=True)
    assert context.state is not None
    unreached = dataclasses.replace(context, state=dataclasses.replace(context.state, crls=PublishedCrls(None, "off")))
    [finding] = checks.check_crl_missing(unreached)
    assert finding.severity is Severity.ERROR
    assert "chains through an upstream intermediate" in finding.message


def test_a_root_without_its_crl_is_an_error() -> None:
    context = under(timedelta(days=900))  # the healthy CRLs hold only the other authority's
    subjects = found(checks.check_crl_missing, context)
    assert (Severity.ERROR, "upstream CN=Corp Root") in subjects


def test_a_ca_that_publishes_no_crls_is_an_error() -> None:
    assert found(checks.check_crl_missing, broken(crls=PublishedCrls(()))) == [(Severity.ERROR, "CRLs")]


def test_crl_missing_is_silent_when_every_ca_of_every_chain_has_its_crl() -> None:
    assert found(checks.check_crl_missing, healthy()) == []


def test_crl_missing_judges_only_the_prediction_when_the_ca_was_not_reached() -> None:
    assert found(checks.check_crl_missing, broken(crls=PublishedCrls(None, "stopped"))) == []


# --- crl.stale -----------------------------------------------------------------------------------------


def stale(this_update_hours_ago: float, valid_hours: float) -> Context:
    this_update = NOW - HOUR * this_update_hours_ago
    return broken(crls=PublishedCrls((crl_of(AUTHORITY, this_update, this_update + HOUR * valid_hours),)))


def test_an_expired_crl_is_an_error() -> None:
    [finding] = checks.check_crl_stale(stale(25, 24))
    assert finding.severity is Severity.ERROR
    assert "expired at" in finding.message


def test_a_crl_past_95_percent_of_its_validity_is_an_error() -> None:
    assert [f.severity for f in checks.check_crl_stale(stale(23, 24))] == [Severity.ERROR]


def test_a_crl_not_re_signed_at_half_its_validity_is_a_warning() -> None:
    assert [f.severity for f in checks.check_crl_stale(stale(16, 24))] == [Severity.WARNING]


def test_a_fresh_crl_is_silent() -> None:
    assert found(checks.check_crl_stale, healthy()) == []


# --- crl.unchecked -------------------------------------------------------------------------------------


def test_crls_that_could_not_be_read_are_reported_as_info() -> None:
    context = broken(crls=PublishedCrls(None, "the CA's admin API did not answer"))
    [finding] = checks.check_crl_unchecked(context)
    assert (finding.severity, finding.message) == (
        Severity.INFO,
        "the published CRLs were not checked: the CA's admin API did not answer",
    )


def test_crl_unchecked_is_silent_when_the_crls_were_read() -> None:
    assert found(checks.check_crl_unchecked, healthy()) == []
