"""The admin API over HTTPS against one real `trustmesh-ca run` (issue 8): every route x every caller
is allowed exactly for the matrix's roles, every refusal is audited and changes nothing, a security
officer runs a rotation through the CLI with a JWT, an operator cannot, the CLI refuses an impostor
before its token leaves, and /docs works offline.

The test is its own IdP: it holds the signing key, writes the JWKS file the CA reads, and mints the
tokens. mTLS admin SVIDs are minted through the CA's local socket."""

from __future__ import annotations

import base64
import collections
import hashlib
import hmac
import json
import re
import socket
import ssl
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import RSAAlgorithm

from ca.admin_client import AdminClient
from ca.rbac import ROUTE_POLICIES, Role
from ca.store import AuditLogRepository, Database
from tests.support.processes import background, command, free_port, run, wait_until

ISSUER = "https://idp.test/realms/ops"
AUDIENCE = "trustmesh-ca"
IDP_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
STRANGER_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
ADMIN_ID = "spiffe://example.org/admins/alice"
AGENT = "spiffe://example.org/trustmesh/agent/join_token/nobody"
PATH_VALUES = {
    "entry_id": "no-such-entry",
    "authority_id": "no-such-authority",
    "trust_domain": "no-such.test",
    "name": "no-such-mapping",
}


@dataclass
class Ca:
    root: Path
    config: Path
    admin_port: int
    bundle: Path

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.admin_port}"

    def cli(self, *args: str) -> tuple[int, str, str]:
        result = run([command("trustmesh-ca"), "--config", str(self.config), *args])
        return result.returncode, result.stdout, result.stderr

    def ok(self, *args: str) -> str:
        code, out, err = self.cli(*args)
        assert code == 0, err
        return out

    def remote(self, *args: str, token: Path | None = None, bundle: Path | None = None) -> tuple[int, str, str]:
        flags = ["--server", self.url, "--bundle", str(bundle or self.bundle), "--trust-domain", "example.org"]
        if token is not None:
            flags += ["--token-file", str(token)]
        return self.cli(*flags, *args)

    def local(self) -> AdminClient:
        """The break-glass socket, in process (set-up and checks; the CLI itself is tested remotely)."""
        return AdminClient.local(self.root / "data" / "admin.sock")

    def mint(self, spiffe_id: str, name: str) -> Path:
        """An X509-SVID minted through the socket, as ``x509 mint --out`` writes it."""
        key = ec.generate_private_key(ec.SECP256R1())
        csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([])).sign(key, hashes.SHA256())
        with self.local() as admin:
            reply = admin.post_json(
                "/v1/x509-svids",
                {"csr_pem": csr.public_bytes(serialization.Encoding.PEM).decode(), "spiffe_id": spiffe_id},
            )
        out = self.root / name
        out.mkdir()
        (out / "svid.pem").write_text(reply["cert_chain_pem"])
        (out / "svid_key.pem").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        return out

    def denied_events(self) -> list[tuple[str, str]]:
        """(source address, action) of every refusal in the audit log."""
        database = Database.open(f"sqlite:///{self.root / 'data' / 'datastore.sqlite3'}")
        found: list[tuple[str, str]] = []
        try:
            after = 0
            while True:
                with database.transaction() as session:
                    page = AuditLogRepository(session).list(after_id=after, limit=500)
                if not page:
                    return found
                found += [
                    (str(r.event.detail.get("source")), r.event.action) for r in page if r.event.outcome == "denied"
                ]
                after = page[-1].id
        finally:
            database.close()


def token(key: Any = IDP_KEY, kid: str = "idp-1", alg: str = "RS256", **overrides: Any) -> str:
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": "someone", "exp": now + 600, "iat": now, "roles": []}
    claims.update(overrides)
    return jwt.encode(claims, key, algorithm=alg, headers={"kid": kid})


