"""Limits of the node API (wire/node.proto), SPIRE-style (``server { ratelimit { … } }``): the most
X509-SVIDs one ``SignX509Svids`` call may ask for, a signing rate per agent (every X509-SVID, agent
renewal and JWT-SVID takes a token), an attestation rate per source address, and a rate of
``RefreshFederatedBundle`` calls per agent.

Rates are token buckets: a bucket holds at most ``burst`` tokens, refills at ``rate`` tokens a second,
and a call that costs ``n`` passes only when ``n`` tokens are there (it then takes them). A refused call
takes nothing and is told how long until it would pass, which the node API sends as a retry hint
(RESOURCE_EXHAUSTED); the agent backs off at least that long.

Buckets are kept per key (agent SPIFFE ID, peer IP) in a bounded map, so a caller cycling through
addresses cannot grow the CA's memory: when the map is full, buckets that have refilled completely go
first (forgetting them loses nothing: a new bucket starts full), then the least recently used one.

Pure and single-threaded: time comes from an injected monotonic clock (seconds), so tests move time by
hand and never sleep. The node API calls it from its event loop only, so no lock is needed; the
agentless exchange (:mod:`ca.bridge_exchange`), called from worker threads, holds its own lock.

Called by :mod:`ca.node_api` (the edge), configured by ``[node_api]`` (docs/configuration.md); the
exchange's rate by ``[bridge] exchange_rate``.
"""

from __future__ import annotations

import itertools
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

from spiffe_core.errors import InvalidArgument, ResourceExhausted
from spiffe_core.spiffe_id import SpiffeId

Key = TypeVar("Key", bound=Hashable)
Monotonic = Callable[[], float]

# Distinct agents and source addresses remembered at once (a bucket is a few dozen bytes).
MAX_TRACKED_KEYS = 10_000
# How many of the least recently used buckets one eviction looks at (bounds the cost of a new key).
_EVICTION_SCAN = 64


@dataclass(frozen=True, slots=True)
class Rate:
    """``per_second`` tokens a second, at most ``burst`` at once. ``per_second == 0`` means unlimited."""

    per_second: float
    burst: int

    @property
    def unlimited(self) -> bool:
        return self.per_second <= 0


class _Bucket:
    __slots__ = ("tokens", "updated")

    def __init__(self, tokens: float, updated: float) -> None:
        self.tokens = tokens
        self.updated = updated


class KeyedRateLimiter(Generic[Key]):
    """One token bucket per key, at most ``max_keys`` of them."""

    def __init__(self, rate: Rate, *, max_keys: int = MAX_TRACKED_KEYS, monotonic: Monotonic = time.monotonic) -> None:
        if rate.per_second <= 0 or rate.burst < 1 or max_keys < 1:
            raise ValueError(f"a rate limiter needs a positive rate, burst and size, got {rate} and {max_keys} keys")
        self._rate = rate
        self._max_keys = max_keys
        self._monotonic = monotonic
        self._buckets: OrderedDict[Key, _Bucket] = OrderedDict()  # least recently used first

    @property
    def rate(self) -> Rate:
        return self._rate

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key: Key, cost: int = 1) -> float:
        """Take ``cost`` tokens from ``key``'s bucket: 0.0 when they were there (the call passes),
        otherwise the seconds until they will be (nothing is taken). ``cost`` must be at most the
        burst, or it could never pass (ValueError)."""
        if not 0 <= cost <= self._rate.burst:
            raise ValueError(f"cost {cost} is outside 0..{self._rate.burst} (the burst); it could never pass")
        now = self._monotonic()
        bucket = self._buckets.get(key)
        if bucket is None:
            self._make_room(now)
            bucket = self._buckets[key] = _Bucket(float(self._rate.burst), now)
        else:
            self._buckets.move_to_end(key)
            bucket.tokens = self._level(bucket, now)
            bucket.updated = now
        if bucket.tokens >= cost:
            bucket.tokens -= cost
            return 0.0
        return (cost - bucket.tokens) / self._rate.per_second

    def _level(self, bucket: _Bucket, now: float) -> float:
        elapsed = max(now - bucket.updated, 0.0)  # a monotonic clock; max() guards a fake one going back
        return min(float(self._rate.burst), bucket.tokens + elapsed * self._rate.per_second)

    def _make_room(self, now: float) -> None:
        """Make room for one more key: drop the full buckets among the least recently used few (they
        hold no debt: a new bucket starts full), or else the least recently used one, debt and all."""
        if len(self._buckets) < self._max_keys:
            return
        oldest = list(itertools.islice(self._buckets.items(), _EVICTION_SCAN))
        full = [key for key, bucket in oldest if self._level(bucket, now) >= self._rate.burst]
        for key in full or [oldest[0][0]]:
            del self._buckets[key]


