"""The CA's use cases, one method each, behind every edge (admin HTTP API, node gRPC API, CLI).

Each method owns its unit of work: it signs with the current authority snapshot, then records what it
issued in one transaction, so a failed request leaves nothing behind and a recorded certificate is
one that was handed out.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from datetime import datetime

from ca.authority_manager import AuthorityManager
from ca.issuance import (
    IssuedX509Svid,
    JwtSvidRequest,
    TtlPolicy,
    X509SvidRequest,
    mint_jwt,
    sign_x509_svids,
)
from ca.metrics import CaMetrics
from ca.store.engine import Database
from ca.store.records import IssuedCertificate
from ca.store.repositories import IssuedCertificateRepository
from spiffe_core.bundle import Bundle
from spiffe_core.clock import Clock
from spiffe_core.errors import NoActiveAuthority, TrustmeshError


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
    ) -> None:
        self._database = database
        self._authorities = authorities
        self._x509_ttl = x509_ttl
        self._jwt_ttl = jwt_ttl
        self._clock = clock
        self._metrics = metrics
        self._rotation_error = rotation_error

    def get_bundle(self) -> Bundle:
        return self._authorities.get_current().bundle

    def mint_x509_svids(self, requests: Sequence[X509SvidRequest]) -> list[IssuedX509Svid]:
        """Sign a batch of authorized requests and record every certificate; all or nothing."""
        started = time.perf_counter()
        now = self._clock.now()
        try:
            issued = sign_x509_svids(requests, self._authorities.get_current(), self._x509_ttl, now)
            with self._database.transaction() as session:
                IssuedCertificateRepository(session).add_many(
                    [
                        IssuedCertificate(
                            serial=svid.serial,
                            spiffe_id=svid.spiffe_id,
                            authority_id=svid.authority_id,
                            not_before=svid.not_before,
                            not_after=svid.not_after,
                            issued_at=now,
                        )
                        for svid in issued
                    ]
                )
        except TrustmeshError as err:
            self._metrics.issuance_errors.labels("x509", type(err).__name__).inc()
            raise
        self._metrics.x509_signing_seconds.observe(time.perf_counter() - started)
        self._metrics.x509_svids_issued.inc(len(issued))
        return issued

    def mint_jwt_svid(self, request: JwtSvidRequest) -> tuple[str, datetime]:
        try:
            minted = mint_jwt(request, self._authorities.get_current(), self._jwt_ttl, self._clock.now())
        except TrustmeshError as err:
            self._metrics.issuance_errors.labels("jwt", type(err).__name__).inc()
            raise
        self._metrics.jwt_svids_issued.inc()
        return minted

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
