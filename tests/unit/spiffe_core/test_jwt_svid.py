"""JWT-SVID minting and validation (JWT-SVID.md; DESIGN §2), with py-spiffe as an independent oracle.

Rejection tests craft tokens by hand (base64url + JSON + a real signature) so each one breaks exactly
one rule and is otherwise valid.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import get_default_algorithms

from spiffe_core.bundle import Bundle, JwtAuthority
from spiffe_core.errors import InvalidArgument, JwtSvidError, UnknownJwtKey
from spiffe_core.jwt_svid import (
    MAX_AUDIENCE_BYTES,
    MAX_AUDIENCES,
    JwtSvid,
    check_audience,
    mint_jwt_svid,
    parse_jwt_svid_insecure,
    validate_jwt_svid,
)
from spiffe_core.keys import PrivateKey
from spiffe_core.spiffe_id import SpiffeId, TrustDomain
from tests.support.oracle import ask_pyspiffe

TD = TrustDomain("example.org")
OTHER_TD = TrustDomain("other.org")
WORKLOAD = SpiffeId.parse("spiffe://example.org/web")
NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
EXPIRY = NOW + timedelta(minutes=5)
ALLOWED = "ES256, ES384, ES512, PS256, PS384, PS512, RS256, RS384, RS512"


@dataclass(frozen=True)
class Keys:
    p256: ec.EllipticCurvePrivateKey
    p384: ec.EllipticCurvePrivateKey
    p521: ec.EllipticCurvePrivateKey
    rsa2048: rsa.RSAPrivateKey
    rsa1024: rsa.RSAPrivateKey


@pytest.fixture(scope="module")
def keys() -> Keys:
    """RSA generation is slow: one set of keys for the whole module."""
    return Keys(
        p256=ec.generate_private_key(ec.SECP256R1()),
        p384=ec.generate_private_key(ec.SECP384R1()),
        p521=ec.generate_private_key(ec.SECP521R1()),
        rsa2048=rsa.generate_private_key(public_exponent=65537, key_size=2048),
        rsa1024=rsa.generate_private_key(public_exponent=65537, key_size=1024),
    )


@pytest.fixture(scope="module")
def bundle(keys: Keys) -> Bundle:
    return Bundle(
        TD,
        jwt_authorities=(
            JwtAuthority("ec256", keys.p256.public_key()),
            JwtAuthority("ec384", keys.p384.public_key()),
            JwtAuthority("ec521", keys.p521.public_key()),
            JwtAuthority("rsa", keys.rsa2048.public_key()),
            JwtAuthority("rsa1024", keys.rsa1024.public_key()),
        ),
        sequence=1,
    )


@dataclass
class RecordingSource:
    """A BundleSource over several trust domains that remembers what it was asked for."""

    bundles: Mapping[TrustDomain, Bundle]
    asked: list[TrustDomain] = field(default_factory=list)

    def get_bundle_for_trust_domain(self, trust_domain: TrustDomain) -> Bundle | None:
        self.asked.append(trust_domain)
        return self.bundles.get(trust_domain)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def part(value: Any) -> str:
    return b64url(json.dumps(value).encode())


def header(alg: str = "ES256", kid: str = "ec256", **more: Any) -> dict[str, Any]:
    return {"alg": alg, "kid": kid, "typ": "JWT", **more}


def claims(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"sub": str(WORKLOAD), "aud": "payments", "exp": int(EXPIRY.timestamp())}
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


def sign(signing_input: str, alg: str, key: PrivateKey) -> str:
    return b64url(get_default_algorithms()[alg].sign(signing_input.encode(), key))


def craft(head: Mapping[str, Any], body: Mapping[str, Any], key: PrivateKey, alg: str = "ES256") -> str:
    """A compact JWS with exactly this header and these claims, really signed with ``key``."""
    signing_input = f"{part(head)}.{part(body)}"
    return f"{signing_input}.{sign(signing_input, alg, key)}"


def craft_raw(raw_header: str, raw_claims: str, key: PrivateKey) -> str:
    """Like :func:`craft`, from JSON text (to write what json.dumps never would)."""
    signing_input = f"{b64url(raw_header.encode())}.{b64url(raw_claims.encode())}"
    return f"{signing_input}.{sign(signing_input, 'ES256', key)}"


def validate(token: str, bundle: Bundle, audience: str | list[str] = "payments", now: datetime = NOW) -> JwtSvid:
    return validate_jwt_svid(token, audience=audience, bundle_source=bundle, now=now)


def mint(private_key: PrivateKey, key_id: str = "ec256", **overrides: Any) -> str:
    arguments: dict[str, Any] = {
        "spiffe_id": WORKLOAD,
        "audience": ["payments"],
        "private_key": private_key,
        "key_id": key_id,
        "expires_at": EXPIRY,
        "issued_at": NOW,
    }
    arguments.update(overrides)
    return mint_jwt_svid(**arguments)


def exact(message: str) -> str:
    return "^" + re.escape(message) + "$"


# --- minting and the round trip ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key_name", "key_id", "alg"),
    [
        pytest.param("p256", "ec256", "ES256", id="ES256"),
        pytest.param("p384", "ec384", "ES384", id="ES384"),
        pytest.param("rsa2048", "rsa", "RS256", id="RS256"),
    ],
)
def test_minted_token_validates_against_the_bundle(
    keys: Keys, bundle: Bundle, key_name: str, key_id: str, alg: str
) -> None:
    token = mint(getattr(keys, key_name), key_id)
    svid = validate(token, bundle)
    assert svid == JwtSvid(WORKLOAD, ("payments",), EXPIRY, {}, "")
    assert svid.token == token
    assert parse_jwt_svid_insecure(token)[0]["alg"] == alg


def test_minted_header_is_exactly_alg_kid_and_typ(keys: Keys) -> None:
    head, _ = parse_jwt_svid_insecure(mint(keys.p256))
    assert head == {"alg": "ES256", "kid": "ec256", "typ": "JWT"}


def test_minted_claims_are_sub_aud_exp_and_iat(keys: Keys) -> None:
    _, body = parse_jwt_svid_insecure(mint(keys.p256))
    assert body == {
        "sub": "spiffe://example.org/web",
        "aud": "payments",
        "exp": int(EXPIRY.timestamp()),
        "iat": int(NOW.timestamp()),
    }


def test_minted_token_without_issued_at_has_no_iat(keys: Keys) -> None:
    _, body = parse_jwt_svid_insecure(mint(keys.p256, issued_at=None))
    assert "iat" not in body


def test_minted_token_with_several_audiences_has_an_aud_array(keys: Keys, bundle: Bundle) -> None:
    token = mint(keys.p256, audience=["payments", "reports"])
    assert parse_jwt_svid_insecure(token)[1]["aud"] == ["payments", "reports"]
    assert validate(token, bundle, audience="reports").audience == ("payments", "reports")


def test_minted_token_keeps_extra_claims(keys: Keys, bundle: Bundle) -> None:
    token = mint(keys.p256, extra_claims={"jti": "7f3a", "tenant": "blue"})
    svid = validate(token, bundle)
    assert (svid.claims["jti"], svid.claims["tenant"]) == ("7f3a", "blue")


@pytest.mark.parametrize("claim", ["sub", "aud", "exp", "iat"])
def test_mint_refuses_extra_claims_that_replace_the_svids_own(keys: Keys, claim: str) -> None:
    with pytest.raises(InvalidArgument, match=re.escape(f"extra claims may not set ['{claim}']; sub, aud, exp")):
        mint(keys.p256, extra_claims={claim: "spiffe://example.org/admin"})


def test_mint_refuses_an_empty_audience(keys: Keys) -> None:
    with pytest.raises(InvalidArgument, match=re.escape("a JWT-SVID needs at least one audience (JWT-SVID.md §3.2)")):
        mint(keys.p256, audience=[])


def test_mint_refuses_an_empty_audience_value(keys: Keys) -> None:
    with pytest.raises(InvalidArgument, match=re.escape("audience #1 '' is not a non-empty string")):
        mint(keys.p256, audience=["payments", ""])


def test_mint_refuses_an_audience_check_audience_refuses(keys: Keys) -> None:
    with pytest.raises(
        InvalidArgument, match=re.escape(f"is 1025 bytes long; an audience may be at most {MAX_AUDIENCE_BYTES}")
    ):
        mint(keys.p256, audience=["a" * 1025])


@pytest.mark.parametrize(
    "audience",
    [
        pytest.param(["payments"], id="one"),
        pytest.param(["a" * MAX_AUDIENCE_BYTES], id="longest"),
        pytest.param(["é" * (MAX_AUDIENCE_BYTES // 2)], id="longest-in-utf8"),
        pytest.param([f"svc-{n}" for n in range(MAX_AUDIENCES)], id="most"),
        pytest.param(["https://vault.example.org:8200/v1/auth jwt"], id="url-with-space"),
        pytest.param(("db", "cache"), id="tuple"),
    ],
)
def test_check_audience_accepts(audience: list[str]) -> None:
    assert check_audience(audience) == tuple(audience)


@pytest.mark.parametrize(
    ("audience", "message"),
    [
        pytest.param(
            [], "a JWT-SVID needs at least one audience (JWT-SVID.md §3.2); pass e.g. ['payments']", id="none"
        ),
        pytest.param(
            "payments",
            "audience 'payments' is a single string; pass a sequence of audiences, e.g. ['payments']",
            id="str",
        ),
        pytest.param(
            ["x"] * (MAX_AUDIENCES + 1),
            f"{MAX_AUDIENCES + 1} audiences requested; a JWT-SVID carries at most {MAX_AUDIENCES} — ask for one "
            "token per relying party",
            id="too-many",
        ),
        pytest.param(
            ["db", ""], "audience #1 '' is not a non-empty string; every audience must name a service", id="empty"
        ),
        pytest.param(
            ["db", 7], "audience #1 7 is not a non-empty string; every audience must name a service", id="not-str"
        ),
        pytest.param(
            ["a" * (MAX_AUDIENCE_BYTES + 1)],
            f"audience #0 {'a' * 32!r}… is {MAX_AUDIENCE_BYTES + 1} bytes long; an audience may be at most "
            f"{MAX_AUDIENCE_BYTES} bytes (UTF-8) — name the relying party with a shorter string",
            id="too-long",
        ),
        pytest.param(
            ["é" * (MAX_AUDIENCE_BYTES // 2 + 1)],
            f"audience #0 {'é' * 32!r}… is {MAX_AUDIENCE_BYTES + 2} bytes long; an audience may be at most "
            f"{MAX_AUDIENCE_BYTES} bytes (UTF-8) — name the relying party with a shorter string",
            id="too-long-in-utf8",
        ),
        pytest.param(
            ["db\nX-Injected: 1"],
            "audience #0 'db\\nX-Injected: 1' holds the non-printable character U+000A; audiences are printable "
            "text — remove control characters and line breaks",
            id="newline",
        ),
        pytest.param(
            ["db\x00"],
            "audience #0 'db\\x00' holds the non-printable character U+0000; audiences are printable text — remove "
            "control characters and line breaks",
            id="nul",
        ),
        pytest.param(
            ["db\ud800"],
            "audience #0 'db\\ud800' holds the non-printable character U+D800; audiences are printable text — "
            "remove control characters and line breaks",
            id="lone-surrogate",
        ),
    ],
)
def test_check_audience_refuses(audience: Any, message: str) -> None:
    with pytest.raises(InvalidArgument) as refused:
        check_audience(audience)
    assert str(refused.value) == message


def test_check_audience_never_echoes_a_whole_huge_value() -> None:
    with pytest.raises(InvalidArgument) as refused:
        check_audience(["x" * 1_000_000])
    assert len(str(refused.value)) < 300


def test_mint_refuses_a_bare_string_audience(keys: Keys) -> None:
    with pytest.raises(InvalidArgument, match=re.escape("audience 'payments' is a single string; pass a sequence")):
        mint(keys.p256, audience="payments")


def test_mint_refuses_a_trust_domain_id(keys: Keys) -> None:
    with pytest.raises(
        InvalidArgument,
        match=exact(
            "spiffe://example.org is a trust domain's ID; a JWT-SVID names a workload, whose SPIFFE ID has a "
            "path (JWT-SVID.md §3.1)"
        ),
    ):
        mint(keys.p256, spiffe_id=TD.id)


def test_mint_refuses_an_empty_key_id(keys: Keys) -> None:
    with pytest.raises(
        InvalidArgument, match=exact("key_id is empty; a JWT-SVID always names its signing key in 'kid'")
    ):
        mint(keys.p256, key_id="")


def test_mint_refuses_a_naive_expiry(keys: Keys) -> None:
    with pytest.raises(InvalidArgument, match=re.escape("expires_at 2026-01-01T12:05:00 has no time zone")):
        mint(keys.p256, expires_at=EXPIRY.replace(tzinfo=None))


def test_mint_refuses_an_expiry_not_after_issuance(keys: Keys) -> None:
    with pytest.raises(InvalidArgument, match=re.escape("a JWT-SVID must expire after it is issued")):
        mint(keys.p256, expires_at=NOW)


def test_mint_refuses_a_key_of_an_unsupported_curve(keys: Keys) -> None:
    with pytest.raises(InvalidArgument, match=exact("EC curve secp521r1 is not supported; use P-256 or P-384")):
        mint(keys.p521, "ec521")


# --- accepted variants ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("alg", "key_name", "key_id"),
    [
        pytest.param("ES512", "p521", "ec521", id="ES512"),
        pytest.param("RS384", "rsa2048", "rsa", id="RS384"),
        pytest.param("RS512", "rsa2048", "rsa", id="RS512"),
        pytest.param("PS256", "rsa2048", "rsa", id="PS256"),
        pytest.param("PS384", "rsa2048", "rsa", id="PS384"),
        pytest.param("PS512", "rsa2048", "rsa", id="PS512"),
    ],
)
def test_accepts_every_algorithm_of_the_spec(keys: Keys, bundle: Bundle, alg: str, key_name: str, key_id: str) -> None:
    token = craft(header(alg, key_id), claims(), getattr(keys, key_name), alg)
    assert validate(token, bundle).spiffe_id == WORKLOAD


def test_accepts_typ_jose(keys: Keys, bundle: Bundle) -> None:
    assert validate(craft(header(typ="JOSE"), claims(), keys.p256), bundle).spiffe_id == WORKLOAD


def test_accepts_a_header_without_typ(keys: Keys, bundle: Bundle) -> None:
    token = craft({"alg": "ES256", "kid": "ec256"}, claims(), keys.p256)
    assert validate(token, bundle).spiffe_id == WORKLOAD


def test_accepts_a_token_naming_any_of_the_expected_audiences(keys: Keys, bundle: Bundle) -> None:
    token = craft(header(), claims(aud="payments"), keys.p256)
    assert validate(token, bundle, audience=["reports", "payments"]).audience == ("payments",)


def test_accepts_a_token_whose_nbf_has_come(keys: Keys, bundle: Bundle) -> None:
    token = craft(header(), claims(nbf=int(NOW.timestamp())), keys.p256)
    assert validate(token, bundle).expiry == EXPIRY


def test_validated_svid_hides_the_token_from_repr(keys: Keys, bundle: Bundle) -> None:
    token = mint(keys.p256)
    assert token not in repr(validate(token, bundle))


def test_validated_claims_are_read_only(keys: Keys, bundle: Bundle) -> None:
    svid = validate(mint(keys.p256), bundle)
    with pytest.raises(TypeError):
        svid.claims["sub"] = "spiffe://example.org/admin"  # type: ignore[index]


# --- serialization (JWT-SVID.md §5.1) --------------------------------------------------------------------


def test_rejects_jws_json_serialization(keys: Keys, bundle: Bundle) -> None:
    compact = mint(keys.p256).split(".")
    token = json.dumps({"protected": compact[0], "payload": compact[1], "signature": compact[2]})
    with pytest.raises(JwtSvidError, match=re.escape("JWT-SVID uses the JWS JSON serialization; JWT-SVID.md §5.1")):
        validate(token, bundle)


@pytest.mark.parametrize(
    ("token", "count"),
    [
        pytest.param("e30.e30", 2, id="two-parts"),
        pytest.param("e30.e30.e30.e30", 4, id="four-parts"),
        pytest.param("e30", 1, id="one-part"),
    ],
)
def test_rejects_a_token_without_exactly_three_parts(bundle: Bundle, token: str, count: int) -> None:
    with pytest.raises(JwtSvidError, match=re.escape(f"JWT-SVID has {count} dot-separated parts; a compact JWS has")):
        validate(token, bundle)


@pytest.mark.parametrize(
    ("token", "name"),
    [
        pytest.param("e3+.e30.AAAA", "header", id="plus-in-header"),
        pytest.param("e30.e30=.AAAA", "payload", id="padding-in-payload"),
        pytest.param("e30.e30.AA/A", "signature", id="slash-in-signature"),
        pytest.param("e30.e30.AAAAA", "signature", id="impossible-length"),
    ],
)
def test_rejects_a_part_that_is_not_unpadded_base64url(bundle: Bundle, token: str, name: str) -> None:
    with pytest.raises(JwtSvidError, match=exact(f"JWT-SVID {name} is not unpadded base64url (RFC 7515 §2)")):
        validate(token, bundle)


def test_rejects_an_empty_token(bundle: Bundle) -> None:
    with pytest.raises(JwtSvidError, match=re.escape("JWT-SVID is empty")):
        validate("", bundle)


def test_rejects_a_header_that_is_not_json(keys: Keys, bundle: Bundle) -> None:
    token = f"{b64url(b'alg=ES256')}.{part(claims())}.AAAA"
    with pytest.raises(JwtSvidError, match=re.escape("JWT-SVID header is not valid JSON")):
        validate(token, bundle)


def test_rejects_a_header_that_is_not_a_json_object(bundle: Bundle) -> None:
    token = f"{part(['ES256'])}.{part(claims())}.AAAA"
    with pytest.raises(JwtSvidError, match=exact("JWT-SVID header is a JSON list; it must be a JSON object")):
        validate(token, bundle)


def test_rejects_a_header_with_a_duplicated_member(keys: Keys, bundle: Bundle) -> None:
    raw_header = '{"alg":"HS256","alg":"ES256","kid":"ec256"}'
    token = craft_raw(raw_header, json.dumps(claims()), keys.p256)
    with pytest.raises(JwtSvidError, match=re.escape("JWT-SVID header is not valid JSON: member 'alg' appears twice")):
        validate(token, bundle)


def test_rejects_a_payload_with_nan(keys: Keys, bundle: Bundle) -> None:
    raw_claims = '{"sub":"spiffe://example.org/web","aud":"payments","exp":NaN}'
    token = craft_raw(json.dumps(header()), raw_claims, keys.p256)
    with pytest.raises(JwtSvidError, match=re.escape("JWT-SVID payload is not valid JSON: NaN is not JSON")):
        validate(token, bundle)


# --- header (JWT-SVID.md §2) -----------------------------------------------------------------------------


def test_rejects_alg_none(bundle: Bundle) -> None:
    token = f"{part({'alg': 'none', 'kid': 'ec256', 'typ': 'JWT'})}.{part(claims())}."
    with pytest.raises(
        JwtSvidError, match=exact(f"JWT-SVID alg 'none' is not allowed; JWT-SVID.md §2.1 allows only {ALLOWED}")
    ):
        validate(token, bundle)


@pytest.mark.parametrize("alg", ["HS256", "HS384", "HS512"])
def test_rejects_hmac_algorithms(bundle: Bundle, alg: str) -> None:
    signing_input = f"{part(header(alg))}.{part(claims())}"
    token = f"{signing_input}.{b64url(hmac.new(b'shared-secret', signing_input.encode(), hashlib.sha256).digest())}"
    with pytest.raises(JwtSvidError, match=re.escape(f"JWT-SVID alg '{alg}' is not allowed")):
        validate(token, bundle)


@pytest.mark.parametrize(
    ("key_name", "kid"), [pytest.param("rsa2048", "rsa", id="rsa"), pytest.param("p256", "ec256", id="ec")]
)
def test_rejects_hs256_keyed_with_the_public_key_pem(keys: Keys, bundle: Bundle, key_name: str, kid: str) -> None:
    """The classic key-confusion attack: the public key, which everyone has, used as an HMAC secret."""
    public_pem = (
        getattr(keys, key_name)
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    signing_input = f"{part(header('HS256', kid))}.{part(claims(sub='spiffe://example.org/admin'))}"
    token = f"{signing_input}.{b64url(hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest())}"
    with pytest.raises(JwtSvidError, match=re.escape("JWT-SVID alg 'HS256' is not allowed")):
        validate(token, bundle)


@pytest.mark.parametrize("alg", ["EdDSA", "ES256K", "RS1", "es256"])
def test_rejects_algorithms_outside_the_spec(keys: Keys, bundle: Bundle, alg: str) -> None:
    token = craft(header(alg), claims(), keys.p256)
    with pytest.raises(JwtSvidError, match=re.escape(f"JWT-SVID alg '{alg}' is not allowed")):
        validate(token, bundle)


def test_rejects_a_non_string_alg(keys: Keys, bundle: Bundle) -> None:
    token = craft({"alg": ["ES256"], "kid": "ec256"}, claims(), keys.p256)
    with pytest.raises(JwtSvidError, match=re.escape("JWT-SVID alg ['ES256'] is not allowed")):
        validate(token, bundle)


def test_rejects_a_header_without_alg(keys: Keys, bundle: Bundle) -> None:
    token = craft({"kid": "ec256", "typ": "JWT"}, claims(), keys.p256)
    with pytest.raises(JwtSvidError, match=re.escape("JWT-SVID header has no 'alg'; JWT-SVID.md §2.1 requires")):
        validate(token, bundle)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        pytest.param("jku", "https://attacker.example/jwks", id="jku"),
        pytest.param("jwk", {"kty": "EC"}, id="jwk"),
        pytest.param("x5u", "https://attacker.example/cert", id="x5u"),
        pytest.param("x5c", ["MIIB"], id="x5c"),
        pytest.param("crit", ["exp"], id="crit"),
        pytest.param("cty", "JWT", id="cty"),
        pytest.param("b64", False, id="b64"),
        pytest.param("tenant", "blue", id="private"),
    ],
)
def test_rejects_header_parameters_other_than_alg_kid_typ(keys: Keys, bundle: Bundle, name: str, value: Any) -> None:
    token = craft(header(**{name: value}), claims(), keys.p256)
    with pytest.raises(
        JwtSvidError,
        match=exact(f"JWT-SVID header has ['{name}']; JWT-SVID.md §2 allows only alg, kid and typ in the header"),
    ):
        validate(token, bundle)


@pytest.mark.parametrize(
    ("typ", "shown"),
    [
        pytest.param("at+jwt", "'at+jwt'", id="other"),
        pytest.param("jwt", "'jwt'", id="lowercase"),
        pytest.param(1, "1", id="number"),
    ],
)
def test_rejects_typ_other_than_jwt_or_jose(keys: Keys, bundle: Bundle, typ: Any, shown: str) -> None:
    token = craft(header(typ=typ), claims(), keys.p256)
    with pytest.raises(
        JwtSvidError, match=exact(f"JWT-SVID typ {shown} is not allowed; JWT-SVID.md §2.3 allows 'JWT' or 'JOSE'")
    ):
        validate(token, bundle)


@pytest.mark.parametrize(
    "head",
    [
        pytest.param({"alg": "ES256", "typ": "JWT"}, id="missing"),
        pytest.param({"alg": "ES256", "kid": ""}, id="empty"),
        pytest.param({"alg": "ES256", "kid": 7}, id="number"),
    ],
)
def test_rejects_a_header_without_kid(keys: Keys, bundle: Bundle, head: dict[str, Any]) -> None:
    token = craft(head, claims(), keys.p256)
    with pytest.raises(JwtSvidError, match=re.escape("JWT-SVID header has no 'kid'; trustmesh requires")):
        validate(token, bundle)


# --- claims (JWT-SVID.md §3) -----------------------------------------------------------------------------


def test_rejects_a_token_without_sub(keys: Keys, bundle: Bundle) -> None:
    token = craft(header(), claims(sub=None), keys.p256)
    with pytest.raises(JwtSvidError, match=re.escape("JWT-SVID has no 'sub' claim; JWT-SVID.md §3.1 requires")):
        validate(token, bundle)


def test_rejects_a_sub_that_is_not_a_string(keys: Keys, bundle: Bundle) -> None:
    token = craft(header(), claims(sub=42), keys.p256)
    with pytest.raises(JwtSvidError, match=exact("JWT-SVID 'sub' is a JSON int; it must be a SPIFFE ID string")):
        validate(token, bundle)


@pytest.mark.parametrize(
    ("sub", "reason"),
    [
        pytest.param(
            "https://example.org/web", "'https://example.org/web' does not start with 'spiffe://'", id="scheme"
        ),
        pytest.param("spiffe://Example.org/web", "trust domain 'Example.org' has uppercase letters", id="uppercase"),
        pytest.param("spiffe://example.org/web/", "ends with '/'", id="trailing-slash"),
    ],
)
def test_rejects_a_sub_that_is_not_a_spiffe_id(keys: Keys, bundle: Bundle, sub: str, reason: str) -> None:
    token = craft(header(), claims(sub=sub), keys.p256)
    with pytest.raises(JwtSvidError, match=re.escape("JWT-SVID 'sub' is not a SPIFFE ID: ") + ".*" + re.escape(reason)):
        validate(token, bundle)


def test_rejects_a_sub_that_is_a_bare_trust_domain_id(keys: Keys, bundle: Bundle) -> None:
    token = craft(header(), claims(sub="spiffe://example.org"), keys.p256)
    with pytest.raises(
        JwtSvidError,
        match=exact(
            "JWT-SVID 'sub' 'spiffe://example.org' is a trust domain's ID; JWT-SVID.md §3.1 requires the SPIFFE "
            "ID of a workload, which has a path"
        ),
    ):
        validate(token, bundle)


def test_rejects_a_token_without_aud(keys: Keys, bundle: Bundle) -> None:
    token = craft(header(), claims(aud=None), keys.p256)
    with pytest.raises(JwtSvidError, match=exact("JWT-SVID has no 'aud' claim; JWT-SVID.md §3.2 requires one")):
        validate(token, bundle)


@pytest.mark.parametrize("aud", [pytest.param([], id="empty-array"), pytest.param("", id="empty-string")])
def test_rejects_an_empty_aud(keys: Keys, bundle: Bundle, aud: Any) -> None:
    token = craft(header(), claims(aud=aud), keys.p256)
    with pytest.raises(JwtSvidError, match=re.escape("JWT-SVID 'aud' is empty; JWT-SVID.md §3.2 requires")):
        validate(token, bundle)


@pytest.mark.parametrize("aud", [pytest.param([1], id="number-in-array"), pytest.param({"a": 1}, id="object")])
def test_rejects_an_aud_that_is_not_strings(keys: Keys, bundle: Bundle, aud: Any) -> None:
    token = craft(header(), claims(aud=aud), keys.p256)
    with pytest.raises(JwtSvidError, match=re.escape(f"JWT-SVID 'aud' is {aud!r}; it must be a string or an array")):
        validate(token, bundle)


def test_rejects_a_token_for_another_audience(keys: Keys, bundle: Bundle) -> None:
    token = craft(header(), claims(aud=["reports", "billing"]), keys.p256)
    with pytest.raises(
        JwtSvidError,
        match=exact(
            "JWT-SVID audience ['reports', 'billing'] does not include ['payments']; the token was minted for "
            "another relying party"
        ),
    ):
        validate(token, bundle)


def test_rejects_a_token_without_exp(keys: Keys, bundle: Bundle) -> None:
    token = craft(header(), claims(exp=None), keys.p256)
    with pytest.raises(JwtSvidError, match=exact("JWT-SVID has no 'exp' claim; JWT-SVID.md §3.3 requires one")):
        validate(token, bundle)


@pytest.mark.parametrize(
    "now",
    [pytest.param(EXPIRY, id="at-expiry"), pytest.param(EXPIRY + timedelta(seconds=1), id="after-expiry")],
)
def test_rejects_an_expired_token(keys: Keys, bundle: Bundle, now: datetime) -> None:
    token = craft(header(), claims(), keys.p256)
    with pytest.raises(
        JwtSvidError,
        match=exact(f"JWT-SVID expired at {EXPIRY.isoformat()} (now is {now.isoformat()}); fetch a fresh one"),
    ):
        validate(token, bundle, now=now)


def test_accepts_a_token_one_second_before_expiry(keys: Keys, bundle: Bundle) -> None:
    token = craft(header(), claims(), keys.p256)
    assert validate(token, bundle, now=EXPIRY - timedelta(seconds=1)).expiry == EXPIRY


@pytest.mark.parametrize(
    "exp",
    [pytest.param("1767269100", id="string"), pytest.param(True, id="boolean"), pytest.param(None, id="null")],
)
def test_rejects_an_exp_that_is_not_a_number(keys: Keys, bundle: Bundle, exp: Any) -> None:
    body = claims()
    body["exp"] = exp
    token = craft(header(), body, keys.p256)
    with pytest.raises(JwtSvidError, match=re.escape(f"JWT-SVID 'exp' is {exp!r}; it must be a NumericDate")):
        validate(token, bundle)


def test_rejects_an_exp_beyond_the_range_of_dates(keys: Keys, bundle: Bundle) -> None:
    token = craft(header(), claims(exp=10**20), keys.p256)
    with pytest.raises(JwtSvidError, match=exact(f"JWT-SVID 'exp' {10**20} is outside the range of dates")):
        validate(token, bundle)


def test_rejects_a_token_before_its_nbf(keys: Keys, bundle: Bundle) -> None:
    nbf = NOW + timedelta(seconds=1)
    token = craft(header(), claims(nbf=int(nbf.timestamp())), keys.p256)
    with pytest.raises(JwtSvidError, match=re.escape(f"JWT-SVID is not valid before {nbf.isoformat()}")):
        validate(token, bundle)


# --- keys and signatures: only the subject's own trust domain --------------------------------------------


def test_rejects_a_subject_whose_trust_domain_has_no_bundle(keys: Keys, bundle: Bundle) -> None:
    token = craft(header(), claims(sub="spiffe://other.org/web"), keys.p256)
    with pytest.raises(
        JwtSvidError,
        match=re.escape("no bundle for trust domain other.org, the trust domain of spiffe://other.org/web;"),
    ):
        validate(token, bundle)


def test_asks_the_source_only_for_the_subjects_trust_domain(keys: Keys, bundle: Bundle) -> None:
    source = RecordingSource({TD: bundle, OTHER_TD: Bundle(OTHER_TD)})
    validate_jwt_svid(craft(header(), claims(), keys.p256), audience="payments", bundle_source=source, now=NOW)
    assert source.asked == [TD]


def test_rejects_a_token_signed_by_another_trust_domains_key(keys: Keys, bundle: Bundle) -> None:
    """other.org's bundle lacks example.org's key: a token for other.org signed with it must fail even
    though example.org's bundle, also in the source, knows that kid."""
    source = RecordingSource({TD: bundle, OTHER_TD: Bundle(OTHER_TD)})
    token = craft(header(), claims(sub="spiffe://other.org/web"), keys.p256)
    with pytest.raises(
        JwtSvidError, match=re.escape("JWT-SVID key 'ec256' is not a JWT authority in the bundle of other.org;")
    ):
        validate_jwt_svid(token, audience="payments", bundle_source=source, now=NOW)
    assert source.asked == [OTHER_TD]


