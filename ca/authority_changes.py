"""One change of the trust domain's authorities as one unit of work, shared by the officer operations
(:mod:`ca.authority_ops`) and the scheduled rotation (:mod:`ca.rotator`).

Each change runs in one transaction that first takes the trust domain's bundle-sequence row (a row
lock on PostgreSQL, the write lock on SQLite) and bumps the sequence, so replicas never make the same
change twice and a kill -9 at any point leaves either the whole change or none of it. After the commit
this process re-reads its snapshot, then wakes every agent's Sync stream; other replicas are told by
``NOTIFY`` inside the same transaction. A dry run makes the very same changes and rolls them back.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar

from sqlalchemy.orm import Session

from ca.authority import AuthorityState
from ca.authority_manager import AuthorityManager
from ca.store.engine import Database
from ca.store.records import AuthorityKind, AuthorityRecord
from ca.store.repositories import AuthorityRepository, IssuedCertificateRepository, TrustBundleStateRepository
from ca.sync import Change, ChangeHub, notify_replicas
from spiffe_core.clock import Clock
from spiffe_core.errors import NotFound

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class StateChange:
    authority_id: str
    kind: AuthorityKind
    before: AuthorityState | None  # None: the authority is created
    after: AuthorityState | None  # None: the authority is removed


class AuthorityChanges:
    def __init__(self, *, database: Database, authorities: AuthorityManager, hub: ChangeHub, clock: Clock) -> None:
        self.database = database
        self.authorities = authorities
        self._hub = hub
        self._clock = clock

    def run(self, change: Callable[[Session, Sequence[AuthorityRecord]], T], *, dry_run: bool = False) -> T:
        """Run ``change(session, records)`` in one locked transaction; on a real change, reload the
        snapshot and wake every agent. A dry run raises nothing of its own and writes nothing."""
        try:
            with self.database.transaction() as session:
                TrustBundleStateRepository(session).next_bundle_sequence(self.authorities.params.trust_domain)
                result = change(session, self.authorities.records(session))
                if dry_run:
                    raise _DryRun(result)
                notify_replicas(session, self._hub, Change.everyone())
                pruned = list(session.info.get("pruned_keys", ()))
        except _DryRun as rolled_back:
            return rolled_back.result  # type: ignore[return-value]
        for key_ref in pruned:
            self.authorities.delete_key(key_ref)
        self.authorities.refresh()
        self._hub.notify(Change.everyone())
        return result

    def create(
        self, session: Session, kind: AuthorityKind, state: AuthorityState, records: Sequence[AuthorityRecord] = ()
    ) -> AuthorityRecord:
        """A new authority of ``kind`` in ``state``; an X.509 successor must outlive the active one."""
        if kind is AuthorityKind.JWT:
            return self.authorities.create_jwt(session, state)
        active = [r.not_after for r in records if r.kind is kind and r.state is AuthorityState.ACTIVE]
        return self.authorities.create_x509(session, state, must_outlive=max(active) if active else None)

    def set_states(self, session: Session, changes: Sequence[StateChange]) -> None:
        repo = AuthorityRepository(session)
        now = self._clock.now()
        for item in changes:
            assert item.after is not None
            repo.set_state(item.authority_id, item.after, now)

    @staticmethod
    def prune(session: Session, record: AuthorityRecord) -> None:
        """Remove an authority (and its issuance records); its key is deleted after the commit."""
        AuthorityRepository(session).delete(record.id)
        session.info.setdefault("pruned_keys", []).append(record.key_ref)

    def rotation_view(
        self, session: Session | None = None
    ) -> tuple[Sequence[AuthorityRecord], dict[str, datetime | None]]:
        """The stored authorities and, per X.509 authority, when the last SVID it signed expires."""
        if session is None:
            with self.database.transaction() as own:
                return self.rotation_view(own)
        records = self.authorities.records(session)
        certs = IssuedCertificateRepository(session)
        return records, {r.id: certs.latest_expiry(r.id) for r in records if r.kind is AuthorityKind.X509}


def find(records: Sequence[AuthorityRecord], authority_id: str) -> AuthorityRecord:
    for record in records:
        if record.id == authority_id:
            return record
    raise NotFound(f"authority {authority_id!r} is not in the datastore; `trustmesh-ca authority list` lists them")


def retire_active(records: Sequence[AuthorityRecord], kind: AuthorityKind) -> list[StateChange]:
    """The state changes that retire the active authority of ``kind`` (its successor takes over)."""
    return [
        StateChange(r.id, r.kind, AuthorityState.ACTIVE, AuthorityState.RETIRED)
        for r in records
        if r.kind is kind and r.state is AuthorityState.ACTIVE
    ]


class _DryRun(Exception):
    def __init__(self, result: object) -> None:
        super().__init__("dry run")
        self.result = result
