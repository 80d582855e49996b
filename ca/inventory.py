"""The inventory (issue 11 item 1): what the CA issued and to whom, for officers and operators who must
answer "what expires tomorrow, on which node, and who do we call".

Read-only use cases over the datastore, one unit of work each; the admin API (:mod:`ca.http_inventory`),
the CLI (``trustmesh-ca inventory``, through the API) and the web console render the same functions:

* :meth:`Inventory.svids`: issued X509-SVIDs by SPIFFE ID, agent, authority, expiring within a window,
  revoked or not; soonest expiry first, in pages of at most :data:`MAX_PAGE` with an opaque cursor
  (a keyset: a deep page costs what the first one does). Each carries the owners of the registration
  entries naming its SPIFFE ID: who to call.
* :meth:`Inventory.join_tokens`: tokens, unused or all, expiring within a window; named by
  :attr:`~ca.store.records.JoinToken.token_id`, never by their text (which the CA does not have).
* :meth:`Inventory.timeline` and :func:`authority_timeline`: every authority's prepared, activated,
  retired, tainted, revoked and expiry moments in time order.
* :meth:`Inventory.summary`: the counts a dashboard starts with.

Agents (with their version and when they were last seen) are :meth:`ca.agents.AgentAdmin.list`; entries,
with their owner, :meth:`ca.entries.RegistrationEntries.list`.
"""

from __future__ import annotations

import base64
import binascii
import enum
import json
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Generic, TypeVar

from sqlalchemy.orm import Session

from ca.store.engine import Database
from ca.store.records import (
    AuthorityKind,
    AuthorityRecord,
    CertificateQuery,
    IssuedCertificate,
    JoinToken,
    JoinTokenQuery,
)
from ca.store.repositories import (
    AgentRepository,
    AuthorityRepository,
    IssuedCertificateRepository,
    JoinTokenRepository,
    RegistrationEntryRepository,
)
from spiffe_core.clock import Clock
from spiffe_core.errors import InvalidArgument
from spiffe_core.spiffe_id import SpiffeId

DEFAULT_PAGE = 100
MAX_PAGE = 1000
# A cursor is a timestamp and a serial or token ID; anything longer was not handed out here.
MAX_CURSOR_LENGTH = 256
# The window the summary counts as "expiring soon".
SUMMARY_WINDOW = timedelta(hours=24)


@dataclass(frozen=True, slots=True)
class SvidFilter:
    """Which issued X509-SVIDs to list; every given filter must match. ``expiring_within`` keeps those
    still valid that expire within that long from now; ``revoked`` True keeps only revoked ones, False
    only unrevoked ones. Expired SVIDs (whose records the CA keeps for
    ``datastore.issued_certificate_retention``) are left out unless ``include_expired``."""

    spiffe_id: SpiffeId | None = None
    agent_id: SpiffeId | None = None
    authority_id: str | None = None
    expiring_within: timedelta | None = None
    revoked: bool | None = None
    include_expired: bool = False

    def query(self, now: datetime) -> CertificateQuery:
        """The datastore query this filter means at ``now``."""
        if self.expiring_within is not None and self.expiring_within <= timedelta(0):
            raise InvalidArgument(
                f"expiring within {int(self.expiring_within.total_seconds())}s is not a window; give a positive "
                "duration, e.g. 24h"
            )
        return CertificateQuery(
            spiffe_id=self.spiffe_id,
            agent_id=self.agent_id,
            authority_id=self.authority_id,
            expires_before=None if self.expiring_within is None else now + self.expiring_within,
            unexpired_at=None if self.include_expired else now,
            revoked=self.revoked,
        )


@dataclass(frozen=True, slots=True)
class SvidItem:
    """An issued X509-SVID and the owners of the registration entries naming its SPIFFE ID (empty when
    none names one, or the SVID was minted by an officer for an ID without an entry)."""

    certificate: IssuedCertificate
    owners: tuple[str, ...] = ()


T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """One page of a listing: the items, how many match in all, and the cursor of the next page (None
    on the last one)."""

    items: tuple[T, ...]
    total: int
    next_cursor: str | None = None


class TokenState(enum.StrEnum):
    UNUSED = "unused"
    USED = "used"
    EXPIRED = "expired"


