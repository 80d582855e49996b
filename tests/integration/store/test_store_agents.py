"""Agent repository on SQLite and PostgreSQL (DESIGN §3 "Node attestation")."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from ca.store import Agent, AgentRepository, Database
from spiffe_core.errors import NotAuthorized, NotFound
from spiffe_core.spiffe_id import SpiffeId
from tests.support.store import AGENT_ID, NOW

LATER = NOW + timedelta(minutes=30)
SVID_EXPIRY = NOW + timedelta(hours=1)


def _attest(database: Database, serial: int, now: object = NOW) -> Agent:
    with database.transaction() as session:
        return AgentRepository(session).upsert(AGENT_ID, "join_token", serial, SVID_EXPIRY, now)  # type: ignore[arg-type]


def test_records_a_newly_attested_agent(database: Database) -> None:
    recorded = _attest(database, 0x1234)
    with database.transaction() as session:
        stored = AgentRepository(session).get(AGENT_ID)
    assert stored == recorded == Agent(AGENT_ID, "join_token", 0x1234, SVID_EXPIRY, False, NOW, NOW, last_seen_at=NOW)


def test_reattestation_updates_the_svid_and_keeps_the_creation_time(database: Database) -> None:
    _attest(database, 1)
    again = _attest(database, 2, LATER)
    with database.transaction() as session:
        stored = AgentRepository(session).get(AGENT_ID)
    assert stored == again
    assert (stored.serial, stored.created_at, stored.updated_at) == (2, NOW, LATER)


def test_refuses_to_record_a_banned_agent(database: Database) -> None:
    _attest(database, 1)
    with database.transaction() as session:
        AgentRepository(session).set_banned(AGENT_ID, True, NOW)
    with pytest.raises(NotAuthorized) as raised:
        _attest(database, 2, LATER)
    assert str(raised.value) == (
        f"agent {AGENT_ID} is banned; an operator must lift the ban before it can attest again"
    )
    with database.transaction() as session:
        assert AgentRepository(session).get(AGENT_ID).serial == 1


def test_lifting_a_ban_allows_attestation_again(database: Database) -> None:
    _attest(database, 1)
    with database.transaction() as session:
        repository = AgentRepository(session)
        repository.set_banned(AGENT_ID, True, NOW)
        assert repository.set_banned(AGENT_ID, False, LATER).banned is False
    assert _attest(database, 3, LATER).serial == 3


def test_lists_agents_by_spiffe_id(database: Database) -> None:
    second = SpiffeId.parse("spiffe://example.org/trustmesh/agent/join_token/node-0")
    _attest(database, 1)
    with database.transaction() as session:
        AgentRepository(session).upsert(second, "x509pop", 2, SVID_EXPIRY, NOW)
    with database.transaction() as session:
        assert [a.spiffe_id for a in AgentRepository(session).list()] == [second, AGENT_ID]


@pytest.mark.parametrize(
    "operation",
    [
        pytest.param(lambda r: r.get(AGENT_ID), id="get"),
        pytest.param(lambda r: r.set_banned(AGENT_ID, True, NOW), id="ban"),
        pytest.param(lambda r: r.delete(AGENT_ID), id="delete"),
    ],
)
def test_unknown_agent_is_not_found(database: Database, operation: object) -> None:
    with pytest.raises(NotFound) as raised, database.transaction() as session:
        operation(AgentRepository(session))  # type: ignore[operator]
    assert str(raised.value) == f"agent {AGENT_ID} has never attested"


def _renew(database: Database, serial: int, now: datetime, overlap_until: datetime) -> Agent:
    with database.transaction() as session:
        return AgentRepository(session).upsert(
            AGENT_ID, "join_token", serial, SVID_EXPIRY, now, previous_valid_until=overlap_until
        )


def test_renewal_keeps_the_replaced_serial_until_the_overlap_ends(database: Database) -> None:
    _attest(database, 1)
    renewed = _renew(database, 2, LATER, LATER + timedelta(seconds=30))
    with database.transaction() as session:
        stored = AgentRepository(session).get(AGENT_ID)
    assert stored == renewed
    assert (stored.serial, stored.previous_serial, stored.previous_serial_until) == (
        2,
        1,
        LATER + timedelta(seconds=30),
    )


def test_reattestation_forgets_the_previous_serial(database: Database) -> None:
    _attest(database, 1)
    _renew(database, 2, LATER, LATER + timedelta(seconds=30))
    again = _attest(database, 3, LATER)
    assert (again.serial, again.previous_serial, again.previous_serial_until) == (3, None, None)


def test_delete_forgets_the_agent(database: Database) -> None:
    _attest(database, 1)
    with database.transaction() as session:
        deleted = AgentRepository(session).delete(AGENT_ID)
    assert deleted.serial == 1
    with pytest.raises(NotFound), database.transaction() as session:
        AgentRepository(session).get(AGENT_ID)
