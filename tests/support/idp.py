"""A test identity provider for the admin API's OIDC login: one RSA signing key, the JWKS file the CA
reads (``[admin_api.oidc] jwks_file``) and the bearer tokens it verifies."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

ISSUER = "https://idp.test/realms/ops"
AUDIENCE = "trustmesh-ca"
KEY_ID = "idp-1"


class TestIdp:
    __test__ = False  # not a test class, whatever pytest thinks of the name

    def __init__(self) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def write_jwks(self, path: Path) -> Path:
        jwk = {**json.loads(RSAAlgorithm.to_jwk(self.key.public_key())), "kid": KEY_ID, "use": "sig"}
        path.write_text(json.dumps({"keys": [jwk]}))
        return path

    def config(self, jwks_file: Path) -> str:
        """The CA config's ``[admin_api.oidc]`` table trusting this IdP."""
        return f'[admin_api.oidc]\nissuer = "{ISSUER}"\naudience = "{AUDIENCE}"\njwks_file = "{jwks_file}"\n'

    def token(self, subject: str, roles: list[str], ttl_seconds: int = 600, **overrides: Any) -> str:
        now = int(time.time())
        claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": subject, "exp": now + ttl_seconds, "iat": now, "roles": roles}
        claims.update(overrides)
        return jwt.encode(claims, self.key, algorithm="RS256", headers={"kid": KEY_ID})
