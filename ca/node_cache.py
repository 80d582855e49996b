"""What the node API remembers between calls, so a call by a known agent costs no chain verification and
no datastore read before it signs (issue 12, "per-call cost").

* :class:`VerifiedChains`: a client certificate chain (as the TLS handshake presented it) → the SVID it
  verified as, for the bundle it was verified against. Reused only with that same bundle object and only
  while every certificate of the verified path is within its validity at the call's time, which is when
  verifying again would give the same answer; a new bundle forgets them all.
* :class:`ContactNotes`: per agent, when its contact (the inventory's "last seen" and reported version)
  was last recorded by this process, so a call writes it only once the interval has passed or the
  version changed, and otherwise touches no datastore. The notes are this process's: with several CA
  replicas an agent's "last seen" may lag its last call by up to twice the interval.
* :class:`AgentStateCache`: per agent, state read from the datastore (its record: serial, previous
  serial and overlap, ban; the registration entries parented to it). Fed by the same change feed that
  drives Sync (:class:`~ca.sync.ChangeHub`): every change that concerns an agent drops what is held for
  it, synchronously in the thread that committed the change, before the call that made it returns. A
  read that was under way while a change landed is not kept (a generation counter tells), so the first
  call after a ban, an eviction, a renewal, a re-attestation or an entry change reads the datastore
  again. The serial check itself is evaluated on every call, at that call's time, so the renewal
  overlap ends exactly when it does.

  Changes made by another CA replica reach the hub through PostgreSQL's NOTIFY (as they reach Sync
  streams). A read is kept as long as the hub hears every change (:meth:`ChangeHub.is_complete`:
  always with one CA process, and while the change listener is connected with replicas, whose
  reconnect drops everything held); while it may not, nothing is answered from a read older than
  :data:`TTL_SECONDS` (the bound docs/admin-api.md gives admin entries too). A TTL alone would read
  again on nearly every real call: agents call every few minutes, not every second.

Everything is bounded: chains and agents by count (least recently used first), entries by how many are
held in total. Thread-safe: the node API calls these from worker threads.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Generic, TypeVar

from ca.sync import Change
from spiffe_core.bundle import Bundle
from spiffe_core.spiffe_id import SpiffeId

# How old a read of an agent's state may be when a call is answered from it (other replicas' changes).
TTL_SECONDS = 1.0
# Client certificate chains remembered (a few KiB each): agents renew, so each has one or two at a time.
MAX_CHAINS = 4096
# Agent records remembered (a few hundred bytes each).
MAX_AGENTS = 10_000
# Agents whose last recorded contact is remembered (a few dozen bytes each).
MAX_CONTACTS = 10_000
# Registration entries remembered, over all agents (about a KiB each).
MAX_ENTRIES = 50_000

Value = TypeVar("Value")
Key = TypeVar("Key", bound=Hashable)


@dataclass(frozen=True, slots=True)
class VerifiedPeer:
    """A client chain that verified as an X509-SVID: whose, which serial, and the window in which the
    verification holds (the latest notBefore and the earliest notAfter on the verified path)."""

    spiffe_id: SpiffeId
    serial: int
    not_after: datetime  # the leaf's: a stream opened with it ends then
    valid_from: datetime
    valid_until: datetime


@dataclass(frozen=True, slots=True)
class Held(Generic[Value]):
    """A value held by a cache (which may itself be None: an agent the datastore does not know)."""

    value: Value


class _Lru(Generic[Key, Value]):
    """An insertion-ordered map evicting the least recently used keys beyond a total weight."""

    def __init__(self, max_weight: int, weight: Callable[[Value], int]) -> None:
        self._items: OrderedDict[Key, tuple[Value, float, int]] = OrderedDict()
        self._max_weight = max_weight
        self._weight = weight
        self._total = 0

    def get(self, key: Key) -> tuple[Value, float] | None:
        item = self._items.get(key)
        if item is None:
            return None
        self._items.move_to_end(key)
        return item[0], item[1]

    def put(self, key: Key, value: Value, stamp: float) -> None:
        self.discard(key)
        weight = self._weight(value)
        if weight > self._max_weight:
            return  # larger than the whole budget: answered, never held
        self._items[key] = (value, stamp, weight)
        self._total += weight
        while self._total > self._max_weight:
            _, (_, _, dropped) = self._items.popitem(last=False)
            self._total -= dropped

    def discard(self, key: Key) -> None:
        item = self._items.pop(key, None)
        if item is not None:
            self._total -= item[2]

    def clear(self) -> None:
        self._items.clear()
        self._total = 0

    def __len__(self) -> int:
        return len(self._items)


class VerifiedChains:
    """Client chains that verified against one bundle (see the module docstring)."""

    def __init__(self, max_chains: int = MAX_CHAINS) -> None:
        self._lock = threading.Lock()
        self._bundle: Bundle | None = None
        self._chains: _Lru[bytes, VerifiedPeer] = _Lru(max_chains, lambda _peer: 1)

    def get(self, chain_pem: bytes, bundle: Bundle, now: datetime) -> VerifiedPeer | None:
        """The peer ``chain_pem`` verified as against this very ``bundle``, if ``now`` is within the
        verified path's validity; None when it must be verified (again)."""
        with self._lock:
            if bundle is not self._bundle:
                return None
            found = self._chains.get(chain_pem)
        if found is None:
            return None
        peer = found[0]
        return peer if peer.valid_from <= now <= peer.valid_until else None

    def put(self, chain_pem: bytes, bundle: Bundle, peer: VerifiedPeer) -> None:
        with self._lock:
            if bundle is not self._bundle:
                self._chains.clear()
                self._bundle = bundle
            self._chains.put(chain_pem, peer, 0.0)

    def __len__(self) -> int:
        with self._lock:
            return len(self._chains)


