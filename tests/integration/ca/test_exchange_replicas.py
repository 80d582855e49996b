"""The agentless exchange across CA replicas (docs/bridge.md "How the host proves who it is"): two CA
instances over one datastore (each with its own connection pool, authority manager, issuing service and
exchange, sharing the authorities' key directory as replicas do) accept a statement once between them:
a copy replayed to the same or the other replica is refused and audited, even when both receive it at
once. Run on SQLite (one file) and PostgreSQL (one database)."""

from __future__ import annotations

import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from bridge.exchange import USED, ExchangeRequest, ExchangeVerifier
from bridge.legacy_chain import LegacyTrust, TrustAnchor, load_certificates, load_crls
from bridge.mapping import MappingRule, Match
from bridge.possession import load_signing_key
from ca.audit import AuditTrail
from ca.authority_manager import AuthorityManager, AuthorityParams
from ca.bridge_attestation import DatastoreChallenges
from ca.bridge_exchange import EXCHANGE, LegacyExchange
from ca.issuance import TtlPolicy
from ca.keys.disk import DiskKeyManager
from ca.metrics import CaMetrics
from ca.ratelimit import Rate
from ca.service import CaService
from ca.store import AuditLogRepository, AuditQuery, Database
from ca.upstream import SelfSignedUpstream
from spiffe_core.errors import NotAuthorized, TrustmeshError
from spiffe_core.keys import KeyType
from spiffe_core.spiffe_id import SpiffeId, TrustDomain
from tests.support.clock import FakeClock
from tests.support.enterprise_pki import EnterprisePki

TD = TrustDomain("example.org")
CA = SpiffeId.parse("spiffe://example.org/trustmesh/server")
RULES = (MappingRule("payments", Match(dns="*.payments.corp.example.com"), "/legacy/payments/{host}"),)
TTL = timedelta(minutes=30)


@dataclass
class Replica:
    database: Database
    exchange: LegacyExchange


@pytest.fixture
def replicas(database_url: str, enterprise_pki: EnterprisePki, tmp_path: Path) -> Iterator[tuple[Replica, Replica]]:
    clock = FakeClock(datetime.now(UTC).replace(microsecond=0))
    trust = LegacyTrust(
        [TrustAnchor("corp", load_certificates(enterprise_pki.root.read_bytes(), "root"))],
        load_crls(enterprise_pki.crl.read_bytes(), "crl"),
    )
    kek = secrets.token_bytes(32)
    databases = [Database.open(database_url) for _ in range(2)]
    try:
        made = []
        for database in databases:
            database.migrate()
            authorities = AuthorityManager(
                database,
                DiskKeyManager(tmp_path / "keys", kek),
                SelfSignedUpstream(),
                AuthorityParams(TD, KeyType.EC_P256, KeyType.EC_P256, timedelta(hours=6), timedelta(minutes=5)),
                clock,
            )
            authorities.load()  # the first replica creates the authorities, the second finds them
            service = CaService(
                database=database,
                authorities=authorities,
                x509_ttl=TtlPolicy(TTL, TTL),
                jwt_ttl=TtlPolicy(TTL, TTL),
                clock=clock,
                metrics=CaMetrics(),
            )
            exchange = LegacyExchange(
                verifier=ExchangeVerifier(
                    TD, CA, lambda: trust, lambda: RULES, DatastoreChallenges(database, clock).spend
                ),
                issuer=service,
                audit=AuditTrail(database),
                clock=clock,
                rate=Rate(100.0, 100),
                is_admin=lambda _id: False,
            )
            made.append(Replica(database, exchange))
        yield made[0], made[1]
    finally:
        for database in databases:
            database.close()


def signed_body(enterprise_pki: EnterprisePki) -> bytes:
    host = enterprise_pki.web
    chain = load_certificates(host.chain.read_bytes(), str(host.chain))
    key = load_signing_key(host.key.read_bytes(), str(host.key))
    svid_key = ec.generate_private_key(ec.SECP256R1())
    csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([])).sign(svid_key, hashes.SHA256())
    return ExchangeRequest.make(chain, key, csr, CA, datetime.now(UTC)).encode()


def outcomes(database: Database) -> list[tuple[str, str]]:
    with database.transaction() as session:
        found = AuditLogRepository(session).list(AuditQuery(action=EXCHANGE), limit=100)
    return [(record.event.outcome, record.event.reason) for record in found]


def test_a_statement_one_replica_accepted_is_refused_by_the_other(
    replicas: tuple[Replica, Replica], enterprise_pki: EnterprisePki
) -> None:
    a, b = replicas
    body = signed_body(enterprise_pki)
    a.exchange.exchange(body, "192.0.2.7")

    with pytest.raises(NotAuthorized) as replayed:
        b.exchange.exchange(body, "198.51.100.9")

    assert str(replayed.value) == USED
    assert outcomes(a.database) == [("ok", ""), ("denied", USED)]


def test_a_statement_is_refused_when_replayed_to_the_replica_that_accepted_it(
    replicas: tuple[Replica, Replica], enterprise_pki: EnterprisePki
) -> None:
    a, _ = replicas
    body = signed_body(enterprise_pki)
    a.exchange.exchange(body, "192.0.2.7")

    with pytest.raises(NotAuthorized, match=r"^this exchange statement was accepted already"):
        a.exchange.exchange(body, "192.0.2.7")


def test_of_two_replicas_sent_one_statement_at_once_exactly_one_issues(
    replicas: tuple[Replica, Replica], enterprise_pki: EnterprisePki
) -> None:
    body = signed_body(enterprise_pki)
    start = threading.Barrier(2)
    results: list[str] = []

    def send(replica: Replica) -> None:
        start.wait(timeout=10)
        try:
            replica.exchange.exchange(body, "192.0.2.7")
            results.append("issued")
        except TrustmeshError as err:
            results.append(str(err))

    threads = [threading.Thread(target=send, args=(replica,)) for replica in replicas]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    assert sorted(results) == ["issued", USED]
