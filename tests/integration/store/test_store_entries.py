"""Registration entry repository on SQLite and PostgreSQL (DESIGN §3 "Registration entries")."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest

from ca.store import Database, RegistrationEntry, RegistrationEntryRepository
from spiffe_core.errors import AlreadyExists, FailedPrecondition, NotFound
from spiffe_core.spiffe_id import SpiffeId, TrustDomain
from tests.support.store import AGENT_ID, NOW, entry_spec

LATER = NOW + timedelta(minutes=1)
OTHER_AGENT = SpiffeId.parse("spiffe://example.org/trustmesh/agent/join_token/node-2")


def _add(database: Database, *specs: object) -> list[RegistrationEntry]:
    with database.transaction() as session:
        repository = RegistrationEntryRepository(session)
        return [repository.add(spec, NOW) for spec in specs]  # type: ignore[arg-type]


def test_stores_every_field_of_an_entry(database: Database) -> None:
    spec = replace(
        entry_spec("/web", ("unix:uid:1000", "unix:path:/usr/bin/envoy")),
        dns_names=("web.example.org", "web"),
        x509_ttl=timedelta(minutes=30),
        jwt_ttl=timedelta(minutes=5),
        federates_with=frozenset({TrustDomain("partner.example"), TrustDomain("other.example")}),
        admin=True,
        hint="external",
    )
    (added,) = _add(database, spec)
    with database.transaction() as session:
        stored = RegistrationEntryRepository(session).get(added.id)
    assert stored == added
    assert stored.spec == spec
    assert (stored.revision, stored.created_at, stored.updated_at) == (1, NOW, NOW)


def test_refuses_a_duplicate_whatever_the_selector_order(database: Database) -> None:
    _add(database, entry_spec("/web", ("unix:uid:1000", "unix:user:web")))
    with pytest.raises(AlreadyExists) as raised:
        _add(database, replace(entry_spec("/web", ("unix:user:web", "unix:uid:1000")), hint="other"))
    assert str(raised.value) == (
        "a registration entry for spiffe://example.org/web under parent "
        "spiffe://example.org/trustmesh/agent/join_token/node-1 with selectors [unix:uid:1000, unix:user:web] "
        "exists already; change that entry instead of adding another"
    )


def test_allows_the_same_spiffe_id_with_other_selectors_or_parent(database: Database) -> None:
    entries = _add(
        database,
        entry_spec("/web", ("unix:uid:1000",)),
        entry_spec("/web", ("unix:uid:1001",)),
        entry_spec("/web", ("unix:uid:1000",), parent_id=OTHER_AGENT),
    )
    assert len({e.id for e in entries}) == 3


def test_lists_by_parent_and_by_spiffe_id(database: Database) -> None:
    web, db, other = _add(
        database,
        entry_spec("/web"),
        entry_spec("/db"),
        entry_spec("/web", parent_id=OTHER_AGENT),
    )
    with database.transaction() as session:
        repository = RegistrationEntryRepository(session)
        assert {e.id for e in repository.list()} == {web.id, db.id, other.id}
        assert {e.id for e in repository.list(parent_id=AGENT_ID)} == {web.id, db.id}
        assert {e.id for e in repository.list(spiffe_id=web.spec.spiffe_id)} == {web.id, other.id}
        assert [e.id for e in repository.list(parent_id=OTHER_AGENT, spiffe_id=web.spec.spiffe_id)] == [other.id]


def test_update_replaces_the_spec_and_bumps_the_revision(database: Database) -> None:
    (entry,) = _add(database, entry_spec("/web"))
    new_spec = replace(entry.spec, dns_names=("web.example.org",))
    with database.transaction() as session:
        updated = RegistrationEntryRepository(session).update(entry.id, new_spec, LATER, expected_revision=1)
    with database.transaction() as session:
        stored = RegistrationEntryRepository(session).get(entry.id)
    assert stored == updated
    assert (stored.spec, stored.revision, stored.created_at, stored.updated_at) == (new_spec, 2, NOW, LATER)


def test_update_refuses_a_stale_revision(database: Database) -> None:
    (entry,) = _add(database, entry_spec("/web"))
    with database.transaction() as session:
        RegistrationEntryRepository(session).update(entry.id, replace(entry.spec, hint="a"), LATER)
    with pytest.raises(FailedPrecondition) as raised, database.transaction() as session:
        RegistrationEntryRepository(session).update(entry.id, replace(entry.spec, hint="b"), LATER, expected_revision=1)
    assert str(raised.value) == (
        f"registration entry {entry.id!r} is at revision 2, not 1; read it again and reapply the change"
    )


def test_update_refuses_to_duplicate_another_entry(database: Database) -> None:
    web, db = _add(database, entry_spec("/web"), entry_spec("/db"))
    with pytest.raises(AlreadyExists), database.transaction() as session:
        RegistrationEntryRepository(session).update(db.id, web.spec, LATER)


def test_deletes_an_entry(database: Database) -> None:
    (entry,) = _add(database, entry_spec("/web"))
    with database.transaction() as session:
        RegistrationEntryRepository(session).delete(entry.id)
    with pytest.raises(NotFound) as raised, database.transaction() as session:
        RegistrationEntryRepository(session).get(entry.id)
    assert str(raised.value) == f"registration entry {entry.id!r} does not exist"


@pytest.mark.parametrize(
    "operation",
    [
        pytest.param(lambda r: r.get("missing"), id="get"),
        pytest.param(lambda r: r.delete("missing"), id="delete"),
        pytest.param(lambda r: r.update("missing", entry_spec(), LATER), id="update"),
    ],
)
def test_unknown_entry_is_not_found(database: Database, operation: object) -> None:
    with pytest.raises(NotFound) as raised, database.transaction() as session:
        operation(RegistrationEntryRepository(session))  # type: ignore[operator]
    assert str(raised.value) == "registration entry 'missing' does not exist"
