"""JWT-SVIDs: minting and validation per SPIFFE's JWT-SVID.md (DESIGN §2).

A JWT-SVID is a JWS in compact serialization (§5.1), signed with one of RS/ES/PS 256/384/512 (§2.1;
never ``none`` or HMAC), whose protected header holds nothing but ``alg``, ``kid`` and ``typ`` (§2;
``typ``, when present, is ``JWT`` or ``JOSE``, §2.3). The spec makes ``kid`` optional (§2.2); trustmesh
always sets it and requires it, because a bundle may hold several JWT authorities during rotation and
the key must be chosen by name, never by trial. The claims hold ``sub`` = the SPIFFE ID (§3.1), ``aud``
(required, §3.2) and ``exp`` (required, §3.3). Validation uses only the bundle of the subject's own
trust domain (SPIFFE_Trust_Domain_and_Bundle.md §6.4: trust domains are never mixed).

Every header and claim check runs on the raw token *before* a signature is checked, so an attacker's
choice of algorithm (``none``, HS256 keyed with our public key PEM) never reaches a verifier, and the
verifier is then told to accept exactly the one algorithm that the key in the bundle fits.

Time: ``exp`` is compared with the caller's ``now`` with no leeway (RFC 7519 §4.1.4: the token is
valid only while ``now < exp``); so is ``nbf`` when a token carries one (valid once ``now >= nbf``).
A relying party that wants to tolerate clock skew passes a ``now`` it has adjusted itself.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, Final

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from spiffe_core.errors import InvalidArgument, JwtSvidError, SpiffeIdError, UnknownJwtKey, shown
from spiffe_core.keys import PrivateKey, PublicKey, jwt_algorithm_for
from spiffe_core.sources import BundleSource
from spiffe_core.spiffe_id import SpiffeId

ALLOWED_ALGORITHMS: Final = frozenset({"RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256", "PS384", "PS512"})
ALLOWED_HEADERS: Final = frozenset({"alg", "kid", "typ"})
ALLOWED_TYPES: Final = frozenset({"JWT", "JOSE"})
# Claims the minter owns: a caller's extra claims may not replace them.
RESERVED_CLAIMS: Final = frozenset({"sub", "aud", "exp", "iat"})
# RSA keys below this size are refused when verifying, as NIST SP 800-131A asks.
MIN_RSA_KEY_BITS: Final = 2048
# Audiences a JWT-SVID may be minted for, and the UTF-8 length of each (check_audience). The spec names
# no limit; these keep a caller from making the agent and the CA hold, sign and cache megabytes per
# token. A relying party is named by a short string (a service name or a URL).
MAX_AUDIENCES: Final = 32
MAX_AUDIENCE_BYTES: Final = 1024

_EC_CURVE_FOR_ALG: Final[Mapping[str, type[ec.EllipticCurve]]] = {
    "ES256": ec.SECP256R1,
    "ES384": ec.SECP384R1,
    "ES512": ec.SECP521R1,
}
_BASE64URL: Final = re.compile(r"[A-Za-z0-9_-]*")


@dataclass(frozen=True, slots=True)
class JwtSvid:
    """A JWT-SVID that passed :func:`validate_jwt_svid`: who it names, for whom, until when."""

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
    """Sign a JWT-SVID and return it in compact serialization.

    The header is exactly ``alg`` (fixed by the key type, see :func:`spiffe_core.keys.jwt_algorithm_for`),
    ``kid`` and ``typ: JWT``. ``aud`` is a single string when there is one audience and an array
    otherwise, as SPIRE writes it; RFC 7519 §4.1.3 allows both and every SPIFFE library reads both.
    Raises :class:`InvalidArgument` for a trust domain's ID (no path), an audience :func:`check_audience`
    refuses, an empty key ID, naive datetimes, an expiry not after ``issued_at``, or extra claims that
    would replace ``sub``/``aud``/``exp``/``iat``."""
    audience = check_audience(audience)
    if not isinstance(key_id, str) or not key_id:
        raise InvalidArgument("key_id is empty; a JWT-SVID always names its signing key in 'kid'")
    if spiffe_id.is_trust_domain_id:
        raise InvalidArgument(
            f"{spiffe_id} is a trust domain's ID; a JWT-SVID names a workload, whose SPIFFE ID has a path "
            "(JWT-SVID.md §3.1)"
        )
    _require_aware(expires_at, "expires_at")
    if issued_at is not None:
        _require_aware(issued_at, "issued_at")
        if expires_at <= issued_at:
            raise InvalidArgument(
                f"expires_at {expires_at.isoformat()} is not after issued_at {issued_at.isoformat()}; "
                "a JWT-SVID must expire after it is issued"
            )
    overridden = RESERVED_CLAIMS & set(extra_claims or {})
    if overridden:
        raise InvalidArgument(
            f"extra claims may not set {sorted(overridden)}; sub, aud, exp and iat come from the "
            "spiffe_id, audience, expires_at and issued_at arguments"
        )
    claims: dict[str, Any] = dict(extra_claims or {})
    claims["sub"] = str(spiffe_id)
    claims["aud"] = audience[0] if len(audience) == 1 else list(audience)
    claims["exp"] = int(expires_at.timestamp())
    if issued_at is not None:
        claims["iat"] = int(issued_at.timestamp())
    return jwt.encode(claims, private_key, algorithm=jwt_algorithm_for(private_key), headers={"kid": key_id})


def check_audience(audience: Sequence[str]) -> tuple[str, ...]:
    """The audiences a JWT-SVID may be minted for, as a tuple; the one rule the agent (Workload API,
    manager) and the CA (node API, issuance) apply alike.

    At least one and at most :data:`MAX_AUDIENCES` values, each a non-empty string of printable
    characters (no control characters or line breaks) of at most :data:`MAX_AUDIENCE_BYTES` bytes in
    UTF-8. Raises :class:`InvalidArgument` naming the first value that breaks the rule (by position
    and a short prefix, never the whole value)."""
    if isinstance(audience, str):
        raise InvalidArgument(
            f"audience {shown(audience)} is a single string; pass a sequence of audiences, e.g. [{shown(audience)}]"
        )
    values = tuple(audience)
    if not values:
        raise InvalidArgument("a JWT-SVID needs at least one audience (JWT-SVID.md §3.2); pass e.g. ['payments']")
    if len(values) > MAX_AUDIENCES:
        raise InvalidArgument(
            f"{len(values)} audiences requested; a JWT-SVID carries at most {MAX_AUDIENCES} — ask for one "
            "token per relying party"
        )
    for index, value in enumerate(values):
        if not isinstance(value, str) or not value:
            raise InvalidArgument(
                f"audience #{index} {value!r} is not a non-empty string; every audience must name a service"
            )
        size = len(value.encode("utf-8", "surrogatepass"))
        if size > MAX_AUDIENCE_BYTES:
            raise InvalidArgument(
                f"audience #{index} {shown(value)} is {size} bytes long; an audience may be at most "
                f"{MAX_AUDIENCE_BYTES} bytes (UTF-8) — name the relying party with a shorter string"
            )
        if not value.isprintable():
            bad = next(c for c in value if not c.isprintable())
            raise InvalidArgument(
                f"audience #{index} {shown(value)} holds the non-printable character U+{ord(bad):04X}; "
                "audiences are printable text — remove control characters and line breaks"
            )
    return values


def parse_jwt_svid_insecure(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split a compact JWS into its header and claims WITHOUT checking anything else.

    For routing only (which trust domain's bundle to fetch, which audience to expect); never for
    authorization. Raises :class:`JwtSvidError` when the token is not three base64url parts of which
    the first two are JSON objects."""
    if not isinstance(token, str):
        raise JwtSvidError(f"a JWT-SVID must be a string, not {type(token).__name__}")
    if not token:
        raise JwtSvidError("JWT-SVID is empty; pass the compact token 'header.payload.signature'")
    if token.lstrip().startswith("{"):
        raise JwtSvidError(
            "JWT-SVID uses the JWS JSON serialization; JWT-SVID.md §5.1 allows only the compact "
            "serialization 'header.payload.signature'"
        )
    parts = token.split(".")
    if len(parts) != 3:
        raise JwtSvidError(
            f"JWT-SVID has {len(parts)} dot-separated parts; a compact JWS has exactly 3 "
            "(header.payload.signature, JWT-SVID.md §5.1)"
        )
    for name, part in zip(("header", "payload", "signature"), parts, strict=True):
        if not _BASE64URL.fullmatch(part) or len(part) % 4 == 1:
            raise JwtSvidError(f"JWT-SVID {name} is not unpadded base64url (RFC 7515 §2)")
    return _decode_json(parts[0], "header"), _decode_json(parts[1], "payload")