def hs256_with_public_key() -> str:
    public_pem = IDP_KEY.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    now = int(time.time())
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": "mallory", "exp": now + 600, "roles": ["security-officer"]}
    signing_input = f"{b64(json.dumps({'alg': 'HS256', 'kid': 'idp-1'}).encode())}.{b64(json.dumps(claims).encode())}"
    return f"{signing_input}.{b64(hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest())}"


@pytest.fixture(scope="module")
def ca() -> Iterator[Ca]:
    with tempfile.TemporaryDirectory(prefix="tm-admin-", dir="/tmp") as tmp:
        root = Path(tmp)
        jwk = {**json.loads(RSAAlgorithm.to_jwk(IDP_KEY.public_key())), "kid": "idp-1", "use": "sig"}
        (root / "jwks.json").write_text(json.dumps({"keys": [jwk]}))
        http_port, admin_port = free_port(), free_port()
        config = root / "ca.toml"
        config.write_text(
            f"""
trust_domain = "example.org"
[server]
data_dir = "{root / "data"}"
http_address = "127.0.0.1:{http_port}"
node_api_address = "127.0.0.1:{free_port()}"
attestation_address = "127.0.0.1:{free_port()}"
[audit]
refusals_per_minute = 1000  # every refusal of the matrix test is recorded one by one
[admin_api]
address = "127.0.0.1:{admin_port}"
[admin_api.oidc]
issuer = "{ISSUER}"
audience = "{AUDIENCE}"
jwks_file = "jwks.json"
[[admin_api.admins]]
spiffe_id = "{ADMIN_ID}"
roles = ["security-officer"]
"""
        )
        with background([command("trustmesh-ca"), "--config", str(config), "run"], root / "ca.log") as proc:

            def ready() -> bool:
                assert proc.poll() is None, (root / "ca.log").read_text()
                try:
                    httpx.get(f"http://127.0.0.1:{http_port}/ready", timeout=1).raise_for_status()
                    with socket.create_connection(("127.0.0.1", admin_port), timeout=1):
                        return True
                except (httpx.HTTPError, OSError):
                    return False

            wait_until(ready, 30, "the CA and its HTTPS admin listener")
            bundle = root / "bundle.pem"
            result = run([command("trustmesh-ca"), "--config", str(config), "bundle", "show"])
            assert result.returncode == 0, result.stderr
            bundle.write_text(result.stdout)
            yield Ca(root, config, admin_port, bundle)


# --- the matrix --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Caller:
    name: str
    source: str  # the client's own loopback address, so each caller's refusals are counted apart
    roles: frozenset[Role]
    token: str | None = None
    svid: Path | None = None
    expected_refusal: int = 401

    def client(self, url: str) -> httpx.Client:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # who the server is, is the CLI tests' business
        if self.svid is not None:
            context.load_cert_chain(self.svid / "svid.pem", self.svid / "svid_key.pem")
        headers = {} if self.token is None else {"Authorization": f"Bearer {self.token}"}
        transport = httpx.HTTPTransport(verify=context, local_address=self.source)
        return httpx.Client(base_url=url, transport=transport, headers=headers, timeout=10)


