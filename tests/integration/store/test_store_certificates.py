"""Issued-certificate repository on SQLite and PostgreSQL (DESIGN §3 "Leaf revocation")."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest
from cryptography import x509
from sqlalchemy import insert, update

from ca.authority import AuthorityState
from ca.store import AuthorityRepository, Database, IssuedCertificate, IssuedCertificateRepository
from ca.store.models import IssuedCertificateRow
from spiffe_core.errors import AlreadyExists, FailedPrecondition, NotFound
from spiffe_core.spiffe_id import SpiffeId
from tests.support.store import NOW, authority

WEB = SpiffeId.parse("spiffe://example.org/web")
DB = SpiffeId.parse("spiffe://example.org/db")
MAX_SERIAL = (1 << 159) - 1


def _certificate(serial: int, spiffe_id: SpiffeId = WEB, hours: int = 1, authority_id: str = "a1") -> IssuedCertificate:
    return IssuedCertificate(
        serial=serial,
        spiffe_id=spiffe_id,
        authority_id=authority_id,
        not_before=NOW,
        not_after=NOW + timedelta(hours=hours),
        issued_at=NOW + timedelta(seconds=serial % 1000),
    )


@pytest.fixture
def signed(database: Database) -> Database:
    """A database holding the authority ``a1`` and three SVIDs it signed (two of WEB, one of DB)."""
    with database.transaction() as session:
        AuthorityRepository(session).add(authority("a1", state=AuthorityState.ACTIVE))
        IssuedCertificateRepository(session).add_many(
            [_certificate(1), _certificate(MAX_SERIAL, hours=2), _certificate(3, spiffe_id=DB)]
        )
    return database


def test_round_trips_a_159_bit_serial(signed: Database) -> None:
    with signed.transaction() as session:
        assert IssuedCertificateRepository(session).get(MAX_SERIAL) == _certificate(MAX_SERIAL, hours=2)


def test_stores_each_value_exactly_as_a_core_insert_of_the_same_record_does(signed: Database) -> None:
    whole_second = NOW.replace(microsecond=0)  # where text formats differ most (".000000" or nothing)
    revoked = replace(
        _certificate(40),
        not_before=whole_second,
        revoked_at=whole_second,
        revocation_reason=x509.ReasonFlags.key_compromise,
    )
    with signed.transaction() as session:
        IssuedCertificateRepository(session).add_many([revoked])
        session.execute(
            insert(IssuedCertificateRow).values(
                serial="29",  # 41 in hex
                spiffe_id=str(revoked.spiffe_id),
                authority_id=revoked.authority_id,
                not_before=revoked.not_before,
                not_after=revoked.not_after,
                issued_at=revoked.issued_at,
                revoked_at=revoked.revoked_at,
                revocation_reason=x509.ReasonFlags.key_compromise.value,
            )
        )
        stored = session.connection().exec_driver_sql(  # as the database holds them: no type conversion back
            "SELECT spiffe_id, authority_id, not_before, not_after, issued_at, revoked_at, revocation_reason "
            "FROM issued_certificates WHERE serial IN ('28', '29') ORDER BY serial"
        )
        ours, core = stored.all()
    assert tuple(ours) == tuple(core)


def test_lists_the_svids_of_one_spiffe_id_oldest_first(signed: Database) -> None:
    with signed.transaction() as session:
        found = IssuedCertificateRepository(session).list_by_spiffe_id(WEB)
    assert [c.serial for c in found] == [1, MAX_SERIAL]


def test_refuses_a_batch_with_a_recorded_serial_and_records_none_of_it(signed: Database) -> None:
    with pytest.raises(AlreadyExists) as raised, signed.transaction() as session:
        IssuedCertificateRepository(session).add_many([_certificate(10), _certificate(1)])
    assert str(raised.value) == (
        "a serial number in this batch of 2 certificates is recorded already; serial numbers must be unique — "
        "sign again with fresh random serials"
    )
    with signed.transaction() as session, pytest.raises(NotFound):
        IssuedCertificateRepository(session).get(10)


def test_refuses_certificates_of_an_unknown_authority(signed: Database) -> None:
    with pytest.raises(NotFound) as raised, signed.transaction() as session:
        IssuedCertificateRepository(session).add_many([_certificate(20, authority_id="ghost")])
    assert str(raised.value) == (
        "a signing authority of this batch ('ghost') is not in the datastore; record the authority before the "
        "certificates it signs"
    )


def test_get_of_unknown_serial_is_not_found(signed: Database) -> None:
    with pytest.raises(NotFound) as raised, signed.transaction() as session:
        IssuedCertificateRepository(session).get(0xABC)
    assert str(raised.value) == "no issued certificate has serial number abc"


def test_marks_certificates_revoked(signed: Database) -> None:
    at = NOW + timedelta(minutes=5)
    with signed.transaction() as session:
        revoked = IssuedCertificateRepository(session).mark_revoked([1, 3], at, x509.ReasonFlags.key_compromise)
    assert [(c.serial, c.revoked_at, c.revocation_reason) for c in revoked] == [
        (1, at, x509.ReasonFlags.key_compromise),
        (3, at, x509.ReasonFlags.key_compromise),
    ]
    with signed.transaction() as session:
        assert IssuedCertificateRepository(session).get(MAX_SERIAL).revoked_at is None


def test_revoking_again_keeps_the_first_revocation(signed: Database) -> None:
    first, second = NOW + timedelta(minutes=5), NOW + timedelta(minutes=9)
    with signed.transaction() as session:
        repository = IssuedCertificateRepository(session)
        repository.mark_revoked([1], first, x509.ReasonFlags.key_compromise)
        (again,) = repository.mark_revoked([1], second, x509.ReasonFlags.superseded)
    assert (again.revoked_at, again.revocation_reason) == (first, x509.ReasonFlags.key_compromise)


def test_refuses_to_revoke_unknown_serials_and_revokes_none(signed: Database) -> None:
    with pytest.raises(NotFound) as raised, signed.transaction() as session:
        IssuedCertificateRepository(session).mark_revoked([1, 0xDEAD, 0xBEEF], NOW, x509.ReasonFlags.unspecified)
    assert str(raised.value) == "no issued certificate has serial number beef, dead; nothing was revoked"
    with signed.transaction() as session:
        assert IssuedCertificateRepository(session).get(1).revoked_at is None


def test_lists_revoked_certificates_not_yet_expired(signed: Database) -> None:
    with signed.transaction() as session:
        IssuedCertificateRepository(session).mark_revoked([1, MAX_SERIAL], NOW, x509.ReasonFlags.key_compromise)
    with signed.transaction() as session:
        repository = IssuedCertificateRepository(session)
        assert [c.serial for c in repository.list_revoked("a1", NOW)] == [1, MAX_SERIAL]
        assert [c.serial for c in repository.list_revoked("a1", NOW + timedelta(minutes=90))] == [MAX_SERIAL]
        assert repository.list_revoked("other", NOW) == ()


def test_revokes_one_serial_with_its_time_and_reason(signed: Database) -> None:
    at = NOW + timedelta(minutes=5)
    with signed.transaction() as session:
        revoked = IssuedCertificateRepository(session).revoke_serial(1, at, x509.ReasonFlags.key_compromise)
    assert (revoked.serial, revoked.revoked_at, revoked.revocation_reason) == (1, at, x509.ReasonFlags.key_compromise)
    with signed.transaction() as session:
        assert IssuedCertificateRepository(session).get(1) == revoked


def test_revokes_one_serial_without_a_reason(signed: Database) -> None:
    with signed.transaction() as session:
        IssuedCertificateRepository(session).revoke_serial(3, NOW, None)
    with signed.transaction() as session:
        stored = IssuedCertificateRepository(session).get(3)
    assert (stored.revoked_at, stored.revocation_reason) == (NOW, None)


def test_revoking_an_unknown_serial_is_not_found(signed: Database) -> None:
    with pytest.raises(NotFound) as raised, signed.transaction() as session:
        IssuedCertificateRepository(session).revoke_serial(0xDEAD, NOW, None)
    assert str(raised.value) == "no issued certificate has serial number dead"


def test_refuses_to_revoke_a_serial_twice_and_keeps_the_first_revocation(signed: Database) -> None:
    first = NOW + timedelta(minutes=5)
    with signed.transaction() as session:
        IssuedCertificateRepository(session).revoke_serial(1, first, x509.ReasonFlags.key_compromise)
    with pytest.raises(FailedPrecondition) as raised, signed.transaction() as session:
        IssuedCertificateRepository(session).revoke_serial(1, NOW + timedelta(minutes=9), x509.ReasonFlags.superseded)
    assert str(raised.value) == (
        "certificate 1 of spiffe://example.org/web was revoked already at 2026-11-22T12:05:00.123456+00:00; "
        "a revocation is final and keeps its first time and reason"
    )
    with signed.transaction() as session:
        stored = IssuedCertificateRepository(session).get(1)
    assert (stored.revoked_at, stored.revocation_reason) == (first, x509.ReasonFlags.key_compromise)


def test_refuses_to_revoke_a_serial_another_writer_revoked_after_it_was_read(signed: Database) -> None:
    with signed.transaction() as session:
        repository = IssuedCertificateRepository(session)
        read = session.get(IssuedCertificateRow, "1")  # held, so the session keeps serial 1 as read: unrevoked
        # Another writer's revocation, which this session's copy of the row does not see.
        session.execute(
            update(IssuedCertificateRow)
            .where(IssuedCertificateRow.serial == "1")
            .values(revoked_at=NOW)
            .execution_options(synchronize_session=False)
        )
        with pytest.raises(FailedPrecondition) as raised:
            repository.revoke_serial(1, NOW + timedelta(minutes=1), x509.ReasonFlags.superseded)
        assert read is not None
    assert str(raised.value) == (
        "certificate 1 of spiffe://example.org/web was revoked by another writer meanwhile; read it again"
    )


@pytest.mark.parametrize(
    "after", [pytest.param(timedelta(hours=1), id="at-not-after"), pytest.param(timedelta(days=1), id="later")]
)
def test_refuses_to_revoke_an_expired_serial(signed: Database, after: timedelta) -> None:
    with pytest.raises(FailedPrecondition) as raised, signed.transaction() as session:
        IssuedCertificateRepository(session).revoke_serial(1, NOW + after, None)
    assert str(raised.value) == (
        "certificate 1 of spiffe://example.org/web: nothing to revoke, it expired at 2026-11-22T13:00:00.123456+00:00"
    )
    with signed.transaction() as session:
        assert IssuedCertificateRepository(session).get(1).revoked_at is None


def test_revokes_every_live_svid_of_a_spiffe_id_oldest_first(signed: Database) -> None:
    with signed.transaction() as session:
        revoked = IssuedCertificateRepository(session).revoke_spiffe_id(WEB, NOW, x509.ReasonFlags.superseded)
    assert [(c.serial, c.revoked_at, c.revocation_reason) for c in revoked] == [
        (1, NOW, x509.ReasonFlags.superseded),
        (MAX_SERIAL, NOW, x509.ReasonFlags.superseded),
    ]
    with signed.transaction() as session:
        assert IssuedCertificateRepository(session).get(3).revoked_at is None


def test_revoking_a_spiffe_id_skips_expired_and_already_revoked_svids(signed: Database) -> None:
    first = NOW + timedelta(minutes=1)
    with signed.transaction() as session:
        IssuedCertificateRepository(session).revoke_serial(MAX_SERIAL, first, x509.ReasonFlags.key_compromise)
    with signed.transaction() as session:
        # At NOW + 1h, serial 1 has just expired and MAX_SERIAL is revoked already: nothing left to revoke.
        assert IssuedCertificateRepository(session).revoke_spiffe_id(WEB, NOW + timedelta(hours=1), None) == ()
    with signed.transaction() as session:
        repository = IssuedCertificateRepository(session)
        assert repository.get(1).revoked_at is None
        assert repository.get(MAX_SERIAL).revoked_at == first


def test_revoking_a_spiffe_id_without_svids_revokes_nothing(signed: Database) -> None:
    with signed.transaction() as session:
        assert (
            IssuedCertificateRepository(session).revoke_spiffe_id(SpiffeId.parse("spiffe://example.org/x"), NOW, None)
            == ()
        )


def test_counts_and_lists_the_live_svids_of_an_authority(signed: Database) -> None:
    with signed.transaction() as session:
        AuthorityRepository(session).add(authority("a2", state=AuthorityState.ACTIVE))
        repository = IssuedCertificateRepository(session)
        repository.add_many([_certificate(4, authority_id="a2")])
        repository.revoke_serial(3, NOW, None)
    with signed.transaction() as session:
        repository = IssuedCertificateRepository(session)
        assert repository.count_live("a1", NOW) == 2
        assert [c.serial for c in repository.list_live("a1", NOW)] == [1, MAX_SERIAL]
        later = NOW + timedelta(hours=1)  # serial 1 expires exactly now
        assert repository.count_live("a1", later) == 1
        assert [c.serial for c in repository.list_live("a1", later)] == [MAX_SERIAL]
        assert repository.count_live("a1", NOW + timedelta(hours=2)) == 0
        assert repository.list_live("a1", NOW + timedelta(hours=2)) == ()
        assert (repository.count_live("a2", NOW), repository.count_live("other", NOW)) == (1, 0)


def test_lists_revoked_unexpired_svids_of_every_authority(signed: Database) -> None:
    with signed.transaction() as session:
        AuthorityRepository(session).add(authority("a2", state=AuthorityState.ACTIVE))
        repository = IssuedCertificateRepository(session)
        repository.add_many([_certificate(4, authority_id="a2", hours=3), _certificate(5, authority_id="a2")])
        repository.revoke_serial(5, NOW, None)
        repository.revoke_serial(MAX_SERIAL, NOW + timedelta(minutes=2), x509.ReasonFlags.key_compromise)
        repository.revoke_serial(1, NOW + timedelta(minutes=1), x509.ReasonFlags.superseded)
        repository.revoke_serial(4, NOW, x509.ReasonFlags.ca_compromise)
    with signed.transaction() as session:
        repository = IssuedCertificateRepository(session)
        assert [(c.authority_id, c.serial) for c in repository.revoked_live(NOW + timedelta(minutes=5))] == [
            ("a1", 1),
            ("a1", MAX_SERIAL),
            ("a2", 4),
            ("a2", 5),
        ]
        assert [c.serial for c in repository.revoked_live(NOW + timedelta(hours=1))] == [MAX_SERIAL, 4]
        assert repository.revoked_live(NOW + timedelta(hours=3)) == ()


def test_latest_expiry_is_the_last_not_after_of_everything_an_authority_signed(signed: Database) -> None:
    with signed.transaction() as session:
        IssuedCertificateRepository(session).revoke_serial(MAX_SERIAL, NOW, None)
    with signed.transaction() as session:
        repository = IssuedCertificateRepository(session)
        assert repository.latest_expiry("a1") == NOW + timedelta(hours=2)


def test_latest_expiry_of_an_authority_that_signed_nothing_is_none(signed: Database) -> None:
    with signed.transaction() as session:
        assert IssuedCertificateRepository(session).latest_expiry("other") is None
