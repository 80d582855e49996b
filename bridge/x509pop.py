"""x509pop node attestation (DESIGN §5 "VM onboarding"): a brownfield host proves possession of the
private key of its enterprise certificate, and gets the agent ID its mapped identity gives it:
``spiffe://<td>/trustmesh/agent/x509pop/<path of the mapped ID>``.

Two steps over the attestation listener (the agent has no SVID yet):

1. **challenge**: the agent sends its chain (:func:`encode_evidence`). The CA verifies it
   (:class:`bridge.legacy_chain.LegacyTrust`: anchors, expiry, CRLs, chain length, key size — every
   refusal says which), maps it (:mod:`bridge.mapping`) and answers a fresh 32-byte nonce.
2. **attest**: the agent signs ``CONTEXT + nonce`` with the certificate's key (:func:`sign_challenge`)
   and sends nonce and signature (:func:`encode_response`); the CA checks the signature with the leaf's
   public key and spends the nonce.

Nonces are single-use, expire after :data:`CHALLENGE_TTL`, and at most :data:`MAX_PENDING` wait at
once (the oldest is dropped): what callers make the CA hold is bounded. The work of step 1 is bounded
by the chain limits before any signature is verified. The domain-separation prefix keeps a signature
made here from meaning anything elsewhere.

Pure but for the nonce source; the CA wires it (``ca.server``), the agent uses the agent half
(:func:`bridge.possession.load_signing_key`, :func:`encode_evidence`, :func:`sign_challenge`,
:func:`encode_response`).
"""

from __future__ import annotations

import base64
import json
import secrets
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from bridge import possession
from bridge.legacy_chain import MAX_PRESENTED_BYTES, LegacyTrust
from bridge.mapping import LegacyIdentity, MappingRule, map_identity
from bridge.possession import SigningKey
from spiffe_core.errors import InvalidArgument, NotAuthorized
from spiffe_core.spiffe_id import SpiffeId, TrustDomain

X509POP = "x509pop"
CONTEXT = b"trustmesh x509pop v1\n"
NONCE_BYTES = 32
CHALLENGE_TTL = timedelta(seconds=60)
MAX_PENDING = 1024
_REFUSED = "x509pop challenge unknown, used or expired; start the attestation again"


def encode_evidence(chain: Sequence[x509.Certificate]) -> bytes:
    """Step 1's payload: the chain, leaf first, as PEM."""
    return b"".join(cert.public_bytes(serialization.Encoding.PEM) for cert in chain)


def sign_challenge(key: SigningKey, nonce: bytes) -> bytes:
    """The agent's proof: the certificate's key signs the domain-separated nonce."""
    return possession.sign(key, CONTEXT + nonce)


def verify_signature(cert: x509.Certificate, nonce: bytes, signature: bytes) -> None:
    """NotAuthorized unless ``signature`` is the key of ``cert`` signing ``nonce``."""
    possession.verify(cert, CONTEXT + nonce, signature, "the agent's key file must be the key of its certificate")


def encode_response(nonce: bytes, signature: bytes) -> bytes:
    """Step 2's payload."""
    return json.dumps(
        {"nonce": base64.b64encode(nonce).decode(), "signature": base64.b64encode(signature).decode()}
    ).encode()


def _decode_response(payload: bytes) -> tuple[bytes, bytes]:
    if len(payload) > 4096:
        raise InvalidArgument("x509pop response is larger than 4096 bytes")
    try:
        document: Any = json.loads(payload)
        nonce = base64.b64decode(document["nonce"], validate=True)
        signature = base64.b64decode(document["signature"], validate=True)
    except (ValueError, KeyError, TypeError) as err:
        raise InvalidArgument("x509pop response is not {nonce, signature} in base64 JSON") from err
    return nonce, signature


def agent_id(trust_domain: TrustDomain, mapped: SpiffeId) -> SpiffeId:
    """``spiffe://<td>/trustmesh/agent/x509pop/<path of the mapped ID>``."""
    return SpiffeId.from_segments(trust_domain, "trustmesh", "agent", X509POP, *mapped.path.strip("/").split("/"))


class X509PopAttestor:
    """The CA half. ``trust`` and ``rules`` are read per attempt, so a replaced CRL file or a new
    mapping rule counts at once."""

    method = X509POP

    def __init__(
        self,
        trust_domain: TrustDomain,
        trust: Callable[[], LegacyTrust],
        rules: Callable[[], Sequence[MappingRule]],
        nonce: Callable[[], bytes] = lambda: secrets.token_bytes(NONCE_BYTES),
    ) -> None:
        self._trust_domain = trust_domain
        self._trust = trust
        self._rules = rules
        self._nonce = nonce
        self._pending: OrderedDict[bytes, tuple[x509.Certificate, SpiffeId, datetime]] = OrderedDict()
        self._lock = threading.Lock()

    def challenge(self, payload: bytes, now: datetime) -> bytes:
        """Verify and map the chain in ``payload``; return the nonce to sign. NotAuthorized says which
        check failed (expired, revoked, untrusted CA, chain too long, no mapping rule)."""
        if len(payload) > MAX_PRESENTED_BYTES:
            raise InvalidArgument(f"x509pop evidence is larger than {MAX_PRESENTED_BYTES} bytes")
        try:
            chain = x509.load_pem_x509_certificates(payload)
        except ValueError as err:
            raise InvalidArgument("x509pop evidence is not a PEM certificate chain (leaf first)") from err
        verified = self._trust().verify(chain, now)
        identity = LegacyIdentity.from_certificate(verified.leaf, verified.anchor)
        mapped = map_identity(identity, self._rules(), self._trust_domain)
        nonce = self._nonce()
        with self._lock:
            self._pending[nonce] = (verified.leaf, agent_id(self._trust_domain, mapped.spiffe_id), now + CHALLENGE_TTL)
            while len(self._pending) > MAX_PENDING:
                self._pending.popitem(last=False)
        return nonce

    def attest(self, payload: bytes, now: datetime) -> SpiffeId:
        """Spend the nonce in ``payload`` and check its signature; return the agent ID."""
        nonce, signature = _decode_response(payload)
        with self._lock:
            pending = self._pending.pop(nonce, None)
        if pending is None or pending[2] <= now:
            raise NotAuthorized(_REFUSED)
        leaf, agent, _expires = pending
        verify_signature(leaf, nonce, signature)
        return agent
