"""X509-SVID.md rule by rule: each leaf and signing-certificate rule has a certificate built to break
exactly that rule, and validation must refuse it; chains are verified against the bundle of the leaf's
own trust domain only."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID, NameOID, PublicKeyAlgorithmOID

from spiffe_core.bundle import Bundle
from spiffe_core.errors import X509SvidError
from spiffe_core.spiffe_id import SpiffeId, TrustDomain
from spiffe_core.x509_svid import (
    X509Svid,
    check_leaf_extensions,
    signing_cert_builder,
    validate_signing_cert,
    validate_x509_svid_leaf,
    verify_x509_svid,
    x509_svid_template,
)

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
TD = TrustDomain("example.org")
WEB = SpiffeId.parse("spiffe://example.org/web")
Builder = x509.CertificateBuilder


@dataclass(frozen=True)
class Ca:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey


def make_ca(
    trust_domain: TrustDomain = TD,
    issuer: Ca | None = None,
    path_length: int | None = None,
    name: str = "root",
) -> Ca:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} {trust_domain}")])
    builder = signing_cert_builder(
        trust_domain=trust_domain,
        public_key=key.public_key(),
        subject=subject,
        issuer_name=issuer.cert.subject if issuer else None,
        issuer_public_key=issuer.cert.public_key() if issuer else None,  # type: ignore[arg-type]
        not_before=NOW - timedelta(days=1),
        not_after=NOW + timedelta(days=30),
        path_length=path_length,
    )
    return Ca(builder.sign(issuer.key if issuer else key, hashes.SHA256()), key)


@pytest.fixture(scope="module")
def root() -> Ca:
    return make_ca()


def leaf_builder(ca: Ca, key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | None = None) -> Builder:
    key = key or ec.generate_private_key(ec.SECP256R1())
    return x509_svid_template(
        spiffe_id=WEB,
        public_key=key.public_key(),
        issuer=ca.cert,
        not_before=NOW - timedelta(minutes=1),
        not_after=NOW + timedelta(hours=1),
    ).builder


def raw_leaf(
    ca: Ca, *, uris: list[str], extensions: list[tuple[x509.ExtensionType, bool]], rsa_key: bool = False
) -> x509.Certificate:
    """A leaf built by hand, with exactly the given URI SANs and extensions (nothing added for us)."""
    key = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        if rsa_key
        else ec.generate_private_key(ec.SECP256R1())
    )
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - timedelta(minutes=1))
        .not_valid_after(NOW + timedelta(hours=1))
    )
    if uris:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(u) for u in uris]), critical=False
        )
    for value, critical in extensions:
        builder = builder.add_extension(value, critical=critical)
    return builder.sign(ca.key, hashes.SHA256())


def usage(**flags: bool) -> x509.KeyUsage:
    names = (
        "digital_signature",
        "content_commitment",
        "key_encipherment",
        "data_encipherment",
        "key_agreement",
        "key_cert_sign",
        "crl_sign",
        "encipher_only",
        "decipher_only",
    )
    return x509.KeyUsage(**{n: flags.get(n, False) for n in names})


GOOD_USAGE = (usage(digital_signature=True), True)
BOTH_EKU = (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), False)
NOT_CA = (x509.BasicConstraints(ca=False, path_length=None), True)


# --- leaf rules -------------------------------------------------------------------------------------


def test_a_leaf_from_the_template_follows_every_rule(root: Ca) -> None:
    assert validate_x509_svid_leaf(leaf_builder(root).sign(root.key, hashes.SHA256())) == WEB


def test_a_leaf_without_extended_key_usage_is_accepted(root: Ca) -> None:
    cert = raw_leaf(root, uris=[str(WEB)], extensions=[NOT_CA, GOOD_USAGE])
    assert validate_x509_svid_leaf(cert) == WEB


# One case per leaf rule: (URI SANs, other extensions, what the refusal says).
LEAF_RULE_BREAKS = [
    pytest.param([], [NOT_CA, GOOD_USAGE], "exactly one URI SAN, this one has 0", id="no-uri-san"),
    pytest.param(
        [str(WEB), "spiffe://example.org/db"],
        [NOT_CA, GOOD_USAGE],
        "exactly one URI SAN, this one has 2",
        id="two-uri-sans",
    ),
    pytest.param(
        ["https://example.org/web"],
        [NOT_CA, GOOD_USAGE],
        "URI SAN of the X509-SVID is not a SPIFFE ID",
        id="not-spiffe",
    ),
    pytest.param(["spiffe://example.org"], [NOT_CA, GOOD_USAGE], "has no path", id="trust-domain-id"),
    pytest.param(
        [str(WEB)], [(x509.BasicConstraints(ca=True, path_length=None), True), GOOD_USAGE], "cA=true", id="ca-true"
    ),
    pytest.param([str(WEB)], [NOT_CA], "has no keyUsage extension", id="no-key-usage"),
    pytest.param(
        [str(WEB)],
        [NOT_CA, (usage(key_agreement=True), True)],
        "lacks keyUsage digitalSignature",
        id="no-digital-signature",
    ),
    pytest.param(
        [str(WEB)],
        [NOT_CA, (usage(digital_signature=True, key_cert_sign=True), True)],
        "keyCertSign",
        id="key-cert-sign",
    ),
    pytest.param([str(WEB)], [NOT_CA, (usage(digital_signature=True, crl_sign=True), True)], "cRLSign", id="crl-sign"),
    pytest.param(
        [str(WEB)],
        [NOT_CA, (usage(digital_signature=True, key_encipherment=True), True)],
        "EC key with keyUsage keyEncipherment",
        id="ec-key-encipherment",
    ),
    pytest.param(
        [str(WEB)],
        [NOT_CA, GOOD_USAGE, (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False)],
        "without serverAuth",
        id="eku-without-server-auth",
    ),
    pytest.param(
        [str(WEB)],
        [NOT_CA, GOOD_USAGE, (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)],
        "without clientAuth",
        id="eku-without-client-auth",
    ),
]


@pytest.mark.parametrize(("uris", "extensions", "message"), LEAF_RULE_BREAKS)
def test_a_leaf_breaking_one_rule_is_refused(
    root: Ca, uris: list[str], extensions: list[tuple[x509.ExtensionType, bool]], message: str
) -> None:
    with pytest.raises(X509SvidError, match=message):
        validate_x509_svid_leaf(raw_leaf(root, uris=uris, extensions=extensions))


def test_an_rsa_leaf_with_key_agreement_is_refused(root: Ca) -> None:
    cert = raw_leaf(
        root,
        uris=[str(WEB)],
        extensions=[NOT_CA, (usage(digital_signature=True, key_agreement=True), True)],
        rsa_key=True,
    )
    with pytest.raises(X509SvidError, match="RSA key with keyUsage keyAgreement"):
        validate_x509_svid_leaf(cert)


def test_a_certificate_with_an_extension_twice_is_refused(root: Ca) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    twice = x509.Extension(ExtensionOID.BASIC_CONSTRAINTS, True, x509.BasicConstraints(ca=False, path_length=None))
    cert = x509.CertificateBuilder(
        issuer_name=root.cert.subject,
        subject_name=x509.Name([]),
        public_key=key.public_key(),
        serial_number=x509.random_serial_number(),
        not_valid_before=(NOW - timedelta(minutes=1)).replace(tzinfo=None),
        not_valid_after=(NOW + timedelta(hours=1)).replace(tzinfo=None),
        extensions=[twice, twice],
    ).sign(root.key, hashes.SHA256())
    with pytest.raises(X509SvidError, match="malformed extension"):
        validate_x509_svid_leaf(cert)


# --- the same rules on a template's objects (what issuance checks before signing) -------------------


def _as_objects(
    uris: list[str], extensions: list[tuple[x509.ExtensionType, bool]]
) -> list[x509.Extension[x509.ExtensionType]]:
    san = x509.SubjectAlternativeName([x509.UniformResourceIdentifier(u) for u in uris])
    objects = [x509.Extension(san.oid, False, san)] if uris else []
    return objects + [x509.Extension(value.oid, critical, value) for value, critical in extensions]  # type: ignore[misc]


@pytest.mark.parametrize(("uris", "extensions", "message"), LEAF_RULE_BREAKS)
def test_extension_objects_breaking_one_rule_are_refused(
    uris: list[str], extensions: list[tuple[x509.ExtensionType, bool]], message: str
) -> None:
    with pytest.raises(X509SvidError, match=message):
        check_leaf_extensions(_as_objects(uris, extensions), ec_key=True)


def test_extension_objects_with_key_agreement_for_an_rsa_key_are_refused() -> None:
    objects = _as_objects([str(WEB)], [NOT_CA, (usage(digital_signature=True, key_agreement=True), True)])
    with pytest.raises(X509SvidError, match="RSA key with keyUsage keyAgreement"):
        check_leaf_extensions(objects, ec_key=False)


def test_extension_objects_with_an_extension_twice_are_refused() -> None:
    with pytest.raises(X509SvidError, match="twice"):
        check_leaf_extensions(_as_objects([str(WEB)], [NOT_CA, GOOD_USAGE, NOT_CA]), ec_key=True)


@pytest.mark.parametrize("rsa_key", [False, True], ids=["ec", "rsa"])
def test_a_template_holds_exactly_the_extensions_its_signed_leaf_carries(root: Ca, rsa_key: bool) -> None:
    key = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        if rsa_key
        else ec.generate_private_key(ec.SECP256R1())
    )
    template = x509_svid_template(
        spiffe_id=WEB,
        public_key=key.public_key(),
        issuer=root.cert,
        not_before=NOW - timedelta(minutes=1),
        not_after=NOW + timedelta(hours=1),
        dns_names=["web.example.org"],
    )
    leaf = template.builder.sign(root.key, hashes.SHA256())
    assert list(leaf.extensions) == list(template.extensions)
    assert template.ec_key is (leaf.public_key_algorithm_oid == PublicKeyAlgorithmOID.EC_PUBLIC_KEY)
    assert template.validate() == validate_x509_svid_leaf(leaf) == WEB


# --- templates ----------------------------------------------------------------------------------------


def test_ec_leaf_template_has_critical_key_usage_with_key_agreement_and_not_key_encipherment(root: Ca) -> None:
    cert = leaf_builder(root).sign(root.key, hashes.SHA256())
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical
    assert (ku.value.digital_signature, ku.value.key_agreement, ku.value.key_encipherment) == (True, True, False)


def test_rsa_leaf_template_has_key_encipherment_and_not_key_agreement(root: Ca) -> None:
    cert = leaf_builder(root, rsa.generate_private_key(public_exponent=65537, key_size=2048)).sign(
        root.key, hashes.SHA256()
    )
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert (ku.digital_signature, ku.key_encipherment, ku.key_agreement) == (True, True, False)


def test_leaf_template_carries_both_ekus_ski_and_the_issuers_ski_as_aki(root: Ca) -> None:
    cert = leaf_builder(root).sign(root.key, hashes.SHA256())
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    issuer_ski = root.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == issuer_ski
    assert cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    assert cert.serial_number.bit_length() > 64


def test_leaf_template_caps_not_after_at_the_issuers_not_after(root: Ca) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = x509_svid_template(
        spiffe_id=WEB,
        public_key=key.public_key(),
        issuer=root.cert,
        not_before=NOW,
        not_after=NOW + timedelta(days=365),
    ).builder.sign(root.key, hashes.SHA256())
    assert cert.not_valid_after_utc == root.cert.not_valid_after_utc


def test_leaf_template_refuses_an_invalid_dns_name(root: Ca) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(X509SvidError, match="is not a valid hostname"):
        x509_svid_template(
            spiffe_id=WEB,
            public_key=key.public_key(),
            issuer=root.cert,
            not_before=NOW,
            not_after=NOW,
            dns_names=["bad host"],
        )


# --- signing certificates --------------------------------------------------------------------------


def raw_ca(root: Ca, extensions: list[tuple[x509.ExtensionType, bool]]) -> x509.Certificate:
    return raw_ca_with_key(root, extensions).cert


def raw_ca_with_key(root: Ca, extensions: list[tuple[x509.ExtensionType, bool]]) -> Ca:
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "broken CA")]))
        .issuer_name(root.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - timedelta(days=1))
        .not_valid_after(NOW + timedelta(days=1))
    )
    for value, critical in extensions:
        builder = builder.add_extension(value, critical=critical)
    return Ca(builder.sign(root.key, hashes.SHA256()), key)


CA_TRUE = (x509.BasicConstraints(ca=True, path_length=None), True)
CA_USAGE = (usage(digital_signature=True, key_cert_sign=True, crl_sign=True), True)


def test_a_signing_certificate_from_the_template_names_its_trust_domain(root: Ca) -> None:
    assert validate_signing_cert(root.cert) == TD


def test_a_signing_certificate_without_a_uri_san_is_accepted(root: Ca) -> None:
    assert validate_signing_cert(raw_ca(root, [CA_TRUE, CA_USAGE])) is None


@pytest.mark.parametrize(
    ("extensions", "message"),
    [
        pytest.param([NOT_CA, CA_USAGE], "must have cA=true", id="ca-false"),
        pytest.param([CA_USAGE], "must have cA=true", id="no-basic-constraints"),
        pytest.param(
            [CA_TRUE, (usage(digital_signature=True), True)], "lacks keyUsage keyCertSign", id="no-key-cert-sign"
        ),
        pytest.param(
            [CA_TRUE, CA_USAGE, (x509.SubjectAlternativeName([x509.UniformResourceIdentifier(str(WEB))]), False)],
            "has a path",
            id="uri-with-path",
        ),
    ],
)
def test_a_signing_certificate_breaking_one_rule_is_refused(
    root: Ca, extensions: list[tuple[x509.ExtensionType, bool]], message: str
) -> None:
    with pytest.raises(X509SvidError, match=message):
        validate_signing_cert(raw_ca(root, extensions))


# --- chain verification ----------------------------------------------------------------------------


class Bundles:
    def __init__(self, *bundles: Bundle) -> None:
        self._bundles = {b.trust_domain: b for b in bundles}

    def get_bundle_for_trust_domain(self, trust_domain: TrustDomain) -> Bundle | None:
        return self._bundles.get(trust_domain)


def signed(builder: Builder, ca: Ca) -> x509.Certificate:
    return builder.sign(ca.key, hashes.SHA256())


def test_root_to_leaf_verifies(root: Ca) -> None:
    leaf = signed(leaf_builder(root), root)
    spiffe_id, path = verify_x509_svid([leaf], Bundle(TD, (root.cert,)), NOW)
    assert spiffe_id == WEB
    assert path == (leaf, root.cert)


def test_root_to_intermediate_to_leaf_verifies(root: Ca) -> None:
    intermediate = make_ca(issuer=root, name="intermediate")
    leaf = signed(leaf_builder(intermediate), intermediate)
    assert verify_x509_svid([leaf, intermediate.cert], Bundle(TD, (root.cert,)), NOW)[0] == WEB


@pytest.mark.parametrize(
    ("at", "fragment"),
    [
        pytest.param(NOW + timedelta(hours=2), "does not chain", id="expired"),
        pytest.param(NOW - timedelta(hours=2), "does not chain", id="not-yet-valid"),
    ],
)
def test_a_leaf_outside_its_validity_is_refused(root: Ca, at: datetime, fragment: str) -> None:
    with pytest.raises(X509SvidError, match=fragment):
        verify_x509_svid([signed(leaf_builder(root), root)], Bundle(TD, (root.cert,)), at)


def test_a_leaf_signed_by_a_foreign_ca_is_refused(root: Ca) -> None:
    stranger = make_ca(name="stranger")
    with pytest.raises(X509SvidError, match=r"does not chain to the bundle of example\.org"):
        verify_x509_svid([signed(leaf_builder(stranger), stranger)], Bundle(TD, (root.cert,)), NOW)


def test_no_bundle_for_the_leafs_trust_domain_is_refused(root: Ca) -> None:
    with pytest.raises(X509SvidError, match=r"no X\.509 bundle for trust domain example\.org"):
        verify_x509_svid([signed(leaf_builder(root), root)], Bundles(), NOW)


def test_the_signer_in_another_trust_domains_bundle_does_not_count(root: Ca) -> None:
    other_td = TrustDomain("other.org")
    signer = make_ca(trust_domain=other_td, name="other")
    leaf = signed(leaf_builder(signer), signer)  # claims spiffe://example.org/web
    source = Bundles(Bundle(other_td, (signer.cert,)), Bundle(TD, (root.cert,)))
    with pytest.raises(X509SvidError, match=r"does not chain to the bundle of example\.org"):
        verify_x509_svid([leaf], source, NOW)


def test_an_intermediate_without_key_cert_sign_is_refused(root: Ca) -> None:
    bad = raw_ca_with_key(root, [CA_TRUE, (usage(digital_signature=True), True)])
    leaf = raw_leaf(bad, uris=[str(WEB)], extensions=[NOT_CA, GOOD_USAGE])
    with pytest.raises(X509SvidError, match="lacks keyUsage keyCertSign"):
        verify_x509_svid([leaf, bad.cert], Bundle(TD, (root.cert,)), NOW)


def test_a_path_longer_than_the_roots_path_length_is_refused() -> None:
    strict_root = make_ca(path_length=0, name="strict")
    intermediate = make_ca(issuer=strict_root, name="intermediate")
    leaf = signed(leaf_builder(intermediate), intermediate)
    with pytest.raises(X509SvidError, match="does not chain"):
        verify_x509_svid([leaf, intermediate.cert], Bundle(TD, (strict_root.cert,)), NOW)


def test_parse_pem_refuses_a_key_that_does_not_match_the_leaf(root: Ca) -> None:
    leaf = signed(leaf_builder(root), root)
    other = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with pytest.raises(X509SvidError, match="does not match the leaf"):
        X509Svid.parse_pem(leaf.public_bytes(serialization.Encoding.PEM), other)


def test_openssl_accepts_a_root_intermediate_leaf_chain_built_by_the_templates(root: Ca, tmp_path: Path) -> None:
    intermediate = make_ca(issuer=root, name="intermediate")
    leaf = x509_svid_template(
        spiffe_id=WEB,
        public_key=ec.generate_private_key(ec.SECP256R1()).public_key(),
        issuer=intermediate.cert,
        not_before=datetime.now(UTC) - timedelta(minutes=1),
        not_after=datetime.now(UTC) + timedelta(hours=1),
    ).builder
    result = subprocess.run(
        [
            "openssl",
            "verify",
            "-CAfile",
            str(_write(tmp_path / "root.pem", root.cert)),
            "-untrusted",
            str(_write(tmp_path / "inter.pem", intermediate.cert)),
            str(_write(tmp_path / "leaf.pem", signed(leaf, intermediate))),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def _write(path: Path, cert: x509.Certificate) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path
