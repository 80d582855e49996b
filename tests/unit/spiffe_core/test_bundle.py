"""SPIFFE bundles as JWK Sets (SPIFFE_Trust_Domain_and_Bundle.md §4, X509-SVID.md §6; DESIGN §2),
with py-spiffe reading what we write."""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID
from jwt.algorithms import ECAlgorithm

from spiffe_core.bundle import Bundle, JwtAuthority
from spiffe_core.errors import BundleError
from spiffe_core.keys import PrivateKey
from spiffe_core.spiffe_id import TrustDomain
from spiffe_core.x509_svid import signing_cert_builder
from tests.support.oracle import ask_pyspiffe

TD = TrustDomain("example.org")
NOW = datetime(2026, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Material:
    ec_ca: x509.Certificate
    rsa_ca: x509.Certificate
    ec_jwt: ec.EllipticCurvePrivateKey
    rsa_jwt: rsa.RSAPrivateKey


def self_signed_ca(key: PrivateKey, name: str) -> x509.Certificate:
    builder = signing_cert_builder(
        trust_domain=TD,
        public_key=key.public_key(),
        subject=x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, name)]),
        issuer_name=None,
        issuer_public_key=None,
        not_before=NOW,
        not_after=NOW + timedelta(days=7),
    )
    return builder.sign(key, hashes.SHA256())


@pytest.fixture(scope="module")
def material() -> Material:
    """RSA generation is slow: one set of keys and CA certificates for the whole module."""
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return Material(
        ec_ca=self_signed_ca(ec.generate_private_key(ec.SECP256R1()), "ec ca"),
        rsa_ca=self_signed_ca(rsa_key, "rsa ca"),
        ec_jwt=ec.generate_private_key(ec.SECP256R1()),
        rsa_jwt=rsa_key,
    )


@pytest.fixture(scope="module")
def bundle(material: Material) -> Bundle:
    return Bundle(
        TD,
        x509_authorities=(material.ec_ca, material.rsa_ca),
        jwt_authorities=(
            JwtAuthority("jwt-ec", material.ec_jwt.public_key()),
            JwtAuthority("jwt-rsa", material.rsa_jwt.public_key()),
        ),
        sequence=7,
        refresh_hint=300,
    )


def der_b64(cert: x509.Certificate) -> str:
    return base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()


def x509_entry(cert: x509.Certificate) -> dict[str, Any]:
    return {"kty": "EC", "use": "x509-svid", "x5c": [der_b64(cert)]}


def jwt_entry(key: ec.EllipticCurvePrivateKey, kid: str) -> dict[str, Any]:
    return {**ECAlgorithm.to_jwk(key.public_key(), as_dict=True), "use": "jwt-svid", "kid": kid}


def parse(doc: dict[str, Any]) -> Bundle:
    return Bundle.parse_jwks(TD, json.dumps(doc))


def exact(message: str) -> str:
    return "^" + re.escape(message) + "$"


# --- writing ---------------------------------------------------------------------------------------------


def test_jwks_round_trips_x509_and_jwt_authorities(bundle: Bundle) -> None:
    assert Bundle.parse_jwks(TD, bundle.to_json()) == bundle


@pytest.mark.parametrize("form", ["bytes", "str", "mapping"])
def test_parse_accepts_bytes_text_and_a_mapping(bundle: Bundle, form: str) -> None:
    text = bundle.to_json()
    data: Any = {"bytes": text.encode(), "str": text, "mapping": json.loads(text)}[form]
    assert Bundle.parse_jwks(TD, data) == bundle


def test_x509_entries_have_use_x509_svid_one_x5c_and_no_kid(bundle: Bundle, material: Material) -> None:
    entries = [k for k in bundle.to_jwks()["keys"] if k["use"] == "x509-svid"]
    assert [(sorted(e), e["x5c"]) for e in entries] == [
        (["crv", "kty", "use", "x", "x5c", "y"], [der_b64(material.ec_ca)]),
        (["e", "kty", "n", "use", "x5c"], [der_b64(material.rsa_ca)]),
    ]


def test_jwt_entries_have_use_jwt_svid_and_kid(bundle: Bundle) -> None:
    entries = [k for k in bundle.to_jwks()["keys"] if k["use"] == "jwt-svid"]
    assert [(e["kid"], e["kty"], "x5c" in e) for e in entries] == [("jwt-ec", "EC", False), ("jwt-rsa", "RSA", False)]


def test_jwks_carries_sequence_and_refresh_hint(bundle: Bundle) -> None:
    doc = bundle.to_jwks()
    assert (doc["spiffe_sequence"], doc["spiffe_refresh_hint"]) == (7, 300)