def test_rejects_an_unknown_kid(keys: Keys, bundle: Bundle) -> None:
    token = craft(header(kid="retired-1"), claims(), keys.p256)
    with pytest.raises(
        JwtSvidError,
        match=exact(
            "JWT-SVID key 'retired-1' is not a JWT authority in the bundle of example.org; the key is unknown, "
            "removed, or the bundle is stale"
        ),
    ):
        validate(token, bundle)


def test_an_unknown_kid_names_the_trust_domain_and_key_a_fresh_bundle_could_hold(keys: Keys) -> None:
    token = craft(header(kid="brand-new"), claims(sub="spiffe://other.org/web"), keys.p256)
    source = RecordingSource({OTHER_TD: Bundle(OTHER_TD)})
    with pytest.raises(UnknownJwtKey) as caught:
        validate_jwt_svid(token, audience="payments", bundle_source=source, now=NOW)
    assert (caught.value.trust_domain, caught.value.key_id) == (OTHER_TD, "brand-new")


def test_a_token_that_fails_before_its_key_is_looked_up_is_no_unknown_key(keys: Keys, bundle: Bundle) -> None:
    token = craft(header(kid="brand-new"), claims(aud="billing"), keys.p256)
    with pytest.raises(JwtSvidError) as caught:
        validate(token, bundle)
    assert not isinstance(caught.value, UnknownJwtKey)


