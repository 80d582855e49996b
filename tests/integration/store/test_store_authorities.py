"""Authority repository on SQLite and PostgreSQL: storage and the lifecycle rules (DESIGN §3 "Authorities")."""

from __future__ import annotations

from datetime import timedelta

import pytest

from ca.authority import AuthorityState
from ca.store import AuthorityKind, AuthorityRepository, Database, IssuedCertificate, IssuedCertificateRepository
from spiffe_core.errors import AlreadyExists, FailedPrecondition, NotFound
from spiffe_core.spiffe_id import SpiffeId
from tests.support.store import NOW, authority

S = AuthorityState
LATER = NOW + timedelta(hours=1)


def _add(database: Database, *records: object) -> None:
    with database.transaction() as session:
        repository = AuthorityRepository(session)
        for record in records:
            repository.add(record)  # type: ignore[arg-type]


def test_stores_and_returns_an_authority_unchanged(database: Database) -> None:
    record = authority("a1", state=S.ACTIVE)
    _add(database, record)
    with database.transaction() as session:
        assert AuthorityRepository(session).get("a1") == record


def test_stores_a_jwt_authority_without_certificate(database: Database) -> None:
    record = authority("kid-1", kind=AuthorityKind.JWT)
    _add(database, record)
    with database.transaction() as session:
        assert AuthorityRepository(session).get("kid-1").certificate_der is None


def test_refuses_an_authority_id_taken_already(database: Database) -> None:
    _add(database, authority("a1"))
    with pytest.raises(AlreadyExists) as raised:
        _add(database, authority("a1"))
    assert str(raised.value) == (
        "authority 'a1' exists already; authority IDs are the key's SKI or kid — generate a new key for a new authority"
    )


def test_get_of_unknown_authority_is_not_found(database: Database) -> None:
    with pytest.raises(NotFound) as raised, database.transaction() as session:
        AuthorityRepository(session).get("nope")
    assert str(raised.value) == "authority 'nope' is not in the datastore"


def test_lists_by_kind_and_state_oldest_first(database: Database) -> None:
    _add(
        database,
        authority("x-new", state=S.PREPARED, created_at=LATER),
        authority("x-old", state=S.ACTIVE),
        authority("j-1", state=S.ACTIVE, kind=AuthorityKind.JWT),
    )
    with database.transaction() as session:
        repository = AuthorityRepository(session)
        assert [a.id for a in repository.list()] == ["j-1", "x-old", "x-new"]
        assert [a.id for a in repository.list(kind=AuthorityKind.X509)] == ["x-old", "x-new"]
        assert [a.id for a in repository.list(states=[S.ACTIVE])] == ["j-1", "x-old"]
        assert [a.id for a in repository.list(kind=AuthorityKind.X509, states=[S.PREPARED])] == ["x-new"]


@pytest.mark.parametrize(
    ("start", "new", "stamp"),
    [
        pytest.param(S.PREPARED, S.ACTIVE, "activated_at", id="prepared-to-active"),
        pytest.param(S.ACTIVE, S.RETIRED, "retired_at", id="active-to-retired"),
        pytest.param(S.PREPARED, S.TAINTED, "tainted_at", id="prepared-to-tainted"),
        pytest.param(S.ACTIVE, S.TAINTED, "tainted_at", id="active-to-tainted"),
        pytest.param(S.RETIRED, S.TAINTED, "tainted_at", id="retired-to-tainted"),
        pytest.param(S.TAINTED, S.REVOKED, "revoked_at", id="tainted-to-revoked"),
        pytest.param(S.RETIRED, S.REVOKED, "revoked_at", id="retired-to-revoked"),
    ],
)
def test_allows_lifecycle_transition(database: Database, start: S, new: S, stamp: str) -> None:
    _add(database, authority("a1", state=start))
    with database.transaction() as session:
        changed = AuthorityRepository(session).set_state("a1", new, LATER)
    with database.transaction() as session:
        stored = AuthorityRepository(session).get("a1")
    assert stored == changed
    assert stored.state is new
    assert getattr(stored, stamp) == LATER


@pytest.mark.parametrize(
    ("start", "new", "message"),
    [
        pytest.param(
            S.PREPARED,
            S.RETIRED,
            "authority 'a1' is prepared and cannot become retired; from prepared it can become: active, tainted",
            id="prepared-to-retired",
        ),
        pytest.param(
            S.RETIRED,
            S.ACTIVE,
            "authority 'a1' is retired and cannot become active; from retired it can become: revoked, tainted",
            id="retired-to-active",
        ),
        pytest.param(
            S.ACTIVE,
            S.REVOKED,
            "authority 'a1' is active and cannot become revoked; from active it can become: retired, tainted",
            id="active-to-revoked",
        ),
        pytest.param(
            S.REVOKED,
            S.TAINTED,
            "authority 'a1' is revoked and cannot become tainted; from revoked it can become: nothing (it can "
            "only be removed)",
            id="revoked-to-tainted",
        ),
        pytest.param(
            S.TAINTED,
            S.TAINTED,
            "authority 'a1' is tainted and cannot become tainted; from tainted it can become: revoked",
            id="tainted-again",
        ),
    ],
)
def test_refuses_lifecycle_transition(database: Database, start: S, new: S, message: str) -> None:
    _add(database, authority("a1", state=start))
    with pytest.raises(FailedPrecondition) as raised, database.transaction() as session:
        AuthorityRepository(session).set_state("a1", new, LATER)
    assert str(raised.value) == message


def test_removes_a_retired_authority_with_its_issuance_records(database: Database) -> None:
    _add(database, authority("a1", state=S.RETIRED))
    with database.transaction() as session:
        IssuedCertificateRepository(session).add_many(
            [
                IssuedCertificate(
                    serial=7,
                    spiffe_id=SpiffeId.parse("spiffe://example.org/web"),
                    authority_id="a1",
                    not_before=NOW,
                    not_after=LATER,
                    issued_at=NOW,
                )
            ]
        )
    with database.transaction() as session:
        AuthorityRepository(session).delete("a1")
    with database.transaction() as session:
        assert AuthorityRepository(session).list() == ()
        with pytest.raises(NotFound):
            IssuedCertificateRepository(session).get(7)


def test_refuses_to_remove_the_active_authority(database: Database) -> None:
    _add(database, authority("a1", state=S.ACTIVE))
    with pytest.raises(FailedPrecondition) as raised, database.transaction() as session:
        AuthorityRepository(session).delete("a1")
    assert str(raised.value) == "authority 'a1' is active; retire it (or taint and revoke it) before removing it"


def test_remove_of_unknown_authority_is_not_found(database: Database) -> None:
    with pytest.raises(NotFound) as raised, database.transaction() as session:
        AuthorityRepository(session).delete("nope")
    assert str(raised.value) == "authority 'nope' is not in the datastore"
