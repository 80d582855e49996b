"""JWT-SVIDs: minting and validation per SPIFFE's JWT-SVID.md.

A JWT-SVID is a JWS in compact serialization (§2), signed with one of RS/ES/PS 256/384/512 (§3; never
``none`` or HMAC), whose header holds only ``alg``, ``kid`` (required) and optionally ``typ`` (JWT or
JOSE) (§2.1-2.2), and whose claims hold ``sub`` (the SPIFFE ID), ``aud`` (required) and ``exp``
(required) (§3.1-3.3). Validation uses only the bundle of the subject's own trust domain (§5).

Header and algorithm checks happen on the raw header *before* any signature check, so an attacker's
choice of algorithm (``none``, HS256 keyed with our public key) never reaches a verifier.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from spiffe_core.errors import InvalidArgument, JwtSvidError, SpiffeIdError
from spiffe_core.keys import PrivateKey, jwt_algorithm_for
from spiffe_core.sources import BundleSource
from spiffe_core.spiffe_id import SpiffeId

ALLOWED_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256", "PS384", "PS512"})
_ALLOWED_HEADERS = frozenset({"alg", "kid", "typ"})
_RESERVED_CLAIMS = frozenset({"sub", "aud", "exp", "iat"})


@dataclass(frozen=True, slots=True)
class JwtSvid:
    spiffe_id: SpiffeId
    audience: tuple[str, ...]
    expiry: datetime
    claims: Mapping[str, Any] = field(compare=False)
    token: str = field(repr=False, compare=False)


def mint_jwt_svid(
    *,
    spiffe_id: SpiffeId,
    audience: Sequence[str],
    private_key: PrivateKey,
    key_id: str,
    expires_at: datetime,
    issued_at: datetime | None = None,
    extra_claims: Mapping[str, Any] | None = None,
) -> str:
    """Sign a JWT-SVID. The header is exactly ``alg``, ``kid`` and ``typ: JWT``."""
    if not audience or not all(isinstance(a, str) and a for a in audience):
        raise InvalidArgument("a JWT-SVID needs at least one non-empty audience")
    overridden = _RESERVED_CLAIMS & set(extra_claims or {})
    if overridden:
        raise InvalidArgument(f"extra claims may not set {sorted(overridden)}; they are the SVID's own")
    claims: dict[str, Any] = dict(extra_claims or {})
    claims["sub"] = str(spiffe_id)
    claims["aud"] = list(audience)
    claims["exp"] = int(expires_at.timestamp())
    if issued_at is not None:
        claims["iat"] = int(issued_at.timestamp())
    return jwt.encode(
        claims,
        private_key,
        algorithm=jwt_algorithm_for(private_key),
        headers={"kid": key_id, "typ": "JWT"},
    )


def _b64_json(part: str, what: str) -> dict[str, Any]:
    try:
        raw = base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
        value = json.loads(raw)
    except (binascii.Error, ValueError, UnicodeDecodeError) as err:
        raise JwtSvidError(f"JWT-SVID {what} is not base64url-encoded JSON") from err
    if not isinstance(value, dict):
        raise JwtSvidError(f"JWT-SVID {what} is not a JSON object")
    return value


def parse_jwt_svid_insecure(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split a compact JWS into its header and claims WITHOUT checking the signature.

    For routing only (which trust domain's bundle to fetch); never for authorization."""
    if not isinstance(token, str) or not token:
        raise JwtSvidError("JWT-SVID is empty")
    if token.lstrip().startswith("{"):
        raise JwtSvidError("JWT-SVID uses JWS JSON serialization; only compact serialization is allowed (§2)")
    parts = token.split(".")
    if len(parts) != 3:
        raise JwtSvidError(f"JWT-SVID has {len(parts)} parts; a compact JWS has exactly 3 (header.payload.signature)")
    return _b64_json(parts[0], "header"), _b64_json(parts[1], "payload")


