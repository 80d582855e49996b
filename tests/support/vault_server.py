"""A small HTTP server speaking the part of HashiCorp Vault's API that trustmesh calls, for tests.

No Vault server can be installed on these machines, so the ``vault-pki`` upstream and the
``vault-transit`` key manager are tested against this one (docs/vault.md says so). It is a real HTTP
server on 127.0.0.1 (optionally TLS) driven through hvac like a real Vault, and implements, with
Vault's documented request and answer shapes:

- ``GET sys/health``; ``POST auth/<approle>/login``
- PKI at ``<pki>/``: ``ca/pem``, ``root/sign-intermediate`` (verifies the CSR, honours
  ``use_csr_values``, ``uri_sans``, ``not_after``; refuses a notAfter past the root's), ``revoke``,
  ``crl/pem``, ``crl/rotate``
- transit at ``<transit>/``: ``keys/<name>`` (create, read, delete), ``keys`` (LIST, or GET ?list=true),
  ``keys/<name>/config``, ``sign/<name>`` (ECDSA asn1 and RSA pkcs1v15, raw or prehashed input; one
  ``input``, or a ``batch_input`` list of ``{"input": <base64>}`` items answered with ``batch_results``
  in input order, each ``{"signature", "key_version"}`` or ``{"error"}`` — the shape of Vault's
  documented transit sign API and of its handler, which answers 200 when items fail)

Every call but the unauthenticated ones (health, login, ``ca/pem``, ``crl/pem``) needs an
``X-Vault-Token`` whose policies grant the capability (Vault's create/read/update/delete/list, with
``*`` globs at the end of a path; the union of matching rules, which is all these tests need). Errors
have Vault's shapes: sealed (503 ``{"errors":["Vault is sealed"]}``), permission denied (403 ``{"errors":
["1 error occurred:\\n\\t* permission denied\\n\\n"]}``), not found (404 ``{"errors":[]}``), unknown route
(404 "no handler for route"), bad request (400). The root key and the transit keys are real keys held
in this object's memory only; tests read them to prove they appear nowhere else.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import ipaddress
import itertools
import json
import secrets
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils
from cryptography.x509.oid import NameOID

from ca.config import VaultConfig
from tests.support.enterprise_pki import self_signed_root

PERMISSION_DENIED = "1 error occurred:\n\t* permission denied\n\n"
# The policy docs/vault.md asks for, with the default mounts: what a correctly set-up CA may do.
TRUSTMESH_POLICY = {
    "pki/root/sign-intermediate": {"update"},
    "pki/revoke": {"update"},
    "pki/crl/rotate": {"read"},
    "transit/keys": {"list"},
    "transit/keys/trustmesh-*": {"create", "read", "update", "delete"},
    "transit/sign/trustmesh-*": {"update"},
}
_HASHES: dict[str, hashes.HashAlgorithm] = {
    "sha2-224": hashes.SHA224(),
    "sha2-256": hashes.SHA256(),
    "sha2-384": hashes.SHA384(),
    "sha2-512": hashes.SHA512(),
}
_CURVES = {"ecdsa-p256": ec.SECP256R1(), "ecdsa-p384": ec.SECP384R1()}
_RSA_SIZES = {"rsa-2048": 2048, "rsa-3072": 3072, "rsa-4096": 4096}

Answer = tuple[int, str, bytes]  # status, content type, body


class VaultHttpError(Exception):
    """An error answer, in Vault's ``{"errors": [...]}`` shape."""

    def __init__(self, status: int, *errors: str) -> None:
        super().__init__(status, errors)
        self.status = status
        self.errors = list(errors)


@dataclass
class TransitKey:
    private_key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
    type: str
    created: datetime
    exportable: bool
    allow_plaintext_backup: bool
    deletion_allowed: bool = False


@dataclass
class Issued:
    """What the fake PKI engine signed, and when it revoked it."""

    certificates: dict[int, x509.Certificate] = field(default_factory=dict)
    revoked: dict[int, datetime] = field(default_factory=dict)


