"""x509pop across CA replicas (docs/bridge.md): two CA instances that share a datastore (each with its own
connection pool and attestor, as two processes have) accept each other's challenges, agree on one
challenge key even when both create it at once, and refuse an answer the other one already accepted.
Run on SQLite (one file) and PostgreSQL (one database)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest

from bridge.mapping import MappingRule, Match
from bridge.possession import load_signing_key
from bridge.x509pop import USED, X509PopAttestor, encode_response, sign_challenge
from ca.bridge_attestation import DatastoreChallenges, x509pop_attestor
from ca.config import BridgeConfig
from ca.store import Database
from spiffe_core.errors import NotAuthorized
from spiffe_core.spiffe_id import SpiffeId, TrustDomain
from tests.support.clock import FakeClock
from tests.support.enterprise_pki import EnterprisePki, HostFiles

TD = TrustDomain("example.org")
RULES = (MappingRule("payments", Match(dns="*.payments.corp.example.com"), "/legacy/payments/{host}"),)
WEB01 = SpiffeId.parse("spiffe://example.org/trustmesh/agent/x509pop/legacy/payments/web01")


@dataclass
class Replica:
    ledger: DatastoreChallenges
    attestor: X509PopAttestor


@pytest.fixture
def replicas(database_url: str, enterprise_pki: EnterprisePki) -> Iterator[tuple[Replica, Replica]]:
    """Two CA instances over one datastore, each with its own :class:`Database` (connection pool)."""
    bridge = BridgeConfig(trust_anchors={"corp": enterprise_pki.root}, crls=[enterprise_pki.crl])
    clock = FakeClock(datetime.now(UTC))
    databases = [Database.open(database_url) for _ in range(2)]
    try:
        for database in databases:
            database.migrate()
        ledgers = [DatastoreChallenges(database, clock) for database in databases]
        a, b = (Replica(ledger, x509pop_attestor(bridge, TD, lambda: RULES, ledger)) for ledger in ledgers)
        yield a, b
    finally:
        for database in databases:
            database.close()


def answer(nonce: bytes, host: HostFiles) -> bytes:
    key = load_signing_key(host.key.read_bytes(), str(host.key))
    return encode_response(nonce, sign_challenge(key, nonce), host.chain.read_bytes())


def test_a_challenge_one_replica_issued_is_answered_at_another(
    replicas: tuple[Replica, Replica], enterprise_pki: EnterprisePki
) -> None:
    a, b = replicas
    now = datetime.now(UTC)
    nonce = a.attestor.challenge(enterprise_pki.web.chain.read_bytes(), now)

    assert b.attestor.attest(answer(nonce, enterprise_pki.web), now) == WEB01


def test_an_answer_one_replica_accepted_is_refused_as_used_by_the_other(
    replicas: tuple[Replica, Replica], enterprise_pki: EnterprisePki
) -> None:
    a, b = replicas
    now = datetime.now(UTC)
    response = answer(a.attestor.challenge(enterprise_pki.web.chain.read_bytes(), now), enterprise_pki.web)
    a.attestor.attest(response, now)

    with pytest.raises(NotAuthorized) as replayed:
        b.attestor.attest(response, now)
    assert str(replayed.value) == USED


def test_replicas_creating_the_challenge_key_at_once_agree_on_one(replicas: tuple[Replica, Replica]) -> None:
    start = threading.Barrier(2)
    keys: list[bytes] = []

    def key_of(replica: Replica) -> None:
        start.wait(timeout=10)
        keys.append(replica.ledger.key())

    threads = [threading.Thread(target=key_of, args=(replica,)) for replica in replicas]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=20)

    assert len(keys) == 2
    assert keys[0] == keys[1]
    assert len(keys[0]) == 32
