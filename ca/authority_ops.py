"""What security officers do by hand with the trust domain's authorities (DESIGN §3 "Authorities",
"Leaf revocation"): list, prepare, activate, taint, revoke, the emergency ``rotate --now``, and leaf
revocation. Each is one change (:class:`~ca.authority_changes.AuthorityChanges`: one locked
transaction, then reload and push); scheduled rotation is :mod:`ca.rotator`.

Every operation takes ``dry_run``: the same checks and counts, and nothing written. Every operation is
audited with the officer who asked (``actor``): a change in its own transaction; a dry run after its
rollback (marked ``dry_run``: an auditor sees what an officer tried); a refusal with its reason. Guard
rails refuse what would break the trust domain, with the reason and what to do instead:

* revoke the active authority (activate another first, or ``rotate --now``);
* revoke one that still signed live SVIDs unless it was tainted first (agents replace them on taint);
* activate one that has not been in the bundle for two refresh hints (relying parties may not hold it);
* taint the active authority (agents would re-issue from the very authority they must leave).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from cryptography import x509
from sqlalchemy.orm import Session

from ca.audit import OK, AuditTrail, listed, refusal_event
from ca.authority import AuthorityState
from ca.authority_changes import AuthorityChanges, StateChange, find, retire_active
from ca.metrics import OFFICER, RotationMetrics
from ca.rotation import PUBLISH_HINTS, RotationParams, published_enough_at
from ca.store.records import Actor, AuditEvent, AuthorityKind, AuthorityRecord, IssuedCertificate, JsonValue
from ca.store.repositories import (
    AgentRepository,
    AuditLogRepository,
    IssuedCertificateRepository,
    RegistrationEntryRepository,
)
from spiffe_core.clock import Clock
from spiffe_core.errors import FailedPrecondition, InvalidArgument, NotFound, TrustmeshError
from spiffe_core.spiffe_id import SpiffeId

__all__ = ["AuthorityOperations", "AuthorityView", "ChangeReport", "StateChange"]


@dataclass(frozen=True, slots=True)
class AuthorityView:
    """A stored authority with what an officer needs to decide: how many live SVIDs it signed, until
    when, and the moments rotation will act on it."""

    record: AuthorityRecord
    live_svids: int
    signed_until: datetime | None


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


Change = Callable[[Session, Sequence[AuthorityRecord]], ChangeReport]


class AuthorityOperations:
    def __init__(
        self,
        changes: AuthorityChanges,
        params: RotationParams,
        clock: Clock,
        audit: AuditTrail | None = None,
        metrics: RotationMetrics | None = None,
    ) -> None:
        self._changes = changes
        self._authorities = changes.authorities
        self._params = params
        self._clock = clock
        self._audit = audit or AuditTrail(changes.database)
        self._metrics = metrics

    # -- reading ---------------------------------------------------------------------------------

    def list(self) -> tuple[AuthorityView, ...]:
        now = self._clock.now()
        with self._changes.database.transaction() as session:
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

    def prepare(self, kind: AuthorityKind, actor: Actor, *, dry_run: bool = False) -> ChangeReport:
        """Mint the next authority of ``kind`` and publish it (it signs nothing until activated)."""

        def change(session: Session, records: Sequence[AuthorityRecord]) -> ChangeReport:
            self._refuse_second_prepared(records, kind)
            if dry_run:
                return self._report(
                    "prepare", True, session, records, [StateChange("(new)", kind, None, AuthorityState.PREPARED)]
                )
            record = self._changes.create(session, kind, AuthorityState.PREPARED, records)
            return self._report(
                "prepare",
                False,
                session,
                [*records, record],
                [StateChange(record.id, kind, None, AuthorityState.PREPARED)],
            )

        return self._counted(
            self._audited(
                change, actor, "authority.prepare", f"{kind} authority", dry_run, request={"kind": kind.value}
            )
        )

    def activate(self, authority_id: str, actor: Actor, *, dry_run: bool = False, force: bool = False) -> ChangeReport:
        """Make a prepared authority the one that signs; the active one is retired in the same step.
        Refused until the prepared one has been published for two refresh hints (``force`` skips that)."""

        def change(session: Session, records: Sequence[AuthorityRecord]) -> ChangeReport:
            target = find(records, authority_id)
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
                    f"relying parties refresh every {int(self._params.refresh_hint.total_seconds())}s and must have "
                    f"had {PUBLISH_HINTS} chances to fetch it, so activate it at or after {ready_at.isoformat()} "
                    "(or use `authority rotate --now` in an emergency)"
                )
            changes = [StateChange(target.id, target.kind, AuthorityState.PREPARED, AuthorityState.ACTIVE)]
            changes += retire_active(records, target.kind)
            return self._apply("activate", dry_run, session, records, changes)

        return self._counted(
            self._audited(change, actor, "authority.activate", authority_id, dry_run, request={"force": force})
        )

    def taint(self, authority_id: str, actor: Actor, *, dry_run: bool = False) -> ChangeReport:
        """Mark an authority as suspect: agents replace everything chained to it at once; it stays in
        the bundle (its SVIDs keep verifying until replaced) until revoked or pruned."""

        def change(session: Session, records: Sequence[AuthorityRecord]) -> ChangeReport:
            target = find(records, authority_id)
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

        return self._audited(change, actor, "authority.taint", authority_id, dry_run)

    def revoke(self, authority_id: str, actor: Actor, *, dry_run: bool = False) -> ChangeReport:
        """Remove an authority from the bundle: nothing it signed verifies any more."""

        def change(session: Session, records: Sequence[AuthorityRecord]) -> ChangeReport:
            target = find(records, authority_id)
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

        return self._audited(change, actor, "authority.revoke", authority_id, dry_run)

    def rotate_now(self, kind: AuthorityKind, actor: Actor, *, dry_run: bool = False) -> ChangeReport:
        """The emergency rotation: mint a new authority and activate it at once, and taint the active
        one, in one transaction, so agents replace every SVID the old one signed right away. Relying
        parties outside this trust domain's agents (federation) may not hold the new key yet."""

        def change(session: Session, records: Sequence[AuthorityRecord]) -> ChangeReport:
            old = [r for r in records if r.kind is kind and r.state is AuthorityState.ACTIVE]
            changes = [StateChange(r.id, kind, AuthorityState.ACTIVE, AuthorityState.TAINTED) for r in old]
            if dry_run:
                new = [StateChange("(new)", kind, None, AuthorityState.ACTIVE)]
                return self._report("rotate", True, session, records, [*new, *changes])
            record = self._changes.create(session, kind, AuthorityState.ACTIVE)
            report = self._apply("rotate", False, session, [*records, record], changes)
            return _with_change(report, StateChange(record.id, kind, None, AuthorityState.ACTIVE))

        return self._counted(
            self._audited(change, actor, "authority.rotate", f"{kind} authority", dry_run, request={"kind": kind.value})
        )

    def revoke_svids(
        self,
        actor: Actor,
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
        target = str(spiffe_id) if serial is None else format(serial, "x")
        request: dict[str, JsonValue] = {"reason": None if reason is None else reason.value}

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

        return self._audited(change, actor, "x509_svid.revoke", target, dry_run, request=request)

    # -- plumbing ------------------------------------------------------------------------------------

    def _counted(self, report: ChangeReport) -> ChangeReport:
        """``report`` of an officer's rotation step, counted on ``/metrics`` beside the scheduled steps
        (``trigger="officer"``) once it was applied; a dry run changed nothing and is not counted."""
        if self._metrics is not None and not report.dry_run:
            for kind in sorted({change.kind.value for change in report.changes}):
                self._metrics.steps.labels(report.action, kind, OFFICER).inc()
        return report

    def _audited(
        self,
        change: Change,
        actor: Actor,
        action: str,
        target: str,
        dry_run: bool,
        *,
        request: Mapping[str, JsonValue] | None = None,
    ) -> ChangeReport:
        """Run ``change`` and audit it: a real change in its own transaction (both or neither are
        written), a dry run after its rollback, a refusal with its reason."""
        now = self._clock.now()
        asked: dict[str, JsonValue] = {"dry_run": dry_run, **(request or {})}

        def audited(session: Session, records: Sequence[AuthorityRecord]) -> ChangeReport:
            report = change(session, records)
            if not dry_run:
                AuditLogRepository(session).append(
                    _change_event(now, actor, action, target, report=report, asked=asked)
                )
            return report

        try:
            report = self._changes.run(audited, dry_run=dry_run)
        except TrustmeshError as err:
            self._audit.record_refusal(refusal_event(now, actor, action, target, err, detail=asked))
            raise
        if dry_run:
            self._audit.record(_change_event(now, actor, action, target, report=report, asked=asked))
        return report

    def _apply(
        self,
        action: str,
        dry_run: bool,
        session: Session,
        records: Sequence[AuthorityRecord],
        changes: Sequence[StateChange],
    ) -> ChangeReport:
        report = self._report(action, dry_run, session, records, changes)
        self._changes.set_states(session, changes)  # rolled back for a dry run, after the same checks
        return report

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


def _crl_issuer_id(der: bytes) -> str:
    """The hex authority key identifier of a CRL we signed (``ca.crl.build_crl`` always sets it)."""
    aki = x509.load_der_x509_crl(der).extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    return (aki.key_identifier or b"").hex()


def _change_event(
    now: datetime, actor: Actor, action: str, target: str, *, report: ChangeReport, asked: Mapping[str, JsonValue]
) -> AuditEvent:
    """The record of an officer's change (or dry run): what changed, and how many SVIDs and agents."""
    created = [c.authority_id for c in report.changes if c.before is None and c.authority_id != "(new)"]
    changes = [f"{c.authority_id} ({c.kind}): {c.before or 'new'} -> {c.after or 'removed'}" for c in report.changes]
    detail: dict[str, JsonValue] = {
        **asked,
        **listed("changes", changes),
        "svids_affected": report.svids_affected,
        "agents_affected": len(report.agents_affected),
    }
    if report.revoked_serials:
        detail |= {"revoked": len(report.revoked_serials)} | listed(
            "revoked_serials", [format(s, "x") for s in report.revoked_serials]
        )
    return AuditEvent(now, actor, action, created[0] if created else target, OK, detail)


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