def token_state(token: JoinToken, now: datetime) -> TokenState:
    """Used (it attested a node), expired unused, or still usable."""
    if token.used_at is not None:
        return TokenState.USED
    return TokenState.EXPIRED if token.expires_at <= now else TokenState.UNUSED


class TimelineEventKind(enum.StrEnum):
    PREPARED = "prepared"
    ACTIVATED = "activated"
    RETIRED = "retired"
    TAINTED = "tainted"
    REVOKED = "revoked"
    EXPIRES = "expires"  # notAfter ahead of now
    EXPIRED = "expired"  # notAfter passed


@dataclass(frozen=True, slots=True)
class TimelineEvent:
    """One moment of an authority's life."""

    at: datetime
    authority_id: str
    kind: AuthorityKind
    event: TimelineEventKind


def authority_timeline(authorities: Iterable[AuthorityRecord], now: datetime) -> tuple[TimelineEvent, ...]:
    """Every authority's lifecycle moments, oldest first (ties in lifecycle order): created (prepared),
    activated, retired, tainted, revoked, and its notAfter as ``expires`` or, once past, ``expired``."""
    events: list[tuple[datetime, int, str, TimelineEvent]] = []
    for record in authorities:
        end = TimelineEventKind.EXPIRED if record.not_after <= now else TimelineEventKind.EXPIRES
        moments = (
            (record.created_at, TimelineEventKind.PREPARED),
            (record.activated_at, TimelineEventKind.ACTIVATED),
            (record.retired_at, TimelineEventKind.RETIRED),
            (record.tainted_at, TimelineEventKind.TAINTED),
            (record.revoked_at, TimelineEventKind.REVOKED),
            (record.not_after, end),
        )
        for order, (at, kind) in enumerate(moments):
            if at is not None:
                events.append((at, order, record.id, TimelineEvent(at, record.id, record.kind, kind)))
    return tuple(event for *_, event in sorted(events, key=lambda e: e[:3]))


@dataclass(frozen=True, slots=True)
class InventorySummary:
    """The counts a dashboard starts with, at ``at``. ``expiring_soon`` counts live SVIDs expiring within
    :data:`SUMMARY_WINDOW`; ``agents_expired`` agents whose own SVID expired (they must attest again)."""

    at: datetime
    svids_live: int
    svids_revoked_live: int
    svids_expiring_soon: int
    agents: int
    agents_banned: int
    agents_expired: int
    join_tokens_unused: int
    entries: int
    entries_without_owner: int
    authorities: Mapping[str, int] = field(default_factory=dict)  # "<kind> <state>" -> count


def encode_cursor(at: datetime, key: str) -> str:
    """The opaque cursor of a page that ended at (``at``, ``key``)."""
    return base64.urlsafe_b64encode(json.dumps([at.isoformat(), key]).encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """The (time, key) a cursor from :func:`encode_cursor` holds; InvalidArgument for anything else."""
    refusal = InvalidArgument(
        "the cursor is not one this CA handed out; pass next_cursor from the previous page as it was, or start "
        "again without a cursor"
    )
    if len(cursor) > MAX_CURSOR_LENGTH:
        raise refusal
    try:
        at, key = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        moment = datetime.fromisoformat(at)
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError):
        raise refusal from None
    if not isinstance(key, str) or moment.utcoffset() is None:
        raise refusal
    return moment, key


def _check_limit(limit: int) -> None:
    if not 1 <= limit <= MAX_PAGE:
        raise InvalidArgument(f"page size {limit} is outside 1..{MAX_PAGE}; ask for at most {MAX_PAGE} at a time")


def _serial(key: str) -> int:
    try:
        return int(key, 16)
    except ValueError:
        raise InvalidArgument("the cursor is not one of an SVID listing; start again without a cursor") from None


