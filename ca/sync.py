"""Change notification behind the node API's Sync stream (DESIGN §1: the CA pushes, agents never poll).

Every mutation that can change what an agent must hold (a registration entry, the bundle, an agent's
ban) *announces* a :class:`Change` inside its unit of work. After the commit — never on a rollback —
the process's :class:`ChangeHub` wakes the Sync streams of the agents the change concerns; each stream
then reloads its agent's state and sends it only if it differs from what it sent last.

Two deployments:

* one CA process (SQLite, or a single PostgreSQL replica): the in-process hub is all there is;
* several replicas on one PostgreSQL database: :func:`announce` also queues ``NOTIFY
  trustmesh_changes`` in the same transaction (PostgreSQL delivers it at commit, to every session that
  listens), and :func:`listen_for_changes` runs in each replica, forwarding other replicas' changes to
  its own hub. After (re)connecting the listener wakes every stream, because changes made while it was
  not listening were missed.

Mutations run in worker threads (FastAPI's sync routes, ``asyncio.to_thread``) while streams wait on
the event loop, so :meth:`ChangeHub.notify` is thread-safe and hands wake-ups to each stream's loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

import psycopg
from sqlalchemy import event, func, select
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from spiffe_core.errors import SpiffeIdError
from spiffe_core.spiffe_id import SpiffeId

log = logging.getLogger(__name__)

CHANNEL = "trustmesh_changes"
# PostgreSQL refuses NOTIFY payloads of 8000 bytes or more; a change naming too many agents is
# widened to "every agent" instead (a spurious wake costs one reload, a lost one a stale agent).
_MAX_PAYLOAD = 7000
_RECONNECT_DELAYS = (0.5, 1.0, 2.0, 5.0, 10.0)

State = TypeVar("State")


@dataclass(frozen=True, slots=True)
class Change:
    """What changed, as far as agents are concerned: the agents whose state may differ now, or None
    when every agent's may (the bundle, an authority, a revocation)."""

    agents: frozenset[SpiffeId] | None

    @classmethod
    def everyone(cls) -> Change:
        return cls(None)

    @classmethod
    def for_agents(cls, *agents: SpiffeId) -> Change:
        return cls(frozenset(agents))

    def concerns(self, agent_id: SpiffeId) -> bool:
        return self.agents is None or agent_id in self.agents

    def to_payload(self, origin: str) -> str:
        payload = json.dumps(
            {"origin": origin, "agents": None if self.agents is None else sorted(str(a) for a in self.agents)}
        )
        if len(payload.encode()) < _MAX_PAYLOAD:
            return payload
        return json.dumps({"origin": origin, "agents": None})

    @classmethod
    def from_payload(cls, payload: str) -> tuple[str, Change]:
        """(origin replica, change) from a NOTIFY payload; a payload this code cannot read becomes a
        change for everyone, so a newer replica's message still wakes the streams."""
        try:
            doc = json.loads(payload)
            origin = str(doc["origin"])
            agents = doc["agents"]
            if agents is None:
                return origin, cls.everyone()
            return origin, cls(frozenset(SpiffeId.parse(a) for a in agents))
        except (ValueError, KeyError, TypeError, SpiffeIdError):
            log.warning("unreadable change notification on %s; waking every Sync stream", CHANNEL)
            return "", cls.everyone()


class Subscription:
    """One Sync stream's doorbell: rung by every change that concerns its agent, and remembered until
    the stream waits again, so a change that lands while the stream is busy sending is not lost. It
    also remembers when the first ring since the last wait came (``time.monotonic()``), so the stream
    can tell how long a change took to reach its agent."""

    def __init__(self, agent_id: SpiffeId, loop: asyncio.AbstractEventLoop) -> None:
        self.agent_id = agent_id
        self._loop = loop
        self._rung = asyncio.Event()
        self._rung_at: float | None = None

    def ring(self) -> None:
        """Thread-safe: schedules the wake-up on the stream's own event loop."""
        with contextlib.suppress(RuntimeError):  # the loop closed: the stream is gone anyway
            self._loop.call_soon_threadsafe(self._set, time.monotonic())

    def _set(self, at: float) -> None:
        if self._rung_at is None:
            self._rung_at = at
        self._rung.set()

    async def wait(self) -> float:
        """Wait for a ring; returns when the first ring since the last wait came (monotonic seconds)."""
        await self._rung.wait()
        self._rung.clear()
        rung_at, self._rung_at = self._rung_at, None
        assert rung_at is not None  # _set stamps it before setting the event
        return rung_at