def test_rejects_a_token_whose_claims_were_altered(keys: Keys, bundle: Bundle) -> None:
    head, _, signature = mint(keys.p256).split(".")
    token = f"{head}.{part(claims(sub='spiffe://example.org/admin'))}.{signature}"
    with pytest.raises(
        JwtSvidError,
        match=exact(
            "JWT-SVID signature does not verify with key 'ec256' of example.org; the token was altered or "
            "signed by another key"
        ),
    ):
        validate(token, bundle)


def test_rejects_a_token_signed_by_another_key_under_a_known_kid(bundle: Bundle) -> None:
    token = craft(header(), claims(), ec.generate_private_key(ec.SECP256R1()))
    with pytest.raises(JwtSvidError, match=re.escape("JWT-SVID signature does not verify with key 'ec256'")):
        validate(token, bundle)


@pytest.mark.parametrize(
    ("alg", "kid", "key_name", "message"),
    [
        pytest.param(
            "ES256",
            "rsa",
            "p256",
            "JWT-SVID alg ES256 needs an EC secp256r1 key, but key 'rsa' of example.org is RSA 2048",
            id="ec-alg-rsa-key",
        ),
        pytest.param(
            "ES384",
            "ec256",
            "p256",
            "JWT-SVID alg ES384 needs an EC secp384r1 key, but key 'ec256' of example.org is EC secp256r1",
            id="other-curve",
        ),
        pytest.param(
            "RS256",
            "ec256",
            "rsa2048",
            "JWT-SVID alg RS256 needs an RSA key, but key 'ec256' of example.org is EC secp256r1",
            id="rsa-alg-ec-key",
        ),
        pytest.param(
            "PS256",
            "ec384",
            "rsa2048",
            "JWT-SVID alg PS256 needs an RSA key, but key 'ec384' of example.org is EC secp384r1",
            id="pss-alg-ec-key",
        ),
    ],
)
def test_rejects_an_alg_that_does_not_fit_the_key(
    keys: Keys, bundle: Bundle, alg: str, kid: str, key_name: str, message: str
) -> None:
    token = craft(header(alg, kid), claims(), getattr(keys, key_name), alg)
    with pytest.raises(JwtSvidError, match=exact(message + "; the token's alg does not fit its key")):
        validate(token, bundle)