def callers(ca: Ca) -> list[Caller]:
    admin = ca.mint(ADMIN_ID, "alice")
    revoked = ca.mint(ADMIN_ID, "alice-revoked")
    serial = x509.load_pem_x509_certificate((revoked / "svid.pem").read_bytes()).serial_number
    with ca.local() as socket_admin:
        socket_admin.post_json("/v1/revocations", {"serial": format(serial, "x")})
    web = ca.mint("spiffe://example.org/web", "web")
    expired_at = int(time.time()) - 3600
    rows = [
        ("officer", frozenset({Role.SECURITY_OFFICER}), token(roles=["security-officer"]), None, 403),
        ("operator", frozenset({Role.OPERATOR}), token(roles=["operator"]), None, 403),
        ("auditor", frozenset({Role.AUDITOR}), token(roles=["auditor"]), None, 403),
        ("mtls-admin", frozenset({Role.SECURITY_OFFICER}), None, admin, 403),
        ("no-credentials", frozenset(), None, None, 401),
        ("expired", frozenset(), token(roles=["security-officer"], exp=expired_at), None, 401),
        ("wrong-issuer", frozenset(), token(roles=["security-officer"], iss="https://evil.test"), None, 401),
        ("wrong-audience", frozenset(), token(roles=["security-officer"], aud="grafana"), None, 401),
        ("alg-none", frozenset(), jwt.encode({"roles": ["security-officer"]}, None, algorithm="none"), None, 401),
        ("hs256-public-key", frozenset(), hs256_with_public_key(), None, 401),
        ("unknown-kid", frozenset(), token(STRANGER_KEY, kid="idp-9", roles=["security-officer"]), None, 401),
        ("non-admin-svid", frozenset(), None, web, 403),
        ("revoked-admin-svid", frozenset(), None, revoked, 401),
    ]
    return [
        Caller(name, f"127.0.0.{10 + i}", roles, tok, svid, refusal)
        for i, (name, roles, tok, svid, refusal) in enumerate(rows)
    ]


def csr_pem() -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([])).sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM).decode()


BODIES: dict[tuple[str, str], dict[str, Any]] = {
    ("POST", "/v1/entries"): {
        "spiffe_id": "spiffe://example.org/matrix/created",
        "parent_id": AGENT,
        "selectors": ["unix:uid:1000"],
    },
    ("PUT", "/v1/entries/{entry_id}"): {
        "spiffe_id": "spiffe://example.org/matrix/updated",
        "parent_id": AGENT,
        "selectors": ["unix:uid:1000"],
    },
    ("POST", "/v1/join-tokens"): {"ttl_seconds": 60},
    ("POST", "/v1/mappings"): {
        "name": "matrix",
        "match": {"dns": "*.matrix.corp.example.com"},
        "spiffe_id": "spiffe://example.org/legacy/{host}",
    },
    ("POST", "/v1/authorities/prepare"): {"kind": "x509", "dry_run": True},
    ("POST", "/v1/authorities/rotate"): {"kind": "x509", "dry_run": True},
    ("POST", "/v1/revocations"): {"serial": "1", "dry_run": True},
    ("POST", "/v1/agents/ban"): {"spiffe_id": AGENT},
    ("POST", "/v1/agents/unban"): {"spiffe_id": AGENT},
    ("POST", "/v1/agents/evict"): {"spiffe_id": AGENT},
    ("POST", "/v1/x509-svids"): {"csr_pem": "", "spiffe_id": "spiffe://example.org/matrix/minted"},
    ("POST", "/v1/jwt-svids"): {"spiffe_id": "spiffe://example.org/matrix/minted", "audience": ["matrix"]},
    # The CA's own trust domain: refused by the domain (400), so no partner is ever fetched.
    ("POST", "/v1/federation/relationships"): {
        "trust_domain": "example.org",
        "bundle_endpoint_url": "https://127.0.0.1:1/",
        "profile": "https_web",
    },
}


def call(client: httpx.Client, method: str, template: str) -> httpx.Response:
    path = template.format(**PATH_VALUES)
    params = {"spiffe_id": AGENT} if template == "/v1/agent" else None
    body = BODIES.get((method, template))
    if (method, template) == ("POST", "/v1/x509-svids"):
        body = {**BODIES[(method, template)], "csr_pem": csr_pem()}
    if method in ("POST", "PUT") and body is None:
        body = {"dry_run": True}
    return client.request(method, path, params=params, json=body)


def state(ca: Ca) -> list[Any]:
    """What a refused call must not change: entries, authorities (and their live SVIDs), agents, CRLs,
    federation relationships."""
    paths = ("/v1/entries", "/v1/authorities", "/v1/agents", "/v1/crls", "/v1/federation/relationships")
    with ca.local() as admin:
        return [admin.get_json(path) for path in paths]


