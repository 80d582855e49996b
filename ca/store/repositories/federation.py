"""Federation relationships (DESIGN §3 "Federation"): one row per federated trust domain, holding where
its bundle comes from, its last good bundle, and the state of fetching it. Every replica reads the
bundle from here, so a restart or another replica keeps trusting what was last fetched."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ca.store.models import AUDIT_REASON_LENGTH, FederationRelationshipRow
from ca.store.records import FederationRelationship
from spiffe_core.errors import AlreadyExists, NotFound
from spiffe_core.spiffe_id import SpiffeId, TrustDomain


def _record(row: FederationRelationshipRow) -> FederationRelationship:
    return FederationRelationship(
        trust_domain=TrustDomain(row.trust_domain),
        bundle_endpoint_url=row.bundle_endpoint_url,
        profile=row.profile,
        endpoint_spiffe_id=None if row.endpoint_spiffe_id is None else SpiffeId.parse(row.endpoint_spiffe_id),
        bundle=row.bundle,
        created_at=row.created_at,
        last_attempt_at=row.last_attempt_at,
        last_success_at=row.last_success_at,
        next_refresh_at=row.next_refresh_at,
        last_error=row.last_error,
    )


class FederationRepository:
    """Federation relationships by trust domain, within the caller's unit of work."""

    def __init__(self, session: Session) -> None:
        self._session = session

    def add(self, relationship: FederationRelationship) -> FederationRelationship:
        """Store a new relationship; AlreadyExists when the trust domain has one."""
        row = FederationRelationshipRow(
            trust_domain=relationship.trust_domain.name,
            bundle_endpoint_url=relationship.bundle_endpoint_url,
            profile=relationship.profile,
            endpoint_spiffe_id=None
            if relationship.endpoint_spiffe_id is None
            else str(relationship.endpoint_spiffe_id),
            bundle=relationship.bundle,
            created_at=relationship.created_at,
            next_refresh_at=relationship.next_refresh_at,
            last_error="",
        )
        self._session.add(row)
        try:
            self._session.flush()
        except IntegrityError as err:
            raise AlreadyExists(
                f"a federation relationship with {relationship.trust_domain} exists already; delete it first "
                "to change its endpoint"
            ) from err
        return _record(row)

    def _row(self, trust_domain: TrustDomain) -> FederationRelationshipRow:
        row = self._session.get(FederationRelationshipRow, trust_domain.name, populate_existing=True)
        if row is None:
            raise NotFound(f"no federation relationship with {trust_domain}; `trustmesh-ca federation list` shows them")
        return row

    def get(self, trust_domain: TrustDomain) -> FederationRelationship:
        return _record(self._row(trust_domain))

    def list(self) -> tuple[FederationRelationship, ...]:
        """Every relationship, by trust domain."""
        rows = self._session.scalars(select(FederationRelationshipRow).order_by(FederationRelationshipRow.trust_domain))
        return tuple(_record(row) for row in rows)

    def delete(self, trust_domain: TrustDomain) -> FederationRelationship:
        row = self._row(trust_domain)
        record = _record(row)
        self._session.delete(row)
        return record

    def record_attempt(
        self,
        trust_domain: TrustDomain,
        *,
        at: datetime,
        next_refresh_at: datetime,
        bundle: str | None = None,
        error: str = "",
    ) -> FederationRelationship:
        """Note a fetch: with ``bundle`` a success (the new last good bundle), else a failure with
        ``error``; the last good bundle stays as it was on a failure."""
        row = self._row(trust_domain)
        row.last_attempt_at = at
        row.next_refresh_at = next_refresh_at
        row.last_error = error[:AUDIT_REASON_LENGTH]
        if bundle is not None:
            row.bundle = bundle
            row.last_success_at = at
        self._session.flush()
        return _record(row)