class FakeVault:
    """The server's state and behaviour; :meth:`running` serves it. Attributes a test may change while
    it runs: ``sealed``, ``crl_expiry``, ``issue_for_key`` (sign-intermediate certifies this public key
    instead of the CSR's), ``issue_as_ca`` (False: issue with cA=false), ``refuse_batch_items`` (the
    transit sign ``batch_input`` items, by index, answered with an ``error`` instead of a signature)."""

    def __init__(
        self,
        *,
        pki_mount: str = "pki",
        transit_mount: str = "transit",
        approle_mount: str = "approle",
        root_lifetime: timedelta = timedelta(days=365),
        crl_expiry: timedelta = timedelta(hours=72),
    ) -> None:
        self.pki_mount = pki_mount
        self.transit_mount = transit_mount
        self.approle_mount = approle_mount
        self.sealed = False
        self.crl_expiry = crl_expiry
        self.issue_for_key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey | None = None
        self.issue_as_ca = True
        self.refuse_batch_items: dict[int, str] = {}  # batch_input index -> the error Vault answers for it
        self.requests: list[tuple[str, str]] = []  # (method, path) of every request, in order
        self.transit: dict[str, TransitKey] = {}
        self.issued = Issued()
        self.policies: dict[str, dict[str, set[str]]] = {"trustmesh": TRUSTMESH_POLICY, "root": {"*": _ALL}}
        self._tokens: dict[str, list[str]] = {}
        self._approles: dict[str, tuple[str, list[str]]] = {}
        self._lock = threading.RLock()
        self.root_key = ec.generate_private_key(ec.SECP256R1())
        self.root = self_signed_root(self.root_key, "Fake Vault Root CA", root_lifetime)
        self._crl_numbers = itertools.count(1)
        self.crl = self._build_crl()
        self.address = ""

    # -- what tests set up and inspect ------------------------------------------------------------

    def add_token(self, *policies: str) -> str:
        """A new token with these policies (names in :attr:`policies`)."""
        token = "hvs." + secrets.token_urlsafe(18)
        with self._lock:
            self._tokens[token] = list(policies)
        return token

    def add_approle(self, *policies: str) -> tuple[str, str]:
        """A new AppRole (role ID, secret ID) whose logins get these policies."""
        role_id, secret_id = secrets.token_hex(16), secrets.token_hex(16)
        with self._lock:
            self._approles[role_id] = (secret_id, list(policies))
        return role_id, secret_id

    def expire_tokens(self) -> None:
        """Every token stops working, as when their TTL ran out."""
        with self._lock:
            self._tokens.clear()

    def count(self, method: str, path: str) -> int:
        with self._lock:
            return self.requests.count((method, path))

    def private_key_material(self) -> dict[str, list[bytes]]:
        """For each transit key, the byte strings that would betray its private key if found anywhere:
        the private scalar (raw and hex) or RSA's d, p and q, and the PKCS#8 DER and PEM encodings."""
        found: dict[str, list[bytes]] = {}
        with self._lock:
            keys = dict(self.transit)
        for name, key in keys.items():
            private = key.private_key
            if isinstance(private, ec.EllipticCurvePrivateKey):
                value = private.private_numbers().private_value
                secrets_ = [value.to_bytes((private.curve.key_size + 7) // 8, "big")]
            else:
                numbers = private.private_numbers()
                secrets_ = [n.to_bytes((n.bit_length() + 7) // 8, "big") for n in (numbers.d, numbers.p, numbers.q)]
            secrets_ += [s.hex().encode() for s in secrets_]
            for encoding in (serialization.Encoding.DER, serialization.Encoding.PEM):
                secrets_.append(
                    private.private_bytes(encoding, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
                )
            found[name] = secrets_
        return found

    # -- serving ----------------------------------------------------------------------------------

    @contextlib.contextmanager
    def running(self, tls: tuple[Path, Path] | None = None) -> Iterator[FakeVault]:
        """Serve on a free port of 127.0.0.1 until the block ends; ``tls`` is (certificate, key) files."""
        server = _Server(("127.0.0.1", 0), _Handler, self)
        scheme = "http"
        if tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*tls)
            server.socket = context.wrap_socket(server.socket, server_side=True)
            scheme = "https"
        self.address = f"{scheme}://127.0.0.1:{server.server_address[1]}"
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)

    def handle(self, method: str, raw_path: str, token: str | None, body: bytes) -> Answer:
        url = urlsplit(raw_path)
        path = url.path.removeprefix("/v1/").strip("/")
        if method == "GET" and parse_qs(url.query).get("list") == ["true"]:
            method = "LIST"
        with self._lock:
            self.requests.append((method, path))
            try:
                return self._route(method, path, token, _json(body))
            except VaultHttpError as err:
                return _answer(err.status, {"errors": err.errors})

    # -- the API ----------------------------------------------------------------------------------

    def _route(self, method: str, path: str, token: str | None, body: dict[str, Any]) -> Answer:
        if path == "sys/health":
            health = {"initialized": True, "sealed": self.sealed, "standby": False, "version": "1.15.0+fake"}
            return _answer(503 if self.sealed else 200, health)
        if self.sealed:
            raise VaultHttpError(503, "Vault is sealed")
        if method == "POST" and path == f"auth/{self.approle_mount}/login":
            return self._login(body)
        pki, transit = f"{self.pki_mount}/", f"{self.transit_mount}/"
        if method == "GET" and path == pki + "ca/pem":
            return 200, "application/pem-certificate-chain", _pem(self.root)
        if method == "GET" and path == pki + "crl/pem":
            return 200, "application/pem-certificate-chain", self.crl.public_bytes(serialization.Encoding.PEM)
        capability = self._capability(method, path)
        self._authorize(token, path, capability)
        if path.startswith(pki):
            return self._pki(method, path.removeprefix(pki), body)
        if path.startswith(transit):
            return self._transit(method, path.removeprefix(transit), body)
        raise _no_route(path)

    def _capability(self, method: str, path: str) -> str:
        if method == "POST" or method == "PUT":
            name = path.removeprefix(f"{self.transit_mount}/keys/")
            creating = path.startswith(f"{self.transit_mount}/keys/") and "/" not in name and name not in self.transit
            return "create" if creating else "update"
        return {"GET": "read", "LIST": "list", "DELETE": "delete"}.get(method, "sudo")

    def _authorize(self, token: str | None, path: str, capability: str) -> None:
        granted: set[str] = set()
        for policy in self._tokens.get(token or "", []):
            for pattern, capabilities in self.policies.get(policy, {}).items():
                if path == pattern or (pattern.endswith("*") and path.startswith(pattern[:-1])):
                    granted |= capabilities
        if capability not in granted:
            raise VaultHttpError(403, PERMISSION_DENIED)

    def _login(self, body: dict[str, Any]) -> Answer:
        role = self._approles.get(str(body.get("role_id")))
        if role is None or not secrets.compare_digest(role[0], str(body.get("secret_id", ""))):
            raise VaultHttpError(400, "invalid role or secret ID")
        token = self.add_token(*role[1])
        auth = {"client_token": token, "policies": role[1], "lease_duration": 3600, "renewable": True}
        return _answer(200, {"auth": auth, "data": None})

    def _pki(self, method: str, path: str, body: dict[str, Any]) -> Answer:
        if method == "POST" and path == "root/sign-intermediate":
            return self._sign_intermediate(body)
        if method == "POST" and path == "revoke":
            return self._revoke(body)
        if method == "GET" and path == "crl/rotate":
            self.crl = self._build_crl()
            return _answer(200, {"data": {"success": True}})
        raise _no_route(f"{self.pki_mount}/{path}")

    def _sign_intermediate(self, body: dict[str, Any]) -> Answer:
        try:
            csr = x509.load_pem_x509_csr(str(body.get("csr", "")).encode())
        except ValueError:
            raise VaultHttpError(400, "no certificate request could be found in the given CSR") from None
        if not csr.is_signature_valid:
            raise VaultHttpError(400, "certificate request could not be verified: invalid signature")
        now = datetime.now(UTC).replace(microsecond=0)
        not_after = (
            datetime.strptime(body["not_after"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
            if body.get("not_after")
            else now + timedelta(days=30)
        )
        if not_after > self.root.not_valid_after_utc:
            raise VaultHttpError(
                400,
                f"cannot satisfy request, as TTL would result in notAfter {not_after.isoformat()} that is beyond "
                f"the expiration of the CA certificate at {self.root.not_valid_after_utc.isoformat()}",
            )
        use_csr = bool(body.get("use_csr_values"))
        subject = csr.subject if use_csr else x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, body["common_name"])])
        public_key = self.issue_for_key or csr.public_key()
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.root.subject)
            .public_key(public_key)  # type: ignore[arg-type]
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(seconds=30))
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=self.issue_as_ca, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(True, False, False, False, False, self.issue_as_ca, self.issue_as_ca, False, False),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)  # type: ignore[arg-type]
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.root_key.public_key()), critical=False
            )
        )
        uris = [x509.UniformResourceIdentifier(u) for u in str(body.get("uri_sans", "")).split(",") if u]
        if use_csr:  # Vault then keeps the CSR's names instead of the request's
            uris = []
            with contextlib.suppress(x509.ExtensionNotFound):
                csr_names = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
                uris = [
                    x509.UniformResourceIdentifier(u)
                    for u in csr_names.get_values_for_type(x509.UniformResourceIdentifier)
                ]
        if uris:
            builder = builder.add_extension(x509.SubjectAlternativeName(uris), critical=False)
        cert = builder.sign(self.root_key, hashes.SHA256())
        self.issued.certificates[cert.serial_number] = cert
        data = {
            "certificate": _pem(cert).decode(),
            "issuing_ca": _pem(self.root).decode(),
            "ca_chain": [_pem(self.root).decode()],
            "serial_number": _serial_text(cert.serial_number),
            "expiration": int(not_after.timestamp()),
        }
        return _answer(200, {"data": data})

    def _revoke(self, body: dict[str, Any]) -> Answer:
        text = str(body.get("serial_number", ""))
        try:
            serial = int(text.replace(":", "").replace("-", ""), 16)
        except ValueError:
            raise VaultHttpError(400, f"invalid serial number {text!r}") from None
        if serial not in self.issued.certificates:
            raise VaultHttpError(400, f"certificate with serial {text} not found.")
        revoked_at = self.issued.revoked.setdefault(serial, datetime.now(UTC).replace(microsecond=0))
        self.crl = self._build_crl()
        return _answer(200, {"data": {"revocation_time": int(revoked_at.timestamp())}})

    def _build_crl(self) -> x509.CertificateRevocationList:
        now = datetime.now(UTC)
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.root.subject)
            .last_update(now)
            .next_update(now + self.crl_expiry)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.root_key.public_key()), False)
            .add_extension(x509.CRLNumber(next(self._crl_numbers)), False)
        )
        for serial, when in self.issued.revoked.items():
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(when).build()
            )
        return builder.sign(self.root_key, hashes.SHA256())

    def _transit(self, method: str, path: str, body: dict[str, Any]) -> Answer:
        if path == "keys" and method == "LIST":
            names = sorted(self.transit)
            if not names:
                raise VaultHttpError(404)
            return _answer(200, {"data": {"keys": names}})
        parts = path.split("/")
        if len(parts) == 2 and parts[0] == "keys":
            return self._key(method, parts[1], body)
        if len(parts) == 3 and parts[0] == "keys" and parts[2] == "config" and method == "POST":
            key = self.transit.get(parts[1])
            if key is None:
                raise VaultHttpError(400, f"no existing key named {parts[1]} could be found")
            if "deletion_allowed" in body:
                key.deletion_allowed = bool(body["deletion_allowed"])
            return 204, "application/json", b""
        if len(parts) == 2 and parts[0] == "sign" and method == "POST":
            return self._sign(parts[1], body)
        raise _no_route(f"{self.transit_mount}/{path}")

    def _key(self, method: str, name: str, body: dict[str, Any]) -> Answer:
        key = self.transit.get(name)
        if method == "POST":
            if key is None:
                self.transit[name] = _new_transit_key(body)
            return 204, "application/json", b""
        if method == "GET":
            if key is None:
                raise VaultHttpError(404)
            return _answer(200, {"data": _describe(name, key)})
        if method == "DELETE":
            if key is not None and not key.deletion_allowed:
                raise VaultHttpError(400, "deletion is not allowed for this key")
            self.transit.pop(name, None)
            return 204, "application/json", b""
        raise _no_route(f"{self.transit_mount}/keys/{name}")

    def _sign(self, name: str, body: dict[str, Any]) -> Answer:
        """Vault's ``POST <transit>/sign/<name>``: one ``input``, or a ``batch_input`` list of
        ``{"input": <base64>}`` items with the other parameters applying to all. A batch is answered
        200 with ``batch_results`` in input order, each ``{"signature", "key_version"}`` or ``{"error"}``
        (as Vault's transit sign handler answers an item it cannot sign); a single input that cannot be
        signed is a 400."""
        key = self.transit.get(name)
        if key is None:
            raise VaultHttpError(400, "signing key not found")
        if int(body.get("key_version") or 1) != 1:
            raise VaultHttpError(400, "invalid key version")
        algorithm = _HASHES.get(str(body.get("hash_algorithm", "sha2-256")))
        if algorithm is None:
            raise VaultHttpError(400, f"unsupported hash algorithm {body.get('hash_algorithm')}")
        chosen: hashes.HashAlgorithm | utils.Prehashed = (
            utils.Prehashed(algorithm) if body.get("prehashed") else algorithm
        )
        private = key.private_key
        if isinstance(private, ec.EllipticCurvePrivateKey):
            if body.get("marshaling_algorithm", "asn1") != "asn1":
                raise VaultHttpError(400, "this fake marshals ECDSA signatures as asn1 only")
        elif body.get("signature_algorithm", "pss") != "pkcs1v15":
            raise VaultHttpError(400, "this fake signs RSA as pkcs1v15 only")
        batch = body.get("batch_input")
        if batch is None:
            return _answer(200, {"data": self._signed(private, chosen, body.get("input"), None)})
        if not isinstance(batch, list) or not batch:
            raise VaultHttpError(400, "missing batch input to process")
        inputs = [item.get("input") if isinstance(item, dict) else None for item in batch]
        results = [self._signed(private, chosen, encoded, index) for index, encoded in enumerate(inputs)]
        return _answer(200, {"data": {"batch_results": results}})

    def _signed(
        self,
        private: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey,
        chosen: hashes.HashAlgorithm | utils.Prehashed,
        encoded: object,
        batch_index: int | None,
    ) -> dict[str, Any]:
        """One signature result; a batch item Vault cannot sign gets ``{"error"}``, a single input a 400."""
        error = None if batch_index is None else self.refuse_batch_items.get(batch_index)
        if batch_index is not None and encoded is None:
            error = "missing input"
        try:
            data = base64.b64decode(str(encoded or ""), validate=True)
        except binascii.Error as err:
            error = f"unable to decode input as base64: {err}"
        if error is not None:
            if batch_index is None:
                raise VaultHttpError(400, error)
            return {"error": error}
        if isinstance(private, ec.EllipticCurvePrivateKey):
            signature = private.sign(data, ec.ECDSA(chosen))
        else:
            signature = private.sign(data, padding.PKCS1v15(), chosen)
        return {"signature": "vault:v1:" + base64.b64encode(signature).decode(), "key_version": 1}


