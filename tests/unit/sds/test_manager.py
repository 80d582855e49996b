"""The agent manager (sds/manager.py) over an in-process fake of the node API: batching, publishing,
rotation, refusals, CA outages, restarts from saved state, JWT-SVID reuse, stream reconnects, taint
(every affected SVID in one round, in concurrent batches) and bounded logging of failing loops."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from sds.cache import CacheSnapshot, WorkloadCache
from sds.manager import JWT_CACHE_BYTES, SIGN_BATCH_SIZE, AgentManager, ManagerParams
from sds.node_client import EntryRecord, SignedX509Svid, SyncState
from sds.persistence import AgentStore
from sds.planning import signer_ids
from spiffe_core.bundle import Bundle
from spiffe_core.errors import InvalidArgument, NotFound, ResourceExhausted, UpstreamUnavailable
from spiffe_core.jwt_svid import MAX_AUDIENCE_BYTES, MAX_AUDIENCES, mint_jwt_svid
from spiffe_core.selectors import Selector
from spiffe_core.spiffe_id import SpiffeId, TrustDomain
from tests.support.agent_pki import SigningCa
from tests.support.clock import FakeClock

TD = TrustDomain("example.org")
NOW = datetime.now(UTC).replace(microsecond=0)
CA = SigningCa.create(TD, NOW)
# The authority the CA rotated to; while the old one is tainted the bundle publishes both.
NEW_CA = SigningCa.create(TD, NOW)
BOTH = Bundle(TD, (CA.cert, NEW_CA.cert), sequence=2)
AGENT = SpiffeId.parse("spiffe://example.org/trustmesh/agent/join_token/node-1")
WEB = SpiffeId.parse("spiffe://example.org/web")
DB = SpiffeId.parse("spiffe://example.org/db")
API = SpiffeId.parse("spiffe://example.org/api")
UID = frozenset({Selector("unix", "uid:1000")})
SVID_TTL = timedelta(hours=1)


def entry(entry_id: str, spiffe_id: SpiffeId, revision: int = 1) -> EntryRecord:
    return EntryRecord(entry_id, spiffe_id, AGENT, UID, revision=revision)


def state(
    *entries: EntryRecord, version: int = 1, bundle: Bundle | None = None, tainted: frozenset[str] = frozenset()
) -> SyncState:
    return SyncState(version, bundle or CA.bundle(), entries=entries, tainted_authority_ids=tainted)


class FakeNodeApi:
    """Signs with the test CA at the fake clock's time; records each batch; can be 'down'."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.batches: list[list[str]] = []
        self.refused: dict[str, str] = {}
        self.down = False
        self.ids: dict[str, SpiffeId] = {}
        self.minted = 0
        # Each Sync stream's script: the states it sends (then it stays open), an error, or "swap" (ended by
        # the agent's new credentials before any state) or "eof" (closed by the CA before any state).
        self.streams: list[list[SyncState] | Exception | str] = []
        self.channel_generation = 0
        self.signer = CA
        self.down_for: set[str] = set()  # a batch naming one of these entries fails as a whole
        self.attempts = 0
        self.in_flight = 0
        self.most_in_flight = 0
        self.real_jwts = False
        self.rate_limited = 0  # this many calls are refused for the CA's signing rate first
        self.retry_after = 0.0
        self.bundle_refreshes: list[tuple[TrustDomain, str]] = []
        self.refreshed: Bundle | None = None

    async def sync(self) -> AsyncIterator[SyncState]:
        script = self.streams.pop(0) if self.streams else []
        if isinstance(script, Exception):
            raise script
        if script == "swap":
            self.channel_generation += 1
            return
        if script == "eof":
            return
        for item in script:
            yield item
        await asyncio.Event().wait()  # an open stream with nothing new

    async def sign_x509_svids(self, items: Sequence[tuple[str, bytes]]) -> list[SignedX509Svid]:
        self.attempts += 1
        if self.rate_limited:
            self.rate_limited -= 1
            raise ResourceExhausted("node API SignX509Svids at 127.0.0.1:8081 refused: over rate", self.retry_after)
        if self.down or self.down_for.intersection(entry_id for entry_id, _ in items):
            raise UpstreamUnavailable("node API SignX509Svids at 127.0.0.1:8081 is unavailable (down)")
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await asyncio.sleep(0.01)  # a call takes a while: batches in flight at once overlap here
        finally:
            self.in_flight -= 1
        self.batches.append([entry_id for entry_id, _ in items])
        return [
            SignedX509Svid(entry_id, error=self.refused[entry_id])
            if entry_id in self.refused
            else SignedX509Svid(
                entry_id, self.signer.sign_csr(csr, self.ids[entry_id], now=self.clock.now(), ttl=SVID_TTL)
            )
            for entry_id, csr in items
        ]

    async def mint_jwt_svid(self, entry_id: str, audience: Sequence[str]) -> tuple[str, datetime]:
        self.minted += 1
        expires_at = self.clock.now() + timedelta(minutes=5)
        if self.real_jwts:
            token = mint_jwt_svid(
                spiffe_id=self.ids[entry_id],
                audience=audience,
                private_key=CA.jwt_key,
                key_id=CA.jwt_key_id,
                expires_at=expires_at,
            )
            return token, expires_at
        return f"jwt-{self.minted}-{entry_id}-{','.join(audience)}", expires_at

    async def refresh_federated_bundle(self, trust_domain: TrustDomain, key_id: str) -> Bundle | None:
        self.bundle_refreshes.append((trust_domain, key_id))
        await asyncio.sleep(0.01)  # a call takes a while: concurrent callers overlap here
        return self.refreshed


