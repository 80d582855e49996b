"""The agentless exchange as the CA runs it (issue 10, DESIGN §5; the protocol is :mod:`bridge.exchange`):
a legacy service presents its enterprise certificate and receives an X509-SVID for its mapped SPIFFE
ID, keeping the DNS SANs and CN its mapping rule says.

:class:`LegacyExchange` is the use case behind the exchange listener (:mod:`ca.exchange_listener`):
the per-source rate first, then the request's checks (:class:`bridge.exchange.ExchangeVerifier`, the
``[bridge]`` trust anchors and CRLs read per request as x509pop reads them; a statement accepted once,
by any replica, is refused after), then issuance through
:meth:`ca.service.CaService.mint_x509_svids`, which checks the CSR's self-signature, takes only its
public key, and records the certificate and its audit record in one transaction. It never issues an
SVID for an admin identity: mapping rules are an operator's to manage, admin roles are not.

Audit: an issuance is ``x509_svid.exchange`` by ``x509:<issuer DN>#<serial>`` (the enterprise
certificate, verified), whose target is the mapped SPIFFE ID. A refusal is recorded by
``exchange:<address>`` (the caller is not authenticated yet; the throttle counts per address) with the
SHA-256 fingerprint of the leaf presented, if any.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from bridge.exchange import ExchangeReply, ExchangeRequest, ExchangeVerifier, StatementLedger
from bridge.mapping import MappingRule
from ca.audit import AuditTrail, Issuance, refusal_event
from ca.bridge_attestation import ConfiguredTrust
from ca.config import BridgeConfig
from ca.issuance import IssuedX509Svid, X509SvidRequest
from ca.ratelimit import KeyedRateLimiter, Monotonic, Rate, take_or_refuse
from ca.reserved_ids import server_id
from ca.store.records import Actor, JsonValue
from spiffe_core.bundle import Bundle
from spiffe_core.clock import Clock
from spiffe_core.errors import NotAuthorized, TrustmeshError
from spiffe_core.spiffe_id import SpiffeId, TrustDomain

EXCHANGE = "x509_svid.exchange"
_TARGET = "X509-SVID exchange"


class X509Issuer(Protocol):
    """What the exchange needs of :class:`ca.service.CaService`."""

    def get_bundle(self) -> Bundle: ...
    def mint_x509_svids(self, requests: Sequence[X509SvidRequest], issuance: Issuance) -> list[IssuedX509Svid]: ...


def exchange_actor(source: str) -> Actor:
    """The audit log's actor for an exchange that was refused: the address it came from."""
    return Actor(f"exchange:{source or 'unknown'}", "exchange")


def enterprise_actor(cert: x509.Certificate) -> Actor:
    """The audit log's actor for an exchange that passed: the verified enterprise certificate."""
    return Actor(f"x509:{cert.issuer.rfc4514_string()}#{cert.serial_number:x}", "enterprise-cert")


def fingerprint(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex()


class LegacyExchange:
    """Enterprise certificate in, X509-SVID out (module docstring); ``is_admin`` says which SPIFFE IDs
    are admin identities, which it refuses. Thread-safe: the listener calls it from worker threads."""

    def __init__(
        self,
        *,
        verifier: ExchangeVerifier,
        issuer: X509Issuer,
        audit: AuditTrail,
        clock: Clock,
        rate: Rate,
        is_admin: Callable[[SpiffeId], bool],
        monotonic: Monotonic = time.monotonic,
    ) -> None:
        self._verifier = verifier
        self._is_admin = is_admin
        self._issuer = issuer
        self._audit = audit
        self._clock = clock
        self._limiter = None if rate.unlimited else KeyedRateLimiter[str](rate, monotonic=monotonic)
        self._lock = threading.Lock()

    def exchange(self, body: bytes, source: str) -> ExchangeReply:
        """Check the request in ``body`` from ``source`` (an address) and issue the SVID. Raises
        ResourceExhausted (over the rate), InvalidArgument (a malformed request or CSR) or NotAuthorized
        saying which check failed; every refusal is audited."""
        now = self._clock.now()
        request: ExchangeRequest | None = None
        try:
            with self._lock:
                take_or_refuse(self._limiter, source, 1, f"too many exchanges from {source}", "bridge.exchange_rate")
            request = ExchangeRequest.decode(body)
            exchanged = self._verifier.verify(request, now)
            self._refuse_admin(exchanged.mapped.spiffe_id)
        except TrustmeshError as err:
            detail: dict[str, JsonValue] = {} if request is None else {"sha256": fingerprint(request.chain[0])}
            event = refusal_event(now, exchange_actor(source), EXCHANGE, _TARGET, err, detail=detail)
            self._audit.record_refusal(event)
            raise
        leaf, mapped = exchanged.verified.leaf, exchanged.mapped
        issuance = Issuance(
            enterprise_actor(leaf),
            EXCHANGE,
            detail={
                "source": source,
                "sha256": fingerprint(leaf),
                "subject": leaf.subject.rfc4514_string(),
                "trust_anchor": exchanged.verified.anchor,
                "rule": mapped.rule,
                "dns_names": list(mapped.dns_names),
                "common_name": mapped.common_name,
            },
        )
        svid_request = X509SvidRequest(
            request.csr.public_bytes(serialization.Encoding.PEM),
            mapped.spiffe_id,
            mapped.dns_names,
            subject_cn=mapped.common_name,
        )
        (issued,) = self._issuer.mint_x509_svids([svid_request], issuance)
        return ExchangeReply(
            issued.spiffe_id,
            mapped.rule,
            issued.serial,
            issued.not_after,
            issued.cert_chain,
            self._issuer.get_bundle().x509_authorities,
        )

    def _refuse_admin(self, spiffe_id: SpiffeId) -> None:
        """Mapping rules are managed by operators; an SVID for an admin identity would let a rule grant
        roles its author may not hold, so the exchange never issues one."""
        if self._is_admin(spiffe_id):
            raise NotAuthorized(
                f"no SVID for {spiffe_id}: it is an admin identity ([[admin_api.admins]] or an entry with admin = "
                "true), which the exchange never issues; map this host to another SPIFFE ID"
            )


def legacy_exchange(
    config: BridgeConfig,
    trust_domain: TrustDomain,
    *,
    rules: Callable[[], Sequence[MappingRule]],
    issuer: X509Issuer,
    audit: AuditTrail,
    clock: Clock,
    is_admin: Callable[[SpiffeId], bool],
    spend: StatementLedger,
) -> LegacyExchange:
    """The exchange for ``config``, whose trust anchor and CRL files are checked now (ConfigError);
    ``is_admin`` says which SPIFFE IDs are admin identities (refused); ``spend`` records the statements
    accepted, in the datastore every replica shares."""
    trust = ConfiguredTrust(config, "the agentless exchange")
    trust.check()
    return LegacyExchange(
        verifier=ExchangeVerifier(trust_domain, server_id(trust_domain), trust, rules, spend),
        issuer=issuer,
        audit=audit,
        clock=clock,
        rate=Rate(config.exchange_rate, config.exchange_burst),
        is_admin=is_admin,
    )
