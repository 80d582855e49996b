"""ca/bridge_exchange.py and its listener's app: an enterprise certificate becomes an X509-SVID of the
mapped ID that keeps what the rule says, signed by the CA's authority and audited; refusals are
audited per source address, and the per-source rate holds (real CaService over SQLite)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from fastapi.testclient import TestClient

from bridge.exchange import EXCHANGE_PATH, ExchangeRequest, ExchangeVerifier
from bridge.legacy_chain import LegacyTrust, TrustAnchor, load_certificates, load_crls
from bridge.mapping import KeepDns, MappingRule, Match
from bridge.possession import load_signing_key
from ca.audit import AuditTrail
from ca.authority_manager import AuthorityManager
from ca.bridge_attestation import DatastoreChallenges
from ca.bridge_exchange import EXCHANGE, LegacyExchange
from ca.exchange_listener import create_exchange_app
from ca.ratelimit import Rate
from ca.store import AuditLogRepository, AuditQuery, AuditRecord, Database
from spiffe_core.errors import NotAuthorized, ResourceExhausted
from spiffe_core.spiffe_id import SpiffeId, TrustDomain
from spiffe_core.x509_svid import verify_x509_svid
from tests.support.clock import FakeClock
from tests.support.enterprise_pki import EnterprisePki, HostFiles, ca_use_cases, memory_authorities

TD = TrustDomain.parse("example.org")
CA = SpiffeId.parse("spiffe://example.org/trustmesh/server")
SOURCE = "192.0.2.7"
RULES = [
    MappingRule("payments", Match(dns="*.payments.corp.example.com"), "/legacy/payments/{host}"),
    MappingRule("data", Match(dns="*.data.corp.example.com"), "/legacy/data/{host}", KeepDns.NONE, keep_cn=False),
]


@dataclass
class Rig:
    database: Database
    authorities: AuthorityManager
    exchange: LegacyExchange
    now: datetime
    admins: set[SpiffeId]  # the admin identities the exchange must refuse


@pytest.fixture
def rig(tmp_path: Path, enterprise_pki: EnterprisePki) -> Iterator[Rig]:
    database = Database.open(f"sqlite:///{tmp_path / 'ca.db'}")
    database.migrate()
    clock = FakeClock(datetime.now(UTC).replace(microsecond=0))
    admins: set[SpiffeId] = set()
    authorities = memory_authorities(database, clock, timedelta(hours=6))
    trust = LegacyTrust(
        [TrustAnchor("corp", load_certificates(enterprise_pki.root.read_bytes(), "root"))],
        load_crls(enterprise_pki.crl.read_bytes(), "crl"),
    )
    exchange = LegacyExchange(
        verifier=ExchangeVerifier(TD, CA, lambda: trust, lambda: RULES, DatastoreChallenges(database, clock).spend),
        issuer=ca_use_cases(database, authorities, clock, timedelta(minutes=30)).service,
        audit=AuditTrail(database),
        clock=clock,
        rate=Rate(1.0, 3),
        is_admin=admins.__contains__,
        monotonic=lambda: 0.0,  # no time passes: the bucket never refills
    )
    try:
        yield Rig(database, authorities, exchange, clock.now(), admins)
    finally:
        database.close()


def body(host: HostFiles, now: datetime, csr: x509.CertificateSigningRequest | None = None) -> bytes:
    chain = load_certificates(host.chain.read_bytes(), str(host.chain))
    key = load_signing_key(host.key.read_bytes(), str(host.key))
    if csr is None:
        svid_key = ec.generate_private_key(ec.SECP256R1())
        csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([])).sign(svid_key, hashes.SHA256())
    return ExchangeRequest.make(chain, key, csr, CA, now).encode()


def records(database: Database) -> list[AuditRecord]:
    with database.transaction() as session:
        return list(AuditLogRepository(session).list(AuditQuery(action=EXCHANGE), limit=100))


def dns_names(cert: x509.Certificate) -> list[str]:
    return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)


def test_the_svid_has_the_mapped_id_the_kept_dns_sans_and_cn_and_chains_to_the_bundle(
    rig: Rig, enterprise_pki: EnterprisePki
) -> None:
    reply = rig.exchange.exchange(body(enterprise_pki.web, rig.now), SOURCE)

    leaf = reply.cert_chain[0]
    spiffe_id, _ = verify_x509_svid(reply.cert_chain, rig.authorities.get_current().bundle, rig.now)
    assert str(spiffe_id) == str(reply.spiffe_id) == "spiffe://example.org/legacy/payments/web01"
    assert dns_names(leaf) == ["web01.payments.corp.example.com"]
    assert leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "web01.payments.corp.example.com"
    assert (reply.rule, reply.bundle) == ("payments", rig.authorities.get_current().bundle.x509_authorities)


def test_a_rule_that_keeps_no_names_gives_an_svid_without_dns_sans_or_cn(
    rig: Rig, enterprise_pki: EnterprisePki
) -> None:
    leaf = rig.exchange.exchange(body(enterprise_pki.db, rig.now), SOURCE).cert_chain[0]

    assert dns_names(leaf) == []
    assert leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME) == []


def test_a_rule_mapping_to_an_admin_identity_gets_no_svid(rig: Rig, enterprise_pki: EnterprisePki) -> None:
    rig.admins.add(SpiffeId.parse("spiffe://example.org/legacy/data/db01"))

    with pytest.raises(NotAuthorized, match=r"^no SVID for spiffe://example\.org/legacy/data/db01: it is an admin"):
        rig.exchange.exchange(body(enterprise_pki.db, rig.now), SOURCE)

    assert [r.event.outcome for r in records(rig.database)] == ["denied"]


def test_names_in_the_csr_are_ignored_only_its_key_is_used(rig: Rig, enterprise_pki: EnterprisePki) -> None:
    svid_key = ec.generate_private_key(ec.SECP256R1())
    greedy = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "admin.corp.example.com")]))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier("spiffe://example.org/admin"), x509.DNSName("admin.corp.example.com")]
            ),
            critical=False,
        )
        .sign(svid_key, hashes.SHA256())
    )

    leaf = rig.exchange.exchange(body(enterprise_pki.web, rig.now, greedy), SOURCE).cert_chain[0]

    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["spiffe://example.org/legacy/payments/web01"]
    assert dns_names(leaf) == ["web01.payments.corp.example.com"]
    assert leaf.public_key() == svid_key.public_key()


def test_an_exchange_is_audited_by_the_enterprise_certificate_with_the_mapped_id(
    rig: Rig, enterprise_pki: EnterprisePki
) -> None:
    reply = rig.exchange.exchange(body(enterprise_pki.web, rig.now), SOURCE)

    (record,) = records(rig.database)
    web = load_certificates(enterprise_pki.web.cert.read_bytes(), "web")[0]
    event = record.event
    assert (event.actor.name, event.actor.method) == (
        f"x509:{web.issuer.rfc4514_string()}#{web.serial_number:x}",
        "enterprise-cert",
    )
    assert (event.target, event.outcome) == ("spiffe://example.org/legacy/payments/web01", "ok")
    assert {key: event.detail[key] for key in ("serial", "source", "rule", "trust_anchor", "dns_names")} == {
        "serial": format(reply.serial, "x"),
        "source": SOURCE,
        "rule": "payments",
        "trust_anchor": "corp",
        "dns_names": ["web01.payments.corp.example.com"],
    }
    assert event.detail["sha256"] == web.fingerprint(hashes.SHA256()).hex()


def test_a_refused_exchange_is_audited_by_its_source_with_the_reason(rig: Rig, enterprise_pki: EnterprisePki) -> None:
    with pytest.raises(NotAuthorized, match=r"^revoked: "):
        rig.exchange.exchange(body(enterprise_pki.revoked, rig.now), SOURCE)

    (record,) = records(rig.database)
    revoked = load_certificates(enterprise_pki.revoked.cert.read_bytes(), "revoked")[0]
    assert (record.event.actor.name, record.event.outcome) == (f"exchange:{SOURCE}", "denied")
    assert record.event.reason.startswith("revoked: ")
    assert record.event.detail == {"sha256": revoked.fingerprint(hashes.SHA256()).hex()}


def test_a_source_over_its_rate_is_refused_naming_the_setting(rig: Rig, enterprise_pki: EnterprisePki) -> None:
    for _ in range(3):
        rig.exchange.exchange(body(enterprise_pki.web, rig.now), SOURCE)

    with pytest.raises(ResourceExhausted, match=r"^too many exchanges from 192\.0\.2\.7 \(.*bridge\.exchange_rate\)"):
        rig.exchange.exchange(body(enterprise_pki.web, rig.now), SOURCE)
    rig.exchange.exchange(body(enterprise_pki.web, rig.now), "192.0.2.8")
    assert [r.event.outcome for r in records(rig.database)] == ["ok", "ok", "ok", "denied", "ok"]


def test_the_listener_answers_a_refusal_with_its_status_and_reason(rig: Rig, enterprise_pki: EnterprisePki) -> None:
    client = TestClient(create_exchange_app(rig.exchange))

    expired = client.post(EXCHANGE_PATH, content=body(enterprise_pki.expired, rig.now))
    for _ in range(2):
        client.post(EXCHANGE_PATH, content=b"{}")
    limited = client.post(EXCHANGE_PATH, content=b"{}")

    assert expired.status_code == 403
    assert expired.json()["error"].startswith("expired: ")
    assert (limited.status_code, limited.headers["Retry-After"]) == (429, "1")