def test_jwks_omits_an_unset_refresh_hint() -> None:
    assert Bundle(TD).to_jwks() == {"keys": [], "spiffe_sequence": 0}


def test_pem_export_holds_every_x509_authority(bundle: Bundle, material: Material) -> None:
    assert x509.load_pem_x509_certificates(bundle.x509_authorities_pem()) == [material.ec_ca, material.rsa_ca]


# --- reading ---------------------------------------------------------------------------------------------


def test_parse_keeps_sequence_and_refresh_hint(material: Material) -> None:
    parsed = parse({"keys": [], "spiffe_sequence": 2**40, "spiffe_refresh_hint": 60})
    assert (parsed.sequence, parsed.refresh_hint) == (2**40, 60)


def test_parse_without_sequence_or_refresh_hint_reads_zero_and_none() -> None:
    parsed = parse({"keys": []})
    assert (parsed.sequence, parsed.refresh_hint) == (0, None)


@pytest.mark.parametrize(
    "use",
    [pytest.param("X509-SVID", id="case-differs"), pytest.param("sig", id="sig"), pytest.param(None, id="missing")],
)
def test_parse_skips_keys_of_unknown_use(material: Material, use: str | None) -> None:
    entry = x509_entry(material.ec_ca)
    entry["use"] = use
    assert parse({"keys": [entry, jwt_entry(material.ec_jwt, "k1")]}).x509_authorities == ()


@pytest.mark.parametrize(
    "kty", [pytest.param("OKP", id="okp"), pytest.param("oct", id="oct"), pytest.param(None, id="missing")]
)
def test_parse_skips_keys_of_unknown_key_type(material: Material, kty: str | None) -> None:
    key = ed25519.Ed25519PrivateKey.generate().public_key().public_bytes_raw()
    entry = {"kty": kty, "crv": "Ed25519", "x": base64.urlsafe_b64encode(key).decode(), "use": "jwt-svid", "kid": "ed"}
    parsed = parse({"keys": [entry, jwt_entry(material.ec_jwt, "k1")]})
    assert [a.key_id for a in parsed.jwt_authorities] == ["k1"]


@pytest.mark.parametrize("x5c", [pytest.param(None, id="missing"), pytest.param([], id="empty")])
def test_parse_ignores_x509_entries_without_a_certificate(material: Material, x5c: list[str] | None) -> None:
    entry = x509_entry(material.ec_ca)
    entry.pop("x5c")
    if x5c is not None:
        entry["x5c"] = x5c
    assert parse({"keys": [entry, x509_entry(material.rsa_ca)]}).x509_authorities == (material.rsa_ca,)


def test_parse_uses_only_the_first_certificate_of_an_x5c_chain(material: Material) -> None:
    entry = x509_entry(material.ec_ca)
    entry["x5c"].append(der_b64(material.rsa_ca))
    assert parse({"keys": [entry]}).x509_authorities == (material.ec_ca,)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        pytest.param("{", "bundle is not valid JSON: ", id="not-json"),
        pytest.param("[]", "bundle is not a JSON object", id="array"),
        pytest.param("{}", "bundle has no 'keys' array; a SPIFFE bundle is a JWK Set", id="no-keys"),
        pytest.param('{"keys": {}}', "bundle has no 'keys' array; a SPIFFE bundle is a JWK Set", id="keys-object"),
        pytest.param('{"keys": ["x"]}', "bundle key #0 is not a JSON object", id="key-not-object"),
    ],
)
def test_parse_rejects_a_document_that_is_not_a_jwk_set(data: str, message: str) -> None:
    with pytest.raises(BundleError, match="^" + re.escape(message)):
        Bundle.parse_jwks(TD, data)


@pytest.mark.parametrize(
    "x5c", [pytest.param("MIIB", id="string"), pytest.param([7], id="number"), pytest.param({"0": "MIIB"}, id="object")]
)
def test_parse_rejects_an_x5c_that_is_not_an_array_of_strings(material: Material, x5c: Any) -> None:
    entry = x509_entry(material.ec_ca)
    entry["x5c"] = x5c
    with pytest.raises(
        BundleError, match=exact("x509-svid key #0 has an 'x5c' that is not an array of base64 DER certificates")
    ):
        parse({"keys": [entry]})


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("not base64!", id="not-base64"),
        pytest.param(base64.b64encode(b"not a certificate").decode(), id="not-der"),
    ],
)
def test_parse_rejects_an_unreadable_certificate(material: Material, value: str) -> None:
    entry = x509_entry(material.ec_ca)
    entry["x5c"] = [value]
    with pytest.raises(BundleError, match="^" + re.escape("x509-svid key #0 has an unreadable certificate: ")):
        parse({"keys": [entry]})