def _check_header(header: Mapping[str, Any]) -> tuple[str, str]:
    alg = header.get("alg")
    if alg not in ALLOWED_ALGORITHMS:
        raise JwtSvidError(f"JWT-SVID alg {alg!r} is not allowed; use one of {', '.join(sorted(ALLOWED_ALGORITHMS))}")
    extra = set(header) - _ALLOWED_HEADERS
    if extra:
        raise JwtSvidError(f"JWT-SVID header has {sorted(extra)}; only alg, kid and typ are allowed (§2.2)")
    typ = header.get("typ")
    if typ is not None and typ not in ("JWT", "JOSE"):
        raise JwtSvidError(f"JWT-SVID typ {typ!r} is not allowed; use 'JWT' or 'JOSE' (§2.2)")
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise JwtSvidError("JWT-SVID header has no kid; the signing key must be named (§2.1)")
    return alg, kid


def validate_jwt_svid(
    token: str, *, audience: str | Sequence[str], bundle_source: BundleSource, now: datetime
) -> JwtSvid:
    """Validate a JWT-SVID for ``audience`` at ``now`` with the bundle of its subject's trust domain.

    ``audience`` given as several values accepts a token naming any of them."""
    header, claims = parse_jwt_svid_insecure(token)
    alg, kid = _check_header(header)
    sub = claims.get("sub")
    if not isinstance(sub, str):
        raise JwtSvidError("JWT-SVID has no 'sub' claim; it must hold the SPIFFE ID (§3.1)")
    try:
        spiffe_id = SpiffeId.parse(sub)
    except SpiffeIdError as err:
        raise JwtSvidError(f"JWT-SVID 'sub' is not a SPIFFE ID: {err}") from err
    raw_aud = claims.get("aud")
    token_audience = (raw_aud,) if isinstance(raw_aud, str) else tuple(raw_aud) if isinstance(raw_aud, list) else ()
    if not token_audience or not all(isinstance(a, str) for a in token_audience):
        raise JwtSvidError("JWT-SVID has no 'aud' claim; it is required (§3.2)")
    expected = (audience,) if isinstance(audience, str) else tuple(audience)
    if not set(expected) & set(token_audience):
        raise JwtSvidError(f"JWT-SVID audience {list(token_audience)} does not include {list(expected)}")
    exp = claims.get("exp")
    if not isinstance(exp, int | float) or isinstance(exp, bool):
        raise JwtSvidError("JWT-SVID has no numeric 'exp' claim; it is required (§3.3)")
    expiry = datetime.fromtimestamp(exp, UTC)
    if expiry <= now:
        raise JwtSvidError(f"JWT-SVID expired at {expiry.isoformat()}")
    bundle = bundle_source.get_bundle_for_trust_domain(spiffe_id.trust_domain)
    if bundle is None:
        raise JwtSvidError(f"no bundle for trust domain {spiffe_id.trust_domain}; cannot validate {spiffe_id}")
    authority = bundle.find_jwt_authority(kid)
    if authority is None:
        raise JwtSvidError(f"JWT-SVID key {kid!r} is not in the bundle of {spiffe_id.trust_domain}")
    key = authority.public_key
    if alg.startswith("ES") != isinstance(key, ec.EllipticCurvePublicKey) or (
        alg[:2] in ("RS", "PS") and not isinstance(key, rsa.RSAPublicKey)
    ):
        raise JwtSvidError(f"JWT-SVID alg {alg} does not fit key {kid!r} ({type(key).__name__})")
    try:
        jwt.decode(
            token,
            key,
            algorithms=[alg],
            options={"verify_exp": False, "verify_aud": False, "verify_iat": False, "verify_nbf": False},
        )
    except jwt.InvalidTokenError as err:
        raise JwtSvidError(f"JWT-SVID signature does not verify with key {kid!r}: {err}") from err
    return JwtSvid(spiffe_id, token_audience, expiry, claims, token)
