"""Records of issued X509-SVIDs, the basis of leaf revocation and CRLs (DESIGN §3 "Leaf revocation").

Issuance is the CA's hot path, so a batch of signed SVIDs is recorded with one multi-row insert.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import datetime

from cryptography import x509
from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ca.store._integrity import Violation, violation_of
from ca.store.models import IssuedCertificateRow
from ca.store.records import IssuedCertificate
from ca.store.repositories._sql import serial_from_text, serial_to_text
from spiffe_core.errors import AlreadyExists, NotFound
from spiffe_core.spiffe_id import SpiffeId


def _record(row: IssuedCertificateRow) -> IssuedCertificate:
    return IssuedCertificate(
        serial=serial_from_text(row.serial),
        spiffe_id=SpiffeId.parse(row.spiffe_id),
        authority_id=row.authority_id,
        not_before=row.not_before,
        not_after=row.not_after,
        issued_at=row.issued_at,
        revoked_at=row.revoked_at,
        revocation_reason=None if row.revocation_reason is None else x509.ReasonFlags(row.revocation_reason),
    )


class IssuedCertificateRepository:
    """Issued X509-SVIDs by serial, within the caller's unit of work."""

    def __init__(self, session: Session) -> None:
        self._session = session

    def add_many(self, certificates: Sequence[IssuedCertificate]) -> None:
        """Record a batch of issued SVIDs in one statement.

        Raises :class:`AlreadyExists` when a serial is recorded already and :class:`NotFound` when a
        signing authority is not in the datastore; either way nothing of the batch is recorded once
        the unit of work rolls back."""
        if not certificates:
            return
        rows = [
            {
                "serial": serial_to_text(c.serial),
                "spiffe_id": str(c.spiffe_id),
                "authority_id": c.authority_id,
                "not_before": c.not_before,
                "not_after": c.not_after,
                "issued_at": c.issued_at,
                "revoked_at": c.revoked_at,
                "revocation_reason": None if c.revocation_reason is None else c.revocation_reason.value,
            }
            for c in certificates
        ]
        try:
            self._session.execute(insert(IssuedCertificateRow), rows)
        except IntegrityError as err:
            if violation_of(err) is Violation.FOREIGN_KEY:
                authorities = ", ".join(sorted({repr(c.authority_id) for c in certificates}))
                raise NotFound(
                    f"a signing authority of this batch ({authorities}) is not in the datastore; record "
                    "the authority before the certificates it signs"
                ) from err
            raise AlreadyExists(
                f"a serial number in this batch of {len(certificates)} certificates is recorded already; "
                "serial numbers must be unique — sign again with fresh random serials"
            ) from err

    def get(self, serial: int) -> IssuedCertificate:
        row = self._session.get(IssuedCertificateRow, serial_to_text(serial))
        if row is None:
            raise NotFound(f"no issued certificate has serial number {serial_to_text(serial)}")
        return _record(row)

    def list_by_spiffe_id(self, spiffe_id: SpiffeId) -> tuple[IssuedCertificate, ...]:
        """Every recorded SVID of ``spiffe_id``, oldest first (to revoke an identity's SVIDs)."""
        query = (
            select(IssuedCertificateRow)
            .where(IssuedCertificateRow.spiffe_id == str(spiffe_id))
            .order_by(IssuedCertificateRow.issued_at, IssuedCertificateRow.serial)
        )
        return tuple(_record(row) for row in self._session.scalars(query))

    def mark_revoked(
        self, serials: Collection[int], at: datetime, reason: x509.ReasonFlags
    ) -> tuple[IssuedCertificate, ...]:
        """Revoke the certificates with these serials and return them as they are now.

        A certificate revoked before keeps its first revocation time and reason (revoking again changes
        nothing a CRL already said). Raises :class:`NotFound` naming every unknown serial, and then
        revokes none."""
        keys = sorted({serial_to_text(s) for s in serials})
        if not keys:
            return ()
        known = set(
            self._session.scalars(select(IssuedCertificateRow.serial).where(IssuedCertificateRow.serial.in_(keys)))
        )
        missing = [k for k in keys if k not in known]
        if missing:
            raise NotFound(f"no issued certificate has serial number {', '.join(missing)}; nothing was revoked")
        self._session.execute(
            update(IssuedCertificateRow)
            .where(IssuedCertificateRow.serial.in_(keys), IssuedCertificateRow.revoked_at.is_(None))
            .values(revoked_at=at, revocation_reason=reason.value)
            .execution_options(synchronize_session="fetch")
        )
        query = select(IssuedCertificateRow).where(IssuedCertificateRow.serial.in_(keys))
        return tuple(_record(row) for row in self._session.scalars(query.order_by(IssuedCertificateRow.serial)))

    def list_revoked(self, authority_id: str, not_expired_at: datetime) -> tuple[IssuedCertificate, ...]:
        """Revoked certificates of one authority that are still unexpired at ``not_expired_at``: the
        entries of that authority's CRL (expired ones need no listing: nobody accepts them anyway)."""
        query = (
            select(IssuedCertificateRow)
            .where(
                IssuedCertificateRow.authority_id == authority_id,
                IssuedCertificateRow.revoked_at.is_not(None),
                IssuedCertificateRow.not_after > not_expired_at,
            )
            .order_by(IssuedCertificateRow.revoked_at, IssuedCertificateRow.serial)
        )
        return tuple(_record(row) for row in self._session.scalars(query))
