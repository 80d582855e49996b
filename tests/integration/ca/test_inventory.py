"""The inventory's use cases over a real datastore (ca/inventory.py; SQLite and PostgreSQL): pages
that follow their cursor to the end, owners of the SVIDs' entries, join tokens without their text,
and the summary's counts."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from ca.authority import AuthorityState
from ca.http_api import create_admin_app
from ca.inventory import MAX_PAGE, Inventory, SvidFilter
from ca.store import (
    AgentRepository,
    AuthorityRepository,
    Database,
    IssuedCertificate,
    IssuedCertificateRepository,
    JoinTokenRepository,
    RegistrationEntryRepository,
    hash_join_token,
)
from spiffe_core.errors import InvalidArgument
from spiffe_core.spiffe_id import SpiffeId
from tests.support.admin import LocalAdmin, RecordedAudit
from tests.support.clock import FakeClock
from tests.support.store import AGENT_ID, NOW, authority, entry_spec

WEB = SpiffeId.parse("spiffe://example.org/web")
MINUTE = timedelta(minutes=1)


@pytest.fixture
def inventory(database: Database) -> Inventory:
    """Seven live SVIDs of WEB through AGENT_ID (serials 1-7, expiring 1..7 minutes from now, the last one
    revoked), WEB's entry owned by "web-team", the agent, and one unused and one used join token."""
    with database.transaction() as session:
        AuthorityRepository(session).add(authority("a1", state=AuthorityState.ACTIVE))
        certificates = IssuedCertificateRepository(session)
        certificates.add_many(
            [
                IssuedCertificate(n, WEB, "a1", NOW - MINUTE, NOW + n * MINUTE, NOW - MINUTE, agent_id=AGENT_ID)
                for n in range(1, 8)
            ]
        )
        certificates.revoke_serial(7, NOW, None)
        RegistrationEntryRepository(session).add(dataclasses.replace(entry_spec("/web"), owner="web-team"), NOW)
        AgentRepository(session).upsert(AGENT_ID, "join_token", 99, NOW + 60 * MINUTE, NOW)
        tokens = JoinTokenRepository(session)
        tokens.add(hash_join_token("unused"), NOW + 10 * MINUTE, NOW)
        tokens.add(hash_join_token("used"), NOW + 10 * MINUTE, NOW)
        tokens.consume(hash_join_token("used"), NOW, AGENT_ID)
    return Inventory(database, FakeClock(NOW))


def test_pages_follow_their_cursor_to_the_last_one(inventory: Inventory) -> None:
    serials: list[list[int]] = []
    cursor = None
    for _ in range(10):
        page = inventory.svids(SvidFilter(), limit=3, cursor=cursor)
        serials.append([item.certificate.serial for item in page.items])
        assert page.total == 7
        cursor = page.next_cursor
        if cursor is None:
            break
    assert serials == [[1, 2, 3], [4, 5, 6], [7]]


def test_each_svid_names_the_owner_of_its_entry(inventory: Inventory) -> None:
    page = inventory.svids(SvidFilter(revoked=True))
    assert [(item.certificate.serial, item.owners) for item in page.items] == [(7, ("web-team",))]


def test_a_page_size_over_the_bound_is_refused(inventory: Inventory) -> None:
    with pytest.raises(InvalidArgument) as raised:
        inventory.svids(SvidFilter(), limit=MAX_PAGE + 1)
    assert str(raised.value) == "page size 1001 is outside 1..1000; ask for at most 1000 at a time"


def test_unused_join_tokens_are_listed_without_their_text(inventory: Inventory) -> None:
    page = inventory.join_tokens(unused=True)
    assert [token.token_id for token in page.items] == [hash_join_token("unused")[:16]]
    assert "unused" not in repr(page)


def test_the_summary_counts_svids_agents_tokens_entries_and_authorities(inventory: Inventory) -> None:
    summary = inventory.summary()
    assert (summary.svids_live, summary.svids_revoked_live, summary.svids_expiring_soon) == (6, 1, 6)
    assert (summary.agents, summary.join_tokens_unused, summary.entries, summary.entries_without_owner) == (1, 1, 1, 0)
    assert summary.authorities == {"x509 active": 1}


@pytest.fixture
def api(inventory: Inventory) -> TestClient:
    unused = object()
    app = create_admin_app(
        unused,  # type: ignore[arg-type]
        CollectorRegistry(),
        entries=unused,  # type: ignore[arg-type]
        join_tokens=unused,  # type: ignore[arg-type]
        inventory=inventory,
        authenticator=LocalAdmin(),
        audit=RecordedAudit(),
        clock=FakeClock(NOW),
    )
    return TestClient(app, raise_server_exceptions=False)


def test_the_svid_route_pages_with_the_cursor_it_hands_out(api: TestClient) -> None:
    first = api.get("/v1/inventory/svids", params={"limit": 4, "revoked": "false"}).json()
    rest = api.get("/v1/inventory/svids", params={"limit": 4, "revoked": "false", "cursor": first["next_cursor"]})
    assert [s["serial"] for s in first["svids"]] == ["1", "2", "3", "4"]
    assert ([s["serial"] for s in rest.json()["svids"]], rest.json()["next_cursor"], first["total"]) == (
        ["5", "6"],
        None,
        6,
    )


def test_the_svid_route_encodes_agent_owner_and_revocation(api: TestClient) -> None:
    [svid] = api.get("/v1/inventory/svids", params={"revoked": "true"}).json()["svids"]
    assert {k: svid[k] for k in ("serial", "spiffe_id", "agent_id", "revoked", "revocation_reason", "owners")} == {
        "serial": "7",
        "spiffe_id": str(WEB),
        "agent_id": str(AGENT_ID),
        "revoked": True,
        "revocation_reason": None,
        "owners": ["web-team"],
    }


@pytest.mark.parametrize(
    ("params", "error"),
    [
        pytest.param({"limit": 5000}, "page size 5000 is outside 1..1000; ask for at most 1000 at a time", id="limit"),
        pytest.param({"cursor": "garbage!"}, "the cursor is not one this CA handed out", id="cursor"),
        pytest.param({"spiffe_id": "https://x"}, "'https://x' does not start with 'spiffe://'", id="spiffe-id"),
        pytest.param({"expiring_within_seconds": 0}, "expiring within 0s is not a window", id="window"),
    ],
)
def test_a_bad_query_is_refused_400_naming_the_problem(api: TestClient, params: dict[str, object], error: str) -> None:
    response = api.get("/v1/inventory/svids", params=params)
    assert response.status_code == 400
    assert response.json()["error"].startswith(error)


def test_the_join_token_route_names_tokens_by_id_and_state(api: TestClient) -> None:
    tokens = api.get("/v1/inventory/join-tokens").json()["join_tokens"]
    assert sorted((t["id"], t["state"]) for t in tokens) == sorted(
        [(hash_join_token("unused")[:16], "unused"), (hash_join_token("used")[:16], "used")]
    )


def test_the_timeline_and_summary_routes_answer(api: TestClient) -> None:
    events = api.get("/v1/inventory/authority-timeline").json()["events"]
    summary = api.get("/v1/inventory/summary").json()
    assert [e["event"] for e in events] == ["prepared", "expires"]
    assert (summary["svids_live"], summary["authorities"]) == (6, {"x509 active": 1})
