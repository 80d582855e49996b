"""The agent's manager: holds the Sync stream to the CA and keeps one X509-SVID per registration entry
(DESIGN §1 "push, not poll", §4 "rotation at 1/2 of each SVID's life with jitter; immediate re-issue on
taint/revocation"; wire/node.proto ``Sync`` and ``SignX509Svids``).

Two tasks under one TaskGroup (:meth:`AgentManager.run`):

* the sync task reads the stream. Every message is the full state, so a reconnect needs no catch-up.
  Each state goes to the agent's own identity first (:class:`OwnIdentity`: it adopts the bundle, and
  renews the agent SVID at once when the state taints, revokes or no longer trusts it). A failed
  stream is reopened with exponential backoff and jitter (0.5 s → 30 s); a stream that ends cleanly
  after a message (the node client swapped in new credentials) is reopened at once.
* the SVID task wakes on a new state, at the earliest rotation time of the SVIDs held, or after a
  failed signing round (backoff), and does one round: :func:`~sds.planning.plan_signing` decides, keys
  are generated here (they never leave the host), the CSRs go out in ``SignX509Svids`` calls of at most
  :data:`SIGN_BATCH_SIZE` items, a few at a time, so a taint that hits a thousand SVIDs re-issues them
  all in one round, and a new :class:`~sds.cache.CacheSnapshot` is published when what it hands out
  changed. Waking at the earliest rotation time is the per-SVID timer, without a task per SVID.

Failures of either loop are logged at most once per 10 s per loop, with a count of the lines held back.

The state and the SVIDs are saved (0600) after every change, and loaded by :meth:`AgentManager.run`
before anything else, so a restart during a CA outage republishes them at once.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from sds.cache import WorkloadCache
from sds.node_client import EntryRecord, SignedX509Svid, SyncState, make_csr
from sds.persistence import AgentStore
from sds.planning import (
    BACKOFF_BASE_SECONDS,
    BACKOFF_CAP_SECONDS,
    HeldSvid,
    SignReason,
    build_snapshot,
    next_rotation,
    plan_signing,
    received_life_start,
    same_content,
)
from spiffe_core.backoff import LogThrottle, backoff_delay
from spiffe_core.bundle import Bundle
from spiffe_core.clock import Clock
from spiffe_core.errors import (
    JwtSvidError,
    NotFound,
    ResourceExhausted,
    TrustmeshError,
    UpstreamUnavailable,
    X509SvidError,
)
from spiffe_core.jwt_svid import check_audience, parse_jwt_svid_insecure
from spiffe_core.keys import KeyType, PrivateKey, generate_private_key
from spiffe_core.spiffe_id import SpiffeId, TrustDomain
from spiffe_core.x509_svid import verify_x509_svid

log = logging.getLogger(__name__)

# JWT-SVIDs kept for reuse: at most this many, holding at most ManagerParams.jwt_cache_bytes of tokens
# and keys; beyond either the soonest-stale ones are forgotten first.
_JWT_CACHE_LIMIT = 1024
JWT_CACHE_BYTES = 4 * 1024 * 1024
# What a cached JWT-SVID costs beyond its token and key strings (dict slot, tuples, objects), roughly.
_JWT_ENTRY_OVERHEAD = 512
# Items per SignX509Svids call, and calls in flight at once. The CA refuses calls over its
# node_api.max_batch_size (1,000 by default) and rate-limits each agent (bursts of 2,000 by default), and one
# call must fit gRPC's default 4 MiB message limit (a response item is a whole chain: a few KiB with RSA
# keys and an upstream intermediate) and the node client's 10 s deadline (the CA signs, re-validates and
# records the whole batch in one transaction). 1,000 SVIDs thus go out as 10 calls, 4 at a time.
SIGN_BATCH_SIZE = 100
SIGN_BATCHES_IN_FLIGHT = 4
# Refused items named one by one per round; the rest are counted.
_REFUSALS_NAMED = 10


class NodeApi(Protocol):
    """What the manager needs from the node API client (:class:`sds.node_client.NodeClient`)."""

    @property
    def channel_generation(self) -> int: ...
    def sync(self) -> AsyncIterator[SyncState]: ...
    async def sign_x509_svids(self, items: Sequence[tuple[str, bytes]]) -> list[SignedX509Svid]: ...
    async def mint_jwt_svid(self, entry_id: str, audience: Sequence[str]) -> tuple[str, datetime]: ...
    async def refresh_federated_bundle(self, trust_domain: TrustDomain, key_id: str) -> Bundle | None: ...


class OwnIdentity(Protocol):
    """The agent's own identity (:class:`sds.agent_svid.AgentIdentity`), told about every state before
    anything is published with it: the node client must verify the CA with its bundle, and the agent
    SVID must be renewed at once when the state taints, revokes or no longer trusts it."""

    async def follow_sync_state(self, state: SyncState) -> None: ...


@dataclass
class SyncStatus:
    """How the Sync stream to the CA is doing, for ``/ready`` and ``/metrics`` (:mod:`sds.health`):
    whether a stream is delivering now, when the CA was last heard from (a state, or a stream that was
    delivering until just now), and how many streams failed or were reopened since the agent started."""

    connected: bool = False
    last_contact_at: datetime | None = None
    last_error: str = ""
    errors: int = 0
    reconnects: int = 0


@dataclass(frozen=True, slots=True)
class ManagerParams:
    key_type: KeyType = KeyType.EC_P256
    rotation_fraction: float = 0.5
    jitter: float = 0.1
    backoff_base: float = BACKOFF_BASE_SECONDS
    backoff_cap: float = BACKOFF_CAP_SECONDS
    jwt_cache_bytes: int = JWT_CACHE_BYTES


@dataclass(frozen=True, slots=True)
class _CachedJwt:
    token: str
    refresh_at: datetime
    key_id: str | None  # the signing key's ``kid``, so a taint of that key drops the token
    size: int  # bytes it holds in the cache, token and key together (see _jwt_size)


class AgentManager:
    def __init__(
        self,
        *,
        client: NodeApi,
        cache: WorkloadCache,
        store: AgentStore,
        identity: OwnIdentity,
        params: ManagerParams,
        clock: Clock,
        rng: random.Random | None = None,
    ) -> None:
        self._client = client
        self._cache = cache
        self._store = store
        self._identity = identity
        self._params = params
        self._clock = clock
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not secrets
        self._state: SyncState | None = None
        self._held: dict[str, HeldSvid] = {}
        self._saved: object = None
        self._wake = asyncio.Event()
        self._jwt: dict[tuple[SpiffeId, tuple[str, ...]], _CachedJwt] = {}
        self._bundle_refreshes: dict[TrustDomain, asyncio.Future[Bundle | None]] = {}
        self._throttle = LogThrottle()
        self.sync_status = SyncStatus()

    @property
    def held(self) -> dict[str, HeldSvid]:
        """The SVIDs held now, by entry ID (a copy)."""
        return dict(self._held)

    async def run(self) -> None:
        """Republish the saved SVIDs (unless :meth:`load_saved` ran already), then hold the Sync stream
        and keep the SVIDs fresh until cancelled."""
        if self._state is None:
            await self.load_saved()
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._hold_sync(), name="agent-sync")
            tasks.create_task(self._keep_svids(), name="agent-svids")

    async def load_saved(self) -> None:
        """Publish what was saved before a restart (still-valid SVIDs only) without asking the CA."""
        saved = await asyncio.to_thread(self._store.load_workloads)
        if saved is None:
            return
        self._state = saved.state
        self._held = {held.entry_id: held for held in saved.svids}
        self._saved = self._save_key()
        await self._publish()
        self._wake.set()
        log.info("republished %d saved workload SVIDs", len(self._cache.get_snapshot().svids))

    async def receive(self, state: SyncState) -> None:
        """Take a new state from the CA: hand it to the agent's own identity (which adopts its bundle:
        the node client verifies the CA with it before anything is published with it, and renews the
        agent SVID if the state calls for it), forget JWT-SVIDs of tainted keys, wake the SVID task."""
        await self._identity.follow_sync_state(state)
        self._state = state
        if state.tainted_authority_ids:
            self._jwt = {k: v for k, v in self._jwt.items() if v.key_id not in state.tainted_authority_ids}
        self._wake.set()

    def _backoff(self, failures: int) -> float:
        return backoff_delay(failures, self._rng, self._params.backoff_base, self._params.backoff_cap)

    def _warn(self, key: str, message: str, *args: object) -> None:
        """Log a retry loop's failure, at most once per 10 s per ``key``."""
        if self._throttle.should_log(time.monotonic(), key):
            log.warning(message + "%s", *args, self._throttle.note(key))

    async def _hold_sync(self) -> None:
        failures = 0
        status = self.sync_status
        opened = 0
        while True:
            received = False
            if opened:
                status.reconnects += 1
            opened += 1
            generation = self._client.channel_generation
            try:
                last_version = -1
                async for state in self._client.sync():
                    received = True
                    failures = 0
                    status.connected, status.last_contact_at, status.last_error = True, self._clock.now(), ""
                    if state.version <= last_version:
                        continue  # a replay within this stream; a new stream always starts afresh
                    last_version = state.version
                    await self.receive(state)
            except TrustmeshError as err:
                self._lost_stream(str(err))
                failures += 1
                delay = self._backoff(failures)
                self._warn("sync", "sync stream with the CA failed (%s); reconnecting in %.1f s", err, delay)
                await asyncio.sleep(delay)
            else:
                # Ended by the agent's own new credentials (a renewed SVID, a new bundle): reconnect at
                # once, whether or not the CA had said anything yet. Swaps come from real changes, so this
                # cannot spin; with short SVIDs under load, backing off here delayed new bundles.
                swapped = self._client.channel_generation != generation
                self._lost_stream("" if received or swapped else "the CA closed the sync stream without a state")
                if not received and not swapped:  # the CA closed it before it said anything: do not spin
                    failures += 1
                    delay = self._backoff(failures)
                    self._warn("sync", "the CA closed the sync stream without a state; reconnecting in %.1f s", delay)
                    await asyncio.sleep(delay)

    def _lost_stream(self, error: str) -> None:
        """The stream ended: a stream that was delivering counts as contact until now; ``error`` (empty for
        a clean end, the client swapping credentials) counts as a failed stream."""
        status = self.sync_status
        if status.connected:
            status.last_contact_at = self._clock.now()
        status.connected = False
        if error:
            status.errors += 1
            status.last_error = error

    async def _keep_svids(self) -> None:
        failures = 0
        retry_after = 0.0  # the CA's hint when it refused us for its signing rate
        while True:
            timeout = self._seconds_to_next_rotation()
            if failures:
                # Backoff governs (or the CA's retry hint, if longer, within the backoff cap): a rotation
                # time already past is what is being retried.
                timeout = max(self._backoff(failures), min(retry_after, self._params.backoff_cap))
            try:
                async with asyncio.timeout(timeout):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                complete = await self.reconcile()
            except TrustmeshError as err:
                failures += 1
                retry_after = err.retry_after if isinstance(err, ResourceExhausted) else 0.0
                self._warn("svids", "could not get workload SVIDs signed (%s); retrying", err)
            else:
                failures = 0 if complete else failures + 1

    def _seconds_to_next_rotation(self) -> float | None:
        if not self._held:
            return None
        soonest = min(held.rotate_at for held in self._held.values())
        return max((soonest - self._clock.now()).total_seconds(), 0.0)

    async def reconcile(self) -> bool:
        """One round: sign everything :func:`plan_signing` asks for (in batches of at most
        :data:`SIGN_BATCH_SIZE`, several in flight), drop SVIDs of removed entries, publish and save on
        change. True when nothing is left to sign — false also when the CA signed an SVID that would
        have to be replaced at once (say, by a tainted authority), so the caller backs off instead of
        spinning. Raises what :meth:`NodeApi.sign_x509_svids` raises, after holding what the other
        batches brought (the SVIDs held keep serving meanwhile)."""
        state = self._state
        if state is None:
            return True
        now = self._clock.now()
        plan = plan_signing(state, self._held, now)
        self._held = {entry_id: held for entry_id, held in self._held.items() if entry_id not in plan.to_drop}
        complete = True
        try:
            if plan.to_sign:
                complete = await self._sign(state, plan.to_sign, now)
                complete = complete and not plan_signing(state, self._held, now).to_sign
        finally:
            await self._publish()
            await self._save()
        return complete

    async def _sign(self, state: SyncState, to_sign: Sequence[tuple[EntryRecord, SignReason]], now: datetime) -> bool:
        entries = [entry for entry, _ in to_sign]
        _log_plan(to_sign)
        keys = await asyncio.to_thread(self._new_keys, len(entries))
        items = [(entry.id, csr) for entry, (_, csr) in zip(entries, keys, strict=True)]
        starts = range(0, len(items), SIGN_BATCH_SIZE)
        in_flight = asyncio.Semaphore(SIGN_BATCHES_IN_FLIGHT)

        async def sign_batch(start: int) -> list[SignedX509Svid]:
            async with in_flight:
                return await self._client.sign_x509_svids(items[start : start + SIGN_BATCH_SIZE])

        answers = await asyncio.gather(*(sign_batch(start) for start in starts), return_exceptions=True)
        complete = True
        failed: TrustmeshError | None = None
        refusals: list[str] = []
        for start, answer in zip(starts, answers, strict=True):
            if isinstance(answer, TrustmeshError):
                failed = failed or answer
                continue
            if isinstance(answer, BaseException):
                raise answer  # cancelled, or a bug: not a CA answer to retry
            batch = range(start, start + len(answer))
            for index, result in zip(batch, answer, strict=True):
                entry, (key, _) = entries[index], keys[index]
                if result.error:
                    refusals.append(
                        f"the CA refused an X509-SVID for entry {entry.id} ({entry.spiffe_id}): {result.error}"
                    )
                    complete = False
                    continue
                try:
                    self._held[entry.id] = self._checked(state, entry, key, result, now)
                except X509SvidError as err:
                    refusals.append(f"the CA returned an unusable X509-SVID for entry {entry.id}: {err}")
                    complete = False
        self._log_refusals(refusals)
        if failed is not None:
            raise failed
        return complete

    def _log_refusals(self, refusals: Sequence[str]) -> None:
        """Refused items are retried every round: name a few, count the rest, at most once per 10 s."""
        if not refusals or not self._throttle.should_log(time.monotonic(), "refused"):
            return
        lines = list(refusals[:_REFUSALS_NAMED])
        if len(refusals) > _REFUSALS_NAMED:
            lines.append(f"… and {len(refusals) - _REFUSALS_NAMED} more X509-SVIDs refused or unusable this round")
        lines[-1] += self._throttle.note("refused")
        for line in lines:
            log.warning("%s", line)

    def _new_keys(self, count: int) -> list[tuple[PrivateKey, bytes]]:
        keys = [generate_private_key(self._params.key_type) for _ in range(count)]
        return [(key, make_csr(key)) for key in keys]

    def _checked(
        self, state: SyncState, entry: EntryRecord, key: PrivateKey, result: SignedX509Svid, now: datetime
    ) -> HeldSvid:
        """Hold only an SVID for this entry's SPIFFE ID and our key that chains to the bundle."""
        spiffe_id, _ = verify_x509_svid(result.cert_chain, state.bundle, now)
        if spiffe_id != entry.spiffe_id:
            raise X509SvidError(f"it is for {spiffe_id}, not {entry.spiffe_id}")
        leaf = result.cert_chain[0]
        if leaf.public_key() != key.public_key():
            raise X509SvidError("it is not for the key the agent sent")
        p = self._params
        rotate_at = next_rotation(
            now,
            received_life_start(leaf.not_valid_before_utc, leaf.not_valid_after_utc, now),
            leaf.not_valid_after_utc,
            fraction=p.rotation_fraction,
            jitter=p.jitter,
            rng=self._rng,
        )
        return HeldSvid(entry.id, entry.revision, entry.spiffe_id, result.cert_chain, key, rotate_at)

    async def _publish(self) -> None:
        state = self._state
        if state is None:
            return
        current = self._cache.get_snapshot()
        snapshot = build_snapshot(state, self._held, self._clock.now(), current.version + 1)
        if not same_content(snapshot, current):
            await self._cache.publish(snapshot)
            log.debug("published snapshot %d with %d SVIDs", snapshot.version, len(snapshot.svids))

    def _save_key(self) -> object:
        return (self._state, tuple(sorted((k, h.serial, h.rotate_at) for k, h in self._held.items())))

    async def _save(self) -> None:
        state = self._state
        key = self._save_key()
        if state is None or key == self._saved:
            return
        await asyncio.to_thread(self._store.save_workloads, state, tuple(self._held.values()))
        self._saved = key

    async def fetch_jwt_svid(self, spiffe_id: SpiffeId, audience: Sequence[str]) -> str:
        """A JWT-SVID for ``spiffe_id`` (an entry parented to this agent) and ``audience``, reused until
        half its life has passed. Raises NotFound for an ID no entry names, InvalidArgument for an
        audience :func:`~spiffe_core.jwt_svid.check_audience` refuses, UpstreamUnavailable before the
        first state or while the CA is unreachable."""
        audience = check_audience(audience)
        state = self._state
        if state is None:
            raise UpstreamUnavailable("the agent has not received its registration entries from the CA yet; retry")
        entry = next((e for e in state.entries if e.spiffe_id == spiffe_id), None)
        if entry is None:
            raise NotFound(f"no registration entry for {spiffe_id} is parented to this agent")
        key = (spiffe_id, tuple(sorted(set(audience))))
        now = self._clock.now()
        cached = self._jwt.get(key)
        if cached is not None and now < cached.refresh_at:
            return cached.token
        token, expires_at = await self._client.mint_jwt_svid(entry.id, list(audience))
        cached = _CachedJwt(token, now + (expires_at - now) / 2, _key_id(token), _jwt_size(key, token))
        self._remember_jwt(key, cached, now)
        return token

    async def refresh_federated_bundle(self, trust_domain: TrustDomain, key_id: str) -> Bundle | None:
        """The CA's bundle of the federated ``trust_domain`` after it tried to get one holding ``key_id``
        (see :meth:`NodeApi.refresh_federated_bundle`). Callers asking about one trust domain while a
        call for it is in flight share that call: workloads meeting a partner's new key together make
        one. Raises what the node client raises."""
        pending = self._bundle_refreshes.get(trust_domain)
        if pending is None:
            pending = asyncio.ensure_future(self._client.refresh_federated_bundle(trust_domain, key_id))
            self._bundle_refreshes[trust_domain] = pending
            pending.add_done_callback(lambda _: self._bundle_refreshes.pop(trust_domain, None))
        return await asyncio.shield(pending)  # a caller that gives up does not cancel the others' call

    @property
    def jwt_cache_bytes(self) -> int:
        """Bytes the cached JWT-SVIDs hold now (tokens and keys, as :func:`_jwt_size` counts them)."""
        return sum(v.size for v in self._jwt.values())

    def _remember_jwt(self, key: tuple[SpiffeId, tuple[str, ...]], value: _CachedJwt, now: datetime) -> None:
        """Keep ``value`` unless it alone is over the byte budget; then forget stale tokens, and the
        soonest-stale ones until at most :data:`_JWT_CACHE_LIMIT` tokens and
        ``ManagerParams.jwt_cache_bytes`` bytes remain."""
        budget = self._params.jwt_cache_bytes
        self._jwt = {k: v for k, v in self._jwt.items() if v.refresh_at > now and k != key}
        if value.size > budget:
            return  # served once, not cached: it would push out everything else
        self._jwt[key] = value
        if len(self._jwt) > _JWT_CACHE_LIMIT or self.jwt_cache_bytes > budget:
            kept: dict[tuple[SpiffeId, tuple[str, ...]], _CachedJwt] = {}
            total = 0
            for k, v in sorted(self._jwt.items(), key=lambda item: item[1].refresh_at, reverse=True):
                if len(kept) == _JWT_CACHE_LIMIT or total + v.size > budget:
                    break
                kept[k] = v
                total += v.size
            self._jwt = kept


