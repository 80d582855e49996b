"""Change notification across CA replicas sharing one PostgreSQL database (LISTEN/NOTIFY)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from ca.authority_changes import AuthorityChanges
from ca.authority_manager import AuthorityManager, AuthorityParams
from ca.authority_ops import AuthorityOperations
from ca.entries import EntryPolicy, RegistrationEntries
from ca.keys.memory import MemoryKeyManager
from ca.rotation import RotationParams
from ca.rotator import Rotator
from ca.store import Database, EntrySpec
from ca.store.records import AuthorityKind
from ca.sync import ChangeHub, listen_for_changes
from ca.upstream import SelfSignedUpstream
from spiffe_core.clock import SystemClock
from spiffe_core.keys import KeyType
from spiffe_core.selectors import Selector
from spiffe_core.spiffe_id import SpiffeId, TrustDomain
from tests.support.clock import FakeClock
from tests.support.postgres import SUPERUSER, PostgresServer
from tests.support.store import TESTER

pytestmark = pytest.mark.postgres

TD = TrustDomain("example.org")
AGENT = SpiffeId.parse("spiffe://example.org/trustmesh/agent/join_token/node-1")
POLICY = EntryPolicy(TD, timedelta(hours=24), timedelta(hours=1))
WAIT = 5.0


@pytest.fixture
async def replica_b(postgres_migrated_url: str) -> AsyncIterator[ChangeHub]:
    """The hub of a second replica, listening on the shared database."""
    hub = ChangeHub()
    listening = asyncio.Event()
    task = asyncio.create_task(listen_for_changes(postgres_migrated_url, hub, listening=listening))
    try:
        await asyncio.wait_for(listening.wait(), WAIT)
        yield hub
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


def spec() -> EntrySpec:
    # A fresh SPIFFE ID per test: the shared database may hold other tests' rows.
    return EntrySpec(
        SpiffeId.parse(f"spiffe://example.org/web-{uuid.uuid4().hex}"), AGENT, frozenset({Selector("unix", "uid:1")})
    )


async def test_an_entry_created_on_one_replica_rings_the_agents_stream_on_another(
    postgres_migrated_url: str, replica_b: ChangeHub
) -> None:
    database = Database.open(postgres_migrated_url)
    replica_a = RegistrationEntries(database, ChangeHub(), POLICY, FakeClock(datetime.now(UTC)))
    try:
        with replica_b.subscribe(AGENT) as stream:
            await asyncio.to_thread(replica_a.create, spec(), TESTER)
            await asyncio.wait_for(stream.wait(), WAIT)
    finally:
        database.close()


async def test_a_replica_ignores_its_own_notifications(postgres_migrated_url: str, replica_b: ChangeHub) -> None:
    """Its own changes ring its streams once, at commit, not a second time when the NOTIFY comes back."""
    database = Database.open(postgres_migrated_url)
    entries_b = RegistrationEntries(database, replica_b, POLICY, FakeClock(datetime.now(UTC)))
    other = ChangeHub()
    listening = asyncio.Event()
    echo_listener = asyncio.create_task(listen_for_changes(postgres_migrated_url, other, listening=listening))
    try:
        await asyncio.wait_for(listening.wait(), WAIT)
        with replica_b.subscribe(AGENT) as stream, other.subscribe(AGENT) as echo:
            await asyncio.to_thread(entries_b.create, spec(), TESTER)
            await asyncio.wait_for(stream.wait(), WAIT)
            # Once the other replica has seen the NOTIFY, replica_b's listener has had it too.
            await asyncio.wait_for(echo.wait(), WAIT)
            await asyncio.sleep(0.1)
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(stream.wait(), 0.2)
    finally:
        echo_listener.cancel()
        with pytest.raises(asyncio.CancelledError):
            await echo_listener
        database.close()


@pytest.mark.parametrize("database_engine", ["postgresql"])
async def test_an_authority_change_on_one_replica_reaches_the_other_replicas_bundle_before_its_streams_wake(
    database: Database, postgres_migrated_url: str
) -> None:
    clock = SystemClock()
    params = AuthorityParams(TD, KeyType.EC_P256, KeyType.EC_P256, timedelta(days=7), timedelta(seconds=1))
    keys = MemoryKeyManager()  # the replicas share their keys (the disk key manager is per machine)
    replicas = [AuthorityManager(database, keys, SelfSignedUpstream(), params, clock) for _ in range(2)]
    for manager in replicas:
        await asyncio.to_thread(manager.load)
    rotation = RotationParams(timedelta(seconds=1), timedelta(hours=1))
    hub_a, hub_b = ChangeHub(), ChangeHub()
    changes_a, changes_b = (
        AuthorityChanges(database=database, authorities=m, hub=h, clock=clock)
        for m, h in zip(replicas, (hub_a, hub_b), strict=True)
    )
    ops_a, rotator_b = AuthorityOperations(changes_a, rotation, clock), Rotator(changes_b, rotation, clock)
    seen_by_stream: list[int] = []
    listening = asyncio.Event()
    task = asyncio.create_task(
        listen_for_changes(postgres_migrated_url, hub_b, listening=listening, reload_shared=rotator_b.reload_quietly)
    )
    try:
        await asyncio.wait_for(listening.wait(), WAIT)
        with hub_b.subscribe(AGENT) as stream:
            report = await asyncio.to_thread(ops_a.prepare, AuthorityKind.X509, TESTER)
            await asyncio.wait_for(stream.wait(), WAIT)
            seen_by_stream.append(len(replicas[1].get_current().bundle.x509_authorities))
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert report.changes[0].authority_id in {a.id for a in replicas[1].get_current().x509}
    assert seen_by_stream == [2]


async def became(condition: Callable[[], bool]) -> bool:
    """Whether ``condition`` holds within WAIT seconds."""
    for _ in range(int(WAIT / 0.02)):
        if condition():
            return True
        await asyncio.sleep(0.02)
    return condition()


async def test_a_replicas_hub_hears_every_change_only_while_its_listener_is_connected(
    postgres_server: PostgresServer,
) -> None:
    """While it is, the node API keeps agent state it read (ca.node_cache); while it is not, other
    replicas' changes may be missed and what it read expires after the TTL."""
    name = postgres_server.create_database()  # of its own: only this listener runs on it
    hub = ChangeHub(complete=False)
    listening = asyncio.Event()
    task = asyncio.create_task(listen_for_changes(postgres_server.url(name), hub, listening=listening))
    try:
        await asyncio.wait_for(listening.wait(), WAIT)
        assert hub.is_complete()
        host, port = "127.0.0.1", postgres_server.port
        with psycopg.connect(host=host, port=port, user=SUPERUSER, dbname=name, autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        assert await became(lambda: not hub.is_complete())
        assert await became(hub.is_complete)  # reconnected (after its first backoff, 0.5 s)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
