"""One-time join tokens for node attestation (DESIGN §3 "Node attestation": ``join_token``).

Only the SHA-256 of a token is stored, so the datastore (or a backup of it) cannot be used to attest.
Consuming a token is one conditional UPDATE: of two agents presenting the same token at once, exactly
one wins. A refused token gets one message whatever the reason, so probing learns nothing.
"""

from __future__ import annotations

import hashlib
import re
from datetime import datetime

from sqlalchemy import ColumnElement, and_, delete, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ca.store.models import SHA256_HEX_LENGTH, JoinTokenRow
from ca.store.records import TOKEN_ID_LENGTH, JoinToken, JoinTokenQuery
from spiffe_core.errors import AlreadyExists, InvalidArgument, NotAuthorized
from spiffe_core.spiffe_id import SpiffeId

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


def hash_join_token(token: str) -> str:
    """The SHA-256 hex under which a join token is stored and looked up."""
    return hashlib.sha256(token.encode()).hexdigest()


def _checked(token_hash: str) -> str:
    if not _SHA256_HEX.fullmatch(token_hash):
        raise InvalidArgument(
            "join token hash is not 64 lowercase hex digits; pass hash_join_token(token), never the token"
        )
    return token_hash


def _record(row: JoinTokenRow) -> JoinToken:
    return JoinToken(
        token_hash=row.token_hash,
        expires_at=row.expires_at,
        created_at=row.created_at,
        used_at=row.used_at,
        agent_spiffe_id=None if row.agent_spiffe_id is None else SpiffeId.parse(row.agent_spiffe_id),
    )


def _matching(query: JoinTokenQuery) -> list[ColumnElement[bool]]:
    clauses: list[ColumnElement[bool]] = []
    if query.unused_at is not None:
        clauses += [JoinTokenRow.used_at.is_(None), JoinTokenRow.expires_at > query.unused_at]
    if query.expires_before is not None:
        clauses.append(JoinTokenRow.expires_at < query.expires_before)
    return clauses


class JoinTokenRepository:
    """Join tokens by hash, within the caller's unit of work."""

    def __init__(self, session: Session) -> None:
        self._session = session

    def add(
        self, token_hash: str, expires_at: datetime, now: datetime, agent_spiffe_id: SpiffeId | None = None
    ) -> JoinToken:
        """Store a new unused token, optionally with the agent ID it will attest as (chosen when the
        token is generated); :class:`AlreadyExists` if the same token was stored before."""
        row = JoinTokenRow(
            token_hash=_checked(token_hash),
            expires_at=expires_at,
            created_at=now,
            agent_spiffe_id=None if agent_spiffe_id is None else str(agent_spiffe_id),
        )
        self._session.add(row)
        try:
            self._session.flush()
        except IntegrityError as err:
            raise AlreadyExists("this join token exists already; generate a new random token") from err
        return JoinToken(token_hash=token_hash, expires_at=expires_at, created_at=now, agent_spiffe_id=agent_spiffe_id)

    def consume(self, token_hash: str, now: datetime, agent_spiffe_id: SpiffeId | None = None) -> JoinToken:
        """Mark the token used at ``now``, if it is unused and unexpired. The agent ID stored with the
        token wins; ``agent_spiffe_id`` is recorded only for a token generated without one.

        Raises :class:`NotAuthorized` otherwise, with the same message for an unknown, used or expired
        token."""
        used = self._session.execute(
            update(JoinTokenRow)
            .where(
                JoinTokenRow.token_hash == _checked(token_hash),
                JoinTokenRow.used_at.is_(None),
                JoinTokenRow.expires_at > now,
            )
            .values(
                used_at=now,
                agent_spiffe_id=func.coalesce(
                    JoinTokenRow.agent_spiffe_id, None if agent_spiffe_id is None else str(agent_spiffe_id)
                ),
            )
            .returning(JoinTokenRow.expires_at, JoinTokenRow.created_at, JoinTokenRow.agent_spiffe_id)
            .execution_options(synchronize_session="fetch")
        ).one_or_none()
        if used is None:
            raise NotAuthorized("join token unknown, used or expired; ask an operator for a new join token")
        return JoinToken(
            token_hash=token_hash,
            expires_at=used.expires_at,
            created_at=used.created_at,
            used_at=now,
            agent_spiffe_id=None if used.agent_spiffe_id is None else SpiffeId.parse(used.agent_spiffe_id),
        )

    def page(
        self, query: JoinTokenQuery, limit: int, after: tuple[datetime, str] | None = None
    ) -> tuple[JoinToken, ...]:
        """Up to ``limit`` tokens matching ``query``, soonest expiry first, after the token whose (expiry,
        :attr:`~ca.store.records.JoinToken.token_id`) is ``after`` (the cursor of the page before)."""
        row = JoinTokenRow
        statement = select(row).where(*_matching(query))
        if after is not None:
            expiry, token_id = after
            # The largest hash with that ID: every token sharing it was on the page before.
            last_hash = token_id[:TOKEN_ID_LENGTH].ljust(SHA256_HEX_LENGTH, "f")
            statement = statement.where(
                or_(row.expires_at > expiry, and_(row.expires_at == expiry, row.token_hash > last_hash))
            )
        statement = statement.order_by(row.expires_at, row.token_hash).limit(limit)
        return tuple(_record(found) for found in self._session.scalars(statement))

    def count(self, query: JoinTokenQuery) -> int:
        """How many tokens match ``query``."""
        statement = select(func.count()).select_from(JoinTokenRow).where(*_matching(query))
        return self._session.scalars(statement).one()

    def purge_expired(self, now: datetime) -> int:
        """Delete tokens expired at ``now`` (used or not); return how many went. The retention job
        (:mod:`ca.retention`) calls it with ``now`` one retention in the past."""
        purged = self._session.execute(
            delete(JoinTokenRow)
            .where(JoinTokenRow.expires_at <= now)
            .returning(JoinTokenRow.token_hash)
            .execution_options(synchronize_session="fetch")
        )
        return len(purged.all())
