"""Issued-certificate repository on SQLite and PostgreSQL (DESIGN §3 "Leaf revocation")."""

from __future__ import annotations

from datetime import timedelta

import pytest
from cryptography import x509

from ca.authority import AuthorityState
from ca.store import AuthorityRepository, Database, IssuedCertificate, IssuedCertificateRepository
from spiffe_core.errors import AlreadyExists, NotFound
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
