"""Registration entry use cases and join tokens over a real datastore (SQLite and PostgreSQL): what is
stored, audited and announced to Sync streams, and when a token is refused."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import event
from sqlalchemy.orm import ORMExecuteState, Session

from ca.admin_entry_ids import TTL_SECONDS
from ca.attestation import JoinTokens
from ca.audit import AuditTrail
from ca.audit_throttle import RefusalThrottle
from ca.entries import EntryPolicy, RegistrationEntries
from ca.ratelimit import Rate
from ca.store import Actor, AgentRepository, AuditLogRepository, Database, EntrySpec
from ca.sync import Change, ChangeHub, Subscription
from spiffe_core.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotAuthorized, NotFound
from spiffe_core.selectors import Selector
from spiffe_core.spiffe_id import SpiffeId, TrustDomain
from tests.support.clock import FakeClock
from tests.support.store import TESTER

TD = TrustDomain("example.org")
NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
AGENT = SpiffeId.parse("spiffe://example.org/trustmesh/agent/join_token/node-1")
OTHER_AGENT = SpiffeId.parse("spiffe://example.org/trustmesh/agent/join_token/node-2")
SPEC = EntrySpec(
    spiffe_id=SpiffeId.parse("spiffe://example.org/web"),
    parent_id=AGENT,
    selectors=frozenset({Selector("unix", "uid:1000")}),
)
REFUSED = "join token unknown, used or expired; ask an operator for a new join token"
# A subscription is rung through the event loop; this bounds how long a test waits for that.
RING_TIMEOUT = 2.0


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(NOW)


@pytest.fixture
def hub() -> ChangeHub:
    return ChangeHub()


@pytest.fixture
def entries(database: Database, hub: ChangeHub, clock: FakeClock) -> RegistrationEntries:
    return RegistrationEntries(database, hub, EntryPolicy(TD, timedelta(hours=24), timedelta(hours=1)), clock)


@pytest.fixture
def join_tokens(database: Database, clock: FakeClock) -> JoinTokens:
    return JoinTokens(database, TD, clock)


async def rung(subscription: Subscription) -> bool:
    try:
        await asyncio.wait_for(subscription.wait(), RING_TIMEOUT)
    except TimeoutError:
        return False
    return True


async def quiet(subscription: Subscription) -> bool:
    """True when nothing rang: gives pending thread-safe wake-ups a few loop turns to land first."""
    for _ in range(5):
        await asyncio.sleep(0)
    try:
        await asyncio.wait_for(subscription.wait(), 0.05)
    except TimeoutError:
        return True
    return False


def test_created_entry_is_stored_with_revision_one(entries: RegistrationEntries) -> None:
    created = entries.create(SPEC, TESTER)
    assert entries.get(created.id) == created
    assert (created.spec, created.revision, created.created_at) == (SPEC, 1, NOW)


def test_every_mutation_is_audited_with_actor_and_target(entries: RegistrationEntries, database: Database) -> None:
    alice, bob, carol = (
        Actor(f"spiffe://example.org/admin/{name}", "mtls", "operator") for name in ("alice", "bob", "carol")
    )
    created = entries.create(SPEC, alice)
    entries.update(created.id, replace(SPEC, hint="blue"), bob)
    entries.delete(created.id, carol)
    with database.transaction() as session:
        events = [record.event for record in AuditLogRepository(session).list()]
    assert [(e.actor, e.action, e.target, e.outcome) for e in events] == [
        (alice, "entry.create", created.id, "ok"),
        (bob, "entry.update", created.id, "ok"),
        (carol, "entry.delete", created.id, "ok"),
    ]


def test_invalid_entry_is_refused_before_anything_is_stored(entries: RegistrationEntries) -> None:
    with pytest.raises(InvalidArgument, match="has no selectors"):
        entries.create(replace(SPEC, selectors=frozenset()), TESTER)
    assert entries.list() == ()


def test_list_filters_by_parent_and_spiffe_id(entries: RegistrationEntries, clock: FakeClock) -> None:
    web = entries.create(SPEC, TESTER)
    clock.advance(timedelta(seconds=1))
    db = entries.create(replace(SPEC, spiffe_id=SpiffeId.parse("spiffe://example.org/db")), TESTER)
    clock.advance(timedelta(seconds=1))
    elsewhere = entries.create(replace(SPEC, parent_id=OTHER_AGENT), TESTER)
    assert entries.list(parent_id=AGENT) == (web, db)
    assert entries.list(spiffe_id=SPEC.spiffe_id) == (web, elsewhere)


def test_update_with_a_stale_revision_is_refused(entries: RegistrationEntries) -> None:
    created = entries.create(SPEC, TESTER)
    entries.update(created.id, replace(SPEC, hint="first"), TESTER, expected_revision=1)
    with pytest.raises(FailedPrecondition, match="is at revision 2, not 1; read it again"):
        entries.update(created.id, replace(SPEC, hint="second"), TESTER, expected_revision=1)


async def test_an_update_that_changes_nothing_keeps_the_revision_and_rings_nobody(
    entries: RegistrationEntries, hub: ChangeHub, database: Database
) -> None:
    created = entries.create(SPEC, TESTER)
    with hub.subscribe(AGENT) as mine:
        unchanged = await asyncio.to_thread(entries.update, created.id, SPEC, TESTER, 1)
        assert await quiet(mine)
    assert unchanged == created
    assert entries.get(created.id).revision == 1
    with database.transaction() as session:
        assert [r.event.action for r in AuditLogRepository(session).list()] == ["entry.create"]


def test_an_unchanged_spec_with_a_stale_revision_is_still_refused(entries: RegistrationEntries) -> None:
    created = entries.create(SPEC, TESTER)
    entries.update(created.id, replace(SPEC, hint="first"), TESTER)
    with pytest.raises(FailedPrecondition, match="is at revision 2, not 1"):
        entries.update(created.id, replace(SPEC, hint="first"), TESTER, expected_revision=1)


async def test_creating_an_entry_rings_its_parent_agent_only(entries: RegistrationEntries, hub: ChangeHub) -> None:
    with hub.subscribe(AGENT) as mine, hub.subscribe(OTHER_AGENT) as theirs:
        await asyncio.to_thread(entries.create, SPEC, TESTER)
        assert await rung(mine)
        assert await quiet(theirs)


async def test_moving_an_entry_rings_the_old_and_the_new_parent(entries: RegistrationEntries, hub: ChangeHub) -> None:
    created = entries.create(SPEC, TESTER)
    with hub.subscribe(AGENT) as old, hub.subscribe(OTHER_AGENT) as new:
        await asyncio.to_thread(entries.update, created.id, replace(SPEC, parent_id=OTHER_AGENT), TESTER)
        assert await rung(old)
        assert await rung(new)


async def test_deleting_an_entry_rings_its_parent(entries: RegistrationEntries, hub: ChangeHub) -> None:
    created = entries.create(SPEC, TESTER)
    with hub.subscribe(AGENT) as mine:
        await asyncio.to_thread(entries.delete, created.id, TESTER)
        assert await rung(mine)


async def test_a_rolled_back_change_rings_nobody(entries: RegistrationEntries, hub: ChangeHub) -> None:
    entries.create(SPEC, TESTER)
    with hub.subscribe(AGENT) as mine:
        with pytest.raises(AlreadyExists):
            await asyncio.to_thread(entries.create, SPEC, TESTER)
        assert await quiet(mine)


async def test_a_change_for_everyone_rings_every_agent(hub: ChangeHub) -> None:
    with hub.subscribe(AGENT) as mine, hub.subscribe(OTHER_AGENT) as theirs:
        await asyncio.to_thread(hub.notify, Change.everyone())
        assert await rung(mine)
        assert await rung(theirs)


def test_join_token_attests_as_the_agent_named_at_generation(join_tokens: JoinTokens, clock: FakeClock) -> None:
    generated = join_tokens.generate(timedelta(hours=1), TESTER, node_name="node-1")
    assert generated.agent_id == AGENT
    assert generated.expires_at == NOW + timedelta(hours=1)
    assert join_tokens.attest(generated.token.encode(), clock.now()) == AGENT


def test_join_token_without_a_name_gets_a_random_agent_id(join_tokens: JoinTokens) -> None:
    first = join_tokens.generate(timedelta(hours=1), TESTER)
    second = join_tokens.generate(timedelta(hours=1), TESTER)
    assert first.agent_id.path.startswith("/trustmesh/agent/join_token/")
    assert first.agent_id != second.agent_id


def test_join_token_is_32_random_bytes_and_stored_only_as_a_hash(join_tokens: JoinTokens, database: Database) -> None:
    generated = join_tokens.generate(timedelta(hours=1), TESTER, node_name="node-1")
    assert len(generated.token) == 43  # 32 bytes, URL-safe base64 without padding
    assert generated.token not in repr(generated)
    with database.transaction() as session:
        audited = AuditLogRepository(session).list()
    assert generated.token not in repr(audited)


@pytest.mark.parametrize(
    ("ttl", "name", "message"),
    [
        pytest.param(
            timedelta(0), None, "join token TTL 0s is outside (0, 2592000s]; give e.g. --ttl 1h", id="zero-ttl"
        ),
        pytest.param(timedelta(days=31), None, "join token TTL 2678400s is outside (0, 2592000s]", id="ttl-too-long"),
        pytest.param(timedelta(hours=1), "node/1", "node name 'node/1' is not a SPIFFE ID path segment", id="slash"),
        pytest.param(timedelta(hours=1), "..", "node name '..' is not a SPIFFE ID path segment", id="dot-dot"),
        pytest.param(timedelta(hours=1), "", "node name '' is not a SPIFFE ID path segment", id="empty"),
    ],
)
def test_join_token_generation_refuses(join_tokens: JoinTokens, ttl: timedelta, name: str | None, message: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        join_tokens.generate(ttl, TESTER, node_name=name)
    assert str(caught.value).startswith(message)


def test_join_token_works_only_once(join_tokens: JoinTokens, clock: FakeClock) -> None:
    token = join_tokens.generate(timedelta(hours=1), TESTER, node_name="node-1").token
    join_tokens.attest(token.encode(), clock.now())
    with pytest.raises(NotAuthorized) as caught:
        join_tokens.attest(token.encode(), clock.now())
    assert str(caught.value) == REFUSED


def test_expired_join_token_is_refused_with_the_same_message(join_tokens: JoinTokens, clock: FakeClock) -> None:
    token = join_tokens.generate(timedelta(hours=1), TESTER, node_name="node-1").token
    clock.advance(timedelta(hours=1))
    with pytest.raises(NotAuthorized) as caught:
        join_tokens.attest(token.encode(), clock.now())
    assert str(caught.value) == REFUSED


@pytest.mark.parametrize(
    "payload",
    [pytest.param(b"never-generated-token", id="unknown"), pytest.param(b"\xff\xfe", id="not-ascii")],
)
def test_unknown_join_token_is_refused_with_the_same_message(
    join_tokens: JoinTokens, clock: FakeClock, payload: bytes
) -> None:
    with pytest.raises(NotAuthorized) as caught:
        join_tokens.attest(payload, clock.now())
    assert str(caught.value) == REFUSED


def test_join_token_of_a_banned_agent_is_refused(join_tokens: JoinTokens, database: Database, clock: FakeClock) -> None:
    with database.transaction() as session:
        agents = AgentRepository(session)
        agents.upsert(AGENT, "join_token", 1, NOW + timedelta(hours=1), NOW)
        agents.set_banned(AGENT, True, NOW)
    token = join_tokens.generate(timedelta(hours=1), TESTER, node_name="node-1", replace=True).token
    with pytest.raises(NotAuthorized, match=f"agent {AGENT} is banned"):
        join_tokens.attest(token.encode(), clock.now())


def test_join_token_for_an_attested_agent_is_refused_and_nothing_is_stored(
    join_tokens: JoinTokens, database: Database
) -> None:
    with database.transaction() as session:
        AgentRepository(session).upsert(AGENT, "join_token", 1, NOW + timedelta(hours=1), NOW)
    with pytest.raises(AlreadyExists, match=f"evict it first with `trustmesh-ca agent evict {AGENT}`"):
        join_tokens.generate(timedelta(hours=1), TESTER, node_name="node-1")
    with database.transaction() as session:
        actions = [r.event.action for r in AuditLogRepository(session).list()]
    assert "join_token.generate" not in actions


def test_join_token_replacing_an_attested_agent_is_audited_with_the_replaced_serial(
    join_tokens: JoinTokens, database: Database
) -> None:
    with database.transaction() as session:
        AgentRepository(session).upsert(AGENT, "join_token", 0xABC, NOW + timedelta(hours=1), NOW)
    join_tokens.generate(timedelta(hours=1), TESTER, node_name="node-1", replace=True)
    with database.transaction() as session:
        (record,) = [r for r in AuditLogRepository(session).list() if r.event.action == "join_token.generate"]
    assert record.event.detail["replaces_serial"] == "abc"


def test_get_of_a_deleted_entry_is_not_found(entries: RegistrationEntries) -> None:
    created = entries.create(SPEC, TESTER)
    entries.delete(created.id, TESTER)
    with pytest.raises(NotFound, match=f"registration entry '{created.id}' does not exist"):
        entries.get(created.id)


ADMIN_SPEC = replace(SPEC, spiffe_id=SpiffeId.parse("spiffe://example.org/ci/deployer"), admin=True)


def denied(database: Database) -> list[tuple[str, str, str]]:
    with database.transaction() as session:
        return [
            (r.event.action, r.event.target, r.event.outcome)
            for r in AuditLogRepository(session).list()
            if r.event.outcome == "denied"
        ]


def test_an_admin_entry_cannot_be_created_by_a_caller_without_the_role_it_confers(
    entries: RegistrationEntries, database: Database
) -> None:
    with pytest.raises(NotAuthorized, match="you cannot grant what you do not hold"):
        entries.create(ADMIN_SPEC, TESTER, may_manage_admin=False)

    assert entries.list() == ()
    assert denied(database) == [("entry.create", "spiffe://example.org/ci/deployer", "denied")]


def test_an_entry_cannot_be_made_an_admin_entry_by_a_caller_without_the_role(
    entries: RegistrationEntries, database: Database
) -> None:
    created = entries.create(SPEC, TESTER)

    with pytest.raises(NotAuthorized):
        entries.update(created.id, replace(SPEC, admin=True), TESTER, may_manage_admin=False)

    assert entries.get(created.id) == created
    assert denied(database) == [("entry.update", created.id, "denied")]


def test_an_admin_entry_cannot_be_changed_or_deleted_by_a_caller_without_the_role(
    entries: RegistrationEntries, database: Database
) -> None:
    created = entries.create(ADMIN_SPEC, TESTER)

    with pytest.raises(NotAuthorized):
        entries.update(created.id, replace(ADMIN_SPEC, admin=False), TESTER, may_manage_admin=False)
    with pytest.raises(NotAuthorized):
        entries.delete(created.id, TESTER, may_manage_admin=False)

    assert entries.get(created.id) == created
    assert [action for action, _, _ in denied(database)] == ["entry.update", "entry.delete"]


def test_a_burst_of_refused_admin_entry_changes_is_throttled_into_a_suppressed_summary(
    database: Database, hub: ChangeHub, clock: FakeClock
) -> None:
    trail = AuditTrail(database, RefusalThrottle(Rate(1 / 60, 2), Rate(100, 100)))
    entries = RegistrationEntries(
        database, hub, EntryPolicy(TD, timedelta(hours=24), timedelta(hours=1)), clock, audit=trail
    )

    for _ in range(5):
        with pytest.raises(NotAuthorized):
            entries.create(ADMIN_SPEC, TESTER, may_manage_admin=False)
    assert trail.flush_suppressed(clock.now()) == 1

    assert denied(database) == [("entry.create", str(ADMIN_SPEC.spiffe_id), "denied")] * 2 + [
        ("audit.suppressed", TESTER.name, "denied")
    ]
    with database.transaction() as session:
        summary = AuditLogRepository(session).list()[-1].event
    assert (summary.detail["count"], summary.detail["actions"]) == (3, {"entry.create": 3})


def test_has_admin_entry_answers_for_the_spiffe_id_of_an_admin_entry_only(entries: RegistrationEntries) -> None:
    entries.create(ADMIN_SPEC, TESTER)
    entries.create(SPEC, TESTER)

    assert entries.has_admin_entry(ADMIN_SPEC.spiffe_id)
    assert not entries.has_admin_entry(SPEC.spiffe_id)


def test_admin_questions_within_the_cache_ttl_cost_one_datastore_query(
    database: Database, hub: ChangeHub, clock: FakeClock
) -> None:
    policy = EntryPolicy(TD, timedelta(hours=24), timedelta(hours=1))
    entries = RegistrationEntries(database, hub, policy, clock, monotonic=lambda: 100.0)
    entries.create(ADMIN_SPEC, TESTER)
    queries: list[object] = []

    def count(state: ORMExecuteState) -> None:
        queries.append(state.statement)

    event.listen(Session, "do_orm_execute", count)
    try:
        answers = [entries.has_admin_entry(spiffe_id) for spiffe_id in (ADMIN_SPEC.spiffe_id, SPEC.spiffe_id) * 5]
    finally:
        event.remove(Session, "do_orm_execute", count)

    assert answers == [True, False] * 5
    assert len(queries) == 1


def test_removing_an_entrys_admin_flag_takes_effect_at_once_on_this_replica(entries: RegistrationEntries) -> None:
    created = entries.create(ADMIN_SPEC, TESTER)
    assert entries.has_admin_entry(ADMIN_SPEC.spiffe_id)

    entries.update(created.id, replace(ADMIN_SPEC, admin=False), TESTER)

    assert not entries.has_admin_entry(ADMIN_SPEC.spiffe_id)


def test_removing_an_entrys_admin_flag_on_another_replica_takes_effect_within_the_cache_ttl(
    database: Database, hub: ChangeHub, clock: FakeClock
) -> None:
    policy = EntryPolicy(TD, timedelta(hours=24), timedelta(hours=1))
    monotonic = [100.0]
    here = RegistrationEntries(database, hub, policy, clock, monotonic=lambda: monotonic[0])
    there = RegistrationEntries(database, ChangeHub(), policy, clock)
    created = there.create(ADMIN_SPEC, TESTER)
    assert here.has_admin_entry(ADMIN_SPEC.spiffe_id)

    there.delete(created.id, TESTER)
    monotonic[0] += TTL_SECONDS

    assert not here.has_admin_entry(ADMIN_SPEC.spiffe_id)
