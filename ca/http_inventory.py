"""The inventory's HTTP edge (issue 11 item 1; :mod:`ca.inventory`): read-only routes every role may call
(:mod:`ca.rbac`). Registered by :func:`ca.http_api.create_admin_app`.

* ``GET /v1/inventory/svids``: issued X509-SVIDs, filtered, a page at a time (``limit`` at most 1000,
  ``cursor`` from the page before);
* ``GET /v1/inventory/join-tokens``: join tokens by ID (the first 16 hex digits of their SHA-256),
  never their text;
* ``GET /v1/inventory/authority-timeline``: every authority's lifecycle moments in time order;
* ``GET /v1/inventory/summary``: the counts a dashboard starts with.

Agents are ``GET /v1/agents`` (version and last seen included) and entries ``GET /v1/entries`` (owner
included). Each route decodes its query, calls one :class:`InventoryOps` method and encodes the result.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Protocol

from fastapi import FastAPI, Query
from pydantic import BaseModel, ConfigDict, Field

from ca.crl import REASONS
from ca.inventory import (
    DEFAULT_PAGE,
    InventorySummary,
    Page,
    SvidFilter,
    SvidItem,
    TimelineEvent,
    token_state,
)
from ca.store.records import JoinToken
from spiffe_core.clock import Clock
from spiffe_core.spiffe_id import SpiffeId

_REASON_WORDS = {flag: word for word, flag in REASONS.items()}


class InventoryOps(Protocol):
    """The inventory use cases this edge calls (:class:`ca.inventory.Inventory`)."""

    def svids(self, which: SvidFilter, *, limit: int = DEFAULT_PAGE, cursor: str | None = None) -> Page[SvidItem]: ...
    def join_tokens(
        self,
        *,
        unused: bool = False,
        expiring_within: timedelta | None = None,
        limit: int = DEFAULT_PAGE,
        cursor: str | None = None,
    ) -> Page[JoinToken]: ...
    def timeline(self) -> tuple[TimelineEvent, ...]: ...
    def summary(self) -> InventorySummary: ...


class _PageQuery(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    limit: int = Field(default=DEFAULT_PAGE, description="at most 1000")
    cursor: str | None = Field(default=None, description="next_cursor of the page before")


class SvidListQuery(_PageQuery):
    """The query parameters of ``GET /v1/inventory/svids``."""

    spiffe_id: str | None = None
    agent_id: str | None = Field(default=None, description="the agent the SVIDs were issued through")
    authority_id: str | None = None
    expiring_within_seconds: int | None = Field(default=None, description="valid now and expiring within this")
    revoked: bool | None = Field(default=None, description="true: only revoked; false: only unrevoked")
    include_expired: bool = Field(default=False, description="also SVIDs that expired (kept for the retention)")

    def filter(self) -> SvidFilter:
        return SvidFilter(
            spiffe_id=_spiffe_id(self.spiffe_id),
            agent_id=_spiffe_id(self.agent_id),
            authority_id=self.authority_id,
            expiring_within=_window(self.expiring_within_seconds),
            revoked=self.revoked,
            include_expired=self.include_expired,
        )


class JoinTokenListQuery(_PageQuery):
    """The query parameters of ``GET /v1/inventory/join-tokens``."""

    unused: bool = Field(default=False, description="only tokens that are unused and unexpired")
    expiring_within_seconds: int | None = Field(default=None, description="unused and expiring within this")


class SvidReply(BaseModel):
    serial: str = Field(description="lowercase hex")
    spiffe_id: str
    agent_id: str | None = Field(description="the agent it was issued through; None: minted by an officer")
    authority_id: str
    not_before: datetime
    not_after: datetime
    issued_at: datetime
    revoked: bool
    revoked_at: datetime | None
    revocation_reason: str | None = Field(description="RFC 5280 reason in kebab case; None: none given")
    owners: list[str] = Field(description="owners of the registration entries naming this SPIFFE ID")


class SvidPageReply(BaseModel):
    svids: list[SvidReply]
    total: int = Field(description="how many match the filters, on every page")
    next_cursor: str | None = Field(description="pass as cursor for the next page; None on the last one")


class JoinTokenReply(BaseModel):
    id: str = Field(description="the first 16 hex digits of the token's SHA-256; never the token")
    agent_spiffe_id: str | None
    state: str = Field(description="unused, used or expired")
    created_at: datetime
    expires_at: datetime
    used_at: datetime | None


class JoinTokenPageReply(BaseModel):
    join_tokens: list[JoinTokenReply]
    total: int
    next_cursor: str | None


class TimelineEventReply(BaseModel):
    at: datetime
    authority_id: str
    kind: str = Field(description="x509 or jwt")
    event: str = Field(description="prepared, activated, retired, tainted, revoked, expires or expired")


class TimelineReply(BaseModel):
    events: list[TimelineEventReply]


class SummaryReply(BaseModel):
    at: datetime
    svids_live: int
    svids_revoked_live: int
    svids_expiring_soon: int = Field(description="live and expiring within 24 hours")
    agents: int
    agents_banned: int
    agents_expired: int = Field(description="agents whose own SVID expired: they must attest again")
    join_tokens_unused: int
    entries: int
    entries_without_owner: int
    authorities: dict[str, int] = Field(description="'<kind> <state>' -> count")


def svid_reply(item: SvidItem) -> SvidReply:
    svid = item.certificate
    reason = svid.revocation_reason
    return SvidReply(
        serial=format(svid.serial, "x"),
        spiffe_id=str(svid.spiffe_id),
        agent_id=None if svid.agent_id is None else str(svid.agent_id),
        authority_id=svid.authority_id,
        not_before=svid.not_before,
        not_after=svid.not_after,
        issued_at=svid.issued_at,
        revoked=svid.revoked_at is not None,
        revoked_at=svid.revoked_at,
        revocation_reason=None if reason is None else _REASON_WORDS.get(reason, reason.value),
        owners=list(item.owners),
    )


def join_token_reply(token: JoinToken, now: datetime) -> JoinTokenReply:
    return JoinTokenReply(
        id=token.token_id,
        agent_spiffe_id=None if token.agent_spiffe_id is None else str(token.agent_spiffe_id),
        state=token_state(token, now).value,
        created_at=token.created_at,
        expires_at=token.expires_at,
        used_at=token.used_at,
    )


def _window(seconds: int | None) -> timedelta | None:
    return None if seconds is None else timedelta(seconds=seconds)


def _spiffe_id(text: str | None) -> SpiffeId | None:
    return None if text is None else SpiffeId.parse(text)


def add_inventory_routes(app: FastAPI, ops: InventoryOps, clock: Clock) -> None:
    """The four ``GET /v1/inventory/…`` routes."""

    @app.get("/v1/inventory/svids")
    def list_svids(query: Annotated[SvidListQuery, Query()]) -> SvidPageReply:
        page = ops.svids(query.filter(), limit=query.limit, cursor=query.cursor)
        return SvidPageReply(svids=[svid_reply(i) for i in page.items], total=page.total, next_cursor=page.next_cursor)

    @app.get("/v1/inventory/join-tokens")
    def list_join_tokens(query: Annotated[JoinTokenListQuery, Query()]) -> JoinTokenPageReply:
        page = ops.join_tokens(
            unused=query.unused,
            expiring_within=_window(query.expiring_within_seconds),
            limit=query.limit,
            cursor=query.cursor,
        )
        now = clock.now()
        return JoinTokenPageReply(
            join_tokens=[join_token_reply(t, now) for t in page.items], total=page.total, next_cursor=page.next_cursor
        )

    @app.get("/v1/inventory/authority-timeline")
    def authority_timeline() -> TimelineReply:
        return TimelineReply(
            events=[
                TimelineEventReply(at=e.at, authority_id=e.authority_id, kind=e.kind.value, event=e.event.value)
                for e in ops.timeline()
            ]
        )

    @app.get("/v1/inventory/summary")
    def summary() -> SummaryReply:
        s = ops.summary()
        return SummaryReply(
            at=s.at,
            svids_live=s.svids_live,
            svids_revoked_live=s.svids_revoked_live,
            svids_expiring_soon=s.svids_expiring_soon,
            agents=s.agents,
            agents_banned=s.agents_banned,
            agents_expired=s.agents_expired,
            join_tokens_unused=s.join_tokens_unused,
            entries=s.entries,
            entries_without_owner=s.entries_without_owner,
            authorities=dict(s.authorities),
        )