def test_rejects_a_key_of_fewer_than_2048_rsa_bits(keys: Keys, bundle: Bundle) -> None:
    token = craft(header("RS256", "rsa1024"), claims(), keys.rsa1024, "RS256")
    with pytest.raises(
        JwtSvidError,
        match=exact(
            "key 'rsa1024' of example.org is RSA 1024; JWT-SVIDs are verified only with RSA keys of at least 2048 bits"
        ),
    ):
        validate(token, bundle)


# --- caller errors ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("audience", [pytest.param([], id="none"), pytest.param("", id="empty-string")])
def test_validate_refuses_an_empty_expected_audience(keys: Keys, bundle: Bundle, audience: Any) -> None:
    with pytest.raises(InvalidArgument, match=re.escape("is empty; a relying party must name the audience")):
        validate(mint(keys.p256), bundle, audience=audience)


def test_validate_refuses_a_naive_now(keys: Keys, bundle: Bundle) -> None:
    with pytest.raises(
        InvalidArgument, match=exact("now 2026-01-01T12:00:00 has no time zone; pass an aware datetime (e.g. UTC)")
    ):
        validate(mint(keys.p256), bundle, now=NOW.replace(tzinfo=None))


# --- insecure parsing ------------------------------------------------------------------------------------


def test_parse_insecure_reads_a_token_without_checking_its_signature(keys: Keys) -> None:
    head, _, signature = mint(keys.p256).split(".")
    token = f"{head}.{part(claims(sub='spiffe://other.org/db'))}.{signature}"
    assert parse_jwt_svid_insecure(token)[1]["sub"] == "spiffe://other.org/db"


