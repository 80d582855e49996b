"""Bearer tokens from the IdP (ca/oidc.py): what is accepted, and every way a token is refused."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from ca.oidc import (
    JWKS_MIN_REFRESH,
    MAX_TOKEN_BYTES,
    JwksFile,
    JwksUrl,
    OidcIdentity,
    OidcParams,
    OidcVerifier,
)
from ca.rbac import Role
from spiffe_core.errors import ConfigError, NotAuthenticated, UpstreamUnavailable
from tests.support.clock import FakeClock

NOW = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
ISSUER = "https://idp.example.org/realms/ops"
AUDIENCE = "trustmesh-ca"
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
OTHER_RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def jwk(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, kid: str, **extra: str) -> dict[str, Any]:
    algorithm = RSAAlgorithm if isinstance(key, rsa.RSAPrivateKey) else ECAlgorithm
    return {**json.loads(algorithm.to_jwk(key.public_key())), "kid": kid, **extra}


class Keys:
    """A JwksSource over a dict, counting lookups."""

    def __init__(self, *keys: Mapping[str, Any]) -> None:
        self.keys = {k["kid"]: k for k in keys}

    def get_key(self, kid: str) -> Mapping[str, Any] | None:
        return self.keys.get(kid)


def claims(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "alice",
        "exp": int((NOW + timedelta(minutes=5)).timestamp()),
        "iat": int(NOW.timestamp()),
        "roles": ["security-officer"],
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def token(key: Any = RSA_KEY, alg: str = "RS256", kid: str | None = "rsa-1", **overrides: Any) -> str:
    headers = {} if kid is None else {"kid": kid}
    return jwt.encode(claims(**overrides), key, algorithm=alg, headers=headers)


def verifier(*keys: Mapping[str, Any], **params: Any) -> OidcVerifier:
    keys = keys or (jwk(RSA_KEY, "rsa-1"), jwk(EC_KEY, "ec-1"))
    return OidcVerifier(OidcParams(ISSUER, AUDIENCE, **params), Keys(*keys), FakeClock(NOW))


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def refusal(verify: OidcVerifier, text: str) -> str:
    with pytest.raises(NotAuthenticated) as caught:
        verify.verify(text)
    return str(caught.value)


# --- accepted ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "alg", "kid"),
    [
        pytest.param(RSA_KEY, "RS256", "rsa-1", id="RS256"),
        pytest.param(RSA_KEY, "PS384", "rsa-1", id="PS384"),
        pytest.param(EC_KEY, "ES256", "ec-1", id="ES256"),
    ],
)
def test_accepts_a_token_signed_by_the_idp_with_an_allowed_algorithm(key: Any, alg: str, kid: str) -> None:
    assert verifier().verify(token(key, alg, kid)) == OidcIdentity(ISSUER, "alice", frozenset({Role.SECURITY_OFFICER}))


def test_accepts_a_token_expired_within_the_clock_skew() -> None:
    expired = token(exp=int((NOW - timedelta(seconds=30)).timestamp()))

    assert verifier(clock_skew=timedelta(seconds=60)).verify(expired).subject == "alice"


def test_reads_roles_from_a_nested_claim_through_the_role_map() -> None:
    text = token(roles=None, realm_access={"roles": ["pki-officers", "platform", "offline_access"]})
    verify = verifier(roles_claim="realm_access.roles", role_map={"pki-officers": Role.SECURITY_OFFICER})

    assert verify.verify(text).roles == {Role.SECURITY_OFFICER}


def test_reads_roles_from_a_space_separated_string() -> None:
    assert verifier().verify(token(roles="operator auditor")).roles == {Role.OPERATOR, Role.AUDITOR}


def test_a_token_without_the_roles_claim_names_a_caller_with_no_role() -> None:
    assert verifier().verify(token(roles=None)).roles == frozenset()


# --- refused -----------------------------------------------------------------------------------------


def test_refuses_an_expired_token() -> None:
    expired = token(exp=int((NOW - timedelta(minutes=2)).timestamp()))

    assert refusal(verifier(), expired).startswith("bearer token expired at 2030-01-02T03:02:05")


def test_refuses_a_token_of_another_issuer() -> None:
    assert refusal(verifier(), token(iss="https://evil.example")) == f"bearer token was not issued by {ISSUER}"


def test_refuses_a_token_for_another_audience() -> None:
    assert refusal(verifier(), token(aud="grafana")) == "bearer token is not for audience 'trustmesh-ca'"


def test_refuses_alg_none() -> None:
    unsigned = jwt.encode(claims(), None, algorithm="none", headers={"kid": "rsa-1"})

    assert refusal(verifier(), unsigned) == (
        "bearer token is signed with alg 'none'; only RS/ES/PS 256/384/512 are accepted"
    )


def test_refuses_hs256_keyed_with_the_idps_public_key() -> None:
    public_pem = RSA_KEY.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    signing_input = f"{b64(json.dumps({'alg': 'HS256', 'kid': 'rsa-1'}).encode())}.{b64(json.dumps(claims()).encode())}"
    forged = f"{signing_input}.{b64(hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest())}"

    assert (
        refusal(verifier(), forged) == "bearer token is signed with alg 'HS256'; only RS/ES/PS 256/384/512 are accepted"
    )


def test_refuses_a_token_signed_with_a_key_not_in_the_jwks() -> None:
    assert refusal(verifier(), token(OTHER_RSA_KEY, kid="rsa-9")) == (
        "bearer token is signed with key 'rsa-9', which is not in the IdP's JWKS"
    )


def test_refuses_a_token_whose_signature_is_by_another_key_under_a_known_kid() -> None:
    assert refusal(verifier(), token(OTHER_RSA_KEY)) == "bearer token's signature does not verify with the IdP's key"


def test_refuses_a_token_whose_alg_does_not_fit_the_named_keys_type() -> None:
    assert "the key decides the algorithm" in refusal(verifier(), token(EC_KEY, "ES256", "rsa-1"))


def test_refuses_a_token_without_kid() -> None:
    assert refusal(verifier(), token(kid=None)) == "bearer token names no 'kid'; the IdP's key must be chosen by name"


@pytest.mark.parametrize("claim", ["sub", "exp", "iss", "aud"])
def test_refuses_a_token_missing_a_required_claim(claim: str) -> None:
    assert f"'{claim}'" in refusal(verifier(), token(**{claim: None}))


def test_refuses_a_token_not_valid_yet() -> None:
    early = token(nbf=int((NOW + timedelta(minutes=5)).timestamp()))

    assert refusal(verifier(), early) == "bearer token's 'nbf' is in the future; check the IdP's and the CA's clocks"


def test_refuses_an_oversized_token_before_parsing_it() -> None:
    assert refusal(verifier(), "x" * (MAX_TOKEN_BYTES + 1)) == f"bearer token is over {MAX_TOKEN_BYTES} bytes"


def test_refuses_critical_header_extensions() -> None:
    text = jwt.encode(claims(), RSA_KEY, algorithm="RS256", headers={"kid": "rsa-1", "crit": ["exp"]})

    assert refusal(verifier(), text) == "bearer token's header is refused: Unsupported critical extension: exp"


def test_refuses_a_roles_claim_with_too_many_names() -> None:
    assert "is not a list of at most 64 names" in refusal(verifier(), token(roles=["auditor"] * 65))


def test_refuses_a_small_rsa_key_in_the_jwks() -> None:
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    with pytest.warns(jwt.warnings.InsecureKeyLengthWarning):  # the IdP side of the test signs with it
        text = token(weak, kid="weak")

    assert refusal(verifier(jwk(weak, "weak")), text) == ("the IdP's key 'weak' is RSA-1024; at least 2048 bits")


def test_never_echoes_the_token_in_a_refusal() -> None:
    text = token(aud="grafana")

    assert text not in refusal(verifier(), text)


# --- JWKS sources ------------------------------------------------------------------------------------


def test_jwks_file_is_read_again_when_it_changes(tmp_path: Path) -> None:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [jwk(RSA_KEY, "rsa-1")]}))
    source = JwksFile(path)
    source.load()
    assert source.get_key("ec-1") is None

    replacement = tmp_path / "jwks.new"
    replacement.write_text(json.dumps({"keys": [jwk(EC_KEY, "ec-1")]}))
    replacement.rename(path)

    assert source.get_key("ec-1") is not None
    assert source.get_key("rsa-1") is None


def test_jwks_file_that_is_not_a_jwk_set_stops_the_start(tmp_path: Path) -> None:
    path = tmp_path / "jwks.json"
    path.write_text('{"kty": "RSA"}')

    with pytest.raises(ConfigError, match="has no 'keys' list"):
        JwksFile(path).load()


class Fetcher:
    def __init__(self, *documents: dict[str, Any]) -> None:
        self.documents = list(documents)
        self.calls = 0

    def __call__(self, url: str) -> bytes:
        self.calls += 1
        return json.dumps(self.documents[min(self.calls, len(self.documents)) - 1]).encode()


def test_jwks_url_fetches_an_unknown_kid_at_most_once_per_refresh_interval() -> None:
    fetch = Fetcher({"keys": [jwk(RSA_KEY, "rsa-1")]}, {"keys": [jwk(RSA_KEY, "rsa-1"), jwk(EC_KEY, "ec-1")]})
    moments = iter([0.0, 1.0, 2.0, JWKS_MIN_REFRESH + 1])
    source = JwksUrl("https://idp/keys", fetch=fetch, monotonic=lambda: next(moments))

    assert source.get_key("rsa-1") is not None  # first fetch
    assert source.get_key("forged-1") is None  # within the interval of the last fetch: no fetch
    assert source.get_key("forged-2") is None
    assert fetch.calls == 1
    assert source.get_key("ec-1") is not None  # interval over: fetched again, the new key is there
    assert fetch.calls == 2


def test_jwks_url_that_was_never_fetched_refuses_with_unavailable() -> None:
    def down(url: str) -> bytes:
        raise UpstreamUnavailable("connection refused")

    with pytest.raises(UpstreamUnavailable, match="could not be fetched yet"):
        JwksUrl("https://idp/keys", fetch=down).get_key("rsa-1")
