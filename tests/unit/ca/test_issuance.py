"""X509-SVID and JWT-SVID issuance: what is taken from the request, what from the CSR, and what is refused."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ca import issuance
from ca.authority import AuthoritySet, AuthorityState, JwtKey, X509Authority, authority_id_for, build_bundle
from ca.issuance import BACKDATE, JwtSvidRequest, TtlPolicy, X509SvidRequest, mint_jwt, sign_x509_svids
from ca.upstream import CaSubject, SelfSignedUpstream
from spiffe_core import x509_svid
from spiffe_core.errors import InvalidArgument, NoActiveAuthority, X509SvidError
from spiffe_core.jwt_svid import validate_jwt_svid
from spiffe_core.keys import KeyType, generate_private_key
from spiffe_core.spiffe_id import SpiffeId, TrustDomain
from spiffe_core.x509_svid import validate_x509_svid_leaf, verify_x509_svid

TD = TrustDomain("example.org")
NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
POLICY = TtlPolicy(default=timedelta(hours=1), maximum=timedelta(hours=24))
WEB = SpiffeId.parse("spiffe://example.org/web")


def authorities(ca_ttl: timedelta = timedelta(days=7), state: AuthorityState = AuthorityState.ACTIVE) -> AuthoritySet:
    key = generate_private_key(KeyType.EC_P256)
    authority_id = authority_id_for(key.public_key())
    cert, chain = SelfSignedUpstream().mint_x509_ca(
        private_key=key,
        trust_domain=TD,
        subject=CaSubject().name_for(TD, authority_id),
        not_before=NOW - timedelta(minutes=1),
        not_after=NOW + ca_ttl,
    )
    x509_authority = X509Authority(authority_id, cert, key, state, chain)
    jwt_key = JwtKey("kid-1", generate_private_key(KeyType.EC_P256), state, NOW + ca_ttl, NOW - timedelta(minutes=1))
    bundle = build_bundle(TD, (x509_authority,), (jwt_key,), sequence=1, refresh_hint=300)
    return AuthoritySet(TD, (x509_authority,), (jwt_key,), bundle)


def csr(subject_cn: str = "", sans: list[x509.GeneralName] | None = None) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject_cn)] if subject_cn else [])
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


@pytest.fixture(scope="module")
def active() -> AuthoritySet:
    return authorities()


def test_issued_svid_carries_the_requested_id_and_verifies_against_the_bundle(active: AuthoritySet) -> None:
    (issued,) = sign_x509_svids([X509SvidRequest(csr(), WEB)], active, POLICY, NOW)
    assert validate_x509_svid_leaf(issued.leaf) == WEB
    spiffe_id, _ = verify_x509_svid(issued.cert_chain, active.bundle, NOW)
    assert spiffe_id == WEB


def test_identity_in_the_csr_is_ignored(active: AuthoritySet) -> None:
    request = X509SvidRequest(
        csr("admin", [x509.UniformResourceIdentifier("spiffe://example.org/admin"), x509.DNSName("evil.example")]),
        WEB,
    )
    (issued,) = sign_x509_svids([request], active, POLICY, NOW)
    sans = issued.leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.UniformResourceIdentifier) == [str(WEB)]
    assert sans.get_values_for_type(x509.DNSName) == []


def test_dns_names_come_from_the_request(active: AuthoritySet) -> None:
    (issued,) = sign_x509_svids([X509SvidRequest(csr(), WEB, ("web.example.org",))], active, POLICY, NOW)
    sans = issued.leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["web.example.org"]


def test_default_ttl_applies_and_not_before_is_backdated(active: AuthoritySet) -> None:
    (issued,) = sign_x509_svids([X509SvidRequest(csr(), WEB)], active, POLICY, NOW)
    assert issued.not_before == NOW - BACKDATE
    assert issued.not_after == NOW + POLICY.default


def test_not_after_is_capped_by_the_signing_authority() -> None:
    short_lived = authorities(ca_ttl=timedelta(minutes=30))
    (issued,) = sign_x509_svids([X509SvidRequest(csr(), WEB)], short_lived, POLICY, NOW)
    assert issued.not_after == short_lived.active_x509().not_after


def test_serials_are_random_and_distinct(active: AuthoritySet) -> None:
    issued = sign_x509_svids([X509SvidRequest(csr(), WEB) for _ in range(20)], active, POLICY, NOW)
    serials = {svid.serial for svid in issued}
    assert len(serials) == 20
    assert all(s.bit_length() > 64 for s in serials)


def test_ttl_over_the_maximum_is_refused(active: AuthoritySet) -> None:
    with pytest.raises(InvalidArgument, match=r"X509-SVID TTL 90000s is over the maximum of 86400s"):
        sign_x509_svids([X509SvidRequest(csr(), WEB, ttl=timedelta(seconds=90000))], active, POLICY, NOW)


def test_garbage_csr_is_refused(active: AuthoritySet) -> None:
    with pytest.raises(InvalidArgument, match=r"CSR is not a PKCS#10 certificate request"):
        sign_x509_svids([X509SvidRequest(b"\x30\x03\x02\x01\x00", WEB)], active, POLICY, NOW)


def test_csr_with_a_bad_signature_is_refused(active: AuthoritySet) -> None:
    der = bytearray(x509.load_pem_x509_csr(csr()).public_bytes(serialization.Encoding.DER))
    der[-5] ^= 0x01  # inside the signature value
    with pytest.raises(InvalidArgument, match="CSR has an invalid signature"):
        sign_x509_svids([X509SvidRequest(bytes(der), WEB)], active, POLICY, NOW)


def test_one_bad_request_fails_the_whole_batch_naming_it(active: AuthoritySet) -> None:
    batch = [X509SvidRequest(csr(), WEB), X509SvidRequest(b"garbage", WEB)]
    with pytest.raises(InvalidArgument, match=r"CSR #1 is not a PKCS#10"):
        sign_x509_svids(batch, active, POLICY, NOW)


def test_a_template_that_breaks_an_x509_svid_rule_signs_nothing(
    active: AuthoritySet, monkeypatch: pytest.MonkeyPatch
) -> None:
    server_only = x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH])
    monkeypatch.setattr(x509_svid, "_LEAF_EKU", x509.Extension(server_only.oid, False, server_only))
    signed: list[object] = []
    monkeypatch.setattr(issuance, "sign_all", lambda *args: signed.append(args))
    with pytest.raises(X509SvidError, match="without clientAuth"):
        sign_x509_svids([X509SvidRequest(csr(), WEB)], active, POLICY, NOW)
    assert signed == []


def test_id_of_another_trust_domain_is_refused(active: AuthoritySet) -> None:
    with pytest.raises(InvalidArgument, match=r"is not in trust domain example\.org"):
        sign_x509_svids([X509SvidRequest(csr(), SpiffeId.parse("spiffe://other.org/web"))], active, POLICY, NOW)


def test_no_active_authority_means_no_signing() -> None:
    prepared_only = authorities(state=AuthorityState.PREPARED)
    with pytest.raises(NoActiveAuthority, match=r"no active X\.509 authority"):
        sign_x509_svids([X509SvidRequest(csr(), WEB)], prepared_only, POLICY, NOW)


def test_an_expired_active_authority_signs_nothing(active: AuthoritySet) -> None:
    after_expiry = active.active_x509().not_after
    with pytest.raises(NoActiveAuthority, match="expired at"):
        sign_x509_svids([X509SvidRequest(csr(), WEB)], active, POLICY, after_expiry)
    with pytest.raises(NoActiveAuthority, match="expired at"):
        mint_jwt(JwtSvidRequest(WEB, ("payments",)), active, POLICY, after_expiry)


def test_jwt_svid_validates_against_the_bundle(active: AuthoritySet) -> None:
    token, expires_at = mint_jwt(JwtSvidRequest(WEB, ("payments",)), active, POLICY, NOW)
    svid = validate_jwt_svid(token, audience="payments", bundle_source=active.bundle, now=NOW)
    assert svid.spiffe_id == WEB
    assert expires_at == NOW + POLICY.default


def test_jwt_svid_needs_an_audience(active: AuthoritySet) -> None:
    with pytest.raises(InvalidArgument, match=re.escape("a JWT-SVID needs at least one audience (JWT-SVID.md §3.2)")):
        mint_jwt(JwtSvidRequest(WEB, ()), active, POLICY, NOW)


@pytest.mark.parametrize(
    ("audience", "message"),
    [
        pytest.param(
            ("x" * 1_000_000,), "audience #0 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx'… is 1000000 bytes long", id="huge"
        ),
        pytest.param(
            tuple(f"a{n}" for n in range(33)), "33 audiences requested; a JWT-SVID carries at most 32", id="many"
        ),
        pytest.param(("db", "a\tb"), "audience #1 'a\\tb' holds the non-printable character U+0009", id="control"),
    ],
)
def test_jwt_svid_audiences_follow_the_agents_rule(
    active: AuthoritySet, audience: tuple[str, ...], message: str
) -> None:
    with pytest.raises(InvalidArgument) as refused:
        mint_jwt(JwtSvidRequest(WEB, audience), active, POLICY, NOW)
    assert str(refused.value).startswith(message)
