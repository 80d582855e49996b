"""Bearer tokens from the organisation's identity provider: OIDC-style JWT access tokens (RFC 7519,
RFC 9068) for the admin API over HTTPS (docs/admin-api.md "Authentication").

A token is accepted only when every one of these holds, checked in this order so that nothing an
attacker controls reaches a verifier before it is known to be harmless:

1. it is at most :data:`MAX_TOKEN_BYTES` long and its protected header parses;
2. its ``alg`` is one of RS/ES/PS 256/384/512 — never ``none``, never HMAC (a token "signed" with
   HS256 using our *public* key as the secret is the classic confusion attack) — and it names a
   ``kid`` and no ``crit`` extension (none is understood);
3. the key is picked from the configured JWKS **by kid**, and the key's own type (and curve) must fit
   the algorithm; the algorithm in the token never chooses a key type;
4. the signature verifies with exactly that key and that algorithm;
5. ``iss`` equals the configured issuer, ``aud`` holds the configured audience, ``sub`` is present,
   ``exp`` is in the future and ``nbf``/``iat`` (when present) not in the future, each with the
   configured clock skew.

The caller's roles come from one claim (``roles`` by default; a dotted path such as
``realm_access.roles`` reaches a nested one), a list of names or one space-separated string, bounded in
length; names are our roles or are mapped onto them by ``role_map``. Unknown names are ignored.

The JWKS comes from a file (re-read whenever it changes on disk) or a URL (fetched when first needed,
again after :data:`JWKS_MAX_AGE`, and on a token with an unknown ``kid`` at most once per
:data:`JWKS_MIN_REFRESH`, so a stream of forged ``kid`` values cannot turn into a stream of fetches).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol, TypeGuard

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from ca.rbac import Role
from spiffe_core.clock import Clock
from spiffe_core.errors import ConfigError, NotAuthenticated, UpstreamUnavailable
from spiffe_core.jwt_svid import ALLOWED_ALGORITHMS, MIN_RSA_KEY_BITS

log = logging.getLogger(__name__)

MAX_TOKEN_BYTES = 8 * 1024
MAX_JWKS_BYTES = 256 * 1024
MAX_JWKS_KEYS = 64
MAX_ROLE_NAMES = 64
MAX_NAME_LENGTH = 256  # kid, sub and each role name
JWKS_MAX_AGE = 600.0  # seconds a fetched JWKS is used before it is fetched again
JWKS_MIN_REFRESH = 30.0  # at most one fetch per this many seconds for an unknown kid
JWKS_FETCH_TIMEOUT = 5.0

_ROLE_NAMES = frozenset(role.value for role in Role)
# The key type (and EC curve) each algorithm needs.
_KEY_FOR_ALGORITHM: Mapping[str, tuple[str, str | None]] = {
    **{f"RS{bits}": ("RSA", None) for bits in (256, 384, 512)},
    **{f"PS{bits}": ("RSA", None) for bits in (256, 384, 512)},
    "ES256": ("EC", "P-256"),
    "ES384": ("EC", "P-384"),
    "ES512": ("EC", "P-521"),
}


@dataclass(frozen=True, slots=True)
class OidcParams:
    """What the CA accepts from its identity provider (``[admin_api.oidc]``)."""

    issuer: str
    audience: str
    roles_claim: str = "roles"
    clock_skew: timedelta = timedelta(seconds=60)
    role_map: Mapping[str, Role] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class OidcIdentity:
    """A caller an accepted token names: the issuer's subject and the roles it grants."""

    issuer: str
    subject: str
    roles: frozenset[Role]


class JwksSource(Protocol):
    def get_key(self, kid: str) -> Mapping[str, Any] | None:
        """The JWK named ``kid``, or None; raises UpstreamUnavailable when no key set can be had."""
        ...


def parse_jwks(data: bytes, where: str) -> dict[str, Mapping[str, Any]]:
    """The signing keys of a JWK Set by ``kid``: keys without a kid, or whose ``use`` is not ``sig``, are
    left out (they could never be chosen). Raises ConfigError naming ``where``."""
    if len(data) > MAX_JWKS_BYTES:
        raise ConfigError(f"JWKS {where} is over {MAX_JWKS_BYTES} bytes; an IdP publishes a few keys")
    try:
        document = json.loads(data)
    except (ValueError, UnicodeDecodeError) as err:
        raise ConfigError(f'JWKS {where} is not JSON ({err}); it must be a JWK Set, {{"keys": [...]}}') from err
    keys = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(keys, list):
        raise ConfigError(f"JWKS {where} has no 'keys' list; it must be a JWK Set, {{\"keys\": [...]}}")
    if len(keys) > MAX_JWKS_KEYS:
        raise ConfigError(f"JWKS {where} holds {len(keys)} keys; at most {MAX_JWKS_KEYS} are accepted")
    return {
        key["kid"]: key
        for key in keys
        if isinstance(key, dict) and isinstance(key.get("kid"), str) and key.get("use", "sig") == "sig"
    }


