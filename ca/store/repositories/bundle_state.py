"""The trust bundle's ``spiffe_sequence`` (SPIFFE_Trust_Domain_and_Bundle.md §4.1.1), kept in the
datastore so it grows monotonically across restarts and across CA replicas sharing one database.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from ca.store.models import TrustBundleStateRow
from ca.store.repositories._sql import upsert
from spiffe_core.spiffe_id import TrustDomain


class TrustBundleStateRepository:
    """Per trust domain bundle sequence numbers, within the caller's unit of work."""

    def __init__(self, session: Session) -> None:
        self._session = session

    def next_bundle_sequence(self, trust_domain: TrustDomain) -> int:
        """Atomically increment and return the bundle sequence of ``trust_domain`` (1 the first time).

        One ``INSERT … ON CONFLICT DO UPDATE … RETURNING``: concurrent callers each get a distinct,
        larger number, on SQLite and PostgreSQL alike."""
        statement = upsert(self._session, TrustBundleStateRow).values(trust_domain=trust_domain.name, sequence=1)
        statement = statement.on_conflict_do_update(
            index_elements=[TrustBundleStateRow.trust_domain],
            set_={"sequence": TrustBundleStateRow.sequence + 1},
        ).returning(TrustBundleStateRow.sequence)
        sequence: int = self._session.execute(statement).scalar_one()
        return sequence

    def current_bundle_sequence(self, trust_domain: TrustDomain) -> int:
        """The last sequence handed out for ``trust_domain``, 0 when none was yet."""
        query = select(TrustBundleStateRow.sequence).where(TrustBundleStateRow.trust_domain == trust_domain.name)
        return self._session.scalars(query).first() or 0