def test_parse_insecure_rejects_a_non_string() -> None:
    with pytest.raises(JwtSvidError, match=exact("a JWT-SVID must be a string, not bytes")):
        parse_jwt_svid_insecure(b"e30.e30.AAAA")  # type: ignore[arg-type]


# --- py-spiffe as the oracle -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key_name", "key_id"), [pytest.param("p256", "ec256", id="ES256"), pytest.param("rsa2048", "rsa", id="RS256")]
)
def test_pyspiffe_validates_a_minted_token_with_a_bundle_read_from_our_json(
    keys: Keys, bundle: Bundle, tmp_path: Path, key_name: str, key_id: str
) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    token = mint(getattr(keys, key_name), key_id, expires_at=now + timedelta(minutes=5), issued_at=now)
    (tmp_path / "token").write_text(token)
    (tmp_path / "bundle.json").write_text(bundle.to_json())
    answer = ask_pyspiffe("jwt-svid", str(tmp_path / "token"), str(tmp_path / "bundle.json"), "payments", "example.org")
    assert answer == {
        "spiffe_id": "spiffe://example.org/web",
        "audience": ["payments"],
        "expiry": int((now + timedelta(minutes=5)).timestamp()),
    }


def test_pyspiffe_parse_insecure_reads_the_same_spiffe_id(keys: Keys, tmp_path: Path) -> None:
    now = datetime.now(UTC)
    token = mint(
        keys.p256,
        spiffe_id=SpiffeId.parse("spiffe://example.org/ns/prod/sa/web"),
        expires_at=now + timedelta(minutes=5),
        issued_at=now,
    )
    (tmp_path / "token").write_text(token)
    answer = ask_pyspiffe("jwt-svid-insecure", str(tmp_path / "token"), "payments")
    assert answer["spiffe_id"] == "spiffe://example.org/ns/prod/sa/web"


@pytest.mark.parametrize(
    ("header_fields", "claim_fields"),
    [
        pytest.param({"kid": "k" * 1_000_000}, {}, id="kid"),
        pytest.param({"alg": "A" * 1_000_000}, {}, id="alg"),
        pytest.param({"typ": "T" * 1_000_000}, {}, id="typ"),
        pytest.param({}, {"aud": ["x" * 1_000_000]}, id="aud"),
        pytest.param({}, {"aud": [1] * 200_000}, id="aud-not-strings"),
        pytest.param({}, {"exp": "9" * 1_000_000}, id="exp"),
    ],
)
def test_a_refusal_repeats_only_the_start_of_a_huge_token_value(
    keys: Keys, bundle: Bundle, header_fields: dict[str, Any], claim_fields: dict[str, Any]
) -> None:
    """Refusals travel as gRPC status details (16 KiB of headers at most) and go to logs."""
    token = craft({**header(), **header_fields}, {**claims(), **claim_fields}, keys.p256)
    with pytest.raises(JwtSvidError) as refused:
        validate(token, bundle)
    assert len(str(refused.value)) < 400
    assert "…" in str(refused.value)
