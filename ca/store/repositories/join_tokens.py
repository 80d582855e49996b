"""One-time join tokens for node attestation (DESIGN §3 "Node attestation": ``join_token``).

Only the SHA-256 of a token is stored, so the datastore (or a backup of it) cannot be used to attest.
Consuming a token is one conditional UPDATE: of two agents presenting the same token at once, exactly
one wins. A refused token gets one message whatever the reason, so probing learns nothing.
"""

from __future__ import annotations

import hashlib
import re
from datetime import datetime

from sqlalchemy import delete, func, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ca.store.models import JoinTokenRow
from ca.store.records import JoinToken
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

    def purge_expired(self, now: datetime) -> int:
        """Delete tokens expired at ``now`` (used or not); return how many went."""
        purged = self._session.execute(
            delete(JoinTokenRow)
            .where(JoinTokenRow.expires_at <= now)
            .returning(JoinTokenRow.token_hash)
            .execution_options(synchronize_session="fetch")
        )
        return len(purged.all())