@pytest.mark.parametrize(
    "kid", [pytest.param(None, id="missing"), pytest.param("", id="empty"), pytest.param(3, id="number")]
)
def test_parse_rejects_a_jwt_entry_without_kid(material: Material, kid: Any) -> None:
    entry = jwt_entry(material.ec_jwt, "k1")
    entry["kid"] = kid
    with pytest.raises(BundleError, match=exact("jwt-svid key #0 has no 'kid'; JWT authorities must name their key")):
        parse({"keys": [entry]})


def test_parse_rejects_a_jwt_entry_with_missing_key_material(material: Material) -> None:
    entry = jwt_entry(material.ec_jwt, "k1")
    del entry["y"]
    with pytest.raises(BundleError, match="^" + re.escape("jwt-svid key 'k1' is malformed: ")):
        parse({"keys": [entry]})


def test_parse_rejects_a_jwt_entry_holding_a_private_key(material: Material) -> None:
    entry = {**json.loads(ECAlgorithm.to_jwk(material.ec_jwt)), "use": "jwt-svid", "kid": "k1"}
    with pytest.raises(BundleError, match=exact("jwt-svid key 'k1' must be a public key")):
        parse({"keys": [entry]})


@pytest.mark.parametrize(
    "sequence", [pytest.param(-1, id="negative"), pytest.param("7", id="string"), pytest.param(True, id="boolean")]
)
def test_parse_rejects_a_sequence_that_is_not_a_non_negative_integer(sequence: Any) -> None:
    with pytest.raises(BundleError, match=exact(f"spiffe_sequence {sequence!r} is not a non-negative integer")):
        parse({"keys": [], "spiffe_sequence": sequence})


@pytest.mark.parametrize(
    "hint", [pytest.param(-5, id="negative"), pytest.param("300", id="string"), pytest.param(1.5, id="fraction")]
)
def test_parse_rejects_a_refresh_hint_that_is_not_whole_seconds(hint: Any) -> None:
    with pytest.raises(
        BundleError, match=exact(f"spiffe_refresh_hint {hint!r} is not a non-negative number of seconds")
    ):
        parse({"keys": [], "spiffe_refresh_hint": hint})


# --- values ----------------------------------------------------------------------------------------------


def test_with_changes_increments_the_sequence(bundle: Bundle, material: Material) -> None:
    changed = bundle.with_changes(x509_authorities=[material.ec_ca])
    assert (changed.sequence, changed.x509_authorities, changed.jwt_authorities) == (
        8,
        (material.ec_ca,),
        bundle.jwt_authorities,
    )


def test_every_change_increments_the_sequence_again(bundle: Bundle) -> None:
    assert bundle.with_changes(refresh_hint=60).with_changes(jwt_authorities=[]).sequence == 9


def test_with_changes_leaves_the_original_untouched(bundle: Bundle) -> None:
    before = copy.copy(bundle)
    bundle.with_changes(jwt_authorities=[])
    assert (bundle, bundle.sequence) == (before, 7)


def test_a_bundle_answers_only_for_its_own_trust_domain(bundle: Bundle) -> None:
    assert (bundle.get_bundle_for_trust_domain(TD), bundle.get_bundle_for_trust_domain(TrustDomain("other.org"))) == (
        bundle,
        None,
    )


def test_find_jwt_authority_by_key_id(bundle: Bundle) -> None:
    found = bundle.find_jwt_authority("jwt-rsa")
    assert (found.key_id if found else None, bundle.find_jwt_authority("unknown")) == ("jwt-rsa", None)


def test_jwt_authorities_are_equal_only_with_the_same_key(material: Material) -> None:
    other_key = ec.generate_private_key(ec.SECP256R1()).public_key()
    same = JwtAuthority("k1", material.ec_jwt.public_key())
    assert (same == JwtAuthority("k1", material.ec_jwt.public_key()), same == JwtAuthority("k1", other_key)) == (
        True,
        False,
    )


# --- py-spiffe reads what we write -----------------------------------------------------------------------


def test_pyspiffe_reads_the_same_authorities_from_our_json(bundle: Bundle, tmp_path: Path) -> None:
    (tmp_path / "bundle.json").write_text(bundle.to_json())
    answer = ask_pyspiffe("spiffe-bundle", "example.org", str(tmp_path / "bundle.json"))
    assert answer == {
        "x509_authorities": sorted(
            hashlib.sha256(c.public_bytes(serialization.Encoding.DER)).hexdigest() for c in bundle.x509_authorities
        ),
        "jwt_authorities": {
            a.key_id: hashlib.sha256(
                a.public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
            ).hexdigest()
            for a in bundle.jwt_authorities
        },
    }
