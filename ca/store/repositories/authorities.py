"""Stored authorities and the lifecycle they move through (DESIGN §3 "Authorities").

prepared → active → retired → removed; any authority not yet revoked can be tainted; tainted and
retired ones can be revoked. :func:`check_transition` is that rule as a pure function; the repository
applies it with a compare-and-set on the current state, so when two CA replicas race to make the same
change, exactly one succeeds and the other gets :class:`FailedPrecondition`.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ca.authority import AuthorityState
from ca.store.models import AuthorityRow
from ca.store.records import AuthorityKind, AuthorityRecord
from spiffe_core.errors import AlreadyExists, FailedPrecondition, NotFound
from spiffe_core.keys import KeyType
from spiffe_core.spiffe_id import TrustDomain

_S = AuthorityState
ALLOWED_TRANSITIONS: dict[AuthorityState, frozenset[AuthorityState]] = {
    _S.PREPARED: frozenset({_S.ACTIVE, _S.TAINTED}),
    _S.ACTIVE: frozenset({_S.RETIRED, _S.TAINTED}),
    _S.RETIRED: frozenset({_S.TAINTED, _S.REVOKED}),
    _S.TAINTED: frozenset({_S.REVOKED}),
    _S.REVOKED: frozenset(),
}

# The timestamp column each state change records.
_STAMP = {_S.ACTIVE: "activated_at", _S.RETIRED: "retired_at", _S.TAINTED: "tainted_at", _S.REVOKED: "revoked_at"}


def check_transition(authority_id: str, current: AuthorityState, new: AuthorityState) -> None:
    """Raise :class:`FailedPrecondition` unless an authority in ``current`` may move to ``new``."""
    allowed = ALLOWED_TRANSITIONS[current]
    if new not in allowed:
        options = ", ".join(sorted(s.value for s in allowed)) or "nothing (it can only be removed)"
        raise FailedPrecondition(
            f"authority {authority_id!r} is {current.value} and cannot become {new.value}; from "
            f"{current.value} it can become: {options}"
        )


def check_removal(authority_id: str, current: AuthorityState) -> None:
    """An active authority is what signs right now; removing it would leave nothing to sign with."""
    if current is AuthorityState.ACTIVE:
        raise FailedPrecondition(
            f"authority {authority_id!r} is active; retire it (or taint and revoke it) before removing it"
        )


def _record(row: AuthorityRow) -> AuthorityRecord:
    return AuthorityRecord(
        id=row.id,
        kind=AuthorityKind(row.kind),
        trust_domain=TrustDomain(row.trust_domain),
        state=AuthorityState(row.state),
        key_type=KeyType(row.key_type),
        key_ref=row.key_ref,
        public_key_der=row.public_key_der,
        not_before=row.not_before,
        not_after=row.not_after,
        created_at=row.created_at,
        certificate_der=row.certificate_der,
        upstream_chain_pem=row.upstream_chain_pem,
        activated_at=row.activated_at,
        retired_at=row.retired_at,
        tainted_at=row.tainted_at,
        revoked_at=row.revoked_at,
    )


class AuthorityRepository:
    """Authorities of the trust domain, within the caller's unit of work."""

    def __init__(self, session: Session) -> None:
        self._session = session

    def add(self, authority: AuthorityRecord) -> None:
        """Record a new authority; :class:`AlreadyExists` when its ID (SKI or kid) is taken."""
        self._session.add(
            AuthorityRow(
                id=authority.id,
                kind=authority.kind.value,
                trust_domain=authority.trust_domain.name,
                state=authority.state.value,
                key_type=authority.key_type.value,
                key_ref=authority.key_ref,
                public_key_der=authority.public_key_der,
                certificate_der=authority.certificate_der,
                upstream_chain_pem=authority.upstream_chain_pem,
                not_before=authority.not_before,
                not_after=authority.not_after,
                created_at=authority.created_at,
                activated_at=authority.activated_at,
                retired_at=authority.retired_at,
                tainted_at=authority.tainted_at,
                revoked_at=authority.revoked_at,
            )
        )
        try:
            self._session.flush()
        except IntegrityError as err:
            raise AlreadyExists(
                f"authority {authority.id!r} exists already; authority IDs are the key's SKI or kid — "
                "generate a new key for a new authority"
            ) from err

    def get(self, authority_id: str) -> AuthorityRecord:
        row = self._session.get(AuthorityRow, authority_id, populate_existing=True)
        if row is None:
            raise NotFound(f"authority {authority_id!r} is not in the datastore")
        return _record(row)

    def list(
        self, kind: AuthorityKind | None = None, states: Collection[AuthorityState] | None = None
    ) -> tuple[AuthorityRecord, ...]:
        """Authorities, oldest first, optionally only of one kind and of the given states."""
        query = select(AuthorityRow).order_by(AuthorityRow.created_at, AuthorityRow.id)
        if kind is not None:
            query = query.where(AuthorityRow.kind == kind.value)
        if states is not None:
            query = query.where(AuthorityRow.state.in_([s.value for s in states]))
        return tuple(_record(row) for row in self._session.scalars(query))

    def set_state(self, authority_id: str, state: AuthorityState, at: datetime) -> AuthorityRecord:
        """Move an authority to ``state`` at ``at`` and return it as it is now.

        Raises :class:`NotFound`, or :class:`FailedPrecondition` for a transition the lifecycle does not
        allow or when another writer changed the authority's state first."""
        current = self.get(authority_id)
        check_transition(authority_id, current.state, state)
        stamp = _STAMP[state]
        changed = self._session.execute(
            update(AuthorityRow)
            .where(AuthorityRow.id == authority_id, AuthorityRow.state == current.state.value)
            .values({"state": state.value, stamp: at})
            .returning(AuthorityRow.id)
            .execution_options(synchronize_session="fetch")
        ).scalar_one_or_none()
        if changed is None:
            raise FailedPrecondition(
                f"authority {authority_id!r} changed state while it was being made {state.value}; "
                "read it again and retry"
            )
        return self.get(authority_id)

    def delete(self, authority_id: str) -> None:
        """Remove an authority that no longer signs (and the issuance records of what it signed)."""
        current = self.get(authority_id)
        check_removal(authority_id, current.state)
        removed = self._session.execute(
            delete(AuthorityRow)
            .where(AuthorityRow.id == authority_id, AuthorityRow.state == current.state.value)
            .returning(AuthorityRow.id)
            .execution_options(synchronize_session="fetch")
        ).scalar_one_or_none()
        if removed is None:
            raise FailedPrecondition(
                f"authority {authority_id!r} changed state while it was being removed; read it again and retry"
            )
