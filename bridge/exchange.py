"""The agentless exchange (DESIGN §5, issue 10): a legacy service without an agent trades its
enterprise certificate for an X509-SVID of the SPIFFE ID its mapping rule gives it. The SVID keeps the
DNS SANs and subject CN the rule says (``keep_dns``, ``keep_cn``), so old clients verify it by DNS name
while mesh peers verify it by SPIFFE ID: one certificate, both identities, for step-by-step migration.

The host (``trustmesh-bridge exchange``, :mod:`bridge.exchange_client`):

1. opens TLS to the CA's exchange listener and goes on only if the server presents an X509-SVID for
   ``spiffe://<td>/trustmesh/server`` that chains to the bundle it was given;
2. generates the SVID's key itself and makes a PKCS#10 CSR for it: that key never leaves the host;
3. signs an *exchange statement* with its enterprise key (:func:`statement`): this protocol's context,
   the CA's SPIFFE ID, the time, and the SHA-256 of the CSR;
4. sends its certificate chain, the CSR, the time and the signature (:class:`ExchangeRequest`).

The CA (:class:`ExchangeVerifier`, wired by ``ca.bridge_exchange``) checks, cheapest first: the time
(within :data:`MAX_CLOCK_SKEW` of its own), then the chain exactly as x509pop does
(:meth:`bridge.legacy_chain.LegacyTrust.verify`: chain length, key size, validity, anchor, CRL), the
mapping rules (:func:`bridge.mapping.map_identity`) and last the signature
(:func:`bridge.possession.verify`). The refusals are x509pop's, word for word. A statement that passed
is then spent: its SHA-256 goes into a ledger every replica shares (the CA's datastore), kept until the
statement would be refused as too old anyway, and a statement found there already is refused
(:data:`USED`). The SPIFFE ID, DNS
SANs and CN of the SVID come from the verified certificate and the rule only; the CSR contributes its
public key (its self-signature is checked when the SVID is signed), never a name.

Why a signed statement rather than TLS client authentication: enterprise certificates of services are
often issued for TLS servers only (extendedKeyUsage serverAuth), and OpenSSL refuses those as client
certificates; a TLS stack would also refuse an untrusted or expired chain inside the handshake, before
the bounded checks above run, with no reason the host's operator can read and nothing in the audit log.
The statement binds what the signature is for: the CA it names, the CSR key, which only the host holds,
and the time. It is accepted once, by any replica of that CA; a copy replayed to it is refused.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from bridge import possession
from bridge.legacy_chain import MAX_PRESENTED_BYTES, LegacyTrust, VerifiedChain, load_certificates
from bridge.mapping import LegacyIdentity, MappedIdentity, MappingRule, map_identity
from bridge.possession import SigningKey
from spiffe_core.errors import InvalidArgument, NotAuthorized
from spiffe_core.spiffe_id import SpiffeId, TrustDomain

EXCHANGE_PATH = "/v1/exchange"
CONTEXT = b"trustmesh x509 exchange v1\n"
MAX_CLOCK_SKEW = timedelta(minutes=5)
MAX_CSR_BYTES = 16 * 1024
MAX_SIGNATURE_BYTES = 2048  # an 8192-bit RSA signature is 1,024 bytes
# A request: the chain, the CSR, the signature (base64) and JSON around them.
MAX_REQUEST_BYTES = MAX_PRESENTED_BYTES + MAX_CSR_BYTES + 4 * 1024
# A reply: the SVID chain and the bundle (a few certificates each).
MAX_REPLY_BYTES = 256 * 1024
_PEM = serialization.Encoding.PEM
USED = (
    "this exchange statement was accepted already (a replay, or a retry of an exchange that went through); "
    "run trustmesh-bridge exchange again: it signs a new one"
)
# Spends a statement's SHA-256 (hex) until the given time: True the first time, False ever after.
StatementLedger = Callable[[str, datetime], bool]


def statement(server: SpiffeId, issued_at: int, csr: x509.CertificateSigningRequest) -> bytes:
    """What the enterprise key signs: this protocol's context, the CA it is meant for, when (Unix
    seconds), and the CSR whose key is to be certified."""
    digest = hashlib.sha256(csr.public_bytes(serialization.Encoding.DER)).digest()
    return CONTEXT + f"{server}\n{issued_at}\n".encode() + digest


def _pem(certs: Sequence[x509.Certificate]) -> str:
    return b"".join(cert.public_bytes(_PEM) for cert in certs).decode()


@dataclass(frozen=True, slots=True)
class ExchangeRequest:
    """The enterprise certificate chain (leaf first), the CSR, when the statement was signed (Unix
    seconds) and the signature."""

    chain: tuple[x509.Certificate, ...]
    csr: x509.CertificateSigningRequest
    issued_at: int
    signature: bytes

    @classmethod
    def make(
        cls,
        chain: Sequence[x509.Certificate],
        key: SigningKey,
        csr: x509.CertificateSigningRequest,
        server: SpiffeId,
        now: datetime,
    ) -> ExchangeRequest:
        """The host's request: ``key`` (the enterprise certificate's) signs the statement for ``server``."""
        issued_at = int(now.timestamp())
        return cls(tuple(chain), csr, issued_at, possession.sign(key, statement(server, issued_at, csr)))

    def encode(self) -> bytes:
        return json.dumps(
            {
                "chain_pem": _pem(self.chain),
                "csr_pem": self.csr.public_bytes(_PEM).decode(),
                "issued_at": self.issued_at,
                "signature": base64.b64encode(self.signature).decode(),
            }
        ).encode()

    @classmethod
    def decode(cls, body: bytes) -> ExchangeRequest:
        """A request as the CA reads it; InvalidArgument for anything malformed or over the bounds."""
        if len(body) > MAX_REQUEST_BYTES:
            raise InvalidArgument(f"the exchange request is larger than {MAX_REQUEST_BYTES} bytes")
        try:
            document: Any = json.loads(body)
            chain_pem, csr_pem = document["chain_pem"], document["csr_pem"]
            issued_at, signature = document["issued_at"], base64.b64decode(document["signature"], validate=True)
            if not (isinstance(chain_pem, str) and isinstance(csr_pem, str) and type(issued_at) is int):
                raise TypeError("wrong field types")
        except (ValueError, KeyError, TypeError) as err:
            raise InvalidArgument(
                "the exchange request is not JSON with chain_pem, csr_pem, issued_at (Unix seconds) and signature "
                "(base64); use trustmesh-bridge exchange"
            ) from err
        if len(csr_pem) > MAX_CSR_BYTES or len(signature) > MAX_SIGNATURE_BYTES:
            raise InvalidArgument(
                f"the exchange request's CSR or signature is too large (at most {MAX_CSR_BYTES} and "
                f"{MAX_SIGNATURE_BYTES} bytes)"
            )
        chain = load_certificates(chain_pem.encode(), "the exchange request's chain_pem")
        try:
            csr = x509.load_pem_x509_csr(csr_pem.encode())
        except ValueError as err:
            raise InvalidArgument(f"the exchange request's csr_pem is not a PEM PKCS#10 request ({err})") from err
        return cls(chain, csr, issued_at, signature)


@dataclass(frozen=True, slots=True)
class Exchanged:
    """A request that passed: the verified chain and what its leaf maps to."""

    verified: VerifiedChain
    mapped: MappedIdentity


class ExchangeVerifier:
    """The CA's checks of an exchange request (module docstring). ``trust`` and ``rules`` are read per
    request, so a replaced CRL file or a new mapping rule counts at once; ``server`` is the CA's own
    SPIFFE ID, which the statement must name; ``spend`` records each statement that passed (shared by
    every replica, so that none accepts it twice)."""

    def __init__(
        self,
        trust_domain: TrustDomain,
        server: SpiffeId,
        trust: Callable[[], LegacyTrust],
        rules: Callable[[], Sequence[MappingRule]],
        spend: StatementLedger,
    ) -> None:
        self._trust_domain = trust_domain
        self._server = server
        self._trust = trust
        self._rules = rules
        self._spend = spend

    def verify(self, request: ExchangeRequest, now: datetime) -> Exchanged:
        """NotAuthorized saying which check failed (a clock too far off, expired, revoked, untrusted CA,
        chain too long, key too large, no mapping rule, a signature by another key, a statement accepted
        already)."""
        skew = abs(request.issued_at - int(now.timestamp()))
        if skew > MAX_CLOCK_SKEW.total_seconds():
            raise NotAuthorized(
                f"clock skew: the exchange was signed {skew} s away from the CA's time ({now.isoformat()}); the "
                f"host's clock must be within {MAX_CLOCK_SKEW.total_seconds() / 60:.0f} minutes of it (check NTP)"
            )
        verified = self._trust().verify(request.chain, now)
        identity = LegacyIdentity.from_certificate(verified.leaf, verified.anchor)
        mapped = map_identity(identity, self._rules(), self._trust_domain)
        signed = statement(self._server, request.issued_at, request.csr)
        possession.verify(
            verified.leaf,
            signed,
            request.signature,
            "the key given to trustmesh-bridge exchange (--key) must be the key of its certificate (--cert)",
        )
        # Kept until the statement is refused as too old anyway; the signature is not what is kept (an
        # ECDSA signature has a second valid form), the statement it proves is.
        too_old = datetime.fromtimestamp(request.issued_at, UTC) + MAX_CLOCK_SKEW + timedelta(seconds=1)
        if not self._spend(hashlib.sha256(signed).hexdigest(), too_old):
            raise NotAuthorized(USED)
        return Exchanged(verified, mapped)


@dataclass(frozen=True, slots=True)
class ExchangeReply:
    """What the host receives: the SVID's chain (leaf, then intermediates up to, not including, a
    root), the trust domain's X.509 bundle, and for the record the rule, serial and expiry."""

    spiffe_id: SpiffeId
    rule: str
    serial: int
    expires_at: datetime
    cert_chain: tuple[x509.Certificate, ...]
    bundle: tuple[x509.Certificate, ...]

    def encode(self) -> bytes:
        return json.dumps(
            {
                "spiffe_id": str(self.spiffe_id),
                "rule": self.rule,
                "serial": format(self.serial, "x"),
                "expires_at": self.expires_at.isoformat(),
                "cert_chain_pem": _pem(self.cert_chain),
                "bundle_pem": _pem(self.bundle),
            }
        ).encode()

    @classmethod
    def decode(cls, body: bytes) -> ExchangeReply:
        """The CA's reply as the host reads it; InvalidArgument when it is not one."""
        try:
            document: Any = json.loads(body)
            return cls(
                SpiffeId.parse(document["spiffe_id"]),
                str(document["rule"]),
                int(document["serial"], 16),
                datetime.fromisoformat(document["expires_at"]),
                tuple(x509.load_pem_x509_certificates(document["cert_chain_pem"].encode())),
                tuple(x509.load_pem_x509_certificates(document["bundle_pem"].encode())),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise InvalidArgument(f"the CA's exchange reply is not what trustmesh-bridge expects ({err})") from err
