"""x509pop nonces whose proof succeeded (:mod:`bridge.x509pop`), and agentless exchange statements that
were accepted (:mod:`bridge.exchange`), so that none is used twice on any replica. Each is known only by
its SHA-256 and kept until it expires (it is refused as expired after that anyway);
:meth:`UsedNonceRepository.delete_expired` is run by the retention task.
"""

from __future__ import annotations

import re
from datetime import datetime

from sqlalchemy import delete
from sqlalchemy.orm import Session

from ca.store.models import UsedX509PopNonceRow
from ca.store.repositories._sql import upsert
from spiffe_core.errors import InvalidArgument

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


class UsedNonceRepository:
    """Used x509pop nonces by digest, within the caller's unit of work."""

    def __init__(self, session: Session) -> None:
        self._session = session

    def spend(self, digest: str, expires_at: datetime) -> bool:
        """Record the nonce with SHA-256 ``digest`` (hex) as used until ``expires_at``: True when this
        call recorded it, False when it was recorded already. One ``INSERT … ON CONFLICT DO NOTHING`` on
        the primary key, so of two replicas spending one nonce at once exactly one gets True."""
        if not _SHA256_HEX.fullmatch(digest):
            raise InvalidArgument("nonce digest is not 64 lowercase hex digits; pass used_digest(nonce)")
        inserted = self._session.execute(
            upsert(self._session, UsedX509PopNonceRow)
            .values(digest=digest, expires_at=expires_at)
            .on_conflict_do_nothing(index_elements=["digest"])
            .returning(UsedX509PopNonceRow.digest)
        ).one_or_none()
        return inserted is not None

    def delete_expired(self, now: datetime) -> int:
        """Delete the records of nonces expired at ``now``; return how many went."""
        deleted = self._session.execute(
            delete(UsedX509PopNonceRow)
            .where(UsedX509PopNonceRow.expires_at <= now)
            .returning(UsedX509PopNonceRow.digest)
            .execution_options(synchronize_session=False)
        )
        return len(deleted.all())