class Inventory:
    """The inventory's read-only use cases; each call is one unit of work."""

    def __init__(self, database: Database, clock: Clock) -> None:
        self._database = database
        self._clock = clock

    def svids(self, which: SvidFilter, *, limit: int = DEFAULT_PAGE, cursor: str | None = None) -> Page[SvidItem]:
        """A page of issued X509-SVIDs matching ``which``, soonest expiry first. Raises InvalidArgument for a
        page size outside 1..:data:`MAX_PAGE`, a window that is not positive, or a cursor not handed out here."""
        _check_limit(limit)
        after = None
        if cursor is not None:
            at, key = decode_cursor(cursor)
            after = (at, _serial(key))
        query = which.query(self._clock.now())
        with self._database.transaction() as session:
            certificates = IssuedCertificateRepository(session)
            found = certificates.page(query, limit + 1, after)
            total = certificates.count(query)
            owners = self._owners(session, {c.spiffe_id for c in found[:limit]})
        items = tuple(SvidItem(c, owners.get(c.spiffe_id, ())) for c in found[:limit])
        last = items[-1].certificate if len(found) > limit else None
        next_cursor = None if last is None else encode_cursor(last.not_after, format(last.serial, "x"))
        return Page(items, total, next_cursor)

    @staticmethod
    def _owners(session: Session, spiffe_ids: set[SpiffeId]) -> dict[SpiffeId, tuple[str, ...]]:
        """The owners named by the entries of each SPIFFE ID, in one query."""
        named: dict[SpiffeId, set[str]] = {}
        for entry in RegistrationEntryRepository(session).list_for_spiffe_ids(spiffe_ids):
            if entry.spec.owner:
                named.setdefault(entry.spec.spiffe_id, set()).add(entry.spec.owner)
        return {spiffe_id: tuple(sorted(owners)) for spiffe_id, owners in named.items()}

    def join_tokens(
        self,
        *,
        unused: bool = False,
        expiring_within: timedelta | None = None,
        limit: int = DEFAULT_PAGE,
        cursor: str | None = None,
    ) -> Page[JoinToken]:
        """A page of join tokens, soonest expiry first: all of them, or only the ``unused`` ones (unused and
        unexpired), optionally only those expiring within ``expiring_within`` from now. The records carry
        the token's hash, never its text; show :attr:`~ca.store.records.JoinToken.token_id`."""
        _check_limit(limit)
        now = self._clock.now()
        if expiring_within is not None and expiring_within <= timedelta(0):
            raise InvalidArgument("the expiry window must be positive; give e.g. 1h")
        query = JoinTokenQuery(
            unused_at=now if unused or expiring_within is not None else None,
            expires_before=None if expiring_within is None else now + expiring_within,
        )
        after = None if cursor is None else decode_cursor(cursor)
        with self._database.transaction() as session:
            tokens = JoinTokenRepository(session)
            found = tokens.page(query, limit + 1, after)
            total = tokens.count(query)
        items = found[:limit]
        next_cursor = encode_cursor(items[-1].expires_at, items[-1].token_id) if len(found) > limit else None
        return Page(items, total, next_cursor)

    def timeline(self) -> tuple[TimelineEvent, ...]:
        """Every stored authority's lifecycle, oldest moment first (:func:`authority_timeline`)."""
        with self._database.transaction() as session:
            authorities = AuthorityRepository(session).list()
        return authority_timeline(authorities, self._clock.now())

    def summary(self) -> InventorySummary:
        """The counts of :class:`InventorySummary`, now."""
        now = self._clock.now()
        with self._database.transaction() as session:
            certificates = IssuedCertificateRepository(session)
            svids_live = certificates.count(CertificateQuery(unexpired_at=now, revoked=False))
            revoked_live = certificates.count(CertificateQuery(unexpired_at=now, revoked=True))
            expiring = certificates.count(
                CertificateQuery(unexpired_at=now, revoked=False, expires_before=now + SUMMARY_WINDOW)
            )
            agents = AgentRepository(session).list()
            tokens = JoinTokenRepository(session).count(JoinTokenQuery(unused_at=now))
            entries = RegistrationEntryRepository(session).list()
            authorities = AuthorityRepository(session).list()
        return InventorySummary(
            at=now,
            svids_live=svids_live,
            svids_revoked_live=revoked_live,
            svids_expiring_soon=expiring,
            agents=len(agents),
            agents_banned=sum(agent.banned for agent in agents),
            agents_expired=sum(agent.expires_at <= now for agent in agents),
            join_tokens_unused=tokens,
            entries=len(entries),
            entries_without_owner=sum(not entry.spec.owner for entry in entries),
            authorities=dict(Counter(f"{a.kind.value} {a.state.value}" for a in authorities)),
        )