def test_every_route_is_allowed_only_to_the_matrix_roles_and_every_refusal_is_audited(ca: Ca) -> None:
    everyone = callers(ca)
    guarded = [p for p in ROUTE_POLICIES.values() if not p.is_public]
    refusals: collections.Counter[tuple[str, str]] = collections.Counter()
    outcomes: dict[tuple[str, str, str], int] = {}
    before = state(ca)
    for caller in everyone:  # every refused call first: together they must change nothing
        with caller.client(ca.url) as client:
            for policy in guarded:
                if policy.allowed_role(caller.roles) is None:
                    outcomes[(caller.name, policy.method, policy.path)] = call(
                        client, policy.method, policy.path
                    ).status_code
                    refusals[(caller.source, policy.action)] += 1
    after_refusals = state(ca)
    for caller in everyone:
        with caller.client(ca.url) as client:
            for policy in guarded:
                if policy.allowed_role(caller.roles) is not None:
                    outcomes[(caller.name, policy.method, policy.path)] = call(
                        client, policy.method, policy.path
                    ).status_code

    expected = {
        (caller.name, p.method, p.path): "allowed" if p.allowed_role(caller.roles) else caller.expected_refusal
        for caller in everyone
        for p in guarded
    }
    seen = {key: "allowed" if status not in (401, 403) else status for key, status in outcomes.items()}
    assert seen == expected
    assert {key: status for key, status in outcomes.items() if status >= 500} == {}
    assert after_refusals == before
    denied = collections.Counter(e for e in ca.denied_events() if e[0].startswith("127.0.0."))
    assert denied == refusals


def test_public_routes_answer_without_credentials_and_docs_load_no_external_asset(ca: Ca) -> None:
    with httpx.Client(base_url=ca.url, verify=False, timeout=10) as client:  # the page is checked, not the server
        page = client.get("/docs")
        assets = re.findall(r'(?:src|href)="([^"]+)"', page.text)
        loaded = {asset: client.get(asset) for asset in assets}
        live, openapi = client.get("/live"), client.get("/openapi.json")

    assert page.status_code == 200
    assert "://" not in page.text
    assert sorted(assets) == [
        "/static-offline-docs/favicon.png",
        "/static-offline-docs/swagger-ui-bundle.js",
        "/static-offline-docs/swagger-ui.css",
    ]
    assert all(r.status_code == 200 and r.content for r in loaded.values())
    assert (live.status_code, openapi.json()["info"]["title"]) == (200, "trustmesh CA admin API")


# --- the CLI over HTTPS ------------------------------------------------------------------------------


def write_token(ca: Ca, name: str, roles: list[str]) -> Path:
    path = ca.root / f"{name}.token"
    path.write_text(token(sub=name, roles=roles) + "\n")
    path.chmod(0o600)
    return path


def test_an_admin_svid_works_through_the_cli_over_mtls(ca: Ca) -> None:
    admin = ca.mint(ADMIN_ID, "alice-cli")
    code, out, err = ca.cli(
        "--server", ca.url, "--bundle", str(ca.bundle), "--trust-domain", "example.org",
        "--cert", str(admin / "svid.pem"), "--key", str(admin / "svid_key.pem"), "authority", "prepare", "--dry-run",
    )  # fmt: skip

    assert code == 0, err
    assert out.startswith("DRY RUN: nothing was changed")


class RecordingTlsServer:
    """A TLS server holding an SVID of the trust domain that is not the CA's: it records every byte a
    client sends after the handshake."""

    def __init__(self, svid: Path) -> None:
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(svid / "svid.pem", svid / "svid_key.pem")
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.received = b""
        self.handshakes = 0
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        self.listener.settimeout(20)
        conn, _ = self.listener.accept()
        with self.context.wrap_socket(conn, server_side=True) as tls:
            self.handshakes += 1
            tls.settimeout(5)
            try:
                while chunk := tls.recv(65536):
                    self.received += chunk
            except (OSError, ssl.SSLError):
                pass


