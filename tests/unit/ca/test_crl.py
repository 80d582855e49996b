"""CRL building (DESIGN §3 "Leaf revocation → signed CRL per authority", RFC 5280 §5), checked by
cryptography and by ``openssl verify``."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from ca.authority import authority_id_for
from ca.crl import REASONS, RevokedSerial, build_crl, crl_number, parse_reason
from ca.signing import sign
from ca.upstream import CaSubject, DiskUpstream, SelfSignedUpstream
from spiffe_core.errors import InvalidArgument
from spiffe_core.keys import KeyType, PrivateKey, generate_private_key
from spiffe_core.spiffe_id import SpiffeId, TrustDomain
from spiffe_core.x509_svid import x509_svid_template

TD = TrustDomain("example.org")
WEB = SpiffeId.parse("spiffe://example.org/web")
# openssl checks validity against the real clock, so the PKI here lives around the real now.
NOW = datetime.now(UTC).replace(microsecond=0)


@dataclass(frozen=True, slots=True)
class Ca:
    cert: x509.Certificate
    key: PrivateKey = field(repr=False)


def self_signed_ca(key_type: KeyType = KeyType.EC_P256) -> Ca:
    key = generate_private_key(key_type)
    cert, _ = SelfSignedUpstream().mint_x509_ca(
        private_key=key,
        trust_domain=TD,
        subject=CaSubject().name_for(TD, authority_id_for(key.public_key())),
        not_before=NOW - timedelta(hours=1),
        not_after=NOW + timedelta(days=1),
    )
    return Ca(cert, key)


def intermediate_of(root: Ca) -> Ca:
    key = generate_private_key(KeyType.EC_P256)
    cert, chain = DiskUpstream(root.cert, root.key, ()).mint_x509_ca(
        private_key=key,
        trust_domain=TD,
        subject=CaSubject().name_for(TD, authority_id_for(key.public_key())),
        not_before=NOW - timedelta(hours=1),
        not_after=NOW + timedelta(hours=12),
    )
    assert chain == (root.cert,)
    return Ca(cert, key)


def ca_without_crl_sign() -> Ca:
    key = generate_private_key(KeyType.EC_P256)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "CA without cRLSign")])
    key_cert_sign_only = x509.KeyUsage(
        digital_signature=False,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(NOW - timedelta(hours=1))
        .not_valid_after(NOW + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(key_cert_sign_only, critical=True)
    )
    return Ca(sign(builder, key), key)


def leaf_of(ca: Ca) -> x509.Certificate:
    builder = x509_svid_template(
        spiffe_id=WEB,
        public_key=generate_private_key(KeyType.EC_P256).public_key(),
        issuer=ca.cert,
        not_before=NOW - timedelta(minutes=10),
        not_after=NOW + timedelta(hours=1),
    ).builder
    return sign(builder, ca.key)


def crl_of(ca: Ca, revoked: tuple[RevokedSerial, ...] = (), number: int = 7) -> x509.CertificateRevocationList:
    return build_crl(
        issuer=ca.cert,
        issuer_key=ca.key,
        revoked=revoked,
        this_update=NOW - timedelta(minutes=1),
        next_update=NOW + timedelta(hours=1),
        number=number,
    )


def revoked(cert: x509.Certificate, reason: x509.ReasonFlags | None = x509.ReasonFlags.key_compromise) -> RevokedSerial:
    return RevokedSerial(cert.serial_number, NOW - timedelta(minutes=2), reason)


@pytest.fixture(scope="module")
def root() -> Ca:
    return self_signed_ca()


# --- the CRL itself ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key_type", "digest"),
    [
        pytest.param(KeyType.EC_P256, hashes.SHA256, id="ec-p256"),
        pytest.param(KeyType.EC_P384, hashes.SHA384, id="ec-p384"),
        pytest.param(KeyType.RSA_2048, hashes.SHA256, id="rsa-2048"),
    ],
)
def test_crl_verifies_with_the_issuer_key_and_the_digest_the_key_calls_for(
    key_type: KeyType, digest: type[hashes.HashAlgorithm]
) -> None:
    ca = self_signed_ca(key_type)
    crl = crl_of(ca)
    assert crl.is_signature_valid(ca.key.public_key())
    assert isinstance(crl.signature_hash_algorithm, digest)


def test_crl_does_not_verify_with_another_key(root: Ca) -> None:
    assert not crl_of(root).is_signature_valid(generate_private_key(KeyType.EC_P256).public_key())


def test_crl_names_the_issuer_and_its_update_times(root: Ca) -> None:
    crl = crl_of(root)
    assert crl.issuer == root.cert.subject
    assert (crl.last_update_utc, crl.next_update_utc) == (NOW - timedelta(minutes=1), NOW + timedelta(hours=1))


def test_crl_carries_its_number_in_a_non_critical_extension(root: Ca) -> None:
    extension = crl_of(root, number=1_790_000_000_123_456).extensions.get_extension_for_class(x509.CRLNumber)
    assert (extension.value.crl_number, extension.critical) == (1_790_000_000_123_456, False)


def test_crl_authority_key_identifier_is_the_issuer_subject_key_identifier(root: Ca) -> None:
    aki = crl_of(root).extensions.get_extension_for_class(x509.AuthorityKeyIdentifier)
    ski = root.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert (aki.value.key_identifier, aki.critical) == (ski.digest, False)
    assert aki.value.key_identifier == x509.SubjectKeyIdentifier.from_public_key(root.key.public_key()).digest


def test_crl_lists_each_serial_with_its_revocation_date_and_reason(root: Ca) -> None:
    entries = (
        RevokedSerial(0xA1, NOW - timedelta(minutes=3), x509.ReasonFlags.key_compromise),
        RevokedSerial(0xB2, NOW - timedelta(minutes=2), x509.ReasonFlags.superseded),
        RevokedSerial((1 << 159) - 1, NOW - timedelta(minutes=1), x509.ReasonFlags.privilege_withdrawn),
    )
    crl = crl_of(root, entries)
    listed = {
        r.serial_number: (r.revocation_date_utc, r.extensions.get_extension_for_class(x509.CRLReason).value.reason)
        for r in crl
    }
    assert listed == {e.serial: (e.revoked_at, e.reason) for e in entries}


@pytest.mark.parametrize(
    "reason", [pytest.param(None, id="none"), pytest.param(x509.ReasonFlags.unspecified, id="unspecified")]
)
def test_crl_entry_without_a_known_reason_has_no_reason_code(root: Ca, reason: x509.ReasonFlags | None) -> None:
    entry = crl_of(
        root, (RevokedSerial(0xC3, NOW - timedelta(minutes=1), reason),)
    ).get_revoked_certificate_by_serial_number(0xC3)
    assert entry is not None
    assert list(entry.extensions) == []


def test_crl_with_nothing_revoked_is_empty(root: Ca) -> None:
    assert len(crl_of(root)) == 0


def test_refuses_a_key_that_is_not_the_issuer_key(root: Ca) -> None:
    with pytest.raises(InvalidArgument) as raised:
        build_crl(
            issuer=root.cert,
            issuer_key=generate_private_key(KeyType.EC_P256),
            revoked=(),
            this_update=NOW,
            next_update=NOW + timedelta(hours=1),
            number=1,
        )
    assert str(raised.value) == (
        f"the key given to sign the CRL of {root.cert.subject.rfc4514_string()!r} is not that certificate's key"
    )


def test_refuses_next_update_not_after_this_update(root: Ca) -> None:
    with pytest.raises(InvalidArgument) as raised:
        build_crl(issuer=root.cert, issuer_key=root.key, revoked=(), this_update=NOW, next_update=NOW, number=1)
    assert str(raised.value) == f"CRL nextUpdate {NOW.isoformat()} is not after thisUpdate {NOW.isoformat()}"


def test_refuses_an_issuer_whose_key_usage_forbids_crl_signing() -> None:
    with pytest.raises(InvalidArgument) as raised:
        crl_of(ca_without_crl_sign())
    assert str(raised.value) == (
        "certificate 'CN=CA without cRLSign' has a key usage without cRLSign, so relying parties would refuse its "
        "CRLs; sign them with a CA certificate whose key usage includes cRLSign"
    )


# --- CRL numbers and reasons ------------------------------------------------------------------------


def test_crl_number_is_microseconds_since_the_epoch() -> None:
    assert crl_number(datetime(1970, 1, 1, 0, 0, 1, 5, tzinfo=UTC)) == 1_000_005


def test_crl_number_grows_with_time_whatever_the_time_zone() -> None:
    later = (NOW + timedelta(microseconds=1)).astimezone(timezone(timedelta(hours=-5)))
    assert crl_number(later) == crl_number(NOW) + 1


def test_crl_number_refuses_a_naive_time() -> None:
    with pytest.raises(InvalidArgument, match="has no time zone"):
        crl_number(datetime(2026, 1, 1))  # naive on purpose


@pytest.mark.parametrize(
    ("word", "flag"),
    [pytest.param(word, flag, id=word) for word, flag in REASONS.items()],
)
def test_parses_each_cli_reason_word(word: str, flag: x509.ReasonFlags) -> None:
    assert parse_reason(word) is flag


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("keyCompromise", id="rfc-camel-case"),
        pytest.param("key_compromise", id="python-name"),
        pytest.param("certificate-hold", id="hold"),
        pytest.param("", id="empty"),
    ],
)
def test_refuses_an_unknown_reason_and_lists_the_valid_ones(text: str) -> None:
    with pytest.raises(InvalidArgument) as raised:
        parse_reason(text)
    assert str(raised.value) == (
        f"revocation reason {text!r} is not known; use one of: unspecified, key-compromise, ca-compromise, "
        "affiliation-changed, superseded, cessation-of-operation, privilege-withdrawn"
    )


# --- the upstream root's CRL ------------------------------------------------------------------------


def test_disk_upstream_that_is_the_root_signs_the_crl_of_its_intermediates(root: Ca) -> None:
    intermediate = intermediate_of(root)
    upstream = DiskUpstream(root.cert, root.key, ())
    crl = upstream.root_crl(
        root.cert, (revoked(intermediate.cert),), NOW - timedelta(minutes=1), NOW + timedelta(hours=1), 9
    )
    assert upstream.crl_capable
    assert crl is not None
    assert crl.issuer == root.cert.subject
    assert crl.is_signature_valid(root.key.public_key())
    assert crl.get_revoked_certificate_by_serial_number(intermediate.cert.serial_number) is not None


def test_disk_upstream_below_another_ca_makes_no_crl(root: Ca) -> None:
    enterprise_intermediate = intermediate_of(root)
    upstream = DiskUpstream(enterprise_intermediate.cert, enterprise_intermediate.key, (root.cert,))
    assert not upstream.crl_capable
    for anchor in (root.cert, enterprise_intermediate.cert):
        assert upstream.root_crl(anchor, (), NOW - timedelta(minutes=1), NOW + timedelta(hours=1), 9) is None


def test_disk_upstream_makes_no_crl_for_a_root_it_no_longer_holds(root: Ca) -> None:
    replaced = self_signed_ca()
    upstream = DiskUpstream(root.cert, root.key, ())
    assert upstream.root_crl(replaced.cert, (), NOW - timedelta(minutes=1), NOW + timedelta(hours=1), 9) is None


def test_disk_upstream_whose_key_usage_forbids_crl_signing_makes_no_crl() -> None:
    ca = ca_without_crl_sign()
    upstream = DiskUpstream(ca.cert, ca.key, ())
    assert not upstream.crl_capable
    assert upstream.root_crl(ca.cert, (), NOW - timedelta(minutes=1), NOW + timedelta(hours=1), 9) is None


# --- openssl accepts what we sign -------------------------------------------------------------------


def _pem(path: Path, *objects: x509.Certificate | x509.CertificateRevocationList) -> str:
    path.write_bytes(b"".join(o.public_bytes(serialization.Encoding.PEM) for o in objects))
    return str(path)


def _openssl_verify(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["openssl", "verify", *args], capture_output=True, text=True, check=False)


def test_openssl_refuses_a_revoked_leaf(root: Ca, tmp_path: Path) -> None:
    leaf = leaf_of(root)
    result = _openssl_verify(
        "-crl_check",
        "-CAfile",
        _pem(tmp_path / "ca.pem", root.cert),
        "-CRLfile",
        _pem(tmp_path / "crl.pem", crl_of(root, (revoked(leaf),))),
        _pem(tmp_path / "leaf.pem", leaf),
    )
    assert result.returncode != 0
    assert "certificate revoked" in result.stdout + result.stderr


def test_openssl_accepts_a_leaf_the_crl_does_not_list(root: Ca, tmp_path: Path) -> None:
    other = leaf_of(root)
    result = _openssl_verify(
        "-crl_check",
        "-CAfile",
        _pem(tmp_path / "ca.pem", root.cert),
        "-CRLfile",
        _pem(tmp_path / "crl.pem", crl_of(root, (revoked(other),))),
        _pem(tmp_path / "leaf.pem", leaf_of(root)),
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _verify_chain(
    tmp_path: Path, root: Ca, intermediate: Ca, leaf: x509.Certificate, crls: tuple[x509.CertificateRevocationList, ...]
) -> subprocess.CompletedProcess[str]:
    return _openssl_verify(
        "-crl_check_all",
        "-CAfile",
        _pem(tmp_path / "root.pem", root.cert),
        "-untrusted",
        _pem(tmp_path / "intermediate.pem", intermediate.cert),
        "-CRLfile",
        _pem(tmp_path / "crls.pem", *crls),
        _pem(tmp_path / "leaf.pem", leaf),
    )


def _root_crl(root: Ca, revoked: tuple[RevokedSerial, ...] = ()) -> x509.CertificateRevocationList:
    crl = DiskUpstream(root.cert, root.key, ()).root_crl(
        root.cert, revoked, NOW - timedelta(minutes=1), NOW + timedelta(hours=1), crl_number(NOW)
    )
    assert crl is not None
    return crl


def test_openssl_checking_every_crl_accepts_the_chain_with_both_crls(root: Ca, tmp_path: Path) -> None:
    intermediate = intermediate_of(root)
    result = _verify_chain(tmp_path, root, intermediate, leaf_of(intermediate), (_root_crl(root), crl_of(intermediate)))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    "missing", [pytest.param("root", id="no-root-crl"), pytest.param("intermediate", id="no-intermediate-crl")]
)
def test_openssl_checking_every_crl_refuses_the_chain_with_one_crl_missing(
    root: Ca, tmp_path: Path, missing: str
) -> None:
    intermediate = intermediate_of(root)
    crls = (crl_of(intermediate),) if missing == "root" else (_root_crl(root),)
    result = _verify_chain(tmp_path, root, intermediate, leaf_of(intermediate), crls)
    assert result.returncode != 0
    assert "unable to get certificate CRL" in result.stdout + result.stderr


def test_openssl_refuses_a_leaf_below_a_revoked_intermediate(root: Ca, tmp_path: Path) -> None:
    intermediate = intermediate_of(root)
    crls = (_root_crl(root, (revoked(intermediate.cert),)), crl_of(intermediate))
    result = _verify_chain(tmp_path, root, intermediate, leaf_of(intermediate), crls)
    assert result.returncode != 0
    assert "certificate revoked" in result.stdout + result.stderr