def validate_jwt_svid(
    token: str, *, audience: str | Sequence[str], bundle_source: BundleSource, now: datetime
) -> JwtSvid:
    """Validate a JWT-SVID for ``audience`` at ``now`` with the bundle of its subject's trust domain.

    ``audience`` names the values this relying party answers to; the token must carry at least one of
    them. Raises :class:`JwtSvidError` naming the first rule the token breaks —
    :class:`~spiffe_core.errors.UnknownJwtKey` when that is only that the bundle lacks its key — and
    :class:`InvalidArgument` when the caller passes no audience or a naive ``now``."""
    expected = _expected_audience(audience)
    _require_aware(now, "now")
    header, claims = parse_jwt_svid_insecure(token)
    alg, kid = _check_header(header)
    spiffe_id = _check_subject(claims)
    token_audience = _check_audience(claims, expected)
    expiry = _check_times(claims, now)
    trust_domain = spiffe_id.trust_domain
    bundle = bundle_source.get_bundle_for_trust_domain(trust_domain)
    if bundle is None:
        raise JwtSvidError(
            f"no bundle for trust domain {trust_domain}, the trust domain of {spiffe_id}; "
            "a JWT-SVID is validated only with its own trust domain's bundle — federate with it first"
        )
    authority = bundle.find_jwt_authority(kid)
    if authority is None:
        raise UnknownJwtKey(
            f"JWT-SVID key {shown(kid)} is not a JWT authority in the bundle of {trust_domain}; "
            "the key is unknown, removed, or the bundle is stale",
            trust_domain,
            kid,
        )
    _check_key_fits(alg, authority.public_key, kid, str(trust_domain))
    try:
        jwt.PyJWS().decode_complete(token, authority.public_key, algorithms=[alg])
    except jwt.InvalidSignatureError as err:
        raise JwtSvidError(
            f"JWT-SVID signature does not verify with key {shown(kid)} of {trust_domain}; "
            "the token was altered or signed by another key"
        ) from err
    except jwt.PyJWTError as err:
        raise JwtSvidError(f"JWT-SVID could not be verified with key {shown(kid)} of {trust_domain}: {err}") from err
    return JwtSvid(spiffe_id, token_audience, expiry, MappingProxyType(claims), token)


