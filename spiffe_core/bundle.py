"""SPIFFE bundles: the trust anchors of one trust domain, and their JWKS form.

SPIFFE_Trust_Domain_and_Bundle.md §4: a bundle is a JWK Set whose keys carry ``use`` —
``x509-svid`` (one ``x5c`` certificate, no ``kid``) or ``jwt-svid`` (a ``kid``, no ``x5c``) — plus
``spiffe_sequence`` (grows on every change) and ``spiffe_refresh_hint`` (seconds). A bundle belongs to
exactly one trust domain; nothing in trustmesh merges bundles of different trust domains.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from jwt.exceptions import InvalidKeyError

from spiffe_core.errors import BundleError
from spiffe_core.keys import PublicKey
from spiffe_core.spiffe_id import TrustDomain

USE_X509_SVID = "x509-svid"
USE_JWT_SVID = "jwt-svid"
_KNOWN_KEY_TYPES = frozenset({"EC", "RSA"})


@dataclass(frozen=True, slots=True)
class JwtAuthority:
    """A JWT signing key as published: the key ID and the public key."""

    key_id: str
    public_key: PublicKey = field(compare=False)

    def __eq__(self, other: object) -> bool:
        if type(other) is not JwtAuthority:
            return NotImplemented
        return self.key_id == other.key_id and _public_der(self.public_key) == _public_der(other.public_key)

    def __hash__(self) -> int:
        return hash(self.key_id)


@dataclass(frozen=True, slots=True)
class Bundle:
    """The trust anchors of one trust domain at one sequence number. Immutable: changes make a new one."""

    trust_domain: TrustDomain
    x509_authorities: tuple[x509.Certificate, ...] = ()
    jwt_authorities: tuple[JwtAuthority, ...] = ()
    sequence: int = 0
    refresh_hint: int | None = None

    def get_bundle_for_trust_domain(self, trust_domain: TrustDomain) -> Bundle | None:
        """A single bundle is a :class:`~spiffe_core.sources.BundleSource` for its own trust domain."""
        return self if trust_domain == self.trust_domain else None

    def find_jwt_authority(self, key_id: str) -> JwtAuthority | None:
        for authority in self.jwt_authorities:
            if authority.key_id == key_id:
                return authority
        return None

    def with_changes(
        self,
        *,
        x509_authorities: Iterable[x509.Certificate] | None = None,
        jwt_authorities: Iterable[JwtAuthority] | None = None,
        refresh_hint: int | None = None,
    ) -> Bundle:
        """A copy with new authorities and ``sequence + 1`` (the spec wants it to grow on every change)."""
        return replace(
            self,
            x509_authorities=self.x509_authorities if x509_authorities is None else tuple(x509_authorities),
            jwt_authorities=self.jwt_authorities if jwt_authorities is None else tuple(jwt_authorities),
            refresh_hint=self.refresh_hint if refresh_hint is None else refresh_hint,
            sequence=self.sequence + 1,
        )

    def x509_authorities_pem(self) -> bytes:
        """The X.509 authorities as concatenated PEM, for ``openssl verify -CAfile`` and legacy clients."""
        return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in self.x509_authorities)

    def to_jwks(self) -> dict[str, Any]:
        keys: list[dict[str, Any]] = []
        for cert in self.x509_authorities:
            jwk = _public_jwk(cert.public_key())  # type: ignore[arg-type]
            jwk["use"] = USE_X509_SVID
            jwk["x5c"] = [base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()]
            keys.append(jwk)
        for authority in self.jwt_authorities:
            jwk = _public_jwk(authority.public_key)
            jwk["use"] = USE_JWT_SVID
            jwk["kid"] = authority.key_id
            keys.append(jwk)
        doc: dict[str, Any] = {"keys": keys, "spiffe_sequence": self.sequence}
        if self.refresh_hint is not None:
            doc["spiffe_refresh_hint"] = self.refresh_hint
        return doc

    def to_json(self) -> str:
        return json.dumps(self.to_jwks(), indent=2, sort_keys=True)

    @classmethod
    def parse_jwks(cls, trust_domain: TrustDomain, data: bytes | str | Mapping[str, Any]) -> Bundle:
        """Read a SPIFFE bundle. Keys with an unknown ``use`` or ``kty`` are skipped (§4.1.3, §4.2.1,
        §4.2.2), and so are ``x509-svid`` keys without an ``x5c`` (X509-SVID.md §6.2, which also says to
        use only the first certificate of several). Malformed keys of a known use are an error: a bundle
        half-read is a bundle that trusts the wrong things."""
        doc = _load_json(data)
        raw_keys = doc.get("keys")
        if not isinstance(raw_keys, list):
            raise BundleError("bundle has no 'keys' array; a SPIFFE bundle is a JWK Set")
        x509_authorities: list[x509.Certificate] = []
        jwt_authorities: list[JwtAuthority] = []
        for index, jwk in enumerate(raw_keys):
            if not isinstance(jwk, dict):
                raise BundleError(f"bundle key #{index} is not a JSON object")
            if jwk.get("kty") not in _KNOWN_KEY_TYPES:
                continue  # an unknown key type makes the whole element ignored (§4.2.1)
            use = jwk.get("use")
            if use == USE_X509_SVID:
                cert = _parse_x509_jwk(jwk, index)
                if cert is not None:
                    x509_authorities.append(cert)
            elif use == USE_JWT_SVID:
                jwt_authorities.append(_parse_jwt_jwk(jwk, index))
        sequence = doc.get("spiffe_sequence", 0)
        refresh_hint = doc.get("spiffe_refresh_hint")
        if not isinstance(sequence, int) or isinstance(sequence, bool) or sequence < 0:
            raise BundleError(f"spiffe_sequence {sequence!r} is not a non-negative integer")
        if refresh_hint is not None and (
            not isinstance(refresh_hint, int) or isinstance(refresh_hint, bool) or refresh_hint < 0
        ):
            raise BundleError(f"spiffe_refresh_hint {refresh_hint!r} is not a non-negative number of seconds")
        return cls(trust_domain, tuple(x509_authorities), tuple(jwt_authorities), sequence, refresh_hint)


def _load_json(data: bytes | str | Mapping[str, Any]) -> Mapping[str, Any]:
    if isinstance(data, Mapping):
        return data
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as err:
        raise BundleError(f"bundle is not valid JSON: {err}") from err
    if not isinstance(doc, dict):
        raise BundleError("bundle is not a JSON object")
    return doc


def _public_der(key: PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _public_jwk(key: PublicKey) -> dict[str, Any]:
    """Only the key material (RFC 7518 §6): PyJWT adds ``key_ops``, which RFC 7517 §4.3 says should
    not sit next to ``use``, and the bundle spec (§4.2) asks for no parameters it does not define."""
    if isinstance(key, ec.EllipticCurvePublicKey):
        jwk = ECAlgorithm.to_jwk(key, as_dict=True)
        return {name: jwk[name] for name in ("kty", "crv", "x", "y")}
    if isinstance(key, rsa.RSAPublicKey):
        jwk = RSAAlgorithm.to_jwk(key, as_dict=True)
        return {name: jwk[name] for name in ("kty", "n", "e")}
    raise BundleError(f"key of type {type(key).__name__} cannot be published; use EC or RSA")


def _parse_x509_jwk(jwk: Mapping[str, Any], index: int) -> x509.Certificate | None:
    x5c = jwk.get("x5c")
    if x5c is None or x5c == []:
        return None
    if not isinstance(x5c, list) or not isinstance(x5c[0], str):
        raise BundleError(f"x509-svid key #{index} has an 'x5c' that is not an array of base64 DER certificates")
    try:
        cert = x509.load_der_x509_certificate(base64.b64decode(x5c[0], validate=True))
    except ValueError as err:
        raise BundleError(f"x509-svid key #{index} has an unreadable certificate: {err}") from err
    return cert


def _parse_jwt_jwk(jwk: Mapping[str, Any], index: int) -> JwtAuthority:
    kid = jwk.get("kid")
    if not isinstance(kid, str) or not kid:
        raise BundleError(f"jwt-svid key #{index} has no 'kid'; JWT authorities must name their key")
    try:
        if jwk["kty"] == "EC":
            key: Any = ECAlgorithm.from_jwk(dict(jwk))
        else:
            key = RSAAlgorithm.from_jwk(dict(jwk))
    except (InvalidKeyError, ValueError, TypeError, KeyError) as err:
        raise BundleError(f"jwt-svid key {kid!r} is malformed: {err}") from err
    if not isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
        raise BundleError(f"jwt-svid key {kid!r} must be a public key")
    return JwtAuthority(kid, key)
