"""x509pop node attestation (DESIGN §5 "VM onboarding"): a brownfield host proves possession of the
private key of its enterprise certificate, and gets the agent ID its mapped identity gives it:
``spiffe://<td>/trustmesh/agent/x509pop/<path of the mapped ID>``.

Two steps over the attestation listener (the agent has no SVID yet):

1. **challenge**: the agent sends its chain (:func:`encode_evidence`). The CA verifies it
   (:class:`bridge.legacy_chain.LegacyTrust`: anchors, expiry, CRLs, chain length, key size — every
   refusal says which), maps it (:mod:`bridge.mapping`) and answers a nonce.
2. **attest**: the agent signs ``CONTEXT + nonce`` with the certificate's key (:func:`sign_challenge`)
   and sends nonce, signature and its chain again (:func:`encode_response`). The CA checks the nonce
   (its MAC, its expiry, that it was issued for this leaf), verifies and maps the chain again (a
   certificate revoked in between is refused), checks the signature with the leaf's public key and
   records the nonce as used.

The CA keeps nothing between the steps (:mod:`bridge.x509pop_challenge`: the nonce is sealed with an
HMAC under a key all replicas share), so the two steps may reach different CA replicas and no caller
can make the CA hold pending challenges. Single use holds across replicas through the
:class:`ChallengeLedger` (the CA's datastore), which records a nonce once its proof succeeded. Nonces
expire after :data:`CHALLENGE_TTL`. The work of each step is bounded by the chain limits before any
signature is verified. The domain-separation prefix keeps a signature made here from meaning anything
elsewhere.

Pure but for the random bytes; the CA wires it with its ledger (``ca.bridge_attestation``), the agent
uses the agent half (:func:`bridge.possession.load_signing_key`, :func:`encode_evidence`,
:func:`sign_challenge`, :func:`encode_response`).
"""

from __future__ import annotations

import base64
import hmac
import json
import secrets
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any, Protocol

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from bridge import possession
from bridge.legacy_chain import MAX_PRESENTED_BYTES, LegacyTrust
from bridge.mapping import LegacyIdentity, MappingRule, map_identity
from bridge.possession import SigningKey
from bridge.x509pop_challenge import RANDOM_BYTES, leaf_fingerprint, open_nonce, seal, used_digest
from spiffe_core.errors import InvalidArgument, NotAuthorized
from spiffe_core.spiffe_id import SpiffeId, TrustDomain

X509POP = "x509pop"
CONTEXT = b"trustmesh x509pop v1\n"
CHALLENGE_TTL = timedelta(seconds=60)
# The answer carries the chain again (base64), so it may be as large as the evidence and a bit more.
MAX_RESPONSE_BYTES = 4096 + (MAX_PRESENTED_BYTES + 2) // 3 * 4
EXPIRED = "x509pop challenge expired; start the attestation again"
USED = "x509pop challenge was used already; start the attestation again"
OTHER_CHAIN = (
    "x509pop challenge was issued for another certificate; answer it with the chain sent for it "
    "(start the attestation again)"
)


def encode_evidence(chain: Sequence[x509.Certificate]) -> bytes:
    """Step 1's payload: the chain, leaf first, as PEM."""
    return b"".join(cert.public_bytes(serialization.Encoding.PEM) for cert in chain)


def sign_challenge(key: SigningKey, nonce: bytes) -> bytes:
    """The agent's proof: the certificate's key signs the domain-separated nonce."""
    return possession.sign(key, CONTEXT + nonce)


def verify_signature(cert: x509.Certificate, nonce: bytes, signature: bytes) -> None:
    """NotAuthorized unless ``signature`` is the key of ``cert`` signing ``nonce``."""
    possession.verify(cert, CONTEXT + nonce, signature, "the agent's key file must be the key of its certificate")


def encode_response(nonce: bytes, signature: bytes, evidence: bytes) -> bytes:
    """Step 2's payload: the nonce, its signature and the chain (step 1's ``evidence``) again."""
    return json.dumps(
        {
            "nonce": base64.b64encode(nonce).decode(),
            "signature": base64.b64encode(signature).decode(),
            "chain": base64.b64encode(evidence).decode(),
        }
    ).encode()