def _require_aware(moment: datetime, name: str) -> None:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise InvalidArgument(f"{name} {moment.isoformat()} has no time zone; pass an aware datetime (e.g. UTC)")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"member {shown(key)} appears twice")
        result[key] = value
    return result


def _decode_json(part: str, name: str) -> dict[str, Any]:
    """Decode one part strictly: a duplicated member or NaN could be read one way here and another
    way by a different JSON parser, so both are refused (RFC 7515 §4)."""
    try:
        raw = base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
        value = json.loads(raw, object_pairs_hook=_unique_keys, parse_constant=_reject_constant)
    except (binascii.Error, ValueError, RecursionError) as err:
        raise JwtSvidError(f"JWT-SVID {name} is not valid JSON: {err}") from err
    if not isinstance(value, dict):
        raise JwtSvidError(f"JWT-SVID {name} is a JSON {type(value).__name__}; it must be a JSON object")
    return value


def _check_header(header: Mapping[str, Any]) -> tuple[str, str]:
    if "alg" not in header:
        raise JwtSvidError("JWT-SVID header has no 'alg'; JWT-SVID.md §2.1 requires one of RS/ES/PS 256/384/512")
    alg = header["alg"]
    if not isinstance(alg, str) or alg not in ALLOWED_ALGORITHMS:
        raise JwtSvidError(
            f"JWT-SVID alg {shown(alg)} is not allowed; JWT-SVID.md §2.1 allows only "
            f"{', '.join(sorted(ALLOWED_ALGORITHMS))}"
        )
    extra = set(header) - ALLOWED_HEADERS
    if extra:
        raise JwtSvidError(
            f"JWT-SVID header has {sorted(extra)}; JWT-SVID.md §2 allows only alg, kid and typ in the header"
        )
    typ = header.get("typ", "JWT")
    if not isinstance(typ, str) or typ not in ALLOWED_TYPES:
        raise JwtSvidError(f"JWT-SVID typ {shown(typ)} is not allowed; JWT-SVID.md §2.3 allows 'JWT' or 'JOSE'")
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise JwtSvidError(
            "JWT-SVID header has no 'kid'; trustmesh requires the signing key to be named so it is looked up, "
            "not guessed"
        )
    return alg, kid


