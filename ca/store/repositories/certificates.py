"""Records of issued X509-SVIDs, the basis of leaf revocation, CRLs (DESIGN §3 "Leaf revocation") and the
inventory (issue 11).

Issuance is the CA's hot path, so a batch of signed SVIDs is recorded with one driver ``executemany`` of
a statement compiled once (:mod:`ca.store.driver`), not through the ORM, inside an ORM unit of work or a
bare driver transaction (:func:`record_issued`). The inventory reads pages in (notAfter, serial)
order with a keyset cursor, so a page costs the same however deep into the list it is.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import datetime

from cryptography import x509
from sqlalchemy import ColumnElement, and_, delete, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ca.store._integrity import Violation, violation_of
from ca.store.driver import DriverStatement, DriverTransaction
from ca.store.models import Base, IssuedCertificateRow
from ca.store.records import CertificateQuery, IssuedCertificate
from ca.store.repositories._sql import serial_from_text, serial_to_text
from spiffe_core.errors import AlreadyExists, FailedPrecondition, NotFound
from spiffe_core.spiffe_id import SpiffeId

# The issuance hot path: compiled once per dialect, run on the driver's cursor (ca.store.driver).
_TABLE = Base.metadata.tables[IssuedCertificateRow.__tablename__]
_INSERT = DriverStatement(insert(_TABLE), _TABLE)


def record_issued(transaction: DriverTransaction, certificates: Sequence[IssuedCertificate]) -> None:
    """Record a batch of issued SVIDs in one driver ``executemany`` within ``transaction``.

    Raises :class:`AlreadyExists` when a serial is recorded already and :class:`NotFound` when a
    signing authority is not in the datastore; either way nothing of the batch is recorded once the
    transaction rolls back."""
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
            "agent_id": None if c.agent_id is None else str(c.agent_id),
        }
        for c in certificates
    ]
    try:
        transaction.executemany(_INSERT, rows)
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


def _live(now: datetime) -> ColumnElement[bool]:
    """Unexpired and not revoked at ``now``: what a relying party still accepts."""
    return and_(IssuedCertificateRow.revoked_at.is_(None), IssuedCertificateRow.not_after > now)


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
        agent_id=None if row.agent_id is None else SpiffeId.parse(row.agent_id),
    )


def _matching(query: CertificateQuery) -> list[ColumnElement[bool]]:
    """The WHERE clauses of ``query``: every given filter must match."""
    row = IssuedCertificateRow
    clauses: list[ColumnElement[bool]] = []
    if query.spiffe_id is not None:
        clauses.append(row.spiffe_id == str(query.spiffe_id))
    if query.agent_id is not None:
        clauses.append(row.agent_id == str(query.agent_id))
    if query.authority_id is not None:
        clauses.append(row.authority_id == query.authority_id)
    if query.expires_before is not None:
        clauses.append(row.not_after < query.expires_before)
    if query.unexpired_at is not None:
        clauses.append(row.not_after > query.unexpired_at)
    if query.revoked is not None:
        clauses.append(row.revoked_at.is_not(None) if query.revoked else row.revoked_at.is_(None))
    return clauses


class IssuedCertificateRepository:
    """Issued X509-SVIDs by serial, within the caller's unit of work."""

    def __init__(self, session: Session) -> None:
        self._session = session

    def add_many(self, certificates: Sequence[IssuedCertificate]) -> None:
        """:func:`record_issued` within this unit of work."""
        record_issued(DriverTransaction.of(self._session), certificates)

    def get(self, serial: int) -> IssuedCertificate:
        row = self._session.get(IssuedCertificateRow, serial_to_text(serial))
        if row is None:
            raise NotFound(f"no issued certificate has serial number {serial_to_text(serial)}")
        return _record(row)

    def page(
        self, query: CertificateQuery, limit: int, after: tuple[datetime, int] | None = None
    ) -> tuple[IssuedCertificate, ...]:
        """Up to ``limit`` certificates matching ``query``, soonest notAfter first (ties by serial), starting
        after the certificate whose (notAfter, serial) is ``after``: the keyset cursor of the page before."""
        row = IssuedCertificateRow
        statement = select(row).where(*_matching(query))
        if after is not None:
            expiry, serial = after[0], serial_to_text(after[1])
            statement = statement.where(or_(row.not_after > expiry, and_(row.not_after == expiry, row.serial > serial)))
        statement = statement.order_by(row.not_after, row.serial).limit(limit)
        return tuple(_record(found) for found in self._session.scalars(statement))

    def count(self, query: CertificateQuery) -> int:
        """How many certificates match ``query``."""
        statement = select(func.count()).select_from(IssuedCertificateRow).where(*_matching(query))
        return self._session.scalars(statement).one()

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

    def revoke_serial(self, serial: int, at: datetime, reason: x509.ReasonFlags | None) -> IssuedCertificate:
        """Revoke one certificate at ``at`` and return it as it is now.

        Raises :class:`NotFound` for an unknown serial and :class:`FailedPrecondition` when the
        certificate is revoked already (its first revocation stands), expired at ``at``, or revoked by
        another writer between the read and the write (the update only applies while it is unrevoked)."""
        current = self.get(serial)
        key = serial_to_text(serial)
        if current.revoked_at is not None:
            raise FailedPrecondition(
                f"certificate {key} of {current.spiffe_id} was revoked already at {current.revoked_at.isoformat()}; "
                "a revocation is final and keeps its first time and reason"
            )
        if current.not_after <= at:
            raise FailedPrecondition(
                f"certificate {key} of {current.spiffe_id}: nothing to revoke, it expired at "
                f"{current.not_after.isoformat()}"
            )
        changed = self._session.execute(
            update(IssuedCertificateRow)
            .where(IssuedCertificateRow.serial == key, IssuedCertificateRow.revoked_at.is_(None))
            .values(revoked_at=at, revocation_reason=None if reason is None else reason.value)
            .returning(IssuedCertificateRow.serial)
            .execution_options(synchronize_session="fetch")
        ).scalar_one_or_none()
        if changed is None:
            raise FailedPrecondition(
                f"certificate {key} of {current.spiffe_id} was revoked by another writer meanwhile; read it again"
            )
        return self.get(serial)

    def revoke_spiffe_id(
        self, spiffe_id: SpiffeId, at: datetime, reason: x509.ReasonFlags | None
    ) -> tuple[IssuedCertificate, ...]:
        """Revoke every certificate of ``spiffe_id`` that is live (unexpired, unrevoked) at ``at`` and
        return those, oldest first. None revoked is not an error here: the caller decides what it means."""
        keys = self._session.scalars(
            update(IssuedCertificateRow)
            .where(IssuedCertificateRow.spiffe_id == str(spiffe_id), _live(at))
            .values(revoked_at=at, revocation_reason=None if reason is None else reason.value)
            .returning(IssuedCertificateRow.serial)
            .execution_options(synchronize_session="fetch")
        ).all()
        if not keys:
            return ()
        query = (
            select(IssuedCertificateRow)
            .where(IssuedCertificateRow.serial.in_(keys))
            .order_by(IssuedCertificateRow.issued_at, IssuedCertificateRow.serial)
        )
        return tuple(_record(row) for row in self._session.scalars(query))

    def count_live(self, authority_id: str, now: datetime) -> int:
        """How many certificates of one authority are unexpired and unrevoked at ``now``."""
        query = (
            select(func.count())
            .select_from(IssuedCertificateRow)
            .where(IssuedCertificateRow.authority_id == authority_id, _live(now))
        )
        return self._session.scalars(query).one()

    def list_live(self, authority_id: str, now: datetime) -> tuple[IssuedCertificate, ...]:
        """The certificates of one authority that are unexpired and unrevoked at ``now``, oldest first."""
        query = (
            select(IssuedCertificateRow)
            .where(IssuedCertificateRow.authority_id == authority_id, _live(now))
            .order_by(IssuedCertificateRow.issued_at, IssuedCertificateRow.serial)
        )
        return tuple(_record(row) for row in self._session.scalars(query))

    def revoked_live(self, now: datetime) -> tuple[IssuedCertificate, ...]:
        """Revoked certificates of every authority that are still unexpired at ``now``: the entries of all
        CRLs, grouped by authority and in revocation order within one."""
        query = (
            select(IssuedCertificateRow)
            .where(IssuedCertificateRow.revoked_at.is_not(None), IssuedCertificateRow.not_after > now)
            .order_by(IssuedCertificateRow.authority_id, IssuedCertificateRow.revoked_at, IssuedCertificateRow.serial)
        )
        return tuple(_record(row) for row in self._session.scalars(query))

    def latest_expiry(self, authority_id: str) -> datetime | None:
        """The latest notAfter of everything one authority signed (revoked or not), or None when it signed
        nothing: until then, the authority's CRL must stay published."""
        query = select(func.max(IssuedCertificateRow.not_after)).where(
            IssuedCertificateRow.authority_id == authority_id
        )
        return self._session.scalars(query).one()

    def delete_expired(self, expired_before: datetime, limit: int) -> int:
        """Delete at most ``limit`` records of certificates whose notAfter is before ``expired_before``
        and return how many went. Only expired certificates qualify, so nothing a CRL lists (revoked and
        unexpired) or an authority's pruning waits for (its latest notAfter, still ahead) is touched."""
        doomed = (
            select(IssuedCertificateRow.serial)
            .where(IssuedCertificateRow.not_after < expired_before)
            .limit(limit)
            .scalar_subquery()
        )
        result = self._session.execute(
            delete(IssuedCertificateRow)
            .where(IssuedCertificateRow.serial.in_(doomed))
            .execution_options(synchronize_session=False)
        )
        return int(result.rowcount)  # type: ignore[attr-defined]
