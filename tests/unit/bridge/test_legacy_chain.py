"""bridge/legacy_chain.py: an enterprise chain is accepted only to a configured anchor, in date, not
revoked, within the length and key limits — and every refusal says which check failed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from bridge.legacy_chain import ChainLimits, LegacyTrust, TrustAnchor, load_certificates, load_crls
from spiffe_core.errors import NotAuthorized
from tests.support.enterprise_pki import EnterprisePki, HostFiles, Issuer, issue_host


def trust(pki: EnterprisePki, **limits: int) -> LegacyTrust:
    anchor = TrustAnchor("corp", load_certificates(pki.root.read_bytes(), "root"))
    return LegacyTrust([anchor], load_crls(pki.crl.read_bytes(), "crl"), ChainLimits(**limits))


def chain(host: HostFiles) -> tuple[x509.Certificate, ...]:
    return load_certificates(host.chain.read_bytes(), host.name)


def test_host_chains_verify_to_the_named_anchor(enterprise_pki: EnterprisePki) -> None:
    for host in (enterprise_pki.web, enterprise_pki.db):
        verified = trust(enterprise_pki).verify(chain(host), datetime.now(UTC))
        assert verified.anchor == "corp"
        assert verified.chain[-1].subject.rfc4514_string() == "CN=Example Corp Root CA"


@pytest.mark.parametrize(
    ("host", "reason"),
    [
        ("expired", "expired: CN=old01.payments.corp.example.com"),
        ("revoked", "revoked: CN=stolen01.payments.corp.example.com"),
        ("untrusted", "untrusted CA: CN=web01.payments.corp.example.com"),
        ("long_chain", "chain too long: 5 certificates presented, at most 4 accepted"),
    ],
)
def test_bad_chains_are_refused_saying_which_check_failed(
    enterprise_pki: EnterprisePki, host: str, reason: str
) -> None:
    with pytest.raises(NotAuthorized, match=reason):
        trust(enterprise_pki).verify(chain(getattr(enterprise_pki, host)), datetime.now(UTC))


def test_a_stale_crl_refuses_what_it_covers(enterprise_pki: EnterprisePki) -> None:
    later = datetime.now(UTC) + timedelta(days=8)  # the fixture's CRL is fresh for a week
    with pytest.raises(NotAuthorized, match="revocation unknown: the CRL of CN=Example Corp Issuing CA 1 is stale"):
        trust(enterprise_pki).verify(chain(enterprise_pki.web), later)


def test_an_rsa_key_over_the_limit_is_refused_before_any_signature_is_checked(enterprise_pki: EnterprisePki) -> None:
    root = load_certificates(enterprise_pki.root.read_bytes(), "root")[0]
    key = load_pem_private_key((enterprise_pki.directory / "root.key").read_bytes(), None)
    big = rsa.generate_private_key(public_exponent=65537, key_size=3072)
    cert, _ = issue_host(Issuer(root, key), "big.corp.example.com", ("big.corp.example.com",), key=big)
    with pytest.raises(NotAuthorized, match=r"key too large: .* 3072-bit RSA key; at most 2048 bits"):
        trust(enterprise_pki, max_rsa_bits=2048).verify([cert], datetime.now(UTC))


def test_reading_certificates_skips_crl_blocks(enterprise_pki: EnterprisePki) -> None:
    """What agents of releases before legacy CRLs do with a set that holds them (docs/bridge.md,
    "Revocation"): serve the roots without the CRLs, rather than refuse the CA's update."""
    certs = load_certificates(enterprise_pki.root.read_bytes() + enterprise_pki.crl.read_bytes(), "corp.pem")

    assert [cert.subject.rfc4514_string() for cert in certs] == ["CN=Example Corp Root CA"]
