"""bridge/x509pop.py: a host holding its enterprise cert's key gets its mapped agent ID; a refused
chain says which check failed; a nonce works once, for that key only."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from bridge.legacy_chain import LegacyTrust, TrustAnchor, load_certificates, load_crls
from bridge.mapping import MappingRule, Match
from bridge.x509pop import CHALLENGE_TTL, X509PopAttestor, encode_response, sign_challenge
from spiffe_core.errors import NotAuthorized
from spiffe_core.spiffe_id import TrustDomain
from tests.support.enterprise_pki import REFUSED_HOSTS, EnterprisePki, HostFiles

TD = TrustDomain.parse("example.org")
RULES = [
    MappingRule("payments", Match(dns="*.payments.corp.example.com"), "/legacy/payments/{host}"),
    MappingRule("data", Match(dns="*.data.corp.example.com", trust_anchor="corp"), "/legacy/data/{host}"),
    MappingRule("deep", Match(dns="deep01.corp.example.com"), "/legacy/deep"),
]


@pytest.fixture
def now(enterprise_pki: EnterprisePki) -> datetime:
    """The time of the attempt: after the (session-wide) enterprise PKI was issued."""
    return datetime.now(UTC)


@pytest.fixture
def attestor(enterprise_pki: EnterprisePki) -> X509PopAttestor:
    trust = LegacyTrust(
        [TrustAnchor("corp", load_certificates(enterprise_pki.root.read_bytes(), "root"))],
        load_crls(enterprise_pki.crl.read_bytes(), "crl"),
    )
    return X509PopAttestor(TD, lambda: trust, lambda: RULES)


def prove(attestor: X509PopAttestor, host: HostFiles, now: datetime) -> str:
    nonce = attestor.challenge(host.chain.read_bytes(), now)
    key = load_pem_private_key(host.key.read_bytes(), None)
    return str(attestor.attest(encode_response(nonce, sign_challenge(key, nonce)), now))  # type: ignore[arg-type]


def test_ec_and_rsa_hosts_get_their_mapped_agent_ids(
    attestor: X509PopAttestor, enterprise_pki: EnterprisePki, now: datetime
) -> None:
    web, db = prove(attestor, enterprise_pki.web, now), prove(attestor, enterprise_pki.db, now)
    assert web == "spiffe://example.org/trustmesh/agent/x509pop/legacy/payments/web01"
    assert db == "spiffe://example.org/trustmesh/agent/x509pop/legacy/data/db01"


@pytest.mark.parametrize(
    ("host", "reason"),
    REFUSED_HOSTS,
)
def test_refused_chains_say_which_check_failed(
    attestor: X509PopAttestor, enterprise_pki: EnterprisePki, host: str, reason: str, now: datetime
) -> None:
    with pytest.raises(NotAuthorized, match=f"^{reason}: "):
        attestor.challenge(getattr(enterprise_pki, host).chain.read_bytes(), now)


def test_a_signature_by_another_key_is_refused(
    attestor: X509PopAttestor, enterprise_pki: EnterprisePki, now: datetime
) -> None:
    nonce = attestor.challenge(enterprise_pki.web.chain.read_bytes(), now)
    other = load_pem_private_key(enterprise_pki.revoked.key.read_bytes(), None)
    with pytest.raises(NotAuthorized, match="proof of possession failed"):
        attestor.attest(encode_response(nonce, sign_challenge(other, nonce)), now)  # type: ignore[arg-type]


def test_a_nonce_works_once_and_not_after_it_expired(
    attestor: X509PopAttestor, enterprise_pki: EnterprisePki, now: datetime
) -> None:
    key = load_pem_private_key(enterprise_pki.web.key.read_bytes(), None)
    nonce = attestor.challenge(enterprise_pki.web.chain.read_bytes(), now)
    response = encode_response(nonce, sign_challenge(key, nonce))  # type: ignore[arg-type]
    attestor.attest(response, now)
    with pytest.raises(NotAuthorized, match="unknown, used or expired"):
        attestor.attest(response, now)
    late = attestor.challenge(enterprise_pki.web.chain.read_bytes(), now)
    with pytest.raises(NotAuthorized, match="unknown, used or expired"):
        attestor.attest(encode_response(late, sign_challenge(key, late)), now + CHALLENGE_TTL + timedelta(seconds=1))  # type: ignore[arg-type]


def test_a_host_no_rule_maps_is_refused_before_a_nonce_is_issued(enterprise_pki: EnterprisePki, now: datetime) -> None:
    trust = LegacyTrust([TrustAnchor("corp", load_certificates(enterprise_pki.root.read_bytes(), "root"))])
    bare = X509PopAttestor(TD, lambda: trust, list)
    with pytest.raises(NotAuthorized, match="no mapping rule matches"):
        bare.challenge(enterprise_pki.web.chain.read_bytes(), now)
