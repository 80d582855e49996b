"""Legacy identity mapping rules (DESIGN §5), by name. Checking a rule and its overlaps with the others
is the domain's job (:mod:`ca.mappings`); this module only stores and reads."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from bridge.mapping import MappingRule, rule_from_dict
from ca.store.models import IdentityMappingRow
from ca.store.records import StoredMapping
from spiffe_core.errors import AlreadyExists, NotFound


def _record(row: IdentityMappingRow) -> StoredMapping:
    return StoredMapping(rule_from_dict(row.rule), row.created_at, row.updated_at)


class IdentityMappingRepository:
    """Mapping rules within the caller's unit of work."""

    def __init__(self, session: Session) -> None:
        self._session = session

    def list(self) -> tuple[StoredMapping, ...]:
        rows = self._session.scalars(select(IdentityMappingRow).order_by(IdentityMappingRow.name))
        return tuple(_record(row) for row in rows)

    def get(self, name: str) -> StoredMapping:
        row = self._session.get(IdentityMappingRow, name)
        if row is None:
            raise NotFound(f"no mapping rule named {name!r}; `trustmesh-ca mapping list` shows them")
        return _record(row)

    def add(self, rule: MappingRule, now: datetime) -> StoredMapping:
        self._session.add(IdentityMappingRow(name=rule.name, rule=rule.to_dict(), created_at=now, updated_at=now))
        try:
            self._session.flush()
        except IntegrityError as err:
            raise AlreadyExists(
                f"a mapping rule named {rule.name!r} exists already; delete it or pick another name"
            ) from err
        return StoredMapping(rule, now, now)

    def delete(self, name: str) -> StoredMapping:
        stored = self.get(name)
        self._session.execute(delete(IdentityMappingRow).where(IdentityMappingRow.name == name))
        return stored

    def delete_all(self) -> int:
        return len(self._session.execute(delete(IdentityMappingRow).returning(IdentityMappingRow.name)).all())
