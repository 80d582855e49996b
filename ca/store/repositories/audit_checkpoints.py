"""Signed checkpoints of the audit chain's head (:mod:`ca.audit_checkpoints` signs and checks them)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from ca.store.engine import lock_for_writers
from ca.store.models import AuditCheckpointRow
from ca.store.records import AuditCheckpoint


def _checkpoint(row: AuditCheckpointRow) -> AuditCheckpoint:
    return AuditCheckpoint(
        id=row.id,
        at=row.at,
        last_id=row.last_id,
        last_hash=row.last_hash,
        authority_id=row.authority_id,
        certificate_der=row.certificate_der,
        signature=row.signature,
    )


class AuditCheckpointRepository:
    def __init__(self, session: Session) -> None:
        self._session = session

    def lock(self) -> None:
        """Serialize checkpoint writers across replicas until the transaction ends, so two replicas
        do not sign the same head."""
        lock_for_writers(self._session, "audit-checkpoint")

    def add(
        self,
        *,
        at: datetime,
        last_id: int,
        last_hash: str,
        authority_id: str,
        certificate_der: bytes,
        signature: bytes,
    ) -> AuditCheckpoint:
        row = AuditCheckpointRow(
            at=at,
            last_id=last_id,
            last_hash=last_hash,
            authority_id=authority_id,
            certificate_der=certificate_der,
            signature=signature,
        )
        self._session.add(row)
        self._session.flush()
        return _checkpoint(row)

    def newest(self) -> AuditCheckpoint | None:
        """The checkpoint covering the most records (the newest one, unless the table was tampered with)."""
        row = self._session.scalars(
            select(AuditCheckpointRow).order_by(AuditCheckpointRow.last_id.desc(), AuditCheckpointRow.id.desc())
        ).first()
        return None if row is None else _checkpoint(row)

    def list(self, *, after_id: int = 0, limit: int = 500) -> tuple[AuditCheckpoint, ...]:
        """Up to ``limit`` checkpoints with IDs above ``after_id``, oldest first."""
        query = (
            select(AuditCheckpointRow)
            .where(AuditCheckpointRow.id > after_id)
            .order_by(AuditCheckpointRow.id)
            .limit(limit)
        )
        return tuple(_checkpoint(row) for row in self._session.scalars(query))
