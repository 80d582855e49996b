"""The agent manager (sds/manager.py) over an in-process fake of the node API: batching, publishing,
rotation, refusals, CA outages, restarts from saved state, JWT-SVID reuse and stream reconnects."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from sds.cache import CacheSnapshot, WorkloadCache
from sds.manager import AgentManager, ManagerParams
from sds.node_client import EntryRecord, SignedX509Svid, SyncState
from sds.persistence import AgentStore
from spiffe_core.bundle import Bundle
from spiffe_core.errors import InvalidArgument, NotFound, UpstreamUnavailable
from spiffe_core.selectors import Selector
from spiffe_core.spiffe_id import SpiffeId, TrustDomain
from tests.support.agent_pki import SigningCa
from tests.support.clock import FakeClock

TD = TrustDomain("example.org")
NOW = datetime.now(UTC).replace(microsecond=0)
CA = SigningCa.create(TD, NOW)
AGENT = SpiffeId.parse("spiffe://example.org/trustmesh/agent/join_token/node-1")
WEB = SpiffeId.parse("spiffe://example.org/web")
DB = SpiffeId.parse("spiffe://example.org/db")
API = SpiffeId.parse("spiffe://example.org/api")
UID = frozenset({Selector("unix", "uid:1000")})
SVID_TTL = timedelta(hours=1)


def entry(entry_id: str, spiffe_id: SpiffeId, revision: int = 1) -> EntryRecord:
    return EntryRecord(entry_id, spiffe_id, AGENT, UID, revision=revision)


def state(*entries: EntryRecord, version: int = 1) -> SyncState:
    return SyncState(version, CA.bundle(), entries=entries)


class FakeNodeApi:
    """Signs with the test CA at the fake clock's time; records each batch; can be 'down'."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.batches: list[list[str]] = []
        self.refused: dict[str, str] = {}
        self.down = False
        self.ids: dict[str, SpiffeId] = {}
        self.minted = 0
        self.streams: list[list[SyncState] | Exception] = []

    async def sync(self) -> AsyncIterator[SyncState]:
        script = self.streams.pop(0) if self.streams else []
        if isinstance(script, Exception):
            raise script
        for item in script:
            yield item
        await asyncio.Event().wait()  # an open stream with nothing new

    async def sign_x509_svids(self, items: Sequence[tuple[str, bytes]]) -> list[SignedX509Svid]:
        if self.down:
            raise UpstreamUnavailable("node API SignX509Svids at 127.0.0.1:8081 is unavailable (down)")
        self.batches.append([entry_id for entry_id, _ in items])
        return [
            SignedX509Svid(entry_id, error=self.refused[entry_id])
            if entry_id in self.refused
            else SignedX509Svid(entry_id, CA.sign_csr(csr, self.ids[entry_id], now=self.clock.now(), ttl=SVID_TTL))
            for entry_id, csr in items
        ]

    async def mint_jwt_svid(self, entry_id: str, audience: Sequence[str]) -> tuple[str, datetime]:
        self.minted += 1
        return f"jwt-{self.minted}-{entry_id}-{','.join(audience)}", self.clock.now() + timedelta(minutes=5)


class RecordingBundleSink:
    def __init__(self) -> None:
        self.bundles: list[Bundle] = []

    async def update_bundle(self, bundle: Bundle) -> None:
        self.bundles.append(bundle)


class Harness:
    def __init__(self, data_dir: Path, clock: FakeClock | None = None) -> None:
        self.clock = clock or FakeClock(NOW)
        self.api = FakeNodeApi(self.clock)
        self.cache = WorkloadCache(CacheSnapshot(TD))
        self.sink = RecordingBundleSink()
        self.manager = AgentManager(
            client=self.api,
            cache=self.cache,
            store=AgentStore(data_dir, TD),
            bundle_sink=self.sink,
            params=ManagerParams(backoff_base=0.01, backoff_cap=0.05),
            clock=self.clock,
            rng=random.Random(5),
        )

    async def receive(self, sync: SyncState) -> None:
        for record in sync.entries:
            self.api.ids[record.id] = record.spiffe_id
        await self.manager.receive(sync)

    def snapshot(self) -> CacheSnapshot:
        return self.cache.get_snapshot()

    def serials(self) -> dict[str, int]:
        return {s.entry_id: s.cert_chain[0].serial_number for s in self.snapshot().svids}


@pytest.fixture
def harness(tmp_path: Path) -> Harness:
    return Harness(tmp_path)


async def test_signs_every_new_entry_in_one_batch_and_publishes_them(harness: Harness) -> None:
    await harness.receive(state(entry("e-web", WEB), entry("e-db", DB)))
    assert await harness.manager.reconcile() is True
    snapshot = harness.snapshot()
    assert harness.api.batches == [["e-web", "e-db"]]
    assert [s.spiffe_id for s in snapshot.svids] == [WEB, DB]
    assert all(s.cert_chain[0].public_key() == s.private_key.public_key() for s in snapshot.svids)
    assert snapshot.version == 1
    assert harness.sink.bundles == [CA.bundle()]