class ChangeHub:
    """The process's registry of Sync streams. ``origin`` tells this replica's NOTIFYs from others'."""

    def __init__(self, *, complete: bool = True) -> None:
        self.origin = uuid.uuid4().hex
        self._lock = threading.Lock()
        self._subscriptions: set[Subscription] = set()
        self._listeners: list[Callable[[Change], None]] = []
        self._complete = complete

    def is_complete(self) -> bool:
        """Whether every change that can concern this process's agents reaches this hub now: always
        with one CA process (every change is made in it), and with replicas on PostgreSQL only while
        :func:`listen_for_changes` is connected (it sets this). Caches of agent state
        (:mod:`ca.node_cache`) keep what they read for as long as this holds."""
        return self._complete

    def set_complete(self, complete: bool) -> None:
        """Say whether every change reaches this hub from now on (:func:`listen_for_changes`)."""
        self._complete = complete

    def add_listener(self, listener: Callable[[Change], None]) -> None:
        """Call ``listener`` with every change, synchronously in :meth:`notify` (so in the thread that
        committed a local change, before that change's caller is answered) and before any stream wakes:
        for caches of agent state (:mod:`ca.node_cache`), which must not answer from what a committed
        change replaced. A listener must be quick and must not raise."""
        with self._lock:
            self._listeners.append(listener)

    @contextlib.contextmanager
    def subscribe(self, agent_id: SpiffeId) -> Iterator[Subscription]:
        """Register a stream for the block's duration; call from the stream's event loop."""
        subscription = Subscription(agent_id, asyncio.get_running_loop())
        with self._lock:
            self._subscriptions.add(subscription)
        try:
            yield subscription
        finally:
            with self._lock:
                self._subscriptions.discard(subscription)

    def notify(self, change: Change) -> None:
        """Tell the listeners, then wake every stream the change concerns. Safe from any thread; never
        blocks on a stream."""
        with self._lock:
            listeners = list(self._listeners)
            woken = [s for s in self._subscriptions if change.concerns(s.agent_id)]
        for listener in listeners:
            listener(change)
        for subscription in woken:
            subscription.ring()

    def subscriber_count(self) -> int:
        with self._lock:
            return len(self._subscriptions)

    def agent_count(self) -> int:
        """Distinct agents with at least one stream subscribed (an agent may briefly hold two)."""
        with self._lock:
            return len({s.agent_id for s in self._subscriptions})


def announce(session: Session, hub: ChangeHub, change: Change) -> None:
    """Announce ``change`` as part of the unit of work ``session`` belongs to: local streams wake after
    it commits (not at all if it rolls back), and on PostgreSQL other replicas' streams too."""
    event.listen(session, "after_commit", lambda _session: hub.notify(change), once=True)
    notify_replicas(session, hub, change)


def notify_replicas(session: Session, hub: ChangeHub, change: Change) -> None:
    """Only the other replicas' part of :func:`announce` (PostgreSQL delivers it at commit): for a
    change whose local wake-up must wait until this process has reloaded what changed."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(select(func.pg_notify(CHANNEL, change.to_payload(hub.origin))))


@dataclass(frozen=True, slots=True)
class Delivery(Generic[State]):
    """A state to send, and when the change that led to it rang (None for the stream's first state)."""

    state: State
    changed_at: float | None


async def watch(subscription: Subscription, load: Callable[[], State]) -> AsyncIterator[Delivery[State]]:
    """Yield the subscriber's state now, then again after every change that altered it.

    ``load`` is blocking (it reads the datastore) and runs in a worker thread. The subscription must
    be taken before the first load, so a change between that load and the first wait still rings."""
    last: State | None = None
    changed_at: float | None = None
    while True:
        state = await asyncio.to_thread(load)
        if state != last:
            last = state
            yield Delivery(state, changed_at)
        changed_at = await subscription.wait()


class UpdateVersions:
    """SyncUpdate versions: strictly increasing within the process and, being microseconds of wall
    time, larger after a restart or on another replica whose clock agrees within the reconnect time."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last = 0

    def next(self) -> int:
        with self._lock:
            self._last = max(self._last + 1, time.time_ns() // 1000)
            return self._last


def _conninfo(database_url: str) -> str:
    """A libpq URI for psycopg from the datastore's SQLAlchemy URL (``postgresql+psycopg://…``)."""
    return make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)


async def listen_for_changes(
    database_url: str,
    hub: ChangeHub,
    *,
    listening: asyncio.Event | None = None,
    reload_shared: Callable[[], object] | None = None,
) -> None:
    """Run until cancelled: LISTEN on :data:`CHANNEL` and feed other replicas' changes to ``hub``.

    Reconnects with backoff when the connection drops; every (re)connect wakes all streams, since what
    happened while nobody listened is unknown. The hub is complete (:meth:`ChangeHub.is_complete`) from
    a connect, after that wake-up, until the connection is lost. ``listening`` is set once the first LISTEN is active.
    ``reload_shared`` (blocking) runs before a change for every agent wakes the streams: such a change
    (authorities, revocations) lives in state this replica caches, which must be re-read first."""
    failures = 0
    while True:
        try:
            async with await psycopg.AsyncConnection.connect(_conninfo(database_url), autocommit=True) as conn:
                await conn.execute(f"LISTEN {CHANNEL}")
                failures = 0
                if reload_shared is not None:
                    await asyncio.to_thread(reload_shared)
                hub.notify(Change.everyone())
                hub.set_complete(True)
                if listening is not None:
                    listening.set()
                try:
                    async for notification in conn.notifies():
                        origin, change = Change.from_payload(notification.payload)
                        if origin != hub.origin:
                            if change.agents is None and reload_shared is not None:
                                await asyncio.to_thread(reload_shared)
                            hub.notify(change)
                finally:  # other replicas' changes may be missed from here until the next connect
                    hub.set_complete(False)
        except psycopg.OperationalError as err:
            delay = _RECONNECT_DELAYS[min(failures, len(_RECONNECT_DELAYS) - 1)]
            failures += 1
            log.warning("change listener lost the datastore (%s); reconnecting in %.1fs", err, delay)
            await asyncio.sleep(delay)