def _decode_response(payload: bytes) -> tuple[bytes, bytes, bytes]:
    if len(payload) > MAX_RESPONSE_BYTES:
        raise InvalidArgument(f"x509pop response is larger than {MAX_RESPONSE_BYTES} bytes")
    try:
        document: Any = json.loads(payload)
        nonce = base64.b64decode(document["nonce"], validate=True)
        signature = base64.b64decode(document["signature"], validate=True)
        encoded_chain = document.get("chain")
        chain = None if encoded_chain is None else base64.b64decode(encoded_chain, validate=True)
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise InvalidArgument("x509pop response is not {nonce, signature, chain} in base64 JSON") from err
    if chain is None:
        raise InvalidArgument(
            "x509pop response has no certificate chain (an agent older than its CA); upgrade the agent"
        )
    return nonce, signature, chain


def agent_id(trust_domain: TrustDomain, mapped: SpiffeId) -> SpiffeId:
    """``spiffe://<td>/trustmesh/agent/x509pop/<path of the mapped ID>``."""
    return SpiffeId.from_segments(trust_domain, "trustmesh", "agent", X509POP, *mapped.path.strip("/").split("/"))


class ChallengeLedger(Protocol):
    """What every CA replica shares about challenges (the CA's datastore: ``ca.bridge_attestation``)."""

    def key(self) -> bytes:
        """The HMAC key challenges are sealed with: the same on every replica, never logged."""
        ...

    def spend(self, digest: str, expires_at: datetime) -> bool:
        """Record the nonce whose :func:`~bridge.x509pop_challenge.used_digest` is ``digest`` as used
        until ``expires_at``; False when it was recorded already (by this replica or another)."""
        ...


class X509PopAttestor:
    """The CA half. ``trust`` and ``rules`` are read per step, so a replaced CRL file or a new mapping
    rule counts at once."""

    method = X509POP

    def __init__(
        self,
        trust_domain: TrustDomain,
        trust: Callable[[], LegacyTrust],
        rules: Callable[[], Sequence[MappingRule]],
        ledger: ChallengeLedger,
        random: Callable[[], bytes] = lambda: secrets.token_bytes(RANDOM_BYTES),
    ) -> None:
        self._trust_domain = trust_domain
        self._trust = trust
        self._rules = rules
        self._ledger = ledger
        self._random = random

    def challenge(self, payload: bytes, now: datetime) -> bytes:
        """Verify and map the chain in ``payload``; return the nonce to sign. NotAuthorized says which
        check failed (expired, revoked, untrusted CA, chain too long, no mapping rule)."""
        leaf, _agent = self._verified(_load_chain(payload), now)
        return seal(self._ledger.key(), leaf, now + CHALLENGE_TTL, self._random())

    def attest(self, payload: bytes, now: datetime) -> SpiffeId:
        """Check the answer in ``payload`` and spend its nonce; return the agent ID. NotAuthorized for a
        nonce that is forged, expired, issued for another certificate or used, a chain that no longer
        verifies or maps, and a signature that is not the leaf's key's."""
        nonce, signature, evidence = _decode_response(payload)
        challenge = open_nonce(self._ledger.key(), nonce)
        if challenge.expires_at <= now:
            raise NotAuthorized(EXPIRED)
        chain = _load_chain(evidence)
        if not hmac.compare_digest(leaf_fingerprint(chain[0]), challenge.leaf_fingerprint):
            raise NotAuthorized(OTHER_CHAIN)
        leaf, agent = self._verified(chain, now)
        verify_signature(leaf, nonce, signature)
        if not self._ledger.spend(used_digest(nonce), challenge.expires_at):
            raise NotAuthorized(USED)
        return agent

    def _verified(self, chain: Sequence[x509.Certificate], now: datetime) -> tuple[x509.Certificate, SpiffeId]:
        """The leaf of ``chain`` and the agent ID it maps to, once the chain verifies."""
        verified = self._trust().verify(chain, now)
        identity = LegacyIdentity.from_certificate(verified.leaf, verified.anchor)
        mapped = map_identity(identity, self._rules(), self._trust_domain)
        return verified.leaf, agent_id(self._trust_domain, mapped.spiffe_id)


def _load_chain(evidence: bytes) -> list[x509.Certificate]:
    if len(evidence) > MAX_PRESENTED_BYTES:
        raise InvalidArgument(f"x509pop evidence is larger than {MAX_PRESENTED_BYTES} bytes")
    try:
        return x509.load_pem_x509_certificates(evidence)
    except ValueError as err:
        raise InvalidArgument("x509pop evidence is not a PEM certificate chain (leaf first)") from err