async def test_a_round_with_nothing_to_do_publishes_nothing(harness: Harness) -> None:
    await harness.receive(state(entry("e-web", WEB)))
    await harness.manager.reconcile()
    await harness.receive(state(entry("e-web", WEB), version=2))
    await harness.manager.reconcile()
    assert harness.api.batches == [["e-web"]]
    assert harness.snapshot().version == 1


async def test_rotates_an_svid_at_its_rotation_time(harness: Harness) -> None:
    await harness.receive(state(entry("e-web", WEB)))
    await harness.manager.reconcile()
    before = harness.serials()["e-web"]
    harness.clock.advance(harness.manager.held["e-web"].rotate_at - harness.clock.now())
    await harness.manager.reconcile()
    assert harness.api.batches == [["e-web"], ["e-web"]]
    assert harness.serials()["e-web"] != before
    assert harness.snapshot().version == 2


async def test_a_refused_item_does_not_hold_up_the_others(harness: Harness, caplog: pytest.LogCaptureFixture) -> None:
    harness.api.refused["e-db"] = "entry e-db is not parented to the agent"
    await harness.receive(state(entry("e-web", WEB), entry("e-db", DB)))
    with caplog.at_level(logging.WARNING, logger="sds.manager"):
        assert await harness.manager.reconcile() is False
    assert [s.spiffe_id for s in harness.snapshot().svids] == [WEB]
    assert caplog.messages == [
        f"the CA refused an X509-SVID for entry e-db ({DB}): entry e-db is not parented to the agent"
    ]


async def test_during_a_ca_outage_held_svids_keep_serving_and_removed_entries_go(harness: Harness) -> None:
    await harness.receive(state(entry("e-web", WEB), entry("e-db", DB)))
    await harness.manager.reconcile()
    web = harness.snapshot().svids[0]
    harness.api.down = True
    await harness.receive(state(entry("e-web", WEB), entry("e-api", API), version=2))
    with pytest.raises(UpstreamUnavailable):
        await harness.manager.reconcile()
    assert harness.snapshot().svids == (web,)


async def test_a_restarted_manager_republishes_saved_svids_without_the_ca(tmp_path: Path) -> None:
    first = Harness(tmp_path)
    await first.receive(state(entry("e-web", WEB), entry("e-db", DB)))
    await first.manager.reconcile()
    restarted = Harness(tmp_path)
    await restarted.manager.load_saved()
    assert restarted.serials() == first.serials()
    assert restarted.snapshot().bundle == CA.bundle()
    assert restarted.api.batches == []
    assert [s.spiffe_id for s in restarted.snapshot().svids] == [WEB, DB]


async def test_a_restarted_manager_does_not_republish_expired_svids(tmp_path: Path) -> None:
    first = Harness(tmp_path)
    await first.receive(state(entry("e-web", WEB)))
    await first.manager.reconcile()
    restarted = Harness(tmp_path, FakeClock(NOW + SVID_TTL + timedelta(seconds=1)))
    await restarted.manager.load_saved()
    assert restarted.snapshot().svids == ()


async def test_jwt_svids_are_reused_until_half_their_life(harness: Harness) -> None:
    await harness.receive(state(entry("e-web", WEB)))
    first = await harness.manager.fetch_jwt_svid(WEB, ["db", "cache"])
    harness.clock.advance(timedelta(minutes=2))
    assert await harness.manager.fetch_jwt_svid(WEB, ["cache", "db"]) == first
    harness.clock.advance(timedelta(minutes=1))
    assert await harness.manager.fetch_jwt_svid(WEB, ["db", "cache"]) != first
    assert harness.api.minted == 2


@pytest.mark.parametrize(
    ("spiffe_id", "audience", "error", "message"),
    [
        pytest.param(DB, ["x"], NotFound, f"no registration entry for {DB} is parented to this agent", id="no-entry"),
        pytest.param(WEB, [], InvalidArgument, "a JWT-SVID needs at least one non-empty audience", id="no-audience"),
        pytest.param(
            WEB, [""], InvalidArgument, "a JWT-SVID needs at least one non-empty audience", id="empty-audience"
        ),
    ],
)
async def test_refuses_jwt_svids_it_cannot_get(
    harness: Harness, spiffe_id: SpiffeId, audience: list[str], error: type[Exception], message: str
) -> None:
    await harness.receive(state(entry("e-web", WEB)))
    with pytest.raises(error) as caught:
        await harness.manager.fetch_jwt_svid(spiffe_id, audience)
    assert str(caught.value) == message
    assert harness.api.minted == 0


async def test_run_reconnects_after_a_failed_stream_and_publishes(harness: Harness) -> None:
    harness.api.ids["e-web"] = WEB
    harness.api.streams = [UpstreamUnavailable("down"), [state(entry("e-web", WEB))]]
    async with asyncio.timeout(5), asyncio.TaskGroup() as tasks:
        running = tasks.create_task(harness.manager.run())
        async for snapshot in harness.cache.subscribe():
            if snapshot.svids:
                break
        running.cancel()
    assert [s.spiffe_id for s in harness.snapshot().svids] == [WEB]
    assert harness.api.streams == []