@dataclass(frozen=True, slots=True)
class NodeApiLimits:
    """The ``[node_api]`` settings as the edge applies them."""

    max_batch_size: int = 1000
    signing: Rate = Rate(100.0, 2000)  # SVIDs (X509- and JWT-) per agent
    attestation: Rate = Rate(1.0, 20)  # Attest calls per source address
    bundle_refresh: Rate = Rate(1.0, 5)  # RefreshFederatedBundle calls per agent


class NodeApiGuard:
    """Applies :class:`NodeApiLimits` to callers; raises the errors the node API answers with."""

    def __init__(self, limits: NodeApiLimits | None = None, *, monotonic: Monotonic = time.monotonic) -> None:
        self._limits = limits = limits or NodeApiLimits()
        self._signing = (
            None if limits.signing.unlimited else KeyedRateLimiter[SpiffeId](limits.signing, monotonic=monotonic)
        )
        self._attestation = (
            None if limits.attestation.unlimited else KeyedRateLimiter[str](limits.attestation, monotonic=monotonic)
        )
        self._bundle_refresh = (
            None
            if limits.bundle_refresh.unlimited
            else KeyedRateLimiter[SpiffeId](limits.bundle_refresh, monotonic=monotonic)
        )

    @property
    def limits(self) -> NodeApiLimits:
        return self._limits

    def admit_signing(self, agent: SpiffeId, count: int) -> None:
        """Let ``agent`` have ``count`` SVIDs signed now, or raise InvalidArgument (a batch over
        ``node_api.max_batch_size``) or ResourceExhausted (over its signing rate; with the wait)."""
        limit = self._limits.max_batch_size
        if count > limit:
            raise InvalidArgument(
                f"SignX509Svids asks for {count} X509-SVIDs; the CA signs at most {limit} per call "
                "(node_api.max_batch_size); split the batch into calls of at most that many"
            )
        if self._signing is None or count == 0:
            return
        # The configuration keeps max_batch_size within the burst; were it not, a batch larger than the
        # burst would take a full bucket rather than never pass.
        take_or_refuse(
            self._signing,
            agent,
            min(count, self._signing.rate.burst),
            f"agent {agent} is over its SVID signing rate",
            "node_api.ratelimit.signing",
        )

    def admit_attestation(self, source: str) -> None:
        """Let one more attestation from ``source`` (a peer address) through, or raise ResourceExhausted."""
        take_or_refuse(
            self._attestation, source, 1, f"too many attestations from {source}", "node_api.ratelimit.attestation"
        )

    def admit_bundle_refresh(self, agent: SpiffeId) -> None:
        """Let ``agent`` ask for one more federated bundle refresh now, or raise ResourceExhausted. Each
        may make the CA fetch a partner's bundle (that is also limited per partner); this bounds what
        one agent, whatever its workloads send, can make the CA do."""
        take_or_refuse(
            self._bundle_refresh,
            agent,
            1,
            f"agent {agent} is over its federated bundle refresh rate",
            "node_api.ratelimit.bundle_refresh",
        )


def take_or_refuse(limiter: KeyedRateLimiter[Key] | None, key: Key, cost: int, refusal: str, setting: str) -> None:
    """Take ``cost`` tokens from ``key``'s bucket, or raise ResourceExhausted: ``refusal``, the rate and
    the ``setting`` that configures it, and the wait. No limiter: no limit."""
    if limiter is None:
        return
    wait = limiter.take(key, cost)
    if wait:
        rate = limiter.rate
        raise ResourceExhausted(
            f"{refusal} ({rate.per_second:g} per second, bursts of {rate.burst}; {setting}); retry in {wait:.1f} s",
            retry_after=wait,
        )