_ALL = {"create", "read", "update", "delete", "list", "sudo"}


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], vault: FakeVault) -> None:
        super().__init__(address, handler)
        self.vault = vault


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        status, content_type, payload = self.server.vault.handle(
            self.command, self.path, self.headers.get("X-Vault-Token"), body
        )
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_DELETE = do_LIST = _serve

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: requests are recorded in FakeVault.requests instead."""


def _new_transit_key(body: dict[str, Any]) -> TransitKey:
    kind = str(body.get("type", "aes256-gcm96"))
    private: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
    if kind in _CURVES:
        private = ec.generate_private_key(_CURVES[kind])
    elif kind in _RSA_SIZES:
        private = rsa.generate_private_key(65537, _RSA_SIZES[kind])
    else:
        raise VaultHttpError(400, f"this fake makes only signing keys, not {kind}")
    return TransitKey(
        private,
        kind,
        datetime.now(UTC),
        exportable=bool(body.get("exportable")),
        allow_plaintext_backup=bool(body.get("allow_plaintext_backup")),
    )


def _describe(name: str, key: TransitKey) -> dict[str, Any]:
    public = key.private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    created = key.created.strftime("%Y-%m-%dT%H:%M:%S.%f") + "123Z"  # Vault gives nanoseconds
    return {
        "name": name,
        "type": key.type,
        "exportable": key.exportable,
        "allow_plaintext_backup": key.allow_plaintext_backup,
        "deletion_allowed": key.deletion_allowed,
        "latest_version": 1,
        "min_available_version": 0,
        "supports_signing": True,
        "keys": {"1": {"creation_time": created, "name": key.type, "public_key": public.decode()}},
    }


def _no_route(path: str) -> VaultHttpError:
    return VaultHttpError(404, f'no handler for route "{path}". route entry not found.')


def _answer(status: int, document: object) -> Answer:
    return status, "application/json", json.dumps(document).encode()


def _json(body: bytes) -> dict[str, Any]:
    if not body:
        return {}
    try:
        document = json.loads(body)
    except ValueError:
        raise VaultHttpError(400, "failed to parse JSON input") from None
    return document if isinstance(document, dict) else {}


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _serial_text(serial: int) -> str:
    return serial.to_bytes((serial.bit_length() + 7) // 8, "big").hex(":")


def write_secret(path: Path, text: str) -> Path:
    """A credential file as an operator would leave it: owner-only."""
    path.write_text(text + "\n")
    path.chmod(0o600)
    return path


def token_config(vault: FakeVault, directory: Path, *policies: str, **settings: Any) -> VaultConfig:
    """A ``[vault]`` section for ``vault`` with a new token of ``policies`` (default: the trustmesh
    policy) in ``directory/vault-token``."""
    token = vault.add_token(*(policies or ("trustmesh",)))
    token_file = write_secret(directory / "vault-token", token)
    return VaultConfig(address=vault.address, token_file=token_file, **settings)


def write_tls_files(directory: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1 signed by it: (CA file, certificate, key)."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = self_signed_root(ca_key, "Vault TLS test CA", timedelta(days=1))
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "vault.test")]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    paths = (directory / "vault-ca.pem", directory / "vault.pem", directory / "vault.key")
    paths[0].write_bytes(_pem(ca))
    paths[1].write_bytes(_pem(cert))
    paths[2].write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return paths