class JwksFile:
    """A JWKS kept in a local file, re-read whenever its size, inode or modification time changes."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._keys: dict[str, Mapping[str, Any]] = {}

    def load(self) -> None:
        """Read the file now; raises ConfigError (used at start-up, so a broken file stops the CA)."""
        with self._lock:
            self._reload()

    def _reload(self) -> None:
        try:
            stat = self._path.stat()
            stamp = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
            if stamp == self._stamp:
                return
            data = self._path.read_bytes()
        except OSError as err:
            raise ConfigError(
                f"admin_api.oidc.jwks_file {self._path} cannot be read ({err.strerror}); check the path"
            ) from err
        self._keys = parse_jwks(data, f"file {self._path}")
        self._stamp = stamp

    def get_key(self, kid: str) -> Mapping[str, Any] | None:
        with self._lock:
            try:
                self._reload()
            except ConfigError as err:
                raise UpstreamUnavailable(str(err)) from err
            return self._keys.get(kid)


def fetch_jwks(url: str) -> bytes:
    """GET ``url`` (no redirects, bounded time and size)."""
    with (
        httpx.Client(timeout=JWKS_FETCH_TIMEOUT, follow_redirects=False) as client,
        client.stream("GET", url, headers={"Accept": "application/json"}) as response,
    ):
        if response.status_code != 200:
            raise UpstreamUnavailable(f"the IdP's JWKS at {url} answered HTTP {response.status_code}")
        body = b""
        for chunk in response.iter_bytes():
            body += chunk
            if len(body) > MAX_JWKS_BYTES:
                raise UpstreamUnavailable(f"the IdP's JWKS at {url} is over {MAX_JWKS_BYTES} bytes")
        return body


class JwksUrl:
    """A JWKS fetched from the IdP (see the module docstring for when). A failed fetch keeps the keys
    fetched before; with none, tokens are refused with UpstreamUnavailable (503), never accepted."""

    def __init__(
        self,
        url: str,
        *,
        fetch: Callable[[str], bytes] = fetch_jwks,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._url = url
        self._fetch = fetch
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._keys: dict[str, Mapping[str, Any]] | None = None
        self._fetched_at = 0.0
        self._attempted_at: float | None = None

    def get_key(self, kid: str) -> Mapping[str, Any] | None:
        with self._lock:
            now = self._monotonic()
            stale = self._keys is None or now - self._fetched_at >= JWKS_MAX_AGE
            unknown = self._keys is not None and kid not in self._keys
            may_fetch = self._attempted_at is None or now - self._attempted_at >= JWKS_MIN_REFRESH
            if (stale or unknown) and may_fetch:
                self._refresh(now)
            if self._keys is None:
                raise UpstreamUnavailable(
                    f"the IdP's JWKS at {self._url} could not be fetched yet; bearer tokens cannot be checked"
                )
            return self._keys.get(kid)

    def _refresh(self, now: float) -> None:
        self._attempted_at = now
        try:
            self._keys = parse_jwks(self._fetch(self._url), self._url)
            self._fetched_at = now
        except (httpx.HTTPError, UpstreamUnavailable, ConfigError) as err:
            log.warning("cannot fetch the IdP's JWKS from %s: %s", self._url, err)


def _public_key(jwk: Mapping[str, Any], algorithm: str, kid: str) -> rsa.RSAPublicKey | ec.EllipticCurvePublicKey:
    """The public key of ``jwk`` if its type (and curve) is the one ``algorithm`` needs."""
    kty, crv = _KEY_FOR_ALGORITHM[algorithm]
    if jwk.get("kty") != kty or (crv is not None and jwk.get("crv") != crv):
        raise NotAuthenticated(
            f"bearer token says alg {algorithm}, but the IdP's key {kid!r} is a {jwk.get('kty')} "
            f"{jwk.get('crv', '')} key; the key decides the algorithm"
        )
    if "alg" in jwk and jwk["alg"] != algorithm:
        raise NotAuthenticated(f"bearer token says alg {algorithm}, but the IdP's key {kid!r} is for {jwk['alg']}")
    try:
        key = (RSAAlgorithm if kty == "RSA" else ECAlgorithm).from_jwk(dict(jwk))
    except (jwt.InvalidKeyError, ValueError, TypeError) as err:
        raise NotAuthenticated(f"the IdP's key {kid!r} cannot be read: {err}") from err
    public = key.public_key() if isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) else key
    if isinstance(public, rsa.RSAPublicKey) and public.key_size < MIN_RSA_KEY_BITS:
        raise NotAuthenticated(f"the IdP's key {kid!r} is RSA-{public.key_size}; at least {MIN_RSA_KEY_BITS} bits")
    return public


class OidcVerifier:
    """Checks bearer tokens against :class:`OidcParams` and a :class:`JwksSource`; thread-safe."""

    def __init__(self, params: OidcParams, jwks: JwksSource, clock: Clock) -> None:
        self._params = params
        self._jwks = jwks
        self._clock = clock

    @property
    def issuer(self) -> str:
        return self._params.issuer

    def verify(self, token: str) -> OidcIdentity:
        """The identity ``token`` proves. Raises NotAuthenticated with one reason (never the token);
        UpstreamUnavailable when the JWKS cannot be had."""
        algorithm, kid = self._check_header(token)
        jwk = self._jwks.get_key(kid)
        if jwk is None:
            raise NotAuthenticated(f"bearer token is signed with key {kid!r}, which is not in the IdP's JWKS")
        key = _public_key(jwk, algorithm, kid)
        params = self._params
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[algorithm],
                audience=params.audience,
                issuer=params.issuer,
                options={"verify_exp": False, "verify_nbf": False, "verify_iat": False, "require": ["iss", "aud"]},
            )
        except jwt.InvalidSignatureError as err:
            raise NotAuthenticated("bearer token's signature does not verify with the IdP's key") from err
        except jwt.InvalidIssuerError as err:
            raise NotAuthenticated(f"bearer token was not issued by {params.issuer}") from err
        except jwt.InvalidAudienceError as err:
            raise NotAuthenticated(f"bearer token is not for audience {params.audience!r}") from err
        except jwt.MissingRequiredClaimError as err:
            raise NotAuthenticated(f"bearer token has no {err.claim!r} claim") from err
        except jwt.InvalidTokenError as err:
            raise NotAuthenticated(f"bearer token is malformed: {err}") from err
        self._check_times(claims)
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject or len(subject) > MAX_NAME_LENGTH:
            raise NotAuthenticated(f"bearer token has no 'sub' claim of 1-{MAX_NAME_LENGTH} characters")
        return OidcIdentity(params.issuer, subject, self._roles(claims))

    def _check_header(self, token: str) -> tuple[str, str]:
        if len(token) > MAX_TOKEN_BYTES:
            raise NotAuthenticated(f"bearer token is over {MAX_TOKEN_BYTES} bytes")
        try:
            header = jwt.get_unverified_header(token)  # also refuses 'crit' extensions it does not know
        except jwt.DecodeError as err:
            raise NotAuthenticated("bearer token is not a JWT (header.payload.signature)") from err
        except jwt.InvalidTokenError as err:
            raise NotAuthenticated(f"bearer token's header is refused: {err}") from err
        algorithm = header.get("alg")
        if algorithm not in ALLOWED_ALGORITHMS:
            raise NotAuthenticated(
                f"bearer token is signed with alg {algorithm!r}; only RS/ES/PS 256/384/512 are accepted"
            )
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid or len(kid) > MAX_NAME_LENGTH:
            raise NotAuthenticated("bearer token names no 'kid'; the IdP's key must be chosen by name")
        return str(algorithm), kid

    def _check_times(self, claims: Mapping[str, Any]) -> None:
        now = self._clock.now().timestamp()
        skew = self._params.clock_skew.total_seconds()
        expiry = claims.get("exp")
        if not _is_number(expiry):
            raise NotAuthenticated("bearer token has no numeric 'exp' claim")
        if now >= expiry + skew:
            raise NotAuthenticated(f"bearer token expired at {datetime.fromtimestamp(expiry, UTC).isoformat()}")
        for name in ("nbf", "iat"):
            value = claims.get(name)
            if value is None:
                continue
            if not _is_number(value):
                raise NotAuthenticated(f"bearer token's {name!r} claim is not a number")
            if value > now + skew:
                raise NotAuthenticated(f"bearer token's {name!r} is in the future; check the IdP's and the CA's clocks")

    def _roles(self, claims: Mapping[str, Any]) -> frozenset[Role]:
        value: Any = claims
        for part in self._params.roles_claim.split("."):
            value = value.get(part) if isinstance(value, Mapping) else None
        names = value.split() if isinstance(value, str) else value
        if names is None:
            return frozenset()
        if not isinstance(names, list) or len(names) > MAX_ROLE_NAMES:
            raise NotAuthenticated(
                f"bearer token's {self._params.roles_claim!r} claim is not a list of at most {MAX_ROLE_NAMES} names"
            )
        roles: set[Role] = set()
        for name in names:
            if not isinstance(name, str) or len(name) > MAX_NAME_LENGTH:
                continue
            role = self._params.role_map.get(name)
            if role is None and name in _ROLE_NAMES:
                role = Role(name)
            if role is not None:
                roles.add(role)
        return frozenset(roles)


def _is_number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def default_jwks_source(jwks_file: Path | None, jwks_url: str) -> JwksSource:
    """The JWKS source the configuration names (exactly one of the two is set)."""
    if jwks_file is not None:
        source = JwksFile(jwks_file)
        source.load()
        return source
    return JwksUrl(jwks_url)