def _check_subject(claims: Mapping[str, Any]) -> SpiffeId:
    sub = claims.get("sub")
    if sub is None:
        raise JwtSvidError("JWT-SVID has no 'sub' claim; JWT-SVID.md §3.1 requires the SPIFFE ID of the workload")
    if not isinstance(sub, str):
        raise JwtSvidError(f"JWT-SVID 'sub' is a JSON {type(sub).__name__}; it must be a SPIFFE ID string")
    try:
        spiffe_id = SpiffeId.parse(sub)
    except SpiffeIdError as err:
        raise JwtSvidError(f"JWT-SVID 'sub' is not a SPIFFE ID: {err}") from err
    if spiffe_id.is_trust_domain_id:
        raise JwtSvidError(
            f"JWT-SVID 'sub' {sub!r} is a trust domain's ID; JWT-SVID.md §3.1 requires the SPIFFE ID of a "
            "workload, which has a path"
        )
    return spiffe_id


def _expected_audience(audience: str | Sequence[str]) -> frozenset[str]:
    values = (audience,) if isinstance(audience, str) else tuple(audience)
    if not values or not all(isinstance(v, str) and v for v in values):
        raise InvalidArgument(
            f"expected audience {values!r} is empty; a relying party must name the audience it answers to"
        )
    return frozenset(values)


def _check_audience(claims: Mapping[str, Any], expected: frozenset[str]) -> tuple[str, ...]:
    if "aud" not in claims:
        raise JwtSvidError("JWT-SVID has no 'aud' claim; JWT-SVID.md §3.2 requires one")
    raw = claims["aud"]
    values = (raw,) if isinstance(raw, str) else tuple(raw) if isinstance(raw, list) else None
    if values is None or not all(isinstance(v, str) for v in values):
        raise JwtSvidError(
            f"JWT-SVID 'aud' is {shown(raw)}; it must be a string or an array of strings (RFC 7519 §4.1.3)"
        )
    if not any(values):
        raise JwtSvidError("JWT-SVID 'aud' is empty; JWT-SVID.md §3.2 requires at least one audience")
    if not expected.intersection(values):
        raise JwtSvidError(
            f"JWT-SVID audience {shown(list(values))} does not include {sorted(expected)}; the token was minted for "
            "another relying party"
        )
    return values


def _numeric_date(claims: Mapping[str, Any], name: str) -> datetime:
    value = claims[name]
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise JwtSvidError(f"JWT-SVID {name!r} is {shown(value)}; it must be a NumericDate (seconds since the epoch)")
    try:
        return datetime.fromtimestamp(value, UTC)
    except (OverflowError, OSError, ValueError) as err:
        raise JwtSvidError(f"JWT-SVID {name!r} {value!r} is outside the range of dates") from err


def _check_times(claims: Mapping[str, Any], now: datetime) -> datetime:
    if "exp" not in claims:
        raise JwtSvidError("JWT-SVID has no 'exp' claim; JWT-SVID.md §3.3 requires one")
    expiry = _numeric_date(claims, "exp")
    if now >= expiry:
        raise JwtSvidError(f"JWT-SVID expired at {expiry.isoformat()} (now is {now.isoformat()}); fetch a fresh one")
    if "nbf" in claims:
        not_before = _numeric_date(claims, "nbf")
        if now < not_before:
            raise JwtSvidError(
                f"JWT-SVID is not valid before {not_before.isoformat()} (now is {now.isoformat()}; RFC 7519 §4.1.5)"
            )
    return expiry


def _check_key_fits(alg: str, key: PublicKey, kid: str, trust_domain: str) -> None:
    """The header names the algorithm, the bundle names the key: they must agree, or the verifier
    would be asked to use a key for something it was never published for."""
    curve = _EC_CURVE_FOR_ALG.get(alg)
    if curve is not None:
        if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, curve):
            raise JwtSvidError(
                f"JWT-SVID alg {alg} needs an EC {curve.name} key, but key {shown(kid)} of {trust_domain} is "
                f"{_describe(key)}; the token's alg does not fit its key"
            )
        return
    if not isinstance(key, rsa.RSAPublicKey):
        raise JwtSvidError(
            f"JWT-SVID alg {alg} needs an RSA key, but key {shown(kid)} of {trust_domain} is {_describe(key)}; "
            "the token's alg does not fit its key"
        )
    if key.key_size < MIN_RSA_KEY_BITS:
        raise JwtSvidError(
            f"key {shown(kid)} of {trust_domain} is RSA {key.key_size}; JWT-SVIDs are verified only with RSA keys "
            f"of at least {MIN_RSA_KEY_BITS} bits"
        )


def _describe(key: PublicKey) -> str:
    if isinstance(key, ec.EllipticCurvePublicKey):
        return f"EC {key.curve.name}"
    return f"RSA {key.key_size}"
