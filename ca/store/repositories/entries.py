"""Stored registration entries (DESIGN §3 "Registration entries").

An entry is unique by (SPIFFE ID, parent ID, selector set): two entries that differ only in TTLs or DNS
names would make which SVID a workload gets a coin toss. Updates bump ``revision`` with a
compare-and-set, so two admins editing the same entry cannot silently overwrite each other.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Collection
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ca.store.models import RegistrationEntryRow
from ca.store.records import EntrySpec, RegistrationEntry
from spiffe_core.errors import AlreadyExists, FailedPrecondition, NotFound
from spiffe_core.selectors import Selector
from spiffe_core.spiffe_id import SpiffeId, TrustDomain


def identity_key(spec: EntrySpec) -> str:
    """SHA-256 over the canonical JSON of (SPIFFE ID, parent ID, sorted selectors): equal exactly when
    two entries would be duplicates, whatever order their selectors were given in."""
    canonical = [str(spec.spiffe_id), str(spec.parent_id), [[s.type, s.value] for s in sorted(spec.selectors)]]
    return hashlib.sha256(json.dumps(canonical, separators=(",", ":")).encode()).hexdigest()


def _columns(spec: EntrySpec) -> dict[str, Any]:
    return {
        "spiffe_id": str(spec.spiffe_id),
        "parent_id": str(spec.parent_id),
        "selectors": [[s.type, s.value] for s in sorted(spec.selectors)],
        "identity_key": identity_key(spec),
        "dns_names": list(spec.dns_names),
        "x509_ttl_seconds": None if spec.x509_ttl is None else int(spec.x509_ttl.total_seconds()),
        "jwt_ttl_seconds": None if spec.jwt_ttl is None else int(spec.jwt_ttl.total_seconds()),
        "federates_with": sorted(td.name for td in spec.federates_with),
        "admin": spec.admin,
        "hint": spec.hint,
        "owner": spec.owner,
    }


def _record(row: RegistrationEntryRow) -> RegistrationEntry:
    spec = EntrySpec(
        spiffe_id=SpiffeId.parse(row.spiffe_id),
        parent_id=SpiffeId.parse(row.parent_id),
        selectors=frozenset(Selector(kind, value) for kind, value in row.selectors),
        dns_names=tuple(row.dns_names),
        x509_ttl=None if row.x509_ttl_seconds is None else timedelta(seconds=row.x509_ttl_seconds),
        jwt_ttl=None if row.jwt_ttl_seconds is None else timedelta(seconds=row.jwt_ttl_seconds),
        federates_with=frozenset(TrustDomain(name) for name in row.federates_with),
        admin=row.admin,
        hint=row.hint,
        owner=row.owner,
    )
    return RegistrationEntry(
        id=row.id, spec=spec, created_at=row.created_at, updated_at=row.updated_at, revision=row.revision
    )


def _duplicate(spec: EntrySpec) -> AlreadyExists:
    selectors = ", ".join(str(s) for s in sorted(spec.selectors))
    return AlreadyExists(
        f"a registration entry for {spec.spiffe_id} under parent {spec.parent_id} with selectors "
        f"[{selectors}] exists already; change that entry instead of adding another"
    )


class RegistrationEntryRepository:
    """Registration entries, within the caller's unit of work."""

    def __init__(self, session: Session) -> None:
        self._session = session

    def add(self, spec: EntrySpec, now: datetime) -> RegistrationEntry:
        """Store a new entry with a fresh random ID at revision 1; :class:`AlreadyExists` for a duplicate."""
        row = RegistrationEntryRow(id=str(uuid.uuid4()), created_at=now, updated_at=now, revision=1, **_columns(spec))
        self._session.add(row)
        try:
            self._session.flush()
        except IntegrityError as err:
            raise _duplicate(spec) from err
        return _record(row)

    def get(self, entry_id: str) -> RegistrationEntry:
        row = self._session.get(RegistrationEntryRow, entry_id)
        if row is None:
            raise NotFound(f"registration entry {entry_id!r} does not exist")
        return _record(row)

    def update(
        self, entry_id: str, spec: EntrySpec, now: datetime, expected_revision: int | None = None
    ) -> RegistrationEntry:
        """Replace an entry's spec and bump its revision.

        With ``expected_revision``, refuse (:class:`FailedPrecondition`) unless the entry is still at
        that revision — the caller edited what it read, not something newer. Raises :class:`NotFound`
        and, when the new spec duplicates another entry, :class:`AlreadyExists`."""
        current = self.get(entry_id)
        if expected_revision is not None and current.revision != expected_revision:
            raise FailedPrecondition(
                f"registration entry {entry_id!r} is at revision {current.revision}, not {expected_revision}; "
                "read it again and reapply the change"
            )
        try:
            changed = self._session.execute(
                update(RegistrationEntryRow)
                .where(RegistrationEntryRow.id == entry_id, RegistrationEntryRow.revision == current.revision)
                .values(updated_at=now, revision=current.revision + 1, **_columns(spec))
                .returning(RegistrationEntryRow.id)
                .execution_options(synchronize_session="fetch")
            ).scalar_one_or_none()
        except IntegrityError as err:
            raise _duplicate(spec) from err
        if changed is None:
            raise FailedPrecondition(
                f"registration entry {entry_id!r} changed while it was being updated; read it again and retry"
            )
        return RegistrationEntry(
            id=entry_id, spec=spec, created_at=current.created_at, updated_at=now, revision=current.revision + 1
        )

    def delete(self, entry_id: str) -> None:
        removed = self._session.execute(
            delete(RegistrationEntryRow)
            .where(RegistrationEntryRow.id == entry_id)
            .returning(RegistrationEntryRow.id)
            .execution_options(synchronize_session="fetch")
        ).scalar_one_or_none()
        if removed is None:
            raise NotFound(f"registration entry {entry_id!r} does not exist")

    def list(
        self, parent_id: SpiffeId | None = None, spiffe_id: SpiffeId | None = None
    ) -> tuple[RegistrationEntry, ...]:
        """Entries, oldest first, optionally only those under ``parent_id`` and/or for ``spiffe_id``."""
        query = select(RegistrationEntryRow).order_by(RegistrationEntryRow.created_at, RegistrationEntryRow.id)
        if parent_id is not None:
            query = query.where(RegistrationEntryRow.parent_id == str(parent_id))
        if spiffe_id is not None:
            query = query.where(RegistrationEntryRow.spiffe_id == str(spiffe_id))
        return tuple(_record(row) for row in self._session.scalars(query))

    def admin_spiffe_ids(self) -> frozenset[SpiffeId]:
        """The SPIFFE IDs of entries with ``admin: true`` (what mTLS admins are checked against)."""
        query = select(RegistrationEntryRow.spiffe_id).where(RegistrationEntryRow.admin.is_(True)).distinct()
        return frozenset(SpiffeId.parse(spiffe_id) for spiffe_id in self._session.scalars(query))

    def list_for_spiffe_ids(self, spiffe_ids: Collection[SpiffeId]) -> tuple[RegistrationEntry, ...]:
        """The entries naming any of ``spiffe_ids``, oldest first, in one query."""
        if not spiffe_ids:
            return ()
        query = (
            select(RegistrationEntryRow)
            .where(RegistrationEntryRow.spiffe_id.in_(sorted(str(i) for i in spiffe_ids)))
            .order_by(RegistrationEntryRow.created_at, RegistrationEntryRow.id)
        )
        return tuple(_record(row) for row in self._session.scalars(query))