def _log_plan(to_sign: Sequence[tuple[EntryRecord, SignReason]]) -> None:
    """One line for the round (a taint can name a thousand entries at once); each entry at debug."""
    if len(to_sign) == 1:
        entry, reason = to_sign[0]
        log.info("signing an X509-SVID for %s (entry %s): %s", entry.spiffe_id, entry.id, reason)
        return
    counts: dict[SignReason, int] = {}
    for entry, reason in to_sign:
        counts[reason] = counts.get(reason, 0) + 1
        log.debug("signing an X509-SVID for %s (entry %s): %s", entry.spiffe_id, entry.id, reason)
    log.info("signing %d X509-SVIDs: %s", len(to_sign), ", ".join(f"{n} {reason}" for reason, n in counts.items()))


def _jwt_size(key: tuple[SpiffeId, tuple[str, ...]], token: str) -> int:
    """What one cached JWT-SVID costs: its token, the audiences and SPIFFE ID of its key, and a fixed
    overhead. An estimate in bytes of text, proportional to what the process holds for it."""
    spiffe_id, audience = key
    return len(token) + len(str(spiffe_id)) + sum(len(a.encode()) for a in audience) + _JWT_ENTRY_OVERHEAD


def _key_id(token: str) -> str | None:
    """The ``kid`` a JWT-SVID names (for dropping it when that key is tainted); None when unreadable."""
    try:
        header, _ = parse_jwt_svid_insecure(token)
    except JwtSvidError:
        return None
    kid = header.get("kid")
    return kid if isinstance(kid, str) else None
