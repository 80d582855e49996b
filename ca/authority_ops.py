"""The authority lifecycle as use cases: scheduled rotation, and what security officers do by hand
(DESIGN §3 "Authorities", "Leaf revocation").

Every operation is one transaction that first takes the trust domain's bundle-sequence row (a row
lock on PostgreSQL, the write lock on SQLite) and bumps the sequence, so replicas never make the same
change twice and a kill -9 at any point leaves either the whole change or none of it. After the commit
this process re-reads its snapshot, then wakes every agent's Sync stream; other replicas are told by
``NOTIFY`` inside the same transaction.

Every officer operation takes ``dry_run``: the same checks and counts, and nothing written. Guard rails
refuse what would break the trust domain, with the reason and what to do instead:

* revoke the active authority (activate another first, or ``rotate --now``);
* revoke one that still signed live SVIDs unless it was tainted first (agents replace them on taint);
* activate one that has not been in the bundle for a refresh hint (relying parties may not hold it);
* taint the active authority (agents would re-issue from the very authority they must leave).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TypeVar

from cryptography import x509
from sqlalchemy.orm import Session

from ca.authority import AuthorityState
from ca.authority_manager import AuthorityManager
from ca.rotation import (
    RotationParams,
    Step,
    StepKind,
    next_check,
    plan_rotation,
    published_enough_at,
)
from ca.store.engine import Database
from ca.store.records import AuthorityKind, AuthorityRecord, IssuedCertificate
from ca.store.repositories import (
    AgentRepository,
    AuthorityRepository,
    IssuedCertificateRepository,
    RegistrationEntryRepository,
    TrustBundleStateRepository,
)
from ca.sync import Change, ChangeHub, notify_replicas
from spiffe_core.backoff import LogThrottle, backoff_delay
from spiffe_core.clock import Clock
from spiffe_core.errors import FailedPrecondition, InvalidArgument, NotFound, TrustmeshError
from spiffe_core.spiffe_id import SpiffeId

log = logging.getLogger(__name__)

T = TypeVar("T")
# The rotation task re-reads the datastore at least this often (another replica may have changed it).
MAX_CHECK_INTERVAL = timedelta(seconds=10)
RETRY_BASE_SECONDS = 1.0
RETRY_CAP_SECONDS = 60.0


@dataclass(frozen=True, slots=True)
class AuthorityView:
    """A stored authority with what an officer needs to decide: how many live SVIDs it signed, until
    when, and the moments rotation will act on it."""

    record: AuthorityRecord
    live_svids: int
    signed_until: datetime | None


@dataclass(frozen=True, slots=True)
class StateChange:
    authority_id: str
    kind: AuthorityKind
    before: AuthorityState | None  # None: the authority is created
    after: AuthorityState | None  # None: the authority is removed


@dataclass(frozen=True, slots=True)
class ChangeReport:
    """What an operation changed, or with ``dry_run`` what it would change."""

    action: str
    dry_run: bool
    changes: tuple[StateChange, ...]
    # X509-SVIDs that agents must replace now (taint), or that relying parties will refuse (revoke).
    svids_affected: int = 0
    agents_affected: tuple[SpiffeId, ...] = ()
    # What the bundle publishes afterwards: X.509 authority IDs and JWT key IDs.
    bundle_x509: tuple[str, ...] = ()
    bundle_jwt: tuple[str, ...] = ()
    revoked_serials: tuple[int, ...] = ()
    notes: tuple[str, ...] = field(default=())


class AuthorityOperations:
    def __init__(
        self,
        *,
        database: Database,
        authorities: AuthorityManager,
        hub: ChangeHub,
        params: RotationParams,
        clock: Clock,
        rng: random.Random | None = None,
    ) -> None:
        self._database = database
        self._authorities = authorities
        self._hub = hub
        self._params = params
        self._clock = clock
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not secrets
        self._last_error: str | None = None
        self._throttle = LogThrottle(interval=10.0)

    @property
    def last_error(self) -> str | None:
        """Why the last scheduled rotation step failed, None after a success (for /ready)."""
        return self._last_error

    # -- reading ---------------------------------------------------------------------------------

    def list(self) -> tuple[AuthorityView, ...]:
        now = self._clock.now()
        with self._database.transaction() as session:
            certs = IssuedCertificateRepository(session)
            return tuple(
                AuthorityView(r, self._live_count(certs, r, now), self._signed_until(certs, r))
                for r in self._authorities.records(session)
            )

    def show(self, authority_id: str) -> AuthorityView:
        for view in self.list():
            if view.record.id == authority_id:
                return view
        raise NotFound(f"authority {authority_id!r} is not in the datastore; `trustmesh-ca authority list` lists them")

    def list_crls(self) -> tuple[tuple[str, bytes], ...]:
        """The published CRLs (DER) as last signed, each with the ID of the CA that signed it (its
        authority key identifier in hex): the trustmesh authorities' and the upstream roots'."""
        return tuple((_crl_issuer_id(der), der) for der in self._authorities.get_current().crls)

    def get_crl(self, authority_id: str) -> bytes:
        """The published CRL (DER) signed by ``authority_id``; raises :class:`NotFound` when none is."""
        for issuer_id, der in self.list_crls():
            if issuer_id == authority_id:
                return der
        raise NotFound(
            f"no CRL is published for authority {authority_id!r}; `trustmesh-ca crl show` lists the published ones"
        )

    # -- officer operations ------------------------------------------------------------------------

    def prepare(self, kind: AuthorityKind, *, dry_run: bool = False) -> ChangeReport:
        """Mint the next authority of ``kind`` and publish it (it signs nothing until activated)."""

        def change(session: Session, records: Sequence[AuthorityRecord]) -> ChangeReport:
            self._refuse_second_prepared(records, kind)
            if dry_run:
                return self._report(
                    "prepare", True, session, records, [StateChange("(new)", kind, None, AuthorityState.PREPARED)]
                )
            record = self._create(session, kind, AuthorityState.PREPARED, records)
            return self._report(
                "prepare",
                False,
                session,
                [*records, record],
                [StateChange(record.id, kind, None, AuthorityState.PREPARED)],
            )

        return self._run(change, dry_run)

    def activate(self, authority_id: str, *, dry_run: bool = False, force: bool = False) -> ChangeReport:
        """Make a prepared authority the one that signs; the active one is retired in the same step.
        Refused until the prepared one has been published for a refresh hint (``force`` skips that)."""

        def change(session: Session, records: Sequence[AuthorityRecord]) -> ChangeReport:
            target = _find(records, authority_id)
            if target.state is not AuthorityState.PREPARED:
                raise FailedPrecondition(
                    f"authority {authority_id} is {target.state.value}; only a prepared authority can be activated "
                    "(`trustmesh-ca authority prepare` makes one)"
                )
            now = self._clock.now()
            ready_at = published_enough_at(target, self._params)
            if not force and now < ready_at:
                raise FailedPrecondition(
                    f"authority {authority_id} has been in the bundle only since {target.created_at.isoformat()}; "
                    f"relying parties refresh every {int(self._params.refresh_hint.total_seconds())}s, so activate "
                    f"it at or after {ready_at.isoformat()} (or use `authority rotate --now` in an emergency)"
                )
            changes = [StateChange(target.id, target.kind, AuthorityState.PREPARED, AuthorityState.ACTIVE)]
            changes += [
                StateChange(r.id, r.kind, AuthorityState.ACTIVE, AuthorityState.RETIRED)
                for r in records
                if r.kind is target.kind and r.state is AuthorityState.ACTIVE
            ]
            return self._apply("activate", dry_run, session, records, changes)

        return self._run(change, dry_run)

    def taint(self, authority_id: str, *, dry_run: bool = False) -> ChangeReport:
        """Mark an authority as suspect: agents replace everything chained to it at once; it stays in
        the bundle (its SVIDs keep verifying until replaced) until revoked or pruned."""

        def change(session: Session, records: Sequence[AuthorityRecord]) -> ChangeReport:
            target = _find(records, authority_id)
            if target.state is AuthorityState.ACTIVE:
                raise FailedPrecondition(
                    f"authority {authority_id} is active: agents would re-issue from the very authority they must "
                    "leave. Activate a successor first (`authority prepare`, then `authority activate`), or run "
                    "`trustmesh-ca authority rotate --now`, which does all three"
                )
            return self._apply(
                "taint",
                dry_run,
                session,
                records,
                [StateChange(target.id, target.kind, target.state, AuthorityState.TAINTED)],
            )

        return self._run(change, dry_run)

    def revoke(self, authority_id: str, *, dry_run: bool = False) -> ChangeReport:
        """Remove an authority from the bundle: nothing it signed verifies any more."""

        def change(session: Session, records: Sequence[AuthorityRecord]) -> ChangeReport:
            target = _find(records, authority_id)
            if target.state is AuthorityState.ACTIVE:
                raise FailedPrecondition(
                    f"authority {authority_id} is active and signs every new SVID; activate another one first "
                    "(or run `trustmesh-ca authority rotate --now`), then taint and revoke this one"
                )
            live = self._live_count(IssuedCertificateRepository(session), target, self._clock.now())
            if live and target.state is not AuthorityState.TAINTED:
                raise FailedPrecondition(
                    f"authority {authority_id} signed {live} X509-SVIDs that are still valid; revoking it now would "
                    "cut those workloads off at once. Taint it first (`trustmesh-ca authority taint "
                    f"{authority_id}`): agents replace them within seconds; then revoke"
                )
            return self._apply(
                "revoke",
                dry_run,
                session,
                records,
                [StateChange(target.id, target.kind, target.state, AuthorityState.REVOKED)],
            )

        return self._run(change, dry_run)

    def rotate_now(self, kind: AuthorityKind, *, dry_run: bool = False) -> ChangeReport:
        """The emergency rotation: mint a new authority and activate it at once, and taint the active
        one, in one transaction, so agents replace every SVID the old one signed right away. Relying
        parties outside this trust domain's agents (federation) may not hold the new key yet."""

        def change(session: Session, records: Sequence[AuthorityRecord]) -> ChangeReport:
            old = [r for r in records if r.kind is kind and r.state is AuthorityState.ACTIVE]
            changes = [StateChange(r.id, kind, AuthorityState.ACTIVE, AuthorityState.TAINTED) for r in old]
            if dry_run:
                new = [StateChange("(new)", kind, None, AuthorityState.ACTIVE)]
                return self._report("rotate", True, session, records, [*new, *changes])
            record = self._create(session, kind, AuthorityState.ACTIVE)
            report = self._apply("rotate", False, session, [*records, record], changes)
            return _with_change(report, StateChange(record.id, kind, None, AuthorityState.ACTIVE))

        return self._run(change, dry_run)

    def revoke_svids(
        self,
        *,
        serial: int | None = None,
        spiffe_id: SpiffeId | None = None,
        reason: x509.ReasonFlags | None = None,
        dry_run: bool = False,
    ) -> ChangeReport:
        """Revoke one X509-SVID by serial, or every live one of a SPIFFE ID. The CRLs are re-signed and
        pushed at once; agents drop the revoked SVIDs and fetch new ones."""
        if (serial is None) == (spiffe_id is None):
            raise InvalidArgument("name exactly one of a serial number or a SPIFFE ID to revoke")

        def change(session: Session, records: Sequence[AuthorityRecord]) -> ChangeReport:
            certs = IssuedCertificateRepository(session)
            now = self._clock.now()
            revoked: Sequence[IssuedCertificate]
            if serial is not None:
                revoked = [certs.revoke_serial(serial, now, reason)]  # rolled back for a dry run
            else:
                assert spiffe_id is not None
                revoked = self._revoke_id(certs, spiffe_id, now, reason)
            report = self._report("revoke-svid", dry_run, session, records, [])
            agents = self._agents_for(session, revoked)
            return ChangeReport(
                report.action,
                dry_run,
                (),
                len(revoked),
                agents,
                report.bundle_x509,
                report.bundle_jwt,
                tuple(c.serial for c in revoked),
            )

        return self._run(change, dry_run)

    # -- scheduled rotation --------------------------------------------------------------------------

    def tick(self) -> datetime | None:
        """Apply every rotation step due now (each in its own transaction); re-sign the CRLs when due.
        Returns when to look again."""
        now = self._clock.now()
        records, signed_until = self._rotation_view()
        for step in plan_rotation(records, signed_until, now, self._params):
            self._apply_step(step)
        refresh_at = self._authorities.crls_refresh_at
        if refresh_at is not None and self._clock.now() >= refresh_at:
            self._authorities.refresh()
        records, signed_until = self._rotation_view()
        now = self._clock.now()
        moments = [
            m for m in (next_check(records, signed_until, now, self._params), self._authorities.crls_refresh_at) if m
        ]
        return min(moments) if moments else None

    async def run(self) -> None:
        """Keep authorities rotating until cancelled. Failures (upstream or datastore down) are retried
        with exponential backoff capped at a minute, logged at most every 10 s, and reported by /ready
        (through :attr:`last_error`) while nothing usable is active."""
        failures = 0
        while True:
            try:
                next_at = await asyncio.to_thread(self.tick)
            except Exception as err:
                failures += 1
                self._last_error = str(err) if isinstance(err, TrustmeshError) else f"internal error: {err!r}"
                delay = backoff_delay(failures, self._rng, RETRY_BASE_SECONDS, RETRY_CAP_SECONDS)
                if self._throttle.should_log(time.monotonic()):
                    log.warning(
                        "authority rotation failed: %s; retrying in %.1fs%s",
                        err,
                        delay,
                        self._throttle.note(),
                        exc_info=not isinstance(err, TrustmeshError),  # a bug: keep its trace
                    )
            else:
                failures = 0
                self._last_error = None
                now = self._clock.now()
                delay = MAX_CHECK_INTERVAL.total_seconds()
                if next_at is not None:
                    delay = min(delay, max((next_at - now).total_seconds(), 0.0) + 0.05)
            await asyncio.sleep(delay)

    def reload_quietly(self) -> None:
        """Re-read the snapshot after another replica's change; a datastore hiccup is logged, not raised
        (the rotation task re-reads it within seconds anyway)."""
        try:
            self._authorities.refresh()
        except TrustmeshError as err:
            log.warning("could not reload authorities after another replica's change: %s", err)

    def _apply_step(self, step: Step) -> None:
        def change(session: Session, records: Sequence[AuthorityRecord]) -> ChangeReport | None:
            # Planned again under the lock: another replica may have done it already.
            current, signed_until = self._rotation_view_in(session)
            if step not in plan_rotation(current, signed_until, self._clock.now(), self._params):
                return None
            if step.kind is StepKind.PREPARE:
                record = self._create(session, step.authority_kind, AuthorityState.PREPARED, records)
                log.info(
                    "prepared %s authority %s (%s); published in the bundle now",
                    step.authority_kind,
                    record.id,
                    step.why,
                )
                return None
            if step.kind is StepKind.RECOVER:
                stale = [
                    StateChange(r.id, r.kind, AuthorityState.ACTIVE, AuthorityState.RETIRED)
                    for r in records
                    if r.kind is step.authority_kind and r.state is AuthorityState.ACTIVE
                ]
                self._set_states(session, stale)
                record = self._create(session, step.authority_kind, AuthorityState.ACTIVE)
                log.warning("activated a new %s authority %s at once (%s)", step.authority_kind, record.id, step.why)
                return None
            assert step.authority_id is not None
            if step.kind is StepKind.ACTIVATE:
                changes = [
                    StateChange(step.authority_id, step.authority_kind, AuthorityState.PREPARED, AuthorityState.ACTIVE)
                ]
                changes += [
                    StateChange(r.id, r.kind, AuthorityState.ACTIVE, AuthorityState.RETIRED)
                    for r in records
                    if r.kind is step.authority_kind and r.state is AuthorityState.ACTIVE
                ]
                self._set_states(session, changes)
                log.info("activated %s authority %s (%s)", step.authority_kind, step.authority_id, step.why)
                return None
            record = _find(records, step.authority_id)
            AuthorityRepository(session).delete(step.authority_id)
            session.info.setdefault("pruned_keys", []).append(record.key_ref)
            log.info("pruned %s authority %s (%s)", step.authority_kind, step.authority_id, step.why)
            return None

        self._run(change, dry_run=False)

    # -- plumbing ------------------------------------------------------------------------------------

    def _run(self, change: Callable[[Session, Sequence[AuthorityRecord]], T], dry_run: bool) -> T:
        """Run ``change`` in one locked transaction; on a real change, reload and wake every agent.
        A dry run makes the very same changes and rolls them back, so its checks and counts are the
        real operation's."""
        try:
            with self._database.transaction() as session:
                TrustBundleStateRepository(session).next_bundle_sequence(self._authorities.params.trust_domain)
                result = change(session, self._authorities.records(session))
                if dry_run:
                    raise _DryRun(result)
                notify_replicas(session, self._hub, Change.everyone())
                pruned = list(session.info.get("pruned_keys", ()))
        except _DryRun as rolled_back:
            return rolled_back.result  # type: ignore[return-value]
        for key_ref in pruned:
            self._authorities.delete_key(key_ref)
        self._authorities.refresh()
        self._hub.notify(Change.everyone())
        return result

    def _create(
        self, session: Session, kind: AuthorityKind, state: AuthorityState, records: Sequence[AuthorityRecord] = ()
    ) -> AuthorityRecord:
        if kind is AuthorityKind.JWT:
            return self._authorities.create_jwt(session, state)
        active = [r.not_after for r in records if r.kind is kind and r.state is AuthorityState.ACTIVE]
        return self._authorities.create_x509(session, state, must_outlive=max(active) if active else None)

    def _apply(
        self,
        action: str,
        dry_run: bool,
        session: Session,
        records: Sequence[AuthorityRecord],
        changes: Sequence[StateChange],
    ) -> ChangeReport:
        report = self._report(action, dry_run, session, records, changes)
        self._set_states(session, changes)  # rolled back for a dry run, after the same checks
        return report

    def _set_states(self, session: Session, changes: Sequence[StateChange]) -> None:
        repo = AuthorityRepository(session)
        now = self._clock.now()
        for item in changes:
            assert item.after is not None
            repo.set_state(item.authority_id, item.after, now)

    def _report(
        self,
        action: str,
        dry_run: bool,
        session: Session,
        records: Sequence[AuthorityRecord],
        changes: Sequence[StateChange],
    ) -> ChangeReport:
        after = {r.id: r.state for r in records}
        after.update({c.authority_id: c.after for c in changes if c.after is not None and c.authority_id in after})
        now = self._clock.now()
        certs = IssuedCertificateRepository(session)
        affected: list[IssuedCertificate] = []
        for item in changes:
            if item.kind is AuthorityKind.X509 and item.after in (AuthorityState.TAINTED, AuthorityState.REVOKED):
                affected += certs.list_live(item.authority_id, now)
        published = [r for r in records if after[r.id] is not AuthorityState.REVOKED]
        new = [c for c in changes if c.authority_id not in after]
        return ChangeReport(
            action,
            dry_run,
            tuple(changes),
            len(affected),
            self._agents_for(session, affected),
            tuple(r.id for r in published if r.kind is AuthorityKind.X509)
            + tuple("(new)" for c in new if c.kind is AuthorityKind.X509),
            tuple(r.id for r in published if r.kind is AuthorityKind.JWT)
            + tuple("(new)" for c in new if c.kind is AuthorityKind.JWT),
        )

    def _agents_for(self, session: Session, certs: Sequence[IssuedCertificate]) -> tuple[SpiffeId, ...]:
        """Agents that must fetch new SVIDs: those holding one of ``certs`` as their own SVID, and the
        parents of the registration entries those SVIDs were issued for."""
        if not certs:
            return ()
        serials = {c.serial for c in certs}
        ids = {c.spiffe_id for c in certs}
        agents = {a.spiffe_id for a in AgentRepository(session).list() if a.serial in serials}
        agents |= {e.spec.parent_id for e in RegistrationEntryRepository(session).list() if e.spec.spiffe_id in ids}
        known = {a.spiffe_id for a in AgentRepository(session).list()}
        return tuple(sorted(agents & known, key=str))

    def _rotation_view(self) -> tuple[Sequence[AuthorityRecord], dict[str, datetime | None]]:
        with self._database.transaction() as session:
            return self._rotation_view_in(session)

    def _rotation_view_in(self, session: Session) -> tuple[Sequence[AuthorityRecord], dict[str, datetime | None]]:
        records = self._authorities.records(session)
        certs = IssuedCertificateRepository(session)
        return records, {r.id: certs.latest_expiry(r.id) for r in records if r.kind is AuthorityKind.X509}

    @staticmethod
    def _live_count(certs: IssuedCertificateRepository, record: AuthorityRecord, now: datetime) -> int:
        return certs.count_live(record.id, now) if record.kind is AuthorityKind.X509 else 0

    @staticmethod
    def _signed_until(certs: IssuedCertificateRepository, record: AuthorityRecord) -> datetime | None:
        return certs.latest_expiry(record.id) if record.kind is AuthorityKind.X509 else None

    @staticmethod
    def _refuse_second_prepared(records: Sequence[AuthorityRecord], kind: AuthorityKind) -> None:
        prepared = [r for r in records if r.kind is kind and r.state is AuthorityState.PREPARED]
        if prepared:
            raise FailedPrecondition(
                f"authority {prepared[0].id} is prepared already; activate it (`trustmesh-ca authority activate "
                f"{prepared[0].id}`) or taint it before preparing another"
            )

    @staticmethod
    def _revoke_id(
        certs: IssuedCertificateRepository,
        spiffe_id: SpiffeId,
        now: datetime,
        reason: x509.ReasonFlags | None,
    ) -> Sequence[IssuedCertificate]:
        revoked = list(certs.revoke_spiffe_id(spiffe_id, now, reason))  # rolled back for a dry run
        if not revoked:
            raise NotFound(f"{spiffe_id} holds no X509-SVID that is valid and not revoked; nothing to revoke")
        return revoked


class _DryRun(Exception):
    def __init__(self, result: object) -> None:
        super().__init__("dry run")
        self.result = result


def _find(records: Sequence[AuthorityRecord], authority_id: str) -> AuthorityRecord:
    for record in records:
        if record.id == authority_id:
            return record
    raise NotFound(f"authority {authority_id!r} is not in the datastore; `trustmesh-ca authority list` lists them")


def _crl_issuer_id(der: bytes) -> str:
    """The hex authority key identifier of a CRL we signed (``ca.crl.build_crl`` always sets it)."""
    aki = x509.load_der_x509_crl(der).extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    return (aki.key_identifier or b"").hex()


def _with_change(report: ChangeReport, extra: StateChange) -> ChangeReport:
    return ChangeReport(
        report.action,
        report.dry_run,
        (extra, *report.changes),
        report.svids_affected,
        report.agents_affected,
        report.bundle_x509,
        report.bundle_jwt,
        report.revoked_serials,
        report.notes,
    )