class ContactNotes:
    """When each agent's contact was last recorded, and with which version (see the module docstring).
    Forgetting an agent (beyond :data:`MAX_CONTACTS`) only costs it one more write."""

    def __init__(self, every: timedelta, max_agents: int = MAX_CONTACTS) -> None:
        self._every = every
        self._lock = threading.Lock()
        self._noted: _Lru[SpiffeId, tuple[datetime, str]] = _Lru(max_agents, lambda _note: 1)

    def due(self, agent: SpiffeId, now: datetime, version: str) -> bool:
        """Whether a call at ``now`` reporting ``version`` ("": none) must record the contact."""
        with self._lock:
            return self._due(agent, now, version)

    def claim(self, agent: SpiffeId, now: datetime, version: str) -> bool:
        """:meth:`due`, and if so noted as recorded at ``now``: of concurrent calls, one writes."""
        with self._lock:
            if not self._due(agent, now, version):
                return False
            self._note(agent, now, version)
            return True

    def noted(self, agent: SpiffeId, now: datetime, version: str) -> None:
        """Note a contact recorded at ``now`` by other means (an attestation or renewal writes it too)."""
        with self._lock:
            self._note(agent, now, version)

    def _note(self, agent: SpiffeId, now: datetime, version: str) -> None:
        found = self._noted.get(agent)
        kept = version or ("" if found is None else found[0][1])  # "" leaves the stored version
        self._noted.put(agent, (now, kept), 0.0)

    def forget(self, agent: SpiffeId) -> None:
        """Drop the note (its write failed), so the next call records the contact again."""
        with self._lock:
            self._noted.discard(agent)

    def _due(self, agent: SpiffeId, now: datetime, version: str) -> bool:
        found = self._noted.get(agent)
        if found is None:
            return True
        at, noted_version = found[0]
        return now - at >= self._every or (bool(version) and version != noted_version)


class AgentStateCache(Generic[Value]):
    """Per-agent state read by ``load``, dropped on every change that concerns the agent (see the
    module docstring). ``weight`` says how much of ``max_weight`` a value takes; ``complete`` says
    whether every change reaches :meth:`invalidate` now (then a read is kept until one does), else a
    read is kept at most ``ttl`` seconds."""

    def __init__(
        self,
        load: Callable[[SpiffeId], Value],
        *,
        max_weight: int,
        weight: Callable[[Value], int] = lambda _value: 1,
        ttl: float = TTL_SECONDS,
        complete: Callable[[], bool] = lambda: False,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._load = load
        self._ttl = ttl
        self._complete = complete
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._values: _Lru[SpiffeId, Value] = _Lru(max_weight, weight)
        self._generation = 0

    def held(self, agent: SpiffeId) -> Held[Value] | None:
        """The agent's state if it is held and fresh (see :meth:`get`); None when it would have to be
        read. Never reads: for callers that must not wait on the datastore (the event loop)."""
        with self._lock:
            return self._fresh(agent)

    def get(self, agent: SpiffeId) -> Value:
        """The agent's state, from a read that no change has overtaken and that is at most ``ttl`` old
        unless the change feed is complete (read now otherwise). Raises what ``load`` raises."""
        with self._lock:
            fresh = self._fresh(agent)
            if fresh is not None:
                return fresh.value
            generation = self._generation
        read_at = self._monotonic()  # before the read: the age counts from what the read could see
        value = self._load(agent)
        with self._lock:
            if generation == self._generation:  # no change landed while it was read
                self._values.put(agent, value, read_at)
        return value

    def _fresh(self, agent: SpiffeId) -> Held[Value] | None:
        found = self._values.get(agent)
        if found is not None and (self._complete() or self._monotonic() - found[1] < self._ttl):
            return Held(found[0])
        return None

    def invalidate(self, change: Change) -> None:
        """Forget what ``change`` may have made wrong. Safe from any thread; never blocks on a read."""
        with self._lock:
            self._generation += 1
            if change.agents is None:
                self._values.clear()
                return
            for agent in change.agents:
                self._values.discard(agent)

    def __len__(self) -> int:
        with self._lock:
            return len(self._values)
