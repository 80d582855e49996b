"""What the inventory reads from the datastore, on SQLite and PostgreSQL (issue 11 item 1): issued
X509-SVIDs by filter in keyset pages, join tokens likewise, agents' last contact and version, and
entries' owners."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

import pytest

from ca.authority import AuthorityState
from ca.store import (
    AgentRepository,
    AuthorityRepository,
    CertificateQuery,
    Database,
    IssuedCertificate,
    IssuedCertificateRepository,
    JoinTokenQuery,
    JoinTokenRepository,
    RegistrationEntryRepository,
    hash_join_token,
)
from spiffe_core.spiffe_id import SpiffeId
from tests.support.store import AGENT_ID, NOW, authority, entry_spec

WEB = SpiffeId.parse("spiffe://example.org/web")
DB = SpiffeId.parse("spiffe://example.org/db")
OTHER_AGENT = SpiffeId.parse("spiffe://example.org/trustmesh/agent/join_token/node-2")
MINUTE = timedelta(minutes=1)


def _svid(serial: int, minutes: int, spiffe_id: SpiffeId = WEB, agent: SpiffeId | None = AGENT_ID) -> IssuedCertificate:
    return IssuedCertificate(
        serial=serial,
        spiffe_id=spiffe_id,
        authority_id="a1",
        not_before=NOW - MINUTE,
        not_after=NOW + minutes * MINUTE,
        issued_at=NOW - MINUTE,
        agent_id=agent,
    )


@pytest.fixture
def issued(database: Database) -> Database:
    """Six SVIDs: serials 1-3 of WEB through AGENT_ID expiring in 10, 20 (twice: serials 2 and 3) minutes;
    4 of DB through OTHER_AGENT in 30; 5 minted (no agent) in 40, revoked; 6 of WEB expired a minute ago."""
    with database.transaction() as session:
        AuthorityRepository(session).add(authority("a1", state=AuthorityState.ACTIVE))
        certificates = IssuedCertificateRepository(session)
        certificates.add_many(
            [
                _svid(1, 10),
                _svid(2, 20),
                _svid(3, 20),
                _svid(4, 30, DB, OTHER_AGENT),
                _svid(5, 40, DB, None),
                _svid(6, -1),
            ]
        )
        certificates.revoke_serial(5, NOW, None)
    return database


def _serials(database: Database, query: CertificateQuery, limit: int = 100) -> list[int]:
    with database.transaction() as session:
        return [c.serial for c in IssuedCertificateRepository(session).page(query, limit)]


@pytest.mark.parametrize(
    ("query", "serials"),
    [
        pytest.param(CertificateQuery(), [6, 1, 2, 3, 4, 5], id="everything-soonest-expiry-first"),
        pytest.param(CertificateQuery(unexpired_at=NOW), [1, 2, 3, 4, 5], id="unexpired"),
        pytest.param(CertificateQuery(agent_id=AGENT_ID, unexpired_at=NOW), [1, 2, 3], id="by-agent"),
        pytest.param(CertificateQuery(spiffe_id=DB), [4, 5], id="by-spiffe-id"),
        pytest.param(CertificateQuery(unexpired_at=NOW, expires_before=NOW + 25 * MINUTE), [1, 2, 3], id="window"),
        pytest.param(CertificateQuery(revoked=True), [5], id="revoked"),
        pytest.param(CertificateQuery(revoked=False, spiffe_id=DB), [4], id="unrevoked"),
        pytest.param(CertificateQuery(authority_id="elsewhere"), [], id="by-authority"),
    ],
)
def test_issued_svids_are_listed_by_every_filter(issued: Database, query: CertificateQuery, serials: list[int]) -> None:
    assert _serials(issued, query) == serials
    with issued.transaction() as session:
        assert IssuedCertificateRepository(session).count(query) == len(serials)


def test_a_page_continues_after_its_cursor_through_equal_expiries(issued: Database) -> None:
    query = CertificateQuery(unexpired_at=NOW)
    with issued.transaction() as session:
        certificates = IssuedCertificateRepository(session)
        first = certificates.page(query, 2)
        second = certificates.page(query, 2, (first[-1].not_after, first[-1].serial))
        third = certificates.page(query, 2, (second[-1].not_after, second[-1].serial))
    assert [[c.serial for c in page] for page in (first, second, third)] == [[1, 2], [3, 4], [5]]


def test_the_agent_an_svid_was_issued_through_round_trips(issued: Database) -> None:
    with issued.transaction() as session:
        certificates = IssuedCertificateRepository(session)
        assert (certificates.get(4).agent_id, certificates.get(5).agent_id) == (OTHER_AGENT, None)


def _tokens(database: Database) -> list[str]:
    """Three tokens: "a" expires in 10 minutes, "b" in 20 and is used, "c" expired a minute ago."""
    hashes = [hash_join_token(name) for name in ("a", "b", "c")]
    with database.transaction() as session:
        tokens = JoinTokenRepository(session)
        for token_hash, minutes in zip(hashes, (10, 20, -1), strict=True):
            tokens.add(token_hash, NOW + minutes * MINUTE, NOW - 2 * MINUTE, AGENT_ID)
        tokens.consume(hashes[1], NOW - MINUTE)
    return hashes


def test_join_tokens_are_listed_unused_or_all_soonest_expiry_first(database: Database) -> None:
    a, b, c = _tokens(database)
    with database.transaction() as session:
        tokens = JoinTokenRepository(session)
        everything = [t.token_hash for t in tokens.page(JoinTokenQuery(), 10)]
        unused = [t.token_hash for t in tokens.page(JoinTokenQuery(unused_at=NOW), 10)]
        soon = tokens.count(JoinTokenQuery(unused_at=NOW, expires_before=NOW + 15 * MINUTE))
    assert (everything, unused, soon) == ([c, a, b], [a], 1)


def test_a_join_token_page_continues_after_the_token_named_by_its_id(database: Database) -> None:
    _, b, _ = _tokens(database)
    with database.transaction() as session:
        tokens = JoinTokenRepository(session)
        first = tokens.page(JoinTokenQuery(), 2)
        rest = tokens.page(JoinTokenQuery(), 2, (first[-1].expires_at, first[-1].token_id))
    assert [t.token_hash for t in rest] == [b]


def _attest(database: Database, version: str = "") -> None:
    with database.transaction() as session:
        AgentRepository(session).upsert(AGENT_ID, "join_token", 1, NOW + 60 * MINUTE, NOW, version=version)


def test_attestation_records_the_agents_version_and_contact(database: Database) -> None:
    _attest(database, "0.4.0")
    with database.transaction() as session:
        agent = AgentRepository(session).get(AGENT_ID)
    assert (agent.version, agent.last_seen_at) == ("0.4.0", NOW)


def test_contact_is_recorded_at_most_once_per_interval_unless_the_version_changed(database: Database) -> None:
    _attest(database, "0.4.0")
    with database.transaction() as session:
        agents = AgentRepository(session)
        written = [
            agents.record_contact(AGENT_ID, NOW + 30 * timedelta(seconds=1), "0.4.0", MINUTE),
            agents.record_contact(AGENT_ID, NOW + 61 * timedelta(seconds=1), "0.4.0", MINUTE),
            agents.record_contact(AGENT_ID, NOW + 62 * timedelta(seconds=1), "0.5.0", MINUTE),
            agents.record_contact(AGENT_ID, NOW + 63 * timedelta(seconds=1), "", MINUTE),
        ]
        agent = agents.get(AGENT_ID)
    assert written == [False, True, True, False]
    assert (agent.version, agent.last_seen_at) == ("0.5.0", NOW + 62 * timedelta(seconds=1))


def test_a_renewal_without_a_version_keeps_the_reported_one(database: Database) -> None:
    _attest(database, "0.4.0")
    _attest(database)
    with database.transaction() as session:
        assert AgentRepository(session).get(AGENT_ID).version == "0.4.0"


def test_contact_of_an_unknown_agent_changes_nothing(database: Database) -> None:
    with database.transaction() as session:
        assert AgentRepository(session).record_contact(AGENT_ID, NOW, "0.4.0", MINUTE) is False


def test_an_entrys_owner_round_trips_and_entries_are_found_by_several_spiffe_ids(database: Database) -> None:
    with database.transaction() as session:
        entries = RegistrationEntryRepository(session)
        entries.add(dataclasses.replace(entry_spec("/web"), owner="web-team@example.org"), NOW)
        entries.add(entry_spec("/db"), NOW)
        entries.add(entry_spec("/other"), NOW)
        found = entries.list_for_spiffe_ids({WEB, DB})
    assert {entry.spec.spiffe_id: entry.spec.owner for entry in found} == {WEB: "web-team@example.org", DB: ""}
