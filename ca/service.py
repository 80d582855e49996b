"""The CA's use cases, one method each, behind every edge (admin HTTP API, node gRPC API, CLI).

Each method owns its unit of work: it signs with the current authority snapshot, then records what it
issued, with one audit record per call (:class:`~ca.audit.Issuance` says who asked), in one
transaction, so a failed request leaves nothing behind and a recorded certificate is one that was
handed out — and audited. A JWT-SVID is handed out only once its audit record is written. Requests the
CA refuses are audited too (throttled per caller: :meth:`ca.audit.AuditTrail.record_refusal`).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from datetime import datetime

from ca.audit import AuditTrail, Issuance, jwt_issuance_event, refusal_event, x509_issuance_event
from ca.authority_manager import AuthorityManager
from ca.issuance import (
    IssuedX509Svid,
    JwtSvidRequest,
    TtlPolicy,
    X509SvidRequest,
    mint_jwt,
    sign_x509_svids,
    sign_x509_svids_each,
)
from ca.metrics import CaMetrics
from ca.signing import signs_in_batches
from ca.store.driver import DriverTransaction
from ca.store.engine import Database
from ca.store.immediate import WouldWait
from ca.store.records import Actor, IssuedCertificate
from ca.store.repositories.audit import append_audit
from ca.store.repositories.certificates import record_issued
from spiffe_core.bundle import Bundle
from spiffe_core.clock import Clock
from spiffe_core.errors import InvalidArgument, NoActiveAuthority, TrustmeshError


class _NotPlain(Exception):
    """Raised inside :meth:`CaService.mint_x509_svids_now`'s transaction to roll it back when no request
    could be signed: the worker path answers and audits that refusal."""


class CaService:
    def __init__(
        self,
        *,
        database: Database,
        authorities: AuthorityManager,
        x509_ttl: TtlPolicy,
        jwt_ttl: TtlPolicy,
        clock: Clock,
        metrics: CaMetrics,
        rotation_error: Callable[[], str | None] = lambda: None,
        audit: AuditTrail | None = None,
    ) -> None:
        self._database = database
        self._authorities = authorities
        self._x509_ttl = x509_ttl
        self._jwt_ttl = jwt_ttl
        self._clock = clock
        self._metrics = metrics
        self._rotation_error = rotation_error
        self._audit = audit or AuditTrail(database)

    def get_bundle(self) -> Bundle:
        return self._authorities.get_current().bundle

    def mint_x509_svids(self, requests: Sequence[X509SvidRequest], issuance: Issuance) -> list[IssuedX509Svid]:
        """Sign a batch of authorized requests and record every certificate and one audit record of the
        batch; all or nothing."""
        started = time.perf_counter()
        now = self._clock.now()
        try:
            issued = sign_x509_svids(requests, self._authorities.get_current(), self._x509_ttl, now)
            self._record(issued, issuance, now)
        except TrustmeshError as err:
            self._refused(issuance, requests, err, now)
            raise
        self._metrics.x509_signing_seconds.observe(time.perf_counter() - started)
        self._metrics.x509_svids_issued.inc(len(issued))
        return issued

    def mint_x509_svids_each(
        self, requests: Sequence[X509SvidRequest], issuance: Issuance
    ) -> list[IssuedX509Svid | InvalidArgument]:
        """Sign each request on its own: one the CA refuses (a broken CSR, a TTL over the maximum) gets
        its InvalidArgument in its place, the others are signed together (one Vault request for a
        Vault-held authority) and recorded together, with one audit record (its ``invalid`` says how
        many were refused); when none could be signed, the refusal is audited instead. Other errors (no
        active authority, Vault down, datastore down) fail it all."""
        started = time.perf_counter()
        now = self._clock.now()
        try:
            outcomes = sign_x509_svids_each(requests, self._authorities.get_current(), self._x509_ttl, now)
            self._count_refused(outcomes)
            issued, recorded = _issued_among(outcomes, issuance)
            if issued:
                self._record(issued, recorded, now)
        except TrustmeshError as err:
            self._refused(issuance, requests, err, now)
            raise
        if not issued and outcomes:
            first = next(outcome for outcome in outcomes if isinstance(outcome, InvalidArgument))
            self._refused(issuance, requests, first, now, count_metric=False)
        self._metrics.x509_signing_seconds.observe(time.perf_counter() - started)
        self._metrics.x509_svids_issued.inc(len(issued))
        return outcomes

    def mint_x509_svids_now(
        self, requests: Sequence[X509SvidRequest], issuance: Issuance
    ) -> list[IssuedX509Svid | InvalidArgument] | None:
        """What :meth:`mint_x509_svids_each` answers, done here only if nothing in it waits, for a
        caller on an event loop: the active authority's key is in this process (a Vault transit key
        answers over the network) and the datastore takes the record at once
        (:meth:`~ca.store.engine.Database.driver_transaction_now`, begun before anything is signed).
        A refused request (a broken CSR) gets its InvalidArgument in its place and the others are
        recorded as :meth:`mint_x509_svids_each` records them, so nothing is signed twice. None, with
        nothing recorded or counted, when it would wait or when it is not plain (no request could be
        signed, no active authority, a datastore error): the caller then calls
        :meth:`mint_x509_svids_each` on a worker thread, which answers and audits those cases."""
        started = time.perf_counter()
        now = self._clock.now()
        current = self._authorities.get_current()
        try:
            if signs_in_batches(current.active_x509(now).private_key):
                return None
            with self._database.driver_transaction_now() as transaction:
                outcomes = sign_x509_svids_each(requests, current, self._x509_ttl, now)
                issued, recorded = _issued_among(outcomes, issuance)
                if not issued:
                    raise _NotPlain  # rolls the transaction back
                self._write_record(transaction, issued, recorded, now)
        except (WouldWait, _NotPlain, TrustmeshError):
            return None
        self._count_refused(outcomes)
        self._metrics.x509_signing_seconds.observe(time.perf_counter() - started)
        self._metrics.x509_svids_issued.inc(len(issued))
        return outcomes

    def _count_refused(self, outcomes: Sequence[IssuedX509Svid | InvalidArgument]) -> None:
        for outcome in outcomes:
            if isinstance(outcome, InvalidArgument):
                self._metrics.issuance_errors.labels("x509", type(outcome).__name__).inc()

    def mint_jwt_svid(self, request: JwtSvidRequest, actor: Actor) -> tuple[str, datetime]:
        """Mint a JWT-SVID for ``actor``; the token is returned only once its audit record is written."""
        now = self._clock.now()
        current = self._authorities.get_current()
        try:
            token, expires_at = mint_jwt(request, current, self._jwt_ttl, now)
            key_id = current.active_jwt(now).key_id
            self._audit.record(
                jwt_issuance_event(
                    actor,
                    str(request.spiffe_id),
                    audience=request.audience,
                    key_id=key_id,
                    expires_at=expires_at,
                    now=now,
                )
            )
        except TrustmeshError as err:
            self._metrics.issuance_errors.labels("jwt", type(err).__name__).inc()
            self._audit.record_refusal(refusal_event(now, actor, "jwt_svid.issue", str(request.spiffe_id), err))
            raise
        self._metrics.jwt_svids_issued.inc()
        return token, expires_at

    def _record(self, issued: Sequence[IssuedX509Svid], issuance: Issuance, now: datetime) -> None:
        """Record the certificates and the batch's audit record in one transaction: a driver transaction
        (:mod:`ca.store.driver`), since this runs once per node API call and the ORM's per-transaction
        work cost more than these three statements."""
        with self._database.driver_transaction() as transaction:
            self._write_record(transaction, issued, issuance, now)

    @staticmethod
    def _write_record(
        transaction: DriverTransaction, issued: Sequence[IssuedX509Svid], issuance: Issuance, now: datetime
    ) -> None:
        record_issued(
            transaction,
            [
                IssuedCertificate(
                    serial=svid.serial,
                    spiffe_id=svid.spiffe_id,
                    authority_id=svid.authority_id,
                    not_before=svid.not_before,
                    not_after=svid.not_after,
                    issued_at=now,
                    agent_id=issuance.agent,
                )
                for svid in issued
            ],
        )
        append_audit(transaction, x509_issuance_event(issuance, issued, now))

    def _refused(
        self,
        issuance: Issuance,
        requests: Sequence[X509SvidRequest],
        err: TrustmeshError,
        now: datetime,
        *,
        count_metric: bool = True,
    ) -> None:
        if count_metric:
            self._metrics.issuance_errors.labels("x509", type(err).__name__).inc()
        ids = sorted({str(request.spiffe_id) for request in requests})
        target = issuance.target or (ids[0] if len(ids) == 1 else f"{len(requests)} X509-SVIDs")
        self._audit.record_refusal(
            refusal_event(now, issuance.actor, issuance.action, target, err, detail=issuance.detail)
        )

    def check_ready(self) -> None:
        """Ready means: the datastore answers and an authority can sign X509- and JWT-SVIDs now. When
        none can, the reason says why and what the rotation task last failed on."""
        self._database.ping()
        current = self._authorities.get_current()
        now = self._clock.now()
        try:
            current.active_x509(now)
            current.active_jwt(now)
        except NoActiveAuthority as err:
            failure = self._rotation_error()
            if failure is None:
                raise
            raise NoActiveAuthority(f"{err}; the last attempt to activate a new one failed: {failure}") from err


def _issued_among(
    outcomes: Sequence[IssuedX509Svid | InvalidArgument], issuance: Issuance
) -> tuple[list[IssuedX509Svid], Issuance]:
    """The signed SVIDs among a batch's outcomes, and the issuance to audit them under: its detail
    says how many of the batch were refused (``invalid``)."""
    issued = [outcome for outcome in outcomes if isinstance(outcome, IssuedX509Svid)]
    invalid = len(outcomes) - len(issued)
    if not invalid:
        return issued, issuance
    return issued, dataclasses.replace(issuance, detail={**issuance.detail, "invalid": invalid})