class RecordingIdentity:
    """The agent's own identity as the manager sees it: records the states (and so the bundles) it got."""

    def __init__(self) -> None:
        self.states: list[SyncState] = []

    @property
    def bundles(self) -> list[Bundle]:
        return [s.bundle for s in self.states]

    async def follow_sync_state(self, state: SyncState) -> None:
        self.states.append(state)


class Harness:
    def __init__(self, data_dir: Path, clock: FakeClock | None = None, jwt_cache_bytes: int = JWT_CACHE_BYTES) -> None:
        self.clock = clock or FakeClock(NOW)
        self.api = FakeNodeApi(self.clock)
        self.cache = WorkloadCache(CacheSnapshot(TD))
        self.sink = RecordingIdentity()
        self.manager = AgentManager(
            client=self.api,
            cache=self.cache,
            store=AgentStore(data_dir, TD),
            identity=self.sink,
            params=ManagerParams(backoff_base=0.01, backoff_cap=0.05, jwt_cache_bytes=jwt_cache_bytes),
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


async def test_a_new_partner_bundle_alone_is_published_without_signing_anything(harness: Harness) -> None:
    partner = TrustDomain("partner.example")
    web = EntryRecord("e-web", WEB, AGENT, UID, federates_with=frozenset({partner}))
    first, rotated = SigningCa.create(partner, NOW), SigningCa.create(partner, NOW)
    await harness.receive(replace(state(web), federated_bundles={partner: first.bundle()}))
    await harness.manager.reconcile()
    await harness.receive(replace(state(web, version=2), federated_bundles={partner: rotated.bundle()}))
    await harness.manager.reconcile()
    assert harness.api.batches == [["e-web"]]
    assert harness.snapshot().version == 2
    assert dict(harness.snapshot().federated_bundles) == {partner: rotated.bundle()}


async def test_new_legacy_roots_alone_are_published_without_signing_anything(harness: Harness) -> None:
    web = entry("e-web", WEB)
    corp, replaced = (
        SigningCa.create(TrustDomain(n), NOW).cert.public_bytes(Encoding.PEM) for n in ("a.corp", "b.corp")
    )
    await harness.receive(replace(state(web), legacy_roots={"corp": corp}))
    await harness.manager.reconcile()
    await harness.receive(replace(state(web, version=2), legacy_roots={"corp": replaced}))
    await harness.manager.reconcile()
    assert harness.api.batches == [["e-web"]]
    assert harness.snapshot().version == 2
    assert dict(harness.snapshot().legacy_roots) == {"corp": replaced}


async def test_workloads_meeting_a_partners_new_key_together_make_one_call(harness: Harness) -> None:
    partner = TrustDomain("partner.example")
    harness.api.refreshed = SigningCa.create(partner, NOW).bundle(sequence=3)
    answers = await asyncio.gather(*(harness.manager.refresh_federated_bundle(partner, "new-key") for _ in range(5)))
    assert answers == [harness.api.refreshed] * 5
    assert harness.api.bundle_refreshes == [(partner, "new-key")]
    await harness.manager.refresh_federated_bundle(partner, "newer-key")  # the first call is over: a new one
    assert harness.api.bundle_refreshes == [(partner, "new-key"), (partner, "newer-key")]


async def test_rotates_an_svid_at_its_rotation_time(harness: Harness) -> None:
    await harness.receive(state(entry("e-web", WEB)))
    await harness.manager.reconcile()
    before = harness.serials()["e-web"]
    harness.clock.advance(harness.manager.held["e-web"].rotate_at - harness.clock.now())
    await harness.manager.reconcile()
    assert harness.api.batches == [["e-web"], ["e-web"]]
    assert harness.serials()["e-web"] != before
    assert harness.snapshot().version == 2


async def test_svids_whose_rotations_jitter_a_few_minutes_apart_rotate_in_one_call(harness: Harness) -> None:
    await harness.receive(state(entry("e-web", WEB)))
    await harness.manager.reconcile()
    harness.clock.advance(timedelta(minutes=1))
    await harness.receive(state(entry("e-web", WEB), entry("e-db", DB), version=2))
    await harness.manager.reconcile()
    first = min(held.rotate_at for held in harness.manager.held.values())
    last = max(held.rotate_at for held in harness.manager.held.values())
    assert timedelta(0) < last - first <= timedelta(minutes=6)  # a tenth of the hour-long life
    harness.clock.advance(first - harness.clock.now())
    await harness.manager.reconcile()
    assert harness.api.batches == [["e-web"], ["e-db"], ["e-web", "e-db"]]


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
        pytest.param(
            WEB,
            [],
            InvalidArgument,
            "a JWT-SVID needs at least one audience (JWT-SVID.md §3.2); pass e.g. ['payments']",
            id="no-audience",
        ),
        pytest.param(
            WEB,
            [""],
            InvalidArgument,
            "audience #0 '' is not a non-empty string; every audience must name a service",
            id="empty-audience",
        ),
        pytest.param(
            WEB,
            ["x" * 1_000_000],
            InvalidArgument,
            f"audience #0 {'x' * 32!r}… is 1000000 bytes long; an audience may be at most 1024 bytes (UTF-8) — "
            "name the relying party with a shorter string",
            id="oversized-audience",
        ),
        pytest.param(
            WEB,
            [f"svc-{n}" for n in range(33)],
            InvalidArgument,
            "33 audiences requested; a JWT-SVID carries at most 32 — ask for one token per relying party",
            id="too-many-audiences",
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


def big_audience(n: int) -> list[str]:
    """The largest audience list the rule allows, distinct per ``n``: 32 values of 1024 bytes."""
    return [f"{n:06d}-{i:02d}-".ljust(MAX_AUDIENCE_BYTES, "a") for i in range(MAX_AUDIENCES)]


async def test_the_jwt_svid_cache_counts_token_audiences_and_id_in_bytes(harness: Harness) -> None:
    await harness.receive(state(entry("e-web", WEB)))
    token = await harness.manager.fetch_jwt_svid(WEB, ["db", "cache"])
    assert harness.manager.jwt_cache_bytes == len(token) + len(str(WEB)) + len("db") + len("cache") + 512


async def test_the_jwt_svid_cache_stays_within_its_byte_budget_keeping_the_freshest(harness: Harness) -> None:
    await harness.receive(state(entry("e-web", WEB)))
    for n in range(300):  # ~64 KiB each (token + key): 19 MiB if nothing were forgotten
        await harness.manager.fetch_jwt_svid(WEB, big_audience(n))
        harness.clock.advance(timedelta(milliseconds=10))
        assert harness.manager.jwt_cache_bytes <= JWT_CACHE_BYTES
    assert harness.manager.jwt_cache_bytes > JWT_CACHE_BYTES - 100 * 1024  # full, not emptied
    minted = harness.api.minted
    await harness.manager.fetch_jwt_svid(WEB, big_audience(299))  # the freshest is still held
    assert harness.api.minted == minted
    await harness.manager.fetch_jwt_svid(WEB, big_audience(0))  # the stalest was forgotten
    assert harness.api.minted == minted + 1


async def test_a_jwt_svid_larger_than_the_whole_budget_is_served_but_not_cached(tmp_path: Path) -> None:
    harness = Harness(tmp_path, jwt_cache_bytes=1024)
    await harness.receive(state(entry("e-web", WEB)))
    small = await harness.manager.fetch_jwt_svid(WEB, ["db"])
    big = await harness.manager.fetch_jwt_svid(WEB, ["x" * 1000])
    assert big.endswith("x" * 1000)
    assert harness.manager.jwt_cache_bytes == len(small) + len(str(WEB)) + len("db") + 512
    assert await harness.manager.fetch_jwt_svid(WEB, ["db"]) == small
    assert harness.api.minted == 2


async def first_svid_published(harness: Harness) -> None:
    """Run the manager until its first SVID is published."""
    async with asyncio.timeout(5), asyncio.TaskGroup() as tasks:
        running = tasks.create_task(harness.manager.run())
        async for snapshot in harness.cache.subscribe():
            if snapshot.svids:
                break
        running.cancel()


async def test_run_reconnects_after_a_failed_stream_and_publishes(harness: Harness) -> None:
    harness.api.ids["e-web"] = WEB
    harness.api.streams = [UpstreamUnavailable("down"), [state(entry("e-web", WEB))]]
    await first_svid_published(harness)
    assert [s.spiffe_id for s in harness.snapshot().svids] == [WEB]
    assert harness.api.streams == []


async def test_the_sync_status_counts_failed_streams_and_reconnects_and_marks_contact(harness: Harness) -> None:
    harness.api.ids["e-web"] = WEB
    harness.api.streams = [UpstreamUnavailable("down"), UpstreamUnavailable("still down"), [state(entry("e-web", WEB))]]
    status = harness.manager.sync_status
    assert (status.connected, status.last_contact_at) == (False, None)
    async with asyncio.timeout(5), asyncio.TaskGroup() as tasks:
        running = tasks.create_task(harness.manager.run())
        async for snapshot in harness.cache.subscribe():
            if snapshot.svids:
                break
        assert (status.connected, status.last_contact_at, status.last_error) == (True, NOW, "")
        running.cancel()
    assert (status.errors, status.reconnects) == (2, 2)


async def test_a_stream_ended_by_new_credentials_before_any_state_is_reopened_at_once(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    harness.api.ids["e-web"] = WEB
    harness.api.streams = ["swap", "swap", "swap", [state(entry("e-web", WEB))]]
    with caplog.at_level(logging.WARNING, logger="sds.manager"):
        await first_svid_published(harness)
    assert harness.api.streams == []
    assert caplog.messages == []  # no backoff, nothing to warn about
    assert (harness.manager.sync_status.errors, harness.manager.sync_status.reconnects) == (0, 3)


async def test_a_stream_the_ca_closes_before_any_state_backs_off_and_counts_as_failed(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    harness.api.ids["e-web"] = WEB
    harness.api.streams = ["eof", "eof", [state(entry("e-web", WEB))]]
    with caplog.at_level(logging.WARNING, logger="sds.manager"):
        await first_svid_published(harness)
    assert [m.split(";")[0] for m in caplog.messages] == ["the CA closed the sync stream without a state"]
    assert harness.manager.sync_status.errors == 2


# --- taint: every affected SVID in one round ---------------------------------------------------------


def many(count: int) -> tuple[EntryRecord, ...]:
    return tuple(entry(f"e-{i:04d}", SpiffeId.parse(f"spiffe://example.org/w/{i}")) for i in range(count))


async def test_a_taint_reissues_every_affected_svid_in_one_round_of_concurrent_batches(harness: Harness) -> None:
    records = many(300)
    await harness.receive(state(*records, bundle=BOTH))
    assert await harness.manager.reconcile() is True
    before = harness.serials()
    harness.api.batches.clear()
    harness.api.most_in_flight = 0
    harness.api.signer = NEW_CA
    await harness.receive(state(*records, version=2, bundle=BOTH, tainted=frozenset({CA.authority_id})))
    assert await harness.manager.reconcile() is True
    assert sorted(len(batch) for batch in harness.api.batches) == [SIGN_BATCH_SIZE] * 3
    assert sorted(e for batch in harness.api.batches for e in batch) == [r.id for r in records]
    assert harness.api.most_in_flight > 1
    after = harness.serials()
    assert len(after) == 300
    assert all(after[entry_id] != serial for entry_id, serial in before.items())
    assert all(signer_ids(h.cert_chain) == {NEW_CA.authority_id} for h in harness.manager.held.values())
    assert [s.entry_id for s in harness.snapshot().svids] == [r.id for r in records]  # CA's entry order


async def test_a_failed_batch_does_not_lose_what_the_other_batches_brought(harness: Harness) -> None:
    records = many(250)
    await harness.receive(state(*records))
    harness.api.down_for = {"e-0120"}  # in the second batch
    with pytest.raises(UpstreamUnavailable):
        await harness.manager.reconcile()
    assert len(harness.manager.held) == 150
    assert "e-0120" not in harness.manager.held
    assert len(harness.snapshot().svids) == 150
    harness.api.down_for = set()
    assert await harness.manager.reconcile() is True
    assert len(harness.manager.held) == 250


async def test_a_ca_that_signs_with_the_tainted_authority_leaves_the_round_incomplete(harness: Harness) -> None:
    await harness.receive(state(entry("e-web", WEB), bundle=BOTH))
    await harness.manager.reconcile()
    await harness.receive(state(entry("e-web", WEB), version=2, bundle=BOTH, tainted=frozenset({CA.authority_id})))
    assert await harness.manager.reconcile() is False  # the SVID task backs off instead of spinning
    assert len(harness.api.batches) == 2


async def test_jwt_svids_of_a_tainted_key_are_not_reused(harness: Harness) -> None:
    harness.api.real_jwts = True
    await harness.receive(state(entry("e-web", WEB)))
    first = await harness.manager.fetch_jwt_svid(WEB, ["db"])
    await harness.receive(state(entry("e-web", WEB), version=2, tainted=frozenset({NEW_CA.authority_id})))
    assert await harness.manager.fetch_jwt_svid(WEB, ["db"]) == first
    await harness.receive(state(entry("e-web", WEB), version=3, tainted=frozenset({CA.jwt_key_id})))
    assert await harness.manager.fetch_jwt_svid(WEB, ["db"]) != first
    assert harness.api.minted == 2


# --- failing loops back off and log at most once per 10 s --------------------------------------------


async def test_a_failing_signing_loop_backs_off_and_logs_once(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    harness.api.ids["e-web"] = WEB
    harness.api.down = True
    harness.api.streams = [[state(entry("e-web", WEB))]]
    with caplog.at_level(logging.WARNING, logger="sds.manager"):
        task = asyncio.create_task(harness.manager.run())
        await asyncio.sleep(0.5)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert 3 < harness.api.attempts < 60  # retried with backoff (10 ms to 50 ms), not in a spin
    assert [m.split(" (")[0] for m in caplog.messages] == ["could not get workload SVIDs signed"]


async def test_a_signing_rate_refusal_is_retried_no_sooner_than_the_cas_hint(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    harness = Harness(tmp_path)
    harness.manager = AgentManager(  # a backoff cap above the hint, so the hint is what is honoured
        client=harness.api,
        cache=harness.cache,
        store=AgentStore(tmp_path, TD),
        identity=harness.sink,
        params=ManagerParams(backoff_base=0.01, backoff_cap=5.0),
        clock=harness.clock,
        rng=random.Random(5),
    )
    harness.api.ids["e-web"] = WEB
    harness.api.rate_limited, harness.api.retry_after = 2, 0.2
    harness.api.streams = [[state(entry("e-web", WEB))]]
    loop = asyncio.get_running_loop()
    started = loop.time()
    with caplog.at_level(logging.WARNING, logger="sds.manager"):
        async with asyncio.timeout(5), asyncio.TaskGroup() as tasks:
            running = tasks.create_task(harness.manager.run())
            async for snapshot in harness.cache.subscribe():
                if snapshot.svids:
                    break
            running.cancel()
    assert harness.api.attempts == 3  # refused twice, then signed
    assert loop.time() - started >= 0.4  # each retry waited for the hint, not the 10 ms backoff
    assert [s.spiffe_id for s in harness.snapshot().svids] == [WEB]
    assert [m.split(" (")[0] for m in caplog.messages] == ["could not get workload SVIDs signed"]


async def test_a_failing_sync_stream_backs_off_and_logs_once(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    harness.api.ids["e-web"] = WEB
    harness.api.streams = [*[UpstreamUnavailable("down")] * 20, [state(entry("e-web", WEB))]]
    with caplog.at_level(logging.WARNING, logger="sds.manager"):
        await first_svid_published(harness)
    assert harness.api.streams == []
    assert caplog.messages == [caplog.messages[0]]
    assert caplog.messages[0].startswith("sync stream with the CA failed (down); reconnecting in ")