def test_the_cli_refuses_a_server_that_is_not_the_ca_before_sending_its_token(ca: Ca) -> None:
    impostor = RecordingTlsServer(ca.mint("spiffe://example.org/impostor", "impostor"))
    secret = write_token(ca, "olivia-secret", ["security-officer"])

    code, _, err = ca.cli(
        "--server", f"https://127.0.0.1:{impostor.port}", "--bundle", str(ca.bundle), "--trust-domain", "example.org",
        "--token-file", str(secret), "authority", "list",
    )  # fmt: skip
    impostor.thread.join(10)

    assert code == 1
    assert (
        "presented SPIFFE ID spiffe://example.org/impostor, not the CA's spiffe://example.org/trustmesh/server" in err
    )
    assert impostor.handshakes == 1
    assert impostor.received == b""


# Last: it rotates the trust domain's root, which the tests above take as it was at start.
def test_a_security_officer_rotates_through_the_cli_with_a_jwt_and_an_operator_cannot(ca: Ca) -> None:
    officer, operator = write_token(ca, "olivia", ["security-officer"]), write_token(ca, "otto", ["operator"])
    code, _, err = ca.remote("authority", "prepare", token=operator)
    assert (code, err.strip()) == (
        1,
        f"trustmesh-ca: error: oidc:{ISSUER}#otto may not authority.prepare: POST /v1/authorities/prepare needs "
        "security-officer; it holds operator",
    )

    authorities = json.loads(ca.remote("authority", "list", "--json", token=officer)[1])
    (old,) = [a["id"] for a in authorities if a["kind"] == "x509" and a["state"] == "active"]
    code, out, err = ca.remote("authority", "prepare", "--json", token=officer)
    assert code == 0, err
    (new,) = [c["authority_id"] for c in json.loads(out)["changes"] if c["before"] is None]
    bundle = ca.root / "bundle-after-prepare.pem"
    code, out, err = ca.remote("bundle", "show", token=officer)  # the new root, while the old still verifies
    assert code == 0, err
    bundle.write_text(out)
    for args in (("activate", new, "--force"), ("taint", old), ("revoke", old)):
        code, out, err = ca.remote("authority", *args, token=officer, bundle=bundle)
        assert code == 0, err

    code, out, err = ca.remote("authority", "list", "--json", token=officer, bundle=bundle)
    assert code == 0, err
    states = {a["id"]: a["state"] for a in json.loads(out)}
    assert (states[new], states.get(old, "pruned")) in {("active", "revoked"), ("active", "pruned")}


def test_an_auditor_lists_and_verifies_the_audit_log_through_the_cli_and_an_operator_cannot(ca: Ca) -> None:
    auditor, operator = write_token(ca, "ada", ["auditor"]), write_token(ca, "oscar", ["operator"])
    bundle = ca.root / "bundle-now.pem"  # other tests of this module may have rotated the CA's root
    bundle.write_text(ca.ok("bundle", "show"))
    code, _, err = ca.remote("audit", "list", token=operator, bundle=bundle)
    assert (code, err.strip()) == (
        1,
        f"trustmesh-ca: error: oidc:{ISSUER}#oscar may not audit.list: GET /v1/audit needs auditor or "
        "security-officer; it holds operator",
    )

    code, out, err = ca.remote(
        "audit", "list", "--json", "--actor", f"oidc:{ISSUER}#oscar", token=auditor, bundle=bundle
    )
    assert code == 0, err
    refusals = [(r["action"], r["outcome"], r["auth_method"]) for r in json.loads(out)]
    assert refusals == [("audit.list", "denied", "oidc")]
    code, out, err = ca.remote("audit", "verify", token=auditor, bundle=bundle)
    assert code == 0, err
    assert out.startswith("the audit log verifies: "), out
